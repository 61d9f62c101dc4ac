"""The clinician review page: server-rendered HTML, a little vanilla JavaScript, no CDN.

One page per stored case shows the radiograph with the model's boxes (an SVG overlay on
the 0-999 grid, solid) and any boxes supplied with the input (dashed), the ECG as a
12-lead grid (SVG: the standard 3x4 layout of 2.5 s per lead plus a lead II rhythm strip,
on 1 mm / 5 mm paper at 25 mm/s and 10 mm/mV), the lab table with its flags, the vital
signs, the evidence chain (each item an anchor), the reasoning sentence by sentence with
citations linking to the evidence items they mention, the diagnoses, the explanation
fragment from `medfuse.explain`, and the report.

Each diagnosis and each reasoning sentence carries Accept / Reject / Edit controls; the
script posts the decision as JSON to `/api/cases/{ref}/feedback` and marks the row when
the server acknowledged the commit. Decisions already stored are rendered into the page,
so a reload shows them. Every text value is escaped; the page loads nothing from another
origin (a Content-Security-Policy header says so).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from medfuse.record.case import PatientCase
from medfuse.serve.db import Decision, StoredCase

STANDARD_LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
_PX_PER_S = 100.0  # 25 mm/s at 4 px per mm
_PX_PER_MV = 40.0  # 10 mm/mV at 4 px per mm
_MAX_POINTS_PER_S = 250  # enough for the eye; keeps the page small


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# --------------------------------------------------------------------------- ECG

def _lead_index(leads: Sequence[str]) -> dict[str, int]:
    return {name.upper(): i for i, name in enumerate(leads)}


def _polyline(samples: np.ndarray, fs: float, x0: float, y0: float) -> str:
    step = max(1, round(fs / _MAX_POINTS_PER_S))
    ys = samples[::step]
    xs = np.arange(len(ys)) * step / fs * _PX_PER_S + x0
    finite = np.isfinite(ys)
    points = " ".join(f"{x:.1f},{y0 - v * _PX_PER_MV:.1f}" for x, v, ok in zip(xs, ys, finite, strict=True) if ok)
    return f'<polyline class="trace" points="{points}"/>'


def ecg_svg(case: PatientCase) -> str:
    """The ECG as an SVG grid (standard 12-lead layout when the leads are the standard 12)."""
    ecg = case.ecg
    if ecg is None or ecg.signal is None:
        return '<p class="missing">no ECG</p>'
    index = _lead_index(ecg.leads)
    fs = float(ecg.fs)
    signal = np.asarray(ecg.signal, dtype=np.float64)
    row_h = 3.0 * _PX_PER_MV  # 3 mV per row
    parts: list[str] = []
    standard = all(name.upper() in index for row in STANDARD_LAYOUT for name in row)
    if standard:
        cell_s = 2.5
        n = int(cell_s * fs)
        width = 4 * cell_s * _PX_PER_S
        rows = [*STANDARD_LAYOUT, ("II",)]
        for r, row in enumerate(rows):
            y0 = r * row_h + row_h / 2
            for c, name in enumerate(row):
                seconds = cell_s if len(row) > 1 else 4 * cell_s
                start = c * n if len(row) > 1 else 0
                seg = signal[start:start + int(seconds * fs), index[name.upper()]]
                x0 = c * cell_s * _PX_PER_S
                parts.append(f'<g class="lead" data-lead="{_e(name)}">{_polyline(seg, fs, x0, y0)}'
                             f'<text x="{x0 + 4:.0f}" y="{y0 - row_h / 2 + 14:.0f}">{_e(name)}</text></g>')
        height = len(rows) * row_h
    else:
        seconds = min(10.0, signal.shape[0] / fs)
        width = seconds * _PX_PER_S
        for r, name in enumerate(ecg.leads):
            y0 = r * row_h + row_h / 2
            seg = signal[: int(seconds * fs), r]
            parts.append(f'<g class="lead" data-lead="{_e(name)}">{_polyline(seg, fs, 0, y0)}'
                         f'<text x="4" y="{y0 - row_h / 2 + 14:.0f}">{_e(name)}</text></g>')
        height = len(ecg.leads) * row_h
    grid = ('<defs><pattern id="ecg-small" width="4" height="4" patternUnits="userSpaceOnUse">'
            '<path d="M 4 0 L 0 0 0 4" class="minor"/></pattern>'
            '<pattern id="ecg-large" width="20" height="20" patternUnits="userSpaceOnUse">'
            '<rect width="20" height="20" fill="url(#ecg-small)"/><path d="M 20 0 L 0 0 0 20" class="major"/>'
            '</pattern></defs>'
            f'<rect width="{width:.0f}" height="{height:.0f}" fill="url(#ecg-large)"/>')
    caption = f"{len(ecg.leads)} leads, {fs:g} Hz; 25 mm/s, 10 mm/mV"
    return (f'<svg id="ecg-grid" viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="ECG">{grid}'
            f'{"".join(parts)}</svg><p class="caption">{_e(caption)}</p>')


# --------------------------------------------------------------------------- radiograph

def frontal_image_index(case: PatientCase) -> int | None:
    """The radiograph the model's boxes refer to: the first non-lateral image with pixels."""
    with_pixels = [i for i, img in enumerate(case.cxr) if img.pixels is not None]
    frontal = [i for i in with_pixels if (case.cxr[i].view or "").upper() not in ("LATERAL", "LL", "RL")]
    return (frontal or with_pixels or [None])[0]


def cxr_panel(ref: str, case: PatientCase, findings: list[dict[str, Any]]) -> str:
    i = frontal_image_index(case)
    if i is None:
        return '<p class="missing">no radiograph</p>'
    rects = []
    for k, f in enumerate(findings):
        x1, y1, x2, y2 = f["box"]
        rects.append(f'<g class="box model" data-label="{_e(f["label"])}"><rect x="{x1}" y="{y1}" '
                     f'width="{max(1, x2 - x1)}" height="{max(1, y2 - y1)}"/>'
                     f'<text x="{x1 + 6}" y="{y1 + 28}">{k + 1}. {_e(f["label"])}</text></g>')
    for f in case.cxr[i].findings:
        for x1, y1, x2, y2 in f.boxes:
            rects.append(f'<g class="box supplied" data-label="{_e(f.label)}"><rect x="{x1}" y="{y1}" '
                         f'width="{max(1, x2 - x1)}" height="{max(1, y2 - y1)}"/></g>')
    img = case.cxr[i]
    legend = "".join(f"<li>{k + 1}. {_e(f['label'])} {_e(f['box'])}</li>" for k, f in enumerate(findings))
    return (f'<div class="cxr" style="aspect-ratio: {img.width} / {img.height}">'
            f'<img src="/api/cases/{ref}/cxr/{i}.png" alt="radiograph">'
            f'<svg class="boxes" viewBox="0 0 1000 1000" preserveAspectRatio="none">{"".join(rects)}</svg></div>'
            f'<p class="caption">{_e(img.view or "view not stated")}; model boxes solid, supplied boxes dashed</p>'
            f'<ol class="findings">{legend}</ol>')


# --------------------------------------------------------------------------- tables

def _range_flag(value: float | None, low: float | None, high: float | None) -> str | None:
    """H or L against the result's own reference range, for sources that give no flag."""
    if value is None:
        return None
    if high is not None and value > high:
        return "H"
    if low is not None and value < low:
        return "L"
    return None


def labs_panel(case: PatientCase) -> str:
    if not case.labs:
        return '<p class="missing">no lab results</p>'
    rows = []
    for r in case.labs:
        value = r.value_text if r.value_text else ("" if r.value is None else f"{r.value:g}")
        ref = "" if r.ref_low is None and r.ref_high is None else \
            f"{'' if r.ref_low is None else f'{r.ref_low:g}'}-{'' if r.ref_high is None else f'{r.ref_high:g}'}"
        flag = r.flag or _range_flag(r.value, r.ref_low, r.ref_high)
        cls = ' class="abn"' if flag else ""
        rows.append(f"<tr{cls}><td>{_e(r.name)}</td><td class=num>{_e(value)}</td><td>{_e(r.unit)}</td>"
                    f"<td>{_e(ref)}</td><td class=flag>{_e(flag)}</td></tr>")
    return ('<table id="labs"><thead><tr><th>test</th><th>value</th><th>unit</th><th>reference</th><th>flag</th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def vitals_panel(case: PatientCase) -> str:
    if not case.vitals:
        return '<p class="missing">no vital signs</p>'
    v = case.vitals[-1]
    cells = [("heart rate", v.heart_rate, "/min"), ("BP", None if v.sbp is None else f"{v.sbp:g}/{v.dbp or 0:g}", "mm[Hg]"),
             ("temperature", v.temperature, "Cel"), ("SpO2", v.spo2, "%"), ("resp. rate", v.resp_rate, "/min")]
    return "<p class=vitals>" + "; ".join(f"{k} {_e(x if isinstance(x, str) else f'{x:g}')} {u}"
                                          for k, x, u in cells if x is not None) + "</p>"


_CITATION = re.compile(r"\[(E\d+(?:\s*,\s*E\d+)*)\]")


def _citations(sentence: str, evidence: list[dict[str, Any]]) -> list[int]:
    """Evidence items a sentence cites: its `[Ek]` citations (the prompt's numbering), else
    the items it names (case-insensitive, '_' read as a space)."""
    by_cite = {ev.get("cite"): k for k, ev in enumerate(evidence) if ev.get("cite") is not None}
    cited = [by_cite[int(x.strip()[1:])] for m in _CITATION.finditer(sentence) for x in m.group(1).split(",")
             if int(x.strip()[1:]) in by_cite]
    if cited:
        return sorted(set(cited))
    low = sentence.lower()
    out = []
    for k, ev in enumerate(evidence):
        name = str(ev.get("item", "")).replace("_", " ").lower().strip()
        if len(name) >= 2 and re.search(rf"(?<![a-z0-9]){re.escape(name)}(?![a-z0-9])", low):
            out.append(k)
    return out


def _controls(target: str, index: int, text: str, decision: Decision | None) -> str:
    state = decision.decision if decision else ""
    shown = decision.edited if decision and decision.decision == "edit" and decision.edited else text
    return (f'<span class="controls" data-target="{target}" data-index="{index}">'
            f'<button type="button" data-action="accept">Accept</button>'
            f'<button type="button" data-action="reject">Reject</button>'
            f'<button type="button" data-action="edit">Edit</button>'
            f'<span class="editor" hidden><textarea rows="2" maxlength="2000">{_e(shown)}</textarea>'
            f'<button type="button" data-action="save">Save</button></span>'
            f'<span class="status" role="status">{_e(state)}</span></span>')


def _row_attrs(decision: Decision | None) -> str:
    return f' data-decision="{_e(decision.decision)}"' if decision else ""


def render_review_page(stored: StoredCase, case: PatientCase, decisions: list[Decision], script: str,
                       style: str) -> str:
    """The review page of one stored case (see the module docstring)."""
    r = stored.result
    ref = stored.ref
    by = {(d.target, d.index): d for d in decisions}
    evidence = stored.evidence
    ev_items = []
    for k, ev in enumerate(evidence):
        value = ev.get("value")
        value = "" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))
        unit = f" {ev['unit']}" if ev.get("unit") else ""
        cls = ' class="abn"' if ev.get("abnormal") else ""
        ev_items.append(f'<li id="ev-{k}"{cls}><span class="mod">{_e(ev["modality"])}</span> {_e(ev["item"])} '
                        f'{_e(value)}{_e(unit)} ({_e(ev["interpretation"])}) <code>[{_e(ev["source"])}]</code></li>')
    sentences = []
    for i, s in enumerate(stored.sentences):
        d = by.get(("sentence", i))
        shown = d.edited if d and d.decision == "edit" and d.edited else s
        cites = "".join(f'<a class="cite" href="#ev-{k}" data-ev="{k}">[{k + 1}]</a>' for k in _citations(s, evidence))
        sentences.append(f'<li class="sentence" data-index="{i}"{_row_attrs(d)}><span class="text">{_e(shown)}</span>'
                         f'{cites}{_controls("sentence", i, s, d)}</li>')
    dx_rows = []
    for i, dx in enumerate(r["diagnoses"]):
        d = by.get(("diagnosis", i))
        name = d.edited if d and d.decision == "edit" and d.edited else dx["name"]
        dx_rows.append(f'<tr class="diagnosis" data-index="{i}"{_row_attrs(d)}><td class="text">{_e(name)}</td>'
                       f'<td>{_e(dx.get("icd10") or "")}</td><td class=num>{dx["probability"]:.2f}</td>'
                       f'<td>{"yes" if dx["present"] else "no"}</td><td>{_controls("diagnosis", i, dx["name"], d)}</td></tr>')
    insufficient = ("<p class=missing>not assessed (insufficient data): " + _e(", ".join(r["insufficient_data"])) + "</p>"
                    if r["insufficient_data"] else "")
    if stored.explanation_html:
        explanation = stored.explanation_html  # rendered (and escaped) by medfuse.explain
    elif stored.explanation:
        explanation = (f'<p class="missing">the explanation is stored as JSON (<a href="/api/cases/{ref}">'
                       'result</a>); this installation has no HTML rendering of it</p>')
    else:
        explanation = '<p class="missing">no explanation stored for this case</p>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medfuse review</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{style}</style></head>
<body data-ref="{ref}">
<header><h1>Review: case {_e(r["case_id"])}</h1>
<p class="model">{_e(r["model"]["name"])} {_e(r["model"]["version"])}. Research software, not a medical device.
Export: <a href="/api/cases/{ref}/fhir">FHIR DiagnosticReport</a> · <a href="/api/cases/{ref}/sr.dcm">DICOM SR</a></p></header>
<main>
<section id="radiograph"><h2>Chest radiograph</h2>{cxr_panel(ref, case, r["findings"])}</section>
<section id="ecg"><h2>ECG</h2>{ecg_svg(case)}</section>
<section id="lab-results"><h2>Laboratory</h2>{labs_panel(case)}{vitals_panel(case)}</section>
<section id="diagnoses"><h2>Diagnoses</h2>
<table><thead><tr><th>disease</th><th>ICD-10</th><th>probability</th><th>present</th><th>review</th></tr></thead>
<tbody>{"".join(dx_rows)}</tbody></table>{insufficient}</section>
<section id="reasoning"><h2>Reasoning</h2><ol class="sentences">{"".join(sentences) or '<li class="missing">no reasoning kept after checking</li>'}</ol></section>
<section id="evidence"><h2>Evidence chain</h2><ol class="evidence">{"".join(ev_items)}</ol></section>
<section id="explanation"><h2>Explanation</h2>{explanation}</section>
<section id="report"><h2>Report</h2><p>{_e(r["report"])}</p></section>
</main><script>{script}</script></body></html>"""


REVIEW_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5em 3em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;border-bottom:1px solid #ccc}
.missing{color:#777;font-style:italic}.caption{color:#555;font-size:.9em}
.cxr{position:relative;max-width:520px;background:#000}
.cxr img,.cxr svg{position:absolute;inset:0;width:100%;height:100%}
.box rect{fill:none;stroke:#ff3b30;stroke-width:5}.box.supplied rect{stroke:#34c759;stroke-dasharray:18 10}
.box text{fill:#ff3b30;font-size:30px}
#ecg-grid{width:100%;max-width:1000px;background:#fff}
#ecg-grid .minor{fill:none;stroke:#f6c6c6;stroke-width:.5}#ecg-grid .major{fill:none;stroke:#e88;stroke-width:1}
#ecg-grid .trace{fill:none;stroke:#000;stroke-width:1.2}#ecg-grid text{font-size:12px}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
td.num{text-align:right}tr.abn td,li.abn{background:#fff3f0}td.flag{font-weight:bold;color:#b00}
[data-decision=accept]{background:#eaf7ea}[data-decision=reject]{background:#fbe9e9;text-decoration:line-through}
[data-decision=reject] .controls{text-decoration:none}[data-decision=edit]{background:#eef3fd}
.controls{margin-left:.6em;white-space:nowrap}.controls button{font-size:.85em}.status{margin-left:.4em;color:#555}
li.hl,li:target{outline:2px solid #f5a623;background:#fff8e1}
a.cite{margin-left:.3em;font-size:.8em;vertical-align:super}
"""

REVIEW_JS = r"""
(function () {
  "use strict";
  var ref = document.body.dataset.ref;
  function row(ctrl) { return ctrl.closest("li.sentence, tr.diagnosis"); }
  function send(ctrl, decision, text) {
    var status = ctrl.querySelector(".status");
    status.textContent = "saving";
    var body = {target: ctrl.dataset.target, index: Number(ctrl.dataset.index), decision: decision};
    if (text !== undefined) { body.text = text; }
    return fetch("/api/cases/" + ref + "/feedback", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)
    }).then(function (resp) {
      return resp.json().then(function (data) {
        if (!resp.ok) { throw new Error(data.error || ("HTTP " + resp.status)); }
        var r = row(ctrl);
        r.dataset.decision = decision;
        if (decision === "edit") { r.querySelector(".text").textContent = text; }
        status.textContent = decision;
      });
    }).catch(function (err) { status.textContent = "not saved: " + err.message; });
  }
  document.addEventListener("click", function (ev) {
    var button = ev.target.closest("button[data-action]");
    if (button) {
      var ctrl = button.closest(".controls");
      var editor = ctrl.querySelector(".editor");
      var action = button.dataset.action;
      if (action === "edit") { editor.hidden = false; editor.querySelector("textarea").focus(); return; }
      if (action === "save") {
        var text = editor.querySelector("textarea").value.trim();
        if (!text) { ctrl.querySelector(".status").textContent = "empty text not saved"; return; }
        send(ctrl, "edit", text).then(function () { editor.hidden = true; });
        return;
      }
      send(ctrl, action);
      return;
    }
    var cite = ev.target.closest("a.cite");
    if (cite) {
      document.querySelectorAll("li.hl").forEach(function (li) { li.classList.remove("hl"); });
      var item = document.getElementById("ev-" + cite.dataset.ev);
      if (item) { item.classList.add("hl"); }
    }
  });
})();
"""
