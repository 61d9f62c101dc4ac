"""A stored result as a FHIR R4 DiagnosticReport and as a DICOM Comprehensive SR.

FHIR: built from `fhir.resources.R4B` models (the R4-compatible models the importer uses),
so the output is validated on construction. One DiagnosticReport (status `preliminary`:
machine output awaiting a clinician) with contained Observations: one per assessed
disease (ICD-10 coding, calibrated probability, present/absent interpretation) and one
per image finding (its 0-999 box). `conclusion` is the checked report, `conclusionCode`
the ICD-10 codes of the diseases called present. No subject reference and no patient
identifier: the report is identified by the service's opaque case ref.

DICOM: a Comprehensive SR with a TID 1500 Measurement Report built by highdicom. Each
disease is a measurement group with a qualitative evaluation (ICD-10 coded finding,
present or absent) and its probability; each image finding is a planar-ROI group whose
region (a closed POLYLINE rectangle in pixel coordinates) references the source image's
SOP instance when the radiograph came from a DICOM file, and the SR joins that image's
patient and study. When no source DICOM exists, findings are coded without a region (a
box needs an image to point into) and the SR starts its own study.
"""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import numpy as np

from medfuse.record.boxes import grid_to_pixel

ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10"
CASE_REF_SYSTEM = "urn:medfuse:serve:case"
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def diagnostic_report(ref: str, result: dict[str, Any], issued: dt.datetime) -> dict[str, Any]:
    """The FHIR R4 DiagnosticReport (a validated JSON object) of a stored result."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from fhir.resources.R4B.observation import Observation

    contained: list[Observation] = []
    for i, d in enumerate(result["diagnoses"]):
        coding = [{"system": ICD10_SYSTEM, "code": d["icd10"], "display": d["name"]}] if d.get("icd10") else []
        contained.append(Observation(
            id=f"dx{i}", status="preliminary",
            code={"coding": coding, "text": d["name"]} if coding else {"text": d["name"]},
            valueQuantity={"value": d["probability"], "unit": "probability", "system": "http://unitsofmeasure.org",
                           "code": "1"},
            interpretation=[{"coding": [{"system": _INTERPRETATION, "code": "POS" if d["present"] else "NEG"}]}],
        ))
    for i, f in enumerate(result["findings"]):
        contained.append(Observation(
            id=f"finding{i}", status="preliminary", code={"text": f["label"]},
            valueString=f"box {f['box']} on the 0-999 grid of the radiograph (x1, y1, x2, y2)",
        ))
    present = [d for d in result["diagnoses"] if d["present"] and d.get("icd10")]
    report = DiagnosticReport(
        id=ref,
        identifier=[{"system": CASE_REF_SYSTEM, "value": ref}],
        status="preliminary",
        code={"text": "medfuse multimodal diagnosis"},
        issued=issued.astimezone(dt.UTC).isoformat(),
        performer=[{"display": f"{result['model']['name']} {result['model']['version']} (research software)"}],
        contained=contained,
        result=[{"reference": f"#{o.id}"} for o in contained],
        conclusion=result["report"],
        conclusionCode=[{"coding": [{"system": ICD10_SYSTEM, "code": d["icd10"], "display": d["name"]}]}
                        for d in present] or None,
    )
    return report.model_dump(mode="json", exclude_none=True)


def _code(value: str, scheme: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning[:64])


def structured_report(ref: str, result: dict[str, Any], dicom_headers: dict[int, bytes], issued: dt.datetime) -> bytes:
    """The DICOM Comprehensive SR (a Part 10 file's bytes) of a stored result.

    `dicom_headers` maps a radiograph's index to its source DICOM header, when it had one.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    headers = {i: pydicom.dcmread(io.BytesIO(b)) for i, b in dicom_headers.items()}
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=f"{result['model']['name']} {result['model']['version']}"[:64]))
    context = hd.sr.ObservationContext(observer_device_context=device)
    algorithm = hd.sr.AlgorithmIdentification(name=str(result["model"]["name"])[:64],
                                              version=str(result["model"]["version"])[:64])
    probability = _code("probability", "99MEDFUSE", "Calibrated probability")
    groups: list[Any] = []
    for i, d in enumerate(result["diagnoses"]):
        disease = (_code(d["icd10"], "I10", d["name"]) if d.get("icd10")
                   else _code(f"disease-{i}", "99MEDFUSE", d["name"]))
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"diagnosis {i}: {d['name']}"[:64]),
            finding_type=disease,
            algorithm_id=algorithm,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                name=codes.DCM.Finding, value=codes.SCT.Present if d["present"] else codes.SCT.Absent)],
            measurements=[hd.sr.Measurement(name=probability, value=float(d["probability"]),
                                            unit=codes.UCUM.NoUnits, algorithm_id=algorithm)],
        ))
    source_index = next(iter(sorted(headers)), None)
    for i, f in enumerate(result["findings"]):
        label = _code(f"finding-{f['label']}"[:16], "99MEDFUSE", f["label"])
        tracking = hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"finding {i}: {f['label']}"[:64])
        if source_index is not None:
            ds = headers[source_index]
            x1, y1, x2, y2 = grid_to_pixel(f["box"], int(ds.Columns), int(ds.Rows))
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float32),
                source_image=hd.sr.SourceImageForRegion(referenced_sop_class_uid=ds.SOPClassUID,
                                                        referenced_sop_instance_uid=ds.SOPInstanceUID))
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, referenced_region=region, finding_type=label, algorithm_id=algorithm))
        else:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, finding_type=label, algorithm_id=algorithm))
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=_code("medfuse-dx", "99MEDFUSE", "Multimodal diagnosis"),
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    if headers:
        evidence = [headers[k] for k in sorted(headers)]
    else:
        evidence = [_standalone_study(issued)]
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence, content=report[0], series_instance_uid=generate_uid(), series_number=900,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="medfuse (research software)",
        is_complete=True, is_final=False, record_evidence=bool(headers),
        series_description="medfuse diagnosis (preliminary, not reviewed)",
    )
    if not headers:
        # The placeholder study context references no instance; drop the evidence list
        # highdicom derived from it.
        for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
            if keyword in sr:
                delattr(sr, keyword)
    sr.ContentDate = issued.strftime("%Y%m%d")
    sr.ContentTime = issued.strftime("%H%M%S")
    out = io.BytesIO()
    sr.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _standalone_study(issued: dt.datetime):
    """Patient and study context for an SR whose images were not DICOM: a new study, with
    the patient attributes present but empty (DICOM type 2), never invented."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = generate_uid()
    ds.StudyID = ""
    ds.StudyDate = issued.strftime("%Y%m%d")
    ds.StudyTime = issued.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    # highdicom reads these from every evidence item; with record_evidence=False they are
    # not written into the SR, so no reference to a non-existent instance is made.
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    return ds
