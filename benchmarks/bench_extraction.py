"""Patch extraction cost per scan relative to the floor (reading that scan's voxels once), old vs new cutter.

For each scan and each points-per-scan count N (``--points``, default 20 and 20,000: random points in the
lungs, i.e. voxels of lung-like HU -950..-400 in the central part of the scan, jittered by up to half a
voxel): ``t_read`` = time of ``read_scan`` (the whole volume into memory, the unavoidable floor) and
``t_extract`` = ``read_scan`` + cutting N windowed 32^3 patches, with

- ``old``: :class:`naslung.data.patches.PatchCutter` (one ``sitk.Resample`` per point; the training path);
- ``new``: :class:`naslung.data.patches.MultiPointCutter` (one vectorised pass per chunk of points; the
  scoring path), consumed chunk by chunk (``iter_cut``) as the scorer does.

Ratio = t_extract / t_read (target <= 1.5 at both N). Figures are the best of ``--repeats`` runs (warm page
cache); above ``--full-old`` points the old cutter is timed on that many points and its cut time scaled
linearly to N (its cost per point is constant; the row says ``old*``). Both cutters run in the same process,
interleaved, so machine load hits both alike; the 1-minute load average is printed. Scans: the real
LIDC-IDRI-0001 full scan (../shared/data; 512 x 512 x 133, 0.70 x 0.70 x 2.5 mm, zlib ``.zraw``) plus
synthetic scans from ``data/luna16`` (or, when absent, ones made with :func:`naslung.data.synth.synthesize` in
a temporary folder).

    .venv/bin/python benchmarks/bench_extraction.py [--points 20,20000] [--max-scans 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from naslung.data.patches import MultiPointCutter, PatchCutter
from naslung.data.scans import ScanIndex, read_scan
from naslung.params import PrepareParams, SynthParams

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
UID_0001 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def lung_points(image: sitk.Image, n: int, seed: int) -> np.ndarray:
    """World points (n, 3) (x, y, z) mm at random lung-like voxels (HU -950..-400) of the scan's central
    80 % per axis, each jittered uniformly within its voxel; anywhere in that box when no voxel qualifies."""
    rng = np.random.default_rng(seed)
    arr = sitk.GetArrayViewFromImage(image)  # (z, y, x)
    shape = np.array(arr.shape)
    lo, hi = (shape * 0.1).astype(int), np.maximum((shape * 0.9).astype(int), (shape * 0.1).astype(int) + 1)
    box = arr[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    zyx = np.argwhere((box >= -950) & (box <= -400))
    if len(zyx) == 0:
        zyx = np.argwhere(np.ones(box.shape, dtype=bool))
    pick = zyx[rng.integers(0, len(zyx), n)] + lo + rng.uniform(-0.5, 0.5, (n, 3))
    idx_xyz = pick[:, ::-1]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return np.array(image.GetOrigin()) + (idx_xyz * np.array(image.GetSpacing())) @ direction.T


def measure(path: Path, n_points: int, p: PrepareParams, repeats: int, full_old: int, seed: int) -> list[dict]:
    """One row per cutter: t_read, t_extract (read + cut all N), ms per patch, ratio."""
    image = read_scan(path)  # also warms the page cache
    pts = lung_points(image, n_points, seed)
    reps = repeats if n_points <= 1000 else 1
    t_read = best_of(lambda: read_scan(path), repeats)
    old_pts = pts[:full_old] if n_points > full_old else pts

    def old_cut(img: sitk.Image) -> None:
        cutter = PatchCutter(img, p)
        for pt in old_pts:
            cutter.cut(pt)

    def new_cut(img: sitk.Image) -> None:
        for _ in MultiPointCutter(img, p).iter_cut(pts):
            pass

    t_old = t_new = float("inf")
    for _ in range(reps):  # interleaved
        t_old = min(t_old, best_of(lambda: old_cut(image), 1))
        t_new = min(t_new, best_of(lambda: new_cut(image), 1))
    t_old *= n_points / len(old_pts)
    size = "x".join(map(str, image.GetSize()))
    spacing = "x".join(f"{v:.2f}" for v in image.GetSpacing())
    rows = []
    for name, t_cut in (("old" + ("*" if len(old_pts) < n_points else ""), t_old), ("new", t_new)):
        rows.append(
            {
                "scan": path.name[-20:],
                "size_xyz": size,
                "spacing_mm": spacing,
                "points": n_points,
                "cutter": name,
                "t_read_s": t_read,
                "t_cut_s": t_cut,
                "ms_per_patch": 1e3 * t_cut / n_points,
                "ratio": (t_read + t_cut) / t_read,
            }
        )
    return rows


def synthetic_scans(raw: Path | None, n: int) -> list[Path]:
    """Paths of up to ``n`` synthetic scans (``raw`` when it holds some, else made in a temporary folder)."""
    if raw is not None and raw.is_dir():
        found = sorted(ref.path for ref in ScanIndex.build(raw).scans.values())
        if found:
            return found[:n]
    from naslung.data import synth

    tmp = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    atexit.register(shutil.rmtree, tmp, True)
    synth.synthesize(tmp / "luna16", SynthParams(n_scans=max(n, 1)), progress=False)
    return sorted(ref.path for ref in ScanIndex.build(tmp / "luna16").scans.values())[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, default=REPO / "data" / "luna16")
    ap.add_argument("--points", default="20,20000", help="points per scan, comma-separated")
    ap.add_argument("--max-scans", type=int, default=2, help="synthetic scans")
    ap.add_argument("--repeats", type=int, default=3, help="best of (reads; cuts of <= 1000 points)")
    ap.add_argument("--full-old", type=int, default=500, help="old cutter timed on at most this many points")
    ap.add_argument("--no-real", action="store_true")
    args = ap.parse_args()
    p = PrepareParams()
    counts = [int(v) for v in args.points.split(",")]
    scans: list[tuple[str, Path]] = []
    full = SHARED / "LIDC-CT-concept-to-clinic" / "full" / f"{UID_0001}.mhd"
    if full.is_file() and not args.no_real:
        scans.append(("real LIDC-0001", full))
    elif not args.no_real:
        print(f"real: skipped ({full} not found)")
    scans += [("synthetic", path) for path in synthetic_scans(args.raw, args.max_scans)]
    rows = []
    for kind, path in scans:
        for n in counts:
            rows += [{"kind": kind} | row for row in measure(path, n, p, args.repeats, args.full_old, seed=n)]
            print(f"  measured {kind} {path.name[-20:]} at {n} points (load {os.getloadavg()[0]:.2f})", flush=True)
    if not rows:
        print("nothing measured")
        return 1
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 220)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nratio (read + cut) / read, max over scans (target <= 1.5):")
    for n in counts:
        sel = table[table["points"] == n]
        old, new = sel[sel["cutter"] != "new"], sel[sel["cutter"] == "new"]
        speed = (old["t_cut_s"].to_numpy() / new["t_cut_s"].to_numpy()).min()
        print(
            f"  {n:>6} points/scan: old {old['ratio'].max():8.2f}   new {new['ratio'].max():8.2f}   "
            f"(new cuts >= {speed:.1f}x faster)"
        )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"machine: {cores} cores available ({os.cpu_count()} logical), {platform.processor() or platform.machine()}; "
        f"load average {' / '.join(f'{v:.2f}' for v in os.getloadavg())} (1 / 5 / 15 min) at the end"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
