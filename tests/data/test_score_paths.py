"""Scan paths in scoring stay inside --scans: a header pointing its voxel file outside is not indexed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from naslung.score_csv import index_scans, unsafe_uid_reason


def test_header_pointing_outside_the_scan_root_is_ignored(tmp_path: Path) -> None:
    scans, outside = tmp_path / "scans", tmp_path / "outside"
    scans.mkdir()
    outside.mkdir()
    img = sitk.GetImageFromArray(np.zeros((4, 4, 4), np.int16))
    sitk.WriteImage(img, str(outside / "secret.mhd"))
    header = (outside / "secret.mhd").read_text()
    (scans / "evil.mhd").write_text(header.replace("= secret.raw", "= ../outside/secret.raw"))
    (scans / "abs.mhd").write_text(header.replace("= secret.raw", f"= {outside / 'secret.raw'}"))
    sitk.WriteImage(img, str(scans / "good.mhd"))
    assert set(index_scans(scans)) == {"good"}


def test_series_uid_with_path_parts_is_refused() -> None:
    for uid in ("../x", "/etc/passwd", "a/b", "..", "~root"):
        assert unsafe_uid_reason(uid)
    assert unsafe_uid_reason("1.3.6.1.4.1.14519.5.2.1.6279.6001.1") is None
