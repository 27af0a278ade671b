"""Serving benchmark: TorchServe vs in-process PyTorch, and a 1,000-nodule CSV over 100 scans.

1. Throughput of a 9-member ensemble (random weights, fixed seed; member specs from ``ensemble.specs``
   when set, else the built-in list below) through TorchServe divided by in-process
   ``Ensemble.predict`` on the same patches with the same batch size (one request = one batch;
   TorchServe server-side batch 1 so the batch size is identical; same torch thread count).
   Target ratio >= 0.85. The client sends uint8 patches and asks for columnar answers (its defaults); the
   patches lie on the uint8 grid, so both sides score the same values. GPU figures: ``bench_gpu_scoring.py``.
2. Wall time of ``score_csv`` on a 1,000-nodule CSV over 100 synthetic scans
   (:mod:`naslung.data.synth`, 10 nodules each, scans cached in ``--workdir``), split into extraction
   (scan reading + patch cutting, in the scorer's main thread) and waiting for inference.
3. ``--device cuda`` (a machine with a CUDA GPU): the handler runs on ``cuda:<gpu_id>`` and the
   in-process model on ``cuda``; nodules/s for both at each of ``--batch-sizes``.
4. Explainability cost: latency of one ``/explanations`` request divided by one ``/predictions``
   request on the same ``--explain-patches`` patches (sequential, interleaved, median of
   ``--explain-repeats``); printed, no target.

Usage: ``python benchmarks/bench_serving.py --device cpu`` (starts and stops its own TorchServe; only
one TorchServe may run per machine). Prints the figures and writes ``<workdir>/bench_serving.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPECS = (  # Model-1-sized members (27-45 M multiply-adds per nodule each), as a latency-aware search picks
    "spcbam[4, 4, [4, 4], [4, 8], [8, 8]]",
    "spcbam[4, 4, [4], [8, 8], [16]]",
    "spcbam[4, 4, [4, 4], [8], [8, 16]]",
    "spcbam[4, 4, [4, 8], [8, 16], [16, 32]]",
    "spcbam[4, 4, [4], [8], [16, 16]]",
    "cbam[4, 4, [4, 4], [4, 8], [8, 8]]",
    "spcbam[4, 4, [4, 4], [8, 8], [16, 16]]",
    "sp[4, 4, [4, 4], [4, 8], [8, 8]]",
    "spcbam[4, 4, [8], [8, 16], [16]]",
)


def build_ensemble(specs: list[str], seed: int, device: str):
    import torch

    from naslung.ensemble.model import Ensemble
    from naslung.models.net import build_model
    from naslung.models.spec import ArchSpec

    torch.manual_seed(seed)
    parsed = [ArchSpec.parse(s, cbam=True, head="asoftmax") for s in specs]
    return Ensemble([build_model(s) for s in parsed], parsed, [f"m{i}" for i in range(len(parsed))], device=device)


def make_scans(workdir: Path, n_scans: int, per_scan: int, seed: int) -> tuple[Path, Path]:
    """Synthetic scans (cached) and a CSV of their nodules: ``n_scans * per_scan`` rows."""
    import pandas as pd

    from naslung.data import synth

    scans = workdir / f"scans_{n_scans}x{per_scan}_{seed}"
    csv = workdir / f"nodules_{n_scans}x{per_scan}_{seed}.csv"
    todo = []
    for i in range(n_scans):
        plan = synth.plan_scan(seed, i, (per_scan, per_scan))
        if not (scans / synth.scan_relpath(plan.layout)).exists():
            todo.append(plan)
    table = synth.nodule_table(
        replace(synth.SynthParams(), n_scans=n_scans, nodules_per_scan=(per_scan, per_scan), seed=seed)
    )
    t = time.perf_counter()
    for plan in todo:
        synth.write_scan(synth.render_scan(plan, seed), plan.layout, scans)
    if todo:
        print(f"rendered {len(todo)} synthetic scans in {time.perf_counter() - t:.1f} s -> {scans}")
    frame = table[["seriesuid", "coordX", "coordY", "coordZ"]].copy()
    frame.insert(0, "nodule_id", [f"n{i:05d}" for i in range(len(frame))])
    frame.to_csv(csv, index=False)
    assert len(pd.read_csv(csv)) == n_scans * per_scan
    return scans, csv


def in_process_rate(ensemble, X: np.ndarray, batch: int, repeats: int) -> tuple[float, np.ndarray]:
    """Nodules/s of ``Ensemble.predict`` over X in batches (best of ``repeats`` passes) and the probs."""
    import torch

    probs = None
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = []
        with torch.inference_mode():
            for s in range(0, len(X), batch):
                out.append(ensemble.predict(X[s : s + batch]).prob)
        if ensemble.device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
        probs = np.concatenate(out)
    return len(X) / best, probs


def served_rate(client, X: np.ndarray, batch: int, repeats: int, concurrency: int) -> tuple[float, np.ndarray]:
    """Nodules/s through TorchServe (one request per batch, ``concurrency`` in flight), best pass."""
    chunks = [X[s : s + batch] for s in range(0, len(X), batch)]
    best = float("inf")
    probs = None
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(repeats):
            t = time.perf_counter()
            answers = list(pool.map(client.predict, chunks))
            best = min(best, time.perf_counter() - t)
            probs = np.array([a["probability"] for ans in answers for a in ans])
    return len(X) / best, probs


def explain_latency(client, X: np.ndarray, repeats: int) -> dict[str, float]:
    """Median latency (s) of one predictions and one explanations request on the same patches, and their ratio."""
    client.predict(X)
    client.explain(X)  # warm-up (first explanation request loads the maps code in the worker)
    pred, expl = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        client.predict(X)
        pred.append(time.perf_counter() - t)
        t = time.perf_counter()
        answers = client.explain(X)
        expl.append(time.perf_counter() - t)
    assert all("cam" in a for a in answers)
    p, e = float(np.median(pred)), float(np.median(expl))
    return {"patches": len(X), "predict_s": p, "explain_s": e, "ratio": e / p}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "naslung-bench-serving"))
    ap.add_argument("--n-patches", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32, help="patches per request = in-process batch")
    ap.add_argument("--batch-sizes", default="1,8,32,128", help="CUDA sweep")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=2, help="requests in flight")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--n-scans", type=int, default=100)
    ap.add_argument("--per-scan", type=int, default=10)
    ap.add_argument("--skip-csv", action="store_true")
    ap.add_argument("--explain-patches", type=int, default=8, help="patches per request in the explain-cost check")
    ap.add_argument("--explain-repeats", type=int, default=5)
    args = ap.parse_args(argv)

    import torch

    from naslung import torchserve as S
    from naslung.params import load_params
    from naslung.score_csv import score_csv
    from naslung.scoring import quantise_uint8
    from naslung.serving_client import ServingClient

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device visible to torch", file=sys.stderr)
        return 2
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    base = load_params(args.params)
    specs = list(base.ensemble.specs) if len(base.ensemble.specs) == 9 else list(DEFAULT_SPECS)
    ens_dir = workdir / "ensemble9"
    ensemble = build_ensemble(specs, seed=0, device="cpu")
    ensemble.save(ens_dir)
    ensemble.to("cuda" if device == "cuda" else "cpu")
    n_params = sum(p.numel() for m in ensemble.members for p in m.parameters())

    params = base.replace(
        paths=replace(base.paths, artifacts=str(workdir / "artifacts")),
        serve=replace(
            base.serve,
            batch_size=1,
            max_batch_delay_ms=1,
            workers=1,
            torch_threads=threads,
            request_patches=args.batch_size,
            concurrency=args.concurrency,
            max_payload_mb=max(base.serve.max_payload_mb, 0.2 * max(args.batch_size, 128)),
            device="auto" if device == "cuda" else "cpu",
        ),
    )
    rng = np.random.default_rng(0)
    # On the uint8 grid (k / 255): the client's lean uint8 wire (serve.wire) then carries exactly these values,
    # so TorchServe and in-process see the same inputs.
    X = quantise_uint8(rng.random((args.n_patches, 32, 32, 32), dtype=np.float32)).astype(np.float32) / np.float32(255)
    report: dict = {
        "device": device,
        "threads": threads,
        "members": len(specs),
        "params": n_params,
        "batch_size": args.batch_size,
        "n_patches": args.n_patches,
        "concurrency": args.concurrency,
    }
    print(
        f"device {device}, torch threads {threads}, 9-member ensemble ({n_params} parameters), "
        f"{args.n_patches} patches, batch {args.batch_size}, {args.concurrency} requests in flight"
    )

    with S.torchserve_lock():
        S.build_mar(
            ens_dir,
            {"name": S.model_name_of(params), "version": "bench", "max_payload_mb": params.serve.max_payload_mb},
            S.serve_dir(params) / "model-store",
            params.serve,
        )
        t = time.perf_counter()
        server = S.start_server(params)
        report["start_s"] = time.perf_counter() - t
        try:
            client = ServingClient(
                server.inference_url, server.model_name, server.inference_key(), max_connections=args.concurrency
            )
            served_rate(client, X[: args.batch_size * 2], args.batch_size, 1, args.concurrency)  # warm-up
            in_process_rate(ensemble, X[: args.batch_size], args.batch_size, 1)  # warm-up
            # Interleaved passes (in-process, served, ...): drift in machine load hits both alike.
            local_rate = ts_rate = 0.0
            for _ in range(args.repeats):
                lr, local_probs = in_process_rate(ensemble, X, args.batch_size, 1)
                sr, ts_probs = served_rate(client, X, args.batch_size, 1, args.concurrency)
                local_rate, ts_rate = max(local_rate, lr), max(ts_rate, sr)
            diff = float(np.abs(ts_probs - local_probs).max())
            report.update(
                in_process_nodules_s=local_rate,
                torchserve_nodules_s=ts_rate,
                ratio=ts_rate / local_rate,
                max_abs_prob_diff=diff,
            )
            print(f"in-process PyTorch : {local_rate:8.1f} nodules/s")
            print(f"through TorchServe : {ts_rate:8.1f} nodules/s")
            print(f"ratio              : {ts_rate / local_rate:8.3f} (target >= 0.85); max |prob diff| {diff:.2e}")

            lat = explain_latency(client, X[: args.explain_patches], args.explain_repeats)
            report["explain_latency"] = lat
            print(
                f"explain cost       : {lat['patches']} patches per request: predictions "
                f"{lat['predict_s'] * 1e3:.1f} ms, explanations {lat['explain_s'] * 1e3:.1f} ms, "
                f"ratio {lat['ratio']:.2f}"
            )

            if device == "cuda":
                sweep = {}
                for b in [int(v) for v in args.batch_sizes.split(",")]:
                    n = max(b * 4, 64)
                    Xb = rng.random((n, 32, 32, 32), dtype=np.float32)
                    ensemble.to("cuda")
                    in_process_rate(ensemble, Xb[:b], b, 1)
                    lr, _ = in_process_rate(ensemble, Xb, b, args.repeats)
                    served_rate(client, Xb[:b], b, 1, args.concurrency)
                    sr, _ = served_rate(client, Xb, b, args.repeats, args.concurrency)
                    sweep[b] = {"in_process_nodules_s": lr, "torchserve_nodules_s": sr}
                    print(f"batch {b:4d}: in-process {lr:9.1f} nodules/s, TorchServe {sr:9.1f} nodules/s")
                report["cuda_sweep"] = sweep

            if not args.skip_csv:
                scans, csv = make_scans(workdir, args.n_scans, args.per_scan, seed=7)
                out = workdir / "results.csv"
                out.unlink(missing_ok=True)
                summary = score_csv(csv, scans, out, client, params.prepare, params.serve, progress=True)
                report["csv"] = {
                    "rows": summary.n_rows,
                    "ok": summary.n_ok,
                    "error": summary.n_error,
                    "scans": summary.n_scans,
                    "wall_s": summary.wall_s,
                    "read_s": summary.read_s,
                    "cut_s": summary.cut_s,
                    "extraction_s": summary.extraction_s,
                    "wait_inference_s": summary.wait_s,
                    "request_s": summary.request_s,
                }
                print(
                    f"CSV: {summary.n_rows} nodules over {summary.n_scans} scans in {summary.wall_s:.1f} s "
                    f"({summary.n_rows / summary.wall_s:.1f} nodules/s; target <= 60 s): extraction "
                    f"{summary.extraction_s:.1f} s (read {summary.read_s:.1f} + cut {summary.cut_s:.1f}), "
                    f"waiting for inference {summary.wait_s:.1f} s; {summary.n_ok} ok, {summary.n_error} error"
                )
        finally:
            S.stop_server()
    (workdir / "bench_serving.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"wrote {workdir / 'bench_serving.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
