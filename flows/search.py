"""Prefect 3 flow ``search``: the architecture search of ``search.strategy``, tracked in MLflow, resumable.

``search.strategy: pop`` (default) runs Partial Order Pruning with each candidate a task (below);
``search.strategy: dnas`` runs the differentiable search (:func:`naslung.search.dnas_run.run_dnas_search`:
supernet search, the ``dnas.derive_k`` derived architectures retrained from scratch and scored on the
validation fold, never the test fold) in the flow, tracked by
:class:`naslung.search.dnas_tracking.MlflowDnasTracker` (experiment ``dnas.experiment``: one parent run,
one nested run per derived model). Both write front.json, selected.json, pareto.png and summary.json
(with ``strategy``) into ``out_dir``.

* The POP loop (:func:`naslung.search.pop.run_pop`) runs in the flow; each iteration submits
  ``search.batch_size`` candidate tasks (``train-candidate``, with retries) and waits for them.
* ``search.runner``: ``local`` — Prefect's thread-pool task runner in this process; ``dask`` —
  ``prefect_dask.DaskTaskRunner`` on the cluster at ``search.dask_address`` (e.g. ``tcp://host:8786``,
  a running ``dask scheduler`` with workers that can import ``naslung`` and read the patch store and the
  MLflow store), or a ``distributed.LocalCluster`` of ``search.dask_workers`` single-threaded processes.
* MLflow (:mod:`naslung.search.tracking`): one parent run tagged with the search id, one nested run per
  trained candidate; pruned counts are parent metrics per iteration (step = iteration), not runs.
* Latency is measured in the flow process before a batch is submitted (so never while candidates train)
  and cached per (spec id, device, source); the cache is stored on the parent run.
* Resume: running again with the same search id reopens the parent, marks candidate runs a killed search
  left RUNNING as KILLED, reads the FINISHED candidate runs back, and replays the seeded search with them
  as known results — none is retrained, and the search reaches the same front as an uninterrupted run.

The default search id (:func:`naslung.search.ids.default_search_id`) is a hash of everything that changes
results: the strategy's params (POP: search space/epochs, model; DNAS: the ``dnas`` section), train and
latency params, seed, latency source and the md5 of the patch store's ``manifest.csv`` and ``patches.npy``
— so new data gives a new id wherever it lives, while budget, patience and runner are left out: rerunning
the same command on the same data after a crash resumes it, and a larger budget extends it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from naslung.params import SEARCH_STRATEGIES, Params, parse_params, to_dict
from naslung.search import ids


def default_search_id(params: Params, artifacts: str) -> str:
    """Stable id of a search configuration on the data in ``artifacts`` (see module docstring)."""
    return ids.default_search_id(params, artifacts)


@task(name="train-candidate", retries=2, retry_delay_seconds=2, task_run_name="candidate-{spec_id}")
def train_candidate_task(
    spec_json: str,
    spec_id: str,
    params_dict: dict[str, Any],
    artifacts: str,
    latency: float,
    latency_detail: dict[str, Any],
    tracking_uri: str,
    parent_run_id: str,
    experiment_id: str,
    search_id: str,
    iteration: int,
) -> dict[str, Any]:
    """Train one candidate on the search split, log it as a nested MLflow run; returns its record."""
    from naslung.models.spec import ArchSpec
    from naslung.search import tracking as st
    from naslung.search.candidate import load_dev, train_candidate

    st.configure(tracking_uri)
    params = parse_params(params_dict)
    spec = ArchSpec.from_json(spec_json)
    dev = load_dev(artifacts, params.prepare.n_folds, params.search.fold, params.seed)
    record = train_candidate(spec, dev, params, latency, latency_detail)
    record.run_id = st.log_candidate(parent_run_id, experiment_id, record.to_dict(), search_id, iteration)
    return record.to_dict()


@flow(name="search", log_prints=True)
def search(
    params_dict: dict[str, Any],
    search_id: str,
    artifacts: str,
    out_dir: str,
    tracking_uri: str,
    progress: bool = True,
) -> dict[str, Any]:
    """The search of ``search.strategy``; writes front/selected/summary JSON and the Pareto plot to
    ``out_dir``; returns the summary."""
    if parse_params(params_dict).search.strategy == "dnas":
        return _dnas_search(params_dict, search_id, artifacts, out_dir, tracking_uri, progress)
    from naslung.search import tracking as st
    from naslung.search.candidate import CandidateRecord, LatencyCache, latency_unit, spec_latency, stages_key
    from naslung.search.outputs import write_outputs
    from naslung.search.pop import Evaluated, IterationLog, PopResult, estimate_covered, run_pop
    from naslung.search.select import select_k
    from naslung.search.space import SearchSpace, Stages, size_table
    from naslung.train.loop import resolve_device

    t_start = time.time()
    params = parse_params(params_dict)
    sp = params.search
    unit = latency_unit(sp)
    space = SearchSpace.from_params(sp, cbam=params.model.cbam, head=params.model.head)
    size = space.size()
    st.configure(tracking_uri)
    exp_id = st.experiment_id(sp.experiment)
    parent, resumed = st.open_parent(
        exp_id,
        search_id,
        params={
            **{f"search.{k}": v for k, v in to_dict(sp).items()},
            "seed": params.seed,
            "space_size": size,
            "artifacts": artifacts,
        },
        tags={"naslung.latency_unit": unit},
    )
    try:
        stale = st.close_stale_children(parent)
        known: dict[Stages, Evaluated] = {}
        for rec in st.finished_records(parent):
            known.setdefault(
                stages_key(rec["stages"]), Evaluated(stages_key(rec["stages"]), rec["accuracy"], rec["latency"], rec)
            )
        device = resolve_device(params.train.device)
        cache = LatencyCache()
        cache.values.update(st.load_parent_json(parent, "latency_cache.json") or {})
        details: dict[str, dict[str, Any]] = {}
        if progress:
            print(
                f"search {search_id}: space {size:,} members; {'resumed, ' if resumed else ''}"
                f"{len(known)} finished candidate(s) read back from MLflow, {stale} stale run(s) closed"
            )

        def latency_of(stages: Stages) -> float:
            spec = space.to_spec(stages)
            got = cache.get(spec.spec_id, device, sp.latency_source)
            if got is None:
                got, details[spec.spec_id] = spec_latency(spec, sp, params.latency, device, params.model.margin_m)
                cache.put(spec.spec_id, device, sp.latency_source, got)
            return got

        iteration = [1]

        def evaluate(batch: list[Stages]) -> list[Evaluated]:
            specs = [space.to_spec(s) for s in batch]
            lats = [latency_of(s) for s in batch]  # measured here, before anything trains
            futures = [
                train_candidate_task.submit(
                    spec.to_json(),
                    spec.spec_id,
                    params_dict,
                    artifacts,
                    lat,
                    details.get(spec.spec_id, {}),
                    tracking_uri,
                    parent,
                    exp_id,
                    search_id,
                    iteration[0],
                )
                for spec, lat in zip(specs, lats)
            ]
            return [CandidateRecord.from_dict(f.result()).to_evaluated() for f in futures]

        def on_iteration(log: IterationLog, res: PopResult) -> None:
            iteration[0] = log.iteration + 1
            st.log_iteration(
                parent,
                log.iteration,
                {
                    "trained": log.trained,
                    "pruned": log.pruned,
                    "pruned_iteration": log.pruned_this_iteration,
                    "front_size": log.front_size,
                    "reused": log.reused,
                },
            )
            st.save_parent_json(parent, cache.values, "latency_cache.json")
            if progress:
                print(
                    f"iteration {log.iteration:3d}  trained {log.trained:3d} (reused {log.reused})  "
                    f"pruned {log.pruned:4d} (+{log.pruned_this_iteration})  front {log.front_size}"
                )

        result = run_pop(
            space,
            evaluate,
            latency_of,
            budget=sp.budget,
            patience=sp.patience,
            batch_size=sp.batch_size,
            seed=params.seed,
            known=known,
            on_iteration=on_iteration,
        )
        selected = select_k(result.trained, sp.k_select)
        covered = estimate_covered(space, result.certificates, (e.stages for e in result.trained), seed=params.seed)
        fresh = [e for e in result.trained if e.stages not in known]
        wall = time.time() - t_start
        from prefect.runtime import flow_run

        summary: dict[str, Any] = {
            "strategy": "pop",
            "search_id": search_id,
            "flow_run_id": str(flow_run.id),
            "parent_run_id": parent,
            "space": space.describe(),
            "space_sizes": size_table(space.widths, space.stem, space.min_blocks, space.max_blocks),
            "space_size": size,
            "trained": len(result.trained),
            "trained_this_run": len(fresh),
            "reused": result.reused,
            "pruned": len(result.pruned),
            "pruned_meaning": (
                "distinct members drawn by the sampler and discarded by a pruning certificate, never trained"
            ),
            "covered": covered["covered"],
            "covered_fraction": covered["covered_fraction"],
            "covered_meaning": f"untrained members under the C of some certificate ({covered['method']}, "
            f"{covered['n_samples']} samples): upper bound on what pruning can remove",
            "fraction_trained": len(result.trained) / size,
            "front_size": len(result.front),
            "selected": len(selected),
            "iterations": len(result.iterations),
            "stop_reason": result.stop_reason,
            "wall_seconds": wall,
            "train_seconds_per_candidate": (
                sum(float(e.info.get("train_seconds", 0.0)) for e in fresh) / len(fresh) if fresh else 0.0
            ),
            "latency_unit": unit,
            "latency_device": device,
            "seed": params.seed,
            "epochs": sp.epochs,
            "runner": sp.runner,
            "batch_size": sp.batch_size,
        }
        files = write_outputs(out_dir, result, selected, summary, f"latency ({unit.replace('_', ' ')})")
        st.finish_parent(parent, summary, files)
    except BaseException:
        st.fail_parent(parent)
        raise
    if progress:
        print(
            f"done: trained {summary['trained']} of {size:,} ({100 * summary['fraction_trained']:.4f} %), "
            f"pruned {summary['pruned']}, front {summary['front_size']}, stop: {result.stop_reason}"
        )
    return summary


def _dnas_search(
    params_dict: dict[str, Any], search_id: str, artifacts: str, out_dir: str, tracking_uri: str, progress: bool
) -> dict[str, Any]:
    """Body of the flow for ``search.strategy: dnas`` (runs inside the ``search`` flow run)."""
    from prefect.runtime import flow_run

    from naslung.search.dnas_run import run_dnas_search
    from naslung.search.dnas_tracking import MlflowDnasTracker, tracker_params

    params = parse_params(params_dict)
    tracker = MlflowDnasTracker(tracking_uri, params.dnas.experiment, search_id, tracker_params(params, search_id))
    result = run_dnas_search(
        params,
        artifacts,
        out_dir,
        search_id,
        tracker=tracker,
        pop_front_path=Path(params.search.out_dir) / "front.json",
        progress=progress,
        extra_summary={"flow_run_id": str(flow_run.id)},
    )
    if progress:
        s = result.summary
        print(
            f"done: {s['trained']} derived model(s) ({s['reused']} reused), front {s['front_size']}, "
            f"best {s['best_spec']} val acc {s['best_accuracy']:.3f}"
        )
    return result.summary


def task_runner_for(params: Params) -> Any:
    """Prefect task runner for ``search.runner`` (``local`` or ``dask``)."""
    sp = params.search
    if sp.runner == "local":
        return ThreadPoolTaskRunner(max_workers=max(1, sp.batch_size))
    if sp.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if sp.dask_address:
            return DaskTaskRunner(address=sp.dask_address)
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": sp.dask_workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            },
        )
    raise ValueError(f"params search.runner: expected 'local' or 'dask', got {sp.runner!r}")


def run_search(
    params: Params,
    search_id: str | None = None,
    artifacts: str | None = None,
    out_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the ``search`` flow (strategy ``params.search.strategy``) with the task runner chosen by
    ``params.search.runner``; returns the summary."""
    if params.search.strategy not in SEARCH_STRATEGIES:
        raise ValueError(f"params search.strategy: expected one of {SEARCH_STRATEGIES}, got {params.search.strategy!r}")
    artifacts = str(artifacts or params.paths.artifacts)
    sid = search_id or default_search_id(params, artifacts)
    flow_fn = search.with_options(task_runner=task_runner_for(params), flow_run_name=f"search-{sid}")
    return flow_fn(
        params_dict=to_dict(params),
        search_id=sid,
        artifacts=artifacts,
        out_dir=str(out_dir or params.search.out_dir),
        tracking_uri=params.mlflow_uri,
        progress=progress,
    )
