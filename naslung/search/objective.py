"""A search candidate's score: ``search.objective`` on the pooled validation folds, with a bootstrap interval.

The objective (``search.objective``) is ROC AUC (``auc``, threshold-free) or balanced accuracy
(``balanced_accuracy``: mean of sensitivity and specificity at probability 0.5) of the malignancy
probabilities ``p (n,)`` against the labels ``y (n,)`` of the validation nodules (``search.val_folds``
patient-level folds pooled; the test fold is never among them). Plain accuracy is never the objective: a
constant "benign" prediction scores 0.79 on a fold of 27 benign nodules out of 34, while its AUC is 0.5
and its balanced accuracy 0.5.

The interval is the stratified percentile bootstrap of :func:`naslung.stats.bootstrap_ci` (each class
resampled within itself, ``n_boot`` resamples, seeded), at level 0.95.

Which weights are scored: see :func:`naslung.search.candidate.train_candidate` — the weights after the
fixed ``search.epochs`` (final epoch), never an epoch chosen on the validation nodules that are scored.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from naslung import stats
from naslung.params import SearchObjective

OBJECTIVES: dict[str, stats.Metric] = {"auc": stats.auc, "balanced_accuracy": stats.balanced_accuracy}
"""Objective name -> ``metric(y, p)``."""

OBJECTIVE_LABELS: dict[str, str] = {"auc": "ROC AUC", "balanced_accuracy": "balanced accuracy"}
"""Objective name -> axis label words."""

N_BOOT = 2000
"""Bootstrap resamples of a candidate's score interval."""


@dataclass(frozen=True)
class Score:
    """A candidate's score: ``objective`` estimate and its 95 % bootstrap interval on ``n_val`` nodules
    (``n_val_malignant`` of them malignant), plus the validation ``accuracy`` (fraction, for information)."""

    objective: str
    score: float
    score_low: float
    score_high: float
    level: float
    n_val: int
    n_val_malignant: int
    n_boot: int
    accuracy: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def objective_metric(objective: SearchObjective | str) -> stats.Metric:
    """The ``metric(y, p)`` of ``objective`` (a ValueError names an unknown one)."""
    try:
        return OBJECTIVES[objective]
    except KeyError:
        raise ValueError(f"search.objective: expected one of {sorted(OBJECTIVES)}, got {objective!r}") from None


def score_predictions(
    y: Any, p: Any, objective: SearchObjective | str, *, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95
) -> Score:
    """Score probabilities ``p (n,)`` of labels ``y (n,)`` by ``objective``, with the stratified bootstrap
    interval (:func:`naslung.stats.bootstrap_ci`). A one-class ``y`` gives NaN for AUC / balanced accuracy:
    a ValueError, since such a validation set cannot rank candidates."""
    yy = np.asarray(y).astype(np.int64).ravel()
    pp = np.asarray(p, dtype=np.float64).ravel()
    ci = stats.bootstrap_ci(yy, pp, objective_metric(objective), n_boot=n_boot, seed=seed, level=level)
    if not math.isfinite(ci.estimate):
        raise ValueError(
            f"search objective {objective}: undefined on {yy.size} validation nodules "
            f"({int(yy.sum())} malignant); the pooled validation folds need both classes"
        )
    return Score(
        objective=str(objective),
        score=float(ci.estimate),
        score_low=float(ci.low),
        score_high=float(ci.high),
        level=float(level),
        n_val=int(yy.size),
        n_val_malignant=int(yy.sum()),
        n_boot=int(n_boot),
        accuracy=stats.accuracy(yy, pp),
    )


def objective_label(objective: str, interval: bool = True) -> str:
    """Axis label of a score axis, e.g. ``validation ROC AUC (pooled folds, 95 % CI)``."""
    words = OBJECTIVE_LABELS.get(objective, objective)
    return f"validation {words} (pooled folds{', 95 % CI' if interval else ''})"
