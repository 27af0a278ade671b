"""Evaluation of the ensemble and of every member over the test folds (paper Tables 1/5 and Fig. 7).

Inputs are the cached test-fold predictions of the members (see :mod:`naslung.ensemble.training`): for
test fold ``k`` every member was trained without fold ``k`` and scored on it once. The ensemble of fold
``k`` combines those member probabilities with the majority rule of
:func:`naslung.ensemble.model.majority_label` (label) and their mean (continuous score, used for AUC).
Metrics come from :func:`naslung.metrics.binary_metrics` (scikit-learn).

Outputs: ``<paths.artifacts>/metrics.json`` (per-fold and mean ± std (sample std) of accuracy,
sensitivity, specificity, F1 and AUC for each member and for the ensemble, the ensemble-size curve, the
best single member and the diameter-only baseline of ``prepare_metrics.json``) and PNG plots under
``<paths.artifacts>/plots/``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from naslung.artifact_paths import ArtifactPaths, ArtifactsDir
from naslung.data.baseline import diameter_baseline_folds
from naslung.ensemble.model import majority_label
from naslung.ensemble.training import MemberRecord, read_index
from naslung.metrics import METRIC_NAMES, binary_metrics
from naslung.params import Params


def ensemble_metrics(y: np.ndarray, member_probs: np.ndarray) -> dict[str, float]:
    """Metrics of the majority-vote label (threshold-based metrics) and of the mean probability (AUC).

    ``member_probs`` is (n, k); ``y`` (n,) in {0, 1}.
    """
    _, label = majority_label(member_probs)
    m = binary_metrics(y, label.astype(np.float64))
    m["auc"] = binary_metrics(y, np.asarray(member_probs).mean(axis=1))["auc"]
    return m


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) ignoring nan; nan when empty."""
    a = np.asarray([v for v in values if not math.isnan(float(v))], dtype=float)
    if a.size == 0:
        return {"mean": math.nan, "std": math.nan}
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0}


def _summary(per_fold: Mapping[int, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    return {name: mean_std([m[name] for m in per_fold.values()]) for name in METRIC_NAMES}


def fold_predictions(
    records: Sequence[MemberRecord], folds: Sequence[int], names: Sequence[str]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per test fold: (y (n,), member_probs (n, k)) with member columns in ``names`` order.

    Raises when a member is missing for a fold or members disagree on the test rows.
    """
    by_key = {(r.name, r.fold): r for r in records}
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for fold in folds:
        cols, ref_ids, ref_y = [], None, None
        for name in names:
            rec = by_key.get((name, fold))
            if rec is None:
                raise ValueError(
                    f"evaluate: member {name} has no training for test fold {fold} (run `naslung ensemble train`)"
                )
            ids, y, prob = rec.predictions()
            if ref_ids is None:
                ref_ids, ref_y = ids, y
            elif not np.array_equal(ids, ref_ids):
                raise ValueError(
                    f"evaluate: member {name} was scored on other test rows of fold {fold} than {names[0]}"
                )
            cols.append(prob)
        assert ref_y is not None
        out[fold] = (ref_y, np.stack(cols, axis=1))
    return out


def size_curve(
    preds: Mapping[int, tuple[np.ndarray, np.ndarray]], sizes: Sequence[int], repeats: int, seed: int
) -> dict[str, dict[str, float]]:
    """Ensemble-size curve: for each n, ``repeats`` random member subsets of size n (seeded); for each
    subset the fold-mean metric; reported as mean and std over the subsets. Sizes above k are skipped."""
    k = next(iter(preds.values()))[1].shape[1]
    rng = np.random.default_rng(seed)
    curve: dict[str, dict[str, float]] = {}
    for n in sizes:
        if n > k or n < 1:
            continue
        per_subset: dict[str, list[float]] = {name: [] for name in METRIC_NAMES}
        for _ in range(max(1, int(repeats))):
            cols = np.sort(rng.choice(k, size=n, replace=False))
            fold_vals = [ensemble_metrics(y, p[:, cols]) for y, p in preds.values()]
            for name in METRIC_NAMES:
                per_subset[name].append(mean_std([m[name] for m in fold_vals])["mean"])
        curve[str(n)] = {"n_subsets": float(max(1, int(repeats)))}
        for name in METRIC_NAMES:
            ms = mean_std(per_subset[name])
            curve[str(n)][f"{name}_mean"] = ms["mean"]
            curve[str(n)][f"{name}_std"] = ms["std"]
    return curve


def _baseline(artifacts: ArtifactsDir) -> Any:
    pm = artifacts.prepare_metrics
    if not pm.is_file():
        return None
    data = json.loads(pm.read_text(encoding="utf-8"))
    for key in ("baseline", "diameter_baseline", "diameter_only_baseline"):
        if key in data:
            return data[key]
    return None


def _baseline_folds(artifacts: ArtifactsDir, folds: list[int]) -> Any:
    """Diameter-only baseline fitted on the non-test folds, scored on each test fold (same protocol)."""
    manifest = artifacts.manifest
    if not manifest.is_file() or not folds:
        return None
    return diameter_baseline_folds(pd.read_csv(manifest), [int(f) for f in folds])


def selection_leak_folds(params: Params, folds: Sequence[int]) -> list[int]:
    """Test folds whose figures are optimistic because the architecture search saw them.

    Members taken from the search's selection (``ensemble.specs`` empty) were chosen by a search that held
    out only ``search.fold``; every other fold was among its training/validation folds."""
    if params.ensemble.specs:
        return []
    return [int(f) for f in folds if int(f) != int(params.search.fold)]


def evaluate_ensemble(
    params: Params, out_path: str | Path | None = None, plots_dir: str | Path | None = None
) -> dict[str, Any]:
    """Evaluate members and ensemble over ``params.ensemble.folds``; write metrics.json and plots.

    Returns the metrics dict (also written to ``out_path``, default ``<paths.artifacts>/metrics.json``).
    """
    paths = ArtifactPaths.from_params(params)
    index, records = read_index(params)
    folds = [int(f) for f in params.ensemble.folds]
    names = list(dict.fromkeys(r.name for r in records if r.fold == index["deploy_fold"]))
    preds = fold_predictions(records, folds, names)
    members: dict[str, Any] = {}
    for j, name in enumerate(names):
        per_fold = {f: binary_metrics(y, p[:, j]) for f, (y, p) in preds.items()}
        rec = next(r for r in records if r.name == name)
        members[name] = {
            "spec": rec.spec,
            "n_params": rec.n_params,
            "flops": rec.flops,
            "latency_ms_per_nodule": rec.latency_ms_per_nodule,
            "per_fold": {str(f): m for f, m in per_fold.items()},
            "mean_std": _summary(per_fold),
            "run_ids": {str(r.fold): r.run_id for r in records if r.name == name},
        }
    ens_fold = {f: ensemble_metrics(y, p) for f, (y, p) in preds.items()}
    best = max(names, key=lambda n: (members[n]["mean_std"]["f1"]["mean"], members[n]["mean_std"]["auc"]["mean"]))
    result: dict[str, Any] = {
        "folds": folds,
        "n_members": len(names),
        "member_names": names,
        "data_hash": index["data"]["hash"],
        "ensemble": {
            "per_fold": {str(f): m for f, m in ens_fold.items()},
            "mean_std": _summary(ens_fold),
            "n_test": {str(f): len(y) for f, (y, _) in preds.items()},
        },
        "members": members,
        "best_member": {"name": best, "mean_std": members[best]["mean_std"]},
        "size_curve": size_curve(preds, params.ensemble.sizes, params.ensemble.size_repeats, params.seed),
        "diameter_baseline": _baseline(paths.artifacts),
        "diameter_baseline_folds": _baseline_folds(paths.artifacts, list(preds)),
        "selection_leak_folds": selection_leak_folds(params, folds),
    }
    if result["selection_leak_folds"]:
        warnings.warn(
            f"evaluate: test folds {result['selection_leak_folds']} were training/validation data of the search "
            f"(search.fold {params.search.fold}) that chose the member architectures: their figures are optimistic",
            stacklevel=2,
        )
    # flat headline numbers for `dvc metrics show`
    result["summary"] = {
        **{f"ensemble_{n}_mean": result["ensemble"]["mean_std"][n]["mean"] for n in METRIC_NAMES},
        **{f"ensemble_{n}_std": result["ensemble"]["mean_std"][n]["std"] for n in METRIC_NAMES},
        **{f"best_member_{n}_mean": members[best]["mean_std"][n]["mean"] for n in METRIC_NAMES},
    }
    out = Path(out_path or paths.artifacts.metrics)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(encoding="utf-8", data=json.dumps(result, indent=1, default=float) + "\n")
    plots = Path(plots_dir or paths.artifacts.plots)
    result["plots"] = [str(p) for p in write_plots(result, preds, plots)]
    return result


def write_plots(
    result: Mapping[str, Any], preds: Mapping[int, tuple[np.ndarray, np.ndarray]], out_dir: Path
) -> list[Path]:
    """``ensemble_size.png`` (F1 / AUC vs members), ``ensemble_folds.png`` (F1 per fold, members vs
    ensemble) and ``ensemble_roc.png`` (pooled ROC of the ensemble's mean probability)."""
    from naslung.plots import roc_png

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    fig = Figure(figsize=(4.8, 3.6))
    ax = fig.add_subplot()
    curve = result["size_curve"]
    ns = [int(n) for n in curve]
    for metric in ("f1", "auc", "accuracy"):
        ax.errorbar(
            ns,
            [curve[str(n)][f"{metric}_mean"] for n in ns],
            yerr=[curve[str(n)][f"{metric}_std"] for n in ns],
            marker="o",
            capsize=3,
            label=metric,
        )
    ax.set_xlabel("members in the ensemble (random subsets)")
    ax.set_ylabel("mean over test folds")
    ax.set_xticks(ns)
    ax.set_title("Ensemble size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "ensemble_size.png", dpi=110)
    paths.append(out_dir / "ensemble_size.png")

    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.add_subplot()
    folds = [str(f) for f in result["folds"]]
    x = np.arange(len(folds))
    for _name, m in result["members"].items():
        ax.plot(x, [m["per_fold"][f]["f1"] for f in folds], marker=".", alpha=0.5, lw=0.8, label=None)
    ax.plot(
        x, [result["ensemble"]["per_fold"][f]["f1"] for f in folds], marker="o", lw=2.2, color="k", label="ensemble"
    )
    ax.set_xticks(x, folds)
    ax.set_xlabel("test fold")
    ax.set_ylabel("F1")
    ax.set_title(f"F1 per test fold ({result['n_members']} members in grey)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "ensemble_folds.png", dpi=110)
    paths.append(out_dir / "ensemble_folds.png")

    y_all = np.concatenate([y for y, _ in preds.values()])
    p_all = np.concatenate([p.mean(axis=1) for _, p in preds.values()])
    paths.append(roc_png(y_all, p_all, out_dir / "ensemble_roc.png", "ROC, ensemble mean probability (pooled folds)"))
    return paths


def table_markdown(result: Mapping[str, Any]) -> str:
    """Markdown table: mean ± std per metric for every member, the best member and the ensemble."""
    head = "| model | " + " | ".join(METRIC_NAMES) + " |\n|---|" + "---|" * len(METRIC_NAMES)
    rows = [head]

    def line(name: str, ms: Mapping[str, Mapping[str, float]]) -> str:
        return f"| {name} | " + " | ".join(f"{ms[n]['mean']:.3f} ± {ms[n]['std']:.3f}" for n in METRIC_NAMES) + " |"

    for name, m in result["members"].items():
        rows.append(line(name, m["mean_std"]))
    rows.append(line("**ensemble**", result["ensemble"]["mean_std"]))
    return "\n".join(rows)
