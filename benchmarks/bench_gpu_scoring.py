"""Batch-scoring benchmark of the fused ensemble forward: in-process and through TorchServe, against the
measured roofline of the chip (CUDA GPU or CPU).

For a 9-member ensemble (``--ensemble-dir``: a saved ``Ensemble`` directory, e.g. a trained one; default:
random weights, fixed seed, the specs of ``bench_serving.py``), on the 82 real LIDC patches tiled to the
needed count, it measures in ONE run:

1. **parity**: max |delta p| (member probabilities and their mean) of each reduced precision against the
   fp32 eager forward on the 82 real patches, and of the uint8 wire format against float32 bodies;
2. **in-process** nodules/s of today's ``Ensemble.predict`` (members one after another, fp32 eager) and of
   :class:`naslung.ensemble.fused.FusedEnsemble` per precision (``--precisions``) at each batch size of
   ``--sizes`` (patches per request: 1 ... 4096 on a GPU; the CPU default stops at 128, the CPU being
   ~1000x slower), best of ``--repeats`` passes over at least ``--min-patches`` patches;
3. **TorchServe** nodules/s at the same sizes (a real TorchServe: server-side batch 1 so a request is one
   batch, ``--concurrency`` requests in flight, uint8 wire, columnar answers), once per precision in
   ``--ts-precisions``; and the ratio TorchServe / in-process at each size;
4. **roofline**: FLOPs per patch (2 x the multiply-adds of :func:`naslung.models.factory.spec_flops`), bytes
   moved per patch (input + every layer's output written and read once, weights not counted: a batch
   amortises them; an upper-ish bound, Inductor's fusion moves less), the chip's measured dense rates
   (matmul, a conv3d typical of the members, in fp32 and bf16) and memory bandwidth (device copy), and the
   bound ``1 / max(FLOPs / conv rate, bytes / bandwidth)`` nodules/s (and the compute-only bound: on a CPU
   a small batch's activations stay in cache, so the byte count overstates DRAM traffic); the measured
   throughput as a fraction of it;
5. **GPU utilisation** (``nvidia-smi`` sampled every 200 ms during each measurement, when present).

Usage: ``python benchmarks/bench_gpu_scoring.py`` (``--device cuda`` on a GPU machine; ``--no-torchserve``
to skip the server; only one TorchServe may run per machine). Prints a table and writes
``<workdir>/bench_gpu_scoring.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
REAL = SHARED / "LIDC-patches-derived" / "lidc_0001-0003_patches_32cube_1mm.npz"
sys.path.insert(0, str(Path(__file__).resolve().parent))


# ------------------------------------------------------------------------------------------ inputs
def real_patches() -> np.ndarray:
    """(82, 32, 32, 32) float32 in [0, 1]: the real LIDC patches, HU window [-1200, 600]; synthetic
    probe patches when the shared data folder is absent."""
    from naslung.data.patches import window_hu
    from naslung.ensemble.fused import probe_patches

    if not REAL.exists():
        print(f"(no real patches at {REAL}: using synthetic probe patches)")
        return probe_patches(82)
    return window_hu(np.load(REAL)["images"].astype(np.float32), (-1200.0, 600.0)).astype(np.float32)


def tiled(X: np.ndarray, n: int) -> np.ndarray:
    reps = math.ceil(n / len(X))
    return np.ascontiguousarray(np.concatenate([X] * reps)[:n])


def load_ensemble(args: argparse.Namespace, device: str) -> Any:
    from naslung.ensemble.model import Ensemble

    if args.ensemble_dir:
        return Ensemble.load(args.ensemble_dir, device=device)
    from bench_serving import DEFAULT_SPECS, build_ensemble

    return build_ensemble(list(DEFAULT_SPECS), seed=0, device=device)


# ------------------------------------------------------------------------------------------ timing
def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_rate(fn: Any, X: np.ndarray, batch: int, repeats: int, device: str) -> float:
    """Nodules/s of ``fn`` over X in batches of ``batch`` (best of ``repeats`` passes, after one warm-up batch)."""
    fn(X[:batch])
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        for s in range(0, len(X), batch):
            fn(X[s : s + batch])
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return len(X) / best


class GpuSampler:
    """``nvidia-smi`` utilisation samples (%, every 200 ms) while in a ``with`` block; empty without it."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"]
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError):
                self.samples.append(float(line.strip().split(",")[0]))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)

    def summary(self) -> dict[str, float] | None:
        if not self.samples:
            return None
        a = np.array(self.samples)
        return {"mean_pct": float(a.mean()), "max_pct": float(a.max()), "n": len(a)}


# ------------------------------------------------------------------------------------------ roofline
def chip_rates(device: str, seconds: float = 0.5) -> dict[str, float]:
    """Measured dense rates (FLOP/s) of matmul and of a member-like conv3d in fp32 / bf16, and the device
    memory bandwidth (bytes/s, read + write of a copy)."""
    import torch

    dev = torch.device(device)

    def timed(fn: Any) -> float:
        fn()
        _sync(device)
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            if n % 4 == 0:
                _sync(device)
                if time.perf_counter() - t0 > seconds:
                    break
        return (time.perf_counter() - t0) / n

    out: dict[str, float] = {}
    cuda = dev.type == "cuda"
    size = 8192 if cuda else 1024
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, device=dev, dtype=dtype)
        b = torch.randn(size, size, device=dev, dtype=dtype)
        with torch.inference_mode():
            out[f"matmul_{name}_flops"] = 2 * size**3 / timed(lambda a=a, b=b: a @ b)
        n, c, s = (256 if cuda else 8), 16, 16
        conv = torch.nn.Conv3d(c, c, 3, padding=1, bias=False).to(dev, dtype=dtype).eval()
        x = torch.randn(n, c, s, s, s, device=dev, dtype=dtype)
        if cuda:
            conv = conv.to(memory_format=torch.channels_last_3d)
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode():
            out[f"conv3d_{name}_flops"] = 2 * n * c * c * 27 * s**3 / timed(lambda conv=conv, x=x: conv(x))
    m = torch.empty(int((1 << 30) if cuda else (1 << 27)), dtype=torch.uint8, device=dev)
    out["mem_bytes_s"] = 2 * m.numel() / timed(lambda: m.clone())
    return out


def traffic_per_patch(ensemble: Any, elem_bytes: int) -> int:
    """Bytes moved per patch: the input (uint8 on the wire -> float on the device) plus every leaf module's
    output written once and read once, at ``elem_bytes`` per element (batch 1)."""
    import torch

    total = 0

    def hook(_m: Any, _i: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += 2 * out.numel() * elem_bytes

    handles = []
    for member in ensemble.members:
        for mod in member.modules():
            if not list(mod.children()):
                handles.append(mod.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            x = torch.zeros(1, 1, 32, 32, 32, device=next(ensemble.members[0].parameters()).device)
            for member in ensemble.members:
                member(x)
    finally:
        for h in handles:
            h.remove()
    return total + 32**3 * (1 + 4)


# ------------------------------------------------------------------------------------------ TorchServe
def torchserve_rates(
    args: argparse.Namespace,
    ens_dir: Path,
    precision: str,
    X: np.ndarray,
    sizes: list[int],
    buckets: list[int],
    device: str,
    local: Any,
) -> dict[int, dict[str, Any]]:
    """Nodules/s through a real TorchServe serving ``ens_dir`` with ``precision``, per request size, each
    interleaved with passes of the in-process forward ``local`` (same precision) on the same patches."""
    from naslung import torchserve as S
    from naslung.params import load_params
    from naslung.serving_client import ServingClient

    base = load_params(REPO / "params.yaml")
    top = max(sizes)
    params = base.replace(
        paths=replace(base.paths, artifacts=str(Path(args.workdir) / f"artifacts_{precision}")),
        serve=replace(
            base.serve,
            batch_size=1,
            max_batch_delay_ms=1,
            workers=1,
            torch_threads=args.threads,
            precision=precision,
            buckets=tuple(sorted(set(buckets))),  # the in-process forward's buckets: the same captured shapes
            max_payload_mb=max(base.serve.max_payload_mb, 1.1 * top * 32**3 / 2**20 + 1),  # uint8 bodies
            jvm_heap="4g" if device.startswith("cuda") else base.serve.jvm_heap,
            device="auto" if device.startswith("cuda") else "cpu",
        ),
    )
    out: dict[int, dict[str, Any]] = {}
    with S.torchserve_lock():
        info = {
            "name": S.model_name_of(params),
            "version": f"bench-{precision}",
            "max_payload_mb": params.serve.max_payload_mb,
        }
        S.build_mar(ens_dir, info, S.serve_dir(params) / "model-store", params.serve)
        t = time.perf_counter()
        server = S.start_server(params, timeout_s=900)
        start_s = time.perf_counter() - t
        try:
            key = server.inference_key()
            with ServingClient(
                server.inference_url, server.model_name, key, max_connections=args.concurrency, timeout_s=600
            ) as client:
                device_seen = client.predict(X[:1])[0].get("device")
                with ThreadPoolExecutor(args.concurrency) as pool:
                    for b in sizes:
                        n = max(b * args.concurrency * 2, args.min_patches)
                        Xb = tiled(X, n)
                        chunks = [Xb[s : s + b] for s in range(0, n, b)]
                        list(pool.map(client.predict, chunks[: args.concurrency]))  # warm-up
                        best = local_best = 0.0
                        with GpuSampler() as gpu:
                            for _ in range(args.repeats):  # interleaved: in-process pass, served pass, ...
                                local_best = max(local_best, best_rate(local, Xb, b, 1, device))
                                t = time.perf_counter()
                                list(pool.map(client.predict, chunks))
                                best = max(best, n / (time.perf_counter() - t))
                        out[b] = {"nodules_s": best, "in_process_nodules_s": local_best, "gpu_util": gpu.summary()}
                        print(
                            f"  TorchServe {precision:5s} batch {b:5d}: {best:10.1f} nodules/s; in-process "
                            f"{local_best:10.1f}; ratio {best / local_best:.3f}"
                        )
        finally:
            S.stop_server()
    out[-1] = {"start_s": start_s, "device": device_seen}
    return out


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--ensemble-dir", default=None, help="a saved Ensemble directory (default: random 9 members)")
    ap.add_argument("--sizes", default=None, help="patches per request (default GPU 1..4096, CPU 1,8,32,128)")
    ap.add_argument("--buckets", default=None, help="batch buckets of the fused forward (default: --sizes)")
    ap.add_argument("--precisions", default=None, help="in-process precisions (default GPU fp32,bf16; CPU fp32,bf16)")
    ap.add_argument("--ts-precisions", default=None, help="TorchServe precisions (default GPU bf16,fp32; CPU fp32)")
    ap.add_argument("--no-torchserve", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-patches", type=int, default=0, help="least patches per pass (default GPU 8192, CPU 64)")
    ap.add_argument("--concurrency", type=int, default=2, help="TorchServe requests in flight")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "naslung-bench-gpu"))
    args = ap.parse_args(argv)

    import torch

    from naslung.ensemble.fused import FusedEnsemble, parity
    from naslung.models.factory import spec_flops
    from naslung.scoring import quantise_uint8

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device visible to torch", file=sys.stderr)
        return 2
    cuda = device == "cuda"
    args.threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(args.threads)
    sizes = [int(v) for v in (args.sizes or ("1,8,32,128,512,1024,4096" if cuda else "1,8,32,128")).split(",")]
    buckets = [int(v) for v in args.buckets.split(",")] if args.buckets else list(sizes)
    precisions = (args.precisions or "fp32,bf16").split(",")
    ts_precisions = (args.ts_precisions or ("bf16,fp32" if cuda else "fp32")).split(",")
    args.min_patches = args.min_patches or (8192 if cuda else 64)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    ensemble = load_ensemble(args, "cpu")
    ens_dir = workdir / "ensemble"
    ensemble.save(ens_dir)
    ensemble.to(device)
    X82 = real_patches()
    chip = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores, {args.threads} torch threads)"
    macs = sum(spec_flops(s) for s in ensemble.specs)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": device,
        "chip": chip,
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "members": len(ensemble),
        "flops_per_patch": 2 * macs,
        "sizes": sizes,
        "buckets": buckets,
    }
    print(f"{chip}; torch {torch.__version__}; {len(ensemble)} members, {2 * macs / 1e9:.3f} GFLOP per patch")

    # 1. the fused forwards (compiled and captured for every bucket on CUDA), parity on the 82 real patches
    fused_by_p: dict[str, FusedEnsemble] = {}
    warm_s: dict[str, float] = {}
    for p in precisions:
        fused_by_p[p] = FusedEnsemble.from_ensemble(ensemble, precision=p, buckets=buckets)
        t = time.perf_counter()
        if fused_by_p[p].compiled:
            fused_by_p[p].warmup()
        warm_s[p] = time.perf_counter() - t
    ref = FusedEnsemble(ensemble.members, device, precision="fp32", compile=False, pad=False)
    report["parity"] = {}
    for p, fused in fused_by_p.items():
        if p == "fp32" and not cuda:
            continue  # the CPU fp32 path is the reference itself
        result = parity(fused, X82, members=ensemble.members)
        report["parity"][p] = {"max_abs_member": result.max_abs_member, "max_abs_mean": result.max_abs_mean}
        print(f"parity ({fused.describe()}) {result.describe()}")
    if cuda:  # today's Ensemble.predict on the GPU against the CPU one, and bucket padding on the GPU
        cpu_ref = load_ensemble(args, "cpu").predict(X82).member_probs
        dev_ref = ensemble.predict(X82).member_probs
        eager = FusedEnsemble(ensemble.members, device, precision="fp32", compile=False, pad=False)
        padded = FusedEnsemble(ensemble.members, device, precision="fp32", compile=False, pad=True, buckets=[64])
        report["gpu_checks"] = {
            "ensemble_predict_cuda_vs_cpu": float(np.abs(dev_ref - cpu_ref).max()),
            "fused_eager_vs_ensemble_predict": float(np.abs(eager.member_probs(X82) - dev_ref).max()),
            "padded_vs_unpadded": float(np.abs(padded.member_probs(X82) - eager.member_probs(X82)).max()),
        }
        print("GPU checks (max |dp|): " + ", ".join(f"{k} {v:.2e}" for k, v in report["gpu_checks"].items()))
    u = quantise_uint8(X82).astype(np.float32) / np.float32(255.0)
    wire_dp = np.abs(ref.member_probs(u) - ref.member_probs(X82))
    wire_dm = np.abs(ref.member_probs(u).mean(axis=1) - ref.member_probs(X82).mean(axis=1))
    report["wire_uint8_vs_float32"] = {"max_abs_member": float(wire_dp.max()), "max_abs_mean": float(wire_dm.max())}
    print(f"uint8 vs float32 wire on 82 real patches: max |dp| members {wire_dp.max():.2e}, mean {wire_dm.max():.2e}")

    # 4. roofline inputs
    rates = chip_rates(device)
    report["chip_rates"] = rates
    print(
        "measured rates: "
        + ", ".join(f"{k} {v / 1e12:.3f} T" if "flops" in k else f"{k} {v / 1e9:.1f} G" for k, v in rates.items())
    )
    bounds = {}
    for p in precisions:
        key = "bf16" if p in ("bf16", "fp16") else "fp32"
        moved = traffic_per_patch(ensemble, 2 if key == "bf16" else 4)
        t_compute = 2 * macs / rates[f"conv3d_{key}_flops"]
        t_memory = moved / rates["mem_bytes_s"]
        bounds[p] = {
            "bytes_per_patch": moved,
            "bound_nodules_s": 1.0 / max(t_compute, t_memory),
            "compute_bound_nodules_s": 1.0 / t_compute,
        }
        bounds[p]["limited_by"] = "compute (conv rate)" if t_compute >= t_memory else "memory"
        print(
            f"roofline {p}: {moved / 1e6:.2f} MB moved per patch; bound {bounds[p]['bound_nodules_s']:.0f} nodules/s "
            f"({bounds[p]['limited_by']})"
        )
    report["roofline"] = bounds

    # 2. in-process: per size, passes of every variant interleaved (drift in machine load hits all alike)
    variants: dict[str, Any] = {"baseline_fp32": ensemble.predict}
    for p, fused in fused_by_p.items():
        variants[f"fused_{p}"] = fused.member_probs
    inproc: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in variants}
    for b in sizes:
        Xb = tiled(X82, max(b, args.min_patches))
        best: dict[str, float] = dict.fromkeys(variants, 0.0)
        util: dict[str, Any] = {}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                with GpuSampler() as gpu:
                    best[name] = max(best[name], best_rate(fn, Xb, b, 1, device))
                util[name] = gpu.summary()
        for name in variants:
            entry: dict[str, Any] = {"nodules_s": best[name], "gpu_util": util[name]}
            p = name.removeprefix("fused_")
            if p in bounds:
                entry["of_roofline"] = best[name] / bounds[p]["bound_nodules_s"]
            inproc[name][b] = entry
        print(
            f"  batch {b:5d}: "
            + ", ".join(f"{name} {best[name]:9.1f}" for name in variants)
            + " nodules/s"
            + (
                f" (fused / Ensemble.predict {best['fused_fp32'] / best['baseline_fp32']:.2f})"
                if "fused_fp32" in best
                else ""
            )
        )
    for p, fused in fused_by_p.items():
        print(f"  fused {p}: {fused.describe()}; warm-up {warm_s[p]:.1f} s")
        inproc[f"fused_{p}"][-1] = {"warmup_s": warm_s[p]}
    report["in_process"] = inproc

    # 3. TorchServe and the ratios (each size: TorchServe passes interleaved with in-process passes)
    if not args.no_torchserve:
        served = {}
        ratios: dict[str, dict[int, float]] = {}
        for p in ts_precisions:
            eff = p if p != "auto" else ("bf16" if cuda else "fp32")
            local = fused_by_p.get(eff) or FusedEnsemble.from_ensemble(ensemble, precision=eff, buckets=buckets)
            served[p] = torchserve_rates(args, ens_dir, p, X82, sizes, buckets, device, local.member_probs)
            ratios[p] = {b: served[p][b]["nodules_s"] / served[p][b]["in_process_nodules_s"] for b in sizes}
            print(f"  TorchServe {p}: worker on {served[p][-1]['device']}, start {served[p][-1]['start_s']:.1f} s")
        report["torchserve"] = served
        report["ratios"] = ratios
        print("ratio TorchServe / in-process (same precision, same patches per request, interleaved passes):")
        for p, r in ratios.items():
            print("  " + p + ": " + ", ".join(f"{b}: {v:.3f}" for b, v in r.items()))
    out = workdir / "bench_gpu_scoring.json"
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
