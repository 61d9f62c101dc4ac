"""FHIR R4 (Bundle JSON or NDJSON) -> one `PatientCase` per Encounter.

Every input file is parsed and validated with `fhir.resources.R4B` (the R4-compatible
models of the `fhir.resources` package) before a case is built, and all files are
pooled, so a bulk export split into `Patient.ndjson`, `Encounter.ndjson`,
`Observation.ndjson`, ... resolves its references across files. What becomes what:

- Patient: sex (`gender`) and age at the encounter (from `birthDate`; a partial date
  '1950' or '1950-03' is read as mid-year / mid-month);
- Encounter: one case each (`fhir-<hash of the encounter id>`), case time =
  `period.start`. A patient without any Encounter gets one case (`fhir-<hash of the
  patient id>`); `patient_id` is `pt-<hash of the patient id>`. Raw ids never reach the
  cohort, nor do file names holding them or a patient's name;
- Observation, category `laboratory` or a catalogue LOINC: a `LabResult` through
  `make_lab_result` (`valueQuantity` with its UCUM code and comparator, `valueString`,
  `referenceRange`, `interpretation`, effective time, specimen type as the fluid);
- Observation, vital signs by LOINC (8867-4 heart rate, 8480-6 / 8462-4 systolic /
  diastolic, 85354-9 / 55284-4 blood-pressure panels with components, 8310-5 / 8331-1
  temperature with °F converted, 59408-5 / 2708-6 SpO2, 9279-1 respiratory rate):
  `VitalSigns` sets, one per effective time;
- Condition: `labels.diagnoses`, mapped to the disease panel by ICD-10 / ICD-9 code
  (`panel.match_icd`) or by the SNOMED / text display (`panel.lookup`); all codes go to
  `labels.source_codes`;
- DiagnosticReport: imaging reports (radiology category or imaging study) become
  `labels.report`, others a `Note` of type 'report', from `conclusion` or a text
  `presentedForm`; DocumentReference text attachments become notes;
- DocumentReference / Media attachments and ImagingStudy endpoints that point at local
  files (relative to the file holding the resource, or `file://` URLs) are loaded as
  images (PNG/JPEG, DICOM) or ECGs (WFDB, DICOM waveform). The file must lie inside the
  folder of the FHIR file that names it; a reference leading out of it is refused.

A resource that links to an encounter goes to that encounter's case; one that only names
its patient goes to the patient's encounter whose period holds its time. Every resource
that is not used (an unsupported type, an invalid resource, a coded lab value, a
missing file, ...) is counted in the `ImportReport`. A file that is not valid JSON raises
`InputError` with the line and column.

Times: aware times are converted to UTC and stored naive; a dateTime written without an
offset (common, though not valid FHIR) is kept as written.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import ValidationError

from medfuse.errors import InputError
from medfuse.formats import has_cjk
from medfuse.io.base import ImportReport, expand_paths, pseudonym, read_source_bytes, scrubbed_name
from medfuse.io.labs_common import dedupe_labs, make_lab_result
from medfuse.io.labs_csv import parse_range
from medfuse.knowledge.labs import LabCatalogue, load_lab_catalogue, normalise_unit
from medfuse.knowledge.panel import Disease, Panel, load_panel
from medfuse.record.case import (
    ECG,
    CXRImage,
    Demographics,
    Diagnosis,
    LabResult,
    Labels,
    Note,
    PatientCase,
    VitalSigns,
)
from medfuse.record.store import loads_json, path_inside

FHIR_SUFFIXES: tuple[str, ...] = (".json", ".ndjson", ".jsonl", ".json.gz", ".ndjson.gz", ".jsonl.gz")
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"

# Resource types turned into case content, and types read only to resolve references.
CLINICAL_TYPES = ("Observation", "Condition", "DiagnosticReport", "DocumentReference", "Media", "ImagingStudy")
HANDLED_TYPES = ("Patient", "Encounter", *CLINICAL_TYPES)
REFERENCED_TYPES = ("Specimen", "Endpoint", "Binary")

VITAL_LOINC: dict[str, str] = {
    "8867-4": "heart_rate",
    "8480-6": "sbp",
    "8462-4": "dbp",
    "8310-5": "temperature",  # body temperature
    "8331-1": "temperature",  # oral temperature
    "59408-5": "spo2",  # SpO2 by pulse oximetry
    "2708-6": "spo2",  # arterial O2 saturation
    "9279-1": "resp_rate",
}
BP_PANELS = frozenset({"85354-9", "55284-4"})  # components 8480-6 / 8462-4
VITALS_PANEL = "85353-1"  # a grouper: its members are separate Observations
# Plausible physiological ranges (canonical units). A value outside is a unit or entry
# error (a temperature of 98.6 'Cel', a heart rate of 7200), not a patient state.
_VITAL_RANGE: dict[str, tuple[float, float]] = {
    "heart_rate": (0, 350), "sbp": (0, 350), "dbp": (0, 300), "temperature": (20, 46), "spo2": (0, 100),
    "resp_rate": (0, 150),
}
_RATE_UNITS = {"/min", "{beats}/min", "{beat}/min", "{breaths}/min", "{breath}/min", "beats/minute",
               "breaths/minute", "1/min", "min-1"}

# LOINC document types -> note types (the rest are 'other').
_NOTE_TYPES: dict[str, str] = {
    "34117-2": "history",  # history and physical note
    "11492-6": "history",  # H&P hospital
    "10164-2": "history",  # history of present illness
    "18842-5": "discharge",  # discharge summary
    "34105-7": "discharge",  # hospital discharge summary
    "11488-4": "other",  # consult note
    "42349-1": "indication",  # reason for referral
}
# DiagnosticReport categories (HL7 v2-0074 and LOINC parts) that mean an imaging read.
_IMAGING_CATEGORIES = {"RAD", "CT", "XRC", "RX", "NMR", "NMS", "US", "VUS", "CUS", "LP29684-5", "imaging"}
_IMAGING_REPORT_LOINC = {"18748-4", "18726-0", "36643-5", "30746-2", "24627-2", "18782-3"}
# '2024-03-01T08:10:00' (no offset): invalid FHIR but common; see _add_utc_offsets.
_NAIVE_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
_DEAD_STATUS = {"entered-in-error", "cancelled"}


# ---------------------------------------------------------------- reading files

@dataclass
class FhirResource:
    """One validated resource and where it came from."""

    type: str
    model: Any  # a fhir.resources.R4B model
    path: Path  # the file it was read from (attachments resolve relative to it)
    full_url: str | None = None

    @property
    def id(self) -> str | None:
        return getattr(self.model, "id", None)

    @property
    def key(self) -> str:
        """'Type/id', or the Bundle fullUrl for resources without an id."""
        if self.id:
            return f"{self.type}/{self.id}"
        return self.full_url or f"{self.type}/@{id(self.model)}"

    @property
    def label(self) -> str:
        """A short id for case names: the logical id, else the tail of the fullUrl."""
        if self.id:
            return self.id
        return re.split(r"[:/]", self.full_url or "")[-1] or "unnamed"


def find_fhir_files(paths: Iterable[str | Path]) -> list[Path]:
    """FHIR files named by `paths` (folders searched for .json, .ndjson, .jsonl, gzipped too)."""
    return expand_paths(paths, patterns=tuple(f"*{s}" for s in FHIR_SUFFIXES))


def _read_text(path: Path) -> str:
    raw = read_source_bytes(path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(path, f"not UTF-8 text (byte {e.start}); FHIR JSON is UTF-8") from None


def parse_fhir_file(path: str | Path) -> list[dict]:
    """The top-level JSON objects of a FHIR file: one (a Bundle or a resource) for JSON,
    one per line for NDJSON. Raises `InputError` with the line for malformed JSON."""
    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        raise InputError(path, "empty file")
    ndjson = path.name.endswith((".ndjson", ".jsonl", ".ndjson.gz", ".jsonl.gz"))
    objects: list[Any] = []
    if not ndjson:
        try:
            objects = [json.loads(text)]
        except (json.JSONDecodeError, RecursionError) as e:
            if getattr(e, "msg", None) != "Extra data":
                loads_json(text, path)  # raises the one-line InputError (position, or nested too deep)
            ndjson = True  # several objects, one per line: NDJSON with a .json name
    if ndjson:
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                objects.append(loads_json(line, path, line=line_no))
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
            where = f"line {i + 1}" if ndjson else "top level"
            raise InputError(path, f"not a FHIR resource at {where} (a JSON object with 'resourceType' expected)")
    return objects


def _add_utc_offsets(obj: Any, fixed: list[int]) -> Any:
    """Give offset-less dateTimes an explicit +00:00 so the strict models accept them.

    Times are stored as naive UTC, so '10:00' read as '10:00+00:00' keeps the wall-clock
    time exactly as written."""
    if isinstance(obj, dict):
        return {k: _add_utc_offsets(v, fixed) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_add_utc_offsets(v, fixed) for v in obj]
    if isinstance(obj, str) and _NAIVE_DATETIME.match(obj):
        fixed[0] += 1
        return obj + "+00:00"
    return obj


def _model_class(resource_type: str):
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (ValueError, KeyError, AttributeError):
        return None


def _validate(raw: dict, path: Path, full_url: str | None, report: ImportReport) -> FhirResource | None:
    rtype = raw["resourceType"]
    if rtype not in HANDLED_TYPES and rtype not in REFERENCED_TYPES:
        known = _model_class(rtype) is not None
        report.skip(f"{rtype} resource not imported" if known else "unknown FHIR resource type")
        return None
    fixed = [0]
    try:
        data = _add_utc_offsets(raw, fixed)
        model = _model_class(rtype).model_validate(data)
    except (ValidationError, ValueError, TypeError, RecursionError):  # RecursionError: nested absurdly deep
        report.skip(f"invalid {rtype} resource (fails FHIR R4 validation)")
        return None
    if fixed[0]:
        report.note("FHIR dateTime without a timezone read as written")
    return FhirResource(type=rtype, model=model, path=path, full_url=full_url)


def _resources_in(obj: dict, path: Path, full_url: str | None, report: ImportReport,
                  out: list[FhirResource], depth: int = 0) -> None:
    if obj.get("resourceType") == "Bundle":
        entries = obj.get("entry") or []
        if not isinstance(entries, list) or depth > 4:
            raise InputError(path, "Bundle 'entry' is not a list" if depth <= 4 else "Bundles nested too deep")
        for entry in entries:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                report.skip("Bundle entry without a resource")
                continue
            _resources_in(resource, path, entry.get("fullUrl"), report, out, depth + 1)
        return
    item = _validate(obj, path, full_url, report)
    if item is not None:
        out.append(item)


def read_fhir_resources(paths: Iterable[str | Path], report: ImportReport, skip_bad: bool = False) -> list[FhirResource]:
    """Every usable resource in the files (Bundles unpacked), validated. Raises `InputError`
    for a file that is missing, not JSON/NDJSON, or not FHIR (with `skip_bad`: the file is
    skipped and listed in `report`)."""
    paths = list(paths)
    files = find_fhir_files(paths)
    if not files:
        raise InputError(paths[0] if paths else None, "no FHIR JSON/NDJSON files found")
    out: list[FhirResource] = []
    for path in files:
        found: list[FhirResource] = []
        try:
            for obj in parse_fhir_file(path):
                _resources_in(obj, path, None, report, found)
        except InputError as e:
            if not skip_bad:
                raise
            report.skip_file(e, "unreadable FHIR file")
            continue
        out.extend(found)
    return out


# ---------------------------------------------------------------- small readers

def _float(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    if isinstance(x, (int, float, Decimal)):
        return float(x)
    return None


def _when(value: Any) -> dt.datetime | None:
    """A FHIR date/dateTime/instant (datetime, date or partial-date text) as naive UTC."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    m = re.match(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?", str(value))
    if m:  # partial date: the middle of the year / month it names
        year, month, day = int(m.group(1)), int(m.group(2) or 7), int(m.group(3) or (15 if m.group(2) else 1))
        try:
            return dt.datetime(year, month, day)
        except ValueError:
            return None
    return None


def _codings(concept: Any) -> list[Any]:
    return list(getattr(concept, "coding", None) or []) if concept is not None else []


def _codes(concept: Any, system: str) -> list[str]:
    return [c.code for c in _codings(concept) if c.system == system and c.code]


def _display(concept: Any) -> str | None:
    """Human text of a CodeableConcept: its text, else the first coding display."""
    if concept is None:
        return None
    if getattr(concept, "text", None):
        return concept.text
    for c in _codings(concept):
        if c.display:
            return c.display
    return None


def _category_codes(categories: Any) -> set[str]:
    return {c.code for cat in (categories or []) for c in _codings(cat) if c.code}


def _status(model: Any) -> str | None:
    s = getattr(model, "status", None)
    return str(s) if s is not None else None


def _lang(text: str) -> str:
    return "zh" if has_cjk(text) else "en"


def _strip_html(text: str) -> str:
    text = re.sub(r"(?is)<(script|style).*?</\1>", " ", text)
    text = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</li>", "\n", text)
    return html.unescape(re.sub(r"<[^>]+>", "", text)).strip()


# ---------------------------------------------------------------- the resource pool

class _Pool:
    """The validated resources with reference lookup by 'Type/id' and fullUrl."""

    def __init__(self, resources: list[FhirResource], skip_bad: bool = False):
        self.resources = resources
        self.skip_bad = skip_bad  # a file reference outside the input: skip it (True) or stop
        self.by_ref: dict[str, FhirResource] = {}
        for r in resources:
            if r.id:
                self.by_ref.setdefault(f"{r.type}/{r.id}", r)
            if r.full_url:
                self.by_ref.setdefault(r.full_url, r)

    @staticmethod
    def ref_key(reference: str) -> str:
        """'Patient/1', 'http://x/fhir/Patient/1/_history/2' -> 'Patient/1'; urn:uuid kept."""
        ref = reference.strip()
        if ref.startswith(("urn:", "#")):
            return ref
        ref = re.sub(r"/_history/[^/]+$", "", ref)
        parts = [p for p in ref.split("/") if p]
        return "/".join(parts[-2:]) if len(parts) >= 2 else ref

    def resolve(self, reference: Any, rtype: str | None = None) -> FhirResource | None:
        ref = getattr(reference, "reference", None) if reference is not None else None
        if not ref:
            return None
        found = self.by_ref.get(ref) or self.by_ref.get(self.ref_key(ref))
        if found is not None and rtype is not None and found.type != rtype:
            return None
        return found

    def key_of(self, reference: Any, rtype: str) -> str | None:
        """The pool key a reference names: the resolved resource's key, else 'Type/id'
        when the reference itself says it is of `rtype` (a resource not in the input)."""
        found = self.resolve(reference, rtype)
        if found is not None:
            return found.key
        ref = getattr(reference, "reference", None) if reference is not None else None
        if ref:
            key = self.ref_key(ref)
            if key.startswith(f"{rtype}/"):
                return key
        return None


@dataclass
class _CaseParts:
    """What is collected for one case before it is built (resources, not yet files)."""

    case_id: str
    patient_key: str | None
    encounter: FhirResource | None = None
    labs: list[LabResult] = field(default_factory=list)
    vitals: list[dict[str, Any]] = field(default_factory=list)  # one dict per time point
    notes: list[Note] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    diagnoses: list[Diagnosis] = field(default_factory=list)
    source_codes: list[str] = field(default_factory=list)
    has_conditions: bool = False
    attachments: list[tuple[Path | bytes, str]] = field(default_factory=list)  # (local file or inline data, kind)
    files: set[str] = field(default_factory=set)

    def is_empty(self) -> bool:
        return not (self.labs or self.vitals or self.notes or self.reports or self.has_conditions or self.attachments)


@dataclass
class FhirInput:
    """Everything read from the FHIR files, grouped into cases (files are loaded later)."""

    cases: list[_CaseParts]
    patients: dict[str, FhirResource]
    report: ImportReport
    identifiers: list[str] = field(default_factory=list)  # raw ids and names, kept out of stored file names


# ---------------------------------------------------------------- grouping into cases

def _subject(model: Any) -> Any:
    return getattr(model, "subject", None) or getattr(model, "patient", None)


def _encounter_ref(item: FhirResource) -> Any:
    m = item.model
    if item.type == "DocumentReference":
        context = getattr(m, "context", None)
        encounters = getattr(context, "encounter", None) or []
        return encounters[0] if encounters else None
    return getattr(m, "encounter", None)


def _resource_time(item: FhirResource) -> dt.datetime | None:
    m = item.model
    for attr in ("effectiveDateTime", "effectiveInstant", "onsetDateTime", "recordedDate", "createdDateTime",
                 "started", "date", "issued"):
        t = _when(getattr(m, attr, None))
        if t is not None:
            return t
    for attr in ("effectivePeriod", "onsetPeriod", "createdPeriod"):
        period = getattr(m, attr, None)
        if period is not None and period.start is not None:
            return _when(period.start)
    return None


class _Grouper:
    """Assigns each clinical resource to the case of its encounter (or patient)."""

    def __init__(self, pool: _Pool, report: ImportReport):
        self.pool = pool
        self.report = report
        self.patients = {r.key: r for r in pool.resources if r.type == "Patient"}
        self.cases: dict[str, _CaseParts] = {}
        self.encounters_of: dict[str, list[tuple[dt.datetime | None, dt.datetime | None, str]]] = {}
        self.orphan_encounters: set[str] = set()
        for enc in (r for r in pool.resources if r.type == "Encounter"):
            patient_key = self._patient_key(enc)
            if patient_key is None:
                report.skip("Encounter without a patient")
                self.orphan_encounters.add(enc.key)
                continue
            self._encounter_case(enc.key, patient_key, enc)
            period = getattr(enc.model, "period", None)
            start = _when(period.start) if period is not None else None
            end = _when(period.end) if period is not None else None
            self.encounters_of.setdefault(patient_key, []).append((start, end, enc.key))
        for spans in self.encounters_of.values():
            spans.sort(key=lambda s: (s[0] is None, s[0] or dt.datetime.min))

    def _patient_key(self, item: FhirResource) -> str | None:
        key = self.pool.key_of(_subject(item.model), "Patient")
        if key is None and _subject(item.model) is None and len(self.patients) == 1:
            # A hand-made bundle for one patient often leaves out `subject`.
            self.report.note("resource without subject assigned to the only Patient")
            key = next(iter(self.patients))
        return key

    def _encounter_case(self, enc_key: str, patient_key: str | None, enc: FhirResource | None) -> _CaseParts:
        parts = self.cases.get(enc_key)
        if parts is None:
            if enc is not None:
                label = enc.label
            elif enc_key in self.patients:
                label = self.patients[enc_key].label
            else:
                label = re.split(r"[:/]", enc_key)[-1]
            # A hash of the FHIR id, never the id itself: ids are often MRNs or carry them.
            parts = self.cases[enc_key] = _CaseParts(case_id=pseudonym(label, "fhir"), patient_key=patient_key,
                                                     encounter=enc)
        return parts

    def case_for(self, item: FhirResource) -> _CaseParts | None:
        """The case a clinical resource belongs to, or None (reason counted)."""
        patient_key = self._patient_key(item)
        enc_key = self.pool.key_of(_encounter_ref(item), "Encounter")
        if enc_key in self.orphan_encounters:
            self.report.skip(f"{item.type} of an Encounter without a patient")
            return None
        if enc_key is not None:
            if enc_key not in self.cases:
                self.report.note("Encounter referenced but not in the input")
            parts = self._encounter_case(enc_key, patient_key, self.pool.resolve(_encounter_ref(item), "Encounter"))
            if parts.patient_key is None:
                parts.patient_key = patient_key
            return parts
        if patient_key is None:
            self.report.skip(f"{item.type} without a patient or encounter")
            return None
        spans = self.encounters_of.get(patient_key)
        if not spans:
            if patient_key not in self.patients and patient_key not in self.cases:
                self.report.note("Patient referenced but not in the input")
            return self._encounter_case(patient_key, patient_key, None)
        enc_key = self._by_time(spans, _resource_time(item))
        if enc_key is None:
            self.report.skip(f"{item.type} not linked to an encounter (no encounter covers its time)")
            return None
        return self.cases[enc_key]

    @staticmethod
    def _by_time(spans: list[tuple[dt.datetime | None, dt.datetime | None, str]], t: dt.datetime | None) -> str | None:
        if len(spans) == 1:
            return spans[0][2]
        if t is None:
            return None
        for i, (start, end, key) in enumerate(spans):
            if start is None:
                continue
            # An open encounter runs until the next one starts.
            stop = end or next((s for s, _, _ in spans[i + 1:] if s is not None), None)
            # Encounter periods are often recorded to the day: allow a result from that day.
            if start.date() <= t.date() and (stop is None or t <= stop or t.date() == stop.date()):
                return key
        return None


# ---------------------------------------------------------------- Observation

def _is_vital(loincs: list[str], categories: set[str]) -> bool:
    return "vital-signs" in categories or any(c in VITAL_LOINC or c in BP_PANELS or c == VITALS_PANEL for c in loincs)


def _quantity_unit(q: Any) -> str | None:
    if q is None:
        return None
    if getattr(q, "code", None) and (getattr(q, "system", None) in (UCUM, None)):
        return q.code
    return getattr(q, "unit", None) or getattr(q, "code", None)


def _observation_value(m: Any) -> tuple[Any, str | None, str | None]:
    """(raw value for make_lab_result, unit, skip reason when there is no usable value)."""
    q = getattr(m, "valueQuantity", None)
    if q is not None:
        value = _float(q.value)
        if value is None:
            return None, None, "lab result with no value"
        comparator = getattr(q, "comparator", None)
        return (f"{comparator}{value}" if comparator else value), _quantity_unit(q), None
    if getattr(m, "valueString", None) is not None:
        return m.valueString, None, None
    if getattr(m, "valueInteger", None) is not None:
        return int(m.valueInteger), None, None
    if getattr(m, "valueCodeableConcept", None) is not None:
        return None, None, "coded lab value (qualitative result)"
    for kind in ("valueBoolean", "valueRange", "valueRatio", "valueSampledData", "valueTime", "valueDateTime",
                 "valuePeriod"):
        if getattr(m, kind, None) is not None:
            return None, None, f"lab value of type {kind} not supported"
    if getattr(m, "dataAbsentReason", None) is not None:
        return None, None, "lab result with no value (dataAbsentReason)"
    return None, None, "lab result with no value"


def _reference_range(ranges: Any, value_unit: str | None, report: ImportReport) -> tuple[float | None, float | None]:
    for rr in ranges or []:
        low, high = getattr(rr, "low", None), getattr(rr, "high", None)
        if low is None and high is None:
            if getattr(rr, "text", None):
                return parse_range(rr.text)
            continue
        range_unit = normalise_unit(_quantity_unit(low) or _quantity_unit(high))
        if range_unit and value_unit and range_unit != normalise_unit(value_unit):
            report.note("reference range in another unit than the value dropped")
            return None, None
        return (_float(low.value) if low is not None else None), (_float(high.value) if high is not None else None)
    return None, None


def _interpretation(m: Any) -> str | None:
    for concept in getattr(m, "interpretation", None) or []:
        for c in _codings(concept):
            if c.code:
                return c.code
        if getattr(concept, "text", None):
            return concept.text
    return None


def _fluid(m: Any, pool: _Pool) -> str | None:
    specimen = pool.resolve(getattr(m, "specimen", None), "Specimen")
    return _display(getattr(specimen.model, "type", None)) if specimen is not None else None


def _observation_labs(item: FhirResource, pool: _Pool, report: ImportReport, cat: LabCatalogue) -> list[LabResult]:
    m = item.model
    time = _resource_time(item)
    parts: list[tuple[Any, Any]] = [(m.code, m)]
    has_value = any(getattr(m, a, None) is not None for a in ("valueQuantity", "valueString", "valueInteger",
                                                               "valueCodeableConcept", "valueBoolean", "valueRange",
                                                               "valueRatio"))
    if not has_value and getattr(m, "component", None):
        parts = [(c.code, c) for c in m.component]  # a multi-analyte result (rare for labs)
    elif not has_value and getattr(m, "hasMember", None):
        report.note("lab panel Observation (members are separate Observations)")
        return []
    out: list[LabResult] = []
    for code, holder in parts:
        raw, unit, reason = _observation_value(holder)
        if reason is not None:
            report.skip(reason)
            continue
        loincs = _codes(code, LOINC)
        loinc = next((c for c in loincs if cat.lookup(loinc=c) is not None), loincs[0] if loincs else None)
        name = _display(code) or loinc or ""
        ref_low, ref_high = _reference_range(getattr(holder, "referenceRange", None) or getattr(m, "referenceRange", None),
                                             unit, report)
        result = make_lab_result(name, raw, unit, loinc=loinc, ref_low=ref_low, ref_high=ref_high,
                                 flag=_interpretation(holder) or _interpretation(m), time=time,
                                 fluid=_fluid(m, pool), report=report, catalogue=cat, source=item.path,
                                 where="an Observation", skip_bad=pool.skip_bad)
        if result is not None:
            out.append(result)
    return out


def _vital_value(field_name: str, q: Any, report: ImportReport) -> float | None:
    """A vital sign in its canonical unit (/min, mm[Hg], Cel, %), or None (reason counted)."""
    value = _float(getattr(q, "value", None)) if q is not None else None
    if value is None:
        report.skip(f"{field_name} Observation without a numeric value")
        return None
    raw_unit = _quantity_unit(q)
    unit = normalise_unit(raw_unit)
    if field_name in ("heart_rate", "resp_rate"):
        if unit is not None and unit not in _RATE_UNITS and (raw_unit or "").strip().lower() not in _RATE_UNITS:
            unit = "?"
    elif field_name in ("sbp", "dbp"):
        if unit == "kPa" or (raw_unit or "").strip().lower() == "kpa":
            value, unit = value * 7.50062, None
            report.note(f"unit converted kPa -> mm[Hg] ({field_name})")
        elif unit not in (None, "mm[Hg]"):
            unit = "?"
    elif field_name == "temperature":
        if unit == "[degF]":
            value, unit = (value - 32.0) * 5.0 / 9.0, None
            report.note("unit converted [degF] -> Cel (temperature)")
        elif unit not in (None, "Cel"):
            unit = "?"
    elif field_name == "spo2":
        if unit in ("1", "{ratio}", "{INR}") and value <= 1.0:
            # normalise_unit reads '1' as INR; for a saturation it is a fraction.
            value, unit = value * 100.0, None
            report.note("unit converted fraction -> % (spo2)")
        elif unit not in (None, "%"):
            unit = "?"
    if unit == "?":
        report.skip(f"unknown unit for {field_name}")
        return None
    low, high = _VITAL_RANGE[field_name]
    if not low <= value <= high:
        report.skip(f"implausible {field_name} value")
        return None
    return round(value, 2)


def _observation_vitals(item: FhirResource, report: ImportReport) -> dict[str, float]:
    """{vital field: value} from one vital-signs Observation (components included)."""
    m = item.model
    loincs = _codes(m.code, LOINC)
    found: dict[str, float] = {}
    pairs: list[tuple[str, Any]] = []
    own = next((VITAL_LOINC[c] for c in loincs if c in VITAL_LOINC), None)
    if own is not None and getattr(m, "valueQuantity", None) is not None:
        pairs.append((own, m.valueQuantity))
    for comp in getattr(m, "component", None) or []:
        comp_field = next((VITAL_LOINC[c] for c in _codes(comp.code, LOINC) if c in VITAL_LOINC), None)
        if comp_field is not None:
            pairs.append((comp_field, getattr(comp, "valueQuantity", None)))
    if not pairs:
        if VITALS_PANEL in loincs or (getattr(m, "hasMember", None) and not getattr(m, "valueQuantity", None)):
            report.note("vital-signs panel Observation (members are separate Observations)")
        elif own is not None or any(c in BP_PANELS for c in loincs):
            report.skip("vital sign Observation without a numeric value")
        else:
            report.skip("vital sign other than heart rate, blood pressure, temperature, SpO2 or respiratory rate")
        return found
    for name, q in pairs:
        value = _vital_value(name, q, report)
        if value is not None:
            found[name] = value
    return found


def _add_vitals(parts: _CaseParts, time: dt.datetime | None, values: dict[str, float], report: ImportReport) -> None:
    """Merge readings into the set for their time; a second, different reading of a field at
    the same time opens another set, an identical one is a duplicate."""
    for name, value in values.items():
        target = None
        for vs in parts.vitals:
            if vs["time"] != time:
                continue
            if vs.get(name) == value:
                report.skip("duplicate vital sign")
                target = False
                break
            if name not in vs:
                target = vs
                break
        if target is False:
            continue
        if target is None:
            target = {"time": time}
            parts.vitals.append(target)
        target[name] = value


# ---------------------------------------------------------------- Condition

_SEMANTIC_TAG = re.compile(r"\s*\((disorder|finding|situation|morphologic abnormality|diagnosis)\)\s*$", re.I)


def _condition(item: FhirResource, parts: _CaseParts, panel: Panel, report: ImportReport) -> None:
    m = item.model
    verification = {c.code for c in _codings(getattr(m, "verificationStatus", None))}
    if verification & {"refuted", "entered-in-error"}:
        report.skip("Condition refuted or entered in error")
        return
    disease: Disease | None = None
    icd10 = icd9 = None
    for c in _codings(m.code):
        system = (c.system or "").lower()
        if not c.code:
            continue
        code = re.sub(r"[^A-Za-z0-9]", "", c.code).upper()
        if "icd-10" in system or "icd10" in system:
            icd10 = icd10 or code
            tagged = f"ICD10:{code}"
            hit = panel.match_icd(code, 10)
        elif "icd-9" in system or "icd9" in system:
            icd9 = icd9 or code
            tagged = f"ICD9:{code}"
            hit = panel.match_icd(code, 9)
        elif system == SNOMED:
            tagged, hit = f"SNOMED:{c.code}", None
        else:
            continue
        if tagged not in parts.source_codes:
            parts.source_codes.append(tagged)
        disease = disease or hit
    text = _display(m.code)
    if disease is None:
        for t in [text, *(c.display for c in _codings(m.code))]:
            if t:
                disease = panel.lookup(_SEMANTIC_TAG.sub("", t))
                if disease is not None:
                    report.note("Condition mapped to the panel by its display text")
                    break
    if disease is not None:
        parts.has_conditions = True
        if any(d.in_panel and d.name == disease.name for d in parts.diagnoses):
            return  # one entry per panel disease, as the MIMIC-IV importer does
        parts.diagnoses.append(Diagnosis(name=disease.name, icd10=icd10, icd9=icd9, in_panel=True))
        return
    name = _SEMANTIC_TAG.sub("", text) if text else (icd10 or icd9)
    if not name:
        report.skip("Condition without an ICD code or display text")
        return
    parts.has_conditions = True
    if not any(d.name == name for d in parts.diagnoses):
        parts.diagnoses.append(Diagnosis(name=name, icd10=icd10, icd9=icd9, in_panel=False))


# ---------------------------------------------------------------- attachments and reports

def _local_path(url: str | None, item: FhirResource, pool: _Pool, report: ImportReport) -> Path | None:
    """The local file an attachment URL or endpoint address of `item` names (relative to
    the FHIR file holding it, an absolute path or a file:// URL), else None (a remote URL).

    The file must lie inside the folder of that FHIR file (the input tree): a '../' path,
    an absolute path or a link leading elsewhere raises `InputError` naming the FHIR file
    (with `--skip-bad`: skipped and counted), so an input can never make medfuse copy a
    file the user did not give it (a note holding /etc/passwd).
    """
    if not url:
        return None
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            return None  # a file on another host: remote
        reference = Path(unquote(parsed.path))
    elif parsed.scheme and len(parsed.scheme) > 1:  # http, urn, ... (a one-letter scheme is a Windows drive)
        return None
    else:
        reference = Path(unquote(url))
    base = item.path.parent
    if path_inside(base, reference) is None:
        error = InputError(item.path, f"{item.type} names a file outside the folder of this FHIR file")
        if not pool.skip_bad:
            raise error
        report.skip_file(error, "file reference outside the input folder")
        return None
    return base / reference


def _attachment_kind(content_type: str | None, name: str) -> str | None:
    ct = (content_type or "").split(";")[0].strip().lower()
    lower = name.lower()
    if ct in ("image/png", "image/jpeg", "image/jpg", "image/tiff", "image/bmp") or lower.endswith(
            (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")):
        return "image"
    if ct in ("application/dicom", "application/dicom+json") or lower.endswith((".dcm", ".dicom")):
        return "dicom"
    if lower.endswith((".hea", ".dat")) or ct in ("application/x-wfdb", "application/vnd.physionet.wfdb"):
        return "wfdb"
    if ct.startswith("text/") or lower.endswith((".txt", ".md", ".html", ".htm")):
        return "text"
    return None


def _attachment_text(att: Any, item: FhirResource, pool: _Pool, report: ImportReport) -> str | None:
    """The text of a text attachment (inline data, a Binary in the input, or a local file)."""
    ct = (getattr(att, "contentType", None) or "text/plain").lower()
    data = getattr(att, "data", None)
    raw: bytes | None = None
    if data is not None:
        raw = data if isinstance(data, bytes) else base64.b64decode(data)
    elif getattr(att, "url", None):
        binary = pool.by_ref.get(_Pool.ref_key(att.url))
        if binary is not None and binary.type == "Binary" and binary.model.data is not None:
            raw = binary.model.data
            ct = (binary.model.contentType or ct).lower()
        else:
            path = _local_path(att.url, item, pool, report)
            if path is None:
                report.skip("remote attachment not fetched")
                return None
            if not path.is_file():
                report.skip("referenced file not found")
                return None
            raw = path.read_bytes()
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace")
    if "html" in ct or "xhtml" in ct:
        text = _strip_html(text)
    return text.strip() or None


def _note_type(concept: Any) -> str:
    for code in _codes(concept, LOINC):
        if code in _NOTE_TYPES:
            return _NOTE_TYPES[code]
    text = (_display(concept) or "").lower()
    if "discharge" in text:
        return "discharge"
    if "history" in text or "admission" in text:
        return "history"
    return "other"


def _is_imaging_report(m: Any) -> bool:
    if _category_codes(getattr(m, "category", None)) & _IMAGING_CATEGORIES:
        return True
    if set(_codes(m.code, LOINC)) & _IMAGING_REPORT_LOINC:
        return True
    return bool(getattr(m, "imagingStudy", None) or getattr(m, "media", None))


def _diagnostic_report(item: FhirResource, parts: _CaseParts, pool: _Pool, report: ImportReport) -> None:
    m = item.model
    texts: list[str] = []
    other_forms = 0
    if getattr(m, "conclusion", None):
        texts.append(m.conclusion.strip())
    for att in getattr(m, "presentedForm", None) or []:
        kind = _attachment_kind(att.contentType, att.url or "")
        if kind not in (None, "text") or (att.contentType and not att.contentType.lower().startswith("text/")):
            report.skip(f"non-text report form ({(att.contentType or 'unknown type').split(';')[0]})")
            other_forms += 1
            continue
        text = _attachment_text(att, item, pool, report)
        if text and text not in texts:
            texts.append(text)
    if not texts:
        if other_forms:
            return  # already counted by its form type
        if getattr(m, "result", None):
            report.note("DiagnosticReport without text (its results are Observations)")
        else:
            report.skip("DiagnosticReport without text")
        return
    text = "\n\n".join(texts)
    if _is_imaging_report(m):
        parts.reports.append(text)
    else:
        parts.notes.append(Note(text=text, type="report", lang=_lang(text), time=_resource_time(item)))


def _attachments(item: FhirResource, parts: _CaseParts, pool: _Pool, report: ImportReport) -> None:
    """DocumentReference / Media content: text becomes a note (or the imaging report), files
    are queued for loading when the case is built."""
    m = item.model
    if item.type == "DocumentReference":
        atts = [c.attachment for c in (getattr(m, "content", None) or []) if getattr(c, "attachment", None)]
        doc_type = getattr(m, "type", None)
    else:  # Media
        atts = [m.content] if getattr(m, "content", None) is not None else []
        doc_type = getattr(m, "type", None)
    if not atts:
        report.skip(f"{item.type} without an attachment")
        return
    for att in atts:
        name = att.url or ""
        kind = _attachment_kind(att.contentType, name)
        if kind == "text":
            text = _attachment_text(att, item, pool, report)
            if text is None:
                continue
            if set(_codes(doc_type, LOINC)) & _IMAGING_REPORT_LOINC:
                parts.reports.append(text)
            else:
                parts.notes.append(Note(text=text, type=_note_type(doc_type), lang=_lang(text),
                                        time=_resource_time(item)))
            continue
        if kind is None:
            report.skip(f"attachment type not imported ({(att.contentType or 'unknown').split(';')[0]})")
            continue
        if getattr(att, "data", None) is not None:
            data = att.data if isinstance(att.data, bytes) else base64.b64decode(att.data)
            parts.attachments.append((data, kind))
            continue
        path = _local_path(att.url, item, pool, report)
        if path is None:
            report.skip("remote attachment not fetched" if att.url else f"{item.type} attachment without data or url")
            continue
        parts.attachments.append((path, kind))


def _imaging_study(item: FhirResource, parts: _CaseParts, pool: _Pool, report: ImportReport) -> None:
    m = item.model
    endpoints = list(getattr(m, "endpoint", None) or [])
    for series in getattr(m, "series", None) or []:
        endpoints.extend(getattr(series, "endpoint", None) or [])
    paths: list[Path] = []
    for ref in endpoints:
        ep = pool.resolve(ref, "Endpoint")
        address = getattr(ep.model, "address", None) if ep is not None else None
        path = _local_path(address, ep, pool, report) if address else None
        if path is None:
            continue
        if path.is_dir():
            # A link inside the folder may still lead out of it: keep only files inside.
            paths.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                                and path_inside(ep.path.parent, p) is not None))
        else:
            paths.append(path)
    if not paths:
        report.skip("ImagingStudy without a local file endpoint")
        return
    for p in dict.fromkeys(paths):
        parts.attachments.append((p, "wfdb" if p.suffix.lower() in (".hea", ".dat") else "dicom"))


# ---------------------------------------------------------------- building the cases

def read_fhir(paths: Iterable[str | Path], report: ImportReport, panel: Panel | None = None,
              catalogue: LabCatalogue | None = None, skip_bad: bool = False) -> FhirInput:
    """Read, validate and group every resource of the FHIR files into cases. Files named by
    attachments are not opened yet. Raises `InputError` for an unreadable file or a file
    reference outside the input folder (with `skip_bad`: skipped and listed in `report`)."""
    panel = panel or load_panel()
    cat = catalogue or load_lab_catalogue()
    pool = _Pool(read_fhir_resources(paths, report, skip_bad), skip_bad=skip_bad)
    grouper = _Grouper(pool, report)
    for item in pool.resources:
        if item.type not in CLINICAL_TYPES:
            continue
        status = _status(item.model)
        if status in _DEAD_STATUS:
            report.skip(f"{item.type} with status {status}")
            continue
        parts = grouper.case_for(item)
        if parts is None:
            continue
        parts.files.add(item.path.name)
        if item.type == "Observation":
            m = item.model
            loincs = _codes(m.code, LOINC)
            categories = _category_codes(getattr(m, "category", None))
            if _is_vital(loincs, categories):
                _add_vitals(parts, _resource_time(item), _observation_vitals(item, report), report)
            elif ("laboratory" in categories or any(cat.lookup(loinc=c) for c in loincs)
                  or (not categories and cat.lookup(name=_display(m.code)) is not None)):
                parts.labs.extend(_observation_labs(item, pool, report, cat))
            else:
                kind = sorted(categories)[0] if categories else "no category"
                report.skip(f"Observation not a lab or vital sign ({kind})")
        elif item.type == "Condition":
            _condition(item, parts, panel, report)
        elif item.type == "DiagnosticReport":
            _diagnostic_report(item, parts, pool, report)
        elif item.type in ("DocumentReference", "Media"):
            _attachments(item, parts, pool, report)
        elif item.type == "ImagingStudy":
            _imaging_study(item, parts, pool, report)
    cases = []
    for parts in grouper.cases.values():
        if parts.is_empty():
            report.skip("Encounter with no clinical data")
            continue
        cases.append(parts)
    return FhirInput(cases=cases, patients=grouper.patients, report=report, identifiers=_identifiers(pool))


def _age(birth: Any, at: dt.datetime | None) -> float | None:
    born = _when(birth)
    if born is None or at is None or at < born:
        return None
    years = at.year - born.year - ((at.month, at.day) < (born.month, born.day))
    if years > 130:
        return None  # a placeholder birth date (1800-01-01), not an age
    if years >= 2:
        return float(years)
    return round((at - born).days / 365.2425, 2)  # infants: fractional years


_GENDER = {"male": "M", "female": "F", "other": "O", "unknown": "U"}


def _load_attachment(path: Path, kind: str, report: ImportReport) -> CXRImage | ECG | None:
    """Read one referenced file; a missing or unreadable file is skipped and counted."""
    if kind == "wfdb":
        record = path.with_suffix("")
        if not record.with_suffix(".hea").is_file():
            report.skip("referenced file not found")
            return None
    elif not path.is_file():
        report.skip("referenced file not found")
        return None
    try:
        if kind == "image":
            from medfuse.io.image import read_image

            return read_image(path, report)
        if kind == "wfdb":
            from medfuse.io.wfdb import read_wfdb

            return read_wfdb(path.with_suffix(""))[0]
        from medfuse.io.dicom import read_dicom_dataset, read_dicom_image

        ds = read_dicom_dataset(path, report=report)
        if "WaveformSequence" in ds:
            from medfuse.io.ecg_dicom import read_dicom_ecg

            return read_dicom_ecg(ds, report)
        return read_dicom_image(ds, report)
    except InputError as e:
        # Only the problem class is counted: the message could name a patient's file.
        report.skip(f"referenced {kind} file unreadable ({e.problem.split('(')[0].strip()[:60]})")
        return None
    except OSError as e:  # permission denied, a folder where a file was expected
        report.skip(f"referenced {kind} file unreadable ({e.__class__.__name__})")
        return None


def _load_inline(data: bytes, kind: str, report: ImportReport) -> CXRImage | ECG | None:
    """Inline (base64) image or DICOM data, read through a temporary file (the readers take paths)."""
    if kind == "wfdb":
        report.skip("inline WFDB data not supported (header and signal are separate files)")
        return None
    with tempfile.TemporaryDirectory(prefix="medfuse-fhir-") as tmp:
        path = Path(tmp) / ("inline.dcm" if kind == "dicom" else "inline.img")
        path.write_bytes(data)
        loaded = _load_attachment(path, kind, report)
    if isinstance(loaded, CXRImage):
        loaded.source = "inline attachment"
    return loaded


def _build(parts: _CaseParts, data: FhirInput) -> PatientCase:
    report = data.report
    patient = data.patients.get(parts.patient_key) if parts.patient_key else None
    enc = parts.encounter
    period = getattr(enc.model, "period", None) if enc is not None else None
    labs = dedupe_labs(parts.labs, report)
    times = [t for t in [*(r.time for r in labs), *(v["time"] for v in parts.vitals)] if t is not None]
    case_time = (_when(period.start) if period is not None and period.start is not None else None) or (
        min(times) if times else None)
    demographics = Demographics()
    if patient is not None:
        gender = getattr(patient.model, "gender", None)
        demographics = Demographics(age=_age(getattr(patient.model, "birthDate", None), case_time),
                                    sex=_GENDER.get(str(gender)) if gender else None)
    cxr: list[CXRImage] = []
    ecg: ECG | None = None
    seen_files: set[Path] = set()
    for source, kind in parts.attachments:
        if isinstance(source, bytes):
            loaded = _load_inline(source, kind, report)
        else:
            resolved = source.resolve()
            if resolved in seen_files:
                report.skip("file referenced twice in one case")
                continue
            seen_files.add(resolved)
            loaded = _load_attachment(source, kind, report)
        if loaded is not None and loaded.source:
            loaded.source = scrubbed_name(loaded.source, data.identifiers)
        if isinstance(loaded, CXRImage):
            cxr.append(loaded)
        elif isinstance(loaded, ECG):
            if ecg is not None:
                report.skip("second ECG in one case")
            else:
                ecg = loaded
    vitals: list[VitalSigns] = []
    for values in sorted(parts.vitals, key=lambda v: (v["time"] is None, v["time"] or dt.datetime.min)):
        vitals.append(VitalSigns(**values))
    labels = None
    if parts.diagnoses or parts.reports or parts.has_conditions:
        labels = Labels(diagnoses=parts.diagnoses, report="\n\n".join(parts.reports) or None,
                        source_codes=parts.source_codes)
    return PatientCase(
        case_id=parts.case_id,
        patient_id=_patient_pseudonym(patient, parts.patient_key),
        time=case_time,
        demographics=demographics,
        cxr=cxr,
        ecg=ecg,
        labs=sorted(labs, key=lambda r: (r.time is None, r.time or dt.datetime.min)),
        vitals=vitals,
        notes=parts.notes,
        labels=labels,
        provenance={"importer": "fhir", "fhir_version": "R4",
                    "source_files": sorted(scrubbed_name(name, data.identifiers) for name in parts.files)},
    )


def _patient_pseudonym(patient: FhirResource | None, patient_key: str | None) -> str | None:
    label = patient.label if patient is not None else (patient_key or "").split("/")[-1]
    return pseudonym(label, "pt") if label else None


def _identifiers(pool: _Pool) -> list[str]:
    """The raw ids and names of the input's patients and encounters: none of them may end
    up in a case (file names of exports often hold them)."""
    out: list[str] = []
    for r in pool.resources:
        if r.type not in ("Patient", "Encounter"):
            continue
        out.append(r.label)
        for ident in getattr(r.model, "identifier", None) or []:
            out.append(str(getattr(ident, "value", "") or ""))
        for name in getattr(r.model, "name", None) or [] if r.type == "Patient" else []:
            out.extend([str(getattr(name, "family", "") or ""), *(str(g) for g in getattr(name, "given", None) or [])])
    return [x for x in out if x]


def import_fhir(paths: Iterable[str | Path], report: ImportReport, panel: Panel | None = None,
                catalogue: LabCatalogue | None = None, data: FhirInput | None = None,
                skip_bad: bool = False) -> Iterator[PatientCase]:
    """One `PatientCase` per Encounter (or per Patient without encounters) in the FHIR
    Bundle / NDJSON files. All files are read and checked before the first case is
    yielded; pass `data` from `read_fhir` to avoid reading them twice."""
    if data is None:
        data = read_fhir(paths, report, panel, catalogue, skip_bad=skip_bad)
    for parts in data.cases:
        yield _build(parts, data)


__all__ = ["FhirInput", "FhirResource", "find_fhir_files", "import_fhir", "parse_fhir_file", "read_fhir",
           "read_fhir_resources"]
