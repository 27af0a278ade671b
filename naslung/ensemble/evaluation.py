"""Evaluation of the ensemble and of every member over the test folds (paper Tables 1/5 and Fig. 7), beside
the two baselines of :mod:`naslung.baselines` on the same test folds.

Inputs are the cached test-fold predictions of the members (see :mod:`naslung.ensemble.training`): for
test fold ``k`` every member was trained without fold ``k`` and scored on it once. The ensemble of fold
``k`` combines those member probabilities with the majority rule of
:func:`naslung.ensemble.model.majority_label` (label) and their mean (continuous score, used for AUC).
Metrics come from :func:`naslung.metrics.binary_metrics` (scikit-learn). The diameter-only and
voxel-statistics baselines of fold ``k`` are fitted on every other fold of the patch store (the members'
training and validation folds) and scored on fold ``k``'s rows, in the members' row order.

Outputs (``<paths.artifacts>``):

* ``metrics_detail.json`` — everything: per-fold and mean ± sample std (std ``nan`` with one fold: no
  spread was measured) of accuracy, sensitivity, specificity, F1 and AUC for each member and for the
  ensemble, the ensemble-size curve, the best single member, the baselines per fold, ``comparison``
  (:func:`naslung.baselines.compare_with_baselines`, pooled over the test folds and per fold: stratified
  bootstrap 95 % intervals, exact McNemar and paired-bootstrap AUC tests, ensemble vs each baseline), the
  selection provenance and its leak flags, and ``summary`` (= the headline);
* ``metrics.json`` — the headline only (:func:`headline`: <= 30 flat numbers for ``dvc metrics show/diff``);
* PNG plots under ``plots/`` (:func:`write_plots`).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from naslung.artifact_paths import ArtifactPaths
from naslung.baselines import (
    BASELINE_NAMES,
    BaselinePrediction,
    compare_folds,
    comparison_metrics,
    pooled,
)
from naslung.baselines import comparison_text as _comparison_text
from naslung.baselines import fold_baselines as _fold_baselines
from naslung.ensemble.model import majority_label
from naslung.ensemble.training import MemberRecord, read_index
from naslung.metrics import METRIC_NAMES, binary_metrics
from naslung.params import Params
from naslung.tracker import Tracker

N_BOOT = 2000
"""Bootstrap resamples of every interval and paired test (keyword default of :func:`evaluate_ensemble`)."""
LEVEL = 0.95
"""Level of the bootstrap intervals."""


def ensemble_metrics(y: np.ndarray, member_probs: np.ndarray) -> dict[str, float]:
    """Metrics of the majority-vote label (threshold-based metrics) and of the mean probability (AUC).

    ``member_probs`` is (n, k); ``y`` (n,) in {0, 1}.
    """
    _, label = majority_label(member_probs)
    m = binary_metrics(y, label.astype(np.float64))
    m["auc"] = binary_metrics(y, np.asarray(member_probs).mean(axis=1))["auc"]
    return m


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (ddof=1) and count of the finite values; the std is nan for one value
    (no spread was measured) and both are nan when there is none."""
    a = np.asarray([v for v in values if not math.isnan(float(v))], dtype=float)
    if a.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else math.nan, "n": int(a.size)}


def _summary(per_fold: Mapping[int, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    return {name: mean_std([m[name] for m in per_fold.values()]) for name in METRIC_NAMES}


def fold_predictions(
    records: Sequence[MemberRecord], folds: Sequence[int], names: Sequence[str]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per test fold: (y (n,), member_probs (n, k)) with member columns in ``names`` order.

    Raises when a member is missing for a fold or members disagree on the test rows.
    """
    return {f: (y, p) for f, (_, y, p) in fold_rows(records, folds, names).items()}


def fold_rows(
    records: Sequence[MemberRecord], folds: Sequence[int], names: Sequence[str]
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per test fold: (ids (n,) str, y (n,), member_probs (n, k)); see :func:`fold_predictions`."""
    by_key = {(r.name, r.fold): r for r in records}
    out: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
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
        assert ref_y is not None and ref_ids is not None
        out[fold] = (ref_ids, ref_y, np.stack(cols, axis=1))
    return out


def size_curve(
    preds: Mapping[int, tuple[np.ndarray, np.ndarray]], sizes: Sequence[int], repeats: int, seed: int
) -> dict[str, dict[str, float]]:
    """Ensemble-size curve: for each n, ``repeats`` random member subsets of size n (seeded); for each
    subset the fold-mean metric; reported as mean and std over the subsets (``n_subsets`` of them; with
    n = k every subset is the whole ensemble, so the std is 0). Sizes above k are skipped."""
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
            a = np.asarray([v for v in per_subset[name] if not math.isnan(v)], dtype=float)
            curve[str(n)][f"{name}_mean"] = float(a.mean()) if a.size else math.nan
            curve[str(n)][f"{name}_std"] = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return curve


# --- where the member architectures came from -----------------------------------------------------------


@dataclass(frozen=True)
class SelectionProvenance:
    """Where the member architectures came from and which evaluated test folds that makes optimistic.

    ``origin``: ``search`` (the search's selection, ``ensemble.specs`` empty), ``specs:search`` /
    ``specs:external`` / ``specs:unknown`` (explicit ``ensemble.specs`` with ``ensemble.specs_origin``).
    ``leak_folds``: evaluated folds the choosing search trained or validated on; ``unknown_folds``: evaluated
    folds whose independence from the choice cannot be told (provenance unknown); ``reason``: one sentence.
    """

    origin: str
    search_fold: int | None
    search_id: str | None
    leak_folds: list[int] = field(default_factory=list)
    unknown_folds: list[int] = field(default_factory=list)
    reason: str = ""

    @property
    def flagged_folds(self) -> list[int]:
        """Every evaluated fold whose figures may be optimistic (seen by the search or unknown)."""
        return sorted(set(self.leak_folds) | set(self.unknown_folds))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flagged_folds": self.flagged_folds}


def selection_provenance(params: Params, folds: Sequence[int]) -> SelectionProvenance:
    """The leak flags of the evaluated ``folds``.

    * ``ensemble.specs`` empty: the members come from the search's selection, which held out only
      ``search.fold``; every other evaluated fold was among its training/validation folds.
    * explicit specs, ``ensemble.specs_origin: search``: the same rule with ``ensemble.specs_search_fold``
      (unset: provenance unknown);
    * ``external`` (chosen without this data, e.g. the paper's models): nothing to flag;
    * ``unknown``: every evaluated fold is flagged as "provenance unknown".
    """
    fs = [int(f) for f in folds]
    e = params.ensemble
    if not e.specs:
        sf = int(params.search.fold)
        return SelectionProvenance(
            "search",
            sf,
            None,
            leak_folds=[f for f in fs if f != sf],
            reason=f"members chosen by the architecture search, which held out test fold {sf} only",
        )
    origin = str(e.specs_origin)
    if origin == "external":
        return SelectionProvenance(
            "specs:external", None, None, reason="explicit ensemble.specs chosen without this data (external)"
        )
    if origin == "search" and e.specs_search_fold is not None:
        sf = int(e.specs_search_fold)
        return SelectionProvenance(
            "specs:search",
            sf,
            e.specs_search_id,
            leak_folds=[f for f in fs if f != sf],
            reason=f"explicit ensemble.specs from search {e.specs_search_id or '(id not given)'}, which held out "
            f"test fold {sf} only",
        )
    why = (
        "ensemble.specs_origin is search but ensemble.specs_search_fold is not set"
        if origin == "search"
        else "explicit ensemble.specs of unknown origin (ensemble.specs_origin: unknown)"
    )
    return SelectionProvenance(
        f"specs:{origin}", None, e.specs_search_id, unknown_folds=fs, reason=f"provenance unknown: {why}"
    )


def selection_leak_folds(params: Params, folds: Sequence[int]) -> list[int]:
    """Test folds whose figures are optimistic because the search that chose the members saw them (see
    :func:`selection_provenance`; folds of unknown provenance are its ``unknown_folds``, not listed here)."""
    return selection_provenance(params, folds).leak_folds


# --- baselines on the same test folds -------------------------------------------------------------------


def fold_baselines(
    params: Params, ids_by_fold: Mapping[int, np.ndarray]
) -> dict[int, dict[str, BaselinePrediction]] | None:
    """Both baselines for each test fold ``k`` (:func:`naslung.baselines.fold_baselines` on the patch store of
    ``paths.artifacts``: fitted on every other fold, scored on fold ``k``, in the members' row order
    ``ids_by_fold[k]``). None (with a warning) when the patch store cannot be opened or does not hold the
    members' test rows (it changed since they were scored)."""
    from naslung.data.store import PatchStore, StoreError

    try:
        store = PatchStore.open(params.paths.artifacts)
    except StoreError as exc:
        warnings.warn(f"evaluate: no baselines ({exc})", stacklevel=2)
        return None
    hu = (float(params.prepare.hu_window[0]), float(params.prepare.hu_window[1]))
    try:
        return _fold_baselines(store.manifest, store.patches, ids_by_fold, hu_window=hu)
    except ValueError as exc:  # e.g. the patch store changed since the members were scored
        warnings.warn(f"evaluate: no baselines ({exc})", stacklevel=2)
        return None


def _comparisons(
    rows: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
    bases: Mapping[int, Mapping[str, BaselinePrediction]] | None,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """``{"pooled": report, "per_fold": {fold: report}, ...}`` of the ensemble (vote label, mean score)."""
    scored = {f: (y, p.mean(axis=1), majority_label(p)[1]) for f, (_, y, p) in rows.items()}
    return compare_folds(scored, bases, n_boot=n_boot, seed=seed, level=LEVEL)


def _finite(x: Any) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def headline(result: Mapping[str, Any]) -> dict[str, float | int | None]:
    """The <= 30 flat figures of ``metrics.json`` (non-finite values are null):

    ``n_test``, ``n_folds``, ``n_members``; the ensemble's pooled accuracy, sensitivity, specificity, F1 and
    AUC over the evaluated test folds, each with its bootstrap interval (``_low``/``_high``); each baseline's
    pooled accuracy and AUC on the same rows; the p-values of ensemble vs baseline (``p_accuracy_vs_*``:
    exact McNemar; ``p_auc_vs_*``: paired bootstrap); the best member's fold-mean F1 and AUC; the number of
    evaluated folds flagged by the selection provenance.
    """
    comp = result["comparison"]["pooled"]
    out: dict[str, float | int | None] = {
        "n_test": int(comp["n"]),
        "n_folds": len(result["folds"]),
        "n_members": int(result["n_members"]),
    }
    for name in METRIC_NAMES:
        iv = comp["model"][name]
        out[f"ensemble_{name}"] = _finite(iv["estimate"])
        out[f"ensemble_{name}_low"] = _finite(iv["low"])
        out[f"ensemble_{name}_high"] = _finite(iv["high"])
    for b in BASELINE_NAMES:
        if b in comp["baselines"]:
            out[f"{b}_accuracy"] = _finite(comp["baselines"][b]["accuracy"]["estimate"])
            out[f"{b}_auc"] = _finite(comp["baselines"][b]["auc"]["estimate"])
    for b in BASELINE_NAMES:
        if b in comp["tests"]:
            out[f"p_accuracy_vs_{b}"] = _finite(comp["tests"][b]["accuracy_mcnemar"]["p_value"])
            out[f"p_auc_vs_{b}"] = _finite(comp["tests"][b]["auc_paired_bootstrap"]["p_value"])
    best = result["best_member"]["mean_std"]
    out["best_member_f1"] = _finite(best["f1"]["mean"])
    out["best_member_auc"] = _finite(best["auc"]["mean"])
    out["n_flagged_folds"] = len(result["selection_provenance"]["flagged_folds"])
    return out


def read_metrics_detail(params: Params) -> dict[str, Any]:
    """The whole evaluation (``metrics_detail.json``) of ``params.paths.artifacts``; FileNotFoundError with
    the command to run when absent."""
    path = ArtifactPaths.from_params(params).artifacts.metrics_detail
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run `naslung evaluate` first)")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def evaluate_ensemble(
    params: Params,
    out_path: str | Path | None = None,
    plots_dir: str | Path | None = None,
    *,
    detail_path: str | Path | None = None,
    tracker: Tracker | None = None,
    n_boot: int = N_BOOT,
) -> dict[str, Any]:
    """Evaluate members, ensemble and both baselines over ``params.ensemble.folds``; write the headline
    ``metrics.json`` (``out_path``), ``metrics_detail.json`` (``detail_path``, default beside it) and plots.

    With a ``tracker`` the evaluation is an ``evaluate`` run of experiment ``ensemble.experiment``: the
    headline as metrics (the baselines' figures, intervals and p-values among them), the detail as
    ``metrics_detail.json`` and the plots as artifacts. Returns the detail dict (``result["summary"]`` is the
    headline).
    """
    paths = ArtifactPaths.from_params(params)
    index, records = read_index(params)
    folds = [int(f) for f in params.ensemble.folds]
    names = list(dict.fromkeys(r.name for r in records if r.fold == index["deploy_fold"]))
    rows = fold_rows(records, folds, names)
    preds = {f: (y, p) for f, (_, y, p) in rows.items()}
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
    bases = fold_baselines(params, {f: ids for f, (ids, _, _) in rows.items()})
    prov = selection_provenance(params, folds)
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
        "baselines": {
            "protocol": "fold k: fitted on every other fold of the patch store, scored on fold k's rows "
            "(naslung.baselines: diameter threshold rule / logistic regression on 12 voxel statistics)",
            "per_fold": {
                str(f): {
                    name: {
                        **binary_metrics(preds[f][0], b.label.astype(np.float64)),
                        "auc": binary_metrics(preds[f][0], b.score)["auc"],
                        "n_train": b.n_train,
                        "rule": b.detail,
                    }
                    for name, b in fb.items()
                }
                for f, fb in (bases or {}).items()
            },
        },
        "comparison": _comparisons(rows, bases, n_boot, params.seed),
        "selection_provenance": prov.as_dict(),
        "selection_leak_folds": prov.leak_folds,
        "provenance_unknown_folds": prov.unknown_folds,
    }
    if prov.flagged_folds:
        warnings.warn(
            f"evaluate: test folds {prov.flagged_folds} may be optimistic ({prov.reason})",
            stacklevel=2,
        )
    result["summary"] = headline(result)
    out = Path(out_path or paths.artifacts.metrics)
    detail = Path(detail_path or out.with_name(paths.artifacts.metrics_detail.name))
    out.parent.mkdir(parents=True, exist_ok=True)
    detail.parent.mkdir(parents=True, exist_ok=True)
    detail.write_text(encoding="utf-8", data=json.dumps(result, indent=1, default=float) + "\n")
    out.write_text(encoding="utf-8", data=json.dumps(result["summary"], indent=1) + "\n")
    plots = Path(plots_dir or paths.artifacts.plots)
    result["plots"] = [str(p) for p in write_plots(result, preds, plots, bases)]
    if tracker is not None:
        _log_evaluation(tracker, params, result, detail)
    return result


def _log_evaluation(tracker: Tracker, params: Params, result: Mapping[str, Any], detail: Path) -> None:
    """The ``evaluate`` run: headline metrics, per-fold comparison metrics, the detail file and the plots."""
    tracker.configure(params.mlflow_uri, params.ensemble.experiment, params.paths.mlflow_artifacts)
    prov = result["selection_provenance"]
    run = tracker.training_run(
        f"evaluate-{params.registry.name}",
        {
            "folds": result["folds"],
            "members": result["member_names"],
            "n_boot": result["comparison"]["n_boot"],
            "selection_origin": prov["origin"],
            "flagged_folds": prov["flagged_folds"],
        },
        {"naslung.kind": "evaluate", "naslung.data_hash": str(result["data_hash"])},
    )
    with run:
        tracker.log_metrics({k: float(v) for k, v in result["summary"].items() if v is not None})
        tracker.log_metrics(comparison_metrics(result["comparison"], "ensemble"))
        tracker.log_artifact(detail)
        for p in result.get("plots", []):
            tracker.log_artifact(p, "plots")


# --- plots ----------------------------------------------------------------------------------------------


def write_plots(
    result: Mapping[str, Any],
    preds: Mapping[int, tuple[np.ndarray, np.ndarray]],
    out_dir: Path,
    bases: Mapping[int, Mapping[str, BaselinePrediction]] | None = None,
) -> list[Path]:
    """``ensemble_size.png`` (F1 / AUC / accuracy vs members, error bars = 1 s.d. over the random member
    subsets), ``ensemble_folds.png`` (F1 per test fold: every member, the ensemble and the baselines as
    grouped bars, one group per fold) and ``ensemble_roc.png`` (pooled ROC of the ensemble's mean
    probability and of both baselines on the same rows)."""
    from naslung.plots import fold_bars_png, roc_png, size_curve_png

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    paths.append(
        size_curve_png(
            result["size_curve"],
            out_dir / "ensemble_size.png",
            n_folds=len(result["folds"]),
        )
    )
    folds = [str(f) for f in result["folds"]]
    groups: dict[str, list[float]] = {
        name: [m["per_fold"][f]["f1"] for f in folds] for name, m in result["members"].items()
    }
    groups["ensemble"] = [result["ensemble"]["per_fold"][f]["f1"] for f in folds]
    base_f1 = result.get("baselines", {}).get("per_fold", {})
    for b in BASELINE_NAMES:
        if all(b in base_f1.get(f, {}) for f in folds) and base_f1:
            groups[f"baseline: {b}"] = [base_f1[f][b]["f1"] for f in folds]
    n_test = result["ensemble"].get("n_test", {})
    paths.append(
        fold_bars_png(
            groups,
            [f"fold {f}" + (f"\n(n={n_test[f]})" if f in n_test else "") for f in folds],
            out_dir / "ensemble_folds.png",
            metric="F1",
            title=f"F1 per test fold: {result['n_members']} members, ensemble, baselines",
        )
    )
    y_all = np.concatenate([y for y, _ in preds.values()])
    curves = {"ensemble (mean probability)": np.concatenate([p.mean(axis=1) for _, p in preds.values()])}
    if bases:
        pb = pooled(bases)
        for b in BASELINE_NAMES:
            if b in pb:
                curves[f"baseline: {b}"] = pb[b].score
    paths.append(
        roc_png(
            y_all,
            curves,
            out_dir / "ensemble_roc.png",
            (
                f"ROC, test fold {result['folds'][0]} (n={y_all.size})"
                if len(result["folds"]) == 1
                else f"ROC, pooled test folds {result['folds']} (n={y_all.size})"
            ),
        )
    )
    return paths


# --- tables ---------------------------------------------------------------------------------------------


def _cell(ms: Mapping[str, Any], several: bool = True) -> str:
    """``0.800 ± 0.055`` over several folds, ``0.800`` when there is no measured spread (one fold)."""
    std = ms.get("std", math.nan)
    if not several or std is None or (isinstance(std, float) and math.isnan(std)) or ms.get("n", 2) < 2:
        return f"{float(ms['mean']):.3f}"
    return f"{float(ms['mean']):.3f} ± {float(std):.3f}"


def p_text(p: float, n_boot: int | None = None, eq: bool = False) -> str:
    """A p-value for reading: ``0.0123``; a bootstrap p of 0 reads ``< 1/n_boot`` (the resolution)."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "=n/a" if eq else "n/a"
    if n_boot and float(p) == 0.0:
        return f"<{1.0 / n_boot:.2g}"
    return f"={float(p):.3g}" if eq else f"{float(p):.3g}"


def comparison_markdown(comparison: Mapping[str, Any], label: str = "ensemble") -> str:
    """Markdown table of the pooled comparison: accuracy / sensitivity / specificity / F1 / AUC with 95 %
    bootstrap intervals for the model and each baseline, and the paired tests against each baseline."""
    rep = comparison["pooled"]

    def iv(d: Mapping[str, Any]) -> str:
        return f"{d['estimate']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"

    lines = [
        "| scorer | " + " | ".join(METRIC_NAMES) + " | McNemar p (accuracy) | AUC diff. [95 % CI], bootstrap p |",
        "|---|" + "---|" * (len(METRIC_NAMES) + 2),
        f"| **{label}** | " + " | ".join(iv(rep["model"][n]) for n in METRIC_NAMES) + " | | |",
    ]
    for b, ivs in rep["baselines"].items():
        t = rep["tests"][b]
        a = t["auc_paired_bootstrap"]
        lines.append(
            f"| baseline: {b} | "
            + " | ".join(iv(ivs[n]) for n in METRIC_NAMES)
            + f" | {p_text(t['accuracy_mcnemar']['p_value'])} | {a['difference']:+.3f} "
            f"[{a['low']:+.3f}, {a['high']:+.3f}], p{p_text(a['p_value'], a['n_boot'], eq=True)} |"
        )
    return "\n".join(lines)


def per_fold_markdown(comparison: Mapping[str, Any], label: str = "ensemble") -> str:
    """Markdown table, one row per test fold: accuracy / AUC with 95 % intervals of the model and each
    baseline, and the McNemar / paired-bootstrap p-values against each baseline."""

    def cell(ivs: Mapping[str, Any]) -> str:
        a, u = ivs["accuracy"], ivs["auc"]
        return (
            f"{a['estimate']:.3f} [{a['low']:.3f}, {a['high']:.3f}] / "
            f"{u['estimate']:.3f} [{u['low']:.3f}, {u['high']:.3f}]"
        )

    names = list(BASELINE_NAMES)
    lines = [
        f"| fold | n | {label} | "
        + " | ".join(names)
        + " | "
        + " | ".join(f"p vs {b} (acc / AUC)" for b in names)
        + " |",
        "|---|---|---|" + "---|" * (2 * len(names)),
    ]
    for f, r in comparison["per_fold"].items():
        bcells = [cell(r["baselines"][b]) if b in r["baselines"] else "" for b in names]
        pcells = []
        for b in names:
            t = r["tests"].get(b)
            pcells.append(
                ""
                if t is None
                else f"{p_text(t['accuracy_mcnemar']['p_value'])} / "
                f"{p_text(t['auc_paired_bootstrap']['p_value'], t['auc_paired_bootstrap']['n_boot'])}"
            )
        lines.append(f"| {f} | {r['n']} | {cell(r['model'])} | " + " | ".join(bcells + pcells) + " |")
    return "\n".join(lines)


def table_markdown(result: Mapping[str, Any]) -> str:
    """Markdown: mean ± std (sample std over the test folds; the bare value when one fold gives no spread)
    per metric for every member and the ensemble; then, when ``result`` carries a ``comparison``, the
    ensemble and both baselines pooled over the test folds with 95 % bootstrap intervals and paired tests."""
    head = "| model | " + " | ".join(METRIC_NAMES) + " |\n|---|" + "---|" * len(METRIC_NAMES)
    rows = [head]

    several = len(result.get("folds", [0, 1])) > 1

    def line(name: str, ms: Mapping[str, Mapping[str, Any]]) -> str:
        return f"| {name} | " + " | ".join(_cell(ms[n], several) for n in METRIC_NAMES) + " |"

    for name, m in result["members"].items():
        rows.append(line(name, m["mean_std"]))
    rows.append(line("**ensemble**", result["ensemble"]["mean_std"]))
    text = "\n".join(rows)
    if result.get("comparison"):
        folds = result.get("folds", [])
        rep = result["comparison"]["pooled"]
        text += (
            f"\n\nPooled over test folds {folds} (n={rep['n']}, {rep['n_malignant']} malignant), "
            f"{int(round(100 * result['comparison']['level']))} % stratified bootstrap intervals "
            f"({result['comparison']['n_boot']} resamples); baselines fitted without each test fold:\n\n"
            + comparison_markdown(result["comparison"])
        )
        if len(result["comparison"].get("per_fold", {})) > 1:
            text += "\n\nPer test fold (accuracy / AUC, 95 % intervals; p: McNemar / paired bootstrap):\n\n"
            text += per_fold_markdown(result["comparison"])
    return text


def comparison_text(result: Mapping[str, Any]) -> str:
    """Plain-text lines for a terminal: pooled, then per fold (:func:`naslung.baselines.comparison_text`)."""
    return _comparison_text(result["comparison"], result["folds"], "ensemble")
