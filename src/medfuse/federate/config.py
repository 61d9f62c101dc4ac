"""`FederateConfig`: the settings of one federated run; every field is a YAML key and a CLI flag.

`medfuse federate --config FILE [--field value ...]`: the file gives the values, a flag
overrides one. Unknown keys and wrong types are one ConfigError naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medfuse.config import YamlConfig, option
from medfuse.errors import ConfigError
from medfuse.record.case import MODALITIES

STRATEGIES = ("fedavg", "fedprox")
# What travels: "encoders" = the whole fusion model (encoders, perception layer, clues,
# heads: `MedFuse.trainable_parts("encoders")`); "fusion" = only what sits above the
# encoders (`FusionModel.trainable_parts("sft")`), for federated fine-tuning of a
# pretrained checkpoint whose encoders stay frozen and never leave the server.
STAGES = ("encoders", "fusion")
LR_SCHEDULES = ("global", "local")
AGGREGATIONS = ("mean", "normalised")


@dataclass
class FederateConfig(YamlConfig):
    """`medfuse federate`: hospitals (sites) train one model together without pooling their cases."""

    cohort: str = option("", "Cohort folder (case folders + index.parquet); its training split is divided into sites.")
    out: str = option("", "Checkpoint folder to write (the report is federate.json inside it).")
    sites: int = option(3, "Number of sites (hospitals) the training patients are divided into.")
    rounds: int = option(3, "Federated rounds (each: every site trains locally, the server aggregates).")
    local_epochs: int | float = option(1,
        "Local epochs per site per round; a fraction (0.25) runs that share of an epoch's steps, so more rounds "
        "of shorter local work keep the same total epochs (rounds x local_epochs).")
    strategy: str = option("fedavg", "Aggregation: fedavg or fedprox.")
    mu: float = option(0.01, "FedProx proximal weight: mu/2 * ||w - w_global||^2 is added to the local loss.")
    stage: str = option("encoders",
        "What trains and travels: encoders (the whole fusion model) or fusion (only the layers above the encoders).")
    site_modalities: list[str] = option(factory=list,
        help="Per site, the comma-separated modalities it has (e.g. 'labs,notes'); one entry per site. "
             "Default: site 1 has no CXR, site 2 no ECG, site 3 notes + labs only, any further site everything.")
    label_alpha: float = option(0.5,
        "Dirichlet concentration of each site's disease mix (label shift); small = strong shift, large = even.")
    aggregation: str = option("mean",
        "How the server combines the sites' updates (without DP / SecAgg+; per tensor, over the sites that "
        "trained it): mean (FedAvg's case-weighted mean) or normalised (FedNova: each update divided by its "
        "local steps, case-weighted, taken for the round's total steps).")
    server_lr: float = option(1.0,
        "Server learning rate on the averaged update (FedAvgM); 1 with no momentum is plain FedAvg/FedProx.")
    server_momentum: float = option(0.0, "Server momentum on the averaged update (FedAvgM; 0: none).")
    dp_noise: float = option(0.0,
        "Central DP noise multiplier z (Gaussian std z * dp_clip / sites on the mean update); 0: no noise.")
    dp_clip: float = option(0.0, "L2 norm each site's update is clipped to before aggregation (0: no clipping).")
    delta: float = option(1e-5, "DP delta at which epsilon is reported.")
    secagg: bool = option(False,
        "Secure aggregation (Flower SecAgg+): the server sees only masked updates and their sum.")
    model: str | None = option(None, "Checkpoint to start from (its feature statistics are kept).")
    model_config: dict[str, Any] = option(factory=dict,
        help="ModelConfig keys of a new model (widths, fusion strategy, ...); ignored with `model`.")
    tiny_llm: bool = option(True,
        "A new model carries the tiny offline LLM (the federated stages never touch the LLM).")
    batch_size: int = option(16, "Cases per local optimiser step.")
    lr: float = option(2e-3, "Peak local learning rate (AdamW; schedule: lr_schedule).")
    warmup_steps: int = option(2, "Warm-up steps of the learning-rate schedule (per round with lr_schedule local).")
    lr_schedule: str = option("global",
        "global: one warm-up + cosine schedule over all rounds (each site's steps continue it round after round); "
        "local: warm-up + cosine again inside every round's local run.")
    keep_optimizer: bool = option(False,
        "Each site keeps its AdamW state from round to round (it never travels); off: a fresh AdamW each round "
        "(measured better: moments fitted to the site's own weights go stale once the server averages them).")
    finding_weight: float = option(1.0, "Weight of the finding-box loss in the local objective (0: off).")
    seed: int = option(0, "Seed of the site partition, initial weights, data order and DP noise.")
    split_seed: int = option(0, "Seed of the patient-level train/val/test split (80/10/10).")
    limit: int | None = option(None, "Use only the first N training cases (quick runs).")
    threads: int | None = option(None, "torch CPU threads (default: torch's choice).")
    overwrite: bool = option(False, "Replace an existing checkpoint at `out`.")
    quiet: bool = option(False, "No progress output.")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key."""
        if not self.cohort:
            raise ConfigError("cohort: required (a cohort folder)")
        if not self.out:
            raise ConfigError("out: required (the checkpoint folder to write)")
        self.require_ints("rounds", "batch_size")
        if not self.local_epochs > 0:
            raise ConfigError(f"local_epochs: must be a number > 0, got {self.local_epochs!r}")
        if float(self.local_epochs).is_integer():  # whole epochs stay an int (step counts are ints)
            self.local_epochs = int(self.local_epochs)
        self.require_ints("sites", minimum=2)
        self.require_ints("limit", "threads", nullable=True)
        self.require_ints("seed", "split_seed", "warmup_steps", minimum=0)
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy: must be fedavg or fedprox, got {self.strategy!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"aggregation: must be mean or normalised, got {self.aggregation!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule: must be global or local, got {self.lr_schedule!r}")
        if self.stage not in STAGES:
            raise ConfigError(f"stage: must be encoders or fusion, got {self.stage!r}")
        if self.stage == "fusion" and not self.model:
            raise ConfigError("stage: fusion fine-tunes a pretrained model; give its checkpoint as `model`")
        if self.server_lr <= 0 or not 0 <= self.server_momentum < 1:
            raise ConfigError("server_lr must be > 0 and server_momentum in [0, 1)")
        for name in ("mu", "dp_noise", "dp_clip", "finding_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0")
        if self.lr <= 0 or self.label_alpha <= 0:
            raise ConfigError("lr and label_alpha must be > 0")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta: must be in (0, 1), got {self.delta!r}")
        if self.dp_noise > 0 and self.dp_clip <= 0:
            raise ConfigError("dp_noise: needs dp_clip > 0 (the noise is scaled to the clipping norm)")
        if self.site_modalities:
            if len(self.site_modalities) != self.sites:
                raise ConfigError(f"site_modalities: one entry per site ({self.sites}), "
                                  f"got {len(self.site_modalities)}")
            for entry in self.site_modalities:
                parse_modalities(entry)

    def modalities_of_sites(self) -> list[tuple[str, ...]]:
        """Each site's available modalities (`site_modalities`, else the default plan)."""
        if self.site_modalities:
            return [parse_modalities(e) for e in self.site_modalities]
        return default_site_modalities(self.sites)


def parse_modalities(entry: str) -> tuple[str, ...]:
    """'labs, notes' -> ('labs', 'notes') in canonical order; an unknown name is a ConfigError."""
    names = [n.strip() for n in entry.split(",") if n.strip()]
    bad = [n for n in names if n not in MODALITIES]
    if bad or not names:
        raise ConfigError(f"site_modalities: {entry!r} must name modalities from {', '.join(MODALITIES)}")
    return tuple(m for m in MODALITIES if m in names)


def default_site_modalities(n_sites: int) -> list[tuple[str, ...]]:
    """The default hospitals: one without radiography, one without ECG carts, one with only
    notes and labs (a clinic), and any further site with everything."""
    everything = tuple(MODALITIES)
    plan = [tuple(m for m in MODALITIES if m != "cxr"), tuple(m for m in MODALITIES if m != "ecg"), ("labs", "notes")]
    return [plan[i] if i < len(plan) else everything for i in range(n_sites)]
