"""Set-up shared by the serving benchmarks (``bench_serving.py``, ``bench_load.py``): a random 9-member
ensemble, the cached synthetic scans + nodule CSV, the benchmark's params, and a packaged, running
TorchServe (one per machine, under :func:`naslung.torchserve.torchserve_lock`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

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


def build_ensemble(specs: list[str], seed: int, device: str) -> Any:
    """An :class:`naslung.ensemble.model.Ensemble` of untrained members (seeded weights)."""
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


def bench_params(
    base: Any, workdir: Path, threads: int, request_patches: int, concurrency: int, device: str = "cpu"
) -> Any:
    """``base`` params with the benchmark's serving settings: artifacts under ``workdir``, one worker,
    server-side batch 1 (one request = one batch), ``threads`` torch threads, ``request_patches`` patches a
    request, ``concurrency`` requests in flight."""
    return base.replace(
        paths=replace(base.paths, artifacts=str(workdir / "artifacts")),
        serve=replace(
            base.serve,
            batch_size=1,
            max_batch_delay_ms=1,
            workers=1,
            torch_threads=threads,
            request_patches=request_patches,
            concurrency=concurrency,
            max_payload_mb=max(base.serve.max_payload_mb, 0.2 * max(request_patches, 128)),
            device="auto" if device == "cuda" else "cpu",
        ),
    )


def bench_ensemble(base: Any, workdir: Path, device: str = "cpu") -> tuple[Any, Path, list[str]]:
    """The benchmark ensemble (``ensemble.specs`` when it lists 9 members, else :data:`DEFAULT_SPECS`;
    seed 0), saved to ``<workdir>/ensemble9``: (ensemble on ``device``, its folder, the specs)."""
    specs = list(base.ensemble.specs) if len(base.ensemble.specs) == 9 else list(DEFAULT_SPECS)
    ens_dir = workdir / "ensemble9"
    ensemble = build_ensemble(specs, seed=0, device="cpu")
    ensemble.save(ens_dir)
    ensemble.to("cuda" if device == "cuda" else "cpu")
    return ensemble, ens_dir, specs


@contextlib.contextmanager
def running_server(params: Any, ens_dir: Path, version: str = "bench") -> Iterator[tuple[Any, float]]:
    """Package ``ens_dir`` into the .mar of ``params`` and run TorchServe for the block (then stop it);
    yields ``(server, start_s)``: the :class:`naslung.torchserve.Server` and the seconds its start took."""
    from naslung import torchserve as S

    with S.torchserve_lock():
        S.build_mar(
            ens_dir,
            {"name": S.model_name_of(params), "version": version, "max_payload_mb": params.serve.max_payload_mb},
            S.serve_dir(params) / "model-store",
            params.serve,
        )
        t = time.perf_counter()
        server = S.start_server(params)
        start_s = time.perf_counter() - t
        try:
            yield server, start_s
        finally:
            S.stop_server()


def server_rss_mb() -> dict[str, float]:
    """Resident memory (MiB) of the running TorchServe: ``frontend`` (the Java process), ``workers`` (its
    child processes, the Python model workers, summed) and ``total``; empty without psutil or a server."""
    try:
        import psutil
    except ImportError:
        return {}
    from naslung.torchserve import running_pid

    pid = running_pid()
    if pid is None:
        return {}
    try:
        front = psutil.Process(pid)
        kids = front.children(recursive=True)
        f = front.memory_info().rss / 2**20
        w = 0.0
        for k in kids:
            with contextlib.suppress(psutil.Error):
                w += k.memory_info().rss / 2**20
    except psutil.Error:
        return {}
    return {"frontend": f, "workers": w, "total": f + w, "n_workers": float(len(kids))}
