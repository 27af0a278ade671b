"""Calibration of the ensemble probability (naslung.calibration) and its use by Ensemble.predict.

Data are drawn from a known model: the true probability ``q`` of each nodule, its label ``y ~ Bernoulli(q)``
and a reported probability that is either ``q`` itself (calibrated) or ``sigmoid(3 * logit(q))`` (an
over-confident scorer whose best temperature is 3).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import TINY, constant_model

from naslung import calibration as cal
from naslung.ensemble import layout
from naslung.ensemble.model import Ensemble, EnsemblePrediction
from naslung.models.spec import ArchSpec


def _draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = cal.sigmoid(rng.normal(0.0, 1.5, size=n))
    return (rng.uniform(size=n) < q).astype(np.int64), q


def test_temperature_lowers_nll_of_an_overconfident_scorer() -> None:
    y, q = _draw(4000, 0)
    over = cal.sigmoid(3.0 * cal.logit(q))
    c = cal.fit_calibrator(y, over, "temperature")
    assert c.method == "temperature" and c.temperature == pytest.approx(3.0, rel=0.15)
    assert c.nll_after < c.nll_before - 0.02
    assert cal.nll(y, c.apply(over)) == pytest.approx(c.nll_after)
    before, after = cal.calibration_figures(y, over), cal.calibration_figures(y, c.apply(over))
    assert after["ece"] < before["ece"] and after["brier"] < before["brier"]
    assert before["slope"] < 0.5 and after["slope"] == pytest.approx(1.0, abs=0.15)
    # monotone: the AUC is unchanged (probabilities beyond [1e-6, 1 - 1e-6] are clipped before the logit)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, c.apply(over)) == pytest.approx(roc_auc_score(y, over), abs=1e-4)


def test_temperature_is_the_identity_on_calibrated_data() -> None:
    y, q = _draw(4000, 1)
    c = cal.fit_calibrator(y, q, "temperature")
    assert c.temperature == pytest.approx(1.0, abs=0.1)
    np.testing.assert_allclose(c.apply(q), q, atol=0.03)
    slope, intercept = cal.calibration_slope_intercept(y, q)
    assert slope == pytest.approx(1.0, abs=0.1) and intercept == pytest.approx(0.0, abs=0.1)
    assert cal.expected_calibration_error(y, q) < 0.05


def test_isotonic_is_monotone_and_lowers_the_error_where_fitted() -> None:
    y, q = _draw(2000, 2)
    over = cal.sigmoid(3.0 * cal.logit(q))
    c = cal.fit_calibrator(y, over, "isotonic")
    assert c.method == "isotonic" and c.nll_after < c.nll_before
    grid = np.linspace(0, 1, 101)
    assert np.all(np.diff(c.apply(grid)) >= 0) and c.apply(grid).min() >= 0 and c.apply(grid).max() <= 1
    from sklearn.isotonic import IsotonicRegression

    ref = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(over, y)
    np.testing.assert_allclose(c.apply(grid), ref.predict(grid), atol=1e-12)  # stored thresholds = sklearn's map


def test_ece_and_reliability_of_known_bins() -> None:
    p = np.array([0.05, 0.05, 0.95, 0.95])
    y = np.array([0, 1, 1, 1])
    # bin 0: mean p 0.05, fraction 0.5 -> 0.45; bin 9: 0.95 vs 1.0 -> 0.05; weights 1/2 each
    assert cal.expected_calibration_error(y, p) == pytest.approx(0.25)
    rows = cal.reliability_table(y, p, kind="x")
    assert [(r["bin"], r["n"], r["fraction_positive"]) for r in rows] == [(0, 2, 0.5), (9, 2, 1.0)]
    assert cal.calibration_figures(y, p)["brier"] == pytest.approx(np.mean((p - y) ** 2))


def test_calibrator_round_trips_through_calibration_json(tmp_path: Path) -> None:
    y, q = _draw(500, 3)
    over = cal.sigmoid(2.0 * cal.logit(q))
    for method in ("temperature", "isotonic", "none"):
        c = cal.fit_calibrator(
            y, over, method, refer_spread=0.15, fitted_on=cal.FitData((2, 3), 500, int(y.sum()), "h")
        )
        layout.write_calibration(tmp_path / method, c.to_dict())
        back = cal.Calibrator.from_dict(layout.read_calibration(tmp_path / method))
        assert back == c
        np.testing.assert_array_equal(back.apply(over), c.apply(over))
    assert layout.read_calibration(tmp_path / "absent") is None
    assert json.loads((tmp_path / "temperature" / layout.CALIBRATION_FILE).read_text())["refer_spread"] == 0.15
    with pytest.raises(ValueError, match="method"):
        cal.fit_calibrator(y, over, "platt")


def test_report_files_are_written(tmp_path: Path) -> None:
    y, q = _draw(300, 4)
    c = cal.fit_calibrator(y[:200], q[:200])
    report = cal.calibration_report(c, {"validation": (y[:200], q[:200]), "test": (y[200:], q[200:])})
    paths = cal.write_report(report, tmp_path / "cal")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import pandas as pd

    table = pd.read_csv(paths["csv"])
    assert set(table["kind"]) == {"validation_raw", "validation_calibrated", "test_raw", "test_calibrated"}
    assert table.groupby("kind")["n"].sum().to_dict() == {
        "test_calibrated": 100,
        "test_raw": 100,
        "validation_calibrated": 200,
        "validation_raw": 200,
    }
    assert set(report.flat_metrics()) >= {"calibration.validation.raw.brier", "calibration.test.calibrated.ece"}


def _ensemble(calibrator: cal.Calibrator | None = None) -> Ensemble:
    spec = ArchSpec.parse(TINY[0], cbam=False, head="linear")
    torch.manual_seed(0)
    members = [constant_model(spec, True), constant_model(spec, True), constant_model(spec, False)]
    return Ensemble(members, [spec] * 3, ["a", "b", "c"], calibrator=calibrator)


def test_ensemble_predict_applies_the_stored_calibrator(tmp_path: Path) -> None:
    X = np.random.default_rng(0).uniform(size=(4, 1, 32, 32, 32)).astype(np.float32)
    plain = _ensemble().predict(X)
    raw = plain.member_probs.mean(axis=1)
    np.testing.assert_allclose(plain.prob, raw, rtol=1e-6)  # no calibrator: prob is the raw mean
    np.testing.assert_allclose(plain.raw_prob, raw, rtol=1e-6)
    spread = plain.member_probs.std(axis=1)
    np.testing.assert_allclose(plain.uncertainty, spread, rtol=1e-5)
    assert plain.uncertainty.min() > 0.4 and plain.refer.all()  # two members say malignant, one benign
    assert plain.votes.tolist() == [2] * 4 and plain.label.tolist() == [1] * 4

    t = cal.Calibrator("temperature", temperature=4.0, refer_spread=0.49)
    ens = _ensemble(t)
    pred = ens.predict(X)
    np.testing.assert_allclose(pred.prob, cal.sigmoid(cal.logit(raw) / 4.0), rtol=1e-5)
    np.testing.assert_allclose(pred.raw_prob, raw, rtol=1e-6)
    assert not pred.refer.any() and pred.label.tolist() == plain.label.tolist()  # the vote is untouched
    # saved with the ensemble, read back by Ensemble.load and applied again
    ens.save(tmp_path / "ens")
    assert (tmp_path / "ens" / layout.CALIBRATION_FILE).is_file()
    again = Ensemble.load(tmp_path / "ens")
    assert again.calibrator == t
    np.testing.assert_allclose(again.predict(X).prob, pred.prob, rtol=1e-5)
    # an ensemble directory from before calibration existed reads as uncalibrated
    (tmp_path / "ens" / layout.CALIBRATION_FILE).unlink()
    old = Ensemble.load(tmp_path / "ens")
    assert old.calibrator.method == "none" and old.calibrator.refer_spread == cal.DEFAULT_REFER_SPREAD
    # member probabilities computed elsewhere (an explanation pass) get the same treatment
    np.testing.assert_allclose(ens.combine(pred.member_probs).prob, pred.prob, rtol=1e-6)
    np.testing.assert_allclose(ens.prediction_from_member_probs(pred.member_probs).prob, pred.prob, rtol=1e-6)
    assert EnsemblePrediction.from_member_probs(pred.member_probs).prob.tolist() == pred.raw_prob.tolist()
