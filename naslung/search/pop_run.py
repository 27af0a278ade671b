"""The POP search strategy end to end: resume state, the seeded POP loop, selection, outputs.

:func:`run_pop_search` is what the Prefect flow ``search`` runs for ``search.strategy: pop`` (the twin of
:func:`naslung.search.dnas_run.run_dnas_search`); this module imports neither mlflow nor prefect.

* The POP loop (:func:`naslung.search.pop.run_pop`) runs here; each iteration hands its ``search.batch_size``
  candidates (:class:`~naslung.search.candidate.CandidateJob`) to ``train_batch``, which trains them and
  returns their records in order — the flow submits one Prefect task per candidate (threads or Dask), the
  default trains them in this process (:func:`~naslung.search.candidate.run_candidates`: one after the other, or
  ``train.concurrent`` at a time on one device).
* Tracking (``tracker``, layout :mod:`naslung.search.runs`): one parent run tagged with the search id, one
  nested run per trained candidate; pruned counts are parent metrics per iteration (step = iteration).
* Scores: each candidate is scored by ``search.objective`` on the pooled ``search.val_folds`` validation
  folds with a bootstrap interval, at its final weights (:mod:`naslung.search.candidate`,
  :mod:`naslung.search.objective`).
* Latency: ``torch.set_num_threads(train.num_threads)`` is applied first, then latencies are measured here
  before a batch is handed over (so never while candidates train). Every value is kept with its detail
  (batch, threads, warmup, repeats, device, spread, load) in a
  :class:`~naslung.search.candidate.LatencyCache` keyed by (spec id, device, source, conditions), written
  to ``<out_dir>/latency_cache.json`` as soon as it is measured and stored on the parent run
  (``latency_cache.json``) after each iteration. Pruning and the front use the tolerance of
  :func:`~naslung.search.candidate.latency_tolerance` (``search.latency_tolerance`` measured, 0 FLOPs).
* Resume: with the same search id the parent is reopened, candidate runs a killed search left RUNNING are
  closed as KILLED, the FINISHED ones are read back, the latency cache is read back (the search folder's
  file, then the parent run's), and the seeded search is replayed with them as known results — none is
  retrained, no latency is measured again, and the search reaches the same front as an uninterrupted run
  (``summary.json``: ``latency_measured_this_run`` counts the new measurements).
* Outputs in ``out_dir`` (:mod:`naslung.search.outputs`): front.json, selected.json (``search.k_select``
  by :func:`naslung.search.pareto.select_k`, then, with ``search.fill: neighbours``, untrained one-step
  neighbours of the front by :func:`naslung.search.pareto.fill_neighbours`), pareto.png, summary.json
  (``strategy: pop``), latency_cache.json.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from naslung.params import Params
from naslung.search import runs
from naslung.search.candidate import CandidateJob, CandidateRecord, run_candidates
from naslung.search.pop import Evaluated, IterationLog, PopResult
from naslung.tracker import NULL_TRACKER, Tracker

LATENCY_CACHE_FILE = "latency_cache.json"

TrainBatch = Callable[[Sequence[CandidateJob]], Sequence[CandidateRecord]]
"""Trains a batch of candidates (possibly in parallel) and returns one record each, in order."""


@dataclass
class PopRunResult:
    """What :func:`run_pop_search` produced: the summary, the POP result, the trained selection, the files
    and the untrained fill entries of ``selected.json``."""

    summary: dict[str, Any]
    result: PopResult
    selected: list[Evaluated]
    files: dict[str, Path]
    filled: list[dict[str, Any]] = field(default_factory=list)


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
    import torch

    from naslung.models.complexity import count_flops
    from naslung.search.candidate import (
        LatencyCache,
        latency_conditions,
        latency_tolerance,
        latency_unit,
        spec_latency,
        stages_key,
    )
    from naslung.search.objective import objective_label
    from naslung.search.outputs import neighbour_entry, write_outputs
    from naslung.search.pareto import fill_neighbours, select_k
    from naslung.search.plots import latency_axis_label
    from naslung.search.pop import estimate_covered, run_pop
    from naslung.search.space import SearchSpace, Stages, size_table
    from naslung.train.loop import resolve_device

    t_start = time.time()
    say = runs.reporter(progress)
    artifacts = str(artifacts)
    sp = params.search
    threads = max(1, int(params.train.num_threads))
    torch.set_num_threads(threads)  # before any latency is timed
    unit = latency_unit(sp)
    tolerance = latency_tolerance(sp)
    space = SearchSpace.from_params(sp, cbam=params.model.cbam, head=params.model.head)
    size = space.size()
    train = train_batch or (lambda jobs: run_candidates(list(jobs), params, artifacts, tracker))
    parent = runs.open_search(
        tracker,
        sp.experiment,
        search_id,
        "pop",
        params,
        {"space_size": size, "artifacts": artifacts},
        {"naslung.latency_unit": unit, "naslung.objective": sp.objective},
    )
    try:
        known: dict[Stages, Evaluated] = {}
        for rec in parent.finished:
            key = stages_key(rec["stages"])
            known.setdefault(key, Evaluated(key, float(rec["score"]), float(rec["latency"]), rec))
        device = resolve_device(params.train.device)
        conditions = latency_conditions(sp, params.latency, threads)
        cache = LatencyCache(Path(out_dir) / LATENCY_CACHE_FILE)
        cache.update(tracker.load_dict(parent.run_id, LATENCY_CACHE_FILE))
        for ev in known.values():  # a finished candidate's latency is exactly the one it was ranked by
            spec_id = str(ev.info["spec_id"])
            if cache.get(spec_id, device, sp.latency_source, conditions) is None:
                cache.put(spec_id, device, sp.latency_source, ev.latency, ev.info.get("latency_detail"), conditions)
        measured = [0]
        say(
            f"search {search_id}: space {size:,} members; {'resumed, ' if parent.resumed else ''}"
            f"{len(known)} finished candidate(s) read back, {parent.stale} stale run(s) closed, "
            f"{len(cache.entries)} latency value(s) cached; objective {sp.objective} on {sp.val_folds} "
            f"pooled validation folds; latency tolerance {tolerance:g}"
        )

        def latency_of(stages: Stages) -> float:
            spec = space.to_spec(stages)
            got = cache.get(spec.spec_id, device, sp.latency_source, conditions)
            if got is None:
                got, detail = spec_latency(spec, sp, params.latency, device, params.model.margin_m, threads=threads)
                cache.put(spec.spec_id, device, sp.latency_source, got, detail, conditions)
                measured[0] += 1
            return got

        iteration = [1]

        def evaluate(batch: list[Stages]) -> list[Evaluated]:
            specs = [space.to_spec(s) for s in batch]
            lats = [latency_of(s) for s in batch]  # measured here, before anything trains
            jobs = [
                CandidateJob(
                    spec,
                    lat,
                    cache.detail(spec.spec_id, device, sp.latency_source, conditions),
                    search_id,
                    iteration[0],
                    parent.run_id,
                )
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
            tracker.log_dict(cache.to_json(), LATENCY_CACHE_FILE, run_id=parent.run_id)
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
            latency_tolerance=tolerance,
        )
        selected = select_k(result.trained, sp.k_select, tolerance)
        filled: list[dict[str, Any]] = []
        if sp.fill == "neighbours" and len(selected) < sp.k_select:
            trained_keys = {e.stages for e in result.trained}
            flops_of: dict[Stages, int] = {}

            def size_of(s: Stages) -> float:
                if s not in flops_of:
                    flops_of[s] = int(count_flops(space.to_spec(s)))
                return float(flops_of[s])

            picks = fill_neighbours(
                [e.stages for e in result.front],
                sp.k_select - len(selected),
                space.neighbours,
                size_of,
                exclude=trained_keys | {e.stages for e in selected},
            )
            for n, m in picks:
                spec = space.to_spec(n)
                lat = latency_of(n)
                detail = cache.detail(spec.spec_id, device, sp.latency_source, conditions)
                filled.append(
                    neighbour_entry(
                        spec, space.to_spec(m).spec_id, int(size_of(n)), lat, unit, sp.objective, detail or None
                    )
                )
            tracker.log_dict(cache.to_json(), LATENCY_CACHE_FILE, run_id=parent.run_id)
        covered = estimate_covered(space, result.certificates, (e.stages for e in result.trained), seed=params.seed)
        fresh = [e for e in result.trained if e.stages not in known]
        best = max(result.trained, key=lambda e: (e.score, -e.latency, e.stages)) if result.trained else None
        summary: dict[str, Any] = {
            "strategy": "pop",
            "search_id": search_id,
            "parent_run_id": parent.run_id,
            "space": space.describe(),
            "space_sizes": size_table(space.widths, space.stem, space.min_blocks, space.max_blocks),
            "space_size": size,
            "objective": sp.objective,
            "objective_meaning": f"{objective_label(sp.objective)} of the final weights after "
            f"{sp.epochs} epochs; interval: stratified bootstrap",
            "val_folds": sp.val_folds,
            "n_val": int(best.info.get("n_val", 0)) if best is not None else 0,
            "best_score": best.score if best is not None else math.nan,
            "best_score_low": float(best.info.get("score_low", math.nan)) if best is not None else math.nan,
            "best_score_high": float(best.info.get("score_high", math.nan)) if best is not None else math.nan,
            "best_spec": str(best.info.get("ref_string", "")) if best is not None else "",
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
            "selected": len(selected) + len(filled),
            "selected_trained": len(selected),
            "selected_untrained": len(filled),
            "k_select": sp.k_select,
            "fill": sp.fill,
            "iterations": len(result.iterations),
            "stop_reason": result.stop_reason,
            "wall_seconds": time.time() - t_start,
            "train_seconds_per_candidate": (
                sum(float(e.info.get("train_seconds", 0.0)) for e in fresh) / len(fresh) if fresh else 0.0
            ),
            "latency_unit": unit,
            "latency_source": sp.latency_source,
            "latency_device": device,
            "latency_tolerance": tolerance,
            "latency_threads": threads,
            "latency_batch_size": int(params.latency.batch_sizes[0]),
            "latency_measured_this_run": measured[0],
            "latency_cached": len(cache.entries),
            "seed": params.seed,
            "epochs": sp.epochs,
            "runner": sp.runner,
            "batch_size": sp.batch_size,
            **dict(extra_summary or {}),
        }
        files = write_outputs(
            out_dir,
            result,
            selected,
            summary,
            latency_axis_label(unit, sp.latency_source, int(params.latency.batch_sizes[0]), threads),
            objective_label(sp.objective),
            filled,
        )
        cache.save()
        files["latency_cache"] = Path(out_dir) / LATENCY_CACHE_FILE
        runs.finish_search(tracker, parent.run_id, summary, files)
    except BaseException:
        tracker.end_run(parent.run_id, "FAILED")
        raise
    say(
        f"done: trained {summary['trained']} of {size:,} ({100 * summary['fraction_trained']:.4f} %), "
        f"pruned {summary['pruned']}, front {summary['front_size']}, selected {summary['selected_trained']} "
        f"trained + {summary['selected_untrained']} untrained neighbours, stop: {result.stop_reason}"
    )
    return PopRunResult(summary, result, selected, files, filled)
