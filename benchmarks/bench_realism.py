"""Realism of the synthetic patches: the side-by-side table of :mod:`naslung.data.realism` and the cost of
its statistics per patch.

Generates ``--scans`` synthetic scans (:func:`naslung.data.synth.synthesize`, params ``synth`` with that
``n_scans``; ``--seed`` overrides ``synth.seed``) in a temporary folder, cuts HU patches at every nodule
centre (:func:`naslung.data.realism.synthetic_patches`, the ``prepare`` cutter) and prints, per statistic,
the synthetic mean, the real nodule and non-nodule means (the LIDC-derived patches of
``registry.regression_patches``, or ``--real``), the accepted band (``TOLERANCES``) and whether the
synthetic mean is inside it. Then the time of :func:`naslung.data.realism.patch_statistics` per patch, the
best of ``--repeats`` runs on the 82 real patches and on the synthetic ones (one batch each; 1 mm 32^3
int16/float32 HU patches), with the 1-minute load average (the figures are wall time on a shared machine).

    .venv/bin/python benchmarks/bench_realism.py [--scans 4] [--seed N] [--real PATH] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from naslung.data.realism import (
    compare,
    format_table,
    load_real_patches,
    patch_statistics,
    real_reference,
    summarize,
    synthetic_patches,
)
from naslung.params import load_params

REPO = Path(__file__).resolve().parents[1]


def best_time(images: np.ndarray, repeats: int) -> float:
    """Best wall time (s) of :func:`patch_statistics` on ``images`` over ``repeats`` runs."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        patch_statistics(images)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=4, help="synthetic scans (default 4, ~13 nodules each)")
    ap.add_argument("--seed", type=int, help="synthetic seed (default: params synth.seed)")
    ap.add_argument("--real", help="real patches .npz (default: params registry.regression_patches)")
    ap.add_argument("--params", default=str(REPO / "params.yaml"), help="parameter file")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (best is kept)")
    args = ap.parse_args()

    over: dict[str, object] = {"synth.n_scans": args.scans}
    if args.seed is not None:
        over["synth.seed"] = args.seed
    params = load_params(args.params).with_overrides(over)
    real_path = Path(args.real or str(params.registry.regression_patches))
    if not real_path.is_absolute() and not real_path.exists():
        real_path = REPO / real_path  # the params path is relative to the repository root
    real_images, _ = load_real_patches(real_path)
    reference = real_reference(real_path)

    with tempfile.TemporaryDirectory(prefix="bench-realism-") as tmp:
        t0 = time.perf_counter()
        synth = synthetic_patches(params.synth, params.prepare, tmp)
        t_gen = time.perf_counter() - t0
    rows = compare(summarize(patch_statistics(synth)), reference)

    print(
        f"synthetic: {len(synth)} nodule patches of {args.scans} scans (seed {params.synth.seed}; generated and "
        f"cut in {t_gen:.1f} s); real: {int(reference['nodules']['n'])} nodules + "
        f"{int(reference['non_nodules']['n'])} non-nodule locations ({real_path})"
    )
    print(format_table(rows))
    print()
    print(f"patch_statistics, best of {args.repeats} (one batch each):")
    for name, images in (("real", real_images), ("synthetic", synth)):
        t = best_time(images, args.repeats)
        print(f"  {name:<10} {len(images):>4} patches  {t:7.3f} s  {1000 * t / len(images):6.2f} ms/patch")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"  ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, 1-min load {load:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
