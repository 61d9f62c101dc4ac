"""Hospitals from one cohort: patients divided into sites with their own modalities and disease mix.

`partition_sites(cases, modalities, seed, alpha)` deals whole patients (every encounter of a
patient at one site) to K sites. Label shift: each site draws a disease mix from a
Dirichlet(alpha) over the panel's diseases plus "no panel disease", and a patient goes to
site k with probability proportional to the mean weight site k gives the patient's diseases,
so one hospital sees mostly cardiac patients and another mostly infections. Modality shift:
each site keeps only the modalities it has (`strip_modalities`), as a clinic without a
radiography suite or an ECG cart would. The same cases, modalities and seed give the same
sites.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from medfuse.errors import InputError
from medfuse.record.case import MODALITIES, PatientCase

HEALTHY = "none"  # the label-mix entry of patients without a panel disease

# What an absent modality looks like on a PatientCase.
_EMPTY: dict[str, Any] = {"cxr": [], "ecg": None, "labs": [], "vitals": [], "notes": [], "genomics": []}


@dataclass
class Site:
    """One hospital: its name, the modalities it has and its (stripped) training cases."""

    name: str
    modalities: tuple[str, ...]
    cases: list[PatientCase]
    label_mix: dict[str, float]  # the Dirichlet draw that shaped its patients (disease -> weight)

    def summary(self) -> dict[str, Any]:
        """Counts only (no identifiers): cases, patients, modalities, cases per disease."""
        diseases = Counter(d for c in self.cases for d in (c.labels.disease_names() if c.labels else []))
        return {"name": self.name, "modalities": list(self.modalities), "cases": len(self.cases),
                "patients": len({c.group_id for c in self.cases}),
                "cases_per_disease": dict(sorted(diseases.items())),
                "label_mix": {k: round(v, 3) for k, v in self.label_mix.items()}}


def strip_modalities(case: PatientCase, keep: tuple[str, ...]) -> PatientCase:
    """The case as a site with only the `keep` modalities would record it (labels kept;
    boxed findings go with the radiograph)."""
    update = {m: _EMPTY[m] for m in MODALITIES if m not in keep}
    if "cxr" not in keep and case.labels is not None and case.labels.findings:
        update["labels"] = case.labels.model_copy(update={"findings": []})
    return case.model_copy(update=update) if update else case


def partition_sites(cases: list[PatientCase], modalities: list[tuple[str, ...]], seed: int = 0,
                    alpha: float = 0.5, disease_keys: list[str] | None = None) -> list[Site]:
    """Divide `cases` by patient into len(modalities) sites with label shift (see the module doc).

    `disease_keys` orders the label mix (default: the diseases seen in the cases). A site
    left without patients is an InputError (too few patients for that many sites).
    """
    n_sites = len(modalities)
    rng = np.random.default_rng(seed)
    by_patient: dict[str, list[PatientCase]] = defaultdict(list)
    for case in cases:
        by_patient[case.group_id].append(case)
    patients = sorted(by_patient)  # a stable order: the draw must not depend on file order
    keys = list(disease_keys or sorted({d for c in cases for d in (c.labels.disease_names() if c.labels else [])}))
    keys.append(HEALTHY)
    mixes = rng.dirichlet(np.full(len(keys), alpha), size=n_sites)  # (K, D+1)
    column = {k: i for i, k in enumerate(keys)}
    assigned: dict[int, list[PatientCase]] = {k: [] for k in range(n_sites)}
    for patient in patients:
        diseases = sorted({d for c in by_patient[patient] for d in (c.labels.disease_names() if c.labels else [])})
        cols = [column[d] for d in diseases if d in column] or [column[HEALTHY]]
        affinity = mixes[:, cols].mean(axis=1) + 1e-6  # (K,)
        site = int(rng.choice(n_sites, p=affinity / affinity.sum()))
        assigned[site].extend(by_patient[patient])
    empty = [k + 1 for k, v in assigned.items() if not v]
    if empty:
        raise InputError(None, f"too few patients ({len(patients)}) for {n_sites} sites: site(s) "
                               f"{', '.join(map(str, empty))} got none; use fewer sites or a larger cohort")
    return [Site(name=f"site{k + 1}", modalities=modalities[k],
                 cases=[strip_modalities(c, modalities[k]) for c in assigned[k]],
                 label_mix={key: float(mixes[k, i]) for i, key in enumerate(keys)})
            for k in range(n_sites)]
