"""End-to-end training of one spec on one split: split -> fit -> test once -> latency -> plots -> log.

:func:`run_training` is what ``naslung train`` runs; :func:`run_cv` repeats it for several test folds
(``naslung cv``) and summarises fold-wise and mean ± std test metrics; :func:`compare_heads` trains a spec
with a linear softmax head and with A-Softmax and compares their penultimate features (``naslung
features``, the paper's Table 4). Runs are logged through the ``tracker`` passed in
(:class:`naslung.tracker.Tracker`, e.g. :class:`naslung.tracking.MlflowTracker`); ``None`` means
:class:`~naslung.tracker.NullTracker`, which records nothing. The cv parent run logs the whole effective
configuration flattened (``train.lr``, ...).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from naslung.artifact_paths import ArtifactsDir
from naslung.baselines import compare_folds, comparison_metrics, fold_baselines
from naslung.data.baseline import diameter_baseline_folds
from naslung.features import davies_bouldin, table_markdown, tsne_embedding
from naslung.latency import measure_batches
from naslung.metrics import METRIC_NAMES
from naslung.models.complexity import count_params
from naslung.models.factory import AnySpec, spec_flops, spec_summary
from naslung.models.spec import ArchSpec
from naslung.params import Params, to_dict
from naslung.plots import confusion_png, curves_png, roc_png, tsne_png
from naslung.tracker import NULL_TRACKER, Tracker, flat_config
from naslung.train.loop import FitResult, extract_features, fit, predict_proba, resolve_device
from naslung.train.protocol import EvalResult, FoldSplit, make_split, open_split


@dataclass
class TrainingOutcome:
    """Everything one training run produced (the model carries the best-on-validation weights)."""

    spec: AnySpec
    split: FoldSplit
    fit: FitResult
    test: EvalResult
    latency: dict[int, dict[str, Any]]
    n_params: int
    flops: int
    run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-safe summary: spec, split, best epoch, val/test metrics, latency, size."""
        return {
            "spec": self.spec.to_dict(),
            "spec_id": self.spec.spec_id,
            "split": dataclasses.asdict(self.split),
            "best_epoch": self.fit.best_epoch,
            "epochs_run": len(self.fit.history),
            "val": self.fit.val_metrics,
            "test": self.test.metrics,
            "latency_ms_per_nodule": {str(b): v["ms_per_nodule"] for b, v in self.latency.items()},
            "n_params": self.n_params,
            "flops": self.flops,
            "run_id": self.run_id,
        }


def resolve_spec(
    spec: str | ArchSpec, head: str | None = None, cbam: bool | None = None, block: str | None = None
) -> ArchSpec:
    """ArchSpec from a spec string (reference or bare list form); ``head``/``cbam``/``block`` override its
    flags and residual-block variant (``"paper"`` | ``"reference"``)."""
    s = spec if isinstance(spec, ArchSpec) else ArchSpec.parse(spec)
    changes: dict[str, Any] = {}
    if head is not None:
        changes["head"] = head
    if cbam is not None:
        changes["cbam"] = cbam
    if block is not None:
        changes["block"] = block
    return dataclasses.replace(s, **changes) if changes else s


def default_spec(
    params: Params, head: str | None = None, cbam: bool | None = None, block: str | None = None
) -> ArchSpec:
    """The spec of ``params.model`` (string + flags; ``model.block`` unless the string has a ``ref-`` marker),
    with optional overrides."""
    parsed = ArchSpec.parse(params.model.spec, cbam=params.model.cbam, head=params.model.head, block=params.model.block)
    return resolve_spec(parsed, head=head, cbam=cbam, block=block)


def _open_store(params: Params, artifacts: str | Path | None) -> Any:
    from naslung.data.store import PatchStore

    return PatchStore.open(Path(artifacts or params.paths.artifacts))


def _run_params(params: Params, spec: AnySpec, split: FoldSplit, seed: int, epochs: int, device: str) -> dict[str, Any]:
    return {
        "spec": spec.ref_string(),
        "spec_id": spec.spec_id,
        **spec_summary(spec),
        "loss": "asoftmax" if spec.head == "asoftmax" else "softmax",
        "cbam": spec.cbam,
        "fold": split.test_fold,
        "val_folds": list(split.val_folds),
        "train_folds": list(split.train_folds),
        "seed": seed,
        "epochs_max": epochs,
        "device": device,
        "threads": torch.get_num_threads(),
        **{f"train.{k}": v for k, v in to_dict(params.train).items() if k not in ("epochs", "test_folds", "device")},
        **{f"model.{k}": v for k, v in to_dict(params.model).items() if k not in ("spec", "cbam", "head")},
        "params_hash": params.section_hash("prepare", "model", "train"),
    }


def run_training(
    params: Params,
    spec: AnySpec,
    fold: int,
    *,
    epochs: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    artifacts: str | Path | None = None,
    tracker: Tracker | None = None,
    want_features: bool = False,
    progress: bool = True,
    parent_run_id: str | None = None,
    store: Any = None,
    known_latency: Mapping[int, Mapping[str, Any]] | None = None,
    fitted: FitResult | None = None,
) -> TrainingOutcome:
    """Train ``spec`` with test fold ``fold`` held out; evaluate the test fold once; log the run.

    ``spec`` is an ``ArchSpec`` or a DNAS-derived ``DnasArch`` (see :mod:`naslung.models.factory`).

    ``device`` defaults to ``params.train.device`` (``auto`` = CUDA when available). ``epochs`` defaults to
    ``params.train.epochs``; ``seed`` to ``params.seed``. With ``want_features`` the penultimate features
    of the test fold are returned in ``outcome.test.features`` (extracted in the same single touch).
    ``known_latency``: earlier latency measurements of this architecture by batch size (the search's), reused
    when taken with the same settings (:func:`naslung.latency.measure_batches`).
    ``fitted``: the fit of this spec on this split already made (the same ``fit`` call, e.g. by
    :func:`naslung.train.concurrent.fit_many` with other members); its history is logged epoch by epoch
    into the run instead of training here.
    """
    store = store if store is not None else _open_store(params, artifacts)
    dev_seed = params.seed if seed is None else seed
    n_epochs = params.train.epochs if epochs is None else epochs
    device = resolve_device(device or params.train.device)
    split = make_split(params.prepare.n_folds, fold, params.seed, params.train.val_folds)

    tracker = tracker or NULL_TRACKER
    tracker.configure(params.mlflow_uri, params.train.experiment, params.paths.mlflow_artifacts)
    run = tracker.training_run(
        f"{spec.spec_id}-{spec.head}{'-cbam' if spec.cbam else ''}-fold{fold}",
        _run_params(params, spec, split, dev_seed, n_epochs, device),
        {"naslung.spec_id": spec.spec_id, "naslung.fold": str(fold), "naslung.loss": spec.head},
        parent_run_id=parent_run_id,
    )
    dev, test = open_split(store, split)
    with test, run as run_id:  # the seal on the test rows is lifted on the way out, also when fit raises
        manifest = ArtifactsDir(Path(getattr(store, "root", Path(artifacts or params.paths.artifacts)))).manifest
        if manifest.exists():
            tracker.log_manifest_input(manifest, Path("dvc.lock"))
        tracker.log_dict(spec.to_dict(), "spec.json")
        if fitted is not None:
            result = fitted
            for row in result.history:
                tracker.log_epoch(row)
        else:
            result = fit(
                spec,
                dev.train,
                dev.val,
                params.model,
                params.train,
                epochs=n_epochs,
                seed=dev_seed,
                device=device,
                on_epoch=tracker.log_epoch,
                progress=progress,
            )
        model = result.model
        evaluated = test.evaluate(
            lambda X: predict_proba(model, X, device),
            (lambda X: extract_features(model, X, device)) if want_features else None,
        )
        latency = measure_batches(
            model, params.latency.batch_sizes, device, params.latency.warmup, params.latency.repeats, known_latency
        )
        outcome = TrainingOutcome(
            spec, split, result, evaluated, latency, int(count_params(model)), int(spec_flops(spec)), run_id
        )
        _log_outcome(tracker, outcome, params)
    return outcome


def _log_outcome(tracker: Tracker, out: TrainingOutcome, params: Params) -> None:
    tracker.log_metrics({"n_params": out.n_params, "flops": out.flops, "best_epoch": out.fit.best_epoch})
    tracker.log_metrics(out.fit.val_metrics, prefix="best_val_")
    tracker.log_metrics(out.test.metrics, prefix="test_")
    for b, lat in out.latency.items():
        tracker.log_metrics(
            {f"latency_ms_b{b}": lat["ms_per_nodule"], f"latency_iqr_over_median_b{b}": lat["iqr_over_median"]}
        )
    tracker.log_dict(out.fit.history, "history.json")
    tracker.log_dict({str(b): v for b, v in out.latency.items()}, "latency.json")
    with tempfile.TemporaryDirectory(prefix="naslung-plots-") as tmp:
        t = Path(tmp)
        title = f"{out.spec.spec_id} fold {out.split.test_fold}"
        pd.DataFrame({"id": list(out.test.ids), "y": out.test.y, "prob": out.test.prob}).to_csv(
            t / "test_predictions.csv", index=False
        )
        tracker.log_artifact(t / "test_predictions.csv")
        for p in (
            roc_png(out.test.y, out.test.prob, t / "roc.png", f"ROC test, {title}"),
            confusion_png(out.test.metrics, t / "confusion.png", f"test, {title}"),
            curves_png(out.fit.history, t / "curves.png", out.fit.best_epoch),
        ):
            tracker.log_artifact(p, "plots")
    tracker.log_model(out.fit.model.cpu(), out.spec, params.model.margin_m)
    out.fit.model.to(out.fit.device)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1) of the finite values; the std is nan for one value (no spread measured)."""
    a = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else math.nan


def run_cv(
    params: Params,
    spec: ArchSpec,
    folds: Sequence[int],
    *,
    epochs: int | None = None,
    device: str | None = None,
    artifacts: str | Path | None = None,
    tracker: Tracker | None = None,
    progress: bool = True,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """:func:`run_training` for each test fold; fold-wise and mean ± std (sample std; nan for one fold) test
    metrics, and the model beside the two baselines of :mod:`naslung.baselines` on the same test folds.

    Writes ``<artifacts>/cv_<spec_id>.json``; the fold runs are nested under a parent run that carries the
    flattened configuration, the mean/std metrics and the comparison's figures (pooled: ``model_*``,
    ``diameter_*``, ``voxel_stats_*`` with ``_low``/``_high`` bootstrap bounds, ``p_accuracy_vs_*``
    (McNemar), ``p_auc_vs_*`` (paired bootstrap); per fold the same with prefix ``fold<k>_``). The baselines
    of test fold k are fitted on every other fold (the model's training and validation folds) and scored on
    fold k's rows in the model's row order; ``comparison`` holds the intervals (``n_boot`` stratified
    resamples, 95 %) and paired tests, pooled over the test folds and per fold. The all-data diameter
    baseline of ``prepare_metrics.json`` is kept as ``prepare_metrics_baseline`` for reference only.
    """
    root = Path(artifacts or params.paths.artifacts)
    store = _open_store(params, root)
    rows: list[dict[str, Any]] = []
    tests: dict[int, EvalResult] = {}
    tracker = tracker or NULL_TRACKER
    tracker.configure(params.mlflow_uri, params.train.experiment, params.paths.mlflow_artifacts)
    parent = tracker.training_run(
        f"cv-{spec.spec_id}-{spec.head}{'-cbam' if spec.cbam else ''}",
        {
            **flat_config(to_dict(params)),
            "spec": spec.ref_string(),
            "spec_id": spec.spec_id,
            "folds": list(folds),
            "loss": spec.head,
            "cbam": spec.cbam,
        },
        {"naslung.spec_id": spec.spec_id, "naslung.kind": "cv"},
    )
    with parent as parent_id:
        for fold in folds:
            out = run_training(
                params,
                spec,
                fold,
                epochs=epochs,
                device=device,
                artifacts=root,
                tracker=tracker,
                progress=progress,
                parent_run_id=parent_id,
                store=store,
            )
            rows.append({"fold": fold, **out.summary()})
            tests[int(fold)] = out.test
            if progress:  # one line per finished fold, so a long cross-validation shows where it stands
                t = out.test.metrics
                print(
                    f"fold {fold}: test accuracy {t['accuracy']:.3f}, sensitivity {t['sensitivity']:.3f}, "
                    f"specificity {t['specificity']:.3f}, F1 {t['f1']:.3f}, AUC {t['auc']:.3f} "
                    f"(best epoch {out.fit.best_epoch})",
                    flush=True,
                )
        summary: dict[str, Any] = {
            "spec": spec.to_dict(),
            "spec_id": spec.spec_id,
            "ref": spec.ref_string(),
            "folds": rows,
        }
        agg = {}
        for name in METRIC_NAMES:
            mean, std = _mean_std([r["test"][name] for r in rows])
            agg[name] = {"mean": mean, "std": std}
        summary["test_mean_std"] = agg
        pm = ArtifactsDir(root).prepare_metrics
        if pm.exists():
            summary["prepare_metrics_baseline"] = json.loads(pm.read_text(encoding="utf-8")).get("diameter_baseline")
        # The fair comparison: threshold fitted on the non-test folds, scored on the same test folds.
        summary["diameter_baseline_folds"] = diameter_baseline_folds(store.manifest, list(folds))
        summary["comparison"] = _cv_comparison(params, store, tests, n_boot)
        tracker.log_metrics({f"test_{k}_mean": v["mean"] for k, v in agg.items()})
        tracker.log_metrics({f"test_{k}_std": v["std"] for k, v in agg.items()})
        tracker.log_metrics(comparison_metrics(summary["comparison"], "model"))
        tracker.log_dict(summary, "cv.json")
    root.mkdir(parents=True, exist_ok=True)
    (root / f"cv_{spec.spec_id}.json").write_text(encoding="utf-8", data=json.dumps(summary, indent=1, default=float))
    return summary


def _cv_comparison(params: Params, store: Any, tests: dict[int, EvalResult], n_boot: int) -> dict[str, Any]:
    """The model (decision ``prob >= 0.5``, score ``prob``) beside both baselines on each test fold's rows."""
    hu = (float(params.prepare.hu_window[0]), float(params.prepare.hu_window[1]))
    ids = {f: np.asarray(t.ids).astype(str) for f, t in tests.items()}
    bases = fold_baselines(store.manifest, store.patches, ids, hu_window=hu)
    scored = {
        f: (np.asarray(t.y), np.asarray(t.prob, np.float64), (np.asarray(t.prob) >= 0.5).astype(np.int64))
        for f, t in tests.items()
    }
    return compare_folds(scored, bases, n_boot=n_boot, seed=params.seed)


def cv_table(summary: dict[str, Any]) -> str:
    """Plain-text table of fold-wise test metrics, a mean ± std line (mean only for one fold: no spread was
    measured) and, when the summary has a ``comparison``, the pooled figures with 95 % bootstrap intervals
    beside both baselines and the paired tests (per fold too when there are several)."""
    from naslung.baselines import comparison_text

    head = f"{'fold':>4} " + " ".join(f"{n:>11}" for n in METRIC_NAMES) + f" {'best_ep':>7}"
    lines = [head]
    for r in summary["folds"]:
        lines.append(
            f"{r['fold']:>4} " + " ".join(f"{r['test'][n]:>11.3f}" for n in METRIC_NAMES) + f" {r['best_epoch']:>7}"
        )
    agg = summary["test_mean_std"]

    def cell(ms: dict[str, float]) -> str:
        std = ms.get("std", math.nan)
        return f"{ms['mean']:>11.3f}" if std is None or math.isnan(std) else f"{ms['mean']:>5.3f}±{std:<5.3f}"

    lines.append(f"{'mean':>4} " + " ".join(cell(agg[n]) for n in METRIC_NAMES))
    if summary.get("comparison"):
        lines.append("")
        lines.append(comparison_text(summary["comparison"], [r["fold"] for r in summary["folds"]], "model"))
    return "\n".join(lines)


def compare_heads(
    params: Params,
    spec: ArchSpec,
    fold: int,
    *,
    epochs: int | None = None,
    device: str | None = None,
    artifacts: str | Path | None = None,
    out_dir: str | Path | None = None,
    tracker: Tracker | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``spec`` with a linear softmax head and with A-Softmax; DBI + t-SNE of test-fold features.

    Writes ``features_<spec_id>_fold<k>.json``, ``.md`` (Table-4 analogue) and ``tsne_...png`` into
    ``out_dir`` (default: the artifacts folder) and returns the table rows.
    """
    root = Path(artifacts or params.paths.artifacts)
    out = Path(out_dir or root)
    store = _open_store(params, root)
    rows: dict[str, dict[str, float]] = {}
    panels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for head, label in (("linear", "softmax"), ("asoftmax", "A-Softmax")):
        s = dataclasses.replace(spec, head=head)
        res = run_training(
            params,
            s,
            fold,
            epochs=epochs,
            device=device,
            artifacts=root,
            tracker=tracker,
            want_features=True,
            progress=progress,
            store=store,
        )
        feats = res.test.features
        assert feats is not None
        rows[label] = {
            **davies_bouldin(feats, res.test.y),
            "test_f1": res.test.metrics["f1"],
            "test_auc": res.test.metrics["auc"],
            "run_id": res.run_id,  # type: ignore[dict-item]
        }
        panels[f"{label} (DBI {rows[label]['DBI']:.2f})"] = (tsne_embedding(feats, seed=params.seed), res.test.y)
    base = f"features_{spec.spec_id}_fold{fold}"
    out.mkdir(parents=True, exist_ok=True)
    tsne_png(panels, out / f"tsne_{spec.spec_id}_fold{fold}.png")
    md = table_markdown(rows)
    (out / f"{base}.md").write_text(encoding="utf-8", data=md)
    result = {"spec": spec.to_dict(), "spec_id": spec.spec_id, "fold": fold, "rows": rows}
    (out / f"{base}.json").write_text(encoding="utf-8", data=json.dumps(result, indent=1, default=str))
    return result
