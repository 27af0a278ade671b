"""``naslung explain panel`` (Fig. 5-style CAM/attention panels + map-mass figure) and ``naslung dnas``
(differentiable architecture search on the patch store, tracked in MLflow like the POP search)."""

from __future__ import annotations

import argparse
from typing import Any

from naslung.commands import params_of


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser(
        "explain",
        help="explainability figures (CAM, CBAM attention)",
        description="Explainability figures of a trained model.",
    )
    exsub = ex.add_subparsers(dest="explain_cmd", required=True)
    panel = exsub.add_parser(
        "panel",
        help="Fig. 5-style panel + attention-mass figure on a test fold",
        description=(
            "Trains SPEC on the training folds of the split (or loads the model of an MLflow run), scores the "
            "held-out test fold once, and writes panel_cam.png, panel_attention.png (CBAM models), mass.png "
            "(map mass inside the nodule / its volume share, nodule = centred sphere of the manifest diameter) "
            "and explain.json into --out-dir. Panels and explain.json carry the same ratios for two controls: the "
            "same architectures re-initialised (untrained, torch seed --control-seed + member index) and a "
            "centred reference map (Gaussian of --reference-sigma-mm at the patch centre, the same for every "
            "nodule). The attention ratios leave out the outer voxel layers that see the convolutions' zero "
            "padding (3 for NASLungNet)."
        ),
    )
    src = panel.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-id", help="MLflow training run whose logged model (NASLungPyfunc) to explain")
    src.add_argument("--spec", help="architecture spec string to train quickly (e.g. 'spcbam[4,4,[4],[8],[8]]')")
    panel.add_argument("--epochs", type=int, default=10, help="training epochs for --spec (default 10)")
    panel.add_argument("--fold", type=int, help="test fold (default: search.fold)")
    panel.add_argument("--per-cell", type=int, default=3, help="nodules per panel cell (default 3)")
    panel.add_argument("--artifacts", help="patch store folder (default: paths.artifacts)")
    panel.add_argument("--out-dir", default="artifacts/explain", help="output folder (default artifacts/explain)")
    panel.add_argument(
        "--control-seed", type=int, help="torch seed of the untrained control (default: the params' seed)"
    )
    panel.add_argument(
        "--reference-sigma-mm",
        type=float,
        help="standard deviation (mm) of the centred reference map (default 4, REFERENCE_SIGMA_MM of "
        "naslung.explain.sanity)",
    )
    panel.set_defaults(func=run_panel)

    dn = sub.add_parser(
        "dnas",
        help="differentiable architecture search (Gumbel-softmax supernet of 3D MBConv blocks)",
        description=(
            "Searches the MBConv supernet with straight-through Gumbel-softmax sampling (weights on the "
            "training folds, α on a held-out part of them), derives the dnas.derive_k most probable "
            "architectures, retrains them from scratch and scores them on the validation fold of "
            "make_split(prepare.n_folds, search.fold, seed) (never the test fold). MLflow: a parent run and "
            "one nested run per derived model. Writes front.json, selected.json, pareto.png, summary.json (as "
            "`naslung search` does) and dnas.json (α, history) into dnas.out_dir. `naslung search` with "
            "search.strategy: dnas runs the same search as the Prefect flow into search.out_dir."
        ),
    )
    dn.add_argument("--epochs", type=int, help="supernet epochs (default: dnas.epochs)")
    dn.add_argument(
        "--retrain-epochs", type=int, help="retraining epochs per derived model (default: dnas.retrain_epochs)"
    )
    dn.add_argument("--derive-k", type=int, help="derived architectures to retrain (default: dnas.derive_k)")
    dn.add_argument("--artifacts", help="patch store folder (default: paths.artifacts)")
    dn.add_argument("--out-dir", help="output folder (default: dnas.out_dir)")
    dn.add_argument("--pop-front", help="POP front.json to plot against (default: <search.out_dir>/front.json)")
    dn.add_argument("--search-id", help="search id (default: hash of the dnas/train/latency params and the data)")
    dn.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    dn.set_defaults(func=run_dnas)


def _load_run_model(run_id: str) -> Any:
    from naslung.tracking import load_model, run_summary

    pyfunc = load_model(run_summary(run_id)["model_uri"])
    return pyfunc.unwrap_python_model().model


def run_panel(args: argparse.Namespace) -> int:
    """Handler of ``naslung explain panel``."""
    import json
    from pathlib import Path

    import torch

    from naslung.data.store import PatchStore
    from naslung.explain.panel import explain_test_fold
    from naslung.explain.sanity import REFERENCE_SIGMA_MM
    from naslung.models.spec import ArchSpec
    from naslung.train.loop import fit, resolve_device
    from naslung.train.protocol import make_split, open_split

    sigma = REFERENCE_SIGMA_MM if args.reference_sigma_mm is None else float(args.reference_sigma_mm)
    if not sigma > 0:  # also refuses nan
        raise SystemExit(f"naslung explain panel: --reference-sigma-mm must be > 0, got {sigma:g}")
    params = params_of(args)
    torch.set_num_threads(max(1, params.train.num_threads))
    store = PatchStore.open(args.artifacts or params.paths.artifacts)
    fold = params.search.fold if args.fold is None else args.fold
    if args.run_id:
        model = _load_run_model(args.run_id)
    else:
        dev, test = open_split(store, make_split(params.prepare.n_folds, fold, params.seed, params.train.val_folds))
        spec = ArchSpec.parse(args.spec, cbam=params.model.cbam, head=params.model.head)
        try:  # the test fold stays sealed while fitting; explain_test_fold scores it once afterwards
            model = fit(
                spec,
                dev.train,
                dev.val,
                params.model,
                params.train,
                epochs=args.epochs,
                seed=params.seed,
                device=resolve_device(params.train.device),
                progress=True,
            ).model
        finally:
            test.release()
    summary = explain_test_fold(
        model.cpu().eval(),
        store,
        params.prepare.n_folds,
        fold,
        params.seed,
        Path(args.out_dir),
        args.per_cell,
        control_seed=args.control_seed,
        reference_sigma_mm=sigma,
    )
    print(
        json.dumps({"mass_ratio": summary["mass_ratio"], "attention_rim_vox": summary["attention_rim_vox"]}, indent=1)
    )
    return 0


def run_dnas(args: argparse.Namespace) -> int:
    """Handler of ``naslung dnas``: :func:`naslung.search.dnas_run.run_dnas_search` into ``dnas.out_dir``."""
    import json

    from naslung.search.dnas_run import run_dnas_search
    from naslung.search.ids import default_search_id

    params = params_of(
        args, {"dnas.epochs": args.epochs, "dnas.retrain_epochs": args.retrain_epochs, "dnas.derive_k": args.derive_k}
    )
    artifacts = str(args.artifacts or params.paths.artifacts)
    search_id = args.search_id or default_search_id(params, artifacts, strategy="dnas")
    from naslung.tracker import NullTracker
    from naslung.tracking import MlflowTracker

    tracker = NullTracker() if args.no_mlflow else MlflowTracker()
    tracker.configure(params.mlflow_uri)
    result = run_dnas_search(
        params,
        artifacts,
        args.out_dir or params.dnas.out_dir,
        search_id,
        tracker=tracker,
        pop_front_path=args.pop_front,
        progress=True,
    )
    print(json.dumps(result.summary, indent=1, default=float))
    return 0
