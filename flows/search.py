"""Prefect 3 flow ``search``: the architecture search of ``search.strategy`` as a flow run, tracked in MLflow.

The search itself is library code — :func:`naslung.search.pop_run.run_pop_search` (POP) and
:func:`naslung.search.dnas_run.run_dnas_search` (DNAS), both resumable by search id (see there). This file
holds the Prefect side only: POP's candidates are trained as ``train-candidate`` tasks (with retries), one
per candidate, on the task runner of ``search.runner``:

* ``local`` — Prefect's thread-pool task runner in this process (``search.batch_size`` threads);
* ``dask`` — ``prefect_dask.DaskTaskRunner`` on the cluster at ``search.dask_address`` (e.g.
  ``tcp://host:8786``, a running ``dask scheduler`` with workers that can import ``naslung`` and read the
  patch store and the MLflow store), or a ``distributed.LocalCluster`` of ``search.dask_workers``
  single-threaded processes.

The DNAS strategy runs in the flow run itself. Tracking: :class:`naslung.tracking.MlflowTracker`.

Threads: the flow sets ``torch.set_num_threads(train.num_threads)`` before anything else runs, so the first
latency measured is timed with the same thread count as every later one (the strategies set it again
before timing, and record it with each latency).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from prefect import flow, task
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from naslung.params import Params
from naslung.search.candidate import CandidateJob, CandidateRecord, run_candidate
from naslung.search.dnas_run import run_dnas_search
from naslung.search.ids import default_search_id
from naslung.search.pop_run import run_pop_search
from naslung.tracking import MlflowTracker

__all__ = ["default_search_id", "run_search", "search", "task_runner_for", "train_candidate_task"]


@task(name="train-candidate", retries=2, retry_delay_seconds=2, task_run_name="candidate-{job.spec.spec_id}")
def train_candidate_task(job: CandidateJob, params: Params, artifacts: str, tracking_uri: str) -> CandidateRecord:
    """Train one candidate (in a thread or a Dask worker) as a nested MLflow run of the search."""
    tracker = MlflowTracker()
    tracker.configure(tracking_uri)  # the candidate run goes into its parent's experiment
    return run_candidate(job, params, artifacts, tracker)


@flow(name="search", log_prints=True, validate_parameters=False)
def search(params: Params, search_id: str, artifacts: str, out_dir: str, progress: bool = True) -> dict[str, Any]:
    """The search of ``params.search.strategy`` into ``out_dir``; returns its summary."""
    torch.set_num_threads(max(1, int(params.train.num_threads)))  # before any latency is timed
    tracker = MlflowTracker()
    tracking_uri = tracker.configure(params.mlflow_uri)
    common: dict[str, Any] = {
        "tracker": tracker,
        "progress": progress,
        "extra_summary": {"flow_run_id": str(flow_run.id)},
    }
    if params.search.strategy == "dnas":
        return run_dnas_search(params, artifacts, out_dir, search_id, **common).summary

    def train_batch(jobs: Sequence[CandidateJob]) -> list[CandidateRecord]:
        futures = [train_candidate_task.submit(job, params, artifacts, tracking_uri) for job in jobs]
        return [f.result() for f in futures]

    return run_pop_search(params, artifacts, out_dir, search_id, train_batch=train_batch, **common).summary


def task_runner_for(params: Params) -> Any:
    """Prefect task runner for ``search.runner`` (``local`` or ``dask``)."""
    sp = params.search
    if sp.runner == "local":
        return ThreadPoolTaskRunner(max_workers=max(1, sp.batch_size))
    from prefect_dask import DaskTaskRunner  # the schema admits no other runner than local | dask

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


def run_search(
    params: Params,
    search_id: str | None = None,
    artifacts: str | None = None,
    out_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the ``search`` flow with the task runner of ``search.runner``; ``search_id`` defaults to
    :func:`naslung.search.ids.default_search_id` (same configuration and data: the same id, so it resumes)."""
    artifacts = str(artifacts or params.paths.artifacts)
    sid = search_id or default_search_id(params, artifacts)
    flow_fn = search.with_options(task_runner=task_runner_for(params), flow_run_name=f"search-{sid}")
    return flow_fn(params, sid, artifacts, str(out_dir or params.search.out_dir), progress)
