"""``naslung train | cv | evaluate-run | features | latency``: training, cross-validation and analysis.

``evaluate-run`` re-reports one logged training run (``naslung evaluate`` is the ensemble's evaluation).
"""

from __future__ import annotations

import argparse
from typing import Any, get_args

from naslung.commands import params_of
from naslung.params import HEADS, LrSchedule

SPEC_HELP = (
    'architecture spec, bare list "[4, 4, [4, 4], [4, 8], [8, 8]]" or reference form "spcbam[...]" '
    "(default: params model.spec)"
)


def _add_spec_args(p: argparse.ArgumentParser, head: bool = True) -> None:
    p.add_argument("--spec", help=SPEC_HELP)
    if head:
        p.add_argument("--head", choices=HEADS, help="classifier head (default: params model.head)")
    cbam = p.add_mutually_exclusive_group()
    cbam.add_argument("--cbam", dest="cbam", action="store_true", default=None, help="use CBAM attention")
    cbam.add_argument("--no-cbam", dest="cbam", action="store_false", help="no CBAM attention")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, help="maximum epochs (default: params train.epochs)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: train.lr; the paper's is 2e-4)")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs (default: params train.patience)")
    p.add_argument(
        "--lr-schedule",
        dest="lr_schedule",
        choices=get_args(LrSchedule),
        help="constant, or cosine decay to 0 over the maximum epochs (default: params train.lr_schedule)",
    )
    perm = p.add_mutually_exclusive_group()
    perm.add_argument(
        "--permute-axes",
        dest="permute_axes",
        action="store_true",
        default=None,
        help="augment with random axis orders too (with flips: all 48 symmetries of the cube)",
    )
    perm.add_argument("--no-permute-axes", dest="permute_axes", action="store_false", help="flips only")
    p.add_argument("--device", help="cpu | cuda | auto (default: params train.device)")
    p.add_argument("--artifacts", help="patch store folder (default: params paths.artifacts)")
    p.add_argument("--no-log", action="store_true", help="do not log to MLflow")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one spec on one test fold, evaluate that fold once, log to MLflow",
        description="Split -> fit (early stopping on a validation fold) -> test once -> MLflow run.",
    )
    _add_spec_args(p)
    p.add_argument("--fold", type=int, required=True, help="test fold held out (0..n_folds-1)")
    p.add_argument("--seed", type=int, help="training seed (default: params seed)")
    _add_run_args(p)
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "cv",
        help="train one spec for several test folds; fold-wise and mean ± std table",
        description="Runs `train` for each test fold; writes artifacts/cv_<spec_id>.json.",
    )
    _add_spec_args(p)
    p.add_argument("--folds", type=int, nargs="+", help="test folds (default: params train.test_folds)")
    _add_run_args(p)
    p.set_defaults(func=_cv)

    p = sub.add_parser(
        "evaluate-run",
        help="re-report a logged run's test metrics, or score a fold for reporting",
        description="Reads the run through MLflow; with --fold, loads its model and scores that fold "
        "(reporting only: the run's own test fold was already touched once).",
    )
    p.add_argument("--run-id", required=True, help="MLflow run id of a training run")
    p.add_argument("--fold", type=int, help="score this fold of the patch store with the logged model")
    p.add_argument("--artifacts", help="patch store folder (default: params paths.artifacts)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "features",
        help="softmax vs A-Softmax: Davies-Bouldin index and t-SNE (paper Table 4)",
        description="Trains the spec with a linear head and with A-Softmax, computes S0, S1, M01 and "
        "DBI of the test-fold penultimate features; writes features_<id>_fold<k>.json/.md and a t-SNE PNG.",
    )
    _add_spec_args(p, head=False)
    p.add_argument("--fold", type=int, required=True, help="test fold")
    p.add_argument("--out", help="output folder (default: the artifacts folder)")
    _add_run_args(p)
    p.set_defaults(func=_features)

    p = sub.add_parser(
        "latency",
        help="latency of a spec (ms per nodule) and its repeatability",
        description="Untrained weights (latency does not depend on them): median of params.latency.repeats "
        "warmed calls at each batch size, repeated params.latency.trials times.",
    )
    _add_spec_args(p)
    p.add_argument("--device", help="cpu | cuda | auto (default: params train.device)")
    p.add_argument("--threads", type=int, help="torch threads (default: params train.num_threads)")
    p.set_defaults(func=_latency)


def _setup(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from naslung.train.run import default_spec, resolve_spec

    # the run's flags are train.* params (logged with the run like any other)
    params = params_of(
        args, {f"train.{k}": getattr(args, k, None) for k in ("lr", "patience", "lr_schedule", "permute_axes")}
    )
    torch.set_num_threads(getattr(args, "threads", None) or params.train.num_threads)
    head, cbam = getattr(args, "head", None), getattr(args, "cbam", None)
    if getattr(args, "spec", None):
        from naslung.models.spec import ArchSpec

        bare = args.spec.strip().startswith("[")
        base = (
            ArchSpec.parse(args.spec, cbam=params.model.cbam, head=params.model.head, block=params.model.block)
            if bare
            else ArchSpec.parse(args.spec, block=params.model.block)
        )
        spec = resolve_spec(base, head=head, cbam=cbam)
    else:
        spec = default_spec(params, head=head, cbam=cbam)
    return params, spec


def _tracker(args: argparse.Namespace) -> Any:
    """The training tracker: MLflow, or one that records nothing with ``--no-log``."""
    if args.no_log:
        from naslung.tracker import NullTracker

        return NullTracker()
    from naslung.tracking import MlflowTracker

    return MlflowTracker()


def _train(args: argparse.Namespace) -> int:
    from naslung.train.run import run_training

    params, spec = _setup(args)
    out = run_training(
        params,
        spec,
        args.fold,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        artifacts=args.artifacts,
        tracker=_tracker(args),
    )
    s = out.summary()
    print(
        f"spec {spec.ref_string()} ({spec.spec_id}), test fold {args.fold}, val folds {list(out.split.val_folds)}, "
        f"best epoch {s['best_epoch']}/{s['epochs_run']}"
    )
    print("test: " + ", ".join(f"{k}={v:.3f}" for k, v in s["test"].items()))
    print(
        "latency ms/nodule: "
        + ", ".join(f"b{b}={v:.3f}" for b, v in s["latency_ms_per_nodule"].items())
        + f" ({out.latency[next(iter(out.latency))]['threads']} threads, {out.fit.device})"
    )
    if out.run_id:
        print(f"mlflow run {out.run_id}")
    return 0


def _cv(args: argparse.Namespace) -> int:
    from naslung.train.run import cv_table, run_cv

    params, spec = _setup(args)
    folds = args.folds or list(params.train.test_folds)
    summary = run_cv(
        params, spec, folds, epochs=args.epochs, device=args.device, artifacts=args.artifacts, tracker=_tracker(args)
    )
    print(f"spec {spec.ref_string()} ({spec.spec_id}) — test metrics per fold (threshold 0.5)")
    print(cv_table(summary))
    print(
        "baselines of each test fold fitted on the other folds only (diameter: best threshold / logistic "
        "regression on the diameter; voxel_stats: logistic regression on 12 voxel statistics); "
        "p: exact McNemar (accuracy), paired bootstrap (AUC)"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from naslung import tracking

    params = params_of(args)
    tracking.configure(params.mlflow_uri, params.train.experiment, params.paths.mlflow_artifacts)
    info = tracking.run_summary(args.run_id)
    test = {k: v for k, v in sorted(info["metrics"].items()) if k.startswith("test_")}
    print(f"run {args.run_id}: spec {info['params'].get('spec')} fold {info['params'].get('fold')}")
    print("logged test metrics: " + ", ".join(f"{k[5:]}={v:.3f}" for k, v in test.items()))
    if args.fold is not None:
        import json
        from pathlib import Path

        from naslung.data.store import PatchStore
        from naslung.metrics import binary_metrics

        p = info["params"]
        val = set(json.loads(p["val_folds"])) if "val_folds" in p else {int(p["val_fold"])}
        train = set(json.loads(p.get("train_folds", "[]")))
        if args.fold in val | train:
            raise SystemExit(
                f"evaluate-run: fold {args.fold} was training/validation data of run {args.run_id} "
                f"(train folds {sorted(train)}, validation folds {sorted(val)}); scoring it would report "
                "fitted data as a result"
            )
        store = PatchStore.open(Path(args.artifacts or params.paths.artifacts))
        X, y, _ = store.arrays([args.fold])
        model = tracking.load_model(info["model_uri"])
        prob = model.predict(X.astype("float32"))
        m = binary_metrics(y, prob)
        print(f"fold {args.fold} (reporting only): " + ", ".join(f"{k}={v:.3f}" for k, v in m.items()))
    return 0


def _features(args: argparse.Namespace) -> int:
    from naslung.train.run import compare_heads

    params, spec = _setup(args)
    res = compare_heads(
        params,
        spec,
        args.fold,
        epochs=args.epochs,
        device=args.device,
        artifacts=args.artifacts,
        out_dir=args.out,
        tracker=_tracker(args),
    )
    from naslung.features import table_markdown

    print(f"spec {spec.ref_string()} ({spec.spec_id}), test fold {args.fold}")
    print(table_markdown(res["rows"]))
    return 0


def _latency(args: argparse.Namespace) -> int:
    from naslung.latency import measure_latency, repeatability
    from naslung.models.net import build_model
    from naslung.train.loop import resolve_device

    params, spec = _setup(args)
    device = resolve_device(args.device or params.train.device)
    model = build_model(spec, margin_m=params.model.margin_m).to(device)
    lp = params.latency
    print(f"spec {spec.ref_string()} ({spec.spec_id}) on {device}")
    for b in lp.batch_sizes:
        m = measure_latency(model, b, device, lp.warmup, lp.repeats)
        r = repeatability(model, b, device, lp.warmup, lp.repeats, lp.trials)
        print(
            f"batch {b:>3}: {m['ms_per_nodule']:.3f} ms/nodule (IQR/median {m['iqr_over_median']:.3f}, "
            f"{m['threads']} threads); {lp.trials} repeated measurements: "
            + ", ".join(f"{v:.3f}" for v in r["trials_ms_per_nodule"])
            + f" -> range/median {r['rel_range']:.3f}"
        )
    return 0
