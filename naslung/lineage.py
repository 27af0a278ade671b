"""Identity of code and data for lineage: file md5s, the ``prepare`` outs recorded in ``dvc.lock``, and
the git commit. Plain library code (reads ``dvc.lock`` as YAML; no DVC or MLflow import)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml


def file_md5(path: str | Path) -> str:
    """md5 hex digest of a file's bytes (DVC's hash for a single file)."""
    h = hashlib.md5()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


STORE_FILES = {"manifest": "manifest.csv", "patches": "patches.npy"}
"""The patch store's files whose bytes identify a data version."""


def store_md5(artifacts: str | Path) -> dict[str, str]:
    """``{"manifest": md5, "patches": md5}`` of the patch store in ``artifacts``, read from the files."""
    root = Path(artifacts)
    out = {}
    for key, name in STORE_FILES.items():
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (run `naslung prepare` first or pass --artifacts)")
        out[key] = file_md5(path)
    return out


def stage_outs_md5(dvc_lock: str | Path, stage: str = "prepare") -> dict[Path, str]:
    """``{absolute out path: md5}`` of one stage in ``dvc.lock`` (empty when the lock or stage is absent)."""
    lock = Path(dvc_lock)
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {}) or {}
    base = lock.resolve().parent
    return {
        (base / str(o.get("path", ""))).resolve(): str(o["md5"])
        for o in (stages.get(stage, {}) or {}).get("outs", []) or []
        if o.get("md5")
    }


def git_commit(cwd: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` in ``cwd`` (None without git or outside a repository)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha or None
