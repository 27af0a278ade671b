"""Prefect 3 flows of the ensemble area and the ``retrain`` deployment (Prefect concerns only; the work is
:mod:`naslung.ensemble` and :mod:`naslung.registry`). ``train_ensemble`` maps a ``train-member`` task (2 retries)
over the library's ``plan_members``, one at a time in plan order (training seeds torch's global RNG), members
cached on disk; with ``train.concurrent`` = N > 1 one ``train-member-group`` task trains each N uncached members
of a test fold at once on one device. ``retrain``: validate -> (search) -> train -> evaluate -> register -> gate,
stopping before training when validation fails. Each flow takes the params file and ``overrides``
(``{"section.key": value}``, what ``naslung --set`` gives; a deployment parameter), parsed once into
:class:`~naslung.params.Params` that the tasks receive. ``python -m flows.ensemble serve|retrain [--params P]
[--set K=V]``: serve ``retrain`` on ``registry.cron`` (``--cron``, ``--name``; needs a Prefect server,
:func:`flows.require_api_server`) or run it once (``--search``: re-run the search first)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows import require_api_server
from naslung import registry
from naslung.artifact_paths import ArtifactPaths
from naslung.ensemble.evaluation import evaluate_ensemble
from naslung.ensemble.training import (
    MemberRecord,
    member_groups,
    plan_members,
    prefit_members,
    train_member,
    write_index,
)
from naslung.models.factory import AnySpec
from naslung.params import Params, load_params, parse_set
from naslung.tracking import MlflowTracker
from naslung.validation import validate

validate_task = task(validate, name="validate-data", cache_policy=NO_CACHE)
save_task = task(write_index, name="save-ensemble", cache_policy=NO_CACHE)
evaluate_task = task(evaluate_ensemble, name="evaluate-ensemble", cache_policy=NO_CACHE)
register_task = task(registry.register, name="register", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
promote_task = task(registry.promote, name="promote", cache_policy=NO_CACHE)


@task(
    name="train-member",
    retries=2,
    retry_delay_seconds=10,
    cache_policy=NO_CACHE,
    task_run_name="member-{spec.spec_id}-fold{fold}",
)
def train_member_task(params: Params, spec: AnySpec, fold: int, data_hash: str) -> MemberRecord:
    return train_member(params, spec, fold, data_hash, tracker=MlflowTracker())


@task(
    name="train-member-group",
    retries=2,
    retry_delay_seconds=10,
    cache_policy=NO_CACHE,
    task_run_name="members-fold{fold}-x{size}",
)
def train_group_task(
    params: Params, group: list[tuple[int, AnySpec]], data_hash: str, fold: int, size: int
) -> list[MemberRecord]:
    """``train.concurrent`` > 1: the group's members of test fold ``fold`` trained at once (``prefit_members``),
    then each finished (test evaluation, latency, its MLflow run, cache) as ``train-member`` would."""
    from naslung.data.store import PatchStore

    store = PatchStore.open(params.paths.artifacts)
    fits = prefit_members(params, group, store)
    return [
        train_member(params, spec, f, data_hash, tracker=MlflowTracker(), store=store, fitted=fits[(f, spec.spec_id)])
        for f, spec in group
    ]


@flow(name="train_ensemble", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def train_ensemble(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> str:
    params = load_params(params_path, overrides=overrides)
    plan = plan_members(params)
    print(f"{len(plan.specs)} members x folds {plan.folds}; data {plan.data['hash']} ({plan.data['origin']})")
    data_hash = plan.data["hash"]
    groups = member_groups(params, plan.jobs, data_hash)  # empty unless train.concurrent > 1
    done: dict[tuple[int, str], MemberRecord] = {}
    for group in {id(g): g for g in groups.values()}.values():  # each group once, in plan order
        fold = group[0][0]
        for (f, spec), rec in zip(group, train_group_task(params, group, data_hash, fold, len(group))):
            done[(f, spec.spec_id)] = rec
    rest = [(f, s) for f, s in plan.jobs if (f, s.spec_id) not in done]  # cached members, or all with N = 1
    if rest:
        folds, specs = [f for f, _ in rest], [s for _, s in rest]
        for (f, spec), rec in zip(rest, train_member_task.map(unmapped(params), specs, folds, data_hash).result()):
            done[(f, spec.spec_id)] = rec
    records = [done[(f, s.spec_id)] for f, s in plan.jobs]
    save_task(params, plan.specs, records, plan.data)
    return str(ArtifactPaths.from_params(params).ensemble.index)


@flow(name="evaluate", log_prints=True)
def evaluate(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    summary = evaluate_task(load_params(params_path, overrides=overrides), tracker=MlflowTracker())["summary"]
    print(json.dumps(summary, indent=1))
    return summary


@flow(name="register_and_promote", log_prints=True)
def register_and_promote(
    params_path: str = "params.yaml", search_run_id: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    params = load_params(params_path, overrides=overrides)
    reg = register_task(params, search_id=search_run_id)
    decision = promote_task(params, reg.version)
    return {"name": reg.name, "version": reg.version, "run_id": reg.run_id, "model_uri": reg.model_uri} | asdict(
        decision
    )


@flow(name="retrain", log_prints=True)
def retrain(
    params_path: str = "params.yaml", rerun_search: bool | None = None, overrides: dict[str, Any] | None = None
) -> dict:
    params = load_params(params_path, overrides=overrides)
    checked = validate_task(params)
    if not checked["success"]:
        suites = {k: v["success"] for k, v in checked["suites"].items()}
        report = ArtifactPaths.from_params(params).artifacts.validation
        raise RuntimeError(f"data validation failed ({suites}); see {report}. Nothing was trained; champion unchanged.")
    search_id = None
    if params.registry.rerun_search if rerun_search is None else rerun_search:
        from flows.search import run_search

        search_id = run_search(params, progress=False).get("parent_run_id")
    train_ensemble(params_path, overrides)
    evaluate(params_path, overrides)
    return register_and_promote(params_path, search_id, overrides)


def serve(
    params_path: str = "params.yaml",
    cron: str | None = None,
    name: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> None:
    """Serve the ``retrain`` deployment (cron ``registry.cron``, one run at a time) until interrupted."""
    require_api_server("retrain")
    params = load_params(params_path, overrides=overrides)
    retrain.serve(
        name=name or params.registry.deployment,
        cron=cron or params.registry.cron,
        parameters={"params_path": str(Path(params_path).resolve()), "overrides": overrides or {}},
        description="Scheduled NASLung retraining: validate -> train -> evaluate -> register -> gate -> promote.",
        tags=["naslung"],
        limit=1,
    )


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m flows.ensemble")
    ap.add_argument("cmd", choices=("serve", "retrain"))
    ap.add_argument("--params", default=os.environ.get("NASLUNG_PARAMS", "params.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--cron")
    ap.add_argument("--name")
    ap.add_argument("--search", action="store_true")
    a = ap.parse_args()
    sets = parse_set(a.overrides) or None
    if a.cmd == "serve":
        serve(a.params, a.cron, a.name, sets)
    else:
        print(json.dumps(retrain(a.params, True if a.search else None, sets), indent=1, default=str))
