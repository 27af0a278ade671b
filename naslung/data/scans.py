"""Reading CT scans with SimpleITK: MetaImage (``.mhd`` + ``.raw``/``.zraw``) and DICOM series folders.

Conventions: world points are (x, y, z) in mm (LUNA16 ``annotations.csv``); SimpleITK indices are
(x, y, z) in voxels; numpy arrays from ``sitk.GetArrayFromImage`` are (z, y, x). World <-> index always
goes through SimpleITK's own transform (origin, spacing *and* direction); the one exception, the scoring
path's vectorised :class:`naslung.data.patches.MultiPointCutter`, uses the same matrix and checks it against
SimpleITK's transform on every scan.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from naslung.data.dicom import DicomSeries, read_series
from naslung.data.scan_errors import ScanError as ScanError  # re-exported: raised by every reader here
from naslung.data.scan_errors import first_error_line as first_error_line

_SUBSET = re.compile(r"^subset(\d+)$", re.IGNORECASE)

_META_BYTES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 8,
    "MET_ULONG": 8,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


@dataclass(frozen=True)
class ScanRef:
    """Where one series lives: ``path`` is an ``.mhd`` file or a DICOM series folder."""

    seriesuid: str
    path: Path
    kind: str
    """"mhd" or "dicom"."""
    subset: int | None = None
    """K when the scan sits in a LUNA16 ``subsetK`` folder, else None."""


# --------------------------------------------------------------------------------------------------
# MetaImage header checks (so that a broken file gives a clear message rather than an ITK trace)


def read_mhd_header(path: Path) -> dict[str, str]:
    """Key/value pairs of a MetaImage header; :class:`ScanError` when it is not a usable header."""
    try:
        text = path.read_bytes()[:65536].decode("ascii")
    except UnicodeDecodeError as e:
        raise ScanError(f"{path}: corrupt .mhd header (not ASCII text: {e})") from None
    except OSError as e:
        raise ScanError(f"{path}: cannot read .mhd header ({e.strerror})") from None
    header: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if "=" not in line:
            raise ScanError(f"{path}: corrupt .mhd header (line {n} is not 'Key = Value': {line[:60]!r})")
        key, value = line.split("=", 1)
        header[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    for key in ("NDims", "DimSize", "ElementType", "ElementDataFile"):
        if key not in header:
            raise ScanError(f"{path}: corrupt .mhd header (no '{key}' entry)")
    try:
        ndims = int(header["NDims"])
        dims = [int(v) for v in header["DimSize"].split()]
    except ValueError:
        raise ScanError(f"{path}: corrupt .mhd header (NDims/DimSize not integers)") from None
    if ndims != 3 or len(dims) != 3 or min(dims) < 1:
        raise ScanError(f"{path}: corrupt .mhd header (expected a 3-D image, got NDims={ndims}, DimSize={dims})")
    if header["ElementType"] not in _META_BYTES:
        raise ScanError(f"{path}: corrupt .mhd header (unknown ElementType {header['ElementType']!r})")
    return header


def check_mhd(path: Path) -> None:
    """Raise :class:`ScanError` for a corrupt header, a missing data file or a truncated raw file."""
    header = read_mhd_header(path)
    data_name = header["ElementDataFile"]
    if data_name.upper() == "LOCAL" or data_name.upper().startswith("LIST"):
        return
    data = path.parent / data_name
    if not data.is_file():
        raise ScanError(f"{path}: data file {data.name} is missing (expected at {data})")
    compressed = header.get("CompressedData", "False").lower() == "true"
    if not compressed:
        n_channels = int(header.get("ElementNumberOfChannels", "1"))
        dims = [int(v) for v in header["DimSize"].split()]
        expected = int(np.prod(dims)) * _META_BYTES[header["ElementType"]] * n_channels
        offset = max(int(header.get("HeaderSize", "0")), 0)
        found = data.stat().st_size
        if found < expected + offset:
            raise ScanError(
                f"{data}: truncated raw data ({found} bytes, expected {expected + offset} "
                f"for DimSize {header['DimSize']} {header['ElementType']})"
            )


# --------------------------------------------------------------------------------------------------
# Reading


def dicom_series(folder: Path) -> list[str]:
    """Series instance UIDs of the DICOM series directly inside ``folder`` (GDCM)."""
    return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def read_dicom_series(folder: Path, seriesuid: str | None = None) -> sitk.Image:
    """Read one DICOM series folder (the first series when ``seriesuid`` is None) as a 3-D image in HU."""
    folder = Path(folder)
    ids = dicom_series(folder)
    if not ids:
        raise ScanError(f"{folder}: no DICOM series found in this folder")
    uid = seriesuid or ids[0]
    if uid not in ids:
        raise ScanError(f"{folder}: DICOM series {uid} not found (has {ids})")
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise ScanError(f"{folder}: unreadable DICOM series {uid} ({_first_line(e)})") from None
    if image.GetDimension() != 3:
        raise ScanError(f"{folder}: DICOM series {uid} is not a 3-D volume")
    return image


def read_scan(path: str | Path | DicomSeries, seriesuid: str | None = None) -> sitk.Image:
    """Read a whole scan: an ``.mhd`` (``.raw``/``.zraw``) or NIfTI file, a DICOM series folder, or a
    DICOM series checked from its headers (:class:`naslung.data.dicom.DicomSeries`: exactly its files).

    Returns the SimpleITK image with its physical geometry (origin, spacing in mm, direction); voxel
    values are as stored (HU for LUNA16 / LIDC). Raises :class:`ScanError` naming the file on failure.
    """
    if isinstance(path, DicomSeries):
        return read_series(path)
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path, seriesuid)
    if not path.exists():
        raise ScanError(f"{path}: scan file not found")
    if path.suffix.lower() == ".mhd":
        check_mhd(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ScanError(f"{path}: unreadable scan ({_first_line(e)})") from None
    if image.GetDimension() != 3:
        raise ScanError(f"{path}: expected a 3-D image, got {image.GetDimension()}-D")
    return image


def _first_line(e: BaseException) -> str:
    return first_error_line(e)


# --------------------------------------------------------------------------------------------------
# Geometry


def world_to_index(image: sitk.Image, points_xyz_mm: np.ndarray) -> np.ndarray:
    """Continuous voxel indices (n, 3) in (x, y, z) order for world points (n, 3) (x, y, z) in mm."""
    pts = np.asarray(points_xyz_mm, dtype=float).reshape(-1, 3)
    return np.array([image.TransformPhysicalPointToContinuousIndex(tuple(map(float, p))) for p in pts])


def inside_scan(image: sitk.Image, points_xyz_mm: np.ndarray) -> np.ndarray:
    """Boolean (n,): the world point lies within the scan's voxel extent (index in [-0.5, size - 0.5])."""
    idx = world_to_index(image, points_xyz_mm)
    size = np.array(image.GetSize(), dtype=float)
    return np.all((idx >= -0.5) & (idx <= size - 0.5), axis=1) & np.all(np.isfinite(idx), axis=1)


# --------------------------------------------------------------------------------------------------
# Index of a raw-data folder


@dataclass
class ScanIndex:
    """Series uid -> :class:`ScanRef` for every scan found under a raw-data folder."""

    scans: dict[str, ScanRef]
    duplicates: dict[str, list[Path]]
    """Series found more than once (the first path in sorted order is used)."""

    def __contains__(self, uid: str) -> bool:
        return uid in self.scans

    def __len__(self) -> int:
        return len(self.scans)

    def get(self, uid: str) -> ScanRef | None:
        return self.scans.get(uid)

    @property
    def uses_subsets(self) -> bool:
        """True when every indexed scan sits in a LUNA16 ``subsetK`` folder."""
        return bool(self.scans) and all(r.subset is not None for r in self.scans.values())

    @classmethod
    def build(cls, raw_dir: str | Path, dicom: bool = True) -> ScanIndex:
        """Walk ``raw_dir``: every ``<uid>.mhd`` and (when ``dicom``) every folder holding a DICOM series.

        The series uid of an ``.mhd`` is its file stem (LUNA16 naming); of a DICOM series its
        SeriesInstanceUID. A scan below a ``subsetK`` folder gets ``subset=K``.
        """
        root = Path(raw_dir)
        if not root.is_dir():
            raise ScanError(f"{root}: raw-data folder not found")
        refs: list[ScanRef] = []
        for mhd in sorted(f for f in _walk(root) if f.suffix.lower() == ".mhd"):
            refs.append(ScanRef(mhd.stem, mhd, "mhd", _subset_of(mhd, root)))
        if dicom:
            for folder in _dicom_folders(root):
                for uid in dicom_series(folder):
                    refs.append(ScanRef(uid, folder, "dicom", _subset_of(folder / "x", root)))
        scans: dict[str, ScanRef] = {}
        dups: dict[str, list[Path]] = {}
        for r in refs:
            if r.seriesuid in scans:
                dups.setdefault(r.seriesuid, [scans[r.seriesuid].path]).append(r.path)
            else:
                scans[r.seriesuid] = r
        return cls(scans, dups)


def _subset_of(path: Path, root: Path) -> int | None:
    for part in reversed(path.relative_to(root).parts[:-1]):
        m = _SUBSET.match(part)
        if m:
            return int(m.group(1))
    return None


def _walk(root: Path) -> list[Path]:
    """Every file below ``root`` (symlinked folders followed), sorted."""
    out: list[Path] = []
    for dirpath, _dirs, files in os.walk(root, followlinks=True):
        out.extend(Path(dirpath) / f for f in files)
    return sorted(out)


def _dicom_folders(root: Path) -> Iterable[Path]:
    seen: set[Path] = set()
    for f in _walk(root):
        if f.is_file() and f.parent not in seen and (f.suffix.lower() in (".dcm", ".dicom") or _is_dicom(f)):
            seen.add(f.parent)
            yield f.parent


def _is_dicom(f: Path) -> bool:
    if f.suffix.lower() in (".mhd", ".raw", ".zraw", ".csv", ".json", ".txt", ".xml", ".md", ".npy"):
        return False
    try:
        with f.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False
