"""Registering the ensemble as an MLflow model version, and downloading a version back.

:func:`register` — one MLflow run (experiment ``ensemble.experiment``) that logs the evaluation metrics,
plots, the patch manifest as dataset input, the explainability panel and the
:class:`~naslung.pyfunc.EnsemblePyfunc` model, registered under ``registry.name``. The
:class:`~naslung.card.ModelCard` is built once (:func:`build_card`) from the index, the metrics and the
facts gathered here (git commit, DVC url, validation verdict, search run); the version's lineage tags
(``naslung.*``), its description, ``model_card.md`` and ``model_card.json`` (in the run and inside the
model artifact) all derive from it. The new version gets the alias ``challenger``.

Registration also computes what the promotion gate reads (:func:`gate_figures`): the deploy ensemble's
figures on its members' shared **validation** rows (AUC of the mean probability, sensitivity /
specificity / accuracy of the vote, with intervals), the constant predictor's accuracy and both baselines
(:func:`naslung.baselines.baseline_predictions`, fitted on the split's training folds) on the same rows,
and the identity of those rows; they go on the version as tags ``naslung.val.*`` (``naslung.val.figures``
holds them all as JSON) and into the run as ``gate_figures.json`` and ``val.*`` metrics. The calibration
report of ``ensemble train`` (``<ensemble.out_dir>/calibration/``: reliability plot and data, Brier,
slope/intercept, ECE) is logged under ``calibration/`` with ``calibration.*`` metrics; the calibrator itself
travels inside the model (``calibration.json`` of the ensemble directory).

Registration also runs the stored-output regression check (:mod:`naslung.registry.regression`): the
ensemble's scores on ``registry.regression_patches`` go into the run as ``regression/scores.json`` and are
compared with the champion's stored scores; the result is on the version (tags ``naslung.regression.*``),
in the model card and in :attr:`Registration.regression`.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from naslung import gate
from naslung.artifact_paths import ENSEMBLE_INDEX_FILE, ArtifactsDir
from naslung.card import CARD_FILE, CARD_MARKDOWN, TAG, ModelCard
from naslung.ensemble.layout import ENSEMBLE_DIR
from naslung.errors import UserError
from naslung.params import Params, to_dict
from naslung.provenance import search_run_id, validation_status
from naslung.pyfunc import EnsemblePyfunc, ensemble_signature, input_example
from naslung.registry.store import CHALLENGER, configure, version_at

CARD_JSON_ARTIFACT = "model_card_json"
"""Name of the pyfunc artifact holding ``model_card.json`` (``model_card`` holds the markdown)."""


VAL_FIGURES_TAG = TAG + "val.figures"
"""Version tag holding :meth:`naslung.gate.ValidationFigures.to_dict` as JSON (what the gate reads)."""
GATE_FIGURES_FILE = "gate_figures.json"


def gate_figures(params: Params, index: dict[str, Any], records: list[Any] | None = None) -> gate.ValidationFigures:
    """The gate's figures of the deploy ensemble of ``index`` on its members' shared validation rows.

    AUC of the raw mean probability, sensitivity / specificity / accuracy of the majority vote, the constant
    predictor's accuracy and both baselines (fitted on the split's training folds of the patch store,
    scored on the same rows). No test fold is read.
    """
    from naslung.baselines import baseline_predictions
    from naslung.data.store import PatchStore
    from naslung.ensemble.model import majority_label
    from naslung.ensemble.training import MemberRecord, validation_predictions

    recs = records if records is not None else [MemberRecord(**m) for m in index["members"]]
    deploy = [r for r in recs if int(r.fold) == int(index["deploy_fold"])]
    val = validation_predictions(deploy)
    _votes, label = majority_label(val.member_probs)
    store = PatchStore.open(params.paths.artifacts)
    base = baseline_predictions(
        store.manifest,
        store.patches,
        val.train_folds,
        val.folds,
        hu_window=(float(params.prepare.hu_window[0]), float(params.prepare.hu_window[1])),
    )
    aligned: dict[str, tuple[Any, Any]] = {}
    for name, b in base.items():
        ids = [str(i) for i in b.ids]
        if sorted(ids) != sorted(str(i) for i in val.ids):
            raise ValueError(f"gate figures: baseline {name} scored other rows than the members' validation rows")
        pos = {v: i for i, v in enumerate(ids)}
        order = [pos[str(i)] for i in val.ids]
        aligned[name] = (np.asarray(b.score)[order], np.asarray(b.label)[order])
    data = gate.DataRef(
        role="validation",
        folds=val.folds,
        n=int(val.y.size),
        n_malignant=int(val.y.sum()),
        hash=val.hash,
        train_folds=val.train_folds,
        test_fold=val.test_fold,
    )
    return gate.validation_figures(val.y, val.raw_prob, label, data, aligned, seed=int(params.seed))


def gate_tags(figures: gate.ValidationFigures) -> dict[str, str]:
    """Version tags ``naslung.val.*`` of the gate's figures (the JSON one is what the gate reads)."""
    d = figures.data
    tags = {
        VAL_FIGURES_TAG: json.dumps(figures.to_dict(), default=float),
        TAG + "val.auc": f"{figures.auc:.6f}",
        TAG + "val.sensitivity": f"{figures.sensitivity:.6f}",
        TAG + "val.specificity": f"{figures.specificity:.6f}",
        TAG + "val.accuracy": f"{figures.accuracy:.6f}",
        TAG + "val.constant_accuracy": f"{figures.constant_accuracy:.6f}",
        TAG + "val.folds": json.dumps(list(d.folds)),
        TAG + "val.n": str(d.n),
        TAG + "val.data_hash": d.hash,
    }
    for name, b in figures.baselines.items():
        tags[TAG + f"val.baseline.{name}.auc"] = f"{b.auc:.6f}"
    return {k: v[:5000] for k, v in tags.items()}


def _gate_metrics(figures: gate.ValidationFigures) -> dict[str, float]:
    out = {
        "val.auc": figures.auc,
        "val.sensitivity": figures.sensitivity,
        "val.specificity": figures.specificity,
        "val.accuracy": figures.accuracy,
        "val.constant_accuracy": figures.constant_accuracy,
        **{f"val.baseline.{k}.auc": b.auc for k, b in figures.baselines.items()},
        **{f"val.baseline.{k}.accuracy": b.accuracy for k, b in figures.baselines.items()},
    }
    return {k: float(v) for k, v in out.items() if np.isfinite(float(v))}


def _log_calibration(index: dict[str, Any]) -> None:
    """Log the calibration report of ``ensemble train`` (files under ``calibration/``, ``calibration.*``
    metrics) into the active run."""
    from naslung.calibration import REPORT_DIR

    cal = index.get("calibration") or {}
    folder = Path(index["model_dir"]).parent / REPORT_DIR
    if folder.is_dir():
        mlflow.log_artifacts(str(folder), REPORT_DIR)
    metrics = {}
    for split, kinds in (cal.get("figures") or {}).items():
        for kind, figs in kinds.items():
            for k, v in figs.items():
                if k != "n" and v is not None and np.isfinite(float(v)):
                    metrics[f"calibration.{split}.{kind}.{k}"] = float(v)
    calibrator = cal.get("calibrator") or {}
    if calibrator.get("method") == "temperature":
        metrics["calibration.temperature"] = float(calibrator.get("temperature", 1.0))
    if metrics:
        mlflow.log_metrics(metrics)


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
    regression: dict[str, Any] | None = None
    """The stored-output regression check at registration (:meth:`naslung.gate.RegressionCheck.to_dict`)."""


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
    metrics = {
        f"explain.{k}_mass_ratio": float(summary[k]["ratio_of_means"]) for k in ("CAM", "attention") if k in summary
    }
    for kind, row in summary.get("mass_ratio", {}).items():  # the controls: untrained ensemble, centred map
        metrics.update({f"explain.{kind}_mass_ratio_{c}": float(v) for c, v in row.items() if c != "trained"})
    mlflow.log_metrics(metrics)
    return "explain/panel_cam.png"


def with_reference_profile(params: Params, index: dict[str, Any], model_dir: Path, tmp: Path) -> Path:
    """A copy of the ensemble directory ``model_dir`` in ``tmp`` holding the drift reference profile
    (``reference_profile.json``, :mod:`naslung.scoring_csv.drift`): the acquisition metadata of the scans of
    the deploy split's training folds (patch store manifest, scans under ``paths.raw``) and the ensemble's
    calibrated probabilities on its members' validation rows. The original stays untouched (a DVC output);
    on any failure a warning and ``model_dir`` itself (the version then has no profile)."""
    import shutil

    from naslung.calibration import Calibrator
    from naslung.data.store import PatchStore
    from naslung.ensemble.layout import read_calibration
    from naslung.ensemble.training import MemberRecord, validation_predictions
    from naslung.scoring_csv.drift import reference_profile, scan_metadata, write_profile

    try:
        deploy = int(index["deploy_fold"])
        records = [MemberRecord(**m) for m in index["members"]]
        val = validation_predictions([r for r in records if int(r.fold) == deploy])
        cal = read_calibration(model_dir)
        probs = Calibrator.from_dict(cal).apply(val.raw_prob) if cal else val.raw_prob
        try:
            manifest = PatchStore.open(params.paths.artifacts).manifest
            train = manifest[manifest["fold"].astype(int).isin(val.train_folds)]
            scans = sorted(set(train["scan_path"].astype(str)))
        except (FileNotFoundError, KeyError, ValueError):
            scans = []
        metas = [scan_metadata(Path(params.paths.raw) / s) for s in scans]
        source = {"deploy_fold": deploy, "train_folds": list(val.train_folds), "validation": val.data()}
        staged = Path(tmp) / "ensemble_with_profile"
        shutil.copytree(model_dir, staged)
        write_profile(staged, reference_profile(metas, probs.tolist(), {**source, "scans_listed": len(scans)}))
        return staged
    except Exception as exc:  # the profile is for drift reports only: never block a registration
        warnings.warn(f"register: no drift reference profile stored with the model ({exc})", stacklevel=2)
        return model_dir


def register(
    params: Params, search_id: str | None = None, metrics_path: str | Path | None = None, rebaseline: str | None = None
) -> Registration:
    """Log and register the ensemble of ``<ensemble.out_dir>/model`` with its evaluation and lineage.

    Needs ``training.json`` (``naslung ensemble train``) and ``metrics_detail.json`` (or, from an older
    evaluation, ``metrics.json``; ``naslung evaluate``). The
    new version gets the alias ``challenger``; promotion is :func:`promote`'s decision. ``rebaseline``
    (a reason): accept scores on the regression set that moved beyond the tolerances of the current
    champion's (recorded: who, when, why; :mod:`naslung.registry.regression`).
    """
    from naslung import tracking
    from naslung.ensemble.model import Ensemble
    from naslung.ensemble.training import read_index

    index, _ = read_index(params)
    arts = ArtifactsDir(Path(params.paths.artifacts))
    mpath = Path(metrics_path or (arts.metrics_detail if arts.metrics_detail.is_file() else arts.metrics))
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath}: not found (run `naslung evaluate` first)")
    metrics = json.loads(mpath.read_text(encoding="utf-8"))  # the whole evaluation (metrics_detail.json)
    model_dir = Path(index["model_dir"])
    ensemble = Ensemble.load(model_dir)
    card = build_card(params, index, metrics, search_id or search_run_id(params))
    cal = index.get("calibration")
    if cal:
        card = replace(card, calibration={k: cal[k] for k in ("calibrator", "figures", "data") if k in cal})
    figures: gate.ValidationFigures | None
    try:
        figures = gate_figures(params, index)
    except (FileNotFoundError, ValueError) as exc:  # no patch store / members without validation predictions
        warnings.warn(f"register: no validation figures for the gate ({exc}); promotion will refuse", stacklevel=2)
        figures = None
    from naslung.registry import regression

    configure(params)
    reg_scores, reg_check = regression.at_registration(params, ensemble, rebaseline)
    card = replace(card, regression=reg_check.to_dict())
    tags = {**card.to_tags(), **(gate_tags(figures) if figures is not None else {})}
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
        mlflow.log_metrics(
            {k: float(v) for k, v in metrics["summary"].items() if v is not None and np.isfinite(float(v))}
        )
        if figures is not None:
            mlflow.log_metrics(_gate_metrics(figures))
            mlflow.log_dict(figures.to_dict(), GATE_FIGURES_FILE)
        _log_calibration(index)
        manifest = ArtifactsDir(Path(params.paths.artifacts)).manifest
        if manifest.is_file():
            tracking.log_manifest_input(manifest, Path("dvc.lock"), context="ensemble")
        mlflow.log_dict(metrics, mpath.name)
        if mpath != arts.metrics and arts.metrics.is_file():
            mlflow.log_artifact(str(arts.metrics))
        mlflow.log_dict(to_dict(params), "params.json")
        mlflow.log_dict(index, ENSEMBLE_INDEX_FILE)
        for plot in sorted((Path(params.paths.artifacts) / "plots").glob("ensemble_*.png")):
            mlflow.log_artifact(str(plot), "plots")
        mlflow.log_text(markdown, CARD_MARKDOWN)
        mlflow.log_dict(card.to_dict(), CARD_FILE)
        if reg_scores is not None:
            mlflow.log_dict(reg_scores, regression.SCORES_FILE)
        panel = log_explain_panel(params, ensemble, int(index["deploy_fold"]))
        with tempfile.TemporaryDirectory(prefix="naslung-register-") as tmp:
            card_md, card_json = Path(tmp) / CARD_MARKDOWN, Path(tmp) / CARD_FILE
            card_md.write_text(encoding="utf-8", data=markdown)
            card_json.write_text(encoding="utf-8", data=json.dumps(card.to_dict(), indent=1, default=float) + "\n")
            model_dir = with_reference_profile(params, index, model_dir, Path(tmp))  # drift reference, in the .mar
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
    regression.tag_registration(client, name, version, reg_scores, reg_check)
    print(f"registered {name} version {version} (alias {CHALLENGER}); run {run.info.run_id}")
    return Registration(name, version, run.info.run_id, info.model_uri, tags, reg_check.to_dict())


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
    if alias:
        mv = version_at(client, name, alias)
        if mv is None:
            raise UserError(
                f"{name}: no version holds alias '{alias}' in {params.mlflow_uri} (the gate moves it only to a "
                f"version that passes; see {ArtifactsDir(Path(params.paths.artifacts)).registration}); "
                "`--version N` picks a registered version"
            )
    else:
        try:
            mv = client.get_model_version(name, str(version))
        except MlflowException as exc:
            raise UserError(f"{name}: no version {version} in {params.mlflow_uri}") from exc
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
