"""The POP search strategy end to end: resume state, the seeded POP loop, selection, outputs.

:func:`run_pop_search` is what the Prefect flow ``search`` runs for ``search.strategy: pop`` (the twin of
:func:`naslung.search.dnas_run.run_dnas_search`); this module imports neither mlflow nor prefect.

* The POP loop (:func:`naslung.search.pop.run_pop`) runs here; each iteration hands its ``search.batch_size``
  candidates (:class:`~naslung.search.candidate.CandidateJob`) to ``train_batch``, which trains them and
  returns their records in order — the flow submits one Prefect task per candidate (threads or Dask), the
  default trains them one after the other in this process (:func:`~naslung.search.candidate.run_candidate`).
* Tracking (``tracker``, layout :mod:`naslung.search.runs`): one parent run tagged with the search id, one
  nested run per trained candidate; pruned counts are parent metrics per iteration (step = iteration).
* Latency is measured here before a batch is handed over (so never while candidates train) and cached per
  (spec id, device, source); the cache is stored on the parent run (``latency_cache.json``).
* Resume: with the same search id the parent is reopened, candidate runs a killed search left RUNNING are
  closed as KILLED, the FINISHED ones are read back, and the seeded search is replayed with them as known
  results — none is retrained, and the search reaches the same front as an uninterrupted run.
* Outputs in ``out_dir`` (:mod:`naslung.search.outputs`): front.json, selected.json (``search.k_select``
  by :func:`naslung.search.pareto.select_k`), pareto.png, summary.json (``strategy: pop``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from naslung.params import Params
from naslung.search import runs
from naslung.search.candidate import CandidateJob, CandidateRecord, run_candidate
from naslung.search.pop import Evaluated, IterationLog, PopResult
from naslung.tracker import NULL_TRACKER, Tracker

LATENCY_CACHE_FILE = "latency_cache.json"

TrainBatch = Callable[[Sequence[CandidateJob]], Sequence[CandidateRecord]]
"""Trains a batch of candidates (possibly in parallel) and returns one record each, in order."""


@dataclass
class PopRunResult:
    """What :func:`run_pop_search` produced: the summary, the POP result, the selection and the files."""

    summary: dict[str, Any]
    result: PopResult
    selected: list[Evaluated]
    files: dict[str, Path]


def run_pop_search(
    params: Params,
    artifacts: str | Path,
    out_dir: str | Path,
    search_id: str,
    *,
    tracker: Tracker = NULL_TRACKER,
    train_batch: TrainBatch | None = None,
    progress: bool | Callable[[str], None] = True,
    extra_summary: Mapping[str, Any] | None = None,
) -> PopRunResult:
    """Run the POP strategy with ``params.search`` (see the module docstring); returns what it wrote.

    ``extra_summary`` entries (e.g. the Prefect flow run id) are added to ``summary.json``.
    """
    from naslung.search.candidate import LatencyCache, latency_unit, spec_latency, stages_key
    from naslung.search.outputs import write_outputs
    from naslung.search.pareto import select_k
    from naslung.search.pop import estimate_covered, run_pop
    from naslung.search.space import SearchSpace, Stages, size_table
    from naslung.train.loop import resolve_device

    t_start = time.time()
    say = runs.reporter(progress)
    artifacts = str(artifacts)
    sp = params.search
    unit = latency_unit(sp)
    space = SearchSpace.from_params(sp, cbam=params.model.cbam, head=params.model.head)
    size = space.size()
    train = train_batch or (lambda jobs: [run_candidate(j, params, artifacts, tracker) for j in jobs])
    parent = runs.open_search(
        tracker,
        sp.experiment,
        search_id,
        "pop",
        params,
        {"space_size": size, "artifacts": artifacts},
        {"naslung.latency_unit": unit},
    )
    try:
        known: dict[Stages, Evaluated] = {}
        for rec in parent.finished:
            key = stages_key(rec["stages"])
            known.setdefault(key, Evaluated(key, rec["accuracy"], rec["latency"], rec))
        device = resolve_device(params.train.device)
        cache = LatencyCache()
        cache.values.update(tracker.load_dict(parent.run_id, LATENCY_CACHE_FILE) or {})
        details: dict[str, dict[str, Any]] = {}
        say(
            f"search {search_id}: space {size:,} members; {'resumed, ' if parent.resumed else ''}"
            f"{len(known)} finished candidate(s) read back, {parent.stale} stale run(s) closed"
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
            jobs = [
                CandidateJob(spec, lat, details.get(spec.spec_id, {}), search_id, iteration[0], parent.run_id)
                for spec, lat in zip(specs, lats)
            ]
            return [rec.to_evaluated() for rec in train(jobs)]

        def on_iteration(log: IterationLog, res: PopResult) -> None:
            iteration[0] = log.iteration + 1
            counts = {
                "trained": log.trained,
                "pruned": log.pruned,
                "pruned_iteration": log.pruned_this_iteration,
                "front_size": log.front_size,
                "reused": log.reused,
            }
            tracker.log_metrics(counts, step=log.iteration, run_id=parent.run_id)
            tracker.log_dict(cache.values, LATENCY_CACHE_FILE, run_id=parent.run_id)
            say(
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
        summary: dict[str, Any] = {
            "strategy": "pop",
            "search_id": search_id,
            "parent_run_id": parent.run_id,
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
            "wall_seconds": time.time() - t_start,
            "train_seconds_per_candidate": (
                sum(float(e.info.get("train_seconds", 0.0)) for e in fresh) / len(fresh) if fresh else 0.0
            ),
            "latency_unit": unit,
            "latency_device": device,
            "seed": params.seed,
            "epochs": sp.epochs,
            "runner": sp.runner,
            "batch_size": sp.batch_size,
            **dict(extra_summary or {}),
        }
        files = write_outputs(out_dir, result, selected, summary, f"latency ({unit.replace('_', ' ')})")
        runs.finish_search(tracker, parent.run_id, summary, files)
    except BaseException:
        tracker.end_run(parent.run_id, "FAILED")
        raise
    say(
        f"done: trained {summary['trained']} of {size:,} ({100 * summary['fraction_trained']:.4f} %), "
        f"pruned {summary['pruned']}, front {summary['front_size']}, stop: {result.stop_reason}"
    )
    return PopRunResult(summary, result, selected, files)
