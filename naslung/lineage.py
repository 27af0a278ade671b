"""Identity of code and data for lineage: file md5s, the ``prepare`` outs recorded in ``dvc.lock``, the
one identity of a patch store version (:func:`data_identity`), and the git commit. Plain library code
(reads ``dvc.lock`` as YAML; no DVC or MLflow import)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from naslung.artifact_paths import STORE_FILES


def file_md5(path: str | Path) -> str:
    """md5 hex digest of a file's bytes (DVC's hash for a single file)."""
    h = hashlib.md5()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class DataIdentity:
    """Which data a result is about: the md5s of the patch store's ``manifest.csv`` and ``patches.npy``."""

    root: Path
    """The patch store folder (resolved)."""
    md5: dict[str, str]
    """``{"manifest": md5, "patches": md5}`` (hex digests of the files' bytes, DVC's hash)."""
    origin: Literal["dvc.lock", "file"]
    """Where the md5s come from: the ``prepare`` outs of ``dvc.lock``, or hashing the files."""

    @property
    def hash(self) -> str:
        """One short digest (12 hex) of both md5s: part of the ensemble members' cache keys."""
        return hashlib.sha256(json.dumps(self.md5, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def md5_by_file(self) -> dict[str, str]:
        """The md5s keyed by file name (``{"manifest.csv": .., "patches.npy": ..}``; part of search ids)."""
        return {STORE_FILES[k]: v for k, v in self.md5.items()}

    def as_dict(self) -> dict[str, Any]:
        """``{"hash", "origin", "md5", "artifacts"}``: the ``data`` record of ``training.json``."""
        return {"hash": self.hash, "origin": self.origin, "md5": dict(self.md5), "artifacts": str(self.root)}


def data_identity(artifacts: str | Path, dvc_lock: str | Path | None = None) -> DataIdentity:
    """Identity of the patch store in ``artifacts``.

    With ``dvc_lock``, the md5s are taken from its ``prepare`` stage outs when it lists both files (no
    hashing of a large ``patches.npy``); otherwise (and without ``dvc_lock``) they are computed from the
    files, which must exist (``FileNotFoundError`` naming the missing one).
    """
    root = Path(artifacts).resolve()
    files = {key: root / name for key, name in STORE_FILES.items()}
    outs = stage_outs_md5(dvc_lock, "prepare") if dvc_lock is not None else {}
    if all(outs.get(path) for path in files.values()):
        return DataIdentity(root, {key: outs[path] for key, path in files.items()}, "dvc.lock")
    md5 = {}
    for key, path in files.items():
        if not path.is_file():
            given = Path(artifacts) / STORE_FILES[key]
            raise FileNotFoundError(f"{given}: not found (run `naslung prepare` first or pass --artifacts)")
        md5[key] = file_md5(path)
    return DataIdentity(root, md5, "file")


def store_md5(artifacts: str | Path) -> dict[str, str]:
    """``{"manifest": md5, "patches": md5}`` of the patch store in ``artifacts``, read from the files."""
    return data_identity(artifacts).md5


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
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha or None
