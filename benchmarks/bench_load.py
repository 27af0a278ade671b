"""Load benchmark: several ``naslung score`` clients (subprocesses) against one TorchServe on loopback.

One TorchServe (the random 9-member benchmark ensemble of ``serving_setup.py``, one worker, server-side
batch 1) serves ``--clients`` client loops for ``--duration`` seconds. Each loop runs
``naslung score <csv> --scans <scans> --out <fresh out> --no-progress --no-log`` over and over (a CSV of
``--n-scans`` x ``--per-scan`` synthetic nodules, ``serve.request_patches`` patches a request,
``serve.concurrency`` requests in flight per client) and starts no new run after the deadline; a run still
going at the deadline finishes (each run is killed after ``--duration`` + ``--grace`` s). Bounded in count
(``--max-runs`` per client) and time.

Reported: runs, rows scored ok / error, requests sent (ceil(rows sent / request_patches) per run, the CSV
scorer's grouping), rows/s over the whole window, failed runs (exit code != 0; 0 expected), and every
``--sample-s`` seconds the resident memory (RSS, MiB; psutil) of the TorchServe frontend (Java) and its
model workers (Python), the rows done so far and the 1-minute load average, as a table.

    .venv/bin/python benchmarks/bench_load.py [--clients 3] [--duration 120] [--sample-s 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from serving_setup import REPO, bench_ensemble, bench_params, make_scans, running_server, server_rss_mb


@dataclass
class ClientStats:
    """What one client loop did."""

    runs: int = 0
    failed_runs: int = 0
    rows_ok: int = 0
    rows_error: int = 0
    requests: int = 0
    messages: list[str] = field(default_factory=list)


def client_loop(
    i: int,
    cmd: list[str],
    out_dir: Path,
    deadline: float,
    run_limit_s: float,
    max_runs: int,
    size: int,
    stats: ClientStats,
) -> None:
    """Run ``cmd`` (plus ``--out``) again and again until ``deadline`` (monotonic) or ``max_runs``."""
    env = dict(os.environ, PYTHONUTF8="1")
    while time.monotonic() < deadline and stats.runs < max_runs:
        out = out_dir / f"client{i}_run{stats.runs}.csv"
        out.unlink(missing_ok=True)
        try:
            proc = subprocess.run(
                [*cmd, "--out", str(out)], capture_output=True, text=True, timeout=run_limit_s, env=env, check=False
            )
            code, tail = proc.returncode, (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        except subprocess.TimeoutExpired:
            code, tail = -9, ["killed: over the run time limit"]
        stats.runs += 1
        if out.is_file():
            res = pd.read_csv(out, dtype=str, keep_default_na=False)
            ok = int((res["status"] == "ok").sum())
            stats.rows_ok += ok
            stats.rows_error += int(len(res) - ok)
            stats.requests += math.ceil(ok / size)
            out.unlink()
        if code != 0:
            stats.failed_runs += 1
            stats.messages.append(f"client {i} run {stats.runs}: exit {code}: {' '.join(tail)[:300]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "naslung-bench-load"))
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds during which client runs start")
    ap.add_argument("--grace", type=float, default=180.0, help="a run is killed after duration + grace s")
    ap.add_argument("--max-runs", type=int, default=50, help="per client")
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--n-scans", type=int, default=5)
    ap.add_argument("--per-scan", type=int, default=10)
    ap.add_argument("--request-patches", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=2, help="requests in flight per client")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the worker (0: all cores)")
    args = ap.parse_args(argv)

    from naslung.params import load_params

    threads = args.threads or os.cpu_count() or 1
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    base = load_params(args.params)
    _, ens_dir, specs = bench_ensemble(base, workdir)
    params = bench_params(base, workdir, threads, args.request_patches, args.concurrency)
    scans, csv = make_scans(workdir, args.n_scans, args.per_scan, seed=11)
    naslung = str(Path(sys.executable).with_name("naslung"))
    cmd = [naslung, "--params", args.params]
    for key, value in (
        ("paths.artifacts", params.paths.artifacts),
        ("serve.request_patches", args.request_patches),
        ("serve.concurrency", args.concurrency),
        ("serve.max_payload_mb", params.serve.max_payload_mb),
    ):
        cmd += ["--set", f"{key}={value}"]
    cmd += ["score", str(csv), "--scans", str(scans), "--no-progress", "--no-log"]
    print(
        f"{args.clients} clients x {args.n_scans * args.per_scan} rows a run, {args.request_patches} patches a "
        f"request, {args.concurrency} in flight each, for {args.duration:.0f} s; 9-member ensemble "
        f"({len(specs)} members), worker torch threads {threads}; load {os.getloadavg()[0]:.2f}"
    )
    samples: list[dict] = []
    stats = [ClientStats() for _ in range(args.clients)]
    with running_server(params, ens_dir) as (server, start_s):
        print(f"TorchServe up in {start_s:.1f} s ({server.model_name}); memory {server_rss_mb()}")
        t0 = time.monotonic()
        deadline = t0 + args.duration
        out_dir = workdir / "out"
        out_dir.mkdir(exist_ok=True)
        threads_ = [
            threading.Thread(
                target=client_loop,
                args=(i, cmd, out_dir, deadline, args.duration + args.grace, args.max_runs, args.request_patches, s),
                daemon=True,
            )
            for i, s in enumerate(stats)
        ]
        for th in threads_:
            th.start()

        def sample() -> None:
            rss = server_rss_mb()
            samples.append(
                {
                    "t_s": time.monotonic() - t0,
                    "frontend_MiB": rss.get("frontend", float("nan")),
                    "workers_MiB": rss.get("workers", float("nan")),
                    "total_MiB": rss.get("total", float("nan")),
                    "runs_done": sum(s.runs for s in stats),
                    "rows_ok": sum(s.rows_ok for s in stats),
                    "clients_running": sum(th.is_alive() for th in threads_),
                    "load_1min": os.getloadavg()[0],
                }
            )

        sample()
        while any(th.is_alive() for th in threads_):
            for th in threads_:
                th.join(timeout=max(0.1, args.sample_s / len(threads_)))
            if time.monotonic() - t0 >= len(samples) * args.sample_s:
                sample()
        wall = time.monotonic() - t0
        sample()
    table = pd.DataFrame(samples)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    total = ClientStats(
        runs=sum(s.runs for s in stats),
        failed_runs=sum(s.failed_runs for s in stats),
        rows_ok=sum(s.rows_ok for s in stats),
        rows_error=sum(s.rows_error for s in stats),
        requests=sum(s.requests for s in stats),
    )
    for s in stats:
        for m in s.messages[:3]:
            print(m)
    mem = table["total_MiB"].dropna()
    memory = (
        f"server RSS {mem.iloc[0]:.0f} -> {mem.iloc[-1]:.0f} MiB (max {mem.max():.0f})"
        if len(mem)
        else "no RSS (psutil?)"
    )
    print(
        f"\n{args.clients} clients, {wall:.0f} s: {total.runs} runs ({total.failed_runs} failed), "
        f"{total.rows_ok} rows ok, {total.rows_error} rows error, {total.requests} requests "
        f"({total.rows_ok / wall:.1f} rows/s, {total.requests / wall:.2f} requests/s); {memory}; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    report = {"clients": args.clients, "wall_s": wall, **total.__dict__, "samples": samples}
    (workdir / "bench_load.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"wrote {workdir / 'bench_load.json'}")
    return 0 if total.failed_runs == 0 and total.rows_error == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
