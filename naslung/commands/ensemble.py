"""Ensemble area commands: ``ensemble train``, ``evaluate``, ``register``, ``promote``, ``rollback``,
``mlflow-ui``. Heavy imports (torch, mlflow) happen inside the handlers."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ens = sub.add_parser(
        "ensemble",
        help="ensemble steps (train the selected members)",
        description="Ensemble steps. `naslung ensemble train` trains every selected member.",
    )
    ens_sub = ens.add_subparsers(dest="ensemble_command", metavar="STEP")
    ens_sub.required = True
    tr = ens_sub.add_parser(
        "train",
        help="train the selected members for every test fold (cached; re-runs skip finished members)",
        description="Train each member spec (ensemble.specs or ensemble.members, i.e. the search's "
        "selected.json) once per test fold in ensemble.folds with the honest protocol; save the "
        "deploy-fold ensemble to <ensemble.out_dir>/model and the index training.json.",
    )
    tr.add_argument(
        "--members",
        nargs="+",
        metavar="JSON",
        help="selection file(s), JSON lists of member specs, e.g. search/selected.json "
        "search/dnas/selected.json (default: params ensemble.members)",
    )
    tr.add_argument("--no-log", action="store_true", help="do not log member training runs to MLflow")
    tr.set_defaults(func=_train)

    ev = sub.add_parser(
        "evaluate",
        help="ensemble evaluation on the test folds, beside the diameter-only and voxel-statistics baselines",
        description="Evaluate members and the ensemble over ensemble.folds (reporting only: nothing is chosen "
        "on these figures), with bootstrap 95 %% intervals and paired tests against the diameter-only and "
        "voxel-statistics baselines fitted on the other folds; writes <paths.artifacts>/metrics.json (the "
        "headline), metrics_detail.json (everything) and plots/; logs an evaluate run to MLflow.",
    )
    ev.add_argument("--no-log", action="store_true", help="do not log the evaluation run to MLflow")
    ev.set_defaults(func=_evaluate)

    rg = sub.add_parser(
        "register",
        help="register the ensemble in the MLflow Model Registry (alias challenger)",
        description="Log the ensemble as a pyfunc model (with its calibrator, calibration.json) with "
        "metrics, lineage tags, a model card and the calibration report; compute the figures the "
        "promotion gate reads on the deploy fold's validation folds (ensemble validation AUC, "
        "sensitivity, specificity, accuracy with intervals, the constant predictor, the diameter and "
        "voxel-statistics baselines fitted on that split's training folds, the rows' hash) and put them "
        "on the version as naslung.val.* tags; register it under registry.name with the alias "
        "'challenger'. Test-fold figures are recorded for reporting only. Stored-output regression check: the "
        "ensemble scores the real patches of registry.regression_patches (read in place; a missing file is "
        "recorded as skipped) and its calibrated and raw probabilities, stored as regression/scores.json in the "
        "run, are compared with the champion's stored scores: max |dp| > registry.regression_tolerance or mean "
        "|dp| > registry.regression_mean_tolerance fails the check (tags naslung.regression.*, model card, "
        "registration.json) and the gate refuses the version unless re-baselined. No champion yet: the scores "
        "are the baseline candidate.",
    )
    rg.add_argument("--search-run-id", help="MLflow run id of the search (default: from search/summary.json)")
    rg.add_argument(
        "--promote",
        action="store_true",
        help="run the promotion gate (validation figures, see `naslung promote --help`) right after "
        "registering (a refusal is recorded, exit 0)",
    )
    rg.add_argument(
        "--rebaseline",
        metavar="WHY",
        help="accept regression-set scores that moved beyond the tolerances of the current champion's "
        "(recorded with who, when and WHY; promotion then makes them the baseline)",
    )
    rg.add_argument(
        "--out",
        help="write the version and the gate decision here as JSON (default: <paths.artifacts>/registration.json)",
    )
    rg.set_defaults(func=_register)

    pr = sub.add_parser(
        "promote",
        help="promotion gate on validation folds (never a test fold): challenger -> champion",
        description="Promote the challenger (or --version) to champion when, on the deploy fold's "
        "validation folds: its data validation passed (registry.require_validation); validation AUC >= "
        "registry.min_auc, sensitivity >= registry.min_sensitivity and specificity >= "
        "registry.min_specificity (so neither an all-malignant nor an all-benign model passes); accuracy "
        "above the constant (majority-class) predictor's; AUC >= each baseline's (diameter, voxel "
        "statistics) + registry.baseline_margin; and, when the champion was evaluated on the same "
        "validation rows, AUC >= champion AUC - registry.auc_tolerance (otherwise that comparison is "
        "skipped and the reason says so); and its stored scores on the regression patches within "
        "registry.regression_tolerance (max |dp|) and registry.regression_mean_tolerance (mean |dp|) of the "
        "current champion's stored scores, unless re-baselined (--rebaseline, or `naslung register "
        "--rebaseline` against the same champion). Test folds are only reported. The decision record (JSON "
        "in the version's run) lists every figure and the rows it came from. A promoted version's scores "
        "become the regression baseline. Exit 1 when refused.",
    )
    pr.add_argument("--version", help="model version to gate (default: the 'challenger' alias)")
    pr.add_argument(
        "--rebaseline",
        metavar="WHY",
        help="accept the version's regression-set scores although they moved beyond the tolerances of the "
        "champion's (recorded with who, when and WHY in the tags and the decision record)",
    )
    pr.set_defaults(func=_promote)

    rb = sub.add_parser(
        "rollback",
        help="make the 'previous' version champion again",
        description="Swap the aliases champion and previous of registry.name.",
    )
    rb.set_defaults(func=_rollback)

    ui = sub.add_parser(
        "mlflow-ui",
        help="start the MLflow UI on 127.0.0.1 over the embedded store",
        description="Start `mlflow server` (1 worker) bound to loopback over the tracking URI "
        "(MLFLOW_TRACKING_URI or paths.mlflow_uri).",
    )
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=_mlflow_ui)


def _train(args: argparse.Namespace) -> int:
    from naslung.commands import params_of
    from naslung.ensemble.training import member_specs, train_ensemble

    params = params_of(args)
    specs = member_specs(params, args.members)
    print(f"{len(specs)} member specs x folds {list(params.ensemble.folds)}")
    from naslung import tracking

    index = train_ensemble(params, specs, tracker=None if args.no_log else tracking.MlflowTracker())
    done = sum(1 for m in index["members"] if m["cached"])
    print(f"{len(index['members'])} members ({done} from cache); ensemble saved to {index['model_dir']}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from naslung import tracking
    from naslung.commands import params_of
    from naslung.ensemble.evaluation import evaluate_ensemble, table_markdown

    params = params_of(args)
    result = evaluate_ensemble(params, tracker=None if args.no_log else tracking.MlflowTracker())
    print(table_markdown(result))
    print("size curve (F1 mean): " + ", ".join(f"n={n}: {v['f1_mean']:.3f}" for n, v in result["size_curve"].items()))
    return 0


def _register(args: argparse.Namespace) -> int:
    from pathlib import Path

    from naslung import registry
    from naslung.artifact_paths import ArtifactPaths
    from naslung.commands import params_of

    params = params_of(args)
    reg = registry.register(params, search_id=args.search_run_id, rebaseline=args.rebaseline)
    record: dict[str, object] = {
        "name": reg.name,
        "version": reg.version,
        "run_id": reg.run_id,
        "model_uri": reg.model_uri,
        "regression": reg.regression,  # the stored-output regression check at registration
    }
    if args.promote:
        # The gate's refusal is a normal outcome of a pipeline run (the champion stays), not a failure.
        record["gate"] = registry.promote(params, reg.version).as_dict()
    out = Path(args.out or ArtifactPaths.from_params(params).artifacts.registration)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(encoding="utf-8", data=json.dumps(record, indent=1) + "\n")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from naslung import registry
    from naslung.commands import params_of

    decision = registry.promote(params_of(args), args.version, rebaseline=args.rebaseline)
    print(json.dumps(decision.as_dict()))
    return 0 if decision.promoted else 1


def _rollback(args: argparse.Namespace) -> int:
    from naslung import registry
    from naslung.commands import params_of

    registry.rollback(params_of(args))
    return 0


def _mlflow_ui(args: argparse.Namespace) -> int:
    from pathlib import Path

    from naslung.commands import params_of

    params = params_of(args)
    uri = params.mlflow_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    artifacts = Path(params.paths.mlflow_artifacts).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        artifacts.as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    base = f"http://127.0.0.1:{args.port}/#"
    print(f"MLflow UI on http://127.0.0.1:{args.port} over {uri} (Ctrl-C to stop); model-training views:")
    for line in _ui_urls(params, base):
        print(f"  {line}")
    sys.stdout.flush()
    # The server replaces this process, so Ctrl-C and SIGTERM reach it (and its workers) directly.
    os.execve(sys.executable, cmd, env)


def _ui_urls(params: Any, base: str) -> list[str]:
    """The UI pages to look at, as URLs: each naslung experiment in the model-training view
    (``workflowType=machine_learning``), the newest search parent run (its candidates are its child runs),
    the registered model and its champion version (lineage: source run, data, search), or, when the gate
    promoted none, the newest registered (challenger) version. Model pages take ``workflowType`` too (else
    MLflow 3 shows them with its GenAI sidebar)."""
    from naslung import tracking

    tracking.set_uri(params.mlflow_uri)
    lines = []
    for name in dict.fromkeys((params.search.experiment, params.train.experiment, params.ensemble.experiment)):
        exp_id = tracking.find_experiment_id(name)
        if exp_id is not None:
            lines.append(f"experiment {name}: {base}/experiments/{exp_id}?workflowType=machine_learning")
    search_exp = tracking.find_experiment_id(params.search.experiment)
    run_id = tracking.latest_parent_run(params.search.experiment)
    if search_exp is not None and run_id is not None:
        lines.append(f"search run (candidates nested): {base}/experiments/{search_exp}/runs/{run_id}")
    name = params.registry.name
    ml = "?workflowType=machine_learning"
    lines.append(f"registered model {name}: {base}/models/{name}{ml}")
    version = tracking.alias_version(name, "champion")
    if version is not None:
        lines.append(f"champion version {version} (lineage): {base}/models/{name}/versions/{version}{ml}")
    else:
        latest = tracking.alias_version(name, "challenger")
        if latest is not None:
            lines.append(
                f"challenger version {latest} (no champion: the gate refused it; lineage and decision): "
                f"{base}/models/{name}/versions/{latest}{ml}"
            )
    return lines
