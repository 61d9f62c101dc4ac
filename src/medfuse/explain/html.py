"""An explanation as HTML: radiograph with the saliency overlay, per-lead ECG saliency
strips, attribution bars, the modality-ablation table and the counterfactual list.

`explanation_html_fragment` is the body (for pages that embed it, such as the review
service); `render_html` wraps it in a self-contained page; `write_explanation_html` writes
that page atomically. Images are PNGs drawn with matplotlib's object API (no pyplot global
state, safe in a server) and inlined as base64. Every text from the case or the model is
escaped.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path

import numpy as np

from medfuse.explain.schema import DiseaseAttribution, Explanation
from medfuse.io.ecg_leads import STANDARD_12
from medfuse.model.inputs import ecg_array
from medfuse.record.case import PatientCase
from medfuse.record.store import write_text_atomic

_TOP_ITEMS = 12  # attribution bars shown per disease
# Diseases (most probable first) drawn with images: each radiograph and ECG figure costs
# about 0.4 s and 100 kB, and the first few are the ones a reader looks at.
_IMAGES_FOR = 3

_CSS = """
.mfx { font-family: system-ui, sans-serif; color: #222; max-width: 1100px; }
.mfx h2 { margin: 1.2em 0 .4em; font-size: 1.15em; }
.mfx h3 { margin: 1em 0 .3em; font-size: 1em; }
.mfx table { border-collapse: collapse; font-size: .85em; }
.mfx td, .mfx th { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
.mfx th:first-child, .mfx td:first-child { text-align: left; }
.mfx .bar { display: flex; align-items: center; gap: 6px; font-size: .85em; margin: 1px 0; }
.mfx .bar .lbl { width: 14em; text-align: right; overflow: hidden; white-space: nowrap; }
.mfx .bar .track { position: relative; width: 320px; height: 12px; background: #f3f3f3; }
.mfx .bar .pos { position: absolute; left: 50%; height: 12px; background: #c0392b; }
.mfx .bar .neg { position: absolute; right: 50%; height: 12px; background: #2471a3; }
.mfx .note { color: #666; font-size: .85em; }
.mfx img { max-width: 100%; }
.mfx .invalid { color: #a00; }
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _cxr_overlay(attr: DiseaseAttribution, case: PatientCase) -> str | None:
    sal = attr.image_saliency
    if sal is None or sal.image_index >= len(case.cxr) or case.cxr[sal.image_index].pixels is None:
        return None
    px = case.cxr[sal.image_index].pixels.astype(np.float64)
    grid = np.asarray(sal.grid)
    h, w = px.shape
    fig = _figure(4.2, 4.2 * h / max(w, 1))
    ax = fig.add_subplot()
    ax.imshow(px, cmap="gray")
    lim = float(np.abs(grid).max()) or 1.0
    # The grid spans the whole image (the model reads it stretched to a square).
    ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.45, extent=(0, w, h, 0), interpolation="bilinear")
    ax.set_axis_off()
    ax.set_title(f"{attr.name}: red raised P, blue lowered it", fontsize=8)
    return _png(fig)


def _ecg_strip(attr: DiseaseAttribution, case: PatientCase) -> str | None:
    sal = attr.ecg_saliency
    if sal is None or case.ecg is None or not sal.leads:
        return None
    fs, seconds = sal.fs, sal.segment_seconds * len(sal.scores[0])
    n = round(fs * seconds)
    signal, _ = ecg_array(case, fs, n)  # the window the model read, standard lead order
    scores = np.asarray(sal.scores)
    lim = float(np.abs(scores).max()) or 1.0
    t = np.arange(n) / fs
    fig = _figure(8.0, 0.55 * len(sal.leads) + 0.4)
    axes = fig.subplots(len(sal.leads), 1, sharex=True, squeeze=False)[:, 0]
    for ax, lead, row in zip(axes, sal.leads, scores, strict=True):
        ax.imshow(row[None, :], cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", alpha=0.6,
                  extent=(0, seconds, float(signal[STANDARD_12.index(lead)].min()) - 0.1,
                          float(signal[STANDARD_12.index(lead)].max()) + 0.1))
        ax.plot(t, signal[STANDARD_12.index(lead)], color="black", linewidth=0.5)
        ax.set_ylabel(lead, rotation=0, ha="right", va="center", fontsize=7)
        ax.set_yticks([])
    axes[-1].set_xlabel("s", fontsize=7)
    axes[0].set_title(f"{attr.name}: ECG segment saliency per lead", fontsize=8)
    return _png(fig)


def _bars(attr: DiseaseAttribution) -> str:
    items = attr.items[:_TOP_ITEMS]
    lim = max((abs(i.attribution) for i in items), default=0.0) or 1.0
    rows = []
    for it in items:
        width = 50.0 * abs(it.attribution) / lim
        cls = "pos" if it.attribution >= 0 else "neg"
        value = "" if it.value is None else f" {it.value:.4g} {it.unit or ''}"
        rows.append(f'<div class="bar"><span class="lbl">{escape(it.label + value)}</span>'
                    f'<span class="track"><span class="{cls}" style="width:{width:.1f}%"></span></span>'
                    f'<span>{it.attribution:+.3f}</span></div>')
    mods = ", ".join(f"{escape(m)} {v:+.3f}" for m, v in sorted(attr.modalities.items(), key=lambda kv: -abs(kv[1])))
    return f'<p class="note">Per modality: {mods}</p>' + "".join(rows)


def explanation_html_fragment(explanation: Explanation, case: PatientCase) -> str:
    """The explanation as an HTML fragment (a <div> with its own <style>), no <html>/<head>."""
    e = explanation
    parts = [f"<style>{_CSS}</style>", '<div class="mfx">',
             f"<h2>Explanation of the disease head for case {escape(e.case_id)}</h2>",
             (f'<p class="note">Model: {escape(e.model)}. Modalities: {escape(", ".join(e.modalities_present) or "none")}. '
              f"Computed in {e.seconds:.2f} s.</p>")]
    parts.append("<table><tr><th>disease</th><th>P</th><th>threshold</th><th>reported</th></tr>")
    for d in e.diseases:
        parts.append(f"<tr><td>{escape(d.name)}</td><td>{d.probability:.2f}</td><td>{d.threshold:.2f}</td>"
                     f"<td>{'yes' if d.present else ''}</td></tr>")
    parts.append("</table>")
    for rank, attr in enumerate(e.attributions):
        parts.append(f"<h2>{escape(attr.name)} (P = {attr.probability:.2f})</h2><h3>Attribution</h3>{_bars(attr)}")
        if rank >= _IMAGES_FOR:
            continue
        cxr = _cxr_overlay(attr, case)
        if cxr:
            parts.append(f'<h3>Radiograph saliency</h3><img alt="radiograph saliency" src="data:image/png;base64,{cxr}">')
        ecg = _ecg_strip(attr, case)
        if ecg:
            parts.append(f'<h3>ECG saliency</h3><img alt="ECG saliency" src="data:image/png;base64,{ecg}">')
    if e.ablation:
        shown = e.explained
        names = {d.disease: d.name for d in e.diseases}
        parts.append("<h2>Modality ablation</h2><p class='note'>Change in P when the case is re-fused without the "
                     "modality.</p><table><tr><th>without</th>"
                     + "".join(f"<th>{escape(names[k])}</th>" for k in shown) + "</tr>")
        for row in e.ablation:
            cells = "".join(f"<td>{row.change[k]:+.3f}{' *' if k in row.flips else ''}</td>" for k in shown)
            parts.append(f"<tr><td>{escape(row.modality)}</td>{cells}</tr>")
        parts.append("</table><p class='note'>* the decision flips.</p>")
    parts.append("<h2>Counterfactuals</h2>")
    if e.counterfactuals:
        parts.append("<ul>")
        for cf in e.counterfactuals:
            flags = [] if cf.valid else ["not valid on re-run"]
            if not cf.plausible:
                flags.append("outside the plausible range")
            note = f' <span class="invalid">({escape("; ".join(flags))})</span>' if flags else ""
            parts.append(f"<li>{escape(cf.text)}{note}</li>")
        parts.append("</ul>")
    if e.no_counterfactual:
        parts.append(f'<p class="note">No change of one or two labs or vital signs flips: '
                     f'{escape(", ".join(e.no_counterfactual))}.</p>')
    if not e.counterfactuals and not e.no_counterfactual:
        parts.append('<p class="note">None searched.</p>')
    parts.append("</div>")
    return "\n".join(parts)


def render_html(explanation: Explanation, case: PatientCase) -> str:
    """A self-contained HTML page of the explanation (images inlined)."""
    body = explanation_html_fragment(explanation, case)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>medfuse explanation {escape(explanation.case_id)}</title></head>\n<body>\n{body}\n</body></html>\n")


def write_explanation_html(path: str | Path, explanation: Explanation, case: PatientCase) -> Path:
    """Write `render_html` to `path` atomically (a temporary file beside it, renamed over it)."""
    return write_text_atomic(path, render_html(explanation, case))
