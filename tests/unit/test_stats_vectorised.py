"""The vectorised resample metrics of naslung/stats.py give exactly the per-resample scikit-learn values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score

from naslung import stats


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_metrics_match_scikit_learn_on_every_resample(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(37) < 0.3).astype(np.int64)
    s = np.round(rng.random(37), 1)  # ties on purpose
    lab = (s >= 0.5).astype(np.float64)
    idx = stats._resamples(y, 50, seed)
    sk = {
        "auc": lambda yy, ss: roc_auc_score(yy, ss),
        "accuracy": lambda yy, ss: accuracy_score(yy, ss >= 0.5),
        "sensitivity": lambda yy, ss: recall_score(yy, ss >= 0.5),
        "specificity": lambda yy, ss: recall_score(1 - yy, ss < 0.5),
        "f1": lambda yy, ss: f1_score(yy, ss >= 0.5, zero_division=0.0),
    }
    for name, metric in stats.BINARY_METRICS.items():
        values = s if name == "auc" else lab
        fast = stats._many(metric, y, values, idx)
        ref = np.array([sk[name](y[i], values[i]) for i in idx])
        np.testing.assert_allclose(fast, ref, atol=1e-12, err_msg=name)
        assert metric(y, values) == pytest.approx(sk[name](y, values))


def test_interval_brackets_the_estimate_and_paired_test_sees_a_better_scorer() -> None:
    rng = np.random.default_rng(3)
    y = np.tile([0, 1], 40)
    good = y + rng.normal(0, 0.4, y.size)
    noise = rng.normal(0, 1, y.size)
    iv = stats.bootstrap_ci(y, good, stats.auc, n_boot=500)
    assert iv.low <= iv.estimate <= iv.high and iv.estimate > 0.9
    d = stats.paired_bootstrap(y, good, noise, stats.auc, n_boot=500)
    assert d.difference > 0 and d.low > 0 and d.p_value < 0.01
