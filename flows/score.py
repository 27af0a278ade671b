"""Prefect 3 flow ``score_folder``: score every nodule CSV dropped in an inbox through TorchServe.

For each ``<inbox>/<name>.csv`` (sorted by name) the task ``score-csv`` runs
:func:`naslung.score_csv.score_csv` against the running TorchServe (``naslung serve start``; the
inference key is read from ``<artifacts>/serve/key_file.json``) and writes
``<outbox>/<name>.results.csv``. Afterwards the input moves to ``<inbox>/done/`` — or, when the file
itself is unusable (0 bytes, missing columns), to ``<inbox>/failed/`` with the reason in
``<outbox>/<name>.error.txt``. A run killed half-way leaves the CSV in the inbox and a partial results
file in the outbox: the next run resumes it (rows already ok are not re-sent).

Folders default to ``serve.inbox`` / ``serve.outbox``; scans to ``paths.raw``. With ``explain=True``
the CSVs are scored through TorchServe's Explanations API and each ok row also gets a CAM overlay PNG in
``<outbox>/<name>.results_explain/`` (column ``explain_png``; see :mod:`naslung.score_csv`).
Deployment: ``python -m flows.score serve [--params params.yaml]`` serves ``score_folder`` with the cron
schedule ``serve.score_cron`` (one run at a time); ``python -m flows.score run`` runs it once now.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import require_api_server
from naslung.params import load_params


def score_file(params_path: str, csv_path: str, scans_dir: str, out_path: str, explain: bool = False) -> dict[str, Any]:
    """Score one CSV through the running TorchServe (with CAM overlays when ``explain``); returns the
    summary as a small dict."""
    from naslung.score_csv import ServingClient, score_csv
    from naslung.torchserve import model_name_of, read_inference_key, serve_dir

    params = load_params(params_path)
    s = params.serve
    client = ServingClient(
        f"http://{s.host}:{s.inference_port}",
        model_name_of(params),
        read_inference_key(serve_dir(params) / "key_file.json"),
        timeout_s=s.response_timeout_s,
    )
    summary = score_csv(
        Path(csv_path), Path(scans_dir), Path(out_path), client, params.prepare, s, progress=False, explain=explain
    )
    print(summary.describe())
    return {
        "csv": csv_path,
        "out": out_path if summary.out else None,
        "rows": summary.n_rows,
        "ok": summary.n_ok,
        "error": summary.n_error,
        "resumed": summary.n_resumed,
        "file_error": summary.file_error,
        "wall_s": round(summary.wall_s, 2),
    }


score_file_task = task(
    name="score-csv", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE, task_run_name="score-{csv_path}"
)(score_file)


def process_inbox(
    params_path: str,
    inbox: Path,
    outbox: Path,
    scans: Path,
    runner: Callable[..., dict[str, Any]] = score_file,
    explain: bool = False,
) -> list[dict[str, Any]]:
    """Score every ``*.csv`` in ``inbox`` into ``outbox``; move each input to ``done/`` or ``failed/``.
    ``explain`` is passed on to the runner only when set (CAM overlays, see :func:`score_file`)."""
    inbox, outbox = Path(inbox), Path(outbox)
    outbox.mkdir(parents=True, exist_ok=True)
    results = []
    for csv in sorted(p for p in inbox.glob("*.csv") if p.is_file()):
        out = outbox / f"{csv.stem}.results.csv"
        try:
            extra = {"explain": True} if explain else {}
            summary = runner(str(Path(params_path).resolve()), str(csv), str(scans), str(out), **extra)
        except Exception as exc:
            summary = {"csv": str(csv), "file_error": f"{csv.name}: {type(exc).__name__}: {exc}"}
        target = inbox / ("failed" if summary["file_error"] else "done")
        target.mkdir(exist_ok=True)
        if summary["file_error"]:
            (outbox / f"{csv.stem}.error.txt").write_text(encoding="utf-8", data=summary["file_error"] + "\n")
        shutil.move(str(csv), str(target / csv.name))
        results.append(summary)
    return results


@flow(name="score_folder", log_prints=True)
def score_folder(
    params_path: str = "params.yaml",
    inbox: str | None = None,
    outbox: str | None = None,
    scans: str | None = None,
    explain: bool = False,
) -> list[dict[str, Any]]:
    """Score the CSVs waiting in the inbox (see the module docstring); ``explain``: CAM overlays too."""
    params = load_params(params_path)
    return process_inbox(
        params_path,
        Path(inbox or params.serve.inbox),
        Path(outbox or params.serve.outbox),
        Path(scans or params.paths.raw),
        runner=score_file_task,
        explain=explain,
    )


def serve(params_path: str = "params.yaml", cron: str | None = None, name: str = "score-folder") -> None:
    """Serve the ``score_folder`` deployment (cron ``serve.score_cron``, one run at a time) until interrupted."""
    require_api_server("score_folder")
    params = load_params(params_path)
    score_folder.serve(
        name=name,
        cron=cron or params.serve.score_cron,
        parameters={"params_path": str(Path(params_path).resolve())},
        description="Score nodule CSVs dropped in the inbox through TorchServe; results go to the outbox.",
        tags=["naslung"],
        limit=1,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.score", description="NASLung CSV scoring flow.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve score_folder with its cron schedule (serve.score_cron)")
    s.add_argument("--params", default=os.environ.get("NASLUNG_PARAMS", "params.yaml"))
    s.add_argument("--cron", help="override serve.score_cron")
    r = sub.add_parser("run", help="run score_folder once, now")
    r.add_argument("--params", default=os.environ.get("NASLUNG_PARAMS", "params.yaml"))
    r.add_argument("--inbox")
    r.add_argument("--outbox")
    r.add_argument("--scans")
    r.add_argument("--explain", action="store_true", help="also write CAM overlay PNGs (explain_png column)")
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args.params, args.cron)
        return 0
    out = score_folder(args.params, args.inbox, args.outbox, args.scans, explain=args.explain)
    return 1 if any(r["file_error"] for r in out) else 0


if __name__ == "__main__":
    sys.exit(main())
