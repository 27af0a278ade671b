"""MLflow adapter: :class:`MlflowTracker` (the :class:`naslung.tracker.Tracker` of training, POP and DNAS),
the NASLung pyfunc model flavour and the tracking URI. With :mod:`naslung.registry` the only modules of the
library that import mlflow.

What one training run records (see :func:`training_run`; the layout is :func:`naslung.train.run.run_training`'s):

* params: spec fields, spec id, fold split, seed, loss type, CBAM flag, train/model hyper-parameters,
  device and threads; tags: ``mlflow.source.git.commit`` (``git rev-parse HEAD``; absent without git),
  spec id, fold, loss;
* metrics: per-epoch train/val loss and validation metrics (step = epoch), param count, FLOPs per nodule,
  latency (ms per nodule at each batch size) and the final test metrics prefixed ``test_``;
* artifacts: ``spec.json``, ``history.json``, ``test_predictions.csv``, ROC / confusion / curve PNGs under
  ``plots/``, and the model (``name="model"``) as a pyfunc :class:`naslung.pyfunc.NASLungPyfunc` wrapping
  the state dict and spec JSON, with the signature float32 (-1, 1, 32, 32, 32) -> malignancy probability (-1,);
* input: the patch manifest via ``mlflow.log_input`` (source = manifest path, digest = the md5 recorded
  for it in ``dvc.lock`` when the prepare stage is locked there, else the file's own md5).

Search runs (layout in :mod:`naslung.search.runs`) are parents addressed by id (:func:`open_parent`,
:func:`children`, :func:`end_run`; ``run_id=`` on the ``log_*`` functions) through :class:`mlflow.MlflowClient`,
because MLflow's current run is per thread and candidates train in other threads or Dask workers; their
nested runs are :func:`training_run` with ``parent_run_id`` (``mlflow.start_run(parent_run_id=...,
nested=True)``), never an implicit active parent.

Tracking URI: ``MLFLOW_TRACKING_URI`` when set, else ``params.paths.mlflow_uri``; telemetry is switched off.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from naslung.lineage import data_identity, git_commit
from naslung.pyfunc import NASLungPyfunc, model_signature
from naslung.tracker import RunRecord

MODEL_NAME = "model"


def set_uri(uri: str | None) -> str:
    """Point MLflow tracking and registry at ``MLFLOW_TRACKING_URI`` or ``uri`` (default the embedded
    ``sqlite:///mlflow/mlflow.db``), creating a sqlite database's folder; returns the URI in use."""
    resolved = os.environ.get("MLFLOW_TRACKING_URI") or uri or "sqlite:///mlflow/mlflow.db"
    if resolved.startswith("sqlite:///"):
        Path(resolved[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    return resolved


def configure(uri: str | None, experiment: str | None = None, artifacts_root: str | Path | None = None) -> str:
    """Point MLflow tracking and registry at ``MLFLOW_TRACKING_URI`` or ``uri`` and select ``experiment``
    (none: only the URI; a search's parent run picks its experiment in :func:`open_parent`).

    For a database store without a server (``sqlite:///…``, ``postgresql://…``) the sqlite folder is created
    and a new experiment keeps its artifacts under ``artifacts_root`` (params ``paths.mlflow_artifacts``)
    instead of MLflow's default ``./mlruns`` in the current directory. A server URI (``http(s)://``) leaves
    artifact storage to the server. Returns the URI in use.
    """
    resolved = set_uri(uri)
    if experiment is None:
        return resolved
    experiment_id(experiment, artifacts_root)
    mlflow.set_experiment(experiment)
    return resolved


def data_digest(manifest: str | Path, dvc_lock: str | Path | None = None) -> dict[str, str]:
    """md5s of the patch store holding ``manifest`` (:func:`naslung.lineage.data_identity`): from the
    ``prepare`` outs of ``dvc.lock`` when it lists both files, else hashed from the files.

    Returns {"digest": manifest md5, "origin": "dvc.lock" | "file", "patches_md5": patches.npy md5}.
    """
    ident = data_identity(Path(manifest).parent, dvc_lock)
    return {"digest": ident.md5["manifest"], "origin": ident.origin, "patches_md5": ident.md5["patches"]}


def log_manifest_input(manifest: str | Path, dvc_lock: str | Path | None = None, context: str = "training") -> None:
    """``mlflow.log_input`` of the patch manifest table (source = its path, digest from dvc.lock/file)."""
    manifest = Path(manifest).resolve()
    info = data_digest(manifest, dvc_lock)
    df = pd.read_csv(manifest)
    with warnings.catch_warnings():  # MLflow registers the local source twice and warns it picks one
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column")
        ds = mlflow.data.from_pandas(
            df,
            source=str(manifest),
            name="patch-manifest",
            digest=info["digest"],
            targets="label" if "label" in df.columns else None,
        )
        tags = {"digest_origin": info["origin"], "patches_md5": info["patches_md5"]}
        mlflow.log_input(ds, context=context, tags=tags)


# --- model flavour ----------------------------------------------------------------------------------


MODEL_REQUIREMENTS = ("torch", "numpy", "pandas", "mlflow", "PyYAML", "scipy", "tqdm")
"""Distributions a logged NASLung model needs at load time besides its own code (pinned to the versions in use)."""


def model_environment() -> dict[str, Any]:
    """``code_paths`` and ``pip_requirements`` for ``mlflow.pyfunc.log_model`` of a NASLung model.

    The ``naslung`` package itself travels with the model (``code_paths``: MLflow puts it on ``sys.path`` at
    load), so the model's environment names only distributions a package index serves: ``mlflow models
    serve`` or ``mlflow.pyfunc.load_model`` in a fresh environment resolve it, and the code that loads the
    weights is the code that wrote them. torch is pinned without its local build label (``+cpu``).
    """
    import importlib.metadata

    import naslung

    reqs = [f"{d}=={importlib.metadata.version(d).split('+')[0]}" for d in MODEL_REQUIREMENTS]
    return {"code_paths": [str(Path(naslung.__file__).resolve().parent)], "pip_requirements": reqs}


def log_model(model: torch.nn.Module, spec: Any, margin_m: int, name: str = MODEL_NAME) -> str:
    """Log ``model`` as a :class:`NASLungPyfunc` under the active run; returns the model URI."""
    with tempfile.TemporaryDirectory(prefix="naslung-model-") as tmp:
        weights = Path(tmp) / "weights.pt"
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(
            encoding="utf-8", data=json.dumps({"spec": spec.to_dict(), "margin_m": int(margin_m)}, indent=1)
        )
        with warnings.catch_warnings():  # explicit tensor signature: no input example or type hints needed
            warnings.filterwarnings("ignore", message=".*An input example was not provided")
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=NASLungPyfunc(),
                artifacts={"weights": str(weights), "spec": str(spec_path)},
                signature=model_signature(),
                **model_environment(),
            )
    return info.model_uri


def load_model(model_uri: str) -> Any:
    """``mlflow.pyfunc.load_model`` of a logged NASLung model (its explicit signature validates input)."""
    return mlflow.pyfunc.load_model(model_uri)


# --- run logging ------------------------------------------------------------------------------------

SEARCH_ARTIFACTS = "artifacts"  # default artifacts folder beside a sqlite store
"""Folder next to a sqlite store where experiments opened by :func:`open_parent` keep their artifacts."""


def _param_values(params: Mapping[str, Any]) -> dict[str, str]:
    """Flat params as MLflow stores them: lists, tuples and dicts as JSON, the rest as ``str``."""
    return {k: (json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v))[:6000] for k, v in params.items()}


def _finite(metrics: Mapping[str, float], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items() if np.isfinite(float(v))}


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextmanager
def training_run(
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[str]:
    """Start an MLflow run (nested under ``parent_run_id``, in the parent's experiment, when given), log
    ``params`` (flat) and tags incl. the git commit (the parent's when ``git`` cannot be asked here, e.g. in a
    Dask worker); yields the run id."""
    parent = MlflowClient().get_run(parent_run_id) if parent_run_id else None
    experiment_id = parent.info.experiment_id if parent is not None else None
    with mlflow.start_run(
        run_name=run_name, experiment_id=experiment_id, parent_run_id=parent_run_id, nested=parent_run_id is not None
    ) as run:
        commit = git_commit(Path(__file__).resolve().parent)
        if not commit and parent is not None:
            commit = parent.data.tags.get("mlflow.source.git.commit")
        all_tags = dict(tags or {})
        if commit:
            all_tags["mlflow.source.git.commit"] = commit
        mlflow.set_tags(all_tags)
        mlflow.log_params(_param_values(params))
        yield run.info.run_id


def artifact_location(experiment: str, artifacts_root: str | Path | None = None) -> str | None:
    """Where a new ``experiment`` keeps its artifacts: ``<artifacts_root>/<experiment>`` as a file URI, with
    ``artifacts_root`` defaulting to ``<folder of the sqlite db>/artifacts`` (the embedded default
    ``mlflow/artifacts``; never ./mlruns of whatever the working folder is); None (the server, or MLflow's
    default, decides) for a server URI, or a database URI without ``artifacts_root``."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    if artifacts_root is None and uri.startswith("sqlite:///"):
        artifacts_root = Path(uri[len("sqlite:///") :]).resolve().parent / SEARCH_ARTIFACTS
    if artifacts_root is None:
        return None
    root = Path(artifacts_root).resolve() / experiment
    root.mkdir(parents=True, exist_ok=True)
    return root.as_uri()


def find_experiment_id(name: str) -> str | None:
    """Id of experiment ``name`` in the current store, None when it does not exist (nothing is created)."""
    exp = MlflowClient().get_experiment_by_name(name)
    return None if exp is None else str(exp.experiment_id)


def latest_parent_run(experiment: str) -> str | None:
    """Id of the newest top-level run (not a nested child) of ``experiment``; None when there is none."""
    exp_id = find_experiment_id(experiment)
    if exp_id is None:
        return None
    runs = MlflowClient().search_runs(
        [exp_id],
        filter_string="attributes.status != 'DELETED'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return top[0].info.run_id if top else None


def alias_version(model: str, alias: str) -> str | None:
    """Version number the registered model's ``alias`` points at; None when the model or alias is absent."""
    try:
        return str(MlflowClient().get_model_version_by_alias(model, alias).version)
    except MlflowException:
        return None


# MLflow 3's UI opens an experiment in its GenAI (traces) view unless the experiment says it holds model
# training; every naslung experiment says so (the UI then shows runs, metrics and the model registry).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(name: str, artifacts_root: str | Path | None = None) -> str:
    """Id of experiment ``name``, created (artifacts at :func:`artifact_location`, tags
    :data:`EXPERIMENT_TAGS`) when absent; an existing experiment without the tags gets them."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            location = artifact_location(name, artifacts_root)
            return str(client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS))
        except MlflowException:  # created concurrently
            exp = client.get_experiment_by_name(name)
    assert exp is not None
    for key, value in EXPERIMENT_TAGS.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return str(exp.experiment_id)


def _tag_filter(tags: Mapping[str, str]) -> str:
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())


def _search(experiment_ids: list[str], filter_string: str) -> list[Any]:
    """Every run matching ``filter_string``, oldest first (all result pages)."""
    client = MlflowClient()
    out: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            order_by=["attributes.start_time ASC"],
            max_results=1000,
            page_token=token,
        )
        out.extend(page)
        token = page.token
        if not token:
            return out


def find_run(experiment: str, key_tags: Mapping[str, str]) -> str | None:
    """Id of the oldest run of ``experiment`` carrying all ``key_tags``, or None."""
    exp = MlflowClient().get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = _search([exp.experiment_id], _tag_filter(key_tags))
    return str(runs[0].info.run_id) if runs else None


def open_parent(
    experiment: str,
    run_name: str,
    key_tags: Mapping[str, str],
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
) -> tuple[str, bool]:
    """Reopen (RUNNING) the oldest run of ``experiment`` with all ``key_tags`` or create it (experiment
    created per :func:`experiment_id`; ``params`` logged on a new run only); returns (run id, resumed?)."""
    client = MlflowClient()
    exp_id = experiment_id(experiment)
    found = find_run(experiment, key_tags)
    if found is not None:
        client.update_run(found, status="RUNNING")
        return found, True
    commit = git_commit(Path(__file__).resolve().parent)
    source = {"mlflow.source.git.commit": commit} if commit else {}
    run = client.create_run(exp_id, run_name=run_name, tags={**key_tags, **source, **(tags or {})})
    values = _param_values(params)
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in values.items()])
    return str(run.info.run_id), False


def children(run_id: str | None, status: str | None = None) -> list[RunRecord]:
    """Nested runs of ``run_id`` (optionally only one status, e.g. ``FINISHED``), oldest first."""
    if run_id is None:
        return []
    parent = MlflowClient().get_run(run_id)
    filt = f"tags.`mlflow.parentRunId` = '{run_id}'"
    if status:
        filt += f" and attributes.status = '{status}'"
    return [
        RunRecord(r.info.run_id, r.info.status, dict(r.data.params), dict(r.data.metrics), dict(r.data.tags))
        for r in _search([parent.info.experiment_id], filt)
    ]


def end_run(run_id: str | None, status: str = "FINISHED") -> None:
    """Close run ``run_id`` (``FINISHED``, ``FAILED`` or ``KILLED``)."""
    if run_id is not None:
        MlflowClient().set_terminated(run_id, status=status)


def log_epoch(row: Mapping[str, float], run_id: str | None = None) -> None:
    """Per-epoch metrics (step = epoch) of the current run, or of run ``run_id``."""
    metrics = {("epoch_seconds" if k == "seconds" else k): v for k, v in row.items() if k != "epoch"}
    log_metrics(metrics, step=int(row["epoch"]), run_id=run_id)


def log_metrics(
    metrics: Mapping[str, float], prefix: str = "", *, step: int | None = None, run_id: str | None = None
) -> None:
    """Scalar metrics of the current run or of run ``run_id`` (nan/inf values are skipped: MLflow stores them
    poorly)."""
    values = _finite(metrics, prefix)
    if run_id is None:
        mlflow.log_metrics(values, step=step)
        return
    ts = _now_ms()  # the client splits a long batch into the store's limits
    MlflowClient().log_batch(run_id, metrics=[Metric(k, v, ts, step or 0) for k, v in values.items()])


def set_tags(tags: Mapping[str, str], run_id: str | None = None) -> None:
    if run_id is None:
        mlflow.set_tags(dict(tags))
        return
    MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_dict(obj: Any, artifact_file: str, run_id: str | None = None) -> None:
    if run_id is None:
        mlflow.log_dict(obj, artifact_file)
    else:
        MlflowClient().log_dict(run_id, obj, artifact_file)


def load_dict(run_id: str | None, artifact_file: str) -> Any | None:
    """The JSON artifact ``artifact_file`` (top level of the run) of run ``run_id``, or None."""
    if run_id is None:
        return None
    client = MlflowClient()
    if not any(f.path == artifact_file for f in client.list_artifacts(run_id)):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, artifact_file, tmp)).read_text(encoding="utf-8"))


def log_artifact(path: str | Path, artifact_path: str | None = None, run_id: str | None = None) -> None:
    if run_id is None:
        mlflow.log_artifact(str(path), artifact_path)
    else:
        MlflowClient().log_artifact(run_id, str(path), artifact_path)


class MlflowTracker:
    """:class:`naslung.tracker.Tracker` on MLflow (tracking URI, experiment and the current run are MLflow's
    own process/thread state, so the class holds none; the functions above do the work)."""

    configure = staticmethod(configure)
    training_run = staticmethod(training_run)
    open_parent = staticmethod(open_parent)
    children = staticmethod(children)
    end_run = staticmethod(end_run)
    log_manifest_input = staticmethod(log_manifest_input)
    log_epoch = staticmethod(log_epoch)
    log_metrics = staticmethod(log_metrics)
    set_tags = staticmethod(set_tags)
    log_dict = staticmethod(log_dict)
    load_dict = staticmethod(load_dict)
    log_artifact = staticmethod(log_artifact)
    log_model = staticmethod(log_model)


def run_summary(run_id: str) -> dict[str, Any]:
    """Params, metrics (latest values), tags and model URI of a run, read through MlflowClient."""
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ValueError(f"no MLflow run {run_id!r} in {mlflow.get_tracking_uri()}") from None
    models = list(run.outputs.model_outputs if run.outputs else [])
    model_uri = f"models:/{models[0].model_id}" if models else f"runs:/{run_id}/{MODEL_NAME}"
    return {
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "tags": dict(run.data.tags),
        "model_uri": model_uri,
    }
