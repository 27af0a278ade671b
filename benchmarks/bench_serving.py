"""Serving benchmark: TorchServe vs in-process PyTorch, and a 1,000-nodule CSV over 100 scans.

1. Throughput of a 9-member ensemble (random weights, fixed seed; member specs from ``ensemble.specs``
   when set, else the built-in list below) through TorchServe divided by in-process
   ``Ensemble.predict`` on the same patches with the same batch size (one request = one batch;
   TorchServe server-side batch 1 so the batch size is identical; same torch thread count).
   Target ratio >= 0.85. The client sends uint8 patches and asks for columnar answers (its defaults); the
   patches lie on the uint8 grid, so both sides score the same values. GPU figures: ``bench_gpu_scoring.py``.
2. Wall time of ``score_csv`` on a 1,000-nodule CSV over 100 synthetic scans
   (:mod:`naslung.data.synth`, 10 nodules each, scans cached in ``--workdir``), split into extraction
   (scan reading + patch cutting) and the main thread's waiting for inference, in the same run for
   ``--csv-modes`` ``before`` (extraction as it was: ``PatchCutter`` per row, in the main thread) and
   ``after`` (the vectorised ``MultiPointCutter`` in a background thread, one scan ahead), with the two
   results files compared (max |delta probability|, labels, votes). The server is the same for both (the
   current handler: CPU channels-last-3d forward); 2b. ``--device cpu``: that forward in-process, eager
   (as before) vs channels-last-3d, interleaved, nodules/s and max |delta p|.
3. ``--device cuda`` (a machine with a CUDA GPU): the handler runs on ``cuda:<gpu_id>`` and the
   in-process model on ``cuda``; nodules/s for both at each of ``--batch-sizes``.
4. Explainability cost: latency of one ``/explanations`` request divided by one ``/predictions``
   request on the same ``--explain-patches`` patches (sequential, interleaved, median of
   ``--explain-repeats``); printed, no target.

Set-up (ensemble, scans, params, server) is shared with ``bench_load.py``: ``benchmarks/serving_setup.py``.
Usage: ``python benchmarks/bench_serving.py --device cpu [--skip-throughput]`` (starts and stops its own
TorchServe; only one TorchServe may run per machine). Prints the figures and writes ``<workdir>/bench_serving.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from serving_setup import REPO, bench_ensemble, bench_params, make_scans, running_server

__all__ = ["REPO", "make_scans"]


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


def _old_cut_rows(image, rows, prepare):
    """Extraction as before the vectorised cutter: one ``PatchCutter.cut`` (one ``sitk.Resample``) per row."""
    from naslung.data.patches import OutsideScanError, PatchCutter
    from naslung.scoring_csv import extract

    out = extract._ScanCut()
    cutter = PatchCutter(image, prepare)
    for row in rows:
        try:
            out.cut.append((row, cutter.cut(row.point)))
        except (OutsideScanError, RuntimeError, ValueError) as exc:
            out.errors.append((row, f"row {row.row + 1}: {exc}"))
    return out


def csv_run(mode: str, csv: Path, scans: Path, out: Path, client, params):
    """``score_csv`` of the benchmark CSV. ``before``: extraction as it was (``PatchCutter`` per row, in the
    main thread between requests); ``after``: the current code (vectorised cutter, background thread)."""
    import functools
    from unittest import mock

    import naslung.score_csv as sc
    from naslung.scoring_csv import extract

    if mode not in ("before", "after"):
        raise SystemExit(f"--csv-modes: unknown mode {mode!r} (before, after)")
    with contextlib.ExitStack() as stack:
        if mode == "before":  # the same pipeline with the old extraction swapped in
            stack.enter_context(mock.patch.object(extract, "cut_rows", _old_cut_rows))
            in_main_thread = functools.partial(extract.scan_patches, prefetch=0)
            stack.enter_context(mock.patch.object(sc, "scan_patches", in_main_thread))
        return sc.score_csv(csv, scans, out, client, params.prepare, params.serve, progress=False)


def compare_results(a: Path, b: Path) -> dict:
    """Two results CSVs of the same input: same rows and statuses, max |delta probability|, labels / votes equal."""
    import pandas as pd

    x, y = pd.read_csv(a), pd.read_csv(b)
    ok = (x["status"] == "ok") & (y["status"] == "ok")
    return {
        "rows": int(len(x)),
        "same_status": bool((x["status"] == y["status"]).all()),
        "max_abs_prob_diff": float((x.loc[ok, "probability"] - y.loc[ok, "probability"]).abs().max()),
        "same_labels": bool((x.loc[ok, "label"] == y.loc[ok, "label"]).all()),
        "same_votes": bool((x.loc[ok, "votes"] == y.loc[ok, "votes"]).all()),
    }


def cpu_layout_ab(ensemble, X: np.ndarray, batch: int, repeats: int) -> dict:
    """In-process CPU forward, eager (as before) vs channels-last-3d (what the handler now runs), interleaved
    passes over X in batches of ``batch``: nodules/s of each (best pass) and max |delta member p|."""
    from naslung.ensemble.fused import FusedEnsemble

    eager = FusedEnsemble.from_ensemble(ensemble, precision="fp32")
    fast = FusedEnsemble.from_ensemble(ensemble, precision="fp32", channels_last=True)
    rates: dict[str, float] = {"eager": 0.0, "channels_last": 0.0}
    outs: dict[str, np.ndarray] = {}
    fast.member_probs(X[:batch])
    eager.member_probs(X[:batch])  # warm-up
    for _ in range(max(1, repeats)):
        for name, fused in (("eager", eager), ("channels_last", fast)):
            t = time.perf_counter()
            outs[name] = np.concatenate([fused.member_probs(X[s : s + batch]) for s in range(0, len(X), batch)])
            rates[name] = max(rates[name], len(X) / (time.perf_counter() - t))
    diff = float(np.abs(outs["eager"].astype(np.float64) - outs["channels_last"]).max())
    print(
        f"CPU forward        : eager {rates['eager']:.1f} nodules/s, channels-last-3d {rates['channels_last']:.1f} "
        f"nodules/s (x{rates['channels_last'] / rates['eager']:.2f}); max |member dp| {diff:.1e}; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    return {"eager_nodules_s": rates["eager"], "channels_last_nodules_s": rates["channels_last"], "max_abs_dp": diff}


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
    ap.add_argument("--skip-throughput", action="store_true", help="only the CPU layout and CSV parts")
    ap.add_argument(
        "--csv-modes",
        default="before,after",
        help="CSV runs in this order: before (PatchCutter per row in the main thread) and/or after (the "
        "vectorised cutter in a background thread)",
    )
    ap.add_argument("--explain-patches", type=int, default=8, help="patches per request in the explain-cost check")
    ap.add_argument("--explain-repeats", type=int, default=5)
    args = ap.parse_args(argv)

    import torch

    from naslung.params import load_params
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
    ensemble, ens_dir, specs = bench_ensemble(base, workdir, device)
    n_params = sum(p.numel() for m in ensemble.members for p in m.parameters())
    params = bench_params(base, workdir, threads, args.batch_size, args.concurrency, device)
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

    with running_server(params, ens_dir) as (server, start_s):
        report["start_s"] = start_s
        client = ServingClient(
            server.inference_url, server.model_name, server.inference_key(), max_connections=args.concurrency
        )
        if not args.skip_throughput:
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

        if device == "cpu":
            report["cpu_layout"] = cpu_layout_ab(ensemble, X, args.batch_size, args.repeats)

        if not args.skip_csv:
            scans, csv = make_scans(workdir, args.n_scans, args.per_scan, seed=7)
            runs = {}
            for mode in [m.strip() for m in args.csv_modes.split(",") if m.strip()]:
                out = workdir / f"results_{mode}.csv"
                out.unlink(missing_ok=True)
                summary = csv_run(mode, csv, scans, out, client, params)
                runs[mode] = (summary, out)
                report.setdefault("csv", {})[mode] = {
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
                    "load_1min": os.getloadavg()[0],
                }
                print(
                    f"CSV [{mode:>6}]: {summary.n_rows} nodules over {summary.n_scans} scans in "
                    f"{summary.wall_s:.1f} s ({summary.n_rows / summary.wall_s:.1f} nodules/s): extraction "
                    f"{summary.extraction_s:.1f} s (read {summary.read_s:.1f} + cut {summary.cut_s:.1f}; "
                    f"{'in the main thread' if mode == 'before' else 'in a background thread'}), main thread "
                    f"waiting for inference {summary.wait_s:.1f} s; {summary.n_ok} ok, {summary.n_error} error; "
                    f"load {os.getloadavg()[0]:.2f}"
                )
            if "before" in runs and "after" in runs:
                report["csv"]["same_results"] = compare_results(runs["before"][1], runs["after"][1])
                print(f"CSV before vs after: {report['csv']['same_results']}")
    (workdir / "bench_serving.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"wrote {workdir / 'bench_serving.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
