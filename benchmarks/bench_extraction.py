"""Patch extraction cost per scan relative to the floor: reading that scan's voxels once.

For each scan: ``t_read`` = time of ``read_scan`` (the whole volume into memory, the unavoidable floor)
and ``t_extract`` = time of ``read_scan`` + cutting every nodule patch of that scan (what ``prepare``
does per scan). Ratio = t_extract / t_read (target <= 1.5). Each figure is the best of ``--repeats``
runs (warm page cache). Scans: the real LIDC-IDRI-0001 full scan (../shared/data) with its 17 reference
locations, plus synthetic scans from ``data/luna16`` (or, when absent, six made with
:func:`naslung.data.synth.synthesize` in a temporary folder).

    .venv/bin/python benchmarks/bench_extraction.py [--raw data/luna16] [--max-scans 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from naslung.data.labels import read_annotations
from naslung.data.patches import PatchCutter
from naslung.data.scans import ScanIndex, inside_scan, read_scan
from naslung.params import PrepareParams, SynthParams

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
UID_0001 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(path: Path, points: np.ndarray, p: PrepareParams, repeats: int) -> dict:
    read_scan(path)  # warm the page cache
    t_read = best_of(lambda: read_scan(path), repeats)

    def extract() -> None:
        cutter = PatchCutter(read_scan(path), p)
        for pt in points:
            cutter.cut(pt)

    t_extract = best_of(extract, repeats)
    cutter = PatchCutter(read_scan(path), p)
    t_cut = best_of(lambda: [cutter.cut(pt) for pt in points], repeats)
    img = read_scan(path)
    return {
        "scan": path.name[-24:],
        "size_xyz": "x".join(map(str, img.GetSize())),
        "n_patches": len(points),
        "t_read_s": t_read,
        "t_extract_s": t_extract,
        "ms_per_patch": 1e3 * t_cut / max(len(points), 1),
        "ratio": t_extract / t_read,
    }


def synthetic_raw(raw: Path | None) -> tuple[Path, Path] | None:
    """(raw folder, annotations csv) of synthetic scans, or None with a message."""
    if raw is not None and raw.is_dir():
        csvs = sorted(raw.glob("annotations_with_malignancy.csv")) or sorted(raw.glob("*.csv"))
        if csvs:
            return raw, csvs[0]
    from naslung.data import synth

    tmp = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    atexit.register(shutil.rmtree, tmp, True)
    out = tmp / "luna16"
    synth.synthesize(out, SynthParams(n_scans=6), progress=False)
    csvs = sorted(out.rglob("annotations_with_malignancy.csv")) or sorted(out.rglob("*.csv"))
    if not csvs:
        print(f"synthetic: skipped (no annotations table written under {out})")
        return None
    return out, csvs[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, default=REPO / "data" / "luna16")
    ap.add_argument("--max-scans", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    p = PrepareParams()
    rows = []

    full = SHARED / "LIDC-CT-concept-to-clinic" / "full" / f"{UID_0001}.mhd"
    if full.is_file():
        ref = pd.read_csv(SHARED / "LIDC-patches-derived" / "lidc_0001-0003_patches_32cube_1mm.csv")
        pts = ref.loc[ref["seriesuid"] == UID_0001, ["coordX", "coordY", "coordZ"]].to_numpy(float)
        rows.append({"kind": "real LIDC-0001 (.zraw)"} | measure(full, pts, p, args.repeats))
    else:
        print(f"real: skipped ({full} not found)")

    syn = synthetic_raw(args.raw)
    if syn is not None:
        raw, csv = syn
        ann = read_annotations(csv)
        ann = ann[ann["error"] == ""]
        index = ScanIndex.build(raw)
        for uid in sorted(set(ann["seriesuid"]) & set(index.scans))[: args.max_scans]:
            pts = ann.loc[ann["seriesuid"] == uid, ["coordX", "coordY", "coordZ"]].to_numpy(float)
            ref = index.scans[uid]
            pts = pts[inside_scan(read_scan(ref.path), pts)]
            rows.append({"kind": "synthetic"} | measure(ref.path, pts, p, args.repeats))

    if not rows:
        print("nothing measured")
        return 1
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"\nratio (read + cut all patches) / read: max {table['ratio'].max():.3f}, "
        f"median {table['ratio'].median():.3f} (target <= 1.5)"
    )
    print(
        f"machine: {cores} cores available ({os.cpu_count()} logical), {platform.processor() or platform.machine()}, "
        f"SimpleITK threads default; patch resampling uses 1 thread per patch"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
