"""Series uid -> scan file, only inside the scan root (``--scans``).

A series resolves to ``<root>/**/<seriesuid>.mhd`` (found by a walk that follows symlinked folders;
symlinked files are allowed: paths are checked lexically, as written below the root). Refused: a uid
holding a path separator, ``..``, ``~`` or NUL, or an absolute path (an escape attempt), and a header
whose ``ElementDataFile`` points outside the root (``../x.raw``, an absolute path), so a crafted header
cannot make the scorer read files beyond the root.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from naslung.data.scans import ScanError, ScanIndex, read_mhd_header

logger = logging.getLogger(__name__)


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


def index_scans(scans_dir: Path) -> dict[str, Path]:
    """``<uid>.mhd`` files anywhere below ``scans_dir`` (lexical paths, symlinked files allowed).

    A header whose ``ElementDataFile`` points outside ``scans_dir`` (``../x.raw``, an absolute path) is
    left out (with a warning). A header that cannot be read is kept: reading it later gives the rows
    of that series their error.
    """
    index = ScanIndex.build(scans_dir, dicom=False)
    root = os.path.abspath(scans_dir)

    def inside(path: Path | str) -> bool:
        return os.path.commonpath([root, os.path.abspath(path)]) == root

    out: dict[str, Path] = {}
    for uid, ref in index.scans.items():
        if not inside(ref.path):
            continue
        try:
            data_name = read_mhd_header(Path(ref.path))["ElementDataFile"]
        except ScanError:
            out[uid] = ref.path
            continue
        if (
            data_name.upper() == "LOCAL"
            or data_name.upper().startswith("LIST")
            or inside(Path(ref.path).parent / data_name)
        ):
            out[uid] = ref.path
        else:
            logger.warning("%s: data file %r lies outside the scan root %s; scan ignored", ref.path, data_name, root)
    return out


class ScanFinder:
    """The scans below one root (indexed once, see :func:`index_scans`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.index = index_scans(self.root)

    def find(self, uid: str) -> Path:
        """The ``.mhd`` of series ``uid``; :class:`UnusableSeries` for an unsafe or unknown uid."""
        reason = unsafe_uid_reason(uid)
        if reason is not None:
            raise UnusableSeries(reason)
        path = self.index.get(uid)
        if path is None:
            raise UnusableSeries(f"unknown series {uid!r}: no {uid}.mhd under --scans {self.root}")
        return path
