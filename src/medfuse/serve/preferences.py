"""Clinician feedback -> preference pairs for DPO / GRPO (TRL's standard format).

Each line of the export is `{"prompt", "chosen", "rejected", "kind"}` with string values,
TRL's "standard" preference format (the prompt is already chat-formatted: it is the exact
text the model continued). Two kinds of pair:

- `sentence`: one reasoning sentence. The prompt is the case prompt plus `<think>` and the
  corrected reasoning before the sentence (accepted and edited sentences, rejected ones
  left out). An edit gives chosen = the clinician's text, rejected = the model's
  original; a rejected sentence gives chosen = the next accepted or edited sentence (what
  should have followed the prefix instead), rejected = the rejected one.
- `response`: the whole answer, when the clinician changed anything. chosen = the
  corrected reasoning and disease set, rejected = the model's; a rejected diagnosis flips
  the model's call (present -> absent, absent -> present), an edited one replaces the
  disease name.

Only the latest decision per item counts. The file is written atomically: a temporary
file in the same folder, then renamed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medfuse.formats import format_answer
from medfuse.serve.db import Decision, ReviewStore, StoredCase


def _think(sentences: list[str]) -> str:
    return f"<think>{' '.join(sentences)}</think>"


def case_pairs(case: StoredCase, decisions: list[Decision]) -> Iterator[dict[str, Any]]:
    """The preference pairs of one reviewed case (see the module docstring)."""
    by_sentence = {d.index: d for d in decisions if d.target == "sentence" and d.index < len(case.sentences)}
    by_diagnosis = {d.index: d for d in decisions if d.target == "diagnosis"}
    corrected: list[str] = []  # the reviewed reasoning so far
    pending_rejected: list[str] = []  # rejected sentences waiting for the sentence that should replace them
    prefix_at_rejection: list[str] = []
    for i, sentence in enumerate(case.sentences):
        d = by_sentence.get(i)
        prefix = case.prompt_text + "<think>" + "".join(s + " " for s in corrected)
        if d is not None and d.decision == "edit" and d.edited and d.edited.strip() != sentence.strip():
            yield {"prompt": prefix, "chosen": d.edited.strip(), "rejected": sentence, "kind": "sentence"}
            chosen = d.edited.strip()
        elif d is not None and d.decision == "reject":
            if not pending_rejected:
                prefix_at_rejection = list(corrected)
            pending_rejected.append(sentence)
            continue
        else:
            chosen = sentence
        if pending_rejected and (d is not None and d.decision in ("accept", "edit")):
            start = case.prompt_text + "<think>" + "".join(s + " " for s in prefix_at_rejection)
            for bad in pending_rejected:
                yield {"prompt": start, "chosen": chosen, "rejected": bad, "kind": "sentence"}
            pending_rejected = []
        corrected.append(chosen)
    original_set, corrected_set = [], []
    for i, dx in enumerate(case.result["diagnoses"]):
        d = by_diagnosis.get(i)
        if dx["present"]:
            original_set.append(dx["name"])
        if d is None or d.decision == "accept":
            present, name = dx["present"], dx["name"]
        elif d.decision == "reject":
            present, name = not dx["present"], dx["name"]
        else:
            present, name = True, (d.edited or dx["name"]).strip()
        if present:
            corrected_set.append(name)
    kept = [by_sentence[i].edited.strip() if by_sentence.get(i) is not None and by_sentence[i].decision == "edit"
            and by_sentence[i].edited else s for i, s in enumerate(case.sentences)
            if by_sentence.get(i) is None or by_sentence[i].decision != "reject"]
    chosen = _think(kept) + format_answer(corrected_set)
    rejected = _think(case.sentences) + format_answer(original_set)
    if decisions and chosen != rejected:
        yield {"prompt": case.prompt_text, "chosen": chosen, "rejected": rejected, "kind": "response"}


def export_preference_pairs(store: ReviewStore, out: Path) -> dict[str, int]:
    """Write every reviewed case's pairs to `out` (JSON Lines, atomically); returns counts."""
    counts = {"cases": 0, "reviewed_cases": 0, "pairs": 0, "sentence": 0, "response": 0}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for ref in store.case_refs():
                counts["cases"] += 1
                decisions = store.decisions(ref)
                if not decisions:
                    continue
                counts["reviewed_cases"] += 1
                case = store.get_case(ref, with_files=False)
                for pair in case_pairs(case, decisions):
                    f.write(json.dumps(pair, ensure_ascii=False) + "\n")
                    counts["pairs"] += 1
                    counts[pair["kind"]] += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return counts
