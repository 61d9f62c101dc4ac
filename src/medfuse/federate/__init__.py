"""Federated training across hospitals with Flower: `medfuse federate`.

- `partition`: a cohort's training patients divided into sites with their own modalities
  and disease mix (label shift), reproducible by seed.
- `local`: what travels (`travelling_names`: the parameters `MedFuse.trainable_parts`
  trains, never the LLM) and a site's local training through `medfuse.train.loop`.
- `client`: a site as a Flower `NumPyClient` / `ClientApp` (DP clipping and SecAgg+ mods).
- `transport`: `LocalGrid`, a Flower `Grid` running the sites in-process, byte-exact.
- `privacy`: the site-level epsilon of central DP (Opacus RDP accountant).
- `run`: `federate(cfg)`, the whole run: FedAvg / FedProx, DP, SecAgg+, checkpoint + report.
- `lora`: federated SFT (`federate_lm`): each site's instruction samples from its own cases;
  the LoRA adapter, the LLM projector and the fusion layers above the encoders travel.
- `compare`: centralised vs federated vs local-only on held-out cases (the benchmark).
"""

from medfuse.federate.config import FederateConfig
from medfuse.federate.run import FederatedRun, federate

__all__ = ["FederateConfig", "FederatedRun", "federate"]
