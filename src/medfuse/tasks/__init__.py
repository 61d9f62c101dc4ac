"""Instruction data: diagnosis with a chain of evidence, per-modality QA, region tasks and
reports, in English and Chinese, built from a cohort (`build_tasks`) or read from
MedTVT-QA JSON (`read_medtvt_qa`), as a `datasets.Dataset` with the columns `COLUMNS`."""

from medfuse.tasks.build import (
    COLUMNS,
    LANGS,
    META_FILE,
    TASKS,
    build_case_samples,
    build_tasks,
    gold_disease_keys,
    load_tasks,
    rows_to_dataset,
    save_tasks,
    supported_diseases,
    task_features,
    tasks_metadata,
)
from medfuse.tasks.medtvt import read_medtvt_qa

__all__ = [
    "COLUMNS", "LANGS", "META_FILE", "TASKS", "build_case_samples", "build_tasks", "gold_disease_keys", "load_tasks",
    "read_medtvt_qa", "rows_to_dataset", "save_tasks", "supported_diseases", "task_features", "tasks_metadata",
]
