"""Registering the ensemble as an MLflow model version, and downloading a version back.

:func:`register` — one MLflow run (experiment ``ensemble.experiment``) that logs the evaluation metrics,
plots, the patch manifest as dataset input, the explainability panel and the
:class:`~naslung.pyfunc.EnsemblePyfunc` model, registered under ``registry.name``. The
:class:`~naslung.card.ModelCard` is built once (:func:`build_card`) from the index, the metrics and the
facts gathered here (git commit, DVC url, validation verdict, search run); the version's lineage tags
(``naslung.*``), its description, ``model_card.md`` and ``model_card.json`` (in the run and inside the
model artifact) all derive from it. The new version gets the alias ``challenger``.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient

from naslung.artifact_paths import ENSEMBLE_INDEX_FILE, METRICS_FILE, ArtifactsDir
from naslung.card import CARD_FILE, CARD_MARKDOWN, TAG, ModelCard
from naslung.ensemble.layout import ENSEMBLE_DIR
from naslung.params import Params, to_dict
from naslung.provenance import search_run_id, validation_status
from naslung.pyfunc import EnsemblePyfunc, ensemble_signature, input_example
from naslung.registry.store import CHALLENGER, configure

CARD_JSON_ARTIFACT = "model_card_json"
"""Name of the pyfunc artifact holding ``model_card.json`` (``model_card`` holds the markdown)."""


def dvc_url(path: str | Path) -> str | None:
    """``dvc.api.get_url`` of a DVC-tracked output (the cache location of this data version), else None."""
    try:
        import dvc.api

        return str(dvc.api.get_url(str(path)))
    except Exception:
        return None


def build_card(params: Params, index: dict[str, Any], metrics: dict[str, Any], search_id: str | None) -> ModelCard:
    """The model card of the indexed ensemble, with the git commit, DVC url and validation verdict."""
    from naslung.lineage import git_commit

    return ModelCard.build(
        params,
        index,
        metrics,
        validation=validation_status(params, index["data"]["md5"]),
        search_run_id=search_id,
        git_commit=git_commit(Path.cwd()) or git_commit(Path(__file__).resolve().parent),
        dvc_url=dvc_url(ArtifactsDir(Path(params.paths.artifacts)).patches),
    )


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    run_id: str
    model_uri: str
    tags: dict[str, str]


def log_explain_panel(params: Params, ensemble: Any, fold: int) -> str | None:
    """Log the Fig. 5 analogue of ``ensemble`` (mean member CAM / stage-2 attention of correctly and wrongly
    classified nodules per class, map-mass figure) on test fold ``fold`` into the active run's ``explain/``;
    returns the artifact path of the CAM panel, or None (with a warning) when no map can be made."""
    from naslung.data.store import PatchStore
    from naslung.explain.panel import explain_test_fold

    try:
        store = PatchStore.open(params.paths.artifacts)
        with tempfile.TemporaryDirectory(prefix="naslung-explain-") as tmp:
            summary = explain_test_fold(
                ensemble,
                store,
                params.prepare.n_folds,
                fold,
                params.seed,
                tmp,
                title=f"{params.registry.name} ({len(ensemble)} members)",
            )
            mlflow.log_artifacts(tmp, "explain")
    except (FileNotFoundError, TypeError, ValueError) as exc:  # no patch store / a member without maps
        warnings.warn(f"register: no explainability panel logged: {exc}", stacklevel=2)
        return None
    mlflow.log_metrics(
        {f"explain.{k}_mass_ratio": float(summary[k]["ratio_of_means"]) for k in ("CAM", "attention") if k in summary}
    )
    return "explain/panel_cam.png"


def register(params: Params, search_id: str | None = None, metrics_path: str | Path | None = None) -> Registration:
    """Log and register the ensemble of ``<ensemble.out_dir>/model`` with its evaluation and lineage.

    Needs ``training.json`` (``naslung ensemble train``) and ``metrics.json`` (``naslung evaluate``). The
    new version gets the alias ``challenger``; promotion is :func:`promote`'s decision.
    """
    from naslung import tracking
    from naslung.ensemble.model import Ensemble
    from naslung.ensemble.training import read_index

    index, _ = read_index(params)
    mpath = Path(metrics_path or ArtifactsDir(Path(params.paths.artifacts)).metrics)
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath}: not found (run `naslung evaluate` first)")
    metrics = json.loads(mpath.read_text(encoding="utf-8"))
    model_dir = Path(index["model_dir"])
    ensemble = Ensemble.load(model_dir)
    card = build_card(params, index, metrics, search_id or search_run_id(params))
    tags = card.to_tags()
    markdown = card.to_markdown()
    name = params.registry.name
    configure(params)
    with mlflow.start_run(run_name=f"register-{name}") as run:
        mlflow.set_tags({**tags, "mlflow.source.git.commit": tags[TAG + "git_commit"], TAG + "kind": "register"})
        mlflow.log_params(
            {
                "registry.name": name,
                "members": len(ensemble),
                "deploy_fold": index["deploy_fold"],
                "eval_folds": json.dumps(metrics["folds"]),
                "params_hash": tags[TAG + "params_hash"],
            }
        )
        mlflow.log_metrics({k: float(v) for k, v in metrics["summary"].items() if np.isfinite(float(v))})
        manifest = ArtifactsDir(Path(params.paths.artifacts)).manifest
        if manifest.is_file():
            tracking.log_manifest_input(manifest, Path("dvc.lock"), context="ensemble")
        mlflow.log_dict(metrics, METRICS_FILE)
        mlflow.log_dict(to_dict(params), "params.json")
        mlflow.log_dict(index, ENSEMBLE_INDEX_FILE)
        for plot in sorted((Path(params.paths.artifacts) / "plots").glob("ensemble_*.png")):
            mlflow.log_artifact(str(plot), "plots")
        mlflow.log_text(markdown, CARD_MARKDOWN)
        mlflow.log_dict(card.to_dict(), CARD_FILE)
        panel = log_explain_panel(params, ensemble, int(index["deploy_fold"]))
        with tempfile.TemporaryDirectory(prefix="naslung-register-") as tmp:
            card_md, card_json = Path(tmp) / CARD_MARKDOWN, Path(tmp) / CARD_FILE
            card_md.write_text(encoding="utf-8", data=markdown)
            card_json.write_text(encoding="utf-8", data=json.dumps(card.to_dict(), indent=1, default=float) + "\n")
            info = mlflow.pyfunc.log_model(
                name="ensemble",
                python_model=EnsemblePyfunc(),
                artifacts={
                    ENSEMBLE_DIR: str(model_dir),
                    "model_card": str(card_md),
                    CARD_JSON_ARTIFACT: str(card_json),
                },
                signature=ensemble_signature(ensemble.member_names),
                input_example=input_example(),
                registered_model_name=name,
                **tracking.model_environment(),
            )
        version = str(info.registered_model_version)
    client = MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    client.set_model_version_tag(name, version, TAG + "register_run_id", run.info.run_id)
    if panel:
        client.set_model_version_tag(name, version, TAG + "explain_panel", panel)
    client.update_model_version(name, version, description=card.description(run.info.run_id))
    client.set_registered_model_alias(name, CHALLENGER, version)
    print(f"registered {name} version {version} (alias {CHALLENGER}); run {run.info.run_id}")
    return Registration(name, version, run.info.run_id, info.model_uri, tags)


def download_ensemble(
    params: Params, dest: Path, alias: str | None = None, version: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """Download the registered model of ``registry.name`` at ``alias`` or ``version`` into ``dest``.

    Returns (ensemble dir, {"version", "run_id", "source", "aliases", "card"}); ``card`` is the version's
    :meth:`ModelCard.to_dict` (None for a version registered without one). ``serve package`` builds the
    .mar from them.
    """
    import yaml

    if (alias is None) == (version is None):
        raise ValueError("give exactly one of alias / version")
    configure(params)
    name = params.registry.name
    client = MlflowClient()
    mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))
    uri = f"models:/{name}/{mv.version}"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    if ENSEMBLE_DIR not in artifacts:
        raise ValueError(f"{uri}: the registered model has no '{ENSEMBLE_DIR}' artifact (found {sorted(artifacts)})")
    card = None
    if CARD_JSON_ARTIFACT in artifacts:
        card = json.loads((local / artifacts[CARD_JSON_ARTIFACT]["path"]).read_text(encoding="utf-8"))
    meta = {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "source": mv.source,
        "aliases": list(getattr(mv, "aliases", []) or []),
        "card": card,
    }
    return local / artifacts[ENSEMBLE_DIR]["path"], meta
