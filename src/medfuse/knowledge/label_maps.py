"""Label vocabularies of public datasets mapped onto the disease panel, findings and rhythm.

The maps ship as `data/snomed_ecg.yaml` (PhysioNet/CinC ECG statements: SNOMED CT codes,
CPSC 2018 abbreviations, CinC 2017 rhythm classes) and `data/cxr_labels.yaml` (NIH
ChestX-ray14, ieee8023 covid-chestxray-dataset, Kermany pediatric pneumonia). Each source
label gets a panel disease where the label is that disease, a finding otherwise, a
non-panel diagnosis where it names one (an organism), and for ECGs the rhythm class it
sets. `map_labels` turns a record's source labels into `Labels`; a label no map knows is
kept as an unmapped non-panel diagnosis and reported, never dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from medfuse.errors import InputError
from medfuse.knowledge.data_files import parse_yaml, read_data_file
from medfuse.knowledge.panel import Panel, load_panel
from medfuse.record.case import Diagnosis, Finding, Labels

# The rhythm classes of medfuse.interpret.ecg.RHYTHMS (a higher layer, so not imported;
# tests/test_import_real.py checks that both lists agree).
RHYTHM_CLASSES: tuple[str, ...] = ("sinus_rhythm", "sinus_tachycardia", "sinus_bradycardia", "atrial_fibrillation",
                                   "other", "unreadable")
# When a record carries several rhythm statements, the most specific wins: AF over any
# other arrhythmia, an arrhythmia over a sinus rate statement, a rate over plain sinus
# rhythm (Chapman records often say both 'sinus rhythm' and 'sinus tachycardia').
_RHYTHM_RANK = {"sinus_rhythm": 0, "sinus_bradycardia": 1, "sinus_tachycardia": 1, "other": 2,
                "unreadable": 3, "atrial_fibrillation": 4}

ECG_MAPS = ("snomed", "cpsc2018", "cinc2017")
CXR_MAPS = ("nih_chestxray14", "ieee8023", "kermany")


@dataclass(frozen=True)
class LabelTarget:
    """Where one source label goes."""

    label: str  # the label as the source writes it (a SNOMED code, 'Effusion', 'A')
    name: str  # a readable name for messages
    panel: str | None = None  # panel disease key
    finding: str | None = None
    diagnosis: str | None = None  # a non-panel diagnosis kept beside any panel one
    rhythm: str | None = None  # one of RHYTHM_CLASSES
    normal: bool = False  # the source's explicit negative ('No Finding')
    code: str | None = None  # 'SNOMED:164889003' where the source label has a code

    def describe(self) -> str:
        """'atrial fibrillation (panel), rhythm atrial_fibrillation' for the import summary."""
        parts = []
        if self.normal:
            parts.append("no finding")
        if self.panel:
            parts.append(f"{self.panel} (panel)")
        if self.finding:
            parts.append(f"{self.finding} (finding)")
        if self.diagnosis:
            parts.append(f"{self.diagnosis} (non-panel diagnosis)")
        if self.rhythm:
            parts.append(f"rhythm {self.rhythm}")
        return ", ".join(parts)


@dataclass(frozen=True)
class LabelMap:
    """One source's labels, looked up case- and spacing-insensitively."""

    name: str  # 'snomed', 'nih_chestxray14', ...
    code_system: str  # prefix of the source codes kept on the case ('SNOMED', 'NIH-CXR14')
    targets: dict[str, LabelTarget] = field(default_factory=dict)  # normalised label -> target

    def lookup(self, label: str) -> LabelTarget | None:
        return self.targets.get(_key(label))

    def __contains__(self, label: str) -> bool:
        return _key(label) in self.targets


@dataclass
class MappedLabels:
    """A record's labels after mapping, with what the import summary reports."""

    labels: Labels
    rhythm: str | None
    summary: list[str]  # one line per source label: 'label X -> ...' or 'label X unmapped ...'
    unmapped: list[str]


def _key(label: str) -> str:
    return " ".join(str(label).replace("_", " ").split()).lower()


_CODE_SYSTEMS = {"snomed": "SNOMED", "cpsc2018": "SNOMED", "cinc2017": "CinC2017",
                 "nih_chestxray14": "NIH-CXR14", "ieee8023": "ieee8023", "kermany": "Kermany"}


def load_label_map(name: str, path: str | Path | None = None, panel: Panel | None = None) -> LabelMap:
    """The label map `name` (one of ECG_MAPS or CXR_MAPS) from the bundled file, or from
    the YAML at `path` (same shape). Every panel key must exist in `panel` (default: the
    built-in panel) and every rhythm must be a medfuse rhythm class.

    Raises `InputError` naming the file for a missing file, invalid YAML or a bad entry.
    """
    if name not in ECG_MAPS + CXR_MAPS:
        raise ValueError(f"unknown label map {name!r}; known: {', '.join(ECG_MAPS + CXR_MAPS)}")
    bundled = "snomed_ecg.yaml" if name in ECG_MAPS else "cxr_labels.yaml"
    text, origin = read_data_file(path, bundled, "no such label-map file")
    data = parse_yaml(text, origin)
    if not isinstance(data, dict) or name not in data:
        raise InputError(origin, f"label-map file has no '{name}' section")
    panel = panel or load_panel()
    section = data[name]
    targets: dict[str, LabelTarget] = {}
    if name == "snomed":
        if not isinstance(section, list):
            raise InputError(origin, "'snomed' must be a list of {code, abbrev, name, ...} entries")
        for entry in section:
            target = _target(entry, origin, panel, label_field="code")
            targets[_key(target.label)] = target
    elif name == "cpsc2018":
        # Abbreviations that stand for SNOMED codes: they take the SNOMED entry's target.
        snomed = load_label_map("snomed", path, panel)
        if not isinstance(section, dict):
            raise InputError(origin, "'cpsc2018' must map abbreviations to SNOMED codes")
        for abbrev, code in section.items():
            base = snomed.lookup(str(code))
            if base is None:
                raise InputError(origin, f"cpsc2018 label {abbrev!r} names SNOMED code {code}, which 'snomed' lacks")
            targets[_key(abbrev)] = LabelTarget(**{**base.__dict__, "label": str(abbrev)})
    else:
        if not isinstance(section, dict):
            raise InputError(origin, f"'{name}' must map each source label to its target")
        for label, entry in section.items():
            target = _target({**(entry or {}), "label": str(label)}, origin, panel, label_field="label")
            targets[_key(target.label)] = target
    return LabelMap(name=name, code_system=_CODE_SYSTEMS[name], targets=targets)


def _target(entry: object, origin: str, panel: Panel, label_field: str) -> LabelTarget:
    if not isinstance(entry, dict) or not entry.get(label_field):
        raise InputError(origin, f"label-map entry without '{label_field}': {str(entry)[:60]}")
    label = str(entry[label_field])
    unknown = set(entry) - {"label", "code", "abbrev", "name", "panel", "finding", "diagnosis", "rhythm", "normal"}
    if unknown:
        raise InputError(origin, f"label {label!r}: unknown field(s) {', '.join(sorted(unknown))}")
    key = entry.get("panel")
    if key is not None and key not in panel.keys:
        raise InputError(origin, f"label {label!r} maps to panel disease {key!r}, which the panel lacks")
    rhythm = entry.get("rhythm")
    if rhythm is not None and rhythm not in RHYTHM_CLASSES:
        raise InputError(origin, f"label {label!r}: rhythm {rhythm!r} is not one of {', '.join(RHYTHM_CLASSES)}")
    normal = bool(entry.get("normal", False))
    if not normal and not (key or entry.get("finding") or entry.get("diagnosis") or rhythm):
        raise InputError(origin, f"label {label!r} maps to nothing (give panel, finding, diagnosis, rhythm or normal)")
    return LabelTarget(
        label=label,
        name=str(entry.get("name") or entry.get("abbrev") or label),
        panel=key,
        finding=entry.get("finding"),
        diagnosis=entry.get("diagnosis"),
        rhythm=rhythm,
        normal=normal,
        code=f"SNOMED:{label}" if label_field == "code" else None,
    )


def map_labels(source_labels: Iterable[str], label_map: LabelMap, panel: Panel | None = None) -> MappedLabels:
    """`Labels` (panel diagnoses, non-panel diagnoses, findings without boxes, source
    codes) and the rhythm class of one record's source labels.

    A label the map lacks becomes a non-panel `Diagnosis` named after it and is listed in
    `unmapped`. Duplicates (two labels with one target) are merged.

    >>> m = map_labels(["AF", "RBBB"], load_label_map("cpsc2018"))
    >>> m.labels.disease_names(), [f.label for f in m.labels.findings], m.rhythm
    (['atrial fibrillation'], ['right bundle branch block'], 'atrial_fibrillation')
    """
    panel = panel or load_panel()
    diagnoses: list[Diagnosis] = []
    findings: list[Finding] = []
    codes: list[str] = []
    rhythm: str | None = None
    summary: list[str] = []
    unmapped: list[str] = []

    def add_diagnosis(name: str, in_panel: bool) -> None:
        if all(d.name != name for d in diagnoses):
            diagnoses.append(Diagnosis(name=name, in_panel=in_panel))

    for raw in dict.fromkeys(s.strip() for s in source_labels if s and s.strip()):
        target = label_map.lookup(raw)
        if target is None and "/" in raw:  # 'Pneumonia/Viral/COVID-19': the most specific part
            target = label_map.lookup(raw.rsplit("/", 1)[-1])
        code = target.code if target is not None and target.code else f"{label_map.code_system}:{raw}"
        if code not in codes:
            codes.append(code)
        if target is None:
            add_diagnosis(code if label_map.code_system == "SNOMED" else raw, in_panel=False)
            unmapped.append(raw)
            summary.append(f"label {raw} unmapped (kept as a non-panel diagnosis)")
            continue
        # A bare code says nothing to a reader: name it ('label 427084000 (sinus tachycardia)').
        shown = f"{raw} ({target.name})" if raw.isdigit() else raw
        summary.append(f"label {shown} -> {target.describe()}")
        if target.panel:
            add_diagnosis(panel.by_key(target.panel).name, in_panel=True)
        if target.diagnosis:
            add_diagnosis(target.diagnosis, in_panel=False)
        if target.finding and all(f.label != target.finding for f in findings):
            findings.append(Finding(label=target.finding))
        if target.rhythm and (rhythm is None or _RHYTHM_RANK[target.rhythm] > _RHYTHM_RANK[rhythm]):
            rhythm = target.rhythm
    return MappedLabels(labels=Labels(diagnoses=diagnoses, findings=findings, source_codes=codes),
                        rhythm=rhythm, summary=summary, unmapped=unmapped)
