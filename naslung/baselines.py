"""Reference classifiers fitted on the training folds and scored on the evaluated folds.

Two baselines tell whether a CNN figure means anything on a few dozen test nodules:

* ``diameter`` — size alone. Decision: the best single-threshold rule ``diameter_mm > t -> malignant`` of
  :func:`naslung.data.baseline.diameter_baseline`, ``t`` fitted on the training folds (the accuracy-maximising
  threshold, the same rule as ``prepare``'s baseline). Score: a scikit-learn logistic regression on
  ``diameter_mm`` fitted on the training folds (a probability, monotone in the diameter, so its AUC is the
  AUC of the diameter itself whenever the fitted slope is positive). The decision is therefore *not*
  ``score >= 0.5``; it is the threshold rule.
* ``voxel_stats`` — a scikit-learn ``Pipeline(StandardScaler, LogisticRegression)`` on 12 simple features of
  each patch around its centre (:func:`voxel_features`), fitted on the training folds. Decision: the fitted
  model's ``predict`` (probability >= 0.5); score: its malignant-class probability.

Rows: the returned arrays follow ``naslung.data.store.PatchStore.arrays(eval_folds)``, i.e. the manifest rows
whose ``fold`` is in ``eval_folds`` **in manifest order** (not grouped by fold), each row's patch being
``patches[manifest.patch_index]`` (or ``patches[row position]`` when the manifest has no ``patch_index``).
``BaselinePrediction.ids`` holds their ``nodule_id`` so callers can check the alignment.

:func:`compare_with_baselines` puts a model's figures beside both baselines on the same nodules: each
metric with its stratified bootstrap interval (:func:`naslung.stats.bootstrap_ci`) and, per baseline, the
paired tests of :mod:`naslung.stats` (exact McNemar on right/wrong decisions for accuracy, paired bootstrap
for AUC). ``naslung evaluate``, ``naslung cv``, ``metrics.json`` and the model card all report through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from naslung import stats
from naslung.data.baseline import diameter_baseline
from naslung.metrics import METRIC_NAMES

DEFAULT_HU_WINDOW: tuple[float, float] = (-1200.0, 600.0)
"""``prepare.hu_window`` default: the HU range that prepare mapped onto [0, 1] (used to go back to HU)."""

BASELINE_NAMES: tuple[str, str] = ("diameter", "voxel_stats")

VOXEL_FEATURE_NAMES: tuple[str, ...] = (
    "diameter_mm",
    *(f"hu_hist_{i}" for i in range(8)),
    "max_hu_r6",
    "std_hu_r4",
    "mean_hu_r2",
)
"""The 12 features of :func:`voxel_features`, in column order."""

HIST_RADIUS = 8.0
"""Voxels within this distance (voxels) of the patch centre enter the 8-bin HU histogram."""
MAX_RADIUS = 6.0
"""... the maximum HU."""
STD_RADIUS = 4.0
"""... the HU standard deviation."""
CENTRE_RADIUS = 2.0
"""... the "centre" mean HU (the 2-voxel ball around the centre: 32 voxels of a 32^3 patch)."""


@dataclass(frozen=True)
class BaselinePrediction:
    """One baseline on the evaluated rows (see the module docstring for the row order).

    ``score`` (n,) float64 probability of malignancy (monotone score for AUC); ``label`` (n,) int64 decision
    in {0, 1} (rule fitted on the training folds); ``ids`` (n,) str ``nodule_id``; ``n_train`` the number of
    training rows it was fitted on; ``detail`` the fitted rule in numbers (JSON-able).
    """

    name: str
    score: np.ndarray
    label: np.ndarray
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    n_train: int = 0
    detail: dict = field(default_factory=dict)


def _centre_distance(size: int) -> np.ndarray:
    """(size, size, size) distance in voxels of each voxel centre from the patch centre ((size-1)/2)."""
    c = (size - 1) / 2.0
    z, y, x = np.mgrid[:size, :size, :size]
    return np.sqrt((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2)


def _as_cubes(patches: np.ndarray) -> np.ndarray:
    """(n, P, P, P) view of (n, P, P, P) or (n, 1, P, P, P) patches."""
    a = np.asarray(patches)
    if a.ndim == 5 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 4 or not (a.shape[1] == a.shape[2] == a.shape[3]):
        raise ValueError(f"baselines: patches must be (n, P, P, P) or (n, 1, P, P, P), got {a.shape}")
    return a


def voxel_features(
    patches: np.ndarray,
    diameters_mm: np.ndarray | Sequence[float],
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
) -> np.ndarray:
    """The 12 voxel statistics of each patch around its centre, (n, 12) float64 (:data:`VOXEL_FEATURE_NAMES`).

    ``patches`` (n, P, P, P) or (n, 1, P, P, P) in [0, 1] (prepare's windowing of ``hu_window``); they are
    mapped back to HU (``lo + x * (hi - lo)``; clipped voxels stay at the window edges). Distances are in
    voxels from the patch centre ((P-1)/2 on each axis; 1 voxel = ``prepare.spacing_mm``). Columns: the
    diameter (mm); the fraction of voxels within 8 voxels falling in each of 8 equal HU bins spanning
    ``hu_window``; the maximum HU within 6 voxels; the HU standard deviation within 4; the mean HU within 2.
    """
    cubes = _as_cubes(patches)
    d = np.asarray(diameters_mm, dtype=np.float64).ravel()
    if d.shape[0] != cubes.shape[0]:
        raise ValueError(f"voxel_features: {cubes.shape[0]} patches but {d.shape[0]} diameters")
    lo, hi = float(hu_window[0]), float(hu_window[1])
    dist = _centre_distance(cubes.shape[1])
    masks = {r: dist <= r for r in (HIST_RADIUS, MAX_RADIUS, STD_RADIUS, CENTRE_RADIUS)}
    edges = np.linspace(lo, hi, 9)
    out = np.empty((cubes.shape[0], len(VOXEL_FEATURE_NAMES)), dtype=np.float64)
    for i in range(cubes.shape[0]):
        hu = lo + np.asarray(cubes[i], dtype=np.float64) * (hi - lo)
        inner = hu[masks[HIST_RADIUS]]
        counts, _ = np.histogram(np.clip(inner, lo, hi), bins=edges)
        out[i, 0] = d[i]
        out[i, 1:9] = counts / max(1, inner.size)
        out[i, 9] = hu[masks[MAX_RADIUS]].max()
        out[i, 10] = hu[masks[STD_RADIUS]].std()
        out[i, 11] = hu[masks[CENTRE_RADIUS]].mean()
    return out


def _rows(manifest: pd.DataFrame, folds: Sequence[int]) -> pd.DataFrame:
    """Manifest rows in ``folds``, in manifest order (as :meth:`PatchStore.select`)."""
    return manifest[manifest["fold"].isin([int(f) for f in folds])]


def _patch_rows(manifest: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """Row indices into ``patches`` for ``rows`` (``patch_index`` when present, else the row position)."""
    if "patch_index" in rows.columns:
        return rows["patch_index"].to_numpy(np.int64)
    return manifest.index.get_indexer(rows.index).astype(np.int64)


def _diameters(rows: pd.DataFrame, fill: float) -> np.ndarray:
    d = pd.to_numeric(rows["diameter_mm"], errors="coerce").to_numpy(np.float64)
    return np.where(np.isfinite(d), d, fill)


def _labels(rows: pd.DataFrame, what: str) -> np.ndarray:
    y = rows["label"].to_numpy()
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"baselines: {what} labels must be 0 (benign) or 1 (malignant)")
    return y.astype(np.int64)


def _constant(n: int, p: float) -> np.ndarray:
    return np.full(n, p, dtype=np.float64)


def baseline_predictions(
    manifest: pd.DataFrame,
    patches: np.ndarray,
    train_folds: Sequence[int],
    eval_folds: Sequence[int],
    *,
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
) -> dict[str, BaselinePrediction]:
    """Fit both baselines on the rows of ``train_folds`` and score the rows of ``eval_folds``.

    Args:
        manifest: ``manifest.csv`` of prepare (columns ``diameter_mm``, ``label`` (0/1), ``fold``, optional
            ``patch_index``, ``nodule_id``).
        patches: (N, P, P, P) or (N, 1, P, P, P) float32 in [0, 1] aligned with the manifest through
            ``patch_index`` (as ``patches.npy``); memory-mapped arrays are fine (only the rows used are read).
        train_folds: folds to fit on; must not overlap ``eval_folds`` (ValueError otherwise).
        eval_folds: folds to score; rows in :meth:`PatchStore.arrays` order (manifest order).
        hu_window: ``prepare.hu_window`` used to map intensities back to HU (default -1200..600).

    Returns:
        ``{"diameter": BaselinePrediction, "voxel_stats": BaselinePrediction}``. A missing diameter is
        replaced by the training-fold median. With one class in the training folds both baselines predict
        that class (score = its training frequency).
    """
    tf, ef = {int(f) for f in train_folds}, {int(f) for f in eval_folds}
    if tf & ef:
        raise ValueError(
            f"baselines: train folds {sorted(tf)} and eval folds {sorted(ef)} overlap at {sorted(tf & ef)}"
        )
    train, test = _rows(manifest, sorted(tf)), _rows(manifest, list(eval_folds))
    if train.empty:
        raise ValueError(f"baselines: no manifest rows in train folds {sorted(tf)}")
    y_train = _labels(train, "training")
    ids = (
        test["nodule_id"].astype(str).to_numpy(str) if "nodule_id" in test.columns else np.arange(len(test)).astype(str)
    )
    d_train_raw = pd.to_numeric(train["diameter_mm"], errors="coerce").to_numpy(np.float64)
    fill = float(np.nanmedian(d_train_raw)) if np.isfinite(d_train_raw).any() else 0.0
    d_train, d_test = _diameters(train, fill), _diameters(test, fill)
    n = len(test)
    prior = float(y_train.mean())

    # diameter: threshold rule for the decision, logistic regression on the diameter for the score
    rule = diameter_baseline(d_train, y_train)
    thr = float(rule["threshold_mm"])
    d_label = (d_test > thr).astype(np.int64)
    if np.unique(y_train).size < 2:
        d_label = np.full(n, int(round(prior)), dtype=np.int64)
        d_score = _constant(n, prior)
        d_detail: dict = {"threshold_mm": thr, "train_accuracy": float(rule["accuracy"])}
    else:
        lr = LogisticRegression().fit(d_train[:, None], y_train)
        d_score = lr.predict_proba(d_test[:, None])[:, 1].astype(np.float64) if n else np.zeros(0)
        d_detail = {
            "threshold_mm": thr,
            "train_accuracy": float(rule["accuracy"]),
            "logit_slope_per_mm": float(lr.coef_[0, 0]),
            "logit_intercept": float(lr.intercept_[0]),
        }
    diameter = BaselinePrediction("diameter", d_score, d_label, ids, len(train), d_detail)

    # voxel statistics: standardised logistic regression on 12 features
    cubes = _as_cubes(patches)
    f_train = voxel_features(cubes[_patch_rows(manifest, train)], d_train, hu_window)
    f_test = (
        voxel_features(cubes[_patch_rows(manifest, test)], d_test, hu_window)
        if n
        else np.zeros((0, len(VOXEL_FEATURE_NAMES)))
    )
    v_detail: dict = {"features": list(VOXEL_FEATURE_NAMES), "hu_window": [float(hu_window[0]), float(hu_window[1])]}
    if np.unique(y_train).size < 2:
        v_score = _constant(n, prior)
        v_label = np.full(n, int(round(prior)), dtype=np.int64)
    else:
        model: Pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        model.fit(f_train, y_train)
        v_score = model.predict_proba(f_test)[:, 1].astype(np.float64) if n else np.zeros(0)
        v_label = model.predict(f_test).astype(np.int64) if n else np.zeros(0, np.int64)
        v_detail["train_accuracy"] = float(model.score(f_train, y_train))
    voxel = BaselinePrediction("voxel_stats", v_score, v_label, ids, len(train), v_detail)
    return {"diameter": diameter, "voxel_stats": voxel}


def baseline_predictions_cv(
    manifest: pd.DataFrame,
    patches: np.ndarray,
    test_folds: Sequence[int],
    *,
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
    exclude_folds: Sequence[int] = (),
) -> dict[int, dict[str, BaselinePrediction]]:
    """Per test fold ``k``: :func:`baseline_predictions` fitted on every other fold of the manifest (minus
    ``exclude_folds``) and scored on fold ``k`` — the protocol of the CNNs' test folds."""
    all_folds = sorted({int(f) for f in manifest["fold"].unique()})
    out: dict[int, dict[str, BaselinePrediction]] = {}
    for k in test_folds:
        train = [f for f in all_folds if f != int(k) and f not in {int(e) for e in exclude_folds}]
        out[int(k)] = baseline_predictions(manifest, patches, train, [int(k)], hu_window=hu_window)
    return out


def aligned(pred: BaselinePrediction, ids: Sequence[Any] | np.ndarray) -> BaselinePrediction:
    """``pred`` reordered to the row order ``ids`` (nodule ids); ValueError when the id sets differ."""
    want = np.asarray(ids).astype(str)
    have = np.asarray(pred.ids).astype(str)
    if np.array_equal(want, have):
        return pred
    pos = {v: i for i, v in enumerate(have)}
    missing = [v for v in want if v not in pos]
    if missing or len(want) != len(have):
        raise ValueError(
            f"baselines: {pred.name} was scored on other rows than the model ({len(have)} vs {len(want)} rows; "
            f"missing e.g. {missing[:3]})"
        )
    order = np.array([pos[v] for v in want], dtype=np.int64)
    return BaselinePrediction(pred.name, pred.score[order], pred.label[order], want, pred.n_train, pred.detail)


def pooled(per_fold: Mapping[int, Mapping[str, BaselinePrediction]]) -> dict[str, BaselinePrediction]:
    """The per-fold predictions of each baseline concatenated in fold order (as the models' pooled rows)."""
    out: dict[str, BaselinePrediction] = {}
    for name in BASELINE_NAMES:
        parts = [preds[name] for preds in per_fold.values() if name in preds]
        if not parts:
            continue
        out[name] = BaselinePrediction(
            name,
            np.concatenate([p.score for p in parts]),
            np.concatenate([p.label for p in parts]),
            np.concatenate([np.asarray(p.ids).astype(str) for p in parts]),
            int(sum(p.n_train for p in parts)),
            {},
        )
    return out


def _intervals(y: np.ndarray, score: np.ndarray, label: np.ndarray, n_boot: int, seed: int, level: float) -> dict:
    out: dict[str, Any] = {}
    for name in METRIC_NAMES:
        values = score if name == "auc" else label.astype(np.float64)
        out[name] = stats.bootstrap_ci(
            y, values, stats.BINARY_METRICS[name], n_boot=n_boot, seed=seed, level=level
        ).as_dict()
    return out


def compare_with_baselines(
    y: np.ndarray,
    score: np.ndarray,
    label: np.ndarray,
    baselines: Mapping[str, BaselinePrediction],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """A model beside the baselines on the same n nodules.

    Args:
        y: (n,) labels in {0, 1}.
        score: (n,) the model's malignancy score (AUC); label: (n,) its 0/1 decision (the other metrics).
        baselines: name -> prediction on the same rows in the same order (see :func:`aligned`).
        n_boot, seed, level: the stratified bootstrap (same resamples for every scorer: paired).

    Returns:
        ``{"n", "n_malignant", "model": {metric: Interval dict}, "baselines": {name: {metric: Interval
        dict}}, "tests": {name: {"accuracy_mcnemar": McNemar dict, "auc_paired_bootstrap": PairedDifference
        dict (model - baseline)}}}``; an Interval dict is ``{estimate, low, high, level, n, n_boot}``.
    """
    yy = np.asarray(y).astype(np.int64).ravel()
    sc = np.asarray(score, dtype=np.float64).ravel()
    lab = np.asarray(label).astype(np.int64).ravel()
    report: dict[str, Any] = {
        "n": int(yy.size),
        "n_malignant": int(yy.sum()),
        "model": _intervals(yy, sc, lab, n_boot, seed, level),
        "baselines": {},
        "tests": {},
    }
    right = lab == yy
    for name, b in baselines.items():
        if b.score.shape != yy.shape:
            raise ValueError(f"compare_with_baselines: {name} has {b.score.size} rows, the model {yy.size}")
        report["baselines"][name] = _intervals(yy, b.score, b.label, n_boot, seed, level)
        report["tests"][name] = {
            "accuracy_mcnemar": stats.mcnemar_exact(right, b.label == yy).as_dict(),
            "auc_paired_bootstrap": stats.paired_bootstrap(
                yy, sc, b.score, stats.auc, n_boot=n_boot, seed=seed, level=level
            ).as_dict(),
        }
    return report


def _p(p: float, n_boot: int) -> str:
    """``=0.0123``; a bootstrap p of 0 is ``<1/n_boot`` (its resolution)."""
    return f"<{1.0 / n_boot:.2g}" if float(p) == 0.0 else f"={float(p):.3g}"


def comparison_lines(report: Mapping[str, Any], model: str = "model", digits: int = 3) -> list[str]:
    """Plain-text lines: accuracy and AUC with intervals for the model and each baseline, and the p-values."""

    def iv(d: Mapping[str, Any]) -> str:
        return stats.Interval(**d).text(digits)

    lines = [
        f"{model:<12} accuracy {iv(report['model']['accuracy'])}  AUC {iv(report['model']['auc'])}"
        f"  (n={report['n']}, {report['n_malignant']} malignant; {int(100 * report['model']['auc']['level'])} % "
        "bootstrap intervals)"
    ]
    for name, b in report["baselines"].items():
        t = report["tests"][name]
        lines.append(
            f"{name:<12} accuracy {iv(b['accuracy'])}  AUC {iv(b['auc'])}"
            f"  | {model} vs {name}: McNemar p={t['accuracy_mcnemar']['p_value']:.3g}, "
            f"AUC difference {t['auc_paired_bootstrap']['difference']:+.3f} "
            f"(paired bootstrap p{_p(t['auc_paired_bootstrap']['p_value'], t['auc_paired_bootstrap']['n_boot'])})"
        )
    return lines


def fold_baselines(
    manifest: pd.DataFrame,
    patches: np.ndarray,
    ids_by_fold: Mapping[int, Sequence[Any] | np.ndarray],
    *,
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
) -> dict[int, dict[str, BaselinePrediction]]:
    """Both baselines for each test fold ``k`` of ``ids_by_fold``: fitted on every other fold of the
    manifest, scored on fold ``k`` and reordered to the model's test rows ``ids_by_fold[k]`` (nodule ids)."""
    all_folds = sorted({int(f) for f in manifest["fold"].unique()})
    out: dict[int, dict[str, BaselinePrediction]] = {}
    for k, ids in ids_by_fold.items():
        train = [f for f in all_folds if f != int(k)]
        preds = baseline_predictions(manifest, patches, train, [int(k)], hu_window=hu_window)
        out[int(k)] = {name: aligned(p, ids) for name, p in preds.items()}
    return out


def compare_folds(
    rows: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
    bases: Mapping[int, Mapping[str, BaselinePrediction]] | None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """:func:`compare_with_baselines` per test fold and pooled over the folds.

    ``rows[k] = (y (n,), score (n,), label (n,))`` of the model on test fold ``k``; ``bases[k]`` the
    baselines on the same rows (None: the model alone). Returns ``{"pooled": report, "per_fold": {"k":
    report}, "n_boot", "level", "seed"}``.
    """
    per_fold: dict[str, Any] = {}
    for f, (y, score, label) in rows.items():
        b = bases[f] if bases is not None else {}
        per_fold[str(f)] = compare_with_baselines(y, score, label, b, n_boot=n_boot, seed=seed, level=level)
    cat = [np.concatenate([np.asarray(r[i]) for r in rows.values()]) for i in range(3)]
    report = compare_with_baselines(
        cat[0], cat[1], cat[2], pooled(bases) if bases is not None else {}, n_boot=n_boot, seed=seed, level=level
    )
    return {"pooled": report, "per_fold": per_fold, "n_boot": int(n_boot), "level": float(level), "seed": int(seed)}


def report_metrics(report: Mapping[str, Any], model: str = "model", prefix: str = "") -> dict[str, float]:
    """Flat figures of one :func:`compare_with_baselines` report (for a tracker): ``{prefix}{model}_{metric}``
    with ``_low``/``_high`` for the five metrics, ``{prefix}{baseline}_accuracy|auc`` (with bounds),
    ``{prefix}p_accuracy_vs_{baseline}`` (McNemar) and ``{prefix}p_auc_vs_{baseline}`` (paired bootstrap)."""
    out: dict[str, float] = {f"{prefix}n_test": float(report["n"])}
    scorers = [(model, report["model"], METRIC_NAMES)] + [
        (b, ivs, ("accuracy", "auc")) for b, ivs in report["baselines"].items()
    ]
    for who, ivs, names in scorers:
        for metric in names:
            iv = ivs[metric]
            out[f"{prefix}{who}_{metric}"] = float(iv["estimate"])
            out[f"{prefix}{who}_{metric}_low"] = float(iv["low"])
            out[f"{prefix}{who}_{metric}_high"] = float(iv["high"])
    for b, t in report["tests"].items():
        out[f"{prefix}p_accuracy_vs_{b}"] = float(t["accuracy_mcnemar"]["p_value"])
        out[f"{prefix}p_auc_vs_{b}"] = float(t["auc_paired_bootstrap"]["p_value"])
    return out


def comparison_metrics(comparison: Mapping[str, Any], model: str = "model") -> dict[str, float]:
    """:func:`report_metrics` of the pooled report (no prefix) and of each fold (prefix ``fold<k>_``)."""
    out = report_metrics(comparison["pooled"], model)
    for f, rep in comparison["per_fold"].items():
        out.update(report_metrics(rep, model, prefix=f"fold{f}_"))
    return out


def comparison_text(comparison: Mapping[str, Any], folds: Sequence[int], model: str = "model") -> str:
    """Terminal lines: pooled over ``folds``, then per fold when there are several."""
    lines = [f"pooled over test folds {list(folds)}:"]
    lines += ["  " + t for t in comparison_lines(comparison["pooled"], model)]
    if len(comparison["per_fold"]) > 1:
        for f, rep in comparison["per_fold"].items():
            lines.append(f"test fold {f}:")
            lines += ["  " + t for t in comparison_lines(rep, model)]
    return "\n".join(lines)
