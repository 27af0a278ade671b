"""The tracking port of training: what :mod:`naslung.train.run` and :mod:`naslung.ensemble.training` log.

The core never imports an experiment tracker; callers pass one in. :mod:`naslung.tracking` (the MLflow
adapter) satisfies :class:`TrainingTracker` as a module — ``tracker=naslung.tracking`` — and ``None`` means
no logging. Metrics are plain floats; artifacts are local files copied into the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch


class TrainingTracker(Protocol):
    """Runs, params, metrics, artifacts, the model and the dataset input of one training."""

    def configure(self, uri: str | None, experiment: str = ..., artifacts_root: str | Path | None = ...) -> str:
        """Point the tracker at store ``uri`` and ``experiment``; returns the URI in use."""
        ...

    def training_run(
        self,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = ...,
        parent_run_id: str | None = ...,
    ) -> AbstractContextManager[str]:
        """A run (nested under ``parent_run_id`` when given) with flat ``params``; yields its id."""
        ...

    def log_manifest_input(
        self, manifest: str | Path, dvc_lock: str | Path | None = ..., context: str = ...
    ) -> None: ...

    def log_epoch(self, row: Mapping[str, float]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], prefix: str = ...) -> None: ...

    def log_dict(self, obj: Any, artifact_file: str) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = ...) -> None: ...

    def log_model(self, model: torch.nn.Module, spec: Any, margin_m: int, name: str = ...) -> str: ...
