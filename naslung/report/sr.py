"""The DICOM Structured Report of one study: a TID 1500 Measurement Report in a Comprehensive 3D SR.

One finding per ok row: a TID 1411 Volumetric ROI Measurements group whose region is a 3-D POINT (the
row's world point (x, y, z) in mm, DICOM patient coordinates, LPS -- LUNA16/SimpleITK world points are
LPS too; stored as 32-bit floats, DICOM's Graphic Data being FL) in the series' frame of reference,
referring to the source series, with

* tracking identifier ``nodule <id>`` (or ``row <n>``) and a tracking UID derived from the series uid
  and the row;
* finding type SCT 27925004 "Nodule", finding site SCT 39607008 "Lung";
* algorithm identification (TID 4019): the row's ``model_name`` (else the model name given) and
  ``model_version``;
* measurements (TID 300, all unit UCUM ``1``, "no units", values in [0, 1] unless stated):
  DCM 111047 "Probability of cancer" = the calibrated P(malignant) (``probability``);
  99NASLUNG NASL002 "Uncalibrated probability of malignancy" = the members' mean (``raw_probability``);
  99NASLUNG NASL003 "Spread of probability of malignancy" = the members' standard deviation
  (``uncertainty``); 99NASLUNG NASL004 "Ensemble members voting malignant" = ``votes``, UCUM ``{votes}``;
* qualitative evaluations: 99NASLUNG NASL001 "Predicted malignancy class" = SCT 21594007 "Malignant" or
  SCT 30807003 "Benign" (the majority vote, ``label``); 99NASLUNG NASL005 "Refer for human review" =
  SCT 373066001 "Yes" / 373067005 "No" (``refer``, when the model gives it).

DICOM (via pydicom's code dictionary) has no concept for "predicted malignancy class", the members'
raw mean / spread or the vote count, so those names are local codes of the private coding scheme
``99NASLUNG`` (:data:`LOCAL_CODES`), declared in the SR's Coding Scheme Identification Sequence.

The observer is a device (TID 1004: the model name). The SR is PRELIMINARY and UNVERIFIED (no person
has reviewed it), COMPLETE only when every row of the study is ok (error rows are in the PDF only).
Evidence: for DICOM input every instance of the study's source series (Current Requested Procedure
Evidence Sequence); for MetaImage input there are no instances to name, so the SR has no evidence
sequence, carries the generated Study Instance UID (:mod:`naslung.report.studies`) and refers to the
series by UID only. A new SR gets new Series and SOP Instance UIDs each time it is built.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, generate_uid

from naslung.report.rows import ReportRow
from naslung.report.studies import SourceSeries, Study, derived_uid

LOCAL_SCHEME = "99NASLUNG"
"""Private coding scheme of the concepts DICOM does not define (see the module docstring)."""

LOCAL_CODES = {
    "label": hd.sr.CodedConcept("NASL001", LOCAL_SCHEME, "Predicted malignancy class"),
    "raw_probability": hd.sr.CodedConcept("NASL002", LOCAL_SCHEME, "Uncalibrated probability of malignancy"),
    "uncertainty": hd.sr.CodedConcept("NASL003", LOCAL_SCHEME, "Spread of probability of malignancy"),
    "votes": hd.sr.CodedConcept("NASL004", LOCAL_SCHEME, "Ensemble members voting malignant"),
    "refer": hd.sr.CodedConcept("NASL005", LOCAL_SCHEME, "Refer for human review"),
}
PROBABILITY = hd.sr.CodedConcept.from_code(codes.DCM.ProbabilityOfCancer)
"""DCM 111047 "Probability of cancer": the calibrated P(malignant), unit UCUM "1"."""
NO_UNITS = hd.sr.CodedConcept.from_code(codes.UCUM.NoUnits)
VOTES_UNIT = hd.sr.CodedConcept("{votes}", "UCUM", "votes")
MALIGNANT = hd.sr.CodedConcept.from_code(codes.SCT.Malignant)
BENIGN = hd.sr.CodedConcept.from_code(codes.SCT.Benign)
SR_SERIES_NUMBER = 9501
SR_SERIES_DESCRIPTION = "NASLung nodule malignancy report"


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _finding(
    row: ReportRow, series: SourceSeries, model_name: str
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | None:
    point, prob = row.point_xyz_mm, row.p_malignant
    if point is None or prob is None:
        return None
    name = row.model_name or model_name
    algorithm = hd.sr.AlgorithmIdentification(name=name, version=row.model_version or "unknown")
    measurements = [hd.sr.Measurement(name=PROBABILITY, value=prob, unit=NO_UNITS)]
    for key in ("raw_probability", "uncertainty", "votes"):
        value = _number(getattr(row, key))
        if value is not None:
            unit = VOTES_UNIT if key == "votes" else NO_UNITS
            measurements.append(hd.sr.Measurement(name=LOCAL_CODES[key], value=value, unit=unit))
    evaluations = []
    if row.label in ("0", "1"):
        evaluations.append(hd.sr.QualitativeEvaluation(LOCAL_CODES["label"], MALIGNANT if row.label == "1" else BENIGN))
    if row.refer in ("0", "1"):
        answer = codes.SCT.Yes if row.refer == "1" else codes.SCT.No
        evaluations.append(hd.sr.QualitativeEvaluation(LOCAL_CODES["refer"], answer))
    surface = hd.sr.VolumeSurface(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.array([point], dtype=float),
        frame_of_reference_uid=series.frame_of_reference_uid,
        source_series=hd.sr.SourceSeriesForSegmentation(series.series_instance_uid),
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(f"finding row {row.row} {row.nodule_id}", series.seriesuid), identifier=row.name
        ),
        referenced_volume_surface=surface,
        finding_type=codes.SCT.Nodule,
        finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


def _pseudo_source(series: SourceSeries) -> Dataset:
    """The study identity of a MetaImage series as a dataset (highdicom takes patient and study from its
    first evidence item); its SOP instance UID is a placeholder that is not kept in the SR."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = derived_uid("placeholder instance", series.seriesuid)
    ds.StudyInstanceUID = series.study_instance_uid
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.Modality = "CT"
    for key in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
        setattr(ds, key, "")
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    return ds


def build_sr(study: Study, model_name: str, manufacturer: str = "NASLung") -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR of ``study`` (one finding per ok row, see the module docstring).

    ValueError when the study has no known source series or no ok row with a finite point and
    probability (there is nothing to report in DICOM; the PDF still lists the rows)."""
    sources = {s.seriesuid: s for s in study.known_series}
    if not sources:
        raise ValueError(f"study {study.key}: no scan found for its series ({study.series[0].problem})")
    findings = []
    for row in study.rows:
        if row.ok and row.seriesuid in sources:
            finding = _finding(row, sources[row.seriesuid], model_name)
            if finding is not None:
                findings.append(finding)
    if not findings:
        raise ValueError(f"study {study.key}: no ok row to report")
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid("device", model_name), name=model_name, manufacturer_name=manufacturer, model_name=model_name
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=findings,
    )
    derived = study.kind == "file"
    evidence: Sequence[Dataset] = (
        [_pseudo_source(s) for s in sources.values()]
        if derived
        else [ds for s in sources.values() for ds in s.instances]
    )
    n_ok = sum(1 for row in study.rows if row.ok)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=n_ok == len(study.rows) == len(findings),
        is_final=False,
        is_verified=False,
        series_description=SR_SERIES_DESCRIPTION,
    )
    if derived:
        # no DICOM instances exist for a MetaImage: name none (the placeholder is not evidence)
        for key in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
            if key in sr:
                delattr(sr, key)
    else:
        first = next(iter(sources.values()))
        if first.patient.get("StudyDescription"):
            sr.StudyDescription = first.patient["StudyDescription"]
    scheme = Dataset()
    scheme.CodingSchemeDesignator = LOCAL_SCHEME
    scheme.CodingSchemeName = "NASLung local concepts"
    scheme.CodingSchemeResponsibleOrganization = "NASLung project (naslung.report.sr.LOCAL_CODES)"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def write_sr(path: Path, sr: Dataset) -> Path:
    """Save ``sr`` as a DICOM file at ``path`` (written beside it, then renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sr.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    return path
