"""The DVC pipeline for real: a temporary git + DVC repo with this project's dvc.yaml and a small
params.yaml; synthesize, `dvc repro`, then check that an unchanged repro does nothing, a changed key no
stage reads reruns nothing, and a changed `validate` param reruns only the validate stage. The stages'
paths are templated from params.yaml (``${paths.artifacts}``), so this also checks that DVC resolves them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_dvc_repro_in_a_fresh_repo(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    work = tmp_path / "repo"
    work.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synth"]["n_scans"] = 10
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # Stages depend on the code folders too: link them in so dependency paths exist.
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())
    keep = {"prepare", "validate"}
    stages["stages"] = {k: v for k, v in stages["stages"].items() if k in keep}
    # The project's one metrics file is evaluate's headline metrics.json (checked below, too slow to run here):
    # this pipeline declares prepare's counts as its metric instead, to check the committed-metrics mechanics.
    prepare = stages["stages"]["prepare"]
    counts = next(o for o in prepare["outs"] if isinstance(o, dict) and "prepare_metrics.json" in next(iter(o)))
    prepare["outs"].remove(counts)
    prepare["metrics"] = [counts]
    (work / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    (work / "naslung").symlink_to(REPO / "naslung")
    _run(["git", "init", "-q"], work)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "init"], work)
    _run(["dvc", "init", "-q"], work)
    _run(["dvc", "config", "core.analytics", "false"], work)
    _run(["naslung", "data", "synth"], work)
    _run(["dvc", "add", "data"], work)

    out = _run(["dvc", "repro"], work)
    assert "Running stage 'prepare'" in out and "Running stage 'validate'" in out
    metrics = json.loads((work / "artifacts" / "prepare_metrics.json").read_text())
    assert json.loads((work / "artifacts" / "validation.json").read_text())["success"] is True
    assert metrics  # counts per class and fold are there

    out = _run(["dvc", "repro"], work)
    assert "Running stage" not in out
    assert "up to date" in _run(["dvc", "status"], work).lower() or "Data and pipelines are up to date" in out

    # a key neither stage reads (serve.*) reruns nothing: each stage lists only the params its code reads
    params["serve"]["workers"] = 3
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro"], work)
    assert "Running stage" not in out, out

    # metrics are committed to git (cache: false), so `dvc metrics diff HEAD` compares with the last commit
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    _run(["git", "add", "-A"], work)
    _run([*git, "commit", "-q", "-m", "repro"], work)
    params["validate"]["class_fraction"] = [0.05, 0.95]
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro"], work)
    assert "Running stage 'validate'" in out
    assert "Running stage 'prepare'" not in out
    diff = _run(["dvc", "params", "diff", "HEAD"], work)
    assert "validate.class_fraction" in diff, diff
    _run(["dvc", "metrics", "diff", "HEAD", "--all"], work)  # runs against HEAD's committed metrics
    assert "prepare_metrics.json" in _run(["dvc", "metrics", "show"], work)


def test_the_only_dvc_metrics_file_is_the_headline() -> None:
    """`dvc metrics show` prints one table of every metrics file's keys: only metrics.json (<= 30 numbers, see
    tests/model/test_evaluation.py) is declared as metrics; the other small JSON outputs are git-tracked outs."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    metrics = [next(iter(m)) if isinstance(m, dict) else m for st in stages.values() for m in st.get("metrics", [])]
    assert metrics == ["${paths.artifacts}/metrics.json"]
    outs = {
        next(iter(o)): o[next(iter(o))] for st in stages.values() for o in st.get("outs", []) if isinstance(o, dict)
    }
    for name in ("prepare_metrics.json", "validation.json", "summary.json", "registration.json"):
        (key,) = [k for k in outs if k.endswith(name)]
        assert outs[key] == {"cache": False}, key


@pytest.mark.slow
def test_dvc_push_then_pull_into_a_fresh_clone(tmp_path: Path) -> None:
    """The project's default remote (``.dvc/config``: a folder beside the repository) works out of the box:
    push from one clone, pull into another in the same parent folder, files byte-identical."""
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    work = tmp_path / "repo"
    work.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synth"]["n_scans"] = 2
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    _run(["git", "init", "-q"], work)
    _run(["dvc", "init", "-q"], work)
    shutil.copy(REPO / ".dvc" / "config", work / ".dvc" / "config")  # the project's remote, as committed
    _run(["naslung", "data", "synth"], work)
    _run(["dvc", "add", "data"], work)
    _run(["git", "add", "-A"], work)
    _run([*git, "commit", "-q", "-m", "data"], work)
    out = _run(["dvc", "push"], work)
    remote = tmp_path / "naslung-dvc-remote"
    assert remote.is_dir() and any(remote.rglob("*")), out

    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(work), str(clone)], tmp_path)
    assert not (clone / "data").exists()
    _run(["dvc", "pull"], clone)
    original = sorted(p.relative_to(work / "data") for p in (work / "data").rglob("*") if p.is_file())
    restored = sorted(p.relative_to(clone / "data") for p in (clone / "data").rglob("*") if p.is_file())
    assert original == restored and original
    for rel in original:
        assert (clone / "data" / rel).read_bytes() == (work / "data" / rel).read_bytes(), rel
