"""Where the registry lives: tracking/registry URI, experiment, alias names and alias look-up."""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from naslung.params import Params

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"


def configure(params: Params, experiment: str | None = None) -> str:
    """Tracking + registry URI (``MLFLOW_TRACKING_URI`` or ``paths.mlflow_uri``) and the experiment
    (default ``ensemble.experiment``); see :func:`naslung.tracking.configure`."""
    from naslung import tracking

    return tracking.configure(
        params.mlflow_uri, experiment or params.ensemble.experiment, params.paths.mlflow_artifacts
    )


def version_at(client: MlflowClient, name: str, alias: str) -> Any | None:
    """The model version holding ``alias``, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
