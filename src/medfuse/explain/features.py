"""What an explanation explains: the disease head's calibrated probabilities as a function
of one case's featurized inputs, and the items (a lab, a vital sign, a variant, the notes,
an ECG lead, the radiograph) those inputs are made of.

`case_features(model, case)` featurizes a case exactly as `MedFuse.fuse` does;
`CalibratedHead` maps the (batched) inputs to the calibrated probabilities
sigmoid(logit / T) that `DiseaseHead.predict_proba` reports, differentiably, so captum can
attribute them; `without_items` removes items the way the model represents a missing item
(observed flag 0, lead mask 0, no variant), and a modality whose items are all removed is
marked absent, which is the model's own missing-modality path.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from medfuse.io.ecg_leads import STANDARD_12
from medfuse.knowledge.labs import LabCatalogue, load_lab_catalogue
from medfuse.model.assembly import MedFuse
from medfuse.model.inputs import (
    collate,
    featurize_many,
    genomics_multi_hot,
    lab_values,
    pick_cxr,
    vital_values,
)
from medfuse.record.case import MODALITIES, VITAL_FIELDS, PatientCase

# The float inputs attributions are computed for, in the order `CalibratedHead.forward` takes them.
ATTRIBUTED_INPUTS: tuple[str, ...] = ("ecg", "cxr", "labs", "vitals", "notes_emb", "genomics")
INPUT_MODALITY: dict[str, str] = {"ecg": "ecg", "cxr": "cxr", "labs": "labs", "vitals": "vitals",
                                  "notes_emb": "notes", "genomics": "genomics"}
# Inputs that say what is present; held fixed along every attribution path.
CONTEXT_INPUTS: tuple[str, ...] = ("ecg_lead_mask", "present")

# Display name and UCUM unit of each vital sign the model reads.
VITAL_LABELS: dict[str, tuple[str, str]] = {
    "heart_rate": ("heart rate", "/min"), "sbp": ("systolic BP", "mm[Hg]"), "dbp": ("diastolic BP", "mm[Hg]"),
    "temperature": ("temperature", "Cel"), "spo2": ("SpO2", "%"), "resp_rate": ("respiratory rate", "/min"),
}


@dataclass(frozen=True)
class Item:
    """One input item of a case: the unit attributions, deletion and ablation speak of."""

    modality: str  # one of MODALITIES
    key: str  # lab-catalogue key, vital field, variant index ("0", "1", ...), lead name, "notes" or "cxr"
    label: str  # what a reader sees: "BNP", "heart rate", "EGFR p.L858R", "ECG lead V2", "notes", "chest X-ray"
    value: float | None = None  # the value the model read (labs: canonical unit; vitals: their unit)
    unit: str | None = None


@dataclass
class CaseFeatures:
    """One case featurized for the model, with the items its inputs are made of."""

    case: PatientCase
    batch: dict[str, torch.Tensor]  # collated, batch axis 1 (see medfuse.model.inputs)
    items: list[Item]
    present: list[str]  # modalities the model received, in MODALITIES order
    image_index: int | None  # which of case.cxr the model read
    lab_keys: list[str] = field(default_factory=list)  # the model's lab layout (stats order)

    def item_index(self) -> dict[tuple[str, str], int]:
        return {(it.modality, it.key): i for i, it in enumerate(self.items)}


def case_features(model: MedFuse, case: PatientCase, catalogue: LabCatalogue | None = None) -> CaseFeatures:
    """Featurize `case` as `MedFuse.fuse` does and list its items."""
    return many_case_features(model, [case], catalogue)[0]


def many_case_features(model: MedFuse, cases: Sequence[PatientCase],
                       catalogue: LabCatalogue | None = None) -> list[CaseFeatures]:
    """`case_features` for several cases, embedding all their notes in one call."""
    catalogue = catalogue or load_lab_catalogue()
    items = featurize_many(cases, model.config, model.stats, model.panel)
    out = []
    for case, item in zip(cases, items, strict=True):
        item.pop("labels", None)  # explanations never read the answer
        batch = collate([item])
        present = [m for m, p in zip(MODALITIES, batch["present"][0].tolist(), strict=True) if p]
        image = pick_cxr(case.cxr)
        image_index = next((i for i, im in enumerate(case.cxr) if im is image), None) if image is not None else None
        out.append(CaseFeatures(case, batch, _items(case, batch, present, catalogue, model.stats.lab_keys), present,
                                image_index, list(model.stats.lab_keys)))
    return out


def _items(case: PatientCase, batch: dict[str, torch.Tensor], present: list[str], catalogue: LabCatalogue,
           lab_keys: Sequence[str]) -> list[Item]:
    items: list[Item] = []
    if "cxr" in present:
        items.append(Item("cxr", "cxr", "chest X-ray"))
    if "ecg" in present:
        mask = batch["ecg_lead_mask"][0]
        items += [Item("ecg", lead, f"ECG lead {lead}") for i, lead in enumerate(STANDARD_12) if mask[i] > 0]
    if "labs" in present:
        values = lab_values(case, catalogue)
        for key in lab_keys:
            if key in values:
                entry = catalogue.get(key)
                items.append(Item("labs", key, entry.name, values[key], entry.unit))
    if "vitals" in present:
        for f, v in vital_values(case).items():
            items.append(Item("vitals", f, VITAL_LABELS[f][0], v, VITAL_LABELS[f][1]))
    if "notes" in present:
        items.append(Item("notes", "notes", "notes"))
    if "genomics" in present:
        for i, v in enumerate(case.genomics):
            items.append(Item("genomics", str(i), " ".join(x for x in (v.gene, v.hgvs) if x)))
    return items


class _ReuseRows(nn.Module):
    """An encoder that reuses its output for rows equal to one reference input.

    Counterfactual rows, occlusion windows and deletion steps change one modality and
    leave the ECG and the radiograph as they were; their encoders (most of the fusion
    model's cost) then run once per case instead of once per row. Rows that differ from
    the reference (an occluded image, a deleted lead) run the real encoder.
    """

    def __init__(self, encoder: nn.Module, reference: tuple[torch.Tensor, ...], **kwargs):
        super().__init__()
        self.encoder = encoder
        self.kwargs = kwargs
        self.reference = reference  # the case's inputs, batch axis 1
        with torch.no_grad():
            out = encoder(*reference, **kwargs)
        self.output = tuple(o.detach() for o in out) if isinstance(out, tuple) else out.detach()

    def forward(self, *inputs: torch.Tensor, **kwargs) -> torch.Tensor | tuple[torch.Tensor, ...]:
        # An input being differentiated (integrated gradients over this modality) needs the
        # real encoder; a fixed one may reuse the output (no gradient flows into it).
        if kwargs != self.kwargs or any(x.requires_grad for x in inputs):
            return self.encoder(*inputs, **kwargs)
        B = inputs[0].shape[0]
        same = torch.ones(B, dtype=torch.bool)
        for x, ref in zip(inputs, self.reference, strict=True):
            same &= (x.reshape(B, -1) == ref.reshape(1, -1)).all(1)
        cached = self.output if isinstance(self.output, tuple) else (self.output,)
        out = [c.expand(B, *c.shape[1:]).clone() for c in cached]
        todo = (~same).nonzero(as_tuple=True)[0]
        if todo.numel():
            fresh = self.encoder(*(x.index_select(0, todo) for x in inputs), **kwargs)
            fresh = fresh if isinstance(fresh, tuple) else (fresh,)
            out = [o.index_copy(0, todo, f) for o, f in zip(out, fresh, strict=True)]
        return tuple(out) if isinstance(self.output, tuple) else out[0]


def _reusing_fusion(fusion: nn.Module, batch: dict[str, torch.Tensor]) -> nn.Module:
    """A shallow copy of `fusion` (same parameters) whose ECG and image encoders reuse the
    case's outputs; the model itself is left untouched, so concurrent callers are safe."""
    clone = copy.copy(fusion)
    clone._modules = dict(fusion._modules)
    encoders = dict(fusion.encoders.items()) if hasattr(fusion, "encoders") else None
    if encoders is None:  # early fusion has no encoders to reuse
        return fusion
    present = batch["present"][0]
    if present[MODALITIES.index("ecg")]:
        encoders["ecg"] = _ReuseRows(encoders["ecg"], (batch["ecg"], batch["ecg_lead_mask"]))
    if present[MODALITIES.index("cxr")]:
        encoders["cxr"] = _ReuseRows(encoders["cxr"], (batch["cxr"],), return_patches=True)
    clone._modules["encoders"] = nn.ModuleDict(encoders)
    return clone


class CalibratedHead(nn.Module):
    """Featurized inputs -> (B, D) calibrated disease probabilities sigmoid(logit / T).

    The same numbers `MedFuse.fuse` reports (`DiseaseHead.predict_proba`), computed with
    gradients so that captum can attribute them. Arguments in `ATTRIBUTED_INPUTS` then
    `CONTEXT_INPUTS` order. With `reference` (a one-row batch), gradient-free passes reuse
    the ECG and image encoders' outputs for rows whose ECG / image equal the reference's
    and are not being differentiated.
    """

    def __init__(self, model: MedFuse, reference: dict[str, torch.Tensor] | None = None):
        super().__init__()
        model.fusion.eval()
        self.fusion = model.fusion if reference is None else _reusing_fusion(model.fusion, reference)
        self.register_buffer("temperature", torch.as_tensor(np.asarray(model.head.temperature), dtype=torch.float32))

    def forward(self, ecg: torch.Tensor, cxr: torch.Tensor, labs: torch.Tensor, vitals: torch.Tensor,
                notes_emb: torch.Tensor, genomics: torch.Tensor, ecg_lead_mask: torch.Tensor,
                present: torch.Tensor) -> torch.Tensor:
        batch = {"ecg": ecg, "cxr": cxr, "labs": labs, "vitals": vitals, "notes_emb": notes_emb,
                 "genomics": genomics, "ecg_lead_mask": ecg_lead_mask, "present": present}
        logits = self.fusion(batch).disease_logits  # (B, D)
        return torch.sigmoid(logits / self.temperature)

    @torch.no_grad()
    def probabilities(self, batch: dict[str, torch.Tensor], chunk: int = 256) -> np.ndarray:
        """(B, D) probabilities of a collated batch, run `chunk` rows at a time."""
        n = batch["present"].shape[0]
        parts = []
        for s in range(0, n, chunk):
            rows = {k: v[s:s + chunk] for k, v in batch.items()}
            parts.append(self(*(rows[k] for k in ATTRIBUTED_INPUTS + CONTEXT_INPUTS)).double().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, len(self.temperature)))


def repeat_batch(batch: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """`n` independent copies of a one-row batch (rows may then be edited one by one)."""
    return {k: v.expand(n, *v.shape[1:]).clone() for k, v in batch.items()}


def stack_batches(rows: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate batches along the batch axis."""
    rows = list(rows)
    return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


def without_items(features: CaseFeatures, removed: Iterable[Item]) -> dict[str, torch.Tensor]:
    """A one-row batch of the case with `removed` items missing.

    A lab or vital becomes 'not observed' (value 0, flag 0), an ECG lead 'not recorded'
    (samples 0, mask 0), a variant leaves the panel (the multi-hot is rebuilt from the
    others), the notes and the radiograph go as a whole; a modality left with no item is
    marked absent, the path a case without that modality takes through the model.
    """
    b = {k: v.clone() for k, v in features.batch.items()}
    removed = list(removed)
    lab_slot = {k: i for i, k in enumerate(features.lab_keys)}
    dropped_variants: set[int] = set()
    for it in removed:
        if it.modality == "labs":
            b["labs"][0, lab_slot[it.key]] = 0.0
        elif it.modality == "vitals":
            b["vitals"][0, VITAL_FIELDS.index(it.key)] = 0.0
        elif it.modality == "ecg":
            lead = STANDARD_12.index(it.key)
            b["ecg"][0, lead] = 0.0
            b["ecg_lead_mask"][0, lead] = 0.0
        elif it.modality == "notes":
            b["notes_emb"][0] = 0.0
        elif it.modality == "cxr":
            b["cxr"][0] = 0.0
        elif it.modality == "genomics":
            dropped_variants.add(int(it.key))
    if dropped_variants:
        kept = [v for i, v in enumerate(features.case.genomics) if i not in dropped_variants]
        b["genomics"][0] = torch.from_numpy(genomics_multi_hot(kept))
    # The same presence rules as `featurize`.
    still = {
        "cxr": "cxr" in features.present and not any(it.modality == "cxr" for it in removed),
        "ecg": bool(b["ecg_lead_mask"][0].any()),
        "labs": bool(b["labs"][0, :, 1].any()),
        "vitals": bool(b["vitals"][0, :, 1].any()),
        "notes": bool(b["notes_emb"][0].abs().sum() > 0),
        "genomics": bool(b["genomics"][0].any()) and "genomics" in features.present,
    }
    b["present"][0] = torch.tensor([still[m] for m in MODALITIES], dtype=torch.bool)
    return b
