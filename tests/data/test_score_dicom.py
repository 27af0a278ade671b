"""DICOM series (and NIfTI) as scan input of ``naslung score``: real LIDC crops written as CT DICOM with
SimpleITK/GDCM score exactly like their MetaImage copies, and every broken series becomes error rows that
name the series folder and the problem.

The scans are the real crops in ``../shared/data/LIDC-CT-concept-to-clinic/roi`` (int16 HU, world
coordinates kept). They are written as DICOM in a temporary folder: HU stored as ``HU + 1024`` with
RescaleIntercept -1024 / RescaleSlope 1 (GDCM applies the pair on reading), per-slice ImagePositionPatient
from the image's own index -> world transform, ImageOrientationPatient from its direction, SliceThickness,
InstanceNumber, and SeriesInstanceUID = the ``.mhd`` stem. The HU values round-trip exactly (integers),
and the positions are written with 10 significant digits (DICOM DS allows 16 characters), so the world
geometry agrees to < 1e-6 mm: the patches, and hence the probabilities, agree to 1e-6.
"""

from __future__ import annotations

import locale
import math
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from naslung.data.dicom import AXIAL_TOL_DEG
from naslung.params import PrepareParams, ServeParams
from naslung.score_csv import score_csv
from naslung.scoring_csv.scans import ScanFinder

PREPARE = PrepareParams()
SERVE = replace(ServeParams(), request_patches=3, concurrency=2)
ROI = "LIDC-CT-concept-to-clinic/roi"


def write_series(
    img: sitk.Image,
    folder: Path,
    uid: str,
    prefix: str = "",
    modality: str = "CT",
    tags: dict[int, dict[str, str]] | None = None,
) -> list[Path]:
    """Write a 3-D int16 HU image as one DICOM file per slice (``<prefix><k>.dcm``); ``tags``: slice ->
    tags to override. GDCM's writer leaves LC_CTYPE at "C": it is put back afterwards."""
    saved = locale.setlocale(locale.LC_CTYPE)
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = img.GetDirection()
    orientation = "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    files = []
    try:
        for k in range(img.GetDepth()):
            sl = img[:, :, k]
            values = {
                "0008|0060": modality,
                "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
                "0020|000d": uid + ".1",
                "0020|000e": uid,
                "0008|0018": f"{uid}.{k + 1}",
                "0020|0013": str(k + 1),
                "0020|0037": orientation,
                "0020|0032": "\\".join(f"{v:.10g}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))),
                "0018|0050": f"{img.GetSpacing()[2]:.10g}",
                "0028|1052": "-1024",
                "0028|1053": "1",
            }
            values.update((tags or {}).get(k, {}))
            for key, val in values.items():
                sl.SetMetaData(key, val)
            files.append(folder / f"{prefix}{k:04d}.dcm")
            writer.SetFileName(str(files[-1]))
            writer.Execute(sl)
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)
    return files


def _points(img: sitk.Image) -> list[tuple[float, float, float]]:
    """World points (x, y, z) mm: the centre, four off-centre points, one near a corner, one outside."""
    size = np.array(img.GetSize(), float)
    fracs = [
        (0.5, 0.5, 0.5),
        (0.3, 0.6, 0.4),
        (0.7, 0.35, 0.6),
        (0.45, 0.55, 0.25),
        (0.6, 0.4, 0.75),
        (0.05, 0.95, 0.1),
    ]
    pts = [img.TransformContinuousIndexToPhysicalPoint(tuple(f * (size - 1))) for f in fracs]
    pts.append(img.TransformContinuousIndexToPhysicalPoint(tuple(size + 40)))
    return [tuple(float(v) for v in p) for p in pts]  # type: ignore[misc]


class Recorder:
    """In-process scorer: a deterministic function of the patch; records each patch by its row's point."""

    def __init__(self) -> None:
        self.patches: list[np.ndarray] = []
        self._lock = threading.Lock()

    def __call__(self, patches: np.ndarray) -> list[dict[str, Any]]:
        with self._lock:
            self.patches.extend(p.copy() for p in patches)
        out = []
        for p in patches:
            prob = float(0.7 * p.mean() + 0.3 * p[12:20, 12:20, 12:20].mean())
            out.append({"probability": prob, "label": int(prob > 0.3), "votes": 0, "model_version": "1"})
        return out


@pytest.fixture(scope="module")
def scans(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    src = shared_data / ROI
    mhds = sorted(src.glob("*.mhd"))
    assert len(mhds) == 2
    images = {m.stem: sitk.ReadImage(str(m)) for m in mhds}
    tmp = tmp_path_factory.mktemp("score_dicom")
    dicom = tmp / "dicom"
    both = dicom / "patient-1" / "study-7" / "two series"  # nested; both series in one folder
    for i, (uid, img) in enumerate(images.items()):
        write_series(img, both, uid, prefix=f"s{i}_")
    mhd = tmp / "mhd"
    mixed = tmp / "mixed"
    (mhd / "sub").mkdir(parents=True)
    for uid, img in images.items():  # the MetaImage copy (as the shared .mhd/.zraw files, nested)
        sitk.WriteImage(img, str(mhd / "sub" / f"{uid}.mhd"), useCompression=True)
    (uid_a, img_a), (uid_b, img_b) = images.items()
    write_series(img_a, mixed / "dicom" / "a", uid_a)
    (mixed / "nifti").mkdir(parents=True)
    sitk.WriteImage(img_b, str(mixed / "nifti" / f"{uid_b}.nii.gz"))
    rows = []
    for uid, img in images.items():
        for k, p in enumerate(_points(img)):
            rows.append(
                {"nodule_id": f"{uid[-4:]}-{k}", "seriesuid": uid, "coordX": p[0], "coordY": p[1], "coordZ": p[2]}
            )
    csv = tmp / "nodules.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return {"dicom": dicom, "mhd": mhd, "mixed": mixed, "images": images, "csv": csv, "tmp": tmp}


def _score(csv: Path, root: Path, out: Path) -> tuple[pd.DataFrame, Recorder]:
    rec = Recorder()
    score_csv(csv, root, out, None, PREPARE, SERVE, progress=False, predict=rec)
    return pd.read_csv(out, dtype=str, keep_default_na=False), rec


def test_dicom_series_scores_like_its_metaimage_copy(scans: dict[str, Any], tmp_path: Path) -> None:
    finder = ScanFinder(scans["dicom"])
    assert {e.kind for e in finder.catalog.entries.values()} == {"dicom"} and len(finder.catalog.entries) == 2
    assert len({e.path for e in finder.catalog.entries.values()}) == 1  # both series in one folder
    for uid, img in scans["images"].items():  # geometry and HU as the MetaImage
        back = finder.read(uid)
        assert back.GetSize() == img.GetSize()
        assert np.allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-6)
        assert np.allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-9)
        assert np.allclose(back.GetDirection(), img.GetDirection(), atol=1e-9)
        assert np.array_equal(
            sitk.GetArrayFromImage(back).astype(np.int32), sitk.GetArrayFromImage(img).astype(np.int32)
        )

    ref, ref_rec = _score(scans["csv"], scans["mhd"], tmp_path / "mhd.csv")
    res, rec = _score(scans["csv"], scans["dicom"], tmp_path / "dicom.csv")
    mixed, _ = _score(scans["csv"], scans["mixed"], tmp_path / "mixed.csv")  # DICOM + NIfTI in one root
    n = len(ref)
    assert n == 14 and list(res["nodule_id"]) == list(ref["nodule_id"]) == list(mixed["nodule_id"])
    for table in (ref, res, mixed):
        assert list(table["status"]) == ["ok"] * 6 + ["error"] + ["ok"] * 6 + ["error"]
        assert all("outside the scan extent" in e for e in table.loc[table["status"] == "error", "error"])
    ok = ref["status"] == "ok"
    for table in (res, mixed):
        a = table.loc[ok, "probability"].astype(float).to_numpy()
        b = ref.loc[ok, "probability"].astype(float).to_numpy()
        assert np.abs(a - b).max() <= 1e-6, np.abs(a - b).max()
    assert len(rec.patches) == len(ref_rec.patches) == 12
    # the same patches; requests run `concurrency` at a time, so the recorder sees them in completion order:
    # match each DICOM patch to its nearest MetaImage patch, one to one
    left = list(range(len(ref_rec.patches)))
    diffs = []
    for p in rec.patches:
        d = [float(np.abs(p - ref_rec.patches[j]).max()) for j in left]
        diffs.append(min(d))
        left.pop(int(np.argmin(d)))
    assert not left and max(diffs) <= 1e-6, diffs


def _bad_root(shared_data: Path, tmp: Path) -> tuple[Path, dict[str, str]]:
    """A scan root of broken series (64 x 64 x 12 crops of a real scan) and one good one; uid -> what the
    rows of that series must say."""
    img = sitk.ReadImage(str(sorted((shared_data / ROI).glob("*.mhd"))[1]))
    crop = img[20:84, 20:84, 10:22]
    root, outside = tmp / "bad", tmp / "outside"
    base = "1.2.826.0.1.3680043.8.498.55"
    uids = {k: f"{base}.{i}" for i, k in enumerate(("good", "mr", "tilted", "gap", "uneven", "link", "partial", "bad"))}
    expect: dict[str, str] = {}

    write_series(crop, root / "ok" / "good", uids["good"])
    expect[uids["good"]] = ""
    write_series(crop, root / "mr", uids["mr"], modality="MR")
    expect[uids["mr"]] = f"DICOM series {uids['mr']} in {root / 'mr'}: Modality MR, expected CT"

    tilted = sitk.Image(crop)
    angle = math.radians(15.0)
    tilted.SetDirection((1.0, 0.0, 0.0, 0.0, math.cos(angle), -math.sin(angle), 0.0, math.sin(angle), math.cos(angle)))
    write_series(tilted, root / "tilted", uids["tilted"])
    expect[uids["tilted"]] = "not axial: the slice normal is 15.0 deg from the patient z axis"

    gap = write_series(crop, root / "gap", uids["gap"])
    gap[5].unlink()
    expect[uids["gap"]] = f"in {root / 'gap'}: missing slice(s): a gap of 2.500 mm"

    z5 = crop.TransformIndexToPhysicalPoint((0, 0, 5))
    shifted = {5: {"0020|0032": "\\".join(f"{v:.10g}" for v in (z5[0], z5[1], z5[2] + 0.4))}}
    write_series(crop, root / "uneven", uids["uneven"], tags=shifted)
    expect[uids["uneven"]] = "inconsistent slice spacing"

    write_series(crop, outside / "series", uids["link"])  # a whole series folder linked from outside
    (root / "linked").symlink_to(outside / "series", target_is_directory=True)
    expect[uids["link"]] = f"unknown series '{uids['link']}'"

    part = write_series(crop, root / "partial", uids["partial"])  # one slice replaced by a link outside
    stolen = outside / "stolen.dcm"
    part[3].rename(stolen)
    part[3].symlink_to(stolen)
    expect[uids["partial"]] = "0003.dcm lies outside --scans (a symlink)"

    broken = write_series(crop, root / "truncated", uids["bad"])
    data = broken[7].read_bytes()
    broken[7].write_bytes(data[: len(data) // 2])
    (root / "truncated" / "notes.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    expect[uids["bad"]] = "0007.dcm cannot be read"
    return root, expect


def test_broken_series_become_error_rows_naming_folder_and_problem(shared_data: Path, tmp_path: Path) -> None:
    root, expect = _bad_root(shared_data, tmp_path)
    finder = ScanFinder(root)
    assert set(finder.index) == {next(iter(expect))}  # only the good series is usable
    link_uid = next(u for u, e in expect.items() if e.startswith("unknown series"))
    assert link_uid not in finder.catalog.entries  # the linked folder's files were never opened
    assert len(finder.catalog.refused_links) >= 12 + 1

    rows = [
        {"seriesuid": uid, "coordX": -30.0, "coordY": -20.0, "coordZ": 0.0, "note": f"n{i}"}
        for i, uid in enumerate(expect)
    ]
    img = finder.read(next(iter(expect)))
    centre = img.TransformContinuousIndexToPhysicalPoint(tuple((np.array(img.GetSize()) - 1) / 2.0))
    for r in rows:
        r["coordX"], r["coordY"], r["coordZ"] = centre
    csv = tmp_path / "in.csv"
    pd.DataFrame(rows + rows[:2]).to_csv(csv, index=False)
    res, rec = _score(csv, root, tmp_path / "out.csv")
    assert len(res) == len(rows) + 2 and list(res["note"]) == [r["note"] for r in rows + rows[:2]]
    assert list(res["status"]) == ["ok"] + ["error"] * (len(rows) - 1) + ["ok", "error"]
    for i, text in enumerate(expect.values()):
        if text:
            assert res.loc[i, "error"].startswith(f"row {i + 1}: ") and text in res.loc[i, "error"], res.loc[i, "error"]
            assert res.loc[i, "probability"] == ""
    assert len(rec.patches) == 2
    # each error names the series folder (below the root) or, for the linked-in series, says what was skipped
    for i in range(1, len(rows)):
        err = res.loc[i, "error"]
        assert str(root) in err and ("DICOM series" in err or "symlink(s) pointing outside --scans" in err), err


def test_tilt_within_tolerance_is_axial(shared_data: Path, tmp_path: Path) -> None:
    """A tilt well below AXIAL_TOL_DEG (a slightly rotated stack) is still read as axial, and its points
    cut through SimpleITK's own direction matrix."""
    img = sitk.ReadImage(str(sorted((shared_data / ROI).glob("*.mhd"))[1]))[10:74, 10:74, 5:25]
    angle = math.radians(AXIAL_TOL_DEG / 4)
    img.SetDirection((1.0, 0.0, 0.0, 0.0, math.cos(angle), -math.sin(angle), 0.0, math.sin(angle), math.cos(angle)))
    write_series(img, tmp_path / "s", "1.2.826.0.1.3680043.8.498.66")
    finder = ScanFinder(tmp_path)
    back = finder.read("1.2.826.0.1.3680043.8.498.66")
    assert np.allclose(back.GetDirection(), img.GetDirection(), atol=1e-6)


def test_unreadable_root_files_do_not_escape(tmp_path: Path) -> None:
    """A symlinked DICOM file pointing outside the root is never opened: pointing it at a FIFO (opening it
    would block) proves the scan index does not read it."""
    root = tmp_path / "root"
    root.mkdir()
    fifo = tmp_path / "fifo.dcm"
    os.mkfifo(fifo)
    (root / "x.dcm").symlink_to(fifo)
    finder = ScanFinder(root)
    assert finder.catalog.refused_links == [root / "x.dcm"] and not finder.catalog.entries
