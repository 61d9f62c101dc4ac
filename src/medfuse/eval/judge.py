"""An optional LLM judge for open answers (open VQA), through an OpenAI-compatible endpoint.

Rule-based scores (exact match, token recall/F1) stay the headline; the judge's verdicts
are reported beside them under `judged` in `summary.json`, never mixed in. The judge is
built only when a run asks for one (`--judge URL`), never at import time, and its
outputs go through the same cache as the model's (keyed by the judge's model id and
`JUDGE_PROMPT_VERSION`), so a rerun does not ask again.
"""

from __future__ import annotations

import re

from medfuse.eval.prompts import Prompt

JUDGE_PROMPT_VERSION = "medfuse-judge/1"

JUDGE_SYSTEM = "You grade answers to medical questions against a reference answer. Be strict and brief."
JUDGE_TEMPLATE = (
    "Question: {question}\n"
    "Reference answer: {gold}\n"
    "Candidate answer: {pred}\n\n"
    "Does the candidate answer mean the same as the reference answer? Synonyms and different wording count as "
    "the same; a partial, vaguer or additional wrong claim does not. Reply with <answer>yes</answer> or "
    "<answer>no</answer> only."
)

_VERDICT = re.compile(r"<answer>\s*(yes|no)\s*</answer>", re.I)


def judge_prompt(question: str, gold: str, pred: str) -> Prompt:
    """The judge's prompt for one open answer (version `JUDGE_PROMPT_VERSION`)."""
    user = JUDGE_TEMPLATE.format(question=question.strip(), gold=gold.strip(), pred=(pred or "").strip() or "(empty)")
    return Prompt(system=JUDGE_SYSTEM, user=user, images=(), max_new_tokens=16)


def parse_verdict(text: str) -> float | None:
    """1.0 for yes, 0.0 for no, None when the judge's reply has no verdict tag."""
    m = _VERDICT.search(text or "")
    if m is None:
        bare = (text or "").strip().lower().rstrip(".")
        return {"yes": 1.0, "no": 0.0}.get(bare)
    return 1.0 if m.group(1).lower() == "yes" else 0.0
