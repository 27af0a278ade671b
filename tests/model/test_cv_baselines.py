"""``naslung cv`` reports the model beside both baselines on the same test folds: intervals, paired tests,
the cv parent run's metrics and a table that shows no spread it did not measure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from builders import TINY, make_project

from naslung.baselines import baseline_predictions
from naslung.data.store import PatchStore
from naslung.models.spec import ArchSpec
from naslung.params import load_params
from naslung.tracker import NullTracker
from naslung.train.run import cv_table, run_cv


class _Recorder(NullTracker):
    """A Tracker (the port) that keeps the metrics it is given, by run name."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def log_metrics(self, metrics, prefix="", *, step=None, run_id=None):  # type: ignore[no-untyped-def]
        self.metrics.update({prefix + k: float(v) for k, v in metrics.items()})


def test_cv_reports_baselines_on_the_same_folds(tmp_path: Path) -> None:
    params = load_params(make_project(tmp_path))
    spec = ArchSpec.parse(TINY[0], cbam=False, head="linear")
    rec = _Recorder()
    summary = run_cv(params, spec, [1], epochs=1, tracker=rec, progress=False, n_boot=200)
    comp = summary["comparison"]
    store = PatchStore.open(params.paths.artifacts)
    _, y, _ = store.arrays([1])
    direct = baseline_predictions(store.manifest, store.patches, [0, 2, 3], [1])
    for name, b in direct.items():
        got = comp["per_fold"]["1"]["baselines"][name]["accuracy"]["estimate"]
        assert got == float((b.label == y).mean())
    model_acc = comp["pooled"]["model"]["accuracy"]
    assert model_acc["estimate"] == summary["folds"][0]["test"]["accuracy"]
    assert model_acc["low"] <= model_acc["estimate"] <= model_acc["high"]
    # the parent run carries the pooled and per-fold comparison figures
    for key in (
        "model_accuracy_low",
        "diameter_auc",
        "voxel_stats_accuracy_high",
        "p_accuracy_vs_diameter",
        "fold1_p_auc_vs_voxel_stats",
    ):
        assert key in rec.metrics, key
    assert rec.metrics["voxel_stats_accuracy"] == comp["pooled"]["baselines"]["voxel_stats"]["accuracy"]["estimate"]
    assert np.isnan(summary["test_mean_std"]["accuracy"]["std"])  # one fold: no spread measured
    table = cv_table(summary)
    assert "±" not in table and "voxel_stats" in table and "McNemar p=" in table
    on_disk = json.loads((Path(params.paths.artifacts) / f"cv_{spec.spec_id}.json").read_text())
    assert set(on_disk["comparison"]["pooled"]["baselines"]) == {"diameter", "voxel_stats"}
