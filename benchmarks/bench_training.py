"""Training throughput benchmark: nodule-epochs/s of ``fit`` and ``fit_many`` on CPU and (when present) CUDA,
per precision, and GPU utilisation, measured in ONE run.

For each device (``--devices``; default ``cpu`` and ``cuda`` when available) and precision (``--precisions``,
default ``fp32,bf16``; ``--cpu-precisions`` for the CPU alone; bf16 skipped on a CPU whose conv3d does not
run under autocast):

1. **fit**: ``--k`` models (``--spec``, default the paper's Model-1; seeds 0..k-1) trained one after the other
   with :func:`naslung.train.loop.fit` for ``--epochs`` epochs on ``--n-train`` synthetic nodules (validated
   on ``--n-val`` each epoch; no early stopping);
2. **fit_many**: the same ``--k`` models trained at once with :func:`naslung.train.concurrent.fit_many`
   (lockstep, one CUDA stream each); on CPU it runs them one after the other (a check that the lockstep loop
   costs nothing there);

and reports nodule-epochs/s = k × n_train × epochs / wall seconds (validation included; the process CPU
seconds beside it show how much of the wall time other processes took on a shared machine), the ratios
fit_many / fit, bf16 / fp32 and GPU / CPU from the same run, and the mean / max GPU utilisation during each
measurement (``torch.cuda.utilization()`` when pynvml is installed, else ``nvidia-smi`` sampled every 200 ms
in a thread; ``unmeasured`` without a GPU). A warm-up fit (1 epoch) precedes each device / precision. On
CUDA a sync check counts the host syncs of a 1-epoch fit at two numbers of optimiser steps
(``torch.cuda.set_sync_debug_mode("warn")``): equal counts mean no step waits for the host.

Usage (the CPU figure is slow: keep it small)::

    .venv/bin/python benchmarks/bench_training.py --n-train 32 --n-val 16 --epochs 2 --k 2
    python benchmarks/bench_training.py --devices cuda --n-train 256 --epochs 3 --k 4 --out /tmp/bench_training.json

Writes the figures as JSON to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from naslung.models.spec import ArchSpec
from naslung.params import ModelParams, TrainParams
from naslung.train.concurrent import FitJob, fit_many
from naslung.train.loop import fit

MODEL1 = "[4, 4, [4, 4], [4, 8], [8, 8]]"


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Patches (n, 32, 32, 32) in [0, 1] (air ~0.1, a bright blob; malignant ones bigger) and labels."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int64)
    rng.shuffle(y)
    z, yy, x = np.mgrid[:32, :32, :32]
    r2 = (z - 15.5) ** 2 + (yy - 15.5) ** 2 + (x - 15.5) ** 2
    X = 0.1 + 0.03 * rng.standard_normal((n, 32, 32, 32))
    for i in range(n):
        X[i][r2 <= (rng.uniform(7, 10) if y[i] else rng.uniform(2, 4)) ** 2] += 0.5
    return np.clip(X, 0, 1).astype(np.float32), y


class GpuSampler:
    """Mean / max GPU utilisation (%) while active: ``torch.cuda.utilization()`` (pynvml) or nvidia-smi."""

    def __init__(self, device: str) -> None:
        self.device, self.samples, self._stop = device, [], threading.Event()
        self.source = "unmeasured"
        if device.startswith("cuda"):
            try:
                torch.cuda.utilization()
                self.source = "torch.cuda.utilization"
            except Exception:  # no pynvml / no NVML
                self.source = "nvidia-smi" if shutil.which("nvidia-smi") else "unmeasured"
        self._thread: threading.Thread | None = None

    def _read(self) -> float | None:
        if self.source == "torch.cuda.utilization":
            return float(torch.cuda.utilization())
        index = torch.device(self.device).index or 0
        out = subprocess.run(
            ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            check=False,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return float(out.stdout.strip().splitlines()[0]) if out.returncode == 0 and out.stdout.strip() else None

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            try:
                v = self._read()
            except Exception:  # a failed read is skipped
                v = None
            if v is not None:
                self.samples.append(v)

    def __enter__(self) -> GpuSampler:
        if self.source != "unmeasured":
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, Any]:
        if self.source == "unmeasured" or not self.samples:
            return {"gpu_util": "unmeasured", "source": self.source}
        return {
            "gpu_util_mean": float(np.mean(self.samples)),
            "gpu_util_max": float(np.max(self.samples)),
            "samples": len(self.samples),
            "source": self.source,
        }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def measure(
    mode: str, spec: ArchSpec, data: dict[str, Any], tp: TrainParams, k: int, epochs: int, device: str
) -> dict[str, Any]:
    """One measurement: k models by ``fit`` one by one, or at once by ``fit_many``."""
    mp = ModelParams()
    _sync(device)
    with GpuSampler(device) as sampler:
        t0, c0 = time.perf_counter(), time.process_time()
        if mode == "fit":
            results = [fit(spec, data["train"], data["val"], mp, tp, epochs, seed, device) for seed in range(k)]
        else:
            jobs = [FitJob(spec, data["train"], data["val"], mp, tp, epochs, seed) for seed in range(k)]
            results = fit_many(jobs, device=device)
        _sync(device)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    n = len(data["train"][1])
    epochs_run = sum(len(r.history) for r in results)
    return {
        "mode": mode,
        "k": k,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "nodule_epochs_per_s": n * epochs_run / seconds,
        "precision": results[0].precision,
        "final_val_auc": [r.history[-1]["val_auc"] for r in results],
        **sampler.summary(),
    }


def sync_check(spec: ArchSpec, data: dict[str, Any], tp: TrainParams, device: str) -> dict[str, Any]:
    """CUDA only: host syncs of a 1-epoch fit (``torch.cuda.set_sync_debug_mode("warn")``) at 2 and at
    n_train / 16 optimiser steps; equal counts = no sync per step (the per-epoch read remains)."""
    counts = {}
    for bs in (data["train"][1].size // 2, 16):
        t = dataclasses.replace(tp, batch_size=bs, permute_axes=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fit(spec, data["train"], data["val"], ModelParams(), t, 1, 0, device)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        steps = -(-data["train"][1].size // bs)
        counts[f"steps_{steps}"] = sum("synchroniz" in str(w.message) for w in caught)
    return {"host_syncs_per_epoch": counts, "per_step_sync": len(set(counts.values())) > 1}


def _cpu_bf16_ok() -> bool:
    try:
        conv = torch.nn.Conv3d(1, 2, 3, padding=1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv(torch.rand(1, 1, 4, 4, 4)).sum().backward()
        return True
    except (RuntimeError, NotImplementedError):
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="", help="comma list (default: cpu, and cuda when available)")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--cpu-precisions", default="", help="precisions on CPU (default: --precisions)")
    ap.add_argument("--spec", default=MODEL1)
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--n-val", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--k", type=int, default=3, help="models per measurement (fit one by one vs fit_many)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [d for d in args.devices.split(",") if d] or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    spec = ArchSpec.parse(args.spec)
    data = {"train": synthetic(args.n_train, 1), "val": synthetic(args.n_val, 2)}
    base = TrainParams(epochs=args.epochs, batch_size=args.batch_size, patience=args.epochs + 1, device="cpu")
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "spec": args.spec,
        "n_train": args.n_train,
        "n_val": args.n_val,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "k": args.k,
    }
    print(json.dumps(info))
    rows: list[dict[str, Any]] = []
    for device in devices:
        names = args.cpu_precisions if device == "cpu" and args.cpu_precisions else args.precisions
        for precision in [p for p in names.split(",") if p]:
            if device == "cpu" and precision != "fp32" and not _cpu_bf16_ok():
                rows.append({"device": device, "precision": precision, "skipped": "no CPU autocast conv3d"})
                continue
            tp = dataclasses.replace(base, precision=precision)
            fit(spec, data["train"], data["val"], ModelParams(), tp, 1, 0, device)  # warm-up
            for mode in ("fit", "fit_many"):
                row = {"device": device, **measure(mode, spec, data, tp, args.k, args.epochs, device)}
                rows.append(row)
                util = (
                    f"GPU util mean {row['gpu_util_mean']:.0f} % max {row['gpu_util_max']:.0f} %"
                    if "gpu_util_mean" in row
                    else "GPU util unmeasured"
                )
                print(
                    f"{device:>6} {row['precision']:>5} {mode:>8} k={args.k}: {row['nodule_epochs_per_s']:8.1f} "
                    f"nodule-epochs/s ({row['seconds']:.1f} s wall, {row['cpu_seconds']:.1f} s process CPU) {util}",
                    flush=True,
                )

    if any(d.startswith("cuda") for d in devices):
        gpu0 = next(d for d in devices if d.startswith("cuda"))
        info["sync_check"] = sync_check(spec, data, base, gpu0)
        print("sync check:", json.dumps(info["sync_check"]), flush=True)

    def rate(device: str, precision: str, mode: str) -> float:
        for r in rows:
            if r.get("device") == device and r.get("precision") == precision and r.get("mode") == mode:
                return float(r["nodule_epochs_per_s"])
        return math.nan

    ratios: dict[str, float] = {}
    for device in devices:
        for precision in ("fp32", "bf16"):
            ratios[f"{device} {precision} fit_many/fit"] = rate(device, precision, "fit_many") / rate(
                device, precision, "fit"
            )
        ratios[f"{device} fit bf16/fp32"] = rate(device, "bf16", "fit") / rate(device, "fp32", "fit")
    gpu = next((d for d in devices if d.startswith("cuda")), None)
    if gpu and "cpu" in devices:
        for precision in ("fp32", "bf16"):
            for mode in ("fit", "fit_many"):
                ratios[f"{gpu}/cpu {precision} {mode}"] = rate(gpu, precision, mode) / rate("cpu", "fp32", "fit")
    print("ratios (same run):")
    for name, v in ratios.items():
        print(f"  {name}: {'n/a' if math.isnan(v) else f'{v:.2f}x'}")
    if args.out:
        Path(args.out).write_text(json.dumps({"info": info, "rows": rows, "ratios": ratios}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
