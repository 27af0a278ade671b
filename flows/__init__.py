"""Prefect flows over the ``naslung`` library (one-shot runs use Prefect's ephemeral API; deployments a server).

``naslung`` is imported first so its process defaults (telemetry off, Prefect's start-up wait; see
:mod:`naslung.environment`) are in place before Prefect is imported.
"""

import naslung  # noqa: F401  (sets the engines' environment defaults)


def require_api_server(deployment: str) -> str:
    """URL of the Prefect server a served deployment registers with; a one-line error when none is set.

    Cron schedules are created by the scheduler service of a real Prefect server, which the ephemeral API
    of one-shot runs does not run, so ``serve`` needs ``PREFECT_API_URL`` (e.g. ``prefect server start
    --host 127.0.0.1`` and ``export PREFECT_API_URL=http://127.0.0.1:4200/api``).
    """
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise SystemExit(
            f"{deployment}: serving a scheduled deployment needs a Prefect server: run "
            "`prefect server start --host 127.0.0.1` and `export PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    return str(url)
