"""DICOM CT series from their headers (SimpleITK / GDCM, no pixel data): one slice's header, the checks a
series must pass before it is scored, and reading a checked series as one 3-D image.

A series is the slices of one folder that share a SeriesInstanceUID (several series may share a folder).
Checks, in this order, each failure a message naming what was found (:func:`check_series`):

* every slice is Modality ``CT`` (0008,0060) and single-frame;
* at least 2 slices, each with ImagePositionPatient (0020,0032) and ImageOrientationPatient (0020,0037),
  the same orientation (within :data:`ORIENTATION_TOL` per direction cosine), Rows / Columns and
  PixelSpacing;
* axial: the slice normal (row x column cosines) within :data:`AXIAL_TOL_DEG` of the patient z axis;
* the slice positions, sorted along the normal, step evenly: every step within :data:`SPACING_TOL`
  (relative) of the median step; a step of k medians is reported as k - 1 missing slices, a zero step
  as a duplicate position, any other deviation as uneven spacing; the steps follow the normal (no
  gantry-tilt shear, same tolerance);
* InstanceNumber (0020,0013), where every slice has a distinct one, runs without gaps (catches a missing
  first or last slice).

World coordinates are DICOM patient coordinates (LPS, mm), the same frame as LUNA16's ``.mhd`` files, so a
series and its MetaImage copy give the same world (x, y, z) for every voxel.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from naslung.data.scan_errors import ScanError, first_error_line

AXIAL_TOL_DEG = 1.0
"""Largest angle (degrees) between a slice normal and the patient z axis for a series to count as axial."""
ORIENTATION_TOL = 1e-3
"""Largest difference of one direction cosine between the slices of one series."""
SPACING_TOL = 0.01
"""Largest relative deviation of one slice step from the series' median step (1 %), also the largest
in-plane drift of a step relative to its length."""

_TAGS = {
    "uid": "0020|000e",
    "modality": "0008|0060",
    "position": "0020|0032",
    "orientation": "0020|0037",
    "instance": "0020|0013",
    "rows": "0028|0010",
    "columns": "0028|0011",
    "pixel_spacing": "0028|0030",
}


@dataclass(frozen=True)
class SliceHeader:
    """The header facts of one DICOM file that the series checks need (``position`` (x, y, z) mm)."""

    path: Path
    seriesuid: str
    modality: str
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    instance: int | None
    shape: tuple[str, str, str]
    """Rows, Columns, PixelSpacing as written."""
    frames: int


@dataclass(frozen=True)
class DicomSeries:
    """One checked series: ``files`` sorted along the slice normal; ``problem`` None when it may be read."""

    seriesuid: str
    folder: Path
    files: tuple[Path, ...]
    problem: str | None = None


def _numbers(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.strip().split("\\") if v.strip())
    except ValueError:
        return None


def read_slice_header(path: Path) -> SliceHeader:
    """Header of one DICOM file (no pixel data); :class:`ScanError` naming the file when it cannot be read
    or has no SeriesInstanceUID."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        reason = re.sub(r"\(0x[0-9a-fA-F]+\)", "", first_error_line(e))  # drop ITK's object address
        raise ScanError(f"{path}: unreadable DICOM file ({reason})") from None

    def tag(name: str) -> str | None:
        key = _TAGS[name]
        return reader.GetMetaData(key).strip().strip("\x00").strip() if reader.HasMetaDataKey(key) else None

    uid = tag("uid")
    if not uid:
        raise ScanError(f"{path}: DICOM file without a SeriesInstanceUID (0020,000e)")
    instance = tag("instance")
    try:
        number = int(float(instance)) if instance else None
    except ValueError:
        number = None
    size = reader.GetSize()
    shape = (tag("rows") or "", tag("columns") or "", tag("pixel_spacing") or "")
    return SliceHeader(
        Path(path),
        uid,
        (tag("modality") or "").upper(),
        _numbers(tag("position")),
        _numbers(tag("orientation")),
        number,
        shape,
        int(size[2]) if len(size) > 2 else 1,
    )


def check_series(folder: Path, slices: Sequence[SliceHeader], folder_problem: str | None = None) -> DicomSeries:
    """Check the slices of one series (see the module docstring); ``folder_problem`` (e.g. unreadable
    files beside them) makes the series unusable too."""
    uid = slices[0].seriesuid
    files = tuple(s.path for s in slices)
    problem, order = _problem(slices)
    if folder_problem is not None:  # the cause first, then what it did to the series
        problem = folder_problem if problem is None else f"{folder_problem}; {problem}"
    if order is not None:
        files = tuple(slices[i].path for i in order)
    return DicomSeries(uid, Path(folder), files, problem)


def _problem(slices: Sequence[SliceHeader]) -> tuple[str | None, list[int] | None]:
    """(what is wrong or None, slice order along the normal or None)."""
    n = len(slices)
    modalities = sorted({s.modality for s in slices})
    if modalities != ["CT"]:
        return f"Modality {'/'.join(m or '(none)' for m in modalities)}, expected CT", None
    multi = [s for s in slices if s.frames > 1]
    if multi:
        return f"multi-frame DICOM ({multi[0].path.name} holds {multi[0].frames} frames) is not supported", None
    if n < 2:
        return f"only {n} slice ({slices[0].path.name}); a CT volume needs at least 2", None
    for s in slices:
        if s.position is None or len(s.position) != 3:
            return f"{s.path.name} has no usable ImagePositionPatient (0020,0032)", None
        if s.orientation is None or len(s.orientation) != 6:
            return f"{s.path.name} has no usable ImageOrientationPatient (0020,0037)", None
    iop = np.array([s.orientation for s in slices], dtype=float)
    if np.abs(iop - iop[0]).max() > ORIENTATION_TOL:
        return "slices differ in ImageOrientationPatient", None
    if len({s.shape for s in slices}) > 1:
        return "slices differ in Rows / Columns / PixelSpacing", None
    row, col = iop[0, :3], iop[0, 3:]
    normal = np.cross(row, col)
    length = float(np.linalg.norm(normal))
    if length < 0.5:
        return f"ImageOrientationPatient {tuple(iop[0])} does not hold two perpendicular unit vectors", None
    normal /= length
    angle = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    if angle > AXIAL_TOL_DEG:
        return (
            f"not axial: the slice normal is {angle:.1f} deg from the patient z axis (ImageOrientationPatient "
            f"{'/'.join(f'{v:g}' for v in iop[0])}; tolerance {AXIAL_TOL_DEG:g} deg)"
        ), None
    pos = np.array([s.position for s in slices], dtype=float)
    along = pos @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    d, p = along[order], pos[order]
    steps = np.diff(d)
    median = float(np.median(steps))
    tol = SPACING_TOL * median
    if median <= 0 or float(steps.min()) <= tol:
        k = int(np.argmin(steps))
        return f"duplicate slice position {d[k]:.3f} mm along the normal ({slices[order[k]].path.name})", None
    for k, step in enumerate(steps):
        if abs(step - median) > tol:
            m = round(step / median)
            where = f"between slice positions {d[k]:.3f} and {d[k + 1]:.3f} mm"
            if m >= 2 and abs(step - m * median) <= tol * m:
                return (
                    f"missing slice(s): a gap of {step:.3f} mm {where} where the spacing is {median:.3f} mm "
                    f"({m - 1} slice(s) missing)"
                ), None
            return (
                f"inconsistent slice spacing: a step of {step:.3f} mm {where}, median {median:.3f} mm "
                f"(tolerance {SPACING_TOL:.0%})"
            ), None
    drift = np.diff(p, axis=0) - np.outer(steps, normal)
    if float(np.linalg.norm(drift, axis=1).max()) > tol:
        return "slice positions do not follow the slice normal (gantry tilt or sheared stack)", None
    numbers = [s.instance for s in slices]
    if all(v is not None for v in numbers) and len(set(numbers)) == n:
        lo, hi = min(v for v in numbers if v is not None), max(v for v in numbers if v is not None)
        if hi - lo + 1 > n:
            return f"missing slice(s): InstanceNumber runs {lo}..{hi} but {n} slices are present", None
    return None, order


def read_series(series: DicomSeries) -> sitk.Image:
    """The pixels of a checked series as one 3-D image (HU: GDCM applies RescaleSlope / Intercept), its
    geometry from the headers; :class:`ScanError` naming the folder when it cannot be read."""
    if series.problem is not None:
        raise ScanError(f"DICOM series {series.seriesuid} in {series.folder}: {series.problem}")
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(f) for f in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise ScanError(
            f"DICOM series {series.seriesuid} in {series.folder}: unreadable ({first_error_line(e)})"
        ) from None
    if image.GetDimension() != 3 or image.GetSize()[2] != len(series.files):
        raise ScanError(
            f"DICOM series {series.seriesuid} in {series.folder}: read {image.GetSize()} voxels from "
            f"{len(series.files)} slices"
        )
    return image
