"""Prefect 3 flows of the ensemble area and the scheduled ``retrain`` deployment.

Flows (each takes the path of a params file; tasks pass paths / ids / small dicts, never tensors):

* ``train_ensemble`` — one ``train-member`` task per (test fold, spec) with retries; a member is cached on
  disk under a key of (spec, fold, data hash, params hash) (see :mod:`naslung.ensemble.training`), so a
  re-run after a failure or a kill skips every finished member; then the deploy-fold ensemble is saved.
* ``evaluate`` — per-fold / mean ± std metrics, ensemble-size curve, plots (``metrics.json``).
* ``register_and_promote`` — register the ensemble (alias ``challenger``, lineage tags, model card), then
  the promotion gate (validation passed and F1 within tolerance of the champion) -> ``champion``.
* ``retrain`` — validate data -> (optionally) re-run the search (``search.strategy``) -> train -> evaluate ->
  register -> gate -> promote. Fails early, before training, when data validation fails (champion unchanged).

Deployment: ``python -m flows.ensemble serve [--params params.yaml]`` serves ``retrain`` with the cron
schedule ``registry.cron`` (concurrency 1) against ``PREFECT_API_URL`` (a ``prefect server start`` on
127.0.0.1); without one it stops with a one-line error (see :func:`flows.require_api_server`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import require_api_server
from naslung.params import Params, load_params


def _params(params_path: str) -> Params:
    return load_params(params_path)


# --- tasks ---------------------------------------------------------------------------------------------


@task(name="validate-data", cache_policy=NO_CACHE)
def validate_data(params_path: str) -> dict[str, Any]:
    """Great Expectations suites (:func:`naslung.validation.validate`); writes artifacts/validation.json."""
    from naslung.validation import validate

    result = validate(_params(params_path))
    return {"success": bool(result["success"]), "suites": {k: v["success"] for k, v in result["suites"].items()}}


@task(
    name="train-member",
    retries=2,
    retry_delay_seconds=10,
    cache_policy=NO_CACHE,
    task_run_name="member-{spec_id}-fold{fold}",
)
def train_member_task(params_path: str, spec_json: str, spec_id: str, fold: int, data_hash: str) -> dict[str, Any]:
    """Train one member (or return it from the on-disk cache); returns its record as a dict."""
    from naslung import tracking
    from naslung.ensemble.training import train_member
    from naslung.models.factory import spec_from_json

    rec = train_member(_params(params_path), spec_from_json(spec_json), fold, data_hash, tracker=tracking)
    if rec.cached:
        print(f"member {spec_id} fold {fold}: cached ({rec.dir})")
    return asdict(rec)


@task(name="save-ensemble", cache_policy=NO_CACHE)
def save_ensemble_task(
    params_path: str, spec_jsons: list[str], records: list[dict[str, Any]], data: dict[str, Any]
) -> str:
    from naslung.ensemble.training import INDEX_FILE, MemberRecord, write_index
    from naslung.models.factory import spec_from_json

    params = _params(params_path)
    write_index(params, [spec_from_json(s) for s in spec_jsons], [MemberRecord(**r) for r in records], data)
    return str(Path(params.ensemble.out_dir) / INDEX_FILE)


@task(name="evaluate-ensemble", cache_policy=NO_CACHE)
def evaluate_task(params_path: str) -> dict[str, Any]:
    from naslung.ensemble.evaluation import evaluate_ensemble

    result = evaluate_ensemble(_params(params_path))
    return result["summary"]


@task(name="register", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register_task(params_path: str, search_run_id: str | None) -> dict[str, str]:
    from naslung import registry

    reg = registry.register(_params(params_path), search_id=search_run_id)
    return {"name": reg.name, "version": reg.version, "run_id": reg.run_id, "model_uri": reg.model_uri}


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(params_path: str, version: str) -> dict[str, Any]:
    from naslung import registry

    return registry.promote(_params(params_path), version).as_dict()


# --- flows ---------------------------------------------------------------------------------------------


@flow(name="train_ensemble", log_prints=True)
def train_ensemble(params_path: str = "params.yaml") -> str:
    """Train every member for every evaluation fold (cached); returns the path of training.json."""
    from naslung.ensemble.training import data_version, member_specs

    params = _params(params_path)
    specs = member_specs(params)
    data = data_version(params.paths.artifacts)
    folds = list(dict.fromkeys([*params.ensemble.folds, params.ensemble.deploy_fold]))
    print(f"{len(specs)} members x folds {folds}; data {data['hash']} ({data['origin']})")
    records = [
        train_member_task(params_path, s.to_json(), s.spec_id, int(f), data["hash"]) for f in folds for s in specs
    ]
    return save_ensemble_task(params_path, [s.to_json() for s in specs], records, data)


@flow(name="evaluate", log_prints=True)
def evaluate(params_path: str = "params.yaml") -> dict[str, Any]:
    """Evaluate members and ensemble over ``ensemble.folds``; returns the headline numbers."""
    summary = evaluate_task(params_path)
    print(json.dumps(summary, indent=1))
    return summary


@flow(name="register_and_promote", log_prints=True)
def register_and_promote(params_path: str = "params.yaml", search_run_id: str | None = None) -> dict[str, Any]:
    """Register the ensemble (challenger) and run the promotion gate; returns the decision."""
    reg = register_task(params_path, search_run_id)
    decision = promote_task(params_path, reg["version"])
    return {**reg, **decision}


@flow(name="retrain", log_prints=True)
def retrain(params_path: str = "params.yaml", rerun_search: bool | None = None) -> dict[str, Any]:
    """validate -> (search) -> train -> evaluate -> register -> gate -> promote; returns the gate decision."""
    params = _params(params_path)
    checked = validate_data(params_path)
    if not checked["success"]:
        raise RuntimeError(
            f"data validation failed ({checked['suites']}); see {Path(params.paths.artifacts) / 'validation.json'}. "
            "Nothing was trained; the champion is unchanged."
        )
    search_id = None
    if params.registry.rerun_search if rerun_search is None else rerun_search:
        from flows.search import run_search

        search_id = run_search(params, progress=False).get("parent_run_id")
    train_ensemble(params_path)
    evaluate(params_path)
    return register_and_promote(params_path, search_id)


# --- deployment ----------------------------------------------------------------------------------------


def serve(params_path: str = "params.yaml", cron: str | None = None, name: str | None = None) -> None:
    """Serve the ``retrain`` deployment (cron ``registry.cron``, one run at a time) until interrupted."""
    require_api_server("retrain")
    params = _params(params_path)
    retrain.serve(
        name=name or params.registry.deployment,
        cron=cron or params.registry.cron,
        parameters={"params_path": str(Path(params_path).resolve())},
        description="Scheduled NASLung retraining: validate -> train -> evaluate -> register -> gate -> promote.",
        tags=["naslung"],
        limit=1,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.ensemble", description="NASLung ensemble flows.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve the retrain deployment with its cron schedule (registry.cron)")
    s.add_argument("--params", default=os.environ.get("NASLUNG_PARAMS", "params.yaml"))
    s.add_argument("--cron", help="override registry.cron")
    s.add_argument("--name", help="override registry.deployment")
    r = sub.add_parser("retrain", help="run the retrain flow once, now")
    r.add_argument("--params", default=os.environ.get("NASLUNG_PARAMS", "params.yaml"))
    r.add_argument("--search", action="store_true", help="re-run the search (search.strategy) first")
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args.params, args.cron, args.name)
        return 0
    print(json.dumps(retrain(args.params, rerun_search=True if args.search else None), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
