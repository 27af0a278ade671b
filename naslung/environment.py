"""Process-wide defaults for the engines the platform drives, set once when ``naslung`` is imported.

Only environment variables are touched (``os.environ.setdefault``: a value the user exported wins), so the
library core imports none of the engines. They must be in place before MLflow, Prefect, DVC or Great
Expectations is first imported, which is why ``naslung/__init__.py`` applies them and every entry point
(``naslung`` CLI, ``flows/``, ``serving/``, tests) imports ``naslung`` first.

* Telemetry off: MLflow, Prefect, DVC (which ignores ``DO_NOT_TRACK``) and Great Expectations.
* Prefect's ephemeral API (used when ``PREFECT_API_URL`` is unset, e.g. ``naslung search`` and ``dvc repro``):
  its start-up wait is raised from Prefect's 20 s to :data:`PREFECT_STARTUP_TIMEOUT_S`. On a loaded 2-core
  machine, or on the first start with a new ``PREFECT_HOME`` (the database is created and migrated then),
  the temporary server needs 20–40 s; a short wait makes the first flow run of a fresh machine fail.
"""

from __future__ import annotations

import os

PREFECT_STARTUP_TIMEOUT_S = 300
"""Seconds Prefect waits for its ephemeral API server to answer (Prefect's default: 20)."""

DEFAULTS: dict[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(PREFECT_STARTUP_TIMEOUT_S),
}


def apply_defaults() -> None:
    """Set :data:`DEFAULTS` in ``os.environ`` where the variable is not set already."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
