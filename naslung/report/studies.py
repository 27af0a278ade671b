"""Which study each row belongs to, and what the report knows of its scan (the source series).

A series uid of the results CSV is looked up inside the scan root only, by the scorer's own index
(:func:`naslung.scoring_csv.scans.index_scans`, which also refuses unsafe uids and scans reaching out of
the root): a folder is a DICOM series folder, a file a MetaImage (``.mhd``) or NIfTI scan.

* DICOM input: the identity comes from the instances' headers (read with pydicom, no pixel data):
  StudyInstanceUID, SeriesInstanceUID, FrameOfReferenceUID, the patient and study attributes, and one
  evidence entry (SOP class / instance UID) per instance. Rows whose series share a StudyInstanceUID
  make one study (one report).
* MetaImage input (``.mhd``; NIfTI alike, kind "file"): there are no DICOM headers, so there is no
  study, no frame of reference and no patient. One series makes one study; its Study Instance UID and
  Frame of Reference UID are *generated*, deterministically from the series uid (:func:`derived_uid`, a
  ``2.25.<n>`` UID of a name-based UUID, so re-running gives the same UIDs), and are marked as derived.
  The series is referred to by the uid itself when that is a valid DICOM UID (LUNA16 names its scans by
  the original LIDC SeriesInstanceUID), else by a UID derived from it. The patient attributes are empty
  (unknown). World points of a MetaImage are read by SimpleITK in the same LPS patient coordinates as
  DICOM.
* A series that cannot be found (unknown, unsafe uid, unusable scan, unreadable headers) makes a study
  of its own with no source: its rows (error rows) still appear in the PDF table.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from naslung.report.rows import ReportRow
from naslung.scoring_csv.scans import index_scans, unsafe_uid_reason

PATIENT_STUDY_ATTRIBUTES = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyDescription",
)
"""Patient and study attributes copied from the source instances into the report ("" when absent)."""

_HEADER_TAGS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Modality",
    *PATIENT_STUDY_ATTRIBUTES,
)


def derived_uid(kind: str, seriesuid: str) -> str:
    """A UID generated deterministically from ``seriesuid`` for ``kind`` ("study", "frame-of-reference",
    "series", ...): ``2.25.<n>``, n the integer of the name-based (SHA-1, version 5) UUID of
    ``naslung.report/<kind>/<seriesuid>`` in the URL namespace (a UUID-derived UID, DICOM PS3.5 B.2)."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, f'naslung.report/{kind}/{seriesuid}').int}"


@dataclass(frozen=True)
class SourceSeries:
    """What a report knows of one scanned series."""

    seriesuid: str
    """The series uid as written in the CSV."""
    kind: str
    """"dicom", "file" (MetaImage / NIfTI: no DICOM headers) or "missing" (no scan found: no UIDs below are
    meaningful)."""
    series_instance_uid: str = ""
    """The SeriesInstanceUID the report refers to (DICOM: the header's; MetaImage: see the module)."""
    study_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    """The frame of reference of the world points (x, y, z) mm, LPS."""
    derived: bool = False
    """True when the study and frame-of-reference UIDs were generated (MetaImage input)."""
    instances: tuple[Dataset, ...] = ()
    """DICOM: one small header per instance (UIDs, patient and study attributes) -- the SR's evidence."""
    patient: dict[str, str] = field(default_factory=dict)
    """PATIENT_STUDY_ATTRIBUTES -> text ("" when unknown)."""
    problem: str = ""
    """Why the series has no source (kind "missing")."""
    path: Path | None = None
    """The scan file or the DICOM series folder."""


@dataclass
class Study:
    """The rows of one report: rows of series sharing a StudyInstanceUID (DICOM), or of one series."""

    key: str
    """StudyInstanceUID (DICOM), else the series uid."""
    folder_name: str
    """Name of the study's folder below the reports folder (only ``[A-Za-z0-9._-]``)."""
    series: list[SourceSeries]
    rows: list[ReportRow]

    @property
    def kind(self) -> str:
        """ "dicom", "file" or "missing" (of the study's first series)."""
        return self.series[0].kind

    @property
    def known_series(self) -> list[SourceSeries]:
        return [s for s in self.series if s.kind != "missing"]


class SeriesLookup:
    """Series uid -> :class:`SourceSeries`, below one scan root (indexed once, each series described once)."""

    def __init__(self, scans_dir: Path) -> None:
        self.root = Path(scans_dir)
        self._index: dict[str, Path] = dict(index_scans(self.root)) if self.root.is_dir() else {}
        self._seen: dict[str, SourceSeries] = {}

    def get(self, seriesuid: str) -> SourceSeries:
        if seriesuid not in self._seen:
            self._seen[seriesuid] = self._describe(seriesuid)
        return self._seen[seriesuid]

    def _describe(self, uid: str) -> SourceSeries:
        if not uid:
            return SourceSeries(uid, "missing", problem="the row has no seriesuid")
        reason = unsafe_uid_reason(uid)
        if reason is not None:
            return SourceSeries(uid, "missing", problem=reason)
        path = self._index.get(uid)
        if path is None:
            return SourceSeries(uid, "missing", problem=f"no usable scan of series {uid!r} under {self.root}")
        if not Path(path).is_dir():
            return metaimage_series(uid, Path(path))
        try:
            return dicom_series_info(Path(path), uid)
        except (OSError, ValueError, InvalidDicomError) as exc:
            return SourceSeries(uid, "missing", problem=f"{path}: unusable DICOM headers ({exc})", path=Path(path))


def metaimage_series(seriesuid: str, path: Path | None = None) -> SourceSeries:
    """The :class:`SourceSeries` of a scan file without DICOM headers (MetaImage, NIfTI): generated study
    and frame-of-reference UIDs (see the module docstring), the uid itself as SeriesInstanceUID when it is a
    valid DICOM UID."""
    series_uid = seriesuid if UID(seriesuid).is_valid else derived_uid("series", seriesuid)
    return SourceSeries(
        seriesuid,
        "file",
        series_instance_uid=series_uid,
        study_instance_uid=derived_uid("study", seriesuid),
        frame_of_reference_uid=derived_uid("frame-of-reference", seriesuid),
        derived=True,
        patient=dict.fromkeys(PATIENT_STUDY_ATTRIBUTES, ""),
        path=path,
    )


def dicom_series_info(folder: Path, seriesuid: str) -> SourceSeries:
    """The :class:`SourceSeries` of DICOM series ``seriesuid`` in ``folder``: the headers (no pixel data)
    of the folder's files of that series (a folder may hold several series; other files are skipped).
    ValueError when there are none, or they lack the UIDs a report needs."""
    headers: list[Dataset] = []
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file() or path.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS), force=path.suffix.lower() == ".dcm"
            )
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if str(ds.get("SeriesInstanceUID", "")) == seriesuid:
            headers.append(ds)
    if not headers:
        raise ValueError(f"no DICOM file of series {seriesuid}")
    first = headers[0]
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID"):
        if not str(first.get(key, "")):
            raise ValueError(f"series {seriesuid} has no {key}")
    patient = {k: str(first.get(k, "") or "") for k in PATIENT_STUDY_ATTRIBUTES}
    instances = tuple(_evidence(h, first, patient) for h in headers if str(h.get("SOPInstanceUID", "")))
    return SourceSeries(
        seriesuid,
        "dicom",
        series_instance_uid=str(first.SeriesInstanceUID),
        study_instance_uid=str(first.StudyInstanceUID),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        instances=instances,
        patient=patient,
        path=Path(folder),
    )


def _evidence(header: Dataset, first: Dataset, patient: dict[str, str]) -> Dataset:
    """A small dataset naming one source instance, with the series' patient and study attributes."""
    ds = Dataset()
    if "SpecificCharacterSet" in first:
        ds.SpecificCharacterSet = first.SpecificCharacterSet
    ds.SOPClassUID = header.SOPClassUID
    ds.SOPInstanceUID = header.SOPInstanceUID
    ds.StudyInstanceUID = first.StudyInstanceUID
    ds.SeriesInstanceUID = first.SeriesInstanceUID
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.Modality = str(first.get("Modality", "") or "CT")
    for key, value in patient.items():
        setattr(ds, key, value)
    return ds


def safe_name(text: str, fallback: str) -> str:
    """``text`` reduced to ``[A-Za-z0-9._-]`` (at most 100 characters, no leading dot), else ``fallback``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:100] or fallback


def group_studies(rows: Sequence[ReportRow], lookup: SeriesLookup) -> list[Study]:
    """The studies of ``rows``, in order of first appearance, each with its rows in input order.

    DICOM series sharing a StudyInstanceUID form one study (key: that UID); any other series is a
    study of its own (key: the series uid). Folder names are unique (``-2``, ``-3`` ... on a clash)."""
    studies: dict[tuple[str, str], Study] = {}
    used: set[str] = set()
    for row in rows:
        series = lookup.get(row.seriesuid)
        key = ("dicom", series.study_instance_uid) if series.kind == "dicom" else ("series", row.seriesuid)
        study = studies.get(key)
        if study is None:
            base = safe_name(key[1], "no-seriesuid")
            name, n = base, 1
            while name.lower() in used:
                n += 1
                name = f"{base}-{n}"
            used.add(name.lower())
            study = studies[key] = Study(key[1], name, [], [])
        if all(s.seriesuid != series.seriesuid for s in study.series):
            study.series.append(series)
        study.rows.append(row)
    return list(studies.values())
