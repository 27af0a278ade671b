"""The promotion gate as a pure function (no MLflow): every branch of the rule, its texts and its record.

Figures are computed with :func:`naslung.gate.validation_figures` from predictions on one fixed set of 60
validation rows (18 malignant): constant challengers (all malignant, all benign), a weak scorer below a
baseline, a scorer below the sensitivity floor and a good one. Nothing here reads a test fold.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from naslung.gate import (
    DataRef,
    GateSettings,
    VersionFigures,
    constant_accuracy,
    decide,
    decision_record,
    validation_figures,
)

NAME = "naslung-ensemble"
SETTINGS = GateSettings(auc_tolerance=0.02, min_auc=0.75, min_sensitivity=0.6, min_specificity=0.6)
RNG = np.random.default_rng(0)
Y = np.array([1] * 18 + [0] * 42)
RNG.shuffle(Y)
DATA = DataRef("validation", (3, 7), Y.size, int(Y.sum()), "rows-a", train_folds=(0, 2, 4, 5, 6, 8, 9), test_fold=1)
# baselines on the same rows: a diameter rule (AUC 0.59) and voxel statistics (AUC 0.81)
DIAM = Y * 0.8 + RNG.normal(0, 1, Y.size)
VOX = Y * 1.3 + RNG.normal(0, 1, Y.size)
BASELINES = {"diameter": (DIAM, (DIAM > 0.4).astype(int)), "voxel_stats": (VOX, (VOX > 0.65).astype(int))}


def scorer(strength: float, seed: int, shift: float = 0.0) -> np.ndarray:
    """Probabilities (n,) whose separation of the classes grows with ``strength``."""
    z = strength * (Y - 0.5) + np.random.default_rng(seed).normal(0, 1, Y.size) + shift
    return 1 / (1 + np.exp(-z))


def figures(
    version: str,
    prob: np.ndarray,
    label: np.ndarray | None = None,
    *,
    data: DataRef = DATA,
    validation: str | None = "passed",
    baselines: dict | None = None,
) -> VersionFigures:
    vote = (prob >= 0.5).astype(int) if label is None else label
    val = validation_figures(Y, prob, vote, data, BASELINES if baselines is None else baselines, n_boot=200)
    return VersionFigures(NAME, version, validation, f"reason of v{version}", val, "d1", {"f1_per_fold": {"1": 0.9}})


GOOD = scorer(4.0, 1)


def test_a_good_challenger_is_promoted_with_every_check_listed() -> None:
    f = figures("1", GOOD)
    assert f.val.auc > 0.9 and f.val.auc_interval[0] < f.val.auc < f.val.auc_interval[1]
    d = decide(f, None, SETTINGS)
    assert d.promoted and d.verdict == "promoted" and d.challenger_auc == pytest.approx(f.val.auc)
    assert d.reason.startswith("no champion yet; passed: validation AUC")
    assert d.reason.endswith("[on validation folds [3, 7], n=60 (18 malignant), rows rows-a]")
    names = [c.name for c in d.checks]
    assert names == [
        "validation AUC",
        "validation sensitivity",
        "validation specificity",
        "validation accuracy vs constant predictor",
        "validation AUC vs diameter baseline + 0",
        "validation AUC vs voxel_stats baseline + 0",
    ]
    assert all(c.passed for c in d.checks)
    const = next(c for c in d.checks if "constant" in c.name)
    assert const.threshold == pytest.approx(42 / 60) == constant_accuracy(Y)


@pytest.mark.parametrize(
    ("malignant", "failing"),
    [(True, "validation specificity 0.0000 not >= 0.6000"), (False, "validation sensitivity 0.0000 not >= 0.6000")],
)
def test_constant_challengers_are_refused(malignant: bool, failing: str) -> None:
    prob = np.full(Y.size, 0.99 if malignant else 0.01)
    d = decide(figures("2", prob), None, SETTINGS)
    assert not d.promoted and failing in d.reason
    assert "validation AUC 0.5000 not >= 0.7500" in d.reason  # a constant ranks nothing
    assert "validation accuracy vs constant predictor" in d.reason  # ... and is never above itself
    # even a generous floor does not let it through: it cannot beat the constant predictor or the baselines
    lax = GateSettings(0.02, min_auc=0.0, min_sensitivity=0.0, min_specificity=0.0)
    d = decide(figures("2", prob), None, lax)
    assert not d.promoted and "vs constant predictor" in d.reason and "voxel_stats baseline" in d.reason


def test_a_challenger_below_a_baseline_is_refused() -> None:
    weak = scorer(1.4, 2)
    f = figures("3", weak)
    vox = f.val.baselines["voxel_stats"].auc
    assert SETTINGS.min_auc <= f.val.auc < vox, "the weak scorer must pass the AUC floor and lose to voxel_stats"
    d = decide(f, None, SETTINGS)
    failed = [c.name for c in d.checks if not c.passed]
    assert not d.promoted and "validation AUC vs voxel_stats baseline + 0" in failed
    assert "validation AUC" not in failed and not any("diameter" in n for n in failed)  # floor and diameter: passed
    assert "validation AUC vs voxel_stats baseline + 0" in d.reason
    # the margin counts: beating the baseline by less than baseline_margin is refused too
    good = figures("4", GOOD)
    margin = good.val.auc - good.val.baselines["voxel_stats"].auc + 0.01
    d = decide(good, None, GateSettings(0.02, baseline_margin=margin))
    assert not d.promoted and "voxel_stats baseline" in d.reason
    # a missing baseline refuses (the challenger must beat both)
    d = decide(figures("5", GOOD, baselines={"diameter": BASELINES["diameter"]}), None, SETTINGS)
    assert not d.promoted and "voxel_stats baseline" in d.reason and "nan" in d.reason


def test_a_challenger_below_a_floor_is_refused() -> None:
    shy = scorer(4.0, 1, shift=-2.5)  # same ranking as GOOD (AUC unchanged), calls few nodules malignant
    f = figures("6", shy)
    assert f.val.auc == pytest.approx(figures("1", GOOD).val.auc) and f.val.sensitivity < 0.6
    d = decide(f, None, SETTINGS)
    assert not d.promoted and d.reason.startswith("failed: validation sensitivity")
    assert decide(f, None, GateSettings(0.02, min_sensitivity=0.0)).promoted


def test_champion_comparison_on_the_same_rows_only() -> None:
    champion = figures("1", GOOD)
    better, slightly_worse = figures("2", scorer(6.0, 3)), figures("3", scorer(3.2, 2))
    d = decide(better, champion, SETTINGS)
    assert d.promoted and d.compared_with_champion and d.champion_auc == pytest.approx(champion.val.auc)
    assert "validation AUC vs champion v1 - 0.02" in d.reason
    gap = champion.val.auc - slightly_worse.val.auc
    assert gap > 0.02 > 0  # worse than the champion by more than the tolerance
    d = decide(slightly_worse, champion, SETTINGS)
    assert not d.promoted and d.reason.startswith("failed: validation AUC vs champion v1 - 0.02")
    assert decide(slightly_worse, champion, GateSettings(gap + 0.001)).promoted  # within a wider tolerance
    # other validation rows: the comparison is skipped and said so; floors and baselines still apply
    other = DataRef("validation", (2, 5), Y.size, int(Y.sum()), "rows-b")
    d = decide(figures("3", scorer(3.2, 2), data=other), champion, SETTINGS)
    assert d.promoted and not d.compared_with_champion
    assert (
        "champion v1 was evaluated on other validation data" in d.reason
        and "comparison with the champion skipped" in d.reason
    )
    d = decide(figures("7", np.full(Y.size, 0.99), data=other), champion, SETTINGS)
    assert not d.promoted and "other validation data" in d.reason
    # a champion registered before validation figures existed
    old = VersionFigures(NAME, "1", "passed", "ok", None, "d0")
    d = decide(slightly_worse, old, SETTINGS)
    assert d.promoted and "champion v1 carries no validation figures" in d.reason


def test_refusals_before_any_comparison() -> None:
    champ = figures("4", GOOD)
    assert decide(champ, champ, SETTINGS).reason == "version 4 already is the champion"
    none = VersionFigures(NAME, "5", "passed", "ok", None)
    d = decide(none, champ, SETTINGS)
    assert not d.promoted and d.reason.startswith("version carries no validation figures")
    failed = figures("2", GOOD, validation="failed")
    d = decide(failed, None, SETTINGS)
    assert not d.promoted and d.reason == "data validation did not pass: reason of v2" and d.challenger_auc is None
    unknown = VersionFigures(NAME, "3", val=figures("3", GOOD).val)
    assert (
        decide(unknown, None, SETTINGS).reason
        == "data validation did not pass: no validation result recorded on the version"
    )
    assert decide(failed, None, GateSettings(0.02, require_validation=False)).promoted


def test_validation_figures_round_trip_and_agree_with_the_predictions() -> None:
    f = figures("1", GOOD)
    from naslung.gate import ValidationFigures
    from naslung.metrics import binary_metrics

    back = ValidationFigures.from_dict(json.loads(json.dumps(f.val.to_dict())))
    assert back == f.val
    m = binary_metrics(Y, GOOD)
    assert (f.val.auc, f.val.sensitivity, f.val.specificity, f.val.accuracy) == pytest.approx(
        (m["auc"], m["sensitivity"], m["specificity"], m["accuracy"])
    )
    assert f.val.baselines["diameter"].accuracy == pytest.approx(float(((DIAM > 0.4) == Y).mean()))
    with pytest.raises(ValueError, match="data n"):
        validation_figures(Y[:10], GOOD[:10], GOOD[:10] >= 0.5, DATA)
    one_class = validation_figures(np.ones(5, int), np.full(5, 0.7), np.ones(5), DataRef("validation", (1,), 5, 5, "h"))
    assert math.isnan(one_class.auc) and one_class.auc_interval is None
    assert not decide(VersionFigures(NAME, "9", "passed", "", one_class), None, SETTINGS).promoted


def test_decision_record_holds_verdict_checks_data_and_settings() -> None:
    challenger, champion = figures("2", np.full(Y.size, 0.99)), figures("1", GOOD)
    d = decide(challenger, champion, SETTINGS)
    record = json.loads(json.dumps(decision_record(d, challenger, champion, SETTINGS, "2025-01-01T00:00:00+0000")))
    assert record["verdict"] == "refused" and record["promoted"] is False and record["reason"] == d.reason
    assert record["settings"] == {
        "auc_tolerance": 0.02,
        "min_auc": 0.75,
        "min_sensitivity": 0.6,
        "min_specificity": 0.6,
        "baseline_margin": 0.0,
        "require_validation": True,
        "baselines": ["diameter", "voxel_stats"],
    }
    assert {c["name"]: c["passed"] for c in record["checks"]}["validation specificity"] is False
    assert all(c["data"].startswith("validation folds [3, 7], n=60") for c in record["checks"])
    val = record["challenger"]["val"]
    assert val["data"] == {
        "role": "validation",
        "folds": [3, 7],
        "n": 60,
        "n_malignant": 18,
        "hash": "rows-a",
        "train_folds": [0, 2, 4, 5, 6, 8, 9],
        "test_fold": 1,
    }
    assert set(val["baselines"]) == {"diameter", "voxel_stats"} and val["constant_accuracy"] == pytest.approx(0.7)
    assert record["challenger"]["reported_only"] == {"f1_per_fold": {"1": 0.9}}  # test folds: reported, not used
    assert record["champion"]["version"] == "1"
    assert decision_record(d, challenger, None, SETTINGS, "t")["champion"] is None
