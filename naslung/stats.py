"""Uncertainty of small-sample figures: bootstrap intervals and paired tests (scikit-learn / SciPy based).

Every figure the platform reports on a few dozen nodules comes with one of these:

* :func:`bootstrap_ci` — percentile interval of a metric over stratified bootstrap resamples of the
  nodules (each class resampled within itself, so AUC is defined in every resample);
* :func:`paired_bootstrap` — the same resamples applied to two scorers of the *same* nodules: the interval
  of the difference and a two-sided bootstrap p-value (AUC comparisons);
* :func:`mcnemar_exact` — exact McNemar test on paired right/wrong decisions (accuracy comparisons).

Inputs are labels ``y (n,)`` in {0, 1} and scores ``s (n,)`` (probabilities or any monotone score).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest, rankdata
from sklearn.metrics import roc_auc_score

Metric = Callable[[np.ndarray, np.ndarray], float]
"""``metric(y (n,), score (n,)) -> float``."""


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC of ``s`` against ``y``; nan when one class is missing."""
    y = np.asarray(y).astype(np.int64)
    return float(roc_auc_score(y, s)) if np.unique(y).size == 2 else math.nan


def balanced_accuracy(y: np.ndarray, s: np.ndarray, threshold: float = 0.5) -> float:
    """Mean of sensitivity and specificity of ``s >= threshold``; nan when one class is missing."""
    y = np.asarray(y).astype(np.int64)
    pred = np.asarray(s, dtype=np.float64) >= threshold
    if np.unique(y).size < 2:
        return math.nan
    return float(0.5 * (pred[y == 1].mean() + (~pred[y == 0]).mean()))


def accuracy(y: np.ndarray, s: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of ``(s >= threshold) == y``."""
    return float(((np.asarray(s, dtype=np.float64) >= threshold).astype(np.int64) == np.asarray(y)).mean())


def sensitivity(y: np.ndarray, s: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of the malignant (1) nodules with ``s >= threshold``; nan without malignant nodules."""
    y = np.asarray(y).astype(np.int64)
    pos = y == 1
    return float((np.asarray(s, dtype=np.float64)[pos] >= threshold).mean()) if pos.any() else math.nan


def specificity(y: np.ndarray, s: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of the benign (0) nodules with ``s < threshold``; nan without benign nodules."""
    y = np.asarray(y).astype(np.int64)
    neg = y == 0
    return float((np.asarray(s, dtype=np.float64)[neg] < threshold).mean()) if neg.any() else math.nan


def f1(y: np.ndarray, s: np.ndarray, threshold: float = 0.5) -> float:
    """F1 of the malignant class for ``s >= threshold`` (``2tp / (2tp + fp + fn)``; 0 when that is 0/0)."""
    y = np.asarray(y).astype(np.int64)
    pred = np.asarray(s, dtype=np.float64) >= threshold
    tp = float(np.sum(pred & (y == 1)))
    denom = 2.0 * tp + float(np.sum(pred & (y == 0))) + float(np.sum(~pred & (y == 1)))
    return 2.0 * tp / denom if denom > 0 else 0.0


def _rows_auc(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUC of each row of (B, n) labels/scores at once (Mann-Whitney U from average ranks, as
    ``roc_auc_score``); nan for a row with one class."""
    ranks = rankdata(s, axis=1)
    n1 = y.sum(axis=1).astype(np.float64)
    n0 = y.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        u = (ranks * y).sum(axis=1) - n1 * (n1 + 1.0) / 2.0
        out = u / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), out, np.nan)


def _rows_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, ...]:
    pred = s >= 0.5
    pos = y == 1
    return (pred & pos).sum(1), (pred & ~pos).sum(1), (~pred & pos).sum(1), (~pred & ~pos).sum(1)


def _rows_accuracy(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    tp, _fp, _fn, tn = _rows_counts(y, s)
    return (tp + tn) / y.shape[1]


def _rows_sensitivity(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    tp, _fp, fn, _tn = _rows_counts(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tp + fn > 0, tp / (tp + fn), np.nan)


def _rows_specificity(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    _tp, fp, _fn, tn = _rows_counts(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tn + fp > 0, tn / (tn + fp), np.nan)


def _rows_f1(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    tp, fp, fn, _tn = _rows_counts(y, s)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, 0.0)


_VECTORISED: dict[Any, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {}
"""Metric -> the same metric over the rows of (B, n) arrays (filled below; same values, B times faster)."""


def _many(metric: Metric, y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``metric`` on each resample ``idx`` (B, n) of (y, s): (B,) float64."""
    fast = _VECTORISED.get(metric)
    if fast is not None:
        return np.asarray(fast(y[idx], s[idx]), dtype=np.float64)
    return np.array([metric(y[i], s[i]) for i in idx], dtype=np.float64)


BINARY_METRICS: dict[str, Metric] = {}
"""The platform's metric names -> metric on (labels, score or 0/1 decision): accuracy, sensitivity,
specificity and F1 of ``s >= 0.5``, AUC of ``s`` (filled below)."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval (``level``, e.g. 0.95)."""

    estimate: float
    low: float
    high: float
    level: float
    n: int
    n_boot: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self, digits: int = 3) -> str:
        """``0.871 [0.742, 0.968]``."""
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _resamples(y: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) row indices, each class resampled with replacement within itself."""
    rng = np.random.default_rng(seed)
    idx_by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    parts = [rng.choice(ix, size=(n_boot, ix.size), replace=True) for ix in idx_by_class]
    return np.concatenate(parts, axis=1)


def _check(y: Any, *scores: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    yy = np.asarray(y).astype(np.int64).ravel()
    ss = [np.asarray(s, dtype=np.float64).ravel() for s in scores]
    for s in ss:
        if s.shape != yy.shape:
            raise ValueError(f"stats: {yy.size} labels but {s.size} scores")
    if yy.size == 0:
        raise ValueError("stats: no samples")
    return yy, ss


def bootstrap_ci(
    y: Any, s: Any, metric: Metric = auc, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> Interval:
    """Percentile interval of ``metric(y, s)`` over ``n_boot`` stratified resamples of the n nodules."""
    yy, (ss,) = _check(y, s)
    est = float(metric(yy, ss))
    idx = _resamples(yy, n_boot, seed)
    vals = _many(metric, yy, ss, idx)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return Interval(est, math.nan, math.nan, level, int(yy.size), n_boot)
    a = (1.0 - level) / 2.0
    return Interval(est, float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a)), level, int(yy.size), n_boot)


@dataclass(frozen=True)
class PairedDifference:
    """``metric(a) - metric(b)`` on the same nodules, its bootstrap interval and two-sided p-value."""

    a: float
    b: float
    difference: float
    low: float
    high: float
    p_value: float
    level: float
    n: int
    n_boot: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(
    y: Any, s_a: Any, s_b: Any, metric: Metric = auc, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> PairedDifference:
    """Compare two scorers of the same nodules: both are re-scored on the same stratified resamples.

    The p-value is two-sided, ``2 * min(k_le + 1, k_ge + 1) / (B + 1)`` with ``k_le`` / ``k_ge`` the
    resampled differences ``d <= 0`` / ``d >= 0`` out of ``B`` (capped at 1; never 0, since B resamples
    cannot show a p below 1/(B+1)): the bootstrap test of "no difference" used for AUC (DeLong's alternative).
    """
    yy, (sa, sb) = _check(y, s_a, s_b)
    ea, eb = float(metric(yy, sa)), float(metric(yy, sb))
    idx = _resamples(yy, n_boot, seed)
    d = _many(metric, yy, sa, idx) - _many(metric, yy, sb, idx)
    d = d[np.isfinite(d)]
    a = (1.0 - level) / 2.0
    if d.size == 0:
        return PairedDifference(ea, eb, ea - eb, math.nan, math.nan, math.nan, level, int(yy.size), n_boot)
    k = min(int(np.sum(d <= 0)), int(np.sum(d >= 0)))
    p = float(min(1.0, 2.0 * (k + 1) / (d.size + 1)))
    return PairedDifference(
        ea, eb, ea - eb, float(np.quantile(d, a)), float(np.quantile(d, 1 - a)), p, level, int(yy.size), n_boot
    )


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test: ``only_a`` nodules only A got right, ``only_b`` only B; two-sided binomial p."""

    only_a: int
    only_b: int
    both: int
    neither: int
    p_value: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_exact(correct_a: Any, correct_b: Any) -> McNemar:
    """McNemar's exact test on two paired boolean arrays (n,) of right (True) / wrong decisions."""
    a = np.asarray(correct_a, dtype=bool).ravel()
    b = np.asarray(correct_b, dtype=bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"mcnemar_exact: {a.size} vs {b.size} decisions")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(only_a, n, 0.5, alternative="two-sided").pvalue)
    return McNemar(only_a, only_b, int(np.sum(a & b)), int(np.sum(~a & ~b)), p)


_VECTORISED.update(
    {
        auc: _rows_auc,
        accuracy: _rows_accuracy,
        sensitivity: _rows_sensitivity,
        specificity: _rows_specificity,
        f1: _rows_f1,
    }
)
BINARY_METRICS.update(
    {"accuracy": accuracy, "sensitivity": sensitivity, "specificity": specificity, "f1": f1, "auc": auc}
)
