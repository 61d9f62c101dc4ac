"""Scores of the language model's own answers on held-out diagnosis prompts.

Used after `sft` and `grpo` (and by the GRPO stage before it starts, so the model card can
say whether GRPO improved on the SFT model it started from). Greedy decoding; per sample:
- `jaccard`: the Jaccard reward of the `<answer>` set against the gold diseases (0 without the tag);
- `format`: 1 when the text is exactly `<think>..</think><answer>..</answer>`;
- `answer_tag`: 1 when an `<answer>` tag is present at all;
- faithfulness: numbers written in the `<think>` reasoning that survive `check_reasoning`
  (they are values of the case, reference bounds or panel thresholds) over all numbers
  written there; sentences with an unsupported claim are dropped by the checker, and the
  numbers in them count as unfaithful;
- `citation` / `consistency`: the GRPO rewards of that name (cited `[Ek]` ids exist and
  concern the rationale's disease; every disease of the prompt's decision explained and
  no other argued for).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from medfuse.train.config import LMStageConfig
from medfuse.train.task_data import TaskData

_NUMBER = re.compile(r"(?<![A-Za-z])\d+(?:\.\d+)?")


def _numbers(text: str) -> int:
    return len(_NUMBER.findall(text or ""))


@torch.no_grad()
def evaluate_answers(model, cfg: LMStageConfig, n: int, max_new_tokens: int = 192, batch_size: int = 4,
                     split: str = "val") -> dict[str, Any]:
    """Mean jaccard / format / answer-tag rates and faithfulness over `n` diagnosis prompts of `split`."""
    from medfuse.formats import parse_answer_set, parse_think
    from medfuse.interpret.case import interpret_case
    from medfuse.model.faithfulness import check_reasoning
    from medfuse.model.llm import chat_prompt
    from medfuse.train.rewards import (
        citation_reward,
        consistency_reward,
        format_reward,
        jaccard_reward,
    )

    data = TaskData(cfg, split, ("diagnosis",), model, n)
    if not len(data):
        return {"n": 0}
    model.eval()
    tok = model.lm.tokenizer
    jac, fmt, tag, cite, cons = [], [], [], [], []
    numbers_total = numbers_kept = 0
    for start in range(0, len(data), batch_size):
        samples, batch = data.batch(range(start, min(len(data), start + batch_size)))
        out = model.fusion(batch)
        prompts = [chat_prompt(tok, s.user, s.system) for s in samples]
        gen = model.lm.generate(prompts, out, max_new_tokens=max_new_tokens)
        jac += jaccard_reward(gen, [s.answer_diseases for s in samples], panel=model.panel)
        fmt += format_reward(gen)
        tag += [1.0 if parse_answer_set(t) is not None else 0.0 for t in gen]
        cite += [v for v in citation_reward(gen, prompts=[s.user for s in samples], panel=model.panel) if v is not None]
        cons += consistency_reward(gen, [s.answer_diseases for s in samples], panel=model.panel)
        for s, t in zip(samples, gen, strict=True):
            think = parse_think(t) or ""
            total = _numbers(think)
            if not total:
                continue
            case = data.case(s.case_id)
            check = check_reasoning(think, case, interpret_case(case), model.panel)
            numbers_total += total
            numbers_kept += min(total, _numbers(check.text))
    return {
        "n": len(data),
        "mean_jaccard": round(float(np.mean(jac)), 4),
        "format_rate": round(float(np.mean(fmt)), 4),
        "answer_tag_rate": round(float(np.mean(tag)), 4),
        "citation_validity": round(float(np.mean(cite)), 4) if cite else None,
        "consistency": round(float(np.mean(cons)), 4),
        "numbers_in_reasoning": numbers_total,
        "faithful_number_share": round(numbers_kept / numbers_total, 4) if numbers_total else None,
    }
