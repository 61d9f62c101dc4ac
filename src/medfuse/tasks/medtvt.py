"""MedTVT-QA-style JSON -> rows with the task dataset's columns (`read_medtvt_qa`).

The layout read (MedTVT-R1's QA release and LLaVA-style exports of it): one JSON list of
objects, each with either
- ``messages``: ``[{"role": "system" | "user" | "assistant", "content": str}, ...]``, or
- ``conversations``: ``[{"from": "system" | "human" | "gpt", "value": str}, ...]``,
plus an optional ``id`` and the file fields ``ecg`` / ``cxr`` / ``lab`` naming the
item's inputs. User text holds the placeholders ``<ecg>``, ``<cxr>`` and ``<lab>``;
``<lab>`` becomes medfuse's ``<labs>`` so the model's placeholder set applies.

Each item becomes one row: the last assistant turn is the target (earlier turns stay in
`messages` as context); ``task`` is ``"diagnosis"`` when the target has an ``<answer>``
tag, else ``"qa"``; ``answer_diseases`` are the panel keys of the names in that answer
(names the panel does not know are left out); ``case_dir`` is ``""`` (the item's files
are not a medfuse case folder); ``source`` is ``"medtvt-qa"``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medfuse.errors import InputError
from medfuse.formats import has_cjk, parse_answer_set, parse_boxes
from medfuse.knowledge.panel import Panel, load_panel

if TYPE_CHECKING:
    from datasets import Dataset

SOURCE = "medtvt-qa"

_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
          "model": "assistant"}
# '<lab>' but not '<labs>' (already medfuse's), in any case.
_LAB_PLACEHOLDER = re.compile(r"<\s*lab\s*>", re.I)
_ID_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _turns(item: dict[str, Any], where: str, path: Path) -> list[dict[str, str]]:
    if isinstance(item.get("messages"), list):
        raw, role_key, text_key = item["messages"], "role", "content"
    elif isinstance(item.get("conversations"), list):
        raw, role_key, text_key = item["conversations"], "from", "value"
    else:
        raise InputError(path, f"{where}: no 'messages' or 'conversations' list")
    turns = []
    for j, turn in enumerate(raw):
        if not isinstance(turn, dict):
            raise InputError(path, f"{where}.{role_key}[{j}]: not an object")
        role = _ROLES.get(str(turn.get(role_key, "")).strip().lower())
        text = turn.get(text_key)
        if role is None or not isinstance(text, str):
            raise InputError(path, f"{where} turn {j}: needs '{role_key}' (user/assistant) and a text '{text_key}'")
        turns.append({"role": role, "content": _LAB_PLACEHOLDER.sub("<labs>", text)})
    if not any(t["role"] == "user" for t in turns) or not any(t["role"] == "assistant" for t in turns):
        raise InputError(path, f"{where}: needs a user turn and an assistant turn")
    last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
    return turns[: last + 1]  # trailing user turns have no target


def read_medtvt_qa(path: str | Path, *, panel: Panel | None = None) -> Dataset:
    """Rows of a MedTVT-QA-style JSON file, with the columns of `medfuse.tasks.COLUMNS`.

    A file that is missing, not JSON, not a list, or holds an item without a user and an
    assistant turn raises `InputError` naming the file and the item.
    """
    from medfuse.tasks.build import rows_to_dataset

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON (line {e.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]  # some exports wrap the list
    if not isinstance(data, list):
        raise InputError(path, "expected a JSON list of QA items")
    panel = panel or load_panel()
    rows = []
    seen: set[str] = set()
    for i, item in enumerate(data):
        where = f"item {i}"
        if not isinstance(item, dict):
            raise InputError(path, f"{where}: not an object")
        messages = _turns(item, where, path)
        target = messages[-1]["content"]
        names = parse_answer_set(target, panel)
        keys: list[str] = []
        for name in names or []:
            disease = panel.lookup(name)
            if disease is not None and disease.key not in keys:
                keys.append(disease.key)
        raw_id = item.get("id")
        base = _ID_SAFE.sub("-", str(raw_id)).strip("-") if raw_id not in (None, "") else f"{path.stem}-{i}"
        row_id = f"medtvt:{base}"
        if row_id in seen:  # ids must be unique; a repeated id keeps its position as a suffix
            row_id = f"{row_id}:{i}"
        seen.add(row_id)
        user_text = " ".join(t["content"] for t in messages if t["role"] == "user")
        boxes = [{"label": label, "box": box} for label, bs in parse_boxes(target) for box in bs]
        rows.append({
            "id": row_id,
            "case_id": base,
            "case_dir": "",
            "task": "diagnosis" if names is not None else "qa",
            "lang": "zh" if has_cjk(user_text + target) else "en",
            "messages": messages,
            "answer_diseases": [k for k in panel.keys if k in keys],
            "gold_boxes": json.dumps(boxes),
            "source": SOURCE,
        })
    return rows_to_dataset(rows, {"format": "medtvt-qa", "path": str(path), "n_rows": len(rows)})
