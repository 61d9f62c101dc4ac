"""`medfuse:PATH`: a medfuse checkpoint folder behind the eval harness's model interface.

The checkpoint format and its loader belong to `medfuse.model` (`MedFuse.load`); this
adapter, which speaks the harness's `Prompt`s, belongs to the eval kit, which sits above
the model layer. Prompts are routed by their task type (`Prompt.task_type`), never by
whether they carry images:

- A diagnosis prompt read from a medfuse case folder (`Prompt.case_dir`, set by the
  `medfuse-cohort` benchmark; else the one case folder holding all its images) is
  diagnosed from the whole folder (every modality, not only the text rendering): the
  output is `<think>checked reasoning</think><answer>diseases the calibrated head calls
  present</answer>` and carries the head's per-disease probabilities
  (`GeneratedText.probabilities`), so diagnosis runs also get AUROC and calibration.
- Every other prompt (VQA, multiple choice, report, grounding, a diagnosis question
  without a case folder, or a prompt with no task type) is the question itself, answered
  by the language model from its text, with the prompt's first image (if any) encoded by
  the fusion model and injected at a `<cxr>` placeholder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medfuse.errors import InputError
from medfuse.eval.models.base import GeneratedText, ModelAdapter
from medfuse.formats import has_cjk
from medfuse.eval.prompts import Prompt
from medfuse.model import MedFuse
from medfuse.record.case import PatientCase
from medfuse.record.store import CASE_FILE, read_case



class MedfuseCheckpointModel(ModelAdapter):
    """A medfuse checkpoint folder, loaded now (see the module docstring)."""

    accepts_images = True

    def __init__(self, path: str | Path, batch_size: int = 8):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(self.path, "no such checkpoint folder")
        self.model = MedFuse.load(self.path)
        self.batch_size = batch_size
        from medfuse.eval.models.hf import folder_fingerprint

        # The cache key is computed from the folder (see `model_cache_id`), not by the model.
        self.model_id = f"medfuse:{self.path.resolve()}@{folder_fingerprint(self.path)}"

    def generate(self, prompts: Sequence[Prompt]) -> list[str]:
        """One output per prompt, in order."""
        outputs: list[str] = [""] * len(prompts)
        case_jobs: list[tuple[int, Path]] = []
        text_jobs: list[int] = []
        for i, p in enumerate(prompts):
            folder = _case_folder(p) if p.task_type == "diagnosis" else None
            (case_jobs.append((i, folder)) if folder is not None else text_jobs.append(i))
        for start in range(0, len(case_jobs), self.batch_size):
            chunk = case_jobs[start:start + self.batch_size]
            outputs_for = self._diagnose([read_case(f) for _, f in chunk], max(prompts[i].max_new_tokens for i, _ in chunk))
            for (i, _), text in zip(chunk, outputs_for, strict=True):
                outputs[i] = text
        for group in ([i for i in text_jobs if prompts[i].images], [i for i in text_jobs if not prompts[i].images]):
            for start in range(0, len(group), self.batch_size):
                chunk = group[start:start + self.batch_size]
                for i, text in zip(chunk, self._answer([prompts[i] for i in chunk]), strict=True):
                    outputs[i] = text
        return outputs

    def _diagnose(self, cases: list[PatientCase], max_new_tokens: int) -> list[GeneratedText]:
        from medfuse.formats import format_answer
        from medfuse.model.diagnosis import diagnose_many

        out = []
        for d in diagnose_many(self.model, cases, lang="en", max_new_tokens=max_new_tokens):
            r = d.result
            answer = format_answer([x.name for x in r.diagnoses if x.present])
            boxes = "".join(f"<ref>{f.label}</ref><box>[{f.box}]</box>" for f in r.findings)
            probabilities = {x.name: x.probability for x in r.diagnoses}
            out.append(GeneratedText(f"<think>{r.reasoning}</think>{answer}{boxes}", probabilities=probabilities))
        return out

    def _answer(self, prompts: list[Prompt]) -> list[str]:
        """Text answers; the prompts of one call either all have images or none has."""
        from medfuse.io.image import read_image

        fused = None
        if prompts[0].images:
            # The first image of each prompt is encoded (the fusion model reads one radiograph).
            cases = [PatientCase(case_id=f"prompt{i}", cxr=[read_image(p.images[0])]) for i, p in enumerate(prompts)]
            fused = self.model.fuse(cases)
        messages = []
        for i, p in enumerate(prompts):
            user = p.user
            if fused is not None and "cxr" in fused.token_groups[i]:
                user = f"{'图像' if has_cjk(user) else 'Image'}: <cxr>\n\n{user}"
            messages.append((p.system, user))
        return self.model.generate(messages, fused, max_new_tokens=max(p.max_new_tokens for p in prompts))

    def close(self) -> None:
        """Nothing to release on CPU."""


def _case_folder(prompt: Prompt) -> Path | None:
    """The case folder a prompt was read from: its `case_dir`, else the one folder holding
    all its images, when that is a case folder."""
    if prompt.case_dir:
        folder = Path(prompt.case_dir)
    else:
        folders = {Path(p).parent for p in prompt.images}
        if len(folders) != 1:
            return None
        folder = folders.pop()
    return folder if (folder / CASE_FILE).is_file() else None
