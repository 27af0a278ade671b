"""Embedded default dataset: a deterministic synthetic chest-CT set in the LUNA16 layout.

``synthesize(out_dir, params)`` writes::

    out_dir/subset0..subset9/<seriesuid>.mhd + .raw   uncompressed MetaImage, int16 HU, identity direction
    out_dir/annotations.csv                           LUNA16: seriesuid,coordX,coordY,coordZ,diameter_mm
    out_dir/annotations_with_malignancy.csv           dlwpt: ... ,mal_bool,mal_details ("[4, 2, 4]")
    out_dir/synth_truth.csv                           hidden ground truth per nodule (latent class, morphology)
    out_dir/synth_summary.json                        counts, diameter-only baseline, seed, generator version

Coordinates are world mm (x, y, z) of the nodule centres; diameters in mm.

Crops (``synth.crop_margin_mm``): each scan is planned on its whole field of view (so the nodule table is
the same), then rendered only on the sub-grid of voxels within the margin of the bounding box of its nodule
centres (:func:`render_grid`; same spacing, voxel centres on the full grid, origin moved so world
coordinates stay valid), like the real LIDC crops in ``../shared/data``. Every voxel of the crop gets the
value it has in the uncropped scan: rendering is a function of world position, and per-voxel random draws
are made at the full grid's shape and cut (:class:`_CropDraws`); only the few voxels next to the crop's
faces differ (the point-spread blur sees the edge there). So a patch whose read region lies inside the
crop is the same with and without it (``tests/data/test_synth_crop.py``).

Determinism: scan ``i`` draws everything from two PCG64 streams seeded by ``SeedSequence([seed, i, k])``
(k = 0: layout and nodules, including the seed of the parenchyma texture and emphysema, which are
evaluated on a lattice fixed in world coordinates; k = 1: vessels and noise), so scans are independent of
each other and of the order they are made in, and the nodule table (:func:`nodule_table`) is identical with or without
rendering. Volumes are rounded to int16 at the end; no multithreaded reductions are used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from naslung.data.baseline import diameter_baseline
from naslung.data.synth_anatomy import (
    BLOOD_HU,
    ScanGeometry,
    ScanLayout,
    draw_vessels,
    finish,
    render_background,
    sample_layout,
    sample_vessel_tree,
)
from naslung.data.synth_nodules import NoduleSpec, place_nodules, render_nodule, sample_nodule
from naslung.params import SynthParams

GENERATOR_VERSION = "2"
"""Bump when the generated data changes for the same seed."""
UID_ROOT = "1.3.6.1.4.1.14519.5.2.1.6279.9999."
"""Synthetic series-UID root: LIDC/LUNA16's root with a '9999' branch that no real series uses."""
N_SUBSETS = 10
LUNA_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
MALIGNANCY_COLUMNS = [*LUNA_COLUMNS, "mal_bool", "mal_details"]


@dataclass(frozen=True)
class SynthScan:
    """One scan's layout and its placed nodules (no voxels)."""

    layout: ScanLayout
    nodules: tuple[NoduleSpec, ...]


def series_uid(seed: int, index: int) -> str:
    """Deterministic LUNA16-looking series UID for scan ``index`` of the dataset with ``seed``."""
    digest = hashlib.sha256(f"naslung-synth:{seed}:{index}".encode()).hexdigest()
    return UID_ROOT + str(int(digest, 16))[:30].lstrip("0")


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index, stream])))


def plan_scan(seed: int, index: int, nodules_per_scan: tuple[int, int]) -> SynthScan:
    """Layout and nodules of scan ``index`` (layout stream only; cheap, no voxels)."""
    rng = _rng(seed, index, 0)
    layout = sample_layout(rng, index, series_uid(seed, index), N_SUBSETS)
    lo, hi = nodules_per_scan
    n = int(rng.integers(lo, hi + 1))
    nodules = [sample_nodule(rng, layout, j) for j in range(n)]
    return SynthScan(layout=layout, nodules=tuple(place_nodules(rng, layout, nodules)))


def plan(params: SynthParams) -> Iterator[SynthScan]:
    """All scans of the dataset, in index order."""
    for i in range(params.n_scans):
        yield plan_scan(params.seed, i, tuple(params.nodules_per_scan))  # type: ignore[arg-type]


def render_grid(scan: SynthScan, crop_margin_mm: float | None = None) -> ScanGeometry:
    """The grid scan ``scan`` is rendered on: its whole field of view (``crop_margin_mm`` None, or a scan
    without nodules), else the voxels whose centres lie within ``crop_margin_mm`` of the bounding box of
    its nodule centres (clipped to the field of view; same spacing, origin = world of the first voxel)."""
    g = scan.layout.geometry
    if crop_margin_mm is None or not scan.nodules:
        return g
    centres = np.asarray([n.centre_xyz for n in scan.nodules], dtype=np.float64)
    box = g.box_slices(centres.min(axis=0) - crop_margin_mm, centres.max(axis=0) + crop_margin_mm)
    if box is None:  # cannot happen: nodule centres lie inside the field of view
        return g
    start = (box[2].start, box[1].start, box[0].start)
    size = tuple(sl.stop - sl.start for sl in (box[2], box[1], box[0]))
    origin = tuple(float(o + s * i) for o, s, i in zip(g.origin_xyz, g.spacing_xyz, start))
    return ScanGeometry(size_xyz=size, spacing_xyz=g.spacing_xyz, origin_xyz=origin)  # type: ignore[arg-type]


class _CropDraws:
    """A random generator for a crop: a draw whose ``size`` is the crop's (z, y, x) shape is made at the full
    grid's shape and cut to the crop, so the stream, and the value drawn for every voxel, is the same as
    without the crop; any other draw is passed through unchanged."""

    def __init__(self, rng: np.random.Generator, full: ScanGeometry, crop: ScanGeometry) -> None:
        self._rng = rng
        self._full_shape = full.shape_zyx
        self._crop_shape = crop.shape_zyx
        off = [round((c - f) / s) for c, f, s in zip(crop.origin_xyz, full.origin_xyz, full.spacing_xyz)]
        n = crop.size_xyz
        self._cut = tuple(slice(off[a], off[a] + n[a]) for a in (2, 1, 0))

    def _is_crop(self, size: Any) -> bool:
        return size is not None and tuple(np.atleast_1d(size).tolist()) == self._crop_shape

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._rng, name)
        if not callable(attr):
            return attr

        def draw(*args: Any, **kwargs: Any) -> Any:
            if self._is_crop(kwargs.get("size")):
                return attr(*args, **{**kwargs, "size": self._full_shape})[self._cut]
            if args and self._is_crop(args[0]) and isinstance(args[0], tuple):
                return attr(self._full_shape, *args[1:], **kwargs)[self._cut]
            return attr(*args, **kwargs)

        return draw


def render_scan(scan: SynthScan, seed: int, crop_margin_mm: float | None = None) -> np.ndarray:
    """Voxels of one planned scan on :func:`render_grid`: int16 HU, numpy order (z, y, x)."""
    full = scan.layout
    grid = render_grid(scan, crop_margin_mm)
    layout = full if grid == full.geometry else replace(full, geometry=grid)
    rng = _rng(seed, layout.index, 1)
    vessels = sample_vessel_tree(rng, full)  # drawn against the whole field of view, as without a crop
    background, lung_occ, content = render_background(layout)
    draw_vessels(content, layout.geometry, vessels)
    for nod in scan.nodules:
        render_nodule(content, layout.geometry, nod)
    background += (content - background) * lung_occ
    del content, lung_occ
    noise_rng: Any = rng if layout is full else _CropDraws(rng, full.geometry, grid)
    return finish(background, layout, noise_rng)


def scan_relpath(layout: ScanLayout) -> str:
    """Path of the scan's ``.mhd`` relative to the dataset root (LUNA16 layout)."""
    return f"subset{layout.subset}/{layout.seriesuid}.mhd"


def write_scan(volume: np.ndarray, layout: ScanLayout, out_dir: Path, grid: ScanGeometry | None = None) -> Path:
    """Write an int16 (z, y, x) volume as uncompressed MetaImage (.mhd + .raw) with SimpleITK, on ``grid``
    (default: the layout's whole field of view)."""
    import SimpleITK as sitk

    geometry = grid or layout.geometry
    path = out_dir / scan_relpath(layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(volume)
    img.SetSpacing(geometry.spacing_xyz)
    img.SetOrigin(geometry.origin_xyz)
    sitk.WriteImage(img, str(path), useCompression=False)
    return path


def _rows(scans: list[SynthScan]) -> pd.DataFrame:
    rows = []
    for scan in scans:
        lay = scan.layout
        for nod in scan.nodules:
            rows.append(
                {
                    "seriesuid": lay.seriesuid,
                    "coordX": nod.centre_xyz[0],
                    "coordY": nod.centre_xyz[1],
                    "coordZ": nod.centre_xyz[2],
                    "diameter_mm": nod.diameter_mm,
                    "mal_bool": nod.label == 1,
                    "mal_details": str(list(nod.reader_scores)),
                    "label": pd.NA if nod.label is None else nod.label,
                    "mean_score": round(sum(nod.reader_scores) / len(nod.reader_scores), 4),
                    "n_readers": len(nod.reader_scores),
                    "subset": lay.subset,
                    "scan_index": lay.index,
                    "nodule_index": nod.nodule_index,
                    "latent_malignant": nod.latent_malignant,
                    "severity": nod.severity,
                    "appearance": nod.appearance,
                    "texture": nod.texture,
                    "calcification": nod.calcification,
                    "n_spicules": int(nod.spicule_lengths.size),
                    "lobulation": round(nod.lobulation, 4),
                    "edge_mm": round(nod.edge_mm, 4),
                    "attachment": nod.attachment,
                    "spiculation_score": nod.spiculation_score,
                    "lobulation_score": nod.lobulation_score,
                    "margin_score": nod.margin_score,
                    "sphericity_score": nod.sphericity_score,
                    "texture_score": nod.texture_score,
                    "kernel": lay.kernel,
                    "emphysema": round(lay.emphysema, 4),
                    "contrast": lay.blood_hu > BLOOD_HU,
                    "slice_mm": lay.geometry.spacing_xyz[2],
                    "scan_path": scan_relpath(lay),
                }
            )
    df = pd.DataFrame(rows)
    if not df.empty:
        df["label"] = df["label"].astype("Int64")
    return df


def nodule_table(params: SynthParams) -> pd.DataFrame:
    """Every synthetic nodule with its annotation columns and hidden truth, without rendering voxels.

    Columns: the dlwpt annotation columns (world mm), ``label`` (0/1, <NA> when excluded),
    ``mean_score``, ``subset``, ``scan_index``, ``nodule_index`` and the latent/morphology truth.
    """
    return _rows(list(plan(params)))


def summarize(table: pd.DataFrame, params: SynthParams) -> dict:
    """Counts, label balance and the diameter-only baseline of a nodule table."""
    labelled = table.dropna(subset=["label"])
    baseline = diameter_baseline(labelled["diameter_mm"].to_numpy(), labelled["label"].to_numpy(dtype=np.int64))
    per_subset = {
        str(k): {
            "n_scans": int(g["seriesuid"].nunique()),
            "n_nodules": len(g),
            "n_malignant": int((g["label"] == 1).sum()),
            "n_benign": int((g["label"] == 0).sum()),
        }
        for k, g in table.groupby("subset")
    }
    return {
        "generator": "naslung.data.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": int(params.seed),
        "n_scans": int(params.n_scans),
        "nodules_per_scan": list(params.nodules_per_scan),
        "n_nodules": len(table),
        "n_labelled": len(labelled),
        "n_malignant": int((labelled["label"] == 1).sum()),
        "n_benign": int((labelled["label"] == 0).sum()),
        "n_excluded": int(table["label"].isna().sum()),
        "diameter_baseline": baseline,
        "per_subset": per_subset,
    }


def _render_job(
    seed: int, index: int, nodules_per_scan: tuple[int, int], out_dir: str, crop_margin_mm: float | None = None
) -> int:
    """Plan, render and write scan ``index``; returns the voxel bytes written (runs in a worker)."""
    scan = plan_scan(seed, index, nodules_per_scan)
    volume = render_scan(scan, seed, crop_margin_mm)
    write_scan(volume, scan.layout, Path(out_dir), render_grid(scan, crop_margin_mm))
    return int(volume.nbytes)


def synthesize(out_dir: str | Path, params: SynthParams, *, render: bool = True, progress: bool = True) -> dict:
    """Write the synthetic LUNA16-layout dataset to ``out_dir`` and return its summary.

    Scans are rendered by ``params.workers`` processes (each scan from its own random streams, so the
    files do not depend on the number of workers). With ``render=False`` only the tables and the
    summary are written (no scans): fast, and the tables are the same.
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from tqdm import tqdm

    if params.n_scans < 1:
        raise ValueError(f"synthesize: n_scans must be >= 1, got {params.n_scans}")
    lo, hi = params.nodules_per_scan
    if not 1 <= lo <= hi:
        raise ValueError(f"synthesize: nodules_per_scan must be 1 <= lo <= hi, got {params.nodules_per_scan}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scans = list(plan(params))
    raw_bytes = 0
    if render:
        npr = (int(lo), int(hi))
        bar = tqdm(total=params.n_scans, desc="synth", unit="scan", disable=not progress)
        if params.workers > 1 and params.n_scans > 1:
            with ProcessPoolExecutor(min(params.workers, params.n_scans), mp_context=get_context("spawn")) as pool:
                jobs = [
                    pool.submit(_render_job, params.seed, i, npr, str(out), params.crop_margin_mm)
                    for i in range(params.n_scans)
                ]
                for job in jobs:
                    raw_bytes += job.result()
                    bar.update()
        else:
            for i in range(params.n_scans):
                raw_bytes += _render_job(params.seed, i, npr, str(out), params.crop_margin_mm)
                bar.update()
        bar.close()
    table = _rows(scans)
    if table.empty:
        raise ValueError(f"synthesize: no nodules generated (n_scans={params.n_scans})")
    table[LUNA_COLUMNS].to_csv(out / "annotations.csv", index=False)
    table[MALIGNANCY_COLUMNS].to_csv(out / "annotations_with_malignancy.csv", index=False)
    table.drop(columns=["mal_bool"]).to_csv(out / "synth_truth.csv", index=False)
    summary = summarize(table, params)
    summary["rendered"] = bool(render)
    if params.crop_margin_mm is not None:  # (the default's summary stays byte-identical)
        summary["crop_margin_mm"] = float(params.crop_margin_mm)
    summary["raw_bytes"] = int(raw_bytes)
    (out / "synth_summary.json").write_text(encoding="utf-8", data=json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
