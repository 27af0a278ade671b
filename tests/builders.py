"""Builders shared by the test modules (no test module imports another): a tiny patch store, a tiny
project (patch store + annotations + params.yaml in a tmp folder), constant ensembles, seeded model specs.

Patches are float32 (n, 32, 32, 32) in [0, 1], (z, y, x); coordinates in the tables are world mm (x, y, z).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from naslung.ensemble.training import data_version, member_specs, score_member, write_index
from naslung.models.net import build_model
from naslung.models.spec import ArchSpec
from naslung.params import Params, load_params

TINY = ["[4, 4, [4], [4], [4]]", "[4, 4, [4], [8], [8]]", "[4, 4, [4, 4], [4], [8]]"]


N_FOLDS, PER_FOLD = 4, 8


def make_project(
    root: Path,
    *,
    specs: list[str] = TINY,
    folds: list[int] = (1, 2),
    registry_name: str = "naslung-test",
    extra: dict | None = None,
) -> Path:
    """Tiny project in ``root``: patch store + annotations + params.yaml (absolute paths); returns params path."""
    root.mkdir(parents=True, exist_ok=True)
    art = root / "artifacts"
    art.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    n = N_FOLDS * PER_FOLD
    labels = np.tile([0, 1], n // 2)
    patches = rng.uniform(0.0, 0.3, size=(n, 32, 32, 32)).astype(np.float32)
    patches[labels == 1, 12:20, 12:20, 12:20] += 0.6  # a bright core in malignant patches
    np.save(art / "patches.npy", patches)
    rows = []
    for i in range(n):
        rows.append(
            {
                "nodule_id": f"n{i:03d}",
                "seriesuid": f"1.2.3.{i}",
                "coordX": 1.0 * i,
                "coordY": 2.0,
                "coordZ": 3.0,
                "diameter_mm": 8.0,
                "reader_scores": "4;5" if labels[i] else "1;2",
                "mean_score": 4.5 if labels[i] else 1.5,
                "label": int(labels[i]),
                "fold": i // PER_FOLD,
                "scan_path": f"subset0/1.2.3.{i}.mhd",
                "patch_index": i,
            }
        )
    manifest = pd.DataFrame(rows)
    manifest.to_csv(art / "manifest.csv", index=False)
    ann = manifest[["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]].copy()
    ann["mal_bool"] = manifest["label"].astype(bool)
    ann["mal_details"] = ["[4, 5]" if v else "[1, 2]" for v in manifest["label"]]
    ann.to_csv(root / "annotations.csv", index=False)
    params = {
        "paths": {
            "raw": str(root / "raw"),
            "annotations": str(root / "annotations.csv"),
            "artifacts": str(art),
            "mlflow_artifacts": str(root / "mlflow-artifacts"),
        },
        "prepare": {"n_folds": N_FOLDS},
        "train": {"batch_size": 8, "patience": 1, "device": "cpu", "num_threads": 1},
        "latency": {"batch_sizes": [2], "warmup": 0, "repeats": 1, "trials": 1},
        "search": {"out_dir": str(root / "search")},
        "ensemble": {
            "specs": list(specs),
            "epochs": 1,
            "folds": list(folds),
            "deploy_fold": folds[0],
            "sizes": [1, 3, 5],
            "size_repeats": 3,
            "out_dir": str(art / "ensemble"),
            "cbam": False,
            "head": "linear",
        },
        "registry": {"name": registry_name, "cron": "0 4 * * *"},
    }
    for section, values in (extra or {}).items():
        params.setdefault(section, {}).update(values)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def constant_model(spec: ArchSpec, malignant: bool) -> torch.nn.Module:
    """A linear-head net that always predicts the same class (probability ~0.9999 for it)."""
    model = build_model(spec)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([-5.0, 5.0] if malignant else [5.0, -5.0]))
    return model.eval()


def constant_ensemble(params_path: Path, out_dir: Path, malignant: bool) -> Params:
    """Members of ``ensemble.specs`` that always say malignant/benign, cached + indexed like trained ones."""
    params = load_params(params_path)
    params = params.replace(ensemble=type(params.ensemble)(**{**params.ensemble.__dict__, "out_dir": str(out_dir)}))
    specs = member_specs(params)
    data = data_version(params.paths.artifacts)
    recs = [
        score_member(params, s, f, data["hash"], constant_model(s, malignant))
        for f in params.ensemble.folds
        for s in specs
    ]
    write_index(params, specs, recs, data)
    return params


MODEL1 = "[4, 4, [4, 4], [4, 8], [8, 8]]"


def synthetic_patches(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Patches (n, 32, 32, 32) in [0, 1] with air ~0.1; malignant (label 1) carry a big bright blob."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    rng.shuffle(y)
    z, yy, x = np.mgrid[:32, :32, :32]
    r2 = (z - 15.5) ** 2 + (yy - 15.5) ** 2 + (x - 15.5) ** 2
    X = 0.1 + 0.03 * rng.standard_normal((n, 32, 32, 32))
    for i in range(n):
        radius = rng.uniform(7, 10) if y[i] else rng.uniform(2, 4)
        X[i][r2 <= radius**2] += 0.5
    return np.clip(X, 0, 1).astype(np.float32), y.astype(np.int64)


def write_tiny_store(root: Path, per_fold: int = 6, n_folds: int = 10, seed: int = 0) -> Path:
    """A patch store in the contract layout (patches.npy + manifest.csv) with synthetic nodules."""
    n = per_fold * n_folds
    X, y = synthetic_patches(n, seed)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "patches.npy", X)
    rows = []
    for i in range(n):
        fold = i % n_folds
        rows.append(
            {
                "nodule_id": f"n{i:04d}",
                "seriesuid": f"1.2.3.{fold}.{i // 2}",
                "coordX": 0.0,
                "coordY": 0.0,
                "coordZ": 0.0,
                "diameter_mm": 12.0 if y[i] else 5.0,
                "reader_scores": "4;5;4" if y[i] else "1;2;2",
                "mean_score": 4.3 if y[i] else 1.7,
                "label": int(y[i]),
                "fold": fold,
                "scan_path": f"subset{fold}/scan{i // 2}.mhd",
                "patch_index": i,
            }
        )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def open_store(root: Path):
    from naslung.data.store import PatchStore

    return PatchStore.open(root)


def model1(head: str = "asoftmax", cbam: bool = True):
    from naslung.train.run import resolve_spec

    return resolve_spec(MODEL1, head=head, cbam=cbam)


MAP_KEYS = {"cam", "attention", "explain_target"}  # the explanation fields of a scoring answer
SERVE_SPEC = "[4, 4, [4, 4], [4, 8], [8, 8]]"


def tiny_ensemble(seed: int, cbam: tuple[bool, bool, bool] = (True, False, True)):
    """Three seeded, untrained Model-1 members (A-Softmax, linear, linear heads; CBAM per ``cbam``)."""
    from naslung.ensemble.model import Ensemble

    torch.manual_seed(seed)
    specs = [ArchSpec.parse(SERVE_SPEC, cbam=c, head=h) for c, h in zip(cbam, ("asoftmax", "linear", "linear"))]
    members = [build_model(s) for s in specs]
    return Ensemble(members, specs, [f"m{i}" for i in range(len(specs))])
