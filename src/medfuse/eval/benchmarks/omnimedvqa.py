"""OmniMedVQA: `QA_information/{Open-access,Restricted-access}/<source>.json` + `Images/`.

Each file is a list of `{question, gt_answer, option_A..option_D, image_path,
question_type, modality_type}`; `gt_answer` is option TEXT, mapped to its letter by
string equality (as MedEvalKit does), after trimming and case-folding so that `X-ray`
and `x-ray` agree; a gold that matches no option is skipped and counted. `image_path` is
relative to the release root. One source file spells `modality_type` as `modality`.
"""

from __future__ import annotations

from pathlib import Path

from medfuse.errors import InputError
from medfuse.eval.benchmarks.base import (
    Benchmark, check_record, option_letter, read_json_list, register, resolve_image, text_or_none,
)

_ACCESS = {"open-access": "Open-access", "restricted-access": "Restricted-access"}


def _fold(text: str) -> str:
    return " ".join(text.split()).strip().rstrip(".").casefold()


@register
class OmniMedVQA(Benchmark):
    name = "omnimedvqa"
    task_type = "multiple_choice"
    description = "OmniMedVQA image multiple choice (QA_information/*/*.json; gt_answer is option text)"
    default_split = "open-access"
    splits = ("open-access", "restricted-access")
    breakdowns = ("question_type", "modality_type")

    def _files(self, path: Path, split: str | None) -> tuple[Path, list[Path]]:
        """(release root, QA files)."""
        if path.is_file():
            # .../<root>/QA_information/<access>/<source>.json -> root; else the file's folder.
            root = path.parents[2] if path.parent.parent.name == "QA_information" else path.parent
            return root, [path]
        info = path / "QA_information"
        if not info.is_dir():
            raise InputError(path, "no QA_information folder (not an OmniMedVQA release)")
        accesses = list(_ACCESS.values()) if split == "all" else [_ACCESS[split or "open-access"]]
        files = sorted(f for a in accesses for f in (info / a).glob("*.json"))
        if not files:
            raise InputError(path, f"no QA files under QA_information/{'|'.join(accesses)}")
        return path, files

    def _load(self, path: Path, split: str | None, lang: str | None):
        root, files = self._files(path, split)
        for file in files:
            data = read_json_list(file, "QA records")
            for i, rec in enumerate(data):
                check_record(file, i, rec, ("question", "gt_answer"), "an OmniMedVQA file")
                options = {L: str(rec[f"option_{L}"]).strip() for L in "ABCDEF" if text_or_none(rec.get(f"option_{L}"))}
                gold = option_letter(options, text_or_none(rec.get("gt_answer")), fold=_fold)
                if gold is None:
                    self.skip("gt_answer matches no single option")
                    continue
                image = resolve_image(root, str(rec.get("image_path") or ""))
                if image is None:
                    self.skip("image file not found")
                    continue
                modality = rec.get("modality_type", rec.get("modality"))
                meta = {"question_type": rec.get("question_type"), "modality_type": modality, "source": file.stem}
                yield self.item(
                    id=str(rec.get("question_id") or f"{file.stem}-{i}"),
                    answer_type="choice",
                    question=str(rec["question"]).strip(),
                    options=options,
                    images=[str(image)],
                    gold=gold,
                    metadata={k: v for k, v in meta.items() if v is not None},
                )
