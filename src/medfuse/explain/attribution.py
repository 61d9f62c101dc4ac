"""Attributions of the disease head's calibrated probabilities (captum).

- `integrated_gradients`: captum's IntegratedGradients, one modality of many items at a
  time (ECG samples, lab and vital (value, observed) pairs), from that modality's
  baseline (zeros: flat leads, no lab or vital observed) to the case, the other
  modalities and the presence flags held at the case's values. Completeness: a
  modality's attributions sum to P(case) - P(case with the modality at baseline), up to
  captum's convergence delta.
- `item_occlusion`: the one-item modalities (radiograph, notes) and each variant (which
  IG cannot see, see `IG_MODALITIES`): P(case) - P(case without the item), exactly.
- `item_scores`: per item, its IG attributions summed (a lab's value and observed flag,
  an ECG lead over time) or its occlusion score.
- `ecg_segments`: ECG attributions summed per lead and per time segment.
- `cxr_occlusion`: captum's Occlusion over the radiograph. Pixel-level gradients of a ViT
  are noisy; occluding a patch-sized window with the image's mean grey and measuring the
  probability drop gives a map aligned to the image whose cells mean "this region raised
  P by that much".
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from captum.attr import IntegratedGradients, Occlusion

from medfuse.explain.features import (
    ATTRIBUTED_INPUTS,
    CONTEXT_INPUTS,
    INPUT_MODALITY,
    CalibratedHead,
    CaseFeatures,
    Item,
    stack_batches,
    without_items,
)
from medfuse.io.ecg_leads import STANDARD_12
from medfuse.record.case import VITAL_FIELDS

# Modalities of many items, attributed with integrated gradients. The radiograph and the
# notes are one item each: leaving the item out gives its exact contribution, with no path
# integral to converge (from a grey image the ViT's path still left completeness errors
# up to 1.3 in probability at 32 steps, measured); genomics enters the model through a
# hard validity mask (`multi_hot > 0`) that no gradient crosses. Those three are occluded.
IG_MODALITIES: tuple[str, ...] = ("ecg", "labs", "vitals")
OCCLUDED_MODALITIES: tuple[str, ...] = ("cxr", "notes", "genomics")
_INPUT_OF = {m: k for k, m in INPUT_MODALITY.items()}


def integrated_gradients(head: CalibratedHead, features: CaseFeatures, targets: Sequence[int], n_steps: int = 64,
                         internal_batch_size: int = 64
                         ) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """IG attributions of P(target), one modality at a time, for each target.

    For each present modality in `IG_MODALITIES`, its input moves from its baseline to the
    case while the other modalities keep the case's values; its attributions then sum to
    P(case) - P(case with that modality at baseline), up to the convergence delta. One
    joint path through all modalities bends so sharply (cross-modal attention, gates) that
    even 128 steps leave completeness errors of 0.1-0.5 in probability on the shipped
    checkpoint (measured); one modality at a time, 64 steps keep them mostly under 0.03
    (32 left up to 0.2 on the ECG), and the modalities not integrated reuse their encoder
    outputs, so it costs no more.

    Returns ({input name: (K, ...) attributions}, {modality: (K,) convergence deltas},
    {modality: (K,) P(case with the modality at baseline)}), K = len(targets).
    """
    K = len(targets)
    rows = {k: v.expand(K, *v.shape[1:]).clone() for k, v in features.batch.items()}
    order = ATTRIBUTED_INPUTS + CONTEXT_INPUTS
    attrs = {k: torch.zeros_like(rows[k]).float() for k in ATTRIBUTED_INPUTS}
    deltas: dict[str, np.ndarray] = {}
    p_base: dict[str, np.ndarray] = {}
    pick = (torch.arange(K), torch.as_tensor(list(targets)))
    for m in IG_MODALITIES:
        if m not in features.present:
            continue
        name = _INPUT_OF[m]
        fixed = [k for k in order if k != name]

        def forward(x: torch.Tensor, *others: torch.Tensor, _name: str = name, _fixed: list[str] = fixed) -> torch.Tensor:
            named = {_name: x, **dict(zip(_fixed, others, strict=True))}
            return head(*(named[k] for k in order))

        x = rows[name].float()
        base = torch.zeros_like(x)
        context = tuple(rows[k] for k in fixed)
        a, delta = IntegratedGradients(forward).attribute(
            x, baselines=base, target=list(targets), additional_forward_args=context, n_steps=n_steps,
            internal_batch_size=internal_batch_size, return_convergence_delta=True)
        attrs[name] = a.detach()
        deltas[m] = delta.detach().double().numpy()
        with torch.no_grad():
            p_base[m] = forward(base, *context)[pick].double().numpy()
    return attrs, deltas, p_base


def item_occlusion(head: CalibratedHead, features: CaseFeatures, targets: Sequence[int]) -> np.ndarray:
    """(K, n_items): P(case) - P(case without the item) for the items of `OCCLUDED_MODALITIES`
    (zeros elsewhere), per target; the item leaves the case the way `without_items` removes it."""
    scores = np.zeros((len(targets), len(features.items)))
    cols = [i for i, it in enumerate(features.items) if it.modality in OCCLUDED_MODALITIES]
    if not cols:
        return scores
    batch = stack_batches([features.batch, *(without_items(features, [features.items[i]]) for i in cols)])
    p = head.probabilities(batch)[:, list(targets)]  # (1 + n, K)
    scores[:, cols] = (p[0][None, :] - p[1:]).T
    return scores


def item_scores(features: CaseFeatures, attrs: dict[str, torch.Tensor], occluded: np.ndarray, row: int) -> list[float]:
    """Per item of `features.items`: the sum of its inputs' IG attributions in row `row`, or
    its occlusion score (`item_occlusion`) for the occluded modalities."""
    lab_slot = {k: i for i, k in enumerate(features.lab_keys)}
    labs = attrs["labs"][row].sum(-1)  # (L,) value + observed flag
    vitals = attrs["vitals"][row].sum(-1)  # (6,)
    leads = attrs["ecg"][row].sum(-1)  # (12,)
    out = []
    for i, it in enumerate(features.items):
        if it.modality == "labs":
            s = labs[lab_slot[it.key]]
        elif it.modality == "vitals":
            s = vitals[VITAL_FIELDS.index(it.key)]
        elif it.modality == "ecg":
            s = leads[STANDARD_12.index(it.key)]
        else:
            s = occluded[row, i]
        out.append(float(s))
    return out


def ecg_segments(features: CaseFeatures, attrs: dict[str, torch.Tensor], row: int,
                 n_segments: int) -> tuple[list[str], list[list[float]]]:
    """(recorded leads, per lead the attribution summed over each of `n_segments` equal time segments)."""
    ecg = attrs["ecg"][row]  # (12, T)
    T = ecg.shape[-1]
    edges = np.linspace(0, T, n_segments + 1).round().astype(int)
    mask = features.batch["ecg_lead_mask"][0]
    leads, scores = [], []
    for i, lead in enumerate(STANDARD_12):
        if mask[i] > 0:
            leads.append(lead)
            scores.append([float(ecg[i, a:b].sum()) for a, b in itertools.pairwise(edges)])
    return leads, scores


def cxr_occlusion(head: CalibratedHead, features: CaseFeatures, targets: Sequence[int], window: int,
                  stride: int) -> np.ndarray:
    """(K, S // stride, S // stride) occlusion map per target over the model's S x S radiograph.

    Each cell is the mean, over the windows covering it, of P(case) - P(window replaced by
    the image's mean grey): positive where the region raised the probability.
    """
    K = len(targets)
    rows = {k: v.expand(K, *v.shape[1:]).clone() for k, v in features.batch.items()}
    cxr = rows["cxr"].float()  # (K, 1, S, S)
    others = tuple(rows[k] for k in ATTRIBUTED_INPUTS if k != "cxr")
    context = tuple(rows[k] for k in CONTEXT_INPUTS)

    def forward(image: torch.Tensor, ecg, labs, vitals, notes, genomics, lead_mask, present) -> torch.Tensor:
        return head(ecg, image, labs, vitals, notes, genomics, lead_mask, present)

    head.fusion.eval()
    grey = float(cxr.mean())
    n_windows = ((cxr.shape[-1] - window) // stride + 1) ** 2
    with torch.no_grad():
        attr = Occlusion(forward).attribute(cxr, sliding_window_shapes=(1, window, window), strides=(1, stride, stride),
                                            baselines=grey, target=list(targets),
                                            additional_forward_args=(*others, *context),
                                            perturbations_per_eval=max(1, min(n_windows, 64 // max(K, 1))))
    S = cxr.shape[-1]
    cells = S // stride
    pooled = torch.nn.functional.avg_pool2d(attr[:, 0, : cells * stride, : cells * stride], stride)  # (K, cells, cells)
    return pooled.double().numpy()


def modality_totals(items: Sequence[Item], scores: Sequence[float]) -> dict[str, float]:
    """Per modality, the sum of its items' scores."""
    out: dict[str, float] = {}
    for it, s in zip(items, scores, strict=True):
        out[it.modality] = out.get(it.modality, 0.0) + s
    return out
