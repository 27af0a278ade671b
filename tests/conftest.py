"""Test-session settings shared by every test module.

Telemetry is off for every library and Prefect's ephemeral API gets a long start-up wait (``naslung``'s
process defaults, :mod:`naslung.environment`); Prefect gets a private PREFECT_HOME per test session (set
before Prefect is imported anywhere), so nothing depends on ``~/.prefect``; MLflow never falls back to
./mlflow.db; torch runs one thread with deterministic algorithms, so a seeded test computes the same on
every run of a machine; the real LIDC data is found beside the repository at ../shared/data (CI has it at
the same place).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="naslung-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_DIR / "prefect")  # never the user's ~/.prefect or $PREFECT_HOME
for key, value in {
    "MLFLOW_TRACKING_URI": f"sqlite:///{_SESSION_DIR / 'mlflow.db'}",
    "OMP_NUM_THREADS": "1",
}.items():
    os.environ.setdefault(key, value)

import naslung  # noqa: E402, F401  (the engines' environment defaults, before any engine is imported)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real LIDC-IDRI/LUNA16 material (read-only); skips when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found: {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    """Before every test: one torch thread (CLI handlers set ``train.num_threads`` process-wide, which
    would otherwise change the numerics of every later test) and deterministic algorithms."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)


# Tests by kind, one folder each: unit/ (pure functions, parsers, contracts with in-process fakes), data/ (ingest,
# synthesis, validation, extraction on real and synthetic scans), model/ (networks, training protocol,
# behavioural properties), integration/ (a real MLflow server, Prefect server/deployments, DVC in a git repo,
# TorchServe, PostgreSQL). Everything under integration/ is marked ``integration``; ``make test-fast`` leaves
# it out.
_INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


# Tests leave nothing behind in the repository: the untracked (not ignored) files after the session must be
# those before it. A test that writes into the checkout (an mlflow.db of MLflow's default URI, a results CSV
# beside its input ...) fails the run here, naming the files.
def _untracked() -> set[str] | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {line[3:] for line in out.splitlines() if line.startswith("??")}


_BEFORE = _untracked()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    after = _untracked()
    if _BEFORE is None or after is None or hasattr(session.config, "workerinput"):
        return
    left = sorted(after - _BEFORE)
    if left:
        session.config.get_terminal_writer().line(f"tests left files in the repository: {left}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
