"""Ingest path on small generated scans: labels, table formats, folds, scan errors, patches, prepare, store."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from naslung.data.folds import assign_folds, hash_fold
from naslung.data.labels import label_from_scores, parse_reader_scores, read_annotations
from naslung.data.patches import OutsideScanError, PatchCutter, extract_patch_hu, extract_patches
from naslung.data.prepare import prepare
from naslung.data.scans import ScanError, ScanIndex, read_scan, world_to_index
from naslung.data.store import PatchStore
from naslung.params import PrepareParams

P = PrepareParams()
UID_A = "1.2.826.0.1.3680043.8.498.1"
UID_B = "1.2.826.0.1.3680043.8.498.2"


def make_scan(
    spacing=(0.7, 0.7, 2.0),
    origin=(-100.0, -90.0, -300.0),
    size=(120, 110, 40),
    direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
    blob_index=(60, 50, 20),
) -> sitk.Image:
    """int16 'lung' at -850 HU with a +40 HU sphere (radius 5 mm) around ``blob_index`` (x, y, z)."""
    img = sitk.Image(list(size), sitk.sitkInt16)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    arr = np.full(size[::-1], -850, np.int16)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    d2 = (
        ((xx - blob_index[0]) * spacing[0]) ** 2
        + ((yy - blob_index[1]) * spacing[1]) ** 2
        + ((zz - blob_index[2]) * spacing[2]) ** 2
    )
    arr[d2 <= 25.0] = 40
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


# ------------------------------------------------------------------ labels


def test_label_rule_and_score_parsing() -> None:
    assert parse_reader_scores("[4, 2, 4]") == parse_reader_scores("4;2;4") == parse_reader_scores("4 2 4") == [4, 2, 4]
    assert parse_reader_scores([4, 0, float("nan"), None, "x"]) == [4]
    assert parse_reader_scores("") == parse_reader_scores(float("nan")) == []
    assert label_from_scores([4, 4, 3]) == 1
    assert label_from_scores([2, 3, 3]) == 0
    assert label_from_scores([4, 2]) is None  # mean exactly 3: indeterminate
    assert label_from_scores([5, 0, 0, 1]) is None  # zeros ignored: mean (5+1)/2 = 3
    assert label_from_scores([0, 0]) is None and label_from_scores([]) is None


def test_read_annotations_formats_and_bad_rows(tmp_path: Path) -> None:
    deeplung = tmp_path / "doctor.csv"
    deeplung.write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm,malignant\n"
        f"{UID_A},1.0,2.0,3.0,5.0,1,4.0,5.0\n"
        f"{UID_A},1.0,2.0,3.0,5.0,0,1.0,2.0,2.0,0.0\n"
    )
    d = read_annotations(deeplung)
    assert d.attrs["format"] == "deeplung_readers"
    assert d["reader_scores"].tolist() == [[4, 5], [1, 2, 2]]
    assert d["nodule_id"].tolist() == [f"{UID_A}-0", f"{UID_A}-1"]

    dl = tmp_path / "dlwpt.csv"
    dl.write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm,mal_bool,mal_details\n"
        f'{UID_A},1.5,abc,3,6.0,True,"[4, 2, 4]"\n'
        f'{UID_B},nan,2,3,6.0,False,"[1, 2]"\n'
        f'{UID_B},1,2,3,6.0,False,"[1, 2]"\n'
    )
    d = read_annotations(dl)
    assert d.attrs["format"] == "dlwpt"
    assert d.loc[0, "error"] == "bad coordinates: coordY='abc'"
    assert "coordX='nan'" in d.loc[1, "error"]
    assert d.loc[2, "error"] == "" and d.loc[2, "reader_scores"] == [1, 2] and d.loc[2, "source_row"] == 3

    luna = tmp_path / "luna.csv"
    luna.write_text(f"seriesuid,coordX,coordY,coordZ,diameter_mm,malignancy\n{UID_A},1,2,3,4.0,4;4;3\n")
    assert read_annotations(luna)["reader_scores"].tolist() == [[4, 4, 3]]
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,x,y\n1,2,3\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*missing required column"):
        read_annotations(bad)


# ------------------------------------------------------------------ folds


def test_folds_from_subsets_or_hash() -> None:
    uids = [f"1.2.3.{i}" for i in range(200)]
    a = assign_folds(uids, 10)
    assert a == assign_folds(list(reversed(uids)), 10)  # order-independent, deterministic
    assert set(a.values()) == set(range(10))
    assert a["1.2.3.7"] == hash_fold("1.2.3.7", 10)
    assert assign_folds({"u1": 3, "u2": 7}, 10) == {"u1": 3, "u2": 7}
    mixed = assign_folds({"u1": 3, "u2": None}, 10)  # mixed layout: the hash for all
    assert mixed == {"u1": hash_fold("u1", 10), "u2": hash_fold("u2", 10)}
    assert assign_folds({"u1": 3}, 10, "hash") == {"u1": hash_fold("u1", 10)}


# ------------------------------------------------------------------ scans


def write_mhd(img: sitk.Image, path: Path, compress: bool = False) -> Path:
    sitk.WriteImage(img, str(path), compress)
    return path


def test_scan_errors_name_the_file(tmp_path: Path) -> None:
    img = make_scan(size=(20, 20, 10))
    good = write_mhd(img, tmp_path / "good.mhd")
    assert read_scan(good).GetSize() == (20, 20, 10)

    missing = write_mhd(img, tmp_path / "missing.mhd")
    (tmp_path / "missing.raw").unlink()
    with pytest.raises(ScanError, match=r"missing\.mhd: data file missing\.raw is missing"):
        read_scan(missing)

    trunc = write_mhd(img, tmp_path / "trunc.mhd")
    raw = tmp_path / "trunc.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(ScanError, match=r"trunc\.raw: truncated raw data \(1000 bytes, expected 8000"):
        read_scan(trunc)

    corrupt = tmp_path / "corrupt.mhd"
    corrupt.write_text("ObjectType = Image\nNDims = 3\nthis line is garbage\nElementDataFile = good.raw\n")
    with pytest.raises(ScanError, match=r"corrupt\.mhd: corrupt \.mhd header \(line 3"):
        read_scan(corrupt)
    nodims = tmp_path / "nodims.mhd"
    nodims.write_text("ObjectType = Image\nNDims = 3\nElementType = MET_SHORT\nElementDataFile = good.raw\n")
    with pytest.raises(ScanError, match=r"nodims\.mhd: corrupt \.mhd header \(no 'DimSize'"):
        read_scan(nodims)

    zr = write_mhd(img, tmp_path / "z.mhd", compress=True)
    zraw = tmp_path / "z.zraw"
    zraw.write_bytes(zraw.read_bytes()[:50])
    with pytest.raises(ScanError, match=r"z\.mhd: unreadable scan"):
        read_scan(zr)


def test_scan_index_subsets(tmp_path: Path) -> None:
    img = make_scan(size=(10, 10, 5))
    (tmp_path / "subset4").mkdir()
    write_mhd(img, tmp_path / "subset4" / f"{UID_A}.mhd")
    write_mhd(img, tmp_path / f"{UID_B}.mhd")
    idx = ScanIndex.build(tmp_path)
    assert idx.get(UID_A).subset == 4 and idx.get(UID_B).subset is None and not idx.uses_subsets


# ------------------------------------------------------------------ patches


@pytest.mark.parametrize(
    "direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1), (0, 1, 0, 1, 0, 0, 0, 0, -1)]
)
def test_patch_is_centred_on_world_point(direction: tuple) -> None:
    img = make_scan(direction=direction, blob_index=(60, 50, 20))
    world = np.array(img.TransformIndexToPhysicalPoint((60, 50, 20)))
    assert np.allclose(world_to_index(img, world[None])[0], (60, 50, 20))
    hu = extract_patch_hu(img, world[None], P)[0]
    assert hu.shape == (32, 32, 32) and hu.dtype == np.float32
    c = hu[15:17, 15:17, 15:17]
    assert c.min() > 0  # the 5 mm blob (40 HU) fills the centre
    assert hu[0, 0, 0] == pytest.approx(-850, abs=1)  # 15 mm away: lung
    # symmetric about the centre in every axis (voxel centres at +-0.5 .. +-15.5 mm)
    blob = hu > -400
    for axis in range(3):
        assert np.array_equal(blob, np.flip(blob, axis))


def test_patch_window_fill_and_outside() -> None:
    img = make_scan(size=(60, 60, 20), blob_index=(2, 30, 10))
    edge = np.array(img.TransformIndexToPhysicalPoint((2, 30, 10)))
    w = extract_patches(img, edge[None], P)[0]
    assert w.min() >= 0 and w.max() <= 1
    hu = extract_patch_hu(img, edge[None], P)[0]
    assert hu[:, :, 0].max() == pytest.approx(P.fill_hu)  # x-side beyond the scan is air
    assert w[16, 16, 0] == pytest.approx((P.fill_hu + 1200) / 1800, abs=1e-6)
    outside = edge + np.array([-30.0, 0, 0])
    with pytest.raises(OutsideScanError, match="outside the scan extent"):
        PatchCutter(img, P).cut(outside)
    # the crop read before resampling is small, not the whole scan
    region = PatchCutter(img, P).crop_region(np.array(img.TransformIndexToPhysicalPoint((30, 30, 10))))
    assert region is not None and region[1][0] < 60


# ------------------------------------------------------------------ prepare + store


def test_prepare_every_row_in_manifest_or_rejects(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for k, uid in enumerate((UID_A, UID_B)):
        (raw / f"subset{k}").mkdir(parents=True)
        write_mhd(make_scan(size=(80, 80, 30), blob_index=(40, 40, 15)), raw / f"subset{k}" / f"{uid}.mhd")
    broken = "1.2.826.0.1.3680043.8.498.9"
    (raw / "subset2").mkdir()
    write_mhd(make_scan(size=(10, 10, 5)), raw / "subset2" / f"{broken}.mhd")
    (raw / "subset2" / f"{broken}.raw").unlink()
    c = make_scan(size=(80, 80, 30)).TransformIndexToPhysicalPoint((40, 40, 15))
    rows = [
        (UID_A, *c, 8.0, "[4, 5, 4]"),
        (UID_A, *c, 6.0, "[2, 1]"),
        (UID_B, *c, 12.0, "[5, 5]"),
        (UID_B, c[0], "abc", c[2], 7.0, "[4, 4]"),  # text coordinate
        (UID_B, c[0], "nan", c[2], 7.0, "[4, 4]"),  # NaN coordinate
        (UID_B, c[0] + 500, c[1], c[2], 7.0, "[1, 1]"),  # outside the scan
        ("9.9.9", *c, 7.0, "[1, 2]"),  # no scan
        (broken, *c, 7.0, "[1, 2]"),  # unreadable (missing .raw)
        (UID_A, *c, 7.0, "[4, 2]"),  # indeterminate
        (UID_A, *c, 7.0, "[]"),  # unrated
        (UID_B, *c, 4.0, "[1, 1, 2]"),
    ]
    ann = tmp_path / "ann.csv"
    pd.DataFrame(rows, columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "mal_details"]).to_csv(
        ann, index=False
    )
    summary = prepare(raw, ann, tmp_path / "out", P, progress=False)
    man = pd.read_csv(tmp_path / "out" / "manifest.csv")
    rej = pd.read_csv(tmp_path / "out" / "rejects.csv")
    assert len(man) + len(rej) == len(rows) == summary["n_rows"]
    assert man["label"].tolist() == [1, 0, 1, 0] and man["fold"].tolist() == [0, 0, 1, 1]
    assert man["patch_index"].tolist() == [0, 1, 2, 3]
    assert man["reader_scores"].tolist() == ["4;5;4", "2;1", "5;5", "1;1;2"]
    assert set(man["scan_path"]) == {f"subset0/{UID_A}.mhd", f"subset1/{UID_B}.mhd"}
    reasons = dict(zip(rej["source_row"], rej["reason"]))
    assert reasons[4] == "bad coordinates: coordY='abc'"
    assert reasons[5].startswith("bad coordinates: coordY='nan'")
    assert reasons[6].startswith("outside scan:") and f"{UID_B}.mhd" in reasons[6] and "source row 6" in reasons[6]
    assert reasons[7].startswith("no scan for series uid: 9.9.9")
    assert reasons[8].startswith("unreadable scan:") and f"{broken}.raw is missing" in reasons[8]
    assert reasons[9].startswith("indeterminate:") and reasons[10].startswith("unrated:")
    assert summary["rejected_by_reason"] == {
        "bad coordinates": 2,
        "indeterminate": 1,
        "no scan for series uid": 1,
        "outside scan": 1,
        "unreadable scan": 1,
        "unrated": 1,
    }
    metrics = json.loads((tmp_path / "out" / "prepare_metrics.json").read_text())
    assert metrics["n_malignant"] == 2 and metrics["n_benign"] == 2
    assert metrics["per_fold"]["0"] == {"n": 2, "malignant": 1, "benign": 1, "n_series": 1}
    assert metrics["diameter_baseline"]["accuracy"] == 1.0  # 8,12 malignant vs 6,4 benign

    store = PatchStore.open(tmp_path / "out")
    assert store.patches.shape == (4, 32, 32, 32) and isinstance(store.patches, np.memmap)
    X, y, ids = store.arrays([1])
    assert X.shape == (2, 1, 32, 32, 32) and X.dtype == np.float32 and y.dtype == np.int64
    assert y.tolist() == [1, 0] and ids.tolist() == [f"{UID_B}-0", f"{UID_B}-4"]
    assert X[0, 0, 16, 16, 16] > 0.5  # blob (40 HU -> 0.69) at the centre
    # deterministic: a second run writes identical files
    prepare(raw, ann, tmp_path / "out2", P, progress=False)
    for f in ("patches.npy", "manifest.csv", "rejects.csv", "prepare_metrics.json"):
        assert (tmp_path / "out" / f).read_bytes() == (tmp_path / "out2" / f).read_bytes(), f


def test_prepare_hash_folds_without_subsets(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    write_mhd(make_scan(size=(60, 60, 20), blob_index=(30, 30, 10)), raw / f"{UID_A}.mhd")
    c = make_scan(size=(60, 60, 20)).TransformIndexToPhysicalPoint((30, 30, 10))
    ann = tmp_path / "a.csv"
    ann.write_text(f"seriesuid,coordX,coordY,coordZ,diameter_mm,reader_scores\n{UID_A},{c[0]},{c[1]},{c[2]},5,2;2\n")
    p = dataclasses.replace(P, n_folds=7)
    prepare(raw, ann, tmp_path / "out", p, progress=False)
    assert PatchStore.open(tmp_path / "out").manifest["fold"].tolist() == [hash_fold(UID_A, 7)]
