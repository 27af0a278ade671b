"""Prefect 3 flow ``score_folder``: score every nodule CSV dropped in an inbox through TorchServe.

Each ``<inbox>/<name>.csv`` becomes ``<outbox>/<name>.results.csv`` in the task ``score-csv``
(:func:`naslung.score_csv.score_with_server` against the running TorchServe of ``naslung serve start``);
the input then moves to ``done/`` or ``failed/`` (:func:`naslung.scoring_csv.inbox.process_inbox`; a
killed run is resumed by the next). Folders default to ``serve.inbox`` / ``serve.outbox``, scans to
``paths.raw``. With ``explain=True`` each ok row also gets a CAM overlay PNG in
``<outbox>/<name>.results_explain/`` (column ``explain_png``); with ``report=True`` (implies ``explain``)
each study also gets ``<outbox>/<name>.results_reports/<study>/report.dcm`` and ``report.pdf``
(:mod:`naslung.report`). Beside each results CSV go its run manifest
``<name>.results.manifest.json`` and drift plot ``<name>.results.drift.png``; each scored CSV is logged as
an MLflow scoring run (experiment ``serve.scoring_experiment``, linked to the model version;
:mod:`naslung.registry.scoring_runs`) unless ``log=False`` — an unreachable store only warns.
Deployment: ``python -m flows.score serve [--params params.yaml]`` serves ``score_folder`` with the cron
schedule ``serve.score_cron`` (one run at a time); ``python -m flows.score run`` runs it once now.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import require_api_server
from naslung.params import load_params
from naslung.registry.scoring_runs import log_scoring_run
from naslung.report import write_reports
from naslung.score_csv import score_with_server
from naslung.scoring_csv.inbox import process_inbox

__all__ = ["main", "process_inbox", "score_file", "score_folder", "serve"]


def score_file(
    params_path: str,
    csv_path: str,
    scans_dir: str,
    out_path: str,
    explain: bool = False,
    log: bool = True,
    report: bool = False,
) -> dict[str, Any]:
    """Score one CSV through the running TorchServe (CAM overlays too when ``explain``), log it as an MLflow
    scoring run when ``log``; the summary in brief, with ``mlflow_run_id`` (None when not logged). With
    ``report`` (implies ``explain``) a DICOM SR and a PDF per study too; ``reports`` lists their folders."""
    params = load_params(params_path)
    summary = score_with_server(
        params, Path(csv_path), Path(scans_dir), Path(out_path), progress=False, explain=explain or report
    )
    print(summary.describe())
    reports: list[str] = []
    if report and summary.out is not None and Path(summary.out).is_file():
        from naslung.torchserve import model_name_of

        written = write_reports(Path(summary.out), Path(scans_dir), model_name=model_name_of(params))
        reports = [str(r.folder) for r in written]
    run_id = log_scoring_run(params, summary.manifest) if log and summary.manifest is not None else None
    return {**summary.to_dict(), "mlflow_run_id": run_id, "reports": reports}


score_file_task = task(
    name="score-csv", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE, task_run_name="score-{csv_path}"
)(score_file)


@flow(name="score_folder", log_prints=True)
def score_folder(
    params_path: str = "params.yaml",
    inbox: str | None = None,
    outbox: str | None = None,
    scans: str | None = None,
    explain: bool = False,
    log: bool = True,
    report: bool = False,
) -> list[dict[str, Any]]:
    """Score the CSVs waiting in the inbox (see the module docstring); ``explain``: CAM overlays too;
    ``log``: an MLflow scoring run per CSV; ``report``: a DICOM SR and a PDF per study (implies ``explain``)."""
    params = load_params(params_path)
    inbox_dir, outbox_dir = Path(inbox or params.serve.inbox), Path(outbox or params.serve.outbox)
    scans_dir = Path(scans or params.paths.raw)
    runner = functools.partial(score_file_task, report=True) if report else score_file_task
    return process_inbox(params_path, inbox_dir, outbox_dir, scans_dir, runner, explain or report, log=log)


def serve(params_path: str = "params.yaml", cron: str | None = None, name: str = "score-folder") -> None:
    """Serve the ``score_folder`` deployment (cron ``serve.score_cron``, one run at a time) until interrupted."""
    require_api_server("score_folder")
    score_folder.serve(
        name=name,
        cron=cron or load_params(params_path).serve.score_cron,
        parameters={"params_path": str(Path(params_path).resolve())},
        description="Score nodule CSVs dropped in the inbox through TorchServe; results go to the outbox.",
        tags=["naslung"],
        limit=1,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.score", description="NASLung CSV scoring flow.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve score_folder with its cron schedule (serve.score_cron)")
    s.add_argument("--cron", help="override serve.score_cron")
    r = sub.add_parser("run", help="run score_folder once, now")
    for flag in ("--inbox", "--outbox", "--scans"):
        r.add_argument(flag)
    r.add_argument("--explain", action="store_true", help="also write CAM overlay PNGs (explain_png column)")
    r.add_argument("--no-log", action="store_true", help="no MLflow scoring runs")
    r.add_argument("--report", action="store_true", help="also a DICOM SR and a PDF per study (implies --explain)")
    for p in (s, r):
        p.add_argument("--params", default=os.environ.get("NASLUNG_PARAMS", "params.yaml"))
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args.params, args.cron)
        return 0
    out = score_folder(
        args.params, args.inbox, args.outbox, args.scans, explain=args.explain, log=not args.no_log, report=args.report
    )
    return 1 if any(r["file_error"] for r in out) else 0


if __name__ == "__main__":
    sys.exit(main())
