"""`diagnose`: one case (or a batch) in, a checked multi-disease diagnosis out.

The pipeline for a batch of cases:

1. `interpret_case` reads every modality into `Evidence` items; each item is checked
   against the case (`evidence_in_case`) before it is shown.
2. The fusion model (`MedFuse.fuse`) gives calibrated per-disease probabilities, the
   per-modality gates (the reported modality weights) and the fused tokens.
3. The head decides (`head_decision`): the reported diseases are those at or above their
   stored thresholds; the considered ones are the most probable of the rest.
4. The language model explains that decision, from a prompt (`medfuse.model.prompt`)
   holding the modality placeholders, the numbered evidence `[E1] ...` and the decision,
   in the requested language. Its output is scaffolded and constrained
   (`medfuse.model.constrained`): the code writes "<think>Heart failure: supported by",
   the model names one or more of the evidence items the panel's rules tie to that
   disease (whole, as the evidence list spells them; each option vetted beforehand by
   the checker of step 5, `rationale_filter`) and picks the ids it cites among them; a
   disease nothing listed is tied to gets a code-written sentence saying so. The code
   writes the considered-but-absent line and `<answer>...</answer>`, which therefore
   equals the head's set.
5. The reasoning is checked sentence by sentence (`check_reasoning`, citations included):
   unsupported claims are removed and listed as flagged, never shown as fact; then
   against the decision (`check_consistency`). Boxes are parsed with
   `medfuse.formats.parse_boxes` and kept only when valid on the 0-999 grid and the case
   has an image.
6. Diseases for which none of the panel's evidence modalities is present are reported in
   `insufficient_data` and get no probability (no guessing).

`constrained=False` gives the free generation of earlier releases (the model writes
`<think>...</think><answer>...</answer>` itself; the answer shown is still the head's).
The result schema is `medfuse.model.result`, the prompt `medfuse.model.prompt`, the
report and the printed summary `medfuse.model.report`; their names are re-exported here.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medfuse.formats import format_answer, parse_boxes, parse_think, text_language
from medfuse.knowledge.panel import Panel
from medfuse.model.faithfulness import (
    check_consistency,
    check_reasoning,
    evidence_in_case,
)
from medfuse.model.prompt import (
    _TEXT,
    PLACEHOLDERS,
    HeadDecision,
    build_prompt,
    evidence_facts,
    head_decision,
    numbered_evidence,
    reasoning_plan,
)
from medfuse.model.report import build_report, cite_evidence, format_result
from medfuse.model.result import (
    Diagnosed,
    DiagnoseResult,
    DiagnosisEntry,
    EvidenceEntry,
    FindingEntry,
    ModalityWeights,
    ModelInfo,
)
from medfuse.record.case import MODALITIES, PatientCase
from medfuse.record.evidence import Evidence

if TYPE_CHECKING:
    from medfuse.model import MedFuse

__all__ = [
    "PLACEHOLDERS",
    "DiagnoseResult",
    "Diagnosed",
    "DiagnosisEntry",
    "EvidenceEntry",
    "FindingEntry",
    "HeadDecision",
    "ModalityWeights",
    "ModelInfo",
    "build_prompt",
    "diagnose",
    "diagnose_many",
    "format_result",
    "insufficient_diseases",
    "rationale_filter",
    "reasoning_constraints",
]

_ = (_TEXT, cite_evidence)  # re-exported for the task builder and older callers


def insufficient_diseases(case: PatientCase, panel: Panel) -> list[str]:
    """Keys of the panel diseases for which the case has none of the evidence modalities.

    The panel lists, per disease, the modalities that carry its evidence; a disease whose
    list shares nothing with the case's modalities cannot be judged from this case.
    """
    present = set(case.modalities())
    out = []
    for d in panel:
        needed = {m for m in d.evidence if m in MODALITIES}
        if needed and not needed & present:
            out.append(d.key)
    return out


def _checked_evidence(case: PatientCase, evidence: list[Evidence]) -> tuple[list[Evidence], int]:
    """The evidence items whose values are found where they cite, and how many were not."""
    kept = [ev for ev in evidence if evidence_in_case(ev, case)]
    # An interpreter bug must not put an unverifiable value in front of a clinician.
    return kept, len(evidence) - len(kept)


def _entry(ev: Evidence) -> EvidenceEntry:
    value = ev.value
    if isinstance(value, float) and not math.isfinite(value):
        value = None  # NaN/inf are not JSON; an unmeasurable value is reported as absent
    return EvidenceEntry(modality=ev.modality, item=ev.item, value=value, interpretation=ev.interpretation,
                         source=ev.source)


def _findings(text: str, case: PatientCase, located: Sequence[tuple[str, list[int]]] = ()) -> tuple[list[FindingEntry], list[str]]:
    """The finding head's boxes (`located`), then the valid boxes of the generated text for
    labels the head did not report, and a reason for each box that was dropped.

    The finding head localises on the image patches; the language model only sees pooled
    image tokens, so where the two name the same finding the head's box is kept.
    """
    kept: list[FindingEntry] = [FindingEntry(label=label, box=list(box)) for label, box in located]
    by_head = {f.label for f in kept}
    dropped: list[str] = []
    for label, boxes in parse_boxes(text):
        label = " ".join(label.split())
        for box in boxes:
            if not case.cxr:
                dropped.append(f"{label or 'unlabelled'}: a box but the case has no image")
            elif not label:
                dropped.append("a box without a label")
            elif not all(0 <= v <= 999 for v in box) or box[2] < box[0] or box[3] < box[1]:
                dropped.append(f"{label}: box {box} is not a valid 0-999 box")
            elif label in by_head:
                dropped.append(f"{label}: the finding head's box is reported instead of the generated {box}")
            elif not any(f.label == label and f.box == box for f in kept):
                kept.append(FindingEntry(label=label, box=box))
    return kept, dropped


def _grouped(found: Sequence[tuple[str, list[int]]]) -> list[tuple[str, list[list[int]]]]:
    """[(label, box)] -> [(label, [boxes])] in first-seen order (bilateral findings: one entry)."""
    out: dict[str, list[list[int]]] = {}
    for label, box in found:
        out.setdefault(label, []).append(list(box))
    return list(out.items())


def _reasoning_source(text: str) -> str:
    """The reasoning part of a generation: the <think> block, else the text without tags."""
    think = parse_think(text)
    return think if think is not None else text


def _language_kwargs(model: MedFuse, lang: str, generate_kwargs: dict | None) -> dict:
    """`generate_kwargs`, plus for English the tokens that cannot be English suppressed.

    The English targets the language model is trained on are plain ASCII, so in English
    no token that decodes to anything else (Chinese characters, or the byte pieces of
    one) is ever right: suppressing them keeps a Chinese note from pulling the reasoning
    into Chinese, and leaves every all-ASCII generation as it was. Chinese text cannot
    be guarded that way (it cites English codes), hence the language check after.
    """
    kwargs = dict(generate_kwargs or {})
    if lang == "en":
        # `suppress_tokens` replaces the language model's own list (its placeholders).
        kept = kwargs.get("suppress_tokens", model.lm.placeholder_ids.values())
        kwargs["suppress_tokens"] = sorted({*kept, *_non_ascii_token_ids(model.lm.tokenizer)})
    return kwargs


@functools.lru_cache(maxsize=4)
def _non_ascii_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """Ids of the tokens that decode to text outside ASCII (~900 of SmolLM's 49k)."""
    return tuple(i for i in range(len(tokenizer)) if not tokenizer.decode([i]).isascii())


def rationale_filter(case: PatientCase, evidence: list[Evidence], numbered: Sequence[Evidence],
                     reported: Iterable[str], panel: Panel,
                     findings: Iterable[str] | None = None) -> Callable[[str], bool]:
    """The test a rationale sentence of `reasoning_plan` must pass to be offered to the
    decoder: exactly what `diagnose` applies to the output afterwards (`check_reasoning`
    with the numbered list, then `check_consistency`), so the constraint and the checker
    cannot disagree on it."""
    reported = list(reported)
    findings = None if findings is None else list(findings)

    def accept(sentence: str) -> bool:
        check = check_reasoning(sentence, case, evidence, panel, findings=findings, cited=numbered)
        return not check.dropped and not check_consistency(check.text, reported, panel).argued_unreported

    return accept


def reasoning_constraints(model: MedFuse, decisions: Sequence[HeadDecision], numbered: Sequence[list[Evidence]],
                          lang: str = "en", max_new_tokens: int = 128, top_k: int = 1,
                          accept: Sequence[Callable[[str], bool] | None] | None = None) -> list:
    """One `ReasoningConstraint` per case, following that case's `reasoning_plan`.

    `accept[i]` vets case i's rationale sentences (`rationale_filter`); None: unvetted.

    `top_k`: valid candidates kept per step. Greedy decoding needs only the best valid
    one (1, the default: checking 40 candidates per row and step made constrained
    generation several times slower than the forward pass); sampling needs more.

    The constraints are decoder-agnostic: `diagnose_many` hands them to transformers'
    `generate` (`HFReasoningProcessor`); a llama.cpp decoder passes each one as its
    `logits_processor`. `numbered[i]` is `numbered_evidence(evidence of case i)`.
    """
    from medfuse.model.constrained import ReasoningConstraint, token_texts

    tok = model.lm.tokenizer
    vocab = token_texts(tok)

    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    banned = list(model.lm.placeholder_ids.values())
    if lang == "en":
        banned += _non_ascii_token_ids(tok)
    out = []
    accept = list(accept) if accept is not None else [None] * len(decisions)
    for decision, items, vet in zip(decisions, numbered, accept, strict=True):
        plan = reasoning_plan(decision, items, model.panel, lang, max_new_tokens=max_new_tokens,
                              token_count=lambda s: len(encode(s)), accept=vet)
        out.append(ReasoningConstraint(plan, evidence_facts(items), vocab, encode, tok.eos_token_id, banned_ids=banned,
                                       top_k=top_k))
    return out


# --------------------------------------------------------------------------- entry points

def diagnose(model: MedFuse, case: PatientCase, lang: Literal["en", "zh"] = "en", max_new_tokens: int = 128) -> DiagnoseResult:
    """Diagnose one case (see the module docstring for what is checked)."""
    return diagnose_many(model, [case], lang=lang, max_new_tokens=max_new_tokens)[0].result


def diagnose_many(model: MedFuse, cases: Sequence[PatientCase], lang: Literal["en", "zh"] = "en",
                  max_new_tokens: int = 128, evidence: Sequence[list[Evidence]] | None = None,
                  generate_kwargs: dict | None = None, constrained: bool = True) -> list[Diagnosed]:
    """Diagnose a batch of cases in one fusion pass and one batched generation.

    `evidence` may pass `interpret_case` results computed earlier; `generate_kwargs` go to
    the language model's `generate`. `constrained` (default) explains the head's decision
    with the scaffolded, constrained decoder; False lets the model write freely.
    """
    from medfuse.interpret.case import interpret_case

    if lang not in _TEXT:
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    panel = model.panel
    evidence = list(evidence) if evidence is not None else [interpret_case(c) for c in cases]
    fused = model.fuse(cases)
    located = model.card.get("findings_trained")
    insufficient = [insufficient_diseases(case, panel) for case in cases]
    decisions = [head_decision(fused.probabilities[i], fused.thresholds, panel, skip=insufficient[i])
                 for i in range(len(cases))]
    numbered = [numbered_evidence(ev) for ev in evidence]
    prompts = [build_prompt(case, ev, panel, lang, token_groups=fused.token_groups[i],
                            findings=_grouped(fused.findings[i]) if located else None,
                            decision=decisions[i] if constrained else None)
               for i, (case, ev) in enumerate(zip(cases, evidence, strict=True))]
    kwargs = _language_kwargs(model, lang, generate_kwargs)
    budget = max_new_tokens
    constraints: list = []
    if constrained:
        from transformers import LogitsProcessorList

        from medfuse.model.constrained import HFReasoningProcessor

        sampling = bool((generate_kwargs or {}).get("do_sample"))
        head_findings = [[label for label, _ in fused.findings[i]] if located else None for i in range(len(cases))]
        accept = [rationale_filter(case, evidence[i], numbered[i], [k for k, _ in decisions[i].reported], panel,
                                   head_findings[i]) for i, case in enumerate(cases)]
        constraints = reasoning_constraints(model, decisions, numbered, lang, max_new_tokens,
                                            top_k=40 if sampling else 1, accept=accept)
        # The plan may need more than `max_new_tokens` when many diseases are reported
        # (each rationale keeps a minimum budget); generation must never cut it off.
        budget = max(max_new_tokens, *(c.tokens_needed() for c in constraints))
        kwargs["logits_processor"] = LogitsProcessorList([HFReasoningProcessor(constraints)])
    texts = model.generate(prompts, fused, max_new_tokens=budget, **kwargs)
    out: list[Diagnosed] = []
    for i, case in enumerate(cases):
        diagnoses = []
        for j, d in enumerate(panel):
            if d.key in insufficient[i]:
                continue  # no probability without the data to back it
            p = float(fused.probabilities[i, j])
            diagnoses.append(DiagnosisEntry(name=d.display(lang), icd10=d.icd10[0] if d.icd10 else None,
                                            probability=round(p, 4), present=bool(p >= fused.thresholds[j])))
        raw = texts[i]
        if constrained:
            # The answer is the head's set, written by code: the model explains, it does not decide.
            reported = {k for k, _ in decisions[i].reported}
            raw = raw + format_answer(d.display(lang) for d in panel if d.key in reported)
        kept_evidence, n_bad = _checked_evidence(case, evidence[i])
        findings, dropped_boxes = _findings(texts[i], case, fused.findings[i])
        check = check_reasoning(_reasoning_source(texts[i]), case, evidence[i], panel,
                                findings=[label for label, _ in fused.findings[i]] if located else None,
                                cited=numbered[i])
        consistency = check_consistency(check.text, [k for k, _ in decisions[i].reported], panel)
        reasoning = check.text
        # A small language model can drift into the language of a quoted note; what it
        # wrote is shown, marked, never passed off as an answer in the requested language.
        written_in = text_language(reasoning)
        if written_in not in (None, lang):
            reasoning = f"{reasoning} {_TEXT[lang]['off_language']}"
        if check.dropped:
            note = ("[已删除 {n} 条病例数据不支持的陈述]" if lang == "zh"
                    else "[{n} statement(s) not supported by this case's data were removed]")
            reasoning = f"{reasoning} {note.format(n=len(check.dropped))}".strip()
        gates = fused.gates[i]
        weights = ModalityWeights(**{m: round(float(gates[k]), 4) for k, m in enumerate(MODALITIES)})
        result = DiagnoseResult(
            case_id=case.case_id, diagnoses=diagnoses, evidence=[_entry(ev) for ev in kept_evidence],
            findings=findings, modality_weights=weights, reasoning=reasoning, reasoning_language=written_in,
            report=build_report(lang, diagnoses, kept_evidence, findings, insufficient[i], panel),
            insufficient_data=[panel.by_key(k).display(lang) for k in insufficient[i]],
            model=ModelInfo(name=model.name, version=model.version),
        )
        out.append(Diagnosed(result=result, check=check, raw_text=raw, dropped_findings=dropped_boxes,
                             dropped_evidence=n_bad, evidence=kept_evidence,
                             consistency=consistency if constrained else None,
                             generated_tokens=constraints[i].generated if constrained else 0,
                             prompt=prompts[i]))
    return out



def diagnose_to_jsonl(model: MedFuse, cases: Iterable[PatientCase], out_path: Path | None, lang: str = "en",
                      max_new_tokens: int = 128, batch_size: int = 8, total: int | None = None,
                      progress: bool = True) -> int:
    """Diagnose a stream of cases in batches, writing one JSON object per line.

    With `out_path`, the file is written to a temporary name and renamed when complete,
    so an interrupted run leaves no half-written results file. Returns the case count.
    """
    from tqdm import tqdm

    n = 0
    bar = tqdm(total=total, unit="case", desc="diagnose", disable=not progress or None, file=sys.stderr)
    tmp = None if out_path is None else out_path.with_name(f".{out_path.name}.partial")
    sink = sys.stdout if tmp is None else open(tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        for batch in iter_batches(cases, batch_size):
            for d in diagnose_many(model, batch, lang=lang, max_new_tokens=max_new_tokens):
                sink.write(json.dumps(d.result.model_dump(mode="json"), ensure_ascii=False) + "\n")
                n += 1
            bar.update(len(batch))
        if tmp is not None:
            sink.close()
            tmp.replace(out_path)
    finally:
        bar.close()
        if tmp is not None and not sink.closed:
            sink.close()
            tmp.unlink(missing_ok=True)
    return n


def iter_batches(items: Iterable[PatientCase], size: int) -> Iterator[list[PatientCase]]:
    batch: list[PatientCase] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
