"""Series uid -> scan, only inside the scan root (``--scans``), indexed once per run from headers only.

A scan root may hold, at any depth and mixed:

* MetaImage ``<seriesuid>.mhd`` (+ ``.raw`` / ``.zraw``): the uid is the file stem (LUNA16 naming);
* NIfTI ``<seriesuid>.nii`` / ``<seriesuid>.nii.gz``: the uid is the file name without that suffix (ITK
  reads NIfTI into the same LPS world frame as DICOM and MetaImage);
* DICOM series: files named ``*.dcm`` / ``*.dicom`` or holding the ``DICM`` preamble (``DICOMDIR``
  excepted), grouped per folder by SeriesInstanceUID (several series may share a folder), each series
  checked from its headers (:mod:`naslung.data.dicom`: CT, axial, even slice spacing, no missing slice). A
  series that fails a check stays in the index with its problem, so its rows get an error naming the
  series folder and what is wrong. DICOM files that cannot be read, and symlinks out of the root, make
  every series of their folder unusable (a slice of it may be among them).

Confinement: the walk follows symlinked folders (loops are cut). MetaImage paths are checked lexically
as written below the root (a symlinked ``.mhd`` / ``.raw`` is allowed), and a header whose
``ElementDataFile`` points outside the root (``../x.raw``, an absolute path) is left out. DICOM and NIfTI
files are opened only when their real path (symlinks resolved) lies inside the root's real path: a
symlinked DICOM file or folder pointing outside is never read. Refused: a uid holding a path separator,
``..``, ``~`` or NUL, or an absolute path (an escape attempt). When one uid is found more than once, a
usable MetaImage wins over NIfTI over DICOM, then the first path in sorted order (with a warning).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from naslung.data.dicom import DicomSeries, SliceHeader, check_series, read_slice_header
from naslung.data.scans import ScanError, read_mhd_header, read_scan

logger = logging.getLogger(__name__)

_NOT_DICOM = (".mhd", ".raw", ".zraw", ".nii", ".gz", ".csv", ".json", ".txt", ".xml", ".md", ".npy", ".png")
_KIND_ORDER = {"mhd": 0, "nifti": 1, "dicom": 2}


class UnusableSeries(ValueError):
    """A series uid that names no scan the scorer may read; the message says why."""


def unsafe_uid_reason(uid: str) -> str | None:
    """Why a series uid cannot name a file inside --scans (path separators, '..', absolute), else None."""
    if uid in (".", "..") or "/" in uid or "\\" in uid or uid.startswith("~") or os.path.isabs(uid) or "\x00" in uid:
        return (
            f"seriesuid {uid!r} is not a plain series name: scan paths resolve only inside --scans "
            "(path separators, '..' and absolute paths are refused)"
        )
    return None


@dataclass(frozen=True)
class ScanEntry:
    """One scan found below the root: ``path`` the ``.mhd`` / NIfTI file or the DICOM series folder;
    ``dicom`` the checked series (None for a file); ``problem`` why it may not be read (None: usable)."""

    seriesuid: str
    kind: str
    """"mhd", "nifti" or "dicom"."""
    path: Path
    dicom: DicomSeries | None = None
    problem: str | None = None


@dataclass
class ScanCatalog:
    """Every scan below one root (see the module docstring), and what was skipped."""

    root: Path
    entries: dict[str, ScanEntry] = field(default_factory=dict)
    refused_links: list[Path] = field(default_factory=list)
    """Symlinks below the root whose target lies outside it (not read)."""
    unreadable: list[str] = field(default_factory=list)
    """One message per DICOM file whose header could not be read."""
    n_dicom_files: int = 0

    def usable(self) -> dict[str, Path]:
        return {uid: e.path for uid, e in self.entries.items() if e.problem is None}


def _walk(root: Path) -> Iterator[Path]:
    """Every file below ``root`` (lexical paths), symlinked folders followed once (no loops), sorted per folder."""
    seen: set[str] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        subfolders = []
        for name in names:
            path = folder / name
            if path.is_dir():
                subfolders.append(path)
            elif path.is_file() or path.is_symlink():
                yield path
        stack.extend(reversed(subfolders))


def _nifti_uid(name: str) -> str | None:
    lower = name.lower()
    for suffix in (".nii.gz", ".nii"):
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _looks_dicom(path: Path) -> bool:
    lower = path.name.lower()
    if path.name.upper() == "DICOMDIR" or lower.endswith(_NOT_DICOM):
        return False
    if lower.endswith((".dcm", ".dicom")):
        return True
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def catalog_scans(scans_dir: Path) -> ScanCatalog:
    """Index the scans below ``scans_dir`` (headers only; see the module docstring)."""
    root = Path(scans_dir)
    lexical_root = os.path.abspath(root)
    real_root = os.path.realpath(root)
    catalog = ScanCatalog(root)

    def inside(path: Path | str, base: str) -> bool:
        return os.path.commonpath([base, path]) == base

    found: list[ScanEntry] = []
    slices: dict[tuple[Path, str], list[SliceHeader]] = {}
    folder_trouble: dict[Path, list[str]] = {}
    for path in _walk(root):
        real_inside = inside(os.path.realpath(path), real_root)
        lower = path.name.lower()
        if lower.endswith(".mhd"):
            entry = _mhd_entry(path, lexical_root)
            if entry is not None:
                found.append(entry)
            continue
        if lower.endswith((".raw", ".zraw")):
            continue  # MetaImage data: checked through its header
        if not real_inside:
            if lower.endswith(_NOT_DICOM) and _nifti_uid(path.name) is None:
                continue  # not a scan file of any kind: not read either way
            catalog.refused_links.append(path)
            folder_trouble.setdefault(path.parent, []).append(f"{path.name} lies outside --scans (a symlink)")
            continue
        uid = _nifti_uid(path.name)
        if uid is not None:
            found.append(ScanEntry(uid, "nifti", path))
            continue
        if not path.is_file() or not _looks_dicom(path):
            continue
        catalog.n_dicom_files += 1
        try:
            header = read_slice_header(path)
        except ScanError as exc:
            catalog.unreadable.append(str(exc))
            folder_trouble.setdefault(path.parent, []).append(f"{path.name} cannot be read")
            continue
        slices.setdefault((path.parent, header.seriesuid), []).append(header)
    for (folder, uid), headers in slices.items():
        trouble = folder_trouble.get(folder)
        folder_problem = None
        if trouble:
            shown = "; ".join(trouble[:3]) + (f" and {len(trouble) - 3} more" if len(trouble) > 3 else "")
            folder_problem = f"{len(trouble)} file(s) of this folder were not read ({shown}); a slice may be missing"
        series = check_series(folder, headers, folder_problem)
        problem = None if series.problem is None else f"DICOM series {uid} in {folder}: {series.problem}"
        found.append(ScanEntry(uid, "dicom", folder, series, problem))
    found.sort(key=lambda e: (e.problem is not None, _KIND_ORDER[e.kind], str(e.path)))
    for entry in found:
        first = catalog.entries.get(entry.seriesuid)
        if first is None:
            catalog.entries[entry.seriesuid] = entry
        else:
            logger.warning("series %s found again at %s; using %s", entry.seriesuid, entry.path, first.path)
    for message in catalog.unreadable[:20]:
        logger.warning("%s", message)
    return catalog


def _mhd_entry(path: Path, lexical_root: str) -> ScanEntry | None:
    """The entry of one ``.mhd`` (lexical confinement), None when its data file lies outside the root."""
    if os.path.commonpath([lexical_root, os.path.abspath(path)]) != lexical_root:
        return None
    try:
        data_name = read_mhd_header(path)["ElementDataFile"]
    except ScanError:
        return ScanEntry(path.stem, "mhd", path)  # reading it later gives the rows of that series their error
    data = os.path.abspath(path.parent / data_name)
    if (
        data_name.upper() == "LOCAL"
        or data_name.upper().startswith("LIST")
        or os.path.commonpath([lexical_root, data]) == lexical_root
    ):
        return ScanEntry(path.stem, "mhd", path)
    logger.warning("%s: data file %r lies outside the scan root %s; scan ignored", path, data_name, lexical_root)
    return None


def index_scans(scans_dir: Path) -> dict[str, Path]:
    """Series uid -> scan path (``.mhd`` / NIfTI file or DICOM series folder) of every usable scan below
    ``scans_dir`` (see the module docstring; a header that cannot be read is kept: reading it later gives
    the rows of that series their error)."""
    return catalog_scans(scans_dir).usable()


class ScanFinder:
    """The scans below one root, indexed once (see :func:`catalog_scans`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.catalog = catalog_scans(self.root)
        self.index = self.catalog.usable()

    def entry(self, uid: str) -> ScanEntry:
        """The usable scan of series ``uid``; :class:`UnusableSeries` for an unsafe or unknown uid or a
        DICOM series that failed its checks (the message names the folder and the problem)."""
        reason = unsafe_uid_reason(uid)
        if reason is not None:
            raise UnusableSeries(reason)
        entry = self.catalog.entries.get(uid)
        if entry is None:
            raise UnusableSeries(self._unknown(uid))
        if entry.problem is not None:
            raise UnusableSeries(entry.problem)
        return entry

    def _unknown(self, uid: str) -> str:
        text = (
            f"unknown series {uid!r}: no {uid}.mhd, {uid}.nii(.gz) or DICOM series with that SeriesInstanceUID "
            f"under --scans {self.root}"
        )
        if self.catalog.refused_links:
            text += f"; {len(self.catalog.refused_links)} symlink(s) pointing outside --scans were not read"
            text += f" (e.g. {self.catalog.refused_links[0]})"
        if self.catalog.unreadable:
            n_bad = len(self.catalog.unreadable)
            text += f"; {n_bad} DICOM file(s) could not be read (e.g. {self.catalog.unreadable[0]})"
        return text

    def find(self, uid: str) -> Path | DicomSeries:
        """What :func:`naslung.data.scans.read_scan` reads for series ``uid`` (see :meth:`entry`): the
        ``.mhd`` / NIfTI file, or the checked DICOM series (its folder and sorted files)."""
        entry = self.entry(uid)
        return entry.dicom if entry.dicom is not None else entry.path

    def read(self, uid: str) -> sitk.Image:
        """The whole scan of series ``uid`` (HU, with its geometry); :class:`UnusableSeries` (see
        :meth:`entry`) or :class:`naslung.data.scans.ScanError` naming the file or folder."""
        return read_scan(self.find(uid))
