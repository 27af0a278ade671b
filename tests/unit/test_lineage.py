"""The one data identity of a patch store: md5s from the files or from dvc.lock's prepare outs, the short
hash of both (members' cache keys), the file-name keyed form (search ids) and the training.json record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from naslung.artifact_paths import MANIFEST_FILE, PATCHES_FILE, ArtifactsDir
from naslung.lineage import data_identity, store_md5


def _store(root: Path) -> dict[str, str]:
    root.mkdir(parents=True)
    files = ArtifactsDir(root)
    files.manifest.write_text("nodule_id,label\nn1,0\n", encoding="utf-8")
    files.patches.write_bytes(b"\x93NUMPY fake patch bytes" * 100)
    return {
        "manifest": hashlib.md5(files.manifest.read_bytes()).hexdigest(),
        "patches": hashlib.md5(files.patches.read_bytes()).hexdigest(),
    }


def test_identity_from_the_files(tmp_path: Path) -> None:
    md5 = _store(tmp_path / "store")
    ident = data_identity(tmp_path / "store")
    assert ident.md5 == md5 and ident.origin == "file" and ident.root == (tmp_path / "store").resolve()
    assert ident.hash == hashlib.sha256(json.dumps(md5, sort_keys=True).encode()).hexdigest()[:12]
    assert ident.md5_by_file == {MANIFEST_FILE: md5["manifest"], PATCHES_FILE: md5["patches"]}
    assert ident.as_dict() == {"hash": ident.hash, "origin": "file", "md5": md5, "artifacts": str(ident.root)}
    assert store_md5(tmp_path / "store") == md5
    assert data_identity(tmp_path / "store", tmp_path / "no-dvc.lock").origin == "file"  # no lock: the files


def test_identity_from_dvc_lock_when_it_lists_both_files(tmp_path: Path) -> None:
    _store(tmp_path / "artifacts")
    lock = tmp_path / "dvc.lock"
    outs = [
        {"path": f"artifacts/{MANIFEST_FILE}", "md5": "a" * 32},
        {"path": f"artifacts/{PATCHES_FILE}", "md5": "b" * 32},
    ]
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"prepare": {"outs": outs}}}), encoding="utf-8")
    ident = data_identity(tmp_path / "artifacts", lock)
    assert ident.origin == "dvc.lock" and ident.md5 == {"manifest": "a" * 32, "patches": "b" * 32}
    lock.write_text(yaml.safe_dump({"stages": {"prepare": {"outs": outs[:1]}}}), encoding="utf-8")
    assert data_identity(tmp_path / "artifacts", lock).origin == "file"  # the lock lists one file only


def test_missing_store_file_is_named(tmp_path: Path) -> None:
    _store(tmp_path / "s")
    (tmp_path / "s" / PATCHES_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"patches\.npy: not found \(run `naslung prepare` first"):
        data_identity(tmp_path / "s")
