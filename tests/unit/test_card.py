"""The model card as data (no MLflow): built once from the index and the metrics; its markdown, version
tags, package info and JSON form all carry the same facts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from naslung.baselines import BaselinePrediction, compare_folds
from naslung.card import TAG, ModelCard
from naslung.metrics import METRIC_NAMES
from naslung.models.spec import ArchSpec
from naslung.params import load_params

REPO = Path(__file__).resolve().parents[2]
SPECS = [ArchSpec.parse(s, cbam=False, head="linear") for s in ("[4, 4, [4], [4], [4]]", "[4, 4, [4], [8], [8]]")]


def _figures(f1: float) -> dict[str, float]:
    return {n: (f1 if n == "f1" else 0.5) for n in METRIC_NAMES}


def _mean_std(f1: float) -> dict[str, dict[str, float]]:
    return {n: {"mean": (f1 if n == "f1" else 0.5), "std": 0.1} for n in METRIC_NAMES}


def _member(spec: ArchSpec, fold: int) -> dict:
    return {
        "name": spec.spec_id,
        "spec": spec.to_dict(),
        "fold": fold,
        "run_id": f"run-{spec.spec_id}-{fold}",
        "n_params": 1000 + fold,
        "latency_ms_per_nodule": {"2": 1.5},
        "latency_detail": {
            "2": {"ms_per_nodule": 1.5, "batch_size": 2, "device": "cpu", "threads": 2, "warmup": 5, "repeats": 30}
            | {"load_1min_before": 1.25 + fold, "reused": fold == 1}
        },
    }


@pytest.fixture
def card() -> ModelCard:
    params = load_params(REPO / "params.yaml")
    index = {
        "data": {"hash": "h123", "origin": "dvc.lock", "md5": {"manifest": "m" * 32, "patches": "p" * 32}},
        "deploy_fold": 1,
        "member_params_hash": "mph456",
        "members": [_member(s, f) for f in (2, 1) for s in SPECS],
    }
    metrics = {
        "folds": [1, 2],
        "member_names": [s.spec_id for s in SPECS],
        "members": {s.spec_id: {"mean_std": _mean_std(0.6)} for s in SPECS},
        "ensemble": {"per_fold": {"1": _figures(0.75), "2": _figures(0.25)}, "mean_std": _mean_std(0.5)},
        "diameter_baseline": {"f1": 0.4},
        "selection_leak_folds": [2],
    }
    return ModelCard.build(
        params,
        index,
        metrics,
        validation=(True, "artifacts/validation.json: success"),
        search_run_id="search-run",
        git_commit="abc123",
        dvc_url=None,
    )


def test_tags_are_the_lineage_of_the_deploy_fold_members(card: ModelCard) -> None:
    tags = card.to_tags()
    names = [s.spec_id for s in SPECS]
    assert tags == {
        TAG + "data.hash": "h123",
        TAG + "data.origin": "dvc.lock",
        TAG + "data.manifest_md5": "m" * 32,
        TAG + "data.patches_md5": "p" * 32,
        TAG + "data.dvc_url": "",
        TAG + "git_commit": "abc123",
        TAG + "params_hash": load_params(REPO / "params.yaml").section_hash(),
        TAG + "member_params_hash": "mph456",
        TAG + "search_run_id": "search-run",
        TAG + "member_run_ids": json.dumps({n: f"run-{n}-1" for n in names}),
        TAG + "members": json.dumps(names),
        TAG + "deploy_fold": "1",
        TAG + "eval_folds": "[1, 2]",
        TAG + "f1_mean": "0.500000",
        TAG + "f1_per_fold": json.dumps({"1": 0.75, "2": 0.25}),
        TAG + "auc_mean": "0.500000",
        TAG + "validation": "passed",
        TAG + "validation_reason": "artifacts/validation.json: success",
    }


def test_markdown_states_use_input_data_members_metrics_limits_and_how_to_reproduce(card: ModelCard) -> None:
    md = card.to_markdown()
    for text in (
        "# Model card: naslung-ensemble",
        "## Intended use",
        "Not a diagnosis",
        "float32 patches of shape [-1, 1, 32, 32, 32] (axes (n, channel, z, y, x)), values in [0, 1]",
        "voxel spacing [1.0, 1.0, 1.0] mm",
        f"manifest md5 `{'m' * 32}`",
        "data validation: passed (artifacts/validation.json: success)",
        "## Architecture: 2 members, majority vote",
        f"| {SPECS[1].spec_id} | `{SPECS[1].ref_string()}` | 1001 | b2: 1.50 (search) |",
        "Latency: median of 30 warmed calls, ms per nodule at batch bN, on cpu with 2 torch thread(s); 1-min load "
        "average 2.2-2.2 when measured (shared machine if > 0.5); 2 figure(s) marked (search) are the search's own",
        "## Metrics (test folds [1, 2], each member trained without its test fold)",
        "| **ensemble** | 0.500 ± 0.100",
        "| 2 | " + " | ".join("0.250" if n == "f1" else "0.500" for n in METRIC_NAMES) + " |",
        "Diameter-only baseline on all prepared data (not the test folds; no same-fold baselines were evaluated): "
        '`{"f1": 0.4}`',
        "## Provenance of the architectures",
        "- Test folds [2] were training/validation data of the architecture search",
        "`git checkout abc123 && dvc pull && dvc repro`",
        "members chosen by search run search-run.",
    ):
        assert text in md, text
    assert md.index("## Known limits") < md.index("## Reproduce")


def test_json_round_trip_and_package_info(card: ModelCard) -> None:
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again == card and again.to_markdown() == card.to_markdown()
    info = json.loads(json.dumps(card.to_model_info()))
    assert info["input"]["shape"] == [-1, 1, 32, 32, 32] and info["input"]["dtype"] == "float32"
    assert info["members"] == [s.spec_id for s in SPECS] and info["eval_folds"] == [1, 2]
    assert info["f1_mean"] == 0.5 and info["f1_per_fold"] == {"1": 0.75, "2": 0.25}
    assert (info["data_hash"], info["git_commit"], info["validation"]) == ("h123", "abc123", "passed")
    assert "name" not in info and "version" not in info  # the packager's facts, not the card's
    text = card.description("reg-run")
    assert text.startswith("NASLung ensemble of 2 members") and "Registered by run reg-run" in text
    assert text.endswith(card.reproduce_text())


def _one_fold_card(provenance: dict) -> ModelCard:
    """A card evaluated on one test fold, with the ensemble and both baselines compared on its rows."""
    params = load_params(REPO / "params.yaml")
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 15)
    score = np.clip(0.5 * y + rng.uniform(0, 0.6, y.size), 0, 1)
    bases = {
        name: BaselinePrediction(name, s, (s >= 0.5).astype(np.int64))
        for name, s in (("diameter", rng.uniform(0, 1, y.size)), ("voxel_stats", np.clip(y * 0.3 + 0.4, 0, 1)))
    }
    comp = compare_folds({1: (y, score, (score >= 0.5).astype(np.int64))}, {1: bases}, n_boot=200, seed=1)
    index = {
        "data": {"hash": "h", "origin": "file", "md5": {"manifest": "m", "patches": "p"}},
        "deploy_fold": 1,
        "member_params_hash": "x",
        "members": [_member(s, 1) for s in SPECS],
    }
    one = {n: {"mean": 0.5, "std": float("nan"), "n": 1} for n in METRIC_NAMES}
    metrics = {
        "folds": [1],
        "members": {s.spec_id: {"mean_std": one} for s in SPECS},
        "ensemble": {"per_fold": {"1": _figures(0.5)}, "mean_std": one},
        "diameter_baseline": {"accuracy": 0.81},  # the all-data figure of prepare: must not be shown
        "comparison": comp,
        "selection_provenance": provenance,
        "selection_leak_folds": provenance.get("leak_folds", []),
        "provenance_unknown_folds": provenance.get("unknown_folds", []),
    }
    return ModelCard.build(
        params, index, metrics, validation=(True, "ok"), search_run_id=None, git_commit="c", dvc_url=None
    )


def test_one_fold_card_shows_intervals_same_fold_baselines_and_provenance() -> None:
    prov = {
        "origin": "specs:search",
        "search_fold": 3,
        "search_id": "search-7",
        "leak_folds": [1],
        "unknown_folds": [],
        "flagged_folds": [1],
        "reason": "explicit ensemble.specs from search search-7, which held out test fold 3 only",
    }
    card = _one_fold_card(prov)
    md = card.to_markdown()
    assert "±" not in md  # one fold measured no spread
    assert "one fold: no spread measured" in md
    rep = card.evaluation.comparison["pooled"]
    acc = rep["model"]["accuracy"]
    assert f"{acc['estimate']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}]" in md
    assert "## Baselines on the same test folds [1]" in md and "| baseline: voxel_stats |" in md
    p = rep["tests"]["diameter"]["accuracy_mcnemar"]["p_value"]
    assert f"| {p:.3g} |" in md
    assert "0.81" not in md  # not the all-data prepare baseline
    assert "origin: specs:search" in md and "search: search-7 (held out test fold 3)" in md
    assert "selection leak: test folds [1]" in md
    assert any("held out fold 3 only" in t for t in card.known_limits)
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again.to_markdown() == md


def test_card_flags_folds_of_unknown_provenance() -> None:
    prov = {
        "origin": "specs:unknown",
        "search_fold": None,
        "search_id": None,
        "leak_folds": [],
        "unknown_folds": [1],
        "flagged_folds": [1],
        "reason": "provenance unknown: explicit ensemble.specs of unknown origin",
    }
    card = _one_fold_card(prov)
    md = card.to_markdown()
    assert "provenance unknown: test folds [1]" in md and "selection leak" not in md
    assert any(t.startswith("Test folds [1]: provenance unknown") for t in card.known_limits)
