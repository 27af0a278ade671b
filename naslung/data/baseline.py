"""Diameter-only baseline: how far does nodule size alone get on a labelled set?

The reference difficulty figure of the task: on DeepLung's labelled LIDC table
(``annotationdetclsconvfnl_v3.csv``) the best single diameter threshold classifies 83.3 % of the
nodules correctly. The embedded synthetic dataset is tuned to land in the same region, so that a CNN
has to read morphology to do better.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import roc_curve

if TYPE_CHECKING:
    import pandas as pd


def diameter_baseline(diameters_mm: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> dict:
    """Best accuracy of the rule ``diameter_mm > threshold_mm -> malignant (1)`` over all thresholds.

    Args:
        diameters_mm: nodule diameters in mm, shape (n,).
        labels: 0 (benign) / 1 (malignant), shape (n,); unlabelled nodules must be removed beforehand.

    Returns:
        ``{"accuracy": float in [0, 1], "threshold_mm": float, "n": int}``; ``threshold_mm`` lies midway
        between the two diameters that the best rule separates.
    """
    d = np.asarray(diameters_mm, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if d.shape != y.shape:
        raise ValueError(f"diameter_baseline: {d.size} diameters but {y.size} labels")
    if d.size == 0:
        raise ValueError("diameter_baseline: no labelled nodules")
    if not np.all(np.isfinite(d)):
        raise ValueError("diameter_baseline: diameters must be finite numbers (mm)")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("diameter_baseline: labels must be 0 (benign) or 1 (malignant)")
    y = y.astype(np.int64)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:  # one class only: the best rule is the constant prediction
        thr = float(d.max()) if n_pos == 0 else float(d.min()) - 0.5
        return {"accuracy": 1.0, "threshold_mm": thr, "n": int(y.size)}
    # roc_curve predicts positive for d >= thresholds[i]; thresholds decrease, one per distinct value
    # (the first is +inf: nothing positive).
    fpr, tpr, thresholds = roc_curve(y, d, drop_intermediate=False)
    accuracy = (tpr * n_pos + (1.0 - fpr) * n_neg) / y.size
    best = int(np.argmax(accuracy))
    if best == 0:  # nothing positive: any threshold at or above the largest diameter
        threshold = float(d.max())
    else:
        below = d[d < thresholds[best]]
        lower = float(below.max()) if below.size else float(thresholds[best]) - 1.0
        threshold = 0.5 * (float(thresholds[best]) + lower)
    return {"accuracy": float(accuracy[best]), "threshold_mm": threshold, "n": int(y.size)}


def diameter_baseline_folds(manifest: pd.DataFrame, test_folds: Sequence[int]) -> dict:
    """Diameter-only baseline under the same protocol as the CNNs: for each test fold, the threshold is
    fitted on the other folds only and the accuracy measured on the test fold.

    Args:
        manifest: patch manifest with columns ``diameter_mm``, ``label`` (0/1) and ``fold``.
        test_folds: folds to report.

    Returns:
        ``{"per_fold": {fold: {"accuracy", "threshold_mm", "n"}}, "accuracy_mean": float,
        "accuracy_std": float (sample std; nan for one fold: no spread measured)}``. The same rule with
        intervals, a score for AUC and the voxel-statistics baseline is :mod:`naslung.baselines`.
    """
    per_fold: dict[int, dict] = {}
    for fold in test_folds:
        train = manifest[manifest["fold"] != fold]
        test = manifest[manifest["fold"] == fold]
        if test.empty:
            raise ValueError(f"diameter_baseline_folds: test fold {fold} is empty")
        fit = diameter_baseline(train["diameter_mm"].to_numpy(), train["label"].to_numpy())
        pred = (test["diameter_mm"].to_numpy() > fit["threshold_mm"]).astype(int)
        acc = float((pred == test["label"].to_numpy()).mean())
        per_fold[int(fold)] = {"accuracy": acc, "threshold_mm": fit["threshold_mm"], "n": len(test)}
    accs = np.array([v["accuracy"] for v in per_fold.values()])
    return {
        "per_fold": per_fold,
        "accuracy_mean": float(accs.mean()),
        "accuracy_std": float(accs.std(ddof=1)) if accs.size > 1 else float("nan"),
    }
