"""A site as a Flower client: `SiteClient` (a `NumPyClient`) and its `ClientApp` with the privacy mods.

On each round's fit the client loads the global travelling weights, trains its local
epochs (`SiteTrainer.train`, with FedProx's `proximal_mu` when the strategy sends one) and
returns the new weights, with a mask of the tensors its data trained (a site without
radiographs never trains the image encoder). With DP the reply weight is 1 (an unweighted mean, which is what
the accountant assumes); otherwise it is the site's case count (FedAvg's weighting). The
mods run on the reply in order: `fixedclipping_mod` clips the update to the clipping norm,
then `secaggplus_mod` quantises and masks it for SecAgg+.
"""

from __future__ import annotations

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod

from medfuse.federate.local import SiteTrainer


class SiteClient(NumPyClient):
    """One hospital's training client (its cases never leave it; only weights do)."""

    def __init__(self, trainer: SiteTrainer, seed: int, site_index: int, unweighted: bool):
        self.trainer = trainer
        self.seed = seed
        self.site_index = site_index
        self.unweighted = unweighted
        self.sent: list[list[np.ndarray]] = []  # the plain weights each fit returned (local audit trail)
        self.trained: list[list[bool]] = []  # per fit, which of them the site's data trained

    def get_parameters(self, config) -> list[np.ndarray]:
        return self.trainer.get_arrays()

    def fit(self, parameters, config):
        self.trainer.set_arrays(parameters)
        server_round = int(config.get("server_round", 0))
        epochs = float(config.get("local_epochs", 1))
        result = self.trainer.train(int(epochs) if epochs.is_integer() else epochs,  # a fraction: part of an epoch
                                    seed=self.seed + 1000 * server_round + self.site_index,
                                    mu=float(config.get("proximal_mu", 0.0)), server_round=max(1, server_round),
                                    rounds=max(1, int(config.get("rounds", 1))))
        arrays = self.trainer.get_arrays()
        self.sent.append(arrays)
        self.trained.append(result["trained"])
        weight = 1 if self.unweighted else self.trainer.n_cases
        # Which tensors the site's data trained ("1") or left at the global value ("0"):
        # the server averages each tensor over the sites that trained it.
        trained = "".join("1" if t else "0" for t in result["trained"])
        # Its local step count: normalised averaging (FedNova) divides the update by it.
        return arrays, weight, {"loss": result["loss"], "cases": self.trainer.n_cases, "trained": trained,
                                "steps": int(result["steps"])}


def site_client_app(client: SiteClient, *, clip: bool, secagg: bool) -> ClientApp:
    """The site's Flower `ClientApp`: the client behind SecAgg+ masking and/or DP clipping mods."""
    mods = ([secaggplus_mod] if secagg else []) + ([fixedclipping_mod] if clip else [])
    return ClientApp(client_fn=lambda context: client.to_client(), mods=mods)
