"""The reference radiology report (FINDINGS + IMPRESSION) written from drawn findings.

The report only states what the image shows (the boxed findings, their side and zone,
the cardiothoracic ratio), never the clinical diagnosis, so report generation is
graded on image content. Sides are the patient's: on a PA film the image's left half is
the patient's right.
"""

from __future__ import annotations

import numpy as np

from medfuse.record.case import Finding

_ZONES_EN = ("upper", "mid", "lower")
_ZONES_ZH = ("上", "中", "下")


def _side_zone(box: list[int]) -> tuple[str, int]:
    x1, y1, x2, y2 = box
    side = "right" if (x1 + x2) / 2 < 500 else "left"
    cy = (y1 + y2) / 2
    zone = 0 if cy < 380 else (1 if cy < 540 else 2)
    return side, zone


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _sides(f: Finding) -> list[str]:
    return sorted({_side_zone(b)[0] for b in f.boxes}, key=["right", "left"].index)


def write_report(rng: np.random.Generator, findings: list[Finding], ctr: float | None = None, lang: str = "en") -> str:
    """A two-section report for a frontal chest radiograph with these findings."""
    by_label = {f.label: f for f in findings}
    return _report_zh(rng, by_label, ctr) if lang == "zh" else _report_en(rng, by_label, ctr)


def _report_en(rng: np.random.Generator, f: dict[str, Finding], ctr: float | None) -> str:
    found: list[str] = []
    impression: list[str] = []
    if "consolidation" in f:
        side, zone = _side_zone(f["consolidation"].boxes[0])
        found.append(_pick(rng, (f"There is airspace consolidation in the {side} {_ZONES_EN[zone]} zone.",
                                 f"Patchy consolidation is seen in the {side} {_ZONES_EN[zone]} zone.")))
        impression.append(f"{side.capitalize()} {_ZONES_EN[zone]} zone consolidation, compatible with pneumonia in the appropriate clinical setting.")
    if "nodule" in f or "mass" in f:
        label = "mass" if "mass" in f else "nodule"
        side, zone = _side_zone(f[label].boxes[0])
        found.append(f"A {'lobulated ' if label == 'mass' else ''}{label} projects over the {side} {_ZONES_EN[zone]} zone.")
        impression.append(f"{side.capitalize()} {_ZONES_EN[zone]} zone pulmonary {label}; CT chest recommended.")
    if "pulmonary edema" in f:
        found.append(_pick(rng, ("There is bilateral perihilar haziness with interstitial (Kerley B) lines at the bases.",
                                 "Perihilar airspace opacities and septal lines at both bases indicate interstitial oedema.")))
        impression.append("Pulmonary oedema.")
    if "pleural effusion" in f:
        sides = _sides(f["pleural effusion"])
        where = "bilateral" if len(sides) == 2 else sides[0]
        found.append(f"{'Bilateral' if len(sides) == 2 else where.capitalize()} pleural effusion{'s' if len(sides) == 2 else ''} "
                     "with blunting of the costophrenic angle" + ("s." if len(sides) == 2 else "."))
        impression.append(f"{where.capitalize()} pleural effusion{'s' if len(sides) == 2 else ''}.")
    elif "consolidation" not in f:
        found.append(_pick(rng, ("No pleural effusion or pneumothorax.", "The costophrenic angles are sharp.")))
    if not any(k in f for k in ("consolidation", "nodule", "mass", "pulmonary edema")):
        found.insert(0, _pick(rng, ("The lungs are clear.", "No focal consolidation.", "The lung fields are clear.")))
    if "cardiomegaly" in f:
        ratio = f" (cardiothoracic ratio about {ctr:.2f})" if ctr is not None else ""
        found.append(f"The heart is enlarged{ratio}.")
        impression.append("Cardiomegaly.")
    else:
        found.append(_pick(rng, ("The cardiomediastinal silhouette is within normal limits.", "Heart size is normal.")))
    found.append(_pick(rng, ("No acute osseous abnormality.", "The visualised bones are unremarkable.")))
    if not impression:
        impression.append(_pick(rng, ("No acute cardiopulmonary abnormality.", "Normal chest radiograph.")))
    return "FINDINGS: " + " ".join(found) + "\nIMPRESSION: " + " ".join(impression)


def _report_zh(rng: np.random.Generator, f: dict[str, Finding], ctr: float | None) -> str:
    side_zh = {"right": "右", "left": "左"}
    found: list[str] = []
    impression: list[str] = []
    if "consolidation" in f:
        side, zone = _side_zone(f["consolidation"].boxes[0])
        found.append(f"{side_zh[side]}{_ZONES_ZH[zone]}肺野见斑片状实变影。")
        impression.append(f"{side_zh[side]}{_ZONES_ZH[zone]}肺野实变，结合临床考虑肺炎。")
    if "nodule" in f or "mass" in f:
        label = "mass" if "mass" in f else "nodule"
        side, zone = _side_zone(f[label].boxes[0])
        word = "肿块" if label == "mass" else "结节"
        found.append(f"{side_zh[side]}{_ZONES_ZH[zone]}肺野见{'分叶状' if label == 'mass' else ''}{word}影。")
        impression.append(f"{side_zh[side]}{_ZONES_ZH[zone]}肺野{word}，建议胸部CT进一步检查。")
    if "pulmonary edema" in f:
        found.append("双肺门周围见模糊影，双下肺野见Kerley B线。")
        impression.append("肺水肿。")
    if "pleural effusion" in f:
        sides = _sides(f["pleural effusion"])
        where = "双侧" if len(sides) == 2 else side_zh[sides[0]] + "侧"
        found.append(f"{where}肋膈角变钝，见弧形液体密度影。")
        impression.append(f"{where}胸腔积液。")
    elif "consolidation" not in f:
        found.append("双侧肋膈角锐利。")
    if not any(k in f for k in ("consolidation", "nodule", "mass", "pulmonary edema")):
        found.insert(0, _pick(rng, ("双肺纹理清晰，未见实变影。", "双肺野清晰。")))
    if "cardiomegaly" in f:
        ratio = f"（心胸比约{ctr:.2f}）" if ctr is not None else ""
        found.append(f"心影增大{ratio}。")
        impression.append("心脏增大。")
    else:
        found.append("心影大小形态正常。")
    if not impression:
        impression.append("心肺未见明显异常。")
    return "检查所见：" + "".join(found) + "\n印象：" + "".join(impression)
