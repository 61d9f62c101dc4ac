"""PathVQA: `pvqa/qas/<split>/<split>_qa.pkl` (a pickled list of {image, question, answer})
with images at `pvqa/images/<split>/<image>.jpg`; also JSON / JSON Lines exports with the
same three fields (the HF `flaviagiammarino/path-vqa` columns, `image` as a file name).

Closed questions are those whose answer is yes/no; every other question is open. The
pickle is read with an unpickler that only admits plain containers and strings, so a
crafted file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from medfuse.errors import InputError
from medfuse.eval.benchmarks.base import VQABenchmark, check_record, iter_jsonl, read_json, register

_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every global: the QA pickles hold only lists, dicts, str and numbers."""

    def find_class(self, module: str, name: str):  # noqa: D401
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_pickle(path: Path) -> object:
    try:
        return _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise InputError(path, f"not a plain pickled QA list ({e.__class__.__name__})") from None


@register
class PathVQA(VQABenchmark):
    name = "pathvqa"
    description = "PathVQA pathology VQA (qas/<split>_qa.pkl or JSON/JSONL; yes/no = closed)"
    default_split = "test"
    splits = ("train", "val", "test")

    def _find(self, path: Path, split: str) -> tuple[Path, Path]:
        """(QA file, image folder)."""
        if path.is_file():
            root = path.parent
            for cand in (path.parents[2] / "images" / split if len(path.parents) > 2 else None, root / "images" / split, root / "images", root):
                if cand is not None and cand.is_dir():
                    return path, cand
            return path, root
        for base in (path, path / "pvqa"):
            qa = base / "qas" / split / f"{split}_qa.pkl"
            if qa.is_file():
                return qa, base / "images" / split
        for name in (f"{split}.json", f"{split}.jsonl"):
            if (path / name).is_file():
                images = path / "images" / split if (path / "images" / split).is_dir() else path / "images"
                return path / name, images
        raise InputError(path, f"no PathVQA qas/{split}/{split}_qa.pkl or {split}.json(l) in this folder")

    def _records(self, file: Path) -> list:
        if file.suffix == ".pkl":
            return _read_pickle(file)  # type: ignore[return-value]
        if file.suffix == ".jsonl":
            return [r for _, r in iter_jsonl(file)]
        try:
            return read_json(file)
        except InputError:
            # Some exports are JSON Lines with a .json extension.
            return [r for _, r in iter_jsonl(file)]

    def _load(self, path: Path, split: str | None, lang: str | None):
        split = self.one_split(split)
        file, image_dir = self._find(path, split)
        data = self._records(file)
        if not isinstance(data, list):
            raise InputError(file, "expected a list of {image, question, answer} records")
        for i, rec in enumerate(data):
            check_record(file, i, rec, ("image", "question", "answer"), "a PathVQA file")
            stem = str(rec["image"])
            image = next((image_dir / f"{stem}{e}" for e in ("", *_IMAGE_EXTS) if (image_dir / f"{stem}{e}").is_file()), None)
            item = self.vqa_item(
                id=str(rec.get("question_id", f"{split}-{i}")),
                record=rec,
                image=image.resolve() if image is not None else None,
            )
            if item is not None:
                item.metadata["image"] = stem
                yield item
