"""Ensemble evaluation honesty: folds the architecture choice may have seen are flagged (following the
provenance of explicit specs); the ensemble is reported beside both baselines on the same test folds, with
bootstrap intervals and paired tests; metrics.json is a small headline, metrics_detail.json the rest."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from builders import constant_ensemble, make_project

from naslung.baselines import baseline_predictions
from naslung.ensemble.evaluation import (
    evaluate_ensemble,
    selection_leak_folds,
    selection_provenance,
    table_markdown,
)
from naslung.params import load_params
from naslung.provenance import selection_provenance as provenance_record
from naslung.stats import mcnemar_exact
from naslung.tracker import NullTracker

REPO = Path(__file__).resolve().parents[2]


def test_folds_seen_by_the_search_are_flagged() -> None:
    p = load_params(REPO / "params.yaml")
    p = p.replace(search=replace(p.search, fold=1), ensemble=replace(p.ensemble, specs=[]))
    assert selection_leak_folds(p, [1]) == []
    assert selection_leak_folds(p, [1, 2, 3]) == [2, 3]
    assert selection_provenance(p, [1, 2, 3]).origin == "search"


def test_explicit_specs_follow_their_provenance() -> None:
    p = load_params(REPO / "params.yaml")
    p = p.replace(search=replace(p.search, fold=1))
    specs = ["[4, 4, [4], [8], [8]]"]
    # from a search that held out fold 3: every other evaluated fold is flagged (search.fold is irrelevant)
    s = p.replace(
        ensemble=replace(p.ensemble, specs=specs, specs_origin="search", specs_search_fold=3, specs_search_id="s-42")
    )
    prov = selection_provenance(s, [1, 2, 3])
    assert prov.leak_folds == [1, 2] and prov.unknown_folds == [] and prov.search_id == "s-42"
    assert selection_leak_folds(s, [1, 2, 3]) == [1, 2]
    assert provenance_record(s, [3])["flagged_folds"] == []
    # unknown origin (the default): every evaluated fold is "provenance unknown", none a known leak
    u = p.replace(ensemble=replace(p.ensemble, specs=specs))
    prov = selection_provenance(u, [1, 2, 3])
    assert prov.origin == "specs:unknown" and prov.unknown_folds == [1, 2, 3] and prov.leak_folds == []
    assert prov.flagged_folds == [1, 2, 3] and "provenance unknown" in prov.reason
    # "search" without the held-out fold cannot say which folds it saw: unknown too
    half = p.replace(ensemble=replace(p.ensemble, specs=specs, specs_origin="search"))
    assert selection_provenance(half, [1, 2]).unknown_folds == [1, 2]
    # external specs (e.g. the paper's models): nothing to flag
    ext = p.replace(ensemble=replace(p.ensemble, specs=specs, specs_origin="external"))
    assert selection_provenance(ext, [1, 2, 3]).flagged_folds == []


class _Recorder(NullTracker):
    """A Tracker (the port) that keeps what it is given."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.artifacts: list[str] = []
        self.runs: list[str] = []

    def training_run(self, run_name, params, tags=None, parent_run_id=None):  # type: ignore[no-untyped-def]
        self.runs.append(run_name)
        return super().training_run(run_name, params, tags, parent_run_id)

    def log_metrics(self, metrics, prefix="", *, step=None, run_id=None):  # type: ignore[no-untyped-def]
        self.metrics.update({prefix + k: float(v) for k, v in metrics.items()})

    def log_artifact(self, path, artifact_path=None, run_id=None):  # type: ignore[no-untyped-def]
        self.artifacts.append(str(path))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    root = tmp_path_factory.mktemp("eval")
    path = make_project(root, specs=["[4, 4, [4], [4], [4]]", "[4, 4, [4], [8], [8]]"], folds=[1, 2])
    params = constant_ensemble(path, root / "ens", malignant=False)
    params = params.replace(ensemble=replace(params.ensemble, specs_origin="external"))
    rec = _Recorder()
    result = evaluate_ensemble(params, tracker=rec, n_boot=300)
    return params, result, rec


def test_metrics_json_is_a_small_flat_headline_and_the_detail_sits_beside_it(evaluated: tuple) -> None:
    params, result, _ = evaluated
    art = Path(params.paths.artifacts)
    head = json.loads((art / "metrics.json").read_text())
    detail = json.loads((art / "metrics_detail.json").read_text())
    assert len(head) <= 30 and all(v is None or isinstance(v, (int, float)) for v in head.values())
    assert head == detail["summary"] == result["summary"]
    for key in (
        "ensemble_accuracy_low",
        "ensemble_auc_high",
        "diameter_auc",
        "voxel_stats_accuracy",
        "p_accuracy_vs_diameter",
        "p_auc_vs_voxel_stats",
        "n_test",
        "n_members",
    ):
        assert key in head, key
    manifest = pd.read_csv(art / "manifest.csv")
    assert head["n_test"] == int(manifest["fold"].isin([1, 2]).sum()) and head["n_members"] == 2
    assert detail["folds"] == [1, 2] and set(detail["comparison"]["per_fold"]) == {"1", "2"}
    assert detail["selection_provenance"]["origin"] == "specs:external" and head["n_flagged_folds"] == 0


def test_baselines_are_fitted_without_the_test_fold_and_compared_on_its_rows(evaluated: tuple) -> None:
    params, result, _ = evaluated
    art = Path(params.paths.artifacts)
    manifest = pd.read_csv(art / "manifest.csv", dtype={"nodule_id": str})
    patches = np.load(art / "patches.npy")
    folds = sorted(manifest["fold"].unique())
    y_all, right_ens, right_vox = [], [], []
    for k in (1, 2):
        direct = baseline_predictions(manifest, patches, [f for f in folds if f != k], [k])
        rep = result["comparison"]["per_fold"][str(k)]
        y = manifest.loc[manifest["fold"] == k, "label"].to_numpy()
        for name, b in direct.items():
            acc = float((b.label == y).mean())
            assert rep["baselines"][name]["accuracy"]["estimate"] == pytest.approx(acc)
            assert result["baselines"]["per_fold"][str(k)][name]["accuracy"] == pytest.approx(acc)
        # the constant-benign ensemble is right exactly on the benign rows
        assert rep["model"]["accuracy"]["estimate"] == pytest.approx(float((y == 0).mean()))
        assert rep["model"]["sensitivity"]["estimate"] == 0.0
        y_all.append(y)
        right_ens.append(y == 0)
        right_vox.append(direct["voxel_stats"].label == y)
    pooled = result["comparison"]["pooled"]
    want = mcnemar_exact(np.concatenate(right_ens), np.concatenate(right_vox))
    assert pooled["tests"]["voxel_stats"]["accuracy_mcnemar"] == want.as_dict()
    # the bright-core patches are easy for voxel statistics, not for a constant prediction
    assert pooled["baselines"]["voxel_stats"]["auc"]["estimate"] > 0.9 > pooled["model"]["auc"]["estimate"]
    assert pooled["tests"]["voxel_stats"]["auc_paired_bootstrap"]["difference"] < 0
    iv = pooled["baselines"]["voxel_stats"]["accuracy"]
    assert iv["low"] <= iv["estimate"] <= iv["high"] and iv["n"] == sum(len(y) for y in y_all)


def test_evaluate_run_logs_headline_per_fold_figures_and_files(evaluated: tuple) -> None:
    params, result, rec = evaluated
    assert rec.runs == [f"evaluate-{params.registry.name}"]
    for key in (
        "diameter_accuracy",
        "voxel_stats_auc",
        "ensemble_auc_low",
        "fold1_voxel_stats_accuracy_high",
        "fold2_p_accuracy_vs_diameter",
    ):
        assert key in rec.metrics, key
    assert rec.metrics["diameter_accuracy"] == result["summary"]["diameter_accuracy"]
    names = {Path(a).name for a in rec.artifacts}
    assert {"metrics_detail.json", "ensemble_roc.png", "ensemble_folds.png", "ensemble_size.png"} <= names


def test_tables_show_intervals_and_no_unmeasured_spread(evaluated: tuple) -> None:
    _, result, _ = evaluated
    md = table_markdown(result)
    assert "baseline: voxel_stats" in md and "baseline: diameter" in md and "McNemar" in md
    one = {**result, "folds": [1], "comparison": None}
    assert "±" not in table_markdown(one)
    assert "±" in table_markdown({**result, "comparison": None})


def test_evaluation_without_a_patch_store_reports_the_ensemble_alone(tmp_path: Path) -> None:
    path = make_project(tmp_path, specs=["[4, 4, [4], [4], [4]]"], folds=[1])
    params = constant_ensemble(path, tmp_path / "ens", malignant=True)
    (Path(params.paths.artifacts) / "patches.npy").unlink()
    with pytest.warns(UserWarning, match="no baselines"):
        result = evaluate_ensemble(params, n_boot=100)
    head = result["summary"]
    assert head["ensemble_sensitivity"] == 1.0 and head["ensemble_specificity"] == 0.0
    assert not any(k.startswith(("diameter", "voxel_stats", "p_")) for k in head)
    assert result["comparison"]["pooled"]["baselines"] == {} and "baseline:" not in table_markdown(result)
