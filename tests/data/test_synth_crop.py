"""Crop mode of the synthetic dataset (``synth.crop_margin_mm``): each scan cut to the bounding box of its
nodule centres +- a margin, world coordinates kept (like the real LIDC crops in ../shared/data).

The nodule table must not change with the crop, and ``naslung prepare`` must cut the very same patches
from the cropped scans as from the whole ones when the margin covers a patch's read region.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from naslung.data.prepare import MANIFEST_FILE, PATCHES_FILE, prepare
from naslung.data.synth import plan, render_grid, synthesize
from naslung.params import PrepareParams, SynthParams

FULL = SynthParams(n_scans=2, nodules_per_scan=(3, 5), seed=7, workers=1)
CROPPED = dataclasses.replace(FULL, crop_margin_mm=40.0)
TABLES = ("annotations.csv", "annotations_with_malignancy.csv", "synth_truth.csv")


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synth_crop")
    full, cropped = root / "full", root / "cropped"
    synthesize(full, FULL, progress=False)
    synthesize(cropped, CROPPED, progress=False)
    for raw in (full, cropped):
        prepare(raw, raw / "annotations_with_malignancy.csv", raw / "store", PrepareParams(), progress=False)
    return full, cropped


def test_nodule_table_does_not_change_with_the_crop(both: tuple[Path, Path]) -> None:
    full, cropped = both
    for name in TABLES:
        assert (full / name).read_bytes() == (cropped / name).read_bytes(), name


def test_cropped_scans_are_smaller_keep_world_coordinates_and_hold_their_nodules(both: tuple[Path, Path]) -> None:
    full, cropped = both
    table = pd.read_csv(cropped / "annotations.csv")
    for scan in plan(CROPPED):
        rel = f"subset{scan.layout.subset}/{scan.layout.seriesuid}.mhd"
        a, b = sitk.ReadImage(str(full / rel)), sitk.ReadImage(str(cropped / rel))
        assert b.GetSpacing() == pytest.approx(a.GetSpacing())
        assert np.prod(b.GetSize()) < np.prod(a.GetSize())
        grid = render_grid(scan, CROPPED.crop_margin_mm)
        assert b.GetSize() == grid.size_xyz and b.GetOrigin() == pytest.approx(grid.origin_xyz, abs=1e-6)
        # the crop is a sub-grid of the whole scan: its first voxel is a voxel of the whole scan
        offset = np.asarray(a.TransformPhysicalPointToContinuousIndex(b.GetOrigin()))
        assert np.allclose(offset, np.rint(offset), atol=1e-6) and (offset >= 0).all()
        for _, row in table[table["seriesuid"] == scan.layout.seriesuid].iterrows():
            point = (row["coordX"], row["coordY"], row["coordZ"])
            idx_full = np.asarray(a.TransformPhysicalPointToContinuousIndex(point))
            idx_crop = np.asarray(b.TransformPhysicalPointToContinuousIndex(point))
            assert np.allclose(idx_full - idx_crop, offset, atol=1e-6)  # the same world point
            # at least the margin (40 mm) on every side of the centre, or up to the scan's own edge
            lo = np.asarray(b.GetSpacing()) * idx_crop
            hi = np.asarray(b.GetSpacing()) * (np.asarray(b.GetSize()) - 1 - idx_crop)
            lo_full = np.asarray(a.GetSpacing()) * idx_full
            hi_full = np.asarray(a.GetSpacing()) * (np.asarray(a.GetSize()) - 1 - idx_full)
            step = np.asarray(b.GetSpacing())
            assert (lo >= np.minimum(40.0, lo_full) - step).all() and (hi >= np.minimum(40.0, hi_full) - step).all()


def test_prepare_cuts_identical_patches_from_cropped_and_whole_scans(both: tuple[Path, Path]) -> None:
    full, cropped = both
    man_full = pd.read_csv(full / "store" / MANIFEST_FILE)
    man_crop = pd.read_csv(cropped / "store" / MANIFEST_FILE)
    assert len(man_full) > 0
    pd.testing.assert_frame_equal(man_full, man_crop)
    p_full = np.load(full / "store" / PATCHES_FILE)
    p_crop = np.load(cropped / "store" / PATCHES_FILE)
    assert p_full.shape == p_crop.shape == (len(man_full), 32, 32, 32)
    diff = np.abs(p_full.astype(np.float64) - p_crop.astype(np.float64))
    print(f"{len(man_full)} patches, max |diff| {diff.max():.3g}, voxels differing {(diff > 0).sum()}")
    assert np.array_equal(p_full, p_crop)


def test_crop_margin_is_validated() -> None:
    from naslung.params import ParamsError, load_params

    with pytest.raises(ParamsError, match=r"synth\.crop_margin_mm"):
        load_params(Path(__file__).resolve().parents[2] / "params.yaml", {"synth.crop_margin_mm": 5})
