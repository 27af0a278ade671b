"""The scoring path's vectorised cutter (:class:`MultiPointCutter`) against the data spine's
:class:`PatchCutter` (one ``sitk.Resample`` per point) on the real LIDC scans in ../shared/data: the same
HU values within 1 HU, the same out-of-scan errors, on the full scan (0.70 x 0.70 x 2.5 mm: anisotropic),
the ROI crops, a permuted / flipped copy (non-identity direction) and an oblique one (fallback path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from naslung.data.patches import MultiPointCutter, OutsideScanError, PatchCutter
from naslung.params import PrepareParams

P = PrepareParams()
HU_TOL = 1.0


def _scan(shared: Path, kind: str, which: int = 0) -> sitk.Image:
    files = sorted((shared / "LIDC-CT-concept-to-clinic" / kind).glob("*.mhd"))
    if len(files) <= which:
        pytest.skip(f"no {kind} scan #{which} in {shared}")
    return sitk.ReadImage(str(files[which]))


def _points(image: sitk.Image, n: int, seed: int, edge: bool = True) -> np.ndarray:
    """World points (n, 3) mm at random continuous indices over the whole voxel extent [-0.5, size - 0.5]
    (so patches hang over every face), plus the 8 extreme corners when ``edge``."""
    rng = np.random.default_rng(seed)
    size = np.array(image.GetSize(), dtype=float)
    idx = rng.uniform(-0.5, size - 0.5, size=(n, 3))
    if edge:
        corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], float) * (size - 1)
        idx = np.concatenate([idx, corners + np.where(corners > 0, 0.49, -0.49)])
    return np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(map(float, i))) for i in idx])


def _reference(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    cutter = PatchCutter(image, P)
    return np.stack([cutter.cut_hu(pt) for pt in points])


def _assert_same(image: sitk.Image, points: np.ndarray, chunk: int = 64) -> MultiPointCutter:
    cutter = MultiPointCutter(image, P, chunk=chunk)
    got = cutter.cut_hu(points)
    ref = _reference(image, points)
    assert got.shape == ref.shape == (len(points), 32, 32, 32) and got.dtype == np.float32
    diff = np.abs(got.astype(np.float64) - ref)
    assert diff.max() <= HU_TOL, f"max |dHU| {diff.max():.4f} at patch {np.unravel_index(diff.argmax(), diff.shape)}"
    # windowed patches as PatchCutter.cut gives them
    win = cutter.cut(points[:4])
    assert np.abs(win - np.stack([PatchCutter(image, P).cut(pt) for pt in points[:4]])).max() <= HU_TOL / 1800
    return cutter


def test_full_scan_anisotropic_same_as_patchcutter(shared_data: Path) -> None:
    image = _scan(shared_data, "full")
    assert image.GetSpacing()[2] == pytest.approx(2.5)  # 2.5 mm slices
    cutter = _assert_same(image, _points(image, 24, seed=1), chunk=7)  # several chunks, one short
    assert cutter.aligned and tuple(cutter.block) == (47, 47, 15)


@pytest.mark.parametrize("which", [0, 1])
def test_roi_scans_same_as_patchcutter_near_every_edge(shared_data: Path, which: int) -> None:
    image = _scan(shared_data, "roi", which)
    _assert_same(image, _points(image, 24, seed=2 + which))


def _permuted_flipped(image: sitk.Image) -> sitk.Image:
    """The same voxels in the same world places, stored with image axes (y, -z, x): direction
    [[0, 0, 1], [1, 0, 0], [0, -1, 0]] (column a = world direction of image axis a)."""
    arr = sitk.GetArrayFromImage(image)  # (z, y, x)
    new = np.ascontiguousarray(np.transpose(arr, (2, 0, 1))[:, ::-1, :])  # numpy (x, -z, y) = index (y, -z, x)
    out = sitk.GetImageFromArray(new)
    sx, sy, sz = image.GetSpacing()
    out.SetSpacing((sy, sz, sx))
    out.SetDirection((0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    out.SetOrigin(image.TransformIndexToPhysicalPoint((0, 0, arr.shape[0] - 1)))
    return out


def test_permuted_flipped_direction(shared_data: Path) -> None:
    image = _scan(shared_data, "roi", 0)
    crop = sitk.RegionOfInterest(image, [120, 110, 40], [60, 70, 5])  # anisotropic: 2.5 mm slices
    turned = _permuted_flipped(crop)
    pts = _points(crop, 16, seed=5)
    # the construction is right: both images hold the same voxel at the same world point
    probe = crop.TransformIndexToPhysicalPoint((7, 11, 3))
    assert crop[7, 11, 3] == turned[turned.TransformPhysicalPointToIndex(probe)]
    np.testing.assert_allclose(_reference(turned, pts[:3]), _reference(crop, pts[:3]), atol=1e-3)
    cutter = _assert_same(turned, pts)
    assert cutter.aligned and list(cutter.axis_world) == [1, 2, 0]


def test_oblique_direction_falls_back_to_patchcutter(shared_data: Path) -> None:
    image = sitk.RegionOfInterest(_scan(shared_data, "roi", 1), [30, 30, 20], [50, 50, 20])
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    cutter = _assert_same(image, _points(image, 3, seed=6, edge=False))
    assert not cutter.aligned


def test_outside_points_error_like_patchcutter(shared_data: Path) -> None:
    image = _scan(shared_data, "roi", 0)
    old, new = PatchCutter(image, P), MultiPointCutter(image, P)
    size = np.array(image.GetSize(), float)
    inside = image.TransformContinuousIndexToPhysicalPoint((10.0, 10.0, 10.0))
    beyond = image.TransformContinuousIndexToPhysicalPoint(tuple(map(float, size - 0.5 + 0.01)))  # just outside
    far = (1e4, 0.0, 0.0)
    pts = np.array([inside, beyond, far, (np.nan, 0.0, 0.0)], float)
    errors = new.errors(pts)
    assert errors[0] is None
    for pt, err in zip(pts[1:], errors[1:]):
        with pytest.raises(OutsideScanError) as want:
            old.cut_hu(pt)
        assert isinstance(err, OutsideScanError) and str(err) == str(want.value)
    with pytest.raises(OutsideScanError, match="outside the scan extent"):
        new.cut_hu(pts[:2])
    # require_inside=False: what overlaps the scan, fill_hu elsewhere, as PatchCutter gives it
    loose = new.cut_hu(pts[1:3], require_inside=False)
    np.testing.assert_allclose(loose[0], old.cut_hu(pts[1], require_inside=False), atol=HU_TOL)
    assert (loose[1] == P.fill_hu).all() and (loose[0] == P.fill_hu).any() and (loose[0] != P.fill_hu).any()
    with pytest.raises(OutsideScanError, match="not finite"):
        new.cut_hu(pts[3:], require_inside=False)


def test_iter_cut_chunks_match_one_pass(shared_data: Path) -> None:
    image = _scan(shared_data, "roi", 1)
    pts = _points(image, 10, seed=7, edge=False)
    cutter = MultiPointCutter(image, P, chunk=4)
    parts = list(cutter.iter_cut(pts))
    assert [len(p) for p in parts] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(parts), MultiPointCutter(image, P, chunk=64).cut(pts))
