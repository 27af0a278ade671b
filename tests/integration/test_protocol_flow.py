"""``naslung protocol``: the Prefect flow ``protocol`` end to end for real (no mocks) on a tiny set.

10 cropped synthetic scans, POP with budget 3 over a tiny space (1 epoch, FLOPs latency), 2 members x test
folds 1-2 (1 epoch). Run in a scratch working folder: everything must land in runs/<set>/, nothing in the
default pipeline's paths, and protocol.json must hold the ensemble and both baselines with intervals for
each fold and pooled.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from naslung.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "synth.n_scans": 10,
    "synth.nodules_per_scan": [8, 14],
    "synth.crop_margin_mm": 40,
    "synth.workers": 1,
    "search.strategy": "pop",
    "search.budget": 3,
    "search.patience": 3,
    "search.epochs": 1,
    "search.widths": [4, 8],
    "search.max_blocks": 4,
    "search.latency_source": "flops",
    "search.k_select": 2,
    "search.fill": "none",
    "search.val_folds": 2,
    "ensemble.folds": [1, 2],
    "ensemble.epochs": 1,
    "ensemble.size_repeats": 2,
    "ensemble.sizes": [1, 2],
    "train.device": "cpu",
    "train.num_threads": 1,
    "latency.batch_sizes": [1],
    "latency.warmup": 1,
    "latency.repeats": 3,
}
DEFAULT_PATHS = ("data", "artifacts", "search", "mlflow", "mlflow.db", "params.yaml")
METRICS = ("accuracy", "sensitivity", "specificity", "f1", "auc")


def _intervals(block: dict, where: str) -> None:
    for metric in METRICS:
        iv = block[metric]
        assert iv["estimate"] is not None, f"{where} {metric}"
        assert iv["low"] <= iv["estimate"] <= iv["high"], f"{where} {metric}: {iv}"


def test_protocol_flow_end_to_end_in_its_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    set_file = tmp_path / "tiny.yaml"
    set_file.write_text(yaml.safe_dump(TINY))
    monkeypatch.chdir(work)
    t0 = time.perf_counter()
    rc = main(["--params", str(REPO / "params.yaml"), "protocol", "--set-file", str(set_file)])
    wall = time.perf_counter() - t0
    print(f"protocol flow (tiny set): {wall:.0f} s")
    assert rc == 0

    # only runs/tiny/ was written: none of the default pipeline's paths
    assert sorted(p.name for p in work.iterdir()) == ["runs"]
    assert not any((work / p).exists() for p in DEFAULT_PATHS)
    root = work / "runs" / "tiny"
    for sub in ("data", "artifacts", "search", "ensemble"):
        assert (root / sub).is_dir(), sub

    result = json.loads((root / "protocol.json").read_text())
    assert result["set"] == "tiny" and result["overrides"]["search.budget"] == 3
    assert result["device"].startswith("CPU")
    assert result["validation_success"] is True
    assert set(result["step_seconds"]) == {"synth", "prepare", "validate", "search", "train", "evaluate"}
    assert 0 < result["wall_seconds"] <= wall
    assert result["data"]["synth"]["n_scans"] == 10 and result["data"]["prepare"]["n_nodules"] > 0
    search = result["search"]
    assert search["strategy"] == "pop" and 1 <= search["trained"] <= 3 and search["front_size"] >= 1
    ens = result["ensemble"]
    assert ens["folds"] == [1, 2] and ens["n_members"] == 2
    assert set(ens["per_fold"]) == {"1", "2"}
    for where, block in [("pooled", ens["pooled"]), *((f"fold {f}", b) for f, b in ens["per_fold"].items())]:
        assert block["n"] > 0
        for scorer in ("ensemble", "diameter", "voxel_stats"):
            _intervals(block[scorer], f"{where} {scorer}")
        for base in ("diameter", "voxel_stats"):
            tests = block["tests"][base]
            assert 0.0 <= tests["p_accuracy_mcnemar"] <= 1.0 and 0.0 <= tests["p_auc_paired_bootstrap"] <= 1.0
    assert ens["pooled"]["n"] == sum(b["n"] for b in ens["per_fold"].values())
    assert result["flagged_folds"] == [2]  # the search held out fold 1 only
    paths = result["paths"]
    assert all(Path(v.removeprefix("sqlite:///")).is_relative_to(Path("runs") / "tiny") for v in paths.values())
