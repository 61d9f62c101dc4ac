"""The HTML summary page `medfuse demo` writes: one self-contained file per run.

`write_html_summary(out_path, items, scores)` renders, for every (case, diagnosis) pair:

- the chest X-ray with the model's boxes (solid) and the ground-truth boxes (dashed),
- the ECG (standard 4x3 layout plus a lead II rhythm strip for the 12 standard leads,
  one row per lead otherwise), in mV against seconds on a light ECG grid,
- the lab table (abnormal rows highlighted) and the vital signs,
- the diagnoses (probability bars, present yes/no, ground truth when the case has
  labels, diseases not assessed for lack of data), the modality weights,
- the evidence chain, the checked reasoning with the removed claims listed apart and
  labelled as removed, and the report,

followed by the cohort scores and a footer (research software, not a medical device;
model name and version).

The page has no external resources: CSS is inline and the figures are base64 PNG data
URIs, so it can be mailed or archived as one file. Every text value goes through
`html.escape` (notes, reports and model output are user data), and nothing of a case
beyond its `case_id` and the values shown is written: no patient id, no dates (vital
sign times are shown relative to the first set), no notes, no provenance.

Figures are drawn with `matplotlib.figure.Figure` and the Agg canvas directly, never
through pyplot, so writing a page changes no global matplotlib state (backend, open
figures) of the calling program.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medfuse.record.boxes import grid_to_pixel
from medfuse.record.case import (
    MODALITIES,
    VITAL_FIELDS,
    CXRImage,
    LabResult,
    PatientCase,
)
from medfuse.record.store import write_text_atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from medfuse.knowledge.panel import Panel
    from medfuse.model.diagnosis import Diagnosed

__all__ = ["render_html_summary", "write_html_summary"]

log = logging.getLogger(__name__)

NA = "n/a"
DISCLAIMER = ("medfuse is research software, not a medical device. Its output is not a diagnosis and must not be "
              "used for clinical decisions.")

# Box colours: predicted and ground truth must stay distinguishable on a grey image and
# for the common colour-vision deficiencies (orange vs. blue, plus solid vs. dashed).
PRED_COLOUR = "#ff8c00"
TRUTH_COLOUR = "#1e90ff"

STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
# The printed 12-lead layout: rows of the 4x3 grid, each column 2.5 s of the recording.
LAYOUT_4X3 = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
ECG_SHOWN_S = 10.0  # longer recordings (Holter) are cut: a summary page shows the first 10 s
ECG_PLOT_FS = 250.0  # plotted sampling rate: ample for the eye, and half the points of a 500 Hz ECG
CXR_MAX_SIDE = 768  # larger images are subsampled before plotting: the PNG stays small

ABNORMAL_FLAGS = {"L", "H", "LL", "HH", "A", "AA"}
CRITICAL_FLAGS = {"LL", "HH", "AA"}
VITAL_NAMES = {"heart_rate": ("heart rate", "/min"), "sbp": ("systolic BP", "mm[Hg]"),
               "dbp": ("diastolic BP", "mm[Hg]"), "temperature": ("temperature", "Cel"), "spo2": ("SpO2", "%"),
               "resp_rate": ("respiratory rate", "/min")}
_FRONTAL = {"PA", "AP", "AP SUPINE", "PA/AP", "FRONTAL"}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
main{max-width:1200px;margin:0 auto;padding:1rem 1.5rem 3rem}
h1{margin:.6rem 0 .2rem}h2{margin-top:0;border-bottom:2px solid #dde1e7;padding-bottom:.3rem}
h3{margin:1.1rem 0 .4rem;font-size:1.05rem}
section.case,section.scores{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:1rem 1.25rem;margin:1.25rem 0}
.banner{background:#fff4e5;border:1px solid #f0b35b;border-radius:6px;padding:.5rem .8rem}
.grid{display:grid;grid-template-columns:minmax(280px,420px) 1fr;gap:1.25rem;align-items:start}
@media (max-width:800px){.grid{grid-template-columns:1fr}}
img{max-width:100%;height:auto;display:block}
table{border-collapse:collapse;font-size:.88rem;margin:.3rem 0;width:100%}
th,td{border-bottom:1px solid #e6e9ee;padding:.22rem .45rem;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.abn td{background:#fff1e6}tr.crit td{background:#ffdcdc;font-weight:600}
.bar{display:inline-block;height:.7rem;background:#4a78c2;border-radius:2px;vertical-align:middle}
.bar.pos{background:#d9534f}.bar.off{background:#c8cdd4}
.barbox{display:inline-block;width:120px;background:#eef0f3;border-radius:2px;margin-right:.4rem;vertical-align:middle}
.yes{color:#b02a25;font-weight:600}.no{color:#59616d}
.missing{color:#6b7380;font-style:italic}
.removed{background:#fdf3f3;border-left:4px solid #d9534f;padding:.4rem .7rem;margin:.4rem 0}
.removed li{text-decoration:line-through;text-decoration-color:#d9534f80}
.removed li .why{text-decoration:none;display:inline-block;color:#8a3b38;font-style:italic}
.removed.boxes li{text-decoration:none}
.text{white-space:pre-wrap;background:#f8f9fb;border:1px solid #e6e9ee;border-radius:4px;padding:.5rem .7rem}
nav ul{columns:4 160px;padding-left:1.1rem}
footer{border-top:1px solid #dde1e7;margin-top:2rem;padding-top:.8rem;font-size:.85rem;color:#4b5361}
"""


# --------------------------------------------------------------------------- small helpers

def _e(value: object) -> str:
    """Escaped text of any value (None as an empty string)."""
    return "" if value is None else html.escape(str(value), quote=True)


def _num(value: object, digits: int = 3) -> str:
    """A number for a table cell: ints as ints, floats to `digits`, missing/NaN as n/a."""
    if value is None or isinstance(value, bool):
        return NA if value is None else ("yes" if value else "no")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return NA  # NaN is what a metric without positives returns: not a score of 0
        return f"{v:.{digits}f}" if abs(v) < 1e6 else f"{v:.4g}"
    return str(value)


def _g(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _table(header: Sequence[str], rows: Iterable[str], cls: str = "") -> str:
    """A table from escaped header names and ready-made (already escaped) <tr> rows."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _bar(fraction: float, cls: str = "") -> str:
    width = max(0.0, min(1.0, fraction)) * 100
    return (f'<span class="barbox"><span class="bar {cls}" style="width:{width:.1f}%"></span></span>')


def _missing(text: str) -> str:
    return f'<p class="missing">{_e(text)}</p>'


def _png_data_uri(fig: Any, alt: str) -> str:
    """Render a matplotlib Figure on an Agg canvas into an <img> with a base64 PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches itself to the figure; no pyplot, no global backend switch
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _safe_figure(render: Callable[[], str], what: str) -> str:
    """Run one figure renderer; a figure that fails says so instead of losing the page.

    A summary of 20 cases should not be lost to one odd recording (a NaN-only lead, an
    image of one pixel); the failure is logged with its traceback for the developer.
    """
    try:
        return render()
    except Exception as exc:  # noqa: BLE001 - see docstring
        log.warning("could not draw the %s", what, exc_info=True)
        return _missing(f"The {what} could not be drawn ({type(exc).__name__}).")


# --------------------------------------------------------------------------- chest X-ray

def _pick_cxr(images: Sequence[CXRImage]) -> int | None:
    """Index of the image the model reads (mirrors `medfuse.model.inputs.pick_cxr`, which
    would import torch): the first frontal view with pixels, else the first with pixels."""
    loaded = [i for i, im in enumerate(images) if im.pixels is not None and im.pixels.size > 0]
    for i in loaded:
        if (images[i].view or "").strip().upper() in _FRONTAL:
            return i
    return loaded[0] if loaded else None


def _draw_boxes(ax: Axes, boxes: Iterable[tuple[str, list[int]]], width: int, height: int, colour: str,
                linestyle: str, label_below: bool) -> int:
    """Draw labelled 0-999 grid boxes in pixel coordinates; returns how many were drawn."""
    from matplotlib.patches import Rectangle

    n = 0
    for label, box in boxes:
        try:
            x1, y1, x2, y2 = grid_to_pixel(box, width, height)
        except ValueError:
            continue  # an invalid box is not drawn; the findings table lists it all the same
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.6,
                               linestyle=linestyle))
        # Predicted labels above the box, ground truth below it, so the two do not overlap
        # when the model finds the right box.
        ty, va = (y2, "top") if label_below else (y1, "bottom")
        ax.text(x1, ty, label, color="white", fontsize=7, va=va, ha="left", clip_on=True,
                bbox={"facecolor": colour, "edgecolor": "none", "alpha": 0.8, "pad": 1.0})
        n += 1
    return n


def _cxr_figure(case: PatientCase, index: int, predicted: Sequence[tuple[str, list[int]]]) -> str:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    image = case.cxr[index]
    px = image.pixels
    assert px is not None
    height, width = px.shape
    # 16-bit pixels are scaled by their effective bit depth, as the model's input is: a
    # 12-bit detector stored in uint16 is not shown 16 times too dark.
    vmax = 255 if px.dtype == np.uint8 else 2 ** max(8, int(px.max()).bit_length()) - 1
    step = max(1, math.ceil(max(height, width) / CXR_MAX_SIDE))
    shown = px[::step, ::step]

    fig = Figure(figsize=(4.2, 4.2 * min(1.6, max(0.6, height / width))), dpi=110)
    ax = fig.add_axes((0, 0, 1, 1))
    # extent keeps the axes in original pixels, so boxes need no rescaling after subsampling
    ax.imshow(shown, cmap="gray", vmin=0, vmax=vmax, extent=(0, width, height, 0), interpolation="bilinear")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    truth = []
    if case.labels is not None:
        truth = [(f.label, b) for f in case.labels.findings if f.image_index == index for b in f.boxes]
    n_pred = _draw_boxes(ax, predicted, width, height, PRED_COLOUR, "-", label_below=False)
    n_truth = _draw_boxes(ax, truth, width, height, TRUTH_COLOUR, "--", label_below=True)
    handles = [Line2D([], [], color=PRED_COLOUR, lw=1.6, ls="-", label=f"model ({n_pred})"),
               Line2D([], [], color=TRUTH_COLOUR, lw=1.6, ls="--", label=f"ground truth ({n_truth})")]
    ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.85)
    return _png_data_uri(fig, f"chest X-ray {index} of case {case.case_id} with boxes")


def _cxr_panel(case: PatientCase, d: Diagnosed) -> str:
    if not case.cxr:
        return _missing("no chest X-ray")
    chosen = _pick_cxr(case.cxr)
    parts = []
    for i, image in enumerate(case.cxr):
        view = f" ({image.view})" if image.view else ""
        if image.pixels is None or image.pixels.size == 0:
            parts.append(_missing(f"chest X-ray {i}{view}: pixels not loaded"))
            continue
        # The model reads one image; its boxes belong to that one only.
        predicted = [(f.label, f.box) for f in d.result.findings] if i == chosen else []
        caption = f"chest X-ray {i}{view}, {image.width}x{image.height}" + (" (read by the model)" if i == chosen else "")
        fig = _safe_figure(lambda i=i, p=predicted: _cxr_figure(case, i, p), "chest X-ray")
        parts.append(f"<figure>{fig}<figcaption>{_e(caption)}</figcaption></figure>")
    return "".join(parts) + _findings_table(case, d)


def _findings_table(case: PatientCase, d: Diagnosed) -> str:
    """The boxes as text (0-999 grid): readable without the image, and exact."""
    chosen = _pick_cxr(case.cxr)
    rows = [("model", f.label, f.box, "" if chosen is None else str(chosen)) for f in d.result.findings]
    if case.labels is not None:
        rows += [("ground truth", f.label, b, str(f.image_index)) for f in case.labels.findings for b in f.boxes]
    if not rows:
        return _missing("no image findings")
    body = (f"<tr><td>{_e(who)}</td><td>{_e(label)}</td><td class=\"num\">{_e(box)}</td><td>{_e(image)}</td></tr>"
            for who, label, box, image in rows)
    return _table(["by", "finding", "box (0-999)", "image"], body)


# --------------------------------------------------------------------------- ECG

def _ecg_grid(ax: Axes, t0: float, t1: float, lim: float) -> None:
    """The paper grid: 0.04 s x 0.1 mV minor, 0.2 s x 0.5 mV major, as two line collections
    (cheaper than hundreds of ticks)."""
    from matplotlib.collections import LineCollection

    for dt, dv, colour, lw in ((0.04, 0.1, "#fbe3e3", 0.35), (0.2, 0.5, "#f2b8b8", 0.6)):
        xs = np.arange(math.ceil(t0 / dt) * dt, t1 + 1e-9, dt)
        ys = np.arange(-math.floor(lim / dv) * dv, lim + 1e-9, dv)
        segs = [((x, -lim), (x, lim)) for x in xs] + [((t0, y), (t1, y)) for y in ys]
        ax.add_collection(LineCollection(segs, colors=colour, linewidths=lw, zorder=0))


def _ecg_figure(case: PatientCase) -> str:
    from matplotlib.figure import Figure

    ecg = case.ecg
    assert ecg is not None and ecg.signal is not None
    fs = float(ecg.fs)
    n = min(ecg.signal.shape[0], int(round(ECG_SHOWN_S * fs)))
    step = max(1, int(fs // ECG_PLOT_FS))  # integer decimation: keeps sample times exact
    sig = np.asarray(ecg.signal[:n:step], dtype=float)
    t = np.arange(sig.shape[0]) * step / fs
    duration = n / fs
    finite = np.abs(sig[np.isfinite(sig)])
    # A shared mV scale for every lead (amplitudes compare across leads, as on paper).
    lim = float(np.clip(np.percentile(finite, 99.9) * 1.1, 1.0, 5.0)) if finite.size else 1.5
    names = {name.upper(): k for k, name in enumerate(ecg.leads)}
    standard = all(lead.upper() in names for lead in STANDARD_LEADS) and duration >= 2.0

    def panel(ax: Axes, k: int, a: float, b: float, name: str, left: bool, bottom: bool) -> None:
        sel = (t >= a) & (t < b + 1e-9)
        _ecg_grid(ax, a, b, lim)
        ax.plot(t[sel], sig[sel, k], color="black", lw=0.6)
        ax.set_xlim(a, b)
        ax.set_ylim(-lim, lim)
        ax.text(0.01, 0.96, name, transform=ax.transAxes, fontsize=7, fontweight="bold", va="top")
        ax.tick_params(labelsize=6, length=2)
        if not left:
            ax.tick_params(labelleft=False)
        if not bottom:
            ax.tick_params(labelbottom=False)
        for spine in ax.spines.values():
            spine.set_linewidth(0.4)

    if standard:
        fig = Figure(figsize=(10.5, 5.4), dpi=100)
        gs = fig.add_gridspec(4, 4, hspace=0.12, wspace=0.04, left=0.055, right=0.99, top=0.96, bottom=0.09)
        seg = duration / 4
        for r, row in enumerate(LAYOUT_4X3):
            for c, lead in enumerate(row):
                k = names[lead.upper()]
                panel(fig.add_subplot(gs[r, c]), k, c * seg, (c + 1) * seg, ecg.leads[k], c == 0, False)
        rhythm = fig.add_subplot(gs[3, :])
        k = names["II"]
        panel(rhythm, k, 0.0, duration, f"{ecg.leads[k]} (rhythm)", True, True)
        rhythm.set_xlabel("time (s)", fontsize=7)
    else:
        rows = len(ecg.leads)
        fig = Figure(figsize=(10.5, 0.75 * rows + 0.6), dpi=100)
        gs = fig.add_gridspec(rows, 1, hspace=0.1, left=0.055, right=0.99, top=0.98, bottom=0.5 / (0.75 * rows + 0.6))
        for k, name in enumerate(ecg.leads):
            ax = fig.add_subplot(gs[k, 0])
            panel(ax, k, 0.0, duration, name, True, k == rows - 1)
        ax.set_xlabel("time (s)", fontsize=7)
    fig.supylabel("mV", fontsize=7, x=0.012)
    return _png_data_uri(fig, f"ECG of case {case.case_id}")


def _ecg_panel(case: PatientCase) -> str:
    ecg = case.ecg
    if ecg is None:
        return _missing("no ECG")
    if ecg.signal is None or ecg.signal.size == 0:
        return _missing("ECG recorded but its signal is not loaded")
    total = ecg.signal.shape[0] / ecg.fs
    shown = min(total, ECG_SHOWN_S)
    caption = (f"{len(ecg.leads)} leads, {ecg.fs:g} Hz, {total:.1f} s"
               + (f" (first {shown:.0f} s shown)" if total > shown + 1e-9 else "")
               + "; grid 0.2 s x 0.5 mV (minor 0.04 s x 0.1 mV)")
    fig = _safe_figure(lambda: _ecg_figure(case), "ECG")
    return f"<figure>{fig}<figcaption>{_e(caption)}</figcaption></figure>"


# --------------------------------------------------------------------------- labs, vitals

def _lab_row(r: LabResult) -> str:
    if r.value is not None:
        value = f"{r.censored or ''}{r.value:g}"
    else:
        value = r.value_text or NA
    if r.ref_low is not None and r.ref_high is not None:
        ref = f"{r.ref_low:g}–{r.ref_high:g}"
    elif r.ref_low is not None:
        ref = f"≥ {r.ref_low:g}"
    elif r.ref_high is not None:
        ref = f"≤ {r.ref_high:g}"
    else:
        ref = ""
    abnormal = r.flag in ABNORMAL_FLAGS
    if r.flag is None and r.value is not None and r.censored is None:
        # An unflagged value outside its stated range is still abnormal to a reader.
        abnormal = (r.ref_low is not None and r.value < r.ref_low) or (r.ref_high is not None and r.value > r.ref_high)
    cls = "crit" if r.flag in CRITICAL_FLAGS else "abn" if abnormal else ""
    attr = f' class="{cls}"' if cls else ""
    return (f"<tr{attr}><td>{_e(r.name)}</td><td class=\"num\">{_e(value)}</td><td>{_e(r.unit)}</td>"
            f"<td class=\"num\">{_e(ref)}</td><td>{_e(r.flag)}</td></tr>")


def _labs_panel(case: PatientCase) -> str:
    if not case.labs:
        return _missing("no labs")
    return _table(["test", "value", "unit", "reference", "flag"], (_lab_row(r) for r in case.labs))


def _vitals_panel(case: PatientCase) -> str:
    if not case.vitals:
        return _missing("no vital signs")
    fields = [f for f in VITAL_FIELDS if any(getattr(v, f) is not None for v in case.vitals)]
    times = [v.time for v in case.vitals if v.time is not None]
    first = min(times) if times else None
    rows = []
    for i, v in enumerate(case.vitals):
        # Relative times only: absolute dates are identifying and say nothing the order doesn't.
        if v.time is not None and first is not None:
            minutes = int((v.time - first).total_seconds() // 60)
            when = f"+{minutes // 60}:{minutes % 60:02d} h"
        else:
            when = f"set {i + 1}"
        cells = "".join(f'<td class="num">{_e(_g(getattr(v, f)) or "–")}</td>' for f in fields)
        rows.append(f"<tr><td>{_e(when)}</td>{cells}</tr>")
    header = ["time"] + [f"{VITAL_NAMES[f][0]} ({VITAL_NAMES[f][1]})" for f in fields]
    return _table(header, rows)


# --------------------------------------------------------------------------- diagnoses, weights

def _truth_names(case: PatientCase) -> set[str] | None:
    """Normalised names of the case's ground-truth panel diseases; None without labels."""
    if case.labels is None:
        return None
    from medfuse.knowledge.panel import normalise_term

    return {normalise_term(d.name) for d in case.labels.diagnoses if d.in_panel}


@lru_cache(maxsize=1)
def _panel() -> Panel:
    from medfuse.knowledge.panel import load_panel

    return load_panel()


def _is_true(name: str, truth: set[str]) -> bool:
    """Whether a displayed disease name (English or Chinese) is one of the true diseases."""
    from medfuse.knowledge.panel import normalise_term

    disease = _panel().lookup(name)  # the display name may be the Chinese one
    names = {normalise_term(name)}
    if disease is not None:
        names |= {normalise_term(disease.name), normalise_term(disease.key)}
    return bool(names & truth)


def _yes_no(flag: bool) -> str:
    return '<span class="yes">yes</span>' if flag else '<span class="no">no</span>'


def _diagnoses_panel(case: PatientCase, d: Diagnosed) -> str:
    r = d.result
    truth = _truth_names(case)
    header = ["disease", "ICD-10", "probability", "present"] + (["ground truth"] if truth is not None else [])
    rows = []
    for x in sorted(r.diagnoses, key=lambda x: -x.probability):
        gt = f"<td>{_yes_no(_is_true(x.name, truth))}</td>" if truth is not None else ""
        bar = _bar(x.probability, "pos" if x.present else "")
        rows.append(f"<tr><td>{_e(x.name)}</td><td>{_e(x.icd10)}</td>"
                    f'<td class="num">{bar}{x.probability:.2f}</td><td>{_yes_no(x.present)}</td>{gt}</tr>')
    out = _table(header, rows) if rows else _missing("no disease could be assessed")
    if r.insufficient_data:
        items = []
        for name in r.insufficient_data:
            mark = " (ground truth: present)" if truth is not None and _is_true(name, truth) else ""
            items.append(f"<li>{_e(name)}{_e(mark)}</li>")
        out += ("<p>Not assessed, insufficient data (no probability is given without the modalities that "
                f"carry the evidence):</p><ul>{''.join(items)}</ul>")
    return out


def _weights_panel(d: Diagnosed) -> str:
    w = d.result.modality_weights
    rows = []
    for m in MODALITIES:
        v = float(getattr(w, m))
        label = f"{v:.2f}" if v > 0 else "0 (absent)"
        rows.append(f'<tr><td>{_e(m)}</td><td class="num">{_bar(v, "" if v > 0 else "off")}{_e(label)}</td></tr>')
    return _table(["modality", "weight"], rows)


# --------------------------------------------------------------------------- evidence, reasoning

def _value_text(value: object, unit: str | None) -> str:
    if value is None:
        text = ""
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return f"{text} {unit}".strip() if unit else text


def _evidence_panel(d: Diagnosed) -> str:
    # `Diagnosed.evidence` carries units and abnormal flags; the JSON entries do not.
    items = [(e.modality, e.item, _value_text(e.value, e.unit), e.interpretation, e.source, e.abnormal)
             for e in d.evidence]
    if not items:
        items = [(e.modality, e.item, _value_text(e.value, None), e.interpretation, e.source, False)
                 for e in d.result.evidence]
    if not items:
        return _missing("no evidence items")

    def row(x: tuple[str, str, str, str, str, bool]) -> str:
        attr = ' class="abn"' if x[5] else ""
        return (f"<tr{attr}><td>{_e(x[0])}</td><td>{_e(x[1])}</td><td class=\"num\">{_e(x[2])}</td>"
                f"<td>{_e(x[3])}</td><td>{_e(x[4])}</td></tr>")

    header = ["modality", "item", "value", "reading", "source"]
    abnormal = [x for x in items if x[5]]
    normal = [x for x in items if not x[5]]
    out = _table(header, map(row, abnormal)) if abnormal else ""
    if normal:
        # Normal items fold away (plain <details>, no script): the abnormal ones carry the case.
        title = f"{len(normal)} item(s) within normal limits" if abnormal else f"{len(normal)} evidence item(s)"
        out += f"<details><summary>{_e(title)}</summary>{_table(header, map(row, normal))}</details>"
    if d.dropped_evidence:
        out += _missing(f"{d.dropped_evidence} evidence item(s) not found in the case data were withheld")
    return out


def _reasoning_panel(d: Diagnosed) -> str:
    r = d.result
    out = f'<div class="text">{_e(r.reasoning)}</div>' if r.reasoning.strip() else _missing("no reasoning text")
    dropped = d.check.dropped if d.check is not None else []
    if dropped:
        items = "".join(f'<li>{_e(c.sentence)} <span class="why">(removed: {_e(c.reason)})</span></li>'
                        for c in dropped)
        out += ('<div class="removed"><strong>Removed, not supported by this case\'s data. '
                "These statements are not facts and are shown only for transparency:</strong>"
                f"<ul>{items}</ul></div>")
    if d.dropped_findings:
        # Generated boxes that were invalid, had no image, or lost to the finding head's box.
        items = "".join(f"<li>{_e(reason)}</li>" for reason in d.dropped_findings)
        out += (f'<div class="removed boxes"><strong>Image boxes removed (not drawn):</strong>'
                f"<ul>{items}</ul></div>")
    return out


# --------------------------------------------------------------------------- sections

def _case_section(case: PatientCase, d: Diagnosed) -> str:
    r = d.result
    cid = _e(r.case_id)
    mods = ", ".join(case.modalities()) or "none"
    return f"""
<section class="case" id="case-{cid}">
<h2>case {cid}</h2>
<p>modalities: {_e(mods)}</p>
<div class="grid">
<div><h3>Chest X-ray</h3>{_cxr_panel(case, d)}
<h3>Modality weights</h3>{_weights_panel(d)}</div>
<div><h3>Diagnoses</h3>{_diagnoses_panel(case, d)}</div>
</div>
<h3>ECG</h3>{_ecg_panel(case)}
<div class="grid">
<div><h3>Vital signs</h3>{_vitals_panel(case)}</div>
<div><h3>Labs</h3>{_labs_panel(case)}</div>
</div>
<h3>Evidence chain</h3>{_evidence_panel(d)}
<h3>Reasoning</h3>{_reasoning_panel(d)}
<h3>Report</h3><div class="text">{_e(r.report)}</div>
</section>"""


def _cell(value: object) -> str:
    """A score value: numbers formatted, pairs as intervals, missing as n/a."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (int, float, type(None))) and not isinstance(v, bool) for v in value):
        return f"{_num(value[0])}–{_num(value[1])}"  # a (low, high) confidence interval
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value) or NA
    if isinstance(value, str):
        return value or NA
    return _num(value)


def _scores_table(scores: Mapping[str, Any], depth: int = 0) -> str:
    """Scalars as a metric/value table; dicts of dicts (per-disease metrics) as a grid with
    one row per key and one column per metric found in any row (n/a where a row lacks it)."""
    scalars = [(k, v) for k, v in scores.items() if not isinstance(v, Mapping)]
    nested = [(k, v) for k, v in scores.items() if isinstance(v, Mapping)]
    out = ""
    if scalars:
        out += _table(["metric", "value"], (f'<tr><td>{_e(k)}</td><td class="num">{_e(_cell(v))}</td></tr>'
                                            for k, v in scalars))
    for key, sub in nested:
        out += f"<h3>{_e(key)}</h3>"
        if sub and all(isinstance(v, Mapping) for v in sub.values()):
            columns: list[str] = []
            for v in sub.values():
                columns += [c for c in v if c not in columns]
            rows = (f"<tr><td>{_e(name)}</td>"
                    + "".join(f'<td class="num">{_e(_cell(v.get(c)))}</td>' for c in columns) + "</tr>"
                    for name, v in sub.items())
            out += _table([str(key)] + [str(c) for c in columns], rows)
        elif not sub:
            out += _missing(NA)
        elif depth < 3:
            out += _scores_table(sub, depth + 1)
        else:
            out += f"<p>{_e(_cell(str(sub)))}</p>"
    return out


def _scores_section(scores: Mapping[str, Any] | None) -> str:
    if scores is None:
        return ""
    body = _scores_table(scores) if scores else _missing("no scores")
    return f'<section class="scores" id="scores"><h2>Cohort scores</h2>{body}</section>'


def render_html_summary(items: Sequence[tuple[PatientCase, Diagnosed]], scores: Mapping[str, Any] | None = None,
                        title: str = "medfuse demo") -> str:
    """The page as a string (see the module docstring for what it holds)."""
    models = sorted({(d.result.model.name, d.result.model.version) for _, d in items})
    model_text = "; ".join(f"{name} {version}" for name, version in models) or "none"
    for case, d in items:
        if case.case_id != d.result.case_id:
            raise ValueError(f"case {case.case_id!r} is paired with the result of {d.result.case_id!r}")
    toc = "".join(f'<li><a href="#case-{_e(d.result.case_id)}">{_e(d.result.case_id)}</a></li>' for _, d in items)
    if scores is not None:
        toc += '<li><a href="#scores">cohort scores</a></li>'
    nav = f"<nav><ul>{toc}</ul></nav>"
    cases = "".join(_case_section(c, d) for c, d in items) or _missing("no cases")
    from medfuse import __version__

    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="medfuse {_e(__version__)}">
<title>{_e(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<h1>{_e(title)}</h1>
<p class="banner"><strong>Research software, not a medical device.</strong> {len(items)} case(s);
model {_e(model_text)}. Boxes: <span style="color:{PRED_COLOUR}">model, solid</span>;
<span style="color:{TRUTH_COLOUR}">ground truth, dashed</span>.</p>
{nav}
{_scores_section(scores)}
{cases}
<footer><p><strong>{_e(DISCLAIMER)}</strong></p>
<p>model: {_e(model_text)}; generated by medfuse {_e(__version__)}.</p></footer>
</main>
</body>
</html>
"""


def write_html_summary(out_path: str | Path, items: Sequence[tuple[PatientCase, Diagnosed]],
                       scores: Mapping[str, Any] | None = None, title: str = "medfuse demo") -> Path:
    """Write the summary page to `out_path` atomically and return the path.

    The page is written to a temporary file beside the target and renamed over it, so a
    reader (or an interrupted run) never sees a half-written page, and an existing page
    is replaced in one step.
    """
    return write_text_atomic(out_path, render_html_summary(items, scores=scores, title=title))
