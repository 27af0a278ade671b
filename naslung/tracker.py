"""The tracking port: what training, the POP search and the DNAS search record, and where.

The core never imports an experiment tracker; every caller passes a :class:`Tracker` in (default
:class:`NullTracker`, which records nothing). The MLflow implementation is
:class:`naslung.tracking.MlflowTracker` (the adapter).

Two ways to address a run, both part of the port:

* the *current* run of this thread — opened by :meth:`Tracker.training_run` (a context manager; nested under
  ``parent_run_id`` when given) — receives every ``log_*`` call made without ``run_id``;
* a run *by id* (``run_id=...``) — how a search's parent run is written while its candidates train in other
  threads or processes. :meth:`Tracker.open_parent` starts such a run, or reopens the one carrying the same
  key tags (a resumed search); :meth:`Tracker.children` lists its nested runs; :meth:`Tracker.end_run`
  closes a run with a status (``FINISHED``, ``FAILED``, ``KILLED``).

Params are flat ``name -> value`` (lists and dicts are stored as JSON); :func:`flat_config` flattens the
whole effective configuration to ``section.key`` names (``train.lr``), which every parent run logs. Metrics
are plain floats (non-finite values are skipped); artifacts are local files or JSON-safe objects.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

RUN_STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")


@dataclass(frozen=True)
class RunRecord:
    """One run read back from the tracker: id, status, params (strings), latest metric values, tags."""

    run_id: str
    status: str
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)


class Tracker(Protocol):
    """Runs, nested runs, params, metrics (with step), artifacts, the model and the dataset input."""

    def configure(self, uri: str | None, experiment: str | None = ..., artifacts_root: str | Path | None = ...) -> str:
        """Point the tracker at store ``uri`` and make ``experiment`` current (none: the store only; a new
        experiment keeps its artifacts under ``artifacts_root`` when given); returns the URI in use."""
        ...

    def training_run(
        self,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = ...,
        parent_run_id: str | None = ...,
    ) -> AbstractContextManager[str | None]:
        """The current run of this thread (nested under ``parent_run_id``, in its experiment, when given) with
        flat ``params``; yields its id (None when nothing records). FINISHED on exit, FAILED on an error."""
        ...

    def open_parent(
        self,
        experiment: str,
        run_name: str,
        key_tags: Mapping[str, str],
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = ...,
    ) -> tuple[str | None, bool]:
        """Reopen (status RUNNING) the oldest run of ``experiment`` carrying all ``key_tags``, or start one
        with ``key_tags``, ``tags`` and ``params`` (params only on a new run); returns (run id, resumed?)."""
        ...

    def children(self, run_id: str | None, status: str | None = ...) -> list[RunRecord]:
        """Nested runs of ``run_id`` (only those of ``status`` when given), oldest first."""
        ...

    def end_run(self, run_id: str | None, status: str = ...) -> None:
        """Close run ``run_id`` with ``status`` (one of :data:`RUN_STATUSES` but RUNNING)."""
        ...

    def log_manifest_input(self, manifest: str | Path, dvc_lock: str | Path | None = ..., context: str = ...) -> None:
        """The patch manifest as the current run's dataset input (digest from ``dvc_lock`` or the file)."""
        ...

    def log_epoch(self, row: Mapping[str, float], run_id: str | None = ...) -> None:
        """One row of a training history (key ``epoch`` = step; ``seconds`` is logged as ``epoch_seconds``)."""
        ...

    def log_metrics(
        self, metrics: Mapping[str, float], prefix: str = ..., *, step: int | None = ..., run_id: str | None = ...
    ) -> None: ...

    def set_tags(self, tags: Mapping[str, str], run_id: str | None = ...) -> None: ...

    def log_dict(self, obj: Any, artifact_file: str, run_id: str | None = ...) -> None:
        """``obj`` (JSON-safe) as the artifact ``artifact_file`` (e.g. ``history.json``)."""
        ...

    def load_dict(self, run_id: str | None, artifact_file: str) -> Any | None:
        """The JSON artifact ``artifact_file`` of run ``run_id``; None when it has none."""
        ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = ..., run_id: str | None = ...) -> None:
        """Copy local file ``path`` into the run's artifacts (under folder ``artifact_path``)."""
        ...

    def log_model(self, model: Any, spec: Any, margin_m: int, name: str = ...) -> str | None:
        """A trained ``torch.nn.Module`` of ``spec`` as the current run's servable model; returns its URI."""
        ...


class NullTracker:
    """A :class:`Tracker` that records nothing: runs have no id, nothing is read back."""

    def configure(
        self, uri: str | None, experiment: str | None = None, artifacts_root: str | Path | None = None
    ) -> str:
        return uri or ""

    @contextmanager
    def _no_run(self) -> Iterator[str | None]:
        yield None

    def training_run(
        self,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> AbstractContextManager[str | None]:
        return self._no_run()

    def open_parent(
        self,
        experiment: str,
        run_name: str,
        key_tags: Mapping[str, str],
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
    ) -> tuple[str | None, bool]:
        return None, False

    def children(self, run_id: str | None, status: str | None = None) -> list[RunRecord]:
        return []

    def end_run(self, run_id: str | None, status: str = "FINISHED") -> None:
        return None

    def log_manifest_input(
        self, manifest: str | Path, dvc_lock: str | Path | None = None, context: str = "training"
    ) -> None:
        return None

    def log_epoch(self, row: Mapping[str, float], run_id: str | None = None) -> None:
        return None

    def log_metrics(
        self, metrics: Mapping[str, float], prefix: str = "", *, step: int | None = None, run_id: str | None = None
    ) -> None:
        return None

    def set_tags(self, tags: Mapping[str, str], run_id: str | None = None) -> None:
        return None

    def log_dict(self, obj: Any, artifact_file: str, run_id: str | None = None) -> None:
        return None

    def load_dict(self, run_id: str | None, artifact_file: str) -> Any | None:
        return None

    def log_artifact(self, path: str | Path, artifact_path: str | None = None, run_id: str | None = None) -> None:
        return None

    def log_model(self, model: Any, spec: Any, margin_m: int, name: str = "model") -> str | None:
        return None


NULL_TRACKER = NullTracker()
"""The shared :class:`NullTracker` (it holds no state), the default wherever a tracker is optional."""


def flat_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train": {"lr": 0.001}, "seed": 1}`` -> ``{"train.lr": 0.001, "seed": 1}``: one level of sections
    (``to_dict(params)``) flattened to ``section.key``; deeper values (lists, dicts) are kept as they are."""
    flat: dict[str, Any] = {}
    for name, value in config.items():
        if isinstance(value, Mapping):
            flat.update({f"{name}.{k}": v for k, v in value.items()})
        else:
            flat[name] = value
    return flat
