"""Prompts per question type, versioned.

Every result records `PROMPT_VERSION`, and the output cache is keyed by it, so changing
any template below MUST bump the version (old cached outputs then stay untouched and are
simply not reused). The templates ask for the answer inside `<answer>...</answer>` (the
medfuse text format of DESIGN.md); the parsers also read other common answer styles, so a
model that ignores the tag is still scored, never guessed for.

Version 1 templates (English; Chinese items use the `zh` wording of the same template):

- multiple choice (`choice`): optional context, ``Question: ...``, one ``A. text`` line per
  option, then "Answer with the letter of the single best option inside
  <answer></answer>, for example <answer>B</answer>." MedXpertQA-style questions that
  already list their options are not given them twice.
- yes/no/maybe (`yes_no_maybe`, PubMedQA): ``Context:`` abstract sections, the question,
  then "Answer yes, no or maybe inside <answer></answer>."
- VQA (`open` and `closed` alike, so the prompt never hints at the gold's form): the
  question, then "Answer with a single word or a short phrase inside <answer></answer>."
  (MedEvalKit's "single word or phrase" convention).
- diagnosis (`label_set`): the case text, the question, the candidate list, then "Reason
  step by step inside <think></think>, then give every disease the patient has from the
  candidates, separated by ';', inside <answer></answer>; write <answer>none</answer> if
  none applies."
- report: the instruction, then "Write the report as plain text."
- grounding (`boxes`): "Locate every <label> in the image." then the box format
  ``<ref>label</ref><box>[[x1, y1, x2, y2]]</box>`` with integers 0-999 relative to the
  image width and height, several boxes of one label in one list.

The system message is the same for every type: "You are a careful medical expert."

A prompt also carries the item's task type and, for items read from a medfuse case
folder, that folder, so that an adapter with several skills (a medfuse checkpoint
diagnoses a case, but answers a question with its language model) picks the one the
item asks for. The task type is implied by the text and stays out of the cache key.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field

from medfuse.eval.benchmarks.base import EvalItem

PROMPT_VERSION = "medfuse-eval-prompts/1"

# Output budgets per answer type: enough for a short reasoning chain before the answer,
# bounded so that a model that never stops does not dominate the run time.
DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {
    "choice": 512,
    "yes_no_maybe": 512,
    "open": 128,
    "closed": 128,
    "label_set": 768,
    "report": 384,
    "boxes": 256,
}

SYSTEM = {"en": "You are a careful medical expert.", "zh": "你是一名严谨的医学专家。"}

_TEXT = {
    "en": {
        "question": "Question",
        "options": "Options",
        "context": "Context",
        "choice": "Answer with the letter of the single best option inside <answer></answer>, for example <answer>B</answer>.",
        "yes_no_maybe": "Answer yes, no or maybe inside <answer></answer>.",
        "vqa": "Answer with a single word or a short phrase inside <answer></answer>.",
        "candidates": "Candidate diseases",
        "diagnosis": (
            "Reason step by step inside <think></think>, then give every disease the patient has from the candidates, "
            "separated by ';', inside <answer></answer>; write <answer>none</answer> if none applies."
        ),
        "report": "Write the report as plain text.",
        "boxes": (
            "Give each box as <ref>{label}</ref><box>[[x1, y1, x2, y2]]</box> with integer coordinates from 0 to 999 "
            "relative to the image width and height (0, 0 is the top left corner); put several boxes of one label in "
            "one list."
        ),
    },
    "zh": {
        "question": "问题",
        "options": "选项",
        "context": "背景",
        "choice": "请在 <answer></answer> 中给出唯一最佳选项的字母，例如 <answer>B</answer>。",
        "yes_no_maybe": "请在 <answer></answer> 中回答 yes、no 或 maybe。",
        "vqa": "请用一个词或一个短语作答，并写在 <answer></answer> 中。",
        "candidates": "候选疾病",
        "diagnosis": (
            "请先在 <think></think> 中逐步推理，然后在 <answer></answer> 中列出患者所患的全部候选疾病，用 ';' 分隔；"
            "若都不符合，请写 <answer>none</answer>。"
        ),
        "report": "请以纯文本撰写报告。",
        "boxes": (
            "请按 <ref>{label}</ref><box>[[x1, y1, x2, y2]]</box> 给出每个框，坐标为 0 到 999 的整数，分别按图像宽度和"
            "高度归一化（左上角为 0, 0）；同一标签的多个框放在同一个列表中。"
        ),
    },
}

_LISTS_OPTIONS = re.compile(r"answer choices\s*:\s*\(A\)", re.I)


@dataclass(frozen=True)
class Prompt:
    """What a model adapter receives for one item."""

    system: str
    user: str
    images: tuple[str, ...] = field(default_factory=tuple)
    max_new_tokens: int = 256
    task_type: str | None = None  # the item's TaskType; None for prompts not built from an item
    case_dir: str | None = None  # the medfuse case folder the item was read from, if any

    def cache_hash(self) -> str:
        """Stable hash of everything that determines the output (with PROMPT_VERSION in the key)."""
        fields = asdict(self)
        del fields["task_type"]  # implied by the text
        if fields["case_dir"] is None:
            del fields["case_dir"]  # so prompts of other benchmarks keep the keys they had
        payload = json.dumps(fields, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def as_dict(self) -> dict:
        d = {"system": self.system, "user": self.user, "images": list(self.images), "task_type": self.task_type}
        return d | ({"case_dir": self.case_dir} if self.case_dir else {})


def build_prompt(item: EvalItem, max_new_tokens: int | None = None) -> Prompt:
    """The version-`PROMPT_VERSION` prompt for one item (see the module docstring)."""
    lang = "zh" if item.lang == "zh" else "en"
    t = _TEXT[lang]
    parts: list[str] = []
    kind = item.answer_type
    if kind == "choice":
        if item.context:
            parts.append(item.context.strip())
        parts.append(f"{t['question']}: {item.question.strip()}")
        if item.options and not _LISTS_OPTIONS.search(item.question):
            parts.append(f"{t['options']}:\n" + "\n".join(f"{k}. {v}" for k, v in item.options.items()))
        parts.append(t["choice"])
    elif kind == "yes_no_maybe":
        if item.context:
            parts.append(f"{t['context']}:\n{item.context.strip()}")
        parts.append(f"{t['question']}: {item.question.strip()}")
        parts.append(t["yes_no_maybe"])
    elif kind in ("open", "closed"):
        parts.append(item.question.strip())
        parts.append(t["vqa"])
    elif kind == "label_set":
        if item.context:
            parts.append(item.context.strip())
        parts.append(item.question.strip())
        if item.candidates:
            parts.append(f"{t['candidates']}: " + "; ".join(item.candidates))
        parts.append(t["diagnosis"])
    elif kind == "report":
        if item.context:
            parts.append(item.context.strip())
        parts.append(item.question.strip())
        parts.append(t["report"])
    elif kind == "boxes":
        label = str(item.metadata.get("label", "finding"))
        parts.append(item.question.strip())
        parts.append(t["boxes"].replace("{label}", label))
    else:  # pragma: no cover - AnswerType is a closed Literal
        raise ValueError(f"no prompt template for answer type {kind!r}")
    budget = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[kind]
    case_dir = item.metadata.get("case_dir")
    return Prompt(system=SYSTEM[lang], user="\n\n".join(parts), images=tuple(item.images), max_new_tokens=budget,
                  task_type=item.task_type, case_dir=str(case_dir) if case_dir else None)
