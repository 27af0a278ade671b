"""Calibration of the ensemble's malignancy probability, and how well calibrated a probability is.

The ensemble's raw score is the mean member probability ``p`` (n,) in [0, 1]. A :class:`Calibrator` maps
it onto a calibrated probability, fitted on the members' *validation* predictions of the deploy fold
(never on a test fold):

* ``temperature`` — temperature scaling of the logit: ``sigmoid(logit(p) / T)``; ``T`` (> 0, no unit)
  minimises the negative log-likelihood on the validation rows (SciPy, bounded search over ``log T``).
  Monotone, so AUC and the ranking are unchanged;
* ``isotonic`` — scikit-learn's isotonic regression of ``y`` on ``p`` (piecewise linear, non-decreasing;
  stored as its thresholds and applied with ``numpy.interp``, exactly as ``IsotonicRegression.predict``);
* ``none`` — the identity.

The calibrator also carries ``refer_spread`` (``ensemble.refer_spread``): a nodule is flagged ``refer``
when the standard deviation of its member probabilities exceeds it. It is stored as ``calibration.json``
in the ensemble directory (:mod:`naslung.ensemble.layout`) and applied by
:meth:`naslung.ensemble.model.Ensemble.predict`.

Figures (:func:`calibration_figures`): Brier score, calibration slope and intercept (logistic regression of
``y`` on ``logit(p)``: slope 1 / intercept 0 is perfect, slope < 1 over-confident), expected calibration
error over 10 equal-width bins (ECE) and the reliability curve (:func:`reliability_table`,
:func:`reliability_png`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

METHODS: tuple[str, ...] = ("temperature", "isotonic", "none")
EPS = 1e-6
"""Probabilities are clipped to [EPS, 1 - EPS] before a logit is taken."""
DEFAULT_REFER_SPREAD = 0.2
"""``ensemble.refer_spread``'s default, used for an ensemble directory without ``calibration.json``."""
N_BINS = 10
"""Equal-width bins of the ECE and the reliability curve."""
T_BOUNDS = (1e-2, 1e2)
"""Range searched for the temperature."""


def logit(p: Any) -> np.ndarray:
    """``log(p / (1 - p))`` of probabilities (clipped to [EPS, 1 - EPS]), float64."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(q) - np.log1p(-q)


def sigmoid(z: Any) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def nll(y: Any, p: Any) -> float:
    """Mean negative log-likelihood (nats per nodule) of probabilities ``p`` (n,) for labels ``y`` (n,)."""
    yy = np.asarray(y, dtype=np.float64).ravel()
    q = np.clip(np.asarray(p, dtype=np.float64).ravel(), EPS, 1.0 - EPS)
    return float(-np.mean(yy * np.log(q) + (1.0 - yy) * np.log1p(-q)))


@dataclass(frozen=True)
class FitData:
    """Which rows a calibrator was fitted on: folds, count, malignant count, identity hash."""

    folds: tuple[int, ...] = ()
    n: int = 0
    n_malignant: int = 0
    hash: str | None = None


@dataclass(frozen=True)
class Calibrator:
    """A fitted map raw mean probability -> calibrated probability, plus the ``refer`` threshold."""

    method: str = "none"
    """temperature | isotonic | none."""
    temperature: float = 1.0
    """``T`` of temperature scaling (1 = identity)."""
    x: tuple[float, ...] = ()
    """Isotonic thresholds: raw probabilities (increasing)."""
    y: tuple[float, ...] = ()
    """Isotonic thresholds: calibrated probabilities at ``x`` (non-decreasing)."""
    refer_spread: float = DEFAULT_REFER_SPREAD
    """A nodule is referred when the std of its member probabilities exceeds this."""
    fitted_on: FitData = field(default_factory=FitData)
    nll_before: float | None = None
    """Validation NLL of the raw mean probability (nats per nodule)."""
    nll_after: float | None = None
    """Validation NLL after calibration (nats per nodule)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Calibrator: method must be one of {METHODS}, got {self.method!r}")
        if not self.temperature > 0:
            raise ValueError(f"Calibrator: temperature must be > 0, got {self.temperature}")
        if self.method == "isotonic" and (len(self.x) != len(self.y) or not self.x):
            raise ValueError("Calibrator: isotonic needs thresholds x and y of the same non-zero length")

    def apply(self, p: Any) -> np.ndarray:
        """Calibrated probabilities (n,) float64 of raw mean probabilities ``p`` (n,)."""
        raw = np.asarray(p, dtype=np.float64)
        if self.method == "temperature":
            return sigmoid(logit(raw) / self.temperature)
        if self.method == "isotonic":
            return np.interp(raw, np.asarray(self.x), np.asarray(self.y))
        return raw.copy()

    def refer(self, spread: Any) -> np.ndarray:
        """(n,) bool: member spread (std of member probabilities) above ``refer_spread``."""
        return np.asarray(spread, dtype=np.float64) > self.refer_spread

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibrator:
        """Inverse of :meth:`to_dict` (the content of ``calibration.json``)."""
        fit = dict(data.get("fitted_on") or {})
        return cls(
            method=str(data.get("method", "none")),
            temperature=float(data.get("temperature", 1.0)),
            x=tuple(float(v) for v in data.get("x", ())),
            y=tuple(float(v) for v in data.get("y", ())),
            refer_spread=float(data.get("refer_spread", DEFAULT_REFER_SPREAD)),
            fitted_on=FitData(
                folds=tuple(int(f) for f in fit.get("folds", ())),
                n=int(fit.get("n", 0)),
                n_malignant=int(fit.get("n_malignant", 0)),
                hash=fit.get("hash"),
            ),
            nll_before=None if data.get("nll_before") is None else float(data["nll_before"]),
            nll_after=None if data.get("nll_after") is None else float(data["nll_after"]),
        )


def identity(refer_spread: float = DEFAULT_REFER_SPREAD) -> Calibrator:
    """The calibrator that changes nothing."""
    return Calibrator("none", refer_spread=float(refer_spread))


def fit_temperature(y: Any, p: Any) -> float:
    """Temperature ``T`` minimising the NLL of ``sigmoid(logit(p) / T)`` for labels ``y``."""
    from scipy.optimize import minimize_scalar

    yy = np.asarray(y, dtype=np.float64).ravel()
    z = logit(p).ravel()
    lo, hi = math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])
    res = minimize_scalar(lambda lt: nll(yy, sigmoid(z / math.exp(lt))), bounds=(lo, hi), method="bounded")
    return float(math.exp(float(res.x)))


def fit_calibrator(
    y: Any,
    p: Any,
    method: str = "temperature",
    *,
    refer_spread: float = DEFAULT_REFER_SPREAD,
    fitted_on: FitData | None = None,
) -> Calibrator:
    """Fit ``method`` on validation labels ``y`` (n,) and raw mean probabilities ``p`` (n,).

    With no rows (or ``method="none"``) the result is the identity. Isotonic regression needs both classes;
    with one class it falls back to temperature scaling (which then only shrinks the probabilities).
    """
    yy = np.asarray(y, dtype=np.int64).ravel()
    pp = np.asarray(p, dtype=np.float64).ravel()
    if yy.shape != pp.shape:
        raise ValueError(f"fit_calibrator: {yy.size} labels but {pp.size} probabilities")
    data = fitted_on or FitData(n=int(yy.size), n_malignant=int(yy.sum()))
    if method not in METHODS:
        raise ValueError(f"fit_calibrator: method must be one of {METHODS}, got {method!r}")
    if method == "none" or yy.size == 0:
        return Calibrator("none", refer_spread=float(refer_spread), fitted_on=data)
    before = nll(yy, pp)
    if method == "isotonic" and np.unique(yy).size == 2:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(pp, yy.astype(np.float64))
        cal = Calibrator(
            "isotonic",
            x=tuple(float(v) for v in iso.X_thresholds_),
            y=tuple(float(v) for v in iso.y_thresholds_),
            refer_spread=float(refer_spread),
            fitted_on=data,
        )
    else:
        cal = Calibrator("temperature", temperature=fit_temperature(yy, pp), refer_spread=float(refer_spread))
    return replace(cal, fitted_on=data, nll_before=before, nll_after=nll(yy, cal.apply(pp)))


# --- figures ----------------------------------------------------------------------------------------------


def calibration_slope_intercept(y: Any, p: Any) -> tuple[float, float]:
    """(slope, intercept) of the logistic regression of ``y`` on ``logit(p)`` (unpenalised); nan for one
    class. Perfect calibration is (1, 0); separable data drive the slope to large values."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    yy = np.asarray(y, dtype=np.int64).ravel()
    if np.unique(yy).size < 2:
        return math.nan, math.nan
    z = logit(p).reshape(-1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        lr = LogisticRegression(C=np.inf, max_iter=1000).fit(z, yy)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def _bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index (n,) of probabilities in ``n_bins`` equal-width bins of [0, 1] (1.0 in the last bin)."""
    return np.minimum((np.clip(p, 0.0, 1.0) * n_bins).astype(np.int64), n_bins - 1)


def expected_calibration_error(y: Any, p: Any, n_bins: int = N_BINS) -> float:
    """ECE: sum over equal-width bins of (share of rows) x |fraction malignant - mean probability|."""
    yy = np.asarray(y, dtype=np.float64).ravel()
    pp = np.asarray(p, dtype=np.float64).ravel()
    if yy.size == 0:
        return math.nan
    b = _bins(pp, n_bins)
    total = 0.0
    for k in np.unique(b):
        m = b == k
        total += m.mean() * abs(yy[m].mean() - pp[m].mean())
    return float(total)


def reliability_table(y: Any, p: Any, n_bins: int = N_BINS, kind: str = "") -> list[dict[str, Any]]:
    """Reliability curve rows, one per non-empty bin: ``kind``, ``bin``, ``lower``, ``upper``,
    ``mean_predicted``, ``fraction_positive``, ``n`` (the DVC plot data)."""
    yy = np.asarray(y, dtype=np.float64).ravel()
    pp = np.asarray(p, dtype=np.float64).ravel()
    b = _bins(pp, n_bins)
    rows = []
    for k in range(n_bins):
        m = b == k
        if m.any():
            rows.append(
                {
                    "kind": kind,
                    "bin": k,
                    "lower": k / n_bins,
                    "upper": (k + 1) / n_bins,
                    "mean_predicted": float(pp[m].mean()),
                    "fraction_positive": float(yy[m].mean()),
                    "n": int(m.sum()),
                }
            )
    return rows


def calibration_figures(y: Any, p: Any, n_bins: int = N_BINS) -> dict[str, float]:
    """``{"n", "brier", "nll", "slope", "intercept", "ece"}`` of probabilities ``p`` for labels ``y``."""
    from sklearn.metrics import brier_score_loss

    yy = np.asarray(y, dtype=np.int64).ravel()
    pp = np.asarray(p, dtype=np.float64).ravel()
    if yy.size == 0:
        return {"n": 0.0, "brier": math.nan, "nll": math.nan, "slope": math.nan, "intercept": math.nan, "ece": math.nan}
    slope, intercept = calibration_slope_intercept(yy, pp)
    return {
        "n": float(yy.size),
        "brier": float(brier_score_loss(yy, np.clip(pp, 0.0, 1.0), pos_label=1)),
        "nll": nll(yy, pp),
        "slope": slope,
        "intercept": intercept,
        "ece": expected_calibration_error(yy, pp, n_bins),
    }


def reliability_png(
    curves: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, title: str = "Reliability"
) -> Path:
    """Reliability diagram of ``{label: reliability_table rows}`` (mean predicted vs fraction malignant,
    marker area ~ rows per bin) with the diagonal; PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for label, rows in curves.items():
        if not rows:
            continue
        xs = [r["mean_predicted"] for r in rows]
        ys = [r["fraction_positive"] for r in rows]
        ax.plot(xs, ys, marker="o", linewidth=1.2, label=label)
        ax.scatter(xs, ys, s=[8 + 4 * r["n"] for r in rows], alpha=0.3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("fraction malignant (bin)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


@dataclass(frozen=True)
class CalibrationReport:
    """Figures of the raw and calibrated probability on the fitting (validation) rows and, reported only,
    on the deploy fold's test fold; plus the reliability rows of each."""

    calibrator: Calibrator
    figures: dict[str, dict[str, dict[str, float]]]
    """``{"validation" | "test": {"raw" | "calibrated": calibration_figures}}``."""
    reliability: list[dict[str, Any]]
    """Rows of :func:`reliability_table`, ``kind`` = ``<split>_<raw|calibrated>``."""
    data: dict[str, dict[str, Any]]
    """``{"validation" | "test": {"folds", "n", "hash"}}``: where each figure comes from."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "calibrator": self.calibrator.to_dict(),
            "figures": self.figures,
            "data": self.data,
            "reliability": self.reliability,
        }

    def flat_metrics(self) -> dict[str, float]:
        """``calibration.<split>.<raw|calibrated>.<figure>`` -> value (finite values only, for MLflow)."""
        out = {}
        for split, kinds in self.figures.items():
            for kind, figs in kinds.items():
                for k, v in figs.items():
                    if k != "n" and math.isfinite(float(v)):
                        out[f"calibration.{split}.{kind}.{k}"] = float(v)
        return out


def calibration_report(
    calibrator: Calibrator,
    splits: Mapping[str, tuple[Any, Any]],
    data: Mapping[str, Mapping[str, Any]] | None = None,
) -> CalibrationReport:
    """Figures and reliability rows of ``calibrator`` on ``{split: (y (n,), raw mean probability (n,))}``."""
    figures: dict[str, dict[str, dict[str, float]]] = {}
    rows: list[dict[str, Any]] = []
    for split, (y, p) in splits.items():
        raw = np.asarray(p, dtype=np.float64)
        cal = calibrator.apply(raw)
        figures[split] = {"raw": calibration_figures(y, raw), "calibrated": calibration_figures(y, cal)}
        rows += reliability_table(y, raw, kind=f"{split}_raw") + reliability_table(y, cal, kind=f"{split}_calibrated")
    return CalibrationReport(calibrator, figures, rows, {k: dict(v) for k, v in (data or {}).items()})


REPORT_DIR = "calibration"
"""Folder (under ``ensemble.out_dir``) of the calibration report of the deployable ensemble."""
REPORT_JSON = "calibration_report.json"
RELIABILITY_CSV = "reliability.csv"
RELIABILITY_PNG = "reliability.png"


def write_report(report: CalibrationReport, directory: str | Path, title: str = "Reliability") -> dict[str, Path]:
    """Write ``calibration_report.json``, ``reliability.csv`` (DVC plot data: x ``mean_predicted``,
    y ``fraction_positive``, one curve per ``kind``) and ``reliability.png`` into ``directory``."""
    import json

    import pandas as pd

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"json": d / REPORT_JSON, "csv": d / RELIABILITY_CSV, "png": d / RELIABILITY_PNG}
    paths["json"].write_text(encoding="utf-8", data=json.dumps(report.to_dict(), indent=1, default=float) + "\n")
    cols = ["kind", "bin", "lower", "upper", "mean_predicted", "fraction_positive", "n"]
    pd.DataFrame(report.reliability, columns=cols).to_csv(paths["csv"], index=False)
    curves: dict[str, list[dict[str, Any]]] = {}
    for r in report.reliability:
        curves.setdefault(str(r["kind"]), []).append(r)
    reliability_png(curves, paths["png"], title)
    return paths
