"""What a search records through its :class:`~naslung.tracker.Tracker`, for both strategies, and what a
resumed search reads back.

* One parent run per search (experiment ``search.experiment`` for POP, ``dnas.experiment`` for DNAS), key
  tags ``naslung.search_id`` and ``naslung.role = search``, tag ``naslung.strategy``; params: the whole
  effective configuration flattened (``train.lr``, ``search.budget``, ``dnas.layers`` ...; see
  :func:`naslung.tracker.flat_config`) plus ``strategy``, ``search_id`` and strategy extras; metrics per
  iteration (POP) or supernet epoch (DNAS) with step; at the end the numeric summary values, tag
  ``naslung.stop_reason`` and the output files under ``search/``.
* One nested run per trained candidate (``naslung.role = candidate``): params ``spec`` (reference string),
  ``spec_json``, ``spec_id``, ``epochs``, ``seed``, ``device``, ``latency_unit``, ``objective``,
  ``val_folds``, ``search_id``, ``strategy`` (POP adds ``depths``); per-epoch curves while it trains
  (step = epoch); then metrics ``score`` with ``score_low`` / ``score_high`` (``search.objective`` on the
  pooled validation folds, 95 % bootstrap interval), ``accuracy`` (validation, for information),
  ``n_val``, ``latency``, ``flops``, ``n_params``, ``train_seconds``, ``best_epoch``, ``best_val_<m>``
  (the validation metrics of the scored weights; POP adds ``train_started_at`` / ``train_finished_at``,
  DNAS ``log_prob``), tags ``naslung.objective`` and ``naslung.checkpoint`` (which weights were scored) and
  the artifact ``candidate.json`` (the full record, latency detail included).
* Resume (:func:`open_search`): the same search id reopens the parent, closes candidate runs a killed search
  left RUNNING as KILLED and reads the FINISHED ones back as records: their ``candidate.json`` when
  present (exact, with the latency detail), else rebuilt from params and metrics.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from naslung.artifact_paths import ArtifactsDir
from naslung.params import Params, to_dict
from naslung.tracker import RunRecord, Tracker, flat_config

SEARCH_ID_TAG = "naslung.search_id"
ROLE_TAG = "naslung.role"
STRATEGY_TAG = "naslung.strategy"
CANDIDATE_FILE = "candidate.json"

_RESULT_METRICS = (
    "score",
    "score_low",
    "score_high",
    "accuracy",
    "n_val",
    "latency",
    "flops",
    "n_params",
    "train_seconds",
    "best_epoch",
    "log_prob",
)


@dataclass(frozen=True)
class SearchRun:
    """The parent run of a search: its id (None when nothing records), whether it was reopened, how many
    stale candidate runs were closed, and the records of the FINISHED candidate runs (oldest first)."""

    run_id: str | None
    resumed: bool
    stale: int
    finished: list[dict[str, Any]]


def reporter(progress: bool | Callable[[str], None]) -> Callable[[str], None]:
    """Where a search writes its progress lines: ``print``, nothing, or the callable given."""
    if callable(progress):
        return progress
    return print if progress else (lambda _msg: None)


def open_search(
    tracker: Tracker,
    experiment: str,
    search_id: str,
    strategy: str,
    params: Params,
    extra_params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> SearchRun:
    """Open (or reopen) the parent run of ``search_id``, close its stale candidate runs, read back the
    finished ones (see the module docstring)."""
    run_id, resumed = tracker.open_parent(
        experiment,
        f"search-{search_id}",
        {SEARCH_ID_TAG: search_id, ROLE_TAG: "search"},
        {**flat_config(to_dict(params)), "strategy": strategy, "search_id": search_id, **dict(extra_params or {})},
        {STRATEGY_TAG: strategy, **dict(tags or {})},
    )
    stale = tracker.children(run_id, "RUNNING")
    for run in stale:
        tracker.end_run(run.run_id, "KILLED")
    finished = [r for r in (_read_back(tracker, run) for run in tracker.children(run_id, "FINISHED")) if r is not None]
    return SearchRun(run_id, resumed, len(stale), finished)


def _read_back(tracker: Tracker, run: RunRecord) -> dict[str, Any] | None:
    """A finished candidate's record: its ``candidate.json`` when it holds a score, else :func:`_record`."""
    full = tracker.load_dict(run.run_id, CANDIDATE_FILE)
    if isinstance(full, dict) and "score" in full and "spec" in full:
        return {**full, "run_id": run.run_id}
    return _record(run)


def _record(run: RunRecord) -> dict[str, Any] | None:
    """A candidate record rebuilt from a FINISHED candidate run (None for a run that is not one)."""
    p, m = run.params, run.metrics
    if "spec_json" not in p or "score" not in m:
        return None
    spec = json.loads(p["spec_json"])
    rec: dict[str, Any] = {"spec": spec, "spec_id": p["spec_id"], "ref_string": p.get("spec", "")}
    if isinstance(spec, dict) and spec.get("kind") == "dnas":
        rec.update(strategy="dnas", ops=list(spec.get("ops", [])))
    else:
        rec["stages"] = spec["stages"]
    rec.update(
        objective=run.tags.get("naslung.objective", p.get("objective", "")),
        score=m["score"],
        score_low=m.get("score_low", float("nan")),
        score_high=m.get("score_high", float("nan")),
        accuracy=m.get("accuracy", float("nan")),
        n_val=int(m.get("n_val", 0)),
        checkpoint=run.tags.get("naslung.checkpoint", ""),
        latency=m["latency"],
        latency_unit=p.get("latency_unit", ""),
        flops=int(m.get("flops", 0)),
        n_params=int(m.get("n_params", 0)),
        val_metrics={k[len("best_val_") :]: v for k, v in m.items() if k.startswith("best_val_")},
        best_epoch=int(m.get("best_epoch", 0)),
        epochs=int(p.get("epochs", 0)),
        seed=int(p.get("seed", 0)),
        device=p.get("device", ""),
        train_seconds=float(m.get("train_seconds", 0.0)),
        run_id=run.run_id,
    )
    return rec


@contextmanager
def candidate_run(
    tracker: Tracker,
    parent_run_id: str | None,
    spec: Any,
    *,
    search_id: str,
    strategy: str,
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    artifacts: str | Path | None = None,
) -> Iterator[str | None]:
    """The nested run of one candidate ``spec`` (an ``ArchSpec`` or ``DnasArch``) as the current run;
    ``params`` adds ``epochs``, ``seed``, ``device``, ``latency_unit`` (and POP's ``depths``); yields its id.
    With ``artifacts`` (the patch store folder) the run's dataset input is its patch manifest, as for a member's
    training run (digest from ``dvc.lock``)."""
    with tracker.training_run(
        run_name,
        {
            "spec": spec.ref_string(),
            "spec_json": json.dumps(spec.to_dict(), sort_keys=True),
            "spec_id": spec.spec_id,
            **dict(params),
            "search_id": search_id,
            "strategy": strategy,
        },
        {
            SEARCH_ID_TAG: search_id,
            ROLE_TAG: "candidate",
            STRATEGY_TAG: strategy,
            "naslung.spec_id": spec.spec_id,
            **dict(tags or {}),
        },
        parent_run_id=parent_run_id,
    ) as run_id:
        manifest = ArtifactsDir(Path(artifacts)).manifest if artifacts is not None else None
        if manifest is not None and manifest.exists():
            tracker.log_manifest_input(manifest, Path("dvc.lock"))
        yield run_id


def log_candidate_result(tracker: Tracker, record: Mapping[str, Any]) -> None:
    """Result metrics and ``candidate.json`` of the current candidate run (see the module docstring)."""
    metrics = {k: float(record[k]) for k in _RESULT_METRICS if k in record}
    if "started_at" in record:
        metrics.update(train_started_at=float(record["started_at"]), train_finished_at=float(record["finished_at"]))
    tracker.log_metrics(metrics)
    tracker.log_metrics(record["val_metrics"], prefix="best_val_")
    tags = {f"naslung.{k}": str(record[k]) for k in ("objective", "checkpoint") if k in record}
    if tags:
        tracker.set_tags(tags)
    tracker.log_dict(dict(record), CANDIDATE_FILE)


def finish_search(
    tracker: Tracker,
    run_id: str | None,
    summary: Mapping[str, Any],
    files: Mapping[str, Path],
    dicts: Mapping[str, Any] | None = None,
) -> None:
    """Close the parent run: JSON ``dicts`` by file name, the numeric summary values as metrics, tag
    ``naslung.stop_reason``, the output ``files`` under ``search/``; status FINISHED."""
    for name, obj in (dicts or {}).items():
        tracker.log_dict(obj, name, run_id=run_id)
    numeric = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tracker.log_metrics(numeric, step=0, run_id=run_id)
    tracker.set_tags({"naslung.stop_reason": str(summary.get("stop_reason", ""))}, run_id=run_id)
    for path in files.values():
        tracker.log_artifact(path, "search", run_id=run_id)
    tracker.end_run(run_id, "FINISHED")
