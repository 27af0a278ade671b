"""Ingest path proven on the real LIDC-IDRI scans in ../shared/data (read-only; skipped when absent)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from naslung.data.labels import label_counts, read_annotations
from naslung.data.patches import PatchCutter, extract_patch_hu, extract_patches, window_hu
from naslung.data.prepare import prepare
from naslung.data.scans import ScanIndex, read_scan
from naslung.data.store import PatchStore
from naslung.params import PrepareParams

P = PrepareParams()
UID_0001 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
UID_0002 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.619372068417051974713149104919"
UID_0003 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.170706757615202213033480003264"
NODULE_0001 = np.array([56.20840547, 86.34341278, -115.8675792])  # LUNA16 annotations.csv, world mm


@pytest.fixture(scope="module")
def lidc(shared_data: Path) -> Path:
    return shared_data / "LIDC-CT-concept-to-clinic"


@pytest.fixture(scope="module")
def full_scan(lidc: Path) -> sitk.Image:
    """LIDC-IDRI-0001, whole series (512x512x133, 34 MB zraw), read once for the module."""
    return read_scan(lidc / "full" / f"{UID_0001}.mhd")


@pytest.fixture(scope="module")
def raw_dir(lidc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LUNA16-style layout of the three real scans (symlinks: nothing is copied)."""
    root = tmp_path_factory.mktemp("luna16")
    for sub, kind, uids in (("subset3", "full", [UID_0001]), ("subset5", "roi", [UID_0002, UID_0003])):
        (root / sub).mkdir()
        for uid in uids:
            for ext in (".mhd", ".zraw"):
                (root / sub / f"{uid}{ext}").symlink_to(lidc / kind / f"{uid}{ext}")
    return root


def test_deeplung_reader_table_gives_1004_nodules_450_malignant(shared_data: Path) -> None:
    table = read_annotations(shared_data / "DeepLung" / "annotationdetclssgm_doctor.csv")
    counts = label_counts(table)
    print(f"\nDeepLung per-reader table: {len(table)} rows -> {counts}")
    assert table.attrs["format"] == "deeplung_readers" and (table["error"] == "").all()
    assert counts == {"malignant": 450, "benign": 554, "indeterminate": 0, "unrated": 0}
    # the rule recomputed from the reader scores agrees with the table's own label on every row
    from naslung.data.labels import label_from_scores

    assert [label_from_scores(s) for s in table["reader_scores"]] == table["given_label"].astype(int).tolist()
    # dlwpt's table (all 1,182 LUNA16 nodules with mal_details) keeps indeterminate nodules: the rule excludes them
    dl = label_counts(read_annotations(shared_data / "dlwpt-code" / "annotations_with_malignancy.csv"))
    print(f"dlwpt annotations_with_malignancy.csv -> {dl}")
    assert dl["indeterminate"] > 100 and dl["malignant"] + dl["benign"] > 1000


def test_full_scan_nodule_patch_is_soft_tissue(full_scan: sitk.Image) -> None:
    assert full_scan.GetSize() == (512, 512, 133)
    assert np.allclose(full_scan.TransformPhysicalPointToContinuousIndex(tuple(NODULE_0001)), (316, 367, 90), atol=0.6)
    hu = extract_patch_hu(full_scan, NODULE_0001[None], P)[0]
    centre = hu[14:18, 14:18, 14:18]
    print(f"\nLIDC-0001 nodule: centre mean {centre.mean():.0f} HU, patch mean {hu.mean():.0f} HU")
    assert -300 < centre.mean() < 300  # soft tissue
    assert (hu > -300).mean() > 0.1 and hu.std() > 100  # not air
    w = extract_patches(full_scan, NODULE_0001[None], P)[0]
    assert w.dtype == np.float32 and w.min() >= 0 and w.max() <= 1 and w[16, 16, 16] > 0.5


def test_roi_crops_keep_world_coordinates(lidc: Path) -> None:
    nodules = read_annotations(lidc / "lidc_0001-0003_nodules.csv")
    for uid in (UID_0002, UID_0003):
        img = read_scan(lidc / "roi" / f"{uid}.mhd")
        rows = nodules[nodules["seriesuid"] == uid]
        hu = extract_patch_hu(img, rows[["coordX", "coordY", "coordZ"]].to_numpy(), P)
        zz, yy, xx = np.meshgrid(*[np.arange(32) - 15.5] * 3, indexing="ij")
        r = np.sqrt(zz**2 + yy**2 + xx**2)
        assert len(rows) == (1 if uid == UID_0002 else 4)
        for h, sc in zip(hu, rows["reader_scores"]):
            core, ring = h[r < 5].mean(), h[(r > 12) & (r < 15.5)].mean()
            print(f"\n{uid[-6:]} scores {sc}: core (r<5 mm) {core:.0f} HU, ring (12-15 mm) {ring:.0f} HU")
            # a nodule (solid or ground-glass) at the centre: denser than aerated lung (about -850 HU)
            assert core > -700 and h.max() > 0 and (h > -1000).mean() > 0.9


def test_patches_match_reference_npz(shared_data: Path, full_scan: sitk.Image, lidc: Path) -> None:
    """The 82 reference locations: same patch as the reference (int16 HU) after the same window.

    The reference was cut from the complete series; for 0002/0003 only cropped ROIs are here, so the
    comparison is on the voxels whose interpolation lies inside the available scan (all voxels for 0001).
    """
    ref = np.load(shared_data / "LIDC-patches-derived" / "lidc_0001-0003_patches_32cube_1mm.npz")
    meta = pd.read_csv(shared_data / "LIDC-patches-derived" / "lidc_0001-0003_patches_32cube_1mm.csv")
    assert len(meta) == 82 and np.allclose(meta[["coordX", "coordY", "coordZ"]].to_numpy(), ref["world_xyz"])
    images = {
        UID_0001: full_scan,
        UID_0002: read_scan(lidc / "roi" / f"{UID_0002}.mhd"),
        UID_0003: read_scan(lidc / "roi" / f"{UID_0003}.mhd"),
    }
    p0 = dataclasses.replace(P, fill_hu=0.0)
    results = []
    for uid, img in images.items():
        cut = PatchCutter(img, P)
        # interior indicator (1 only where all interpolation neighbours are real voxels)
        ind_arr = np.zeros(img.GetSize()[::-1], np.uint8)
        ind_arr[1:-1, 1:-1, 1:-1] = 1
        ind = sitk.GetImageFromArray(ind_arr)
        ind.CopyInformation(img)
        cut_ind = PatchCutter(ind, p0)
        for i in np.where(ref["seriesuid"] == uid)[0]:
            pt = ref["world_xyz"][i]
            mask = cut_ind.cut_hu(pt, require_inside=False) == 1
            if mask.sum() < 512:
                results.append((i, uid, int(mask.sum()), None, None))
                continue
            ours = window_hu(cut.cut_hu(pt, require_inside=False), P.hu_window)[mask]
            theirs = window_hu(ref["images"][i].astype(np.float32), P.hu_window)[mask]
            corr = float(np.corrcoef(ours, theirs)[0, 1])
            results.append((i, uid, int(mask.sum()), corr, float(np.abs(ours - theirs).max() * 1800)))
    compared = [r for r in results if r[3] is not None]
    print(
        f"\nreference npz: {len(compared)} of 82 patches overlap the available scans "
        f"({sum(r[2] == 32**3 for r in compared)} entirely); per-patch correlation:"
    )
    for i, uid, n, corr, dmax in compared:
        print(f"  #{i:2d} {uid[-6:]} {ref['kind'][i]:24s} voxels {n:5d}  r={corr:.5f}  max|dHU|={dmax:.1f}")
    print(f"  not comparable (outside the cropped ROI): {[int(r[0]) for r in results if r[3] is None]}")
    corrs = np.array([r[3] for r in compared])
    print(f"  min r = {corrs.min():.5f}, mean r = {corrs.mean():.5f}")
    assert len(results) == 82 and len(compared) >= 30
    assert corrs.min() > 0.95
    full = [r for r in compared if r[2] == 32**3]
    assert len(full) >= 20 and all(r[3] > 0.9999 and r[4] <= 1.01 for r in full)  # int16 rounding only


def write_dicom_series(img: sitk.Image, folder: Path, series_uid: str) -> None:
    """Write a 3-D int16 HU image as a CT DICOM series (one file per slice) with SimpleITK.

    GDCM's writer leaves the process's LC_CTYPE at "C"; it is put back afterwards, or every later
    ``subprocess.run(text=True)`` in this pytest process would decode as ASCII (unless Python runs in
    UTF-8 mode, as under ``make test``)."""
    import locale

    saved = locale.setlocale(locale.LC_CTYPE)
    try:
        _write_dicom_slices(img, folder, series_uid)
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)


def _write_dicom_slices(img: sitk.Image, folder: Path, series_uid: str) -> None:
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = img.GetDirection()
    orientation = "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7])))
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0020|000d": series_uid + ".1",
            "0020|000e": series_uid,
            "0020|0037": orientation,
            "0020|0032": "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, k)))),
            "0020|0013": str(k + 1),
            "0018|0050": str(img.GetSpacing()[2]),
            "0008|0018": f"{series_uid}.{k + 1}",
        }
        for key, val in tags.items():
            sl.SetMetaData(key, val)
        writer.SetFileName(str(folder / f"{k:04d}.dcm"))
        writer.Execute(sl)


def test_dicom_round_trip_gives_same_patch(full_scan: sitk.Image, tmp_path: Path) -> None:
    idx = np.round(full_scan.TransformPhysicalPointToContinuousIndex(tuple(NODULE_0001))).astype(int)
    crop = full_scan[
        int(idx[0]) - 40 : int(idx[0]) + 40, int(idx[1]) - 40 : int(idx[1]) + 40, int(idx[2]) - 12 : int(idx[2]) + 12
    ]
    uid = "1.2.826.0.1.3680043.8.498.77"
    write_dicom_series(crop, tmp_path / "dicom" / "series", uid)
    index = ScanIndex.build(tmp_path / "dicom")
    assert index.get(uid).kind == "dicom"
    back = read_scan(index.get(uid).path, uid)
    assert back.GetSize() == crop.GetSize()
    assert np.allclose(back.GetOrigin(), crop.GetOrigin(), atol=1e-3)
    assert np.allclose(back.GetSpacing(), crop.GetSpacing(), atol=1e-4)
    a = extract_patches(full_scan, NODULE_0001[None], P)[0]
    b = extract_patches(back, NODULE_0001[None], P)[0]
    print(f"\nDICOM round trip: max |diff| {np.abs(a - b).max():.2e} (window units)")
    assert np.abs(a - b).max() < 1e-4


def test_prepare_on_real_scans_with_bad_inputs(raw_dir: Path, lidc: Path, tmp_path: Path) -> None:
    """Real scans plus every kind of bad input: the run completes and every row is accounted for."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for sub in raw_dir.iterdir():
        (raw / sub.name).symlink_to(sub)  # symlinked folders are followed by the scan index
    bad = raw / "subset7"
    bad.mkdir()
    small = sitk.Image([8, 8, 4], sitk.sitkInt16)
    for name in ("missing", "trunc"):
        sitk.WriteImage(small, str(bad / f"9.9.{name}.mhd"))
    (bad / "9.9.missing.raw").unlink()
    (bad / "9.9.trunc.raw").write_bytes(b"\0" * 10)
    (bad / "9.9.corrupt.mhd").write_text("NDims = 3\n\x00\x01garbage\n")
    table = pd.read_csv(lidc / "annotations_with_malignancy_lidc0001-0003.csv")
    extra = pd.DataFrame(
        [
            {
                "seriesuid": UID_0001,
                "coordX": "abc",
                "coordY": 1,
                "coordZ": 2,
                "diameter_mm": 5,
                "mal_details": "[1, 1]",
            },
            {
                "seriesuid": UID_0001,
                "coordX": np.nan,
                "coordY": 1,
                "coordZ": 2,
                "diameter_mm": 5,
                "mal_details": "[1, 1]",
            },
            {
                "seriesuid": UID_0003,
                "coordX": 300.0,
                "coordY": 0,
                "coordZ": -180,
                "diameter_mm": 5,
                "mal_details": "[1, 1]",
            },
            {"seriesuid": "1.2.3.404", "coordX": 0.0, "coordY": 0, "coordZ": 0, "diameter_mm": 5, "mal_details": "[1]"},
            *[
                {
                    "seriesuid": f"9.9.{n}",
                    "coordX": 0.0,
                    "coordY": 0,
                    "coordZ": 0,
                    "diameter_mm": 5,
                    "mal_details": "[2]",
                }
                for n in ("missing", "trunc", "corrupt")
            ],
            {
                "seriesuid": UID_0002,
                "coordX": 59.818,
                "coordY": 71.683,
                "coordZ": -103.194,
                "diameter_mm": 9.0,
                "mal_details": "[5, 4]",
            },
            {
                "seriesuid": UID_0003,
                "coordX": 73.833,
                "coordY": 74.152,
                "coordZ": -213.628,
                "diameter_mm": 6.0,
                "mal_details": "[2]",
            },
            {
                "seriesuid": UID_0003,
                "coordX": 23.49,
                "coordY": -47.63,
                "coordZ": -172.28,
                "diameter_mm": 8.8,
                "mal_details": "[4, 2]",
            },
        ]
    )
    ann = tmp_path / "ann.csv"
    pd.concat([table, extra], ignore_index=True).to_csv(ann, index=False)
    summary = prepare(raw, ann, tmp_path / "out", P, progress=False)
    store = PatchStore.open(tmp_path / "out")
    rej = pd.read_csv(tmp_path / "out" / "rejects.csv")
    print("\n" + "\n".join(f"  reject row {r.source_row}: {r.reason}" for r in rej.itertuples()))
    n_rows = len(table) + len(extra)
    assert len(store) + len(rej) == n_rows == summary["n_rows"]
    reasons = dict(zip(rej["source_row"], rej["reason"]))
    assert reasons[5] == "bad coordinates: coordX='abc'" and reasons[6] == "bad coordinates: coordX=''"
    assert reasons[7].startswith("outside scan:") and "source row 7" in reasons[7]
    assert reasons[8].startswith("no scan for series uid: 1.2.3.404")
    assert reasons[9].startswith("unreadable scan:") and "9.9.missing.raw is missing" in reasons[9]
    assert reasons[10].startswith("unreadable scan:") and "9.9.trunc.raw: truncated raw data" in reasons[10]
    assert reasons[11].startswith("unreadable scan:") and "9.9.corrupt.mhd: corrupt .mhd header" in reasons[11]
    assert reasons[14].startswith("indeterminate:")
    assert summary["n_malignant"] == 5 and summary["n_benign"] == 1
    man = store.manifest
    assert set(man.loc[man["seriesuid"] == UID_0001, "fold"]) == {3}
    assert set(man.loc[man["seriesuid"] != UID_0001, "fold"]) == {5}
    assert man.groupby("seriesuid")["fold"].nunique().max() == 1
    X, _y, _ = store.arrays([3, 5])
    assert X.shape == (6, 1, 32, 32, 32) and (X[:, 0, 14:18, 14:18, 14:18].mean(axis=(1, 2, 3)) > 0.3).all()


def test_one_read_per_scan_is_the_dominant_cost(lidc: Path) -> None:
    """Informational: cutting all patches of the full scan costs far less than reading it (no timed assert)."""
    t0 = time.perf_counter()
    img = read_scan(lidc / "full" / f"{UID_0001}.mhd")
    t_read = time.perf_counter() - t0
    pts = pd.read_csv(lidc.parent / "LIDC-patches-derived" / "lidc_0001-0003_patches_32cube_1mm.csv")
    pts = pts[pts["seriesuid"] == UID_0001][["coordX", "coordY", "coordZ"]].to_numpy()
    t0 = time.perf_counter()
    out = extract_patches(img, pts, P)
    t_cut = time.perf_counter() - t0
    print(f"\nfull scan: read {t_read:.3f} s, cut {len(pts)} patches {t_cut:.3f} s")
    assert out.shape == (len(pts), 32, 32, 32)
