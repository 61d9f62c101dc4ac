"""`explain_case`: why the disease head gave a case its probabilities.

Everything here reads the disease head only (no text generation), so an explanation
costs a few batched passes of the fusion model:

1. the case and, for each present modality, the case without it, fused together by
   `MedFuse.fuse` (the reference probabilities and the modality ablation, through the
   model's own missing-modality path);
2. integrated gradients for the explained diseases, one multi-item modality at a time
   (ECG, labs, vitals), and leave-one-out occlusion of the one-item modalities and of
   each variant (`medfuse.explain.attribution`), per item and per modality, with
   per-lead / per-segment ECG saliency;
3. occlusion over the radiograph;
4. counterfactual search over labs and vitals, validated by re-fusing the modified cases
   (`medfuse.explain.counterfactual`).

The explained diseases are those the head reports (probability >= threshold), the absent
ones near their threshold (probability >= `near_threshold` x threshold), and any asked
for; when there is none of those, the most likely disease relative to its threshold.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from medfuse.errors import MedfuseError
from medfuse.explain import attribution, counterfactual
from medfuse.explain.features import CalibratedHead, case_features
from medfuse.explain.schema import (
    DiseaseAttribution,
    DiseaseScore,
    ECGSaliency,
    Explanation,
    ImageSaliency,
    ItemAttribution,
    ModalityAblation,
)
from medfuse.knowledge.labs import load_lab_catalogue
from medfuse.model.assembly import MedFuse
from medfuse.record.case import PatientCase

# What dropping a modality means for the record: the field a case without it has.
_EMPTY: dict[str, object] = {"cxr": [], "ecg": None, "labs": [], "vitals": [], "notes": [], "genomics": []}


def resolve_diseases(model: MedFuse, names: Sequence[str]) -> list[int]:
    """Panel indices of disease names, keys or synonyms; an unknown one is a `MedfuseError`."""
    out = []
    for name in names:
        d = model.panel.lookup(name)
        if d is None:
            raise MedfuseError(f"unknown disease {name!r}; the panel has: {', '.join(model.panel.keys)}")
        out.append(model.panel.diseases.index(d))
    return out


def without_modality(case: PatientCase, modality: str) -> PatientCase:
    """`case` as it would be without `modality` (the other modalities untouched)."""
    return case.model_copy(update={modality: _EMPTY[modality]})


def modality_ablation(model: MedFuse, case: PatientCase,
                      modalities: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[ModalityAblation]]:
    """Fuse `case` and `case` without each of `modalities` in one batch.

    Returns ((D,) probabilities of the case, (D,) thresholds, one row per dropped modality).
    """
    fused = model.fuse([case, *(without_modality(case, m) for m in modalities)])
    p, thr = fused.probabilities, fused.thresholds
    keys = model.panel.keys
    rows = []
    for k, m in enumerate(modalities, start=1):
        rows.append(ModalityAblation(
            modality=m,
            probabilities={d: round(float(p[k, j]), 4) for j, d in enumerate(keys)},
            change={d: round(float(p[k, j] - p[0, j]), 4) for j, d in enumerate(keys)},
            flips=[d for j, d in enumerate(keys) if (p[k, j] >= thr[j]) != (p[0, j] >= thr[j])]))
    return p[0], thr, rows


def explained_diseases(probabilities: np.ndarray, thresholds: np.ndarray, asked: Sequence[int] = (),
                       near_threshold: float = 0.5) -> list[int]:
    """Reported, near-threshold and asked diseases, most probable first (see the module docstring)."""
    chosen = {j for j, (p, t) in enumerate(zip(probabilities, thresholds, strict=True)) if p >= near_threshold * t}
    chosen |= set(asked)
    if not chosen:
        chosen = {int(np.argmax(probabilities / np.maximum(thresholds, 1e-9)))}
    return sorted(chosen, key=lambda j: -probabilities[j])


def explain_case(model: MedFuse, case: PatientCase, *, diseases: Sequence[str] = (), near_threshold: float = 0.5,
                 ig_steps: int = 64, ecg_segments: int = 10, occlusion_window: int = 16, occlusion_stride: int = 16,
                 counterfactuals: bool = True, n_grid: int = 12) -> Explanation:
    """Explain the disease head's calibrated probabilities for one case.

    `diseases`: names or keys to explain besides the reported and near-threshold ones.
    `ig_steps`: integrated-gradients steps (Gauss-Legendre). `occlusion_window` /
    `occlusion_stride`: pixels on the model's square radiograph. `n_grid`: candidate
    values per lab / vital in the counterfactual search.
    """
    t0 = time.perf_counter()
    asked = resolve_diseases(model, diseases)
    catalogue = load_lab_catalogue()
    features = case_features(model, case, catalogue)
    probs, thr, ablation = modality_ablation(model, case, features.present)
    targets = explained_diseases(probs, thr, asked, near_threshold)
    head = CalibratedHead(model, reference=features.batch)
    panel = model.panel

    attrs, delta, p_base = attribution.integrated_gradients(head, features, targets, n_steps=ig_steps)
    occluded = attribution.item_occlusion(head, features, targets)
    image = None
    if "cxr" in features.present:
        size = features.batch["cxr"].shape[-1]
        window, stride = min(occlusion_window, size), min(occlusion_stride, size)
        image = attribution.cxr_occlusion(head, features, targets, window, stride)
    explained: list[DiseaseAttribution] = []
    for k, d in enumerate(targets):
        scores = attribution.item_scores(features, attrs, occluded, k)
        items = [ItemAttribution(modality=it.modality, item=it.key, label=it.label, value=it.value, unit=it.unit,
                                 attribution=round(s, 6)) for it, s in zip(features.items, scores, strict=True)]
        items.sort(key=lambda a: -abs(a.attribution))
        ecg = None
        if "ecg" in features.present:
            leads, seg = attribution.ecg_segments(features, attrs, k, ecg_segments)
            ecg = ECGSaliency(fs=model.config.ecg_fs, leads=leads, segment_seconds=model.config.ecg_seconds / ecg_segments,
                              scores=[[round(x, 6) for x in row] for row in seg])
        saliency = None
        if image is not None and features.image_index is not None:
            saliency = ImageSaliency(image_index=features.image_index,
                                     grid=[[round(float(x), 6) for x in row] for row in image[k]],
                                     window_fraction=window / size)
        explained.append(DiseaseAttribution(
            disease=panel.keys[d], name=panel.diseases[d].name, probability=round(float(probs[d]), 4),
            modality_baselines={m: round(float(v[k]), 6) for m, v in p_base.items()},
            convergence_delta={m: round(float(v[k]), 6) for m, v in delta.items()},
            modalities={m: round(v, 6) for m, v in attribution.modality_totals(features.items, scores).items()},
            items=items, ecg_saliency=ecg, image_saliency=saliency))

    found, missing = [], []
    if counterfactuals:
        goals = ["absent" if probs[d] >= thr[d] else "present" for d in targets]
        proposals = counterfactual.search(head, features, model.stats, catalogue, targets, thr, goals, n_grid=n_grid)
        found = counterfactual.validate(model, case, [proposals[d] for d in targets if d in proposals], probs, catalogue)
        missing = [panel.keys[d] for d in targets if d not in proposals]

    return Explanation(
        case_id=case.case_id,
        model=f"{model.name} {model.version}",
        diseases=[DiseaseScore(disease=d.key, name=d.name, probability=round(float(probs[j]), 4),
                               threshold=round(float(thr[j]), 4), present=bool(probs[j] >= thr[j]))
                  for j, d in enumerate(panel.diseases)],
        explained=[panel.keys[d] for d in targets],
        modalities_present=list(features.present),
        attributions=explained,
        ablation=ablation,
        counterfactuals=found,
        no_counterfactual=missing,
        method={
            "attribution": f"ECG, labs, vitals: captum IntegratedGradients per modality ({ig_steps} steps, "
                           "gausslegendre), from the modality's baseline (flat leads, items not observed), the other modalities as they are; radiograph, notes, "
                           "each variant: P(case) - P(case without it); target: calibrated P(disease)",
            "image_saliency": f"captum Occlusion, {occlusion_window} px window, stride {occlusion_stride} px on the "
                              f"model's {model.config.cxr_size} px image, mean-grey fill",
            "ecg_saliency": f"IG summed per lead over {ecg_segments} segments of the model's "
                            f"{model.config.ecg_seconds:g} s window",
            "ablation": "the case re-fused without the modality (MedFuse.fuse)",
            "counterfactuals": f"one item ({n_grid}-point grid + bisection), else two items; validated by MedFuse.fuse",
            "near_threshold": near_threshold,
        },
        seconds=round(time.perf_counter() - t0, 3),
    )
