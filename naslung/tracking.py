"""MLflow adapter of the training area (the only module here that imports mlflow).

What one training run records (see :func:`training_run` and :func:`log_outcome`):

* params: spec fields, spec id, fold split, seed, loss type, CBAM flag, train/model hyper-parameters,
  device and threads; tags: ``mlflow.source.git.commit`` (``git rev-parse HEAD``; absent without git),
  spec id, fold, loss;
* metrics: per-epoch train/val loss and validation metrics (step = epoch), param count, FLOPs per nodule,
  latency (ms per nodule at each batch size) and the final test metrics prefixed ``test_``;
* artifacts: ``spec.json``, ``history.json``, ``test_predictions.csv``, ROC / confusion / curve PNGs under
  ``plots/``, and the model (``name="model"``) as a pyfunc :class:`NASLungPyfunc` wrapping the state dict
  and spec JSON, with the signature float32 (-1, 1, 32, 32, 32) -> malignancy probability (-1,);
* input: the patch manifest via ``mlflow.log_input`` (source = manifest path, digest = the md5 recorded
  for it in ``dvc.lock`` when the prepare stage is locked there, else the file's own md5).

Tracking URI: ``MLFLOW_TRACKING_URI`` when set, else ``params.paths.mlflow_uri``; telemetry is switched off.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
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
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from naslung.lineage import file_md5, git_commit, stage_outs_md5

MODEL_NAME = "model"
INPUT_SHAPE = (-1, 1, 32, 32, 32)


def set_uri(uri: str | None) -> str:
    """Point MLflow tracking and registry at ``MLFLOW_TRACKING_URI`` or ``uri`` (default the embedded
    ``sqlite:///mlflow/mlflow.db``), creating a sqlite database's folder; returns the URI in use."""
    resolved = os.environ.get("MLFLOW_TRACKING_URI") or uri or "sqlite:///mlflow/mlflow.db"
    if resolved.startswith("sqlite:///"):
        Path(resolved[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    return resolved


def configure(uri: str | None, experiment: str = "naslung-train", artifacts_root: str | Path | None = None) -> str:
    """Point MLflow tracking and registry at ``MLFLOW_TRACKING_URI`` or ``uri`` and select ``experiment``.

    For a database store without a server (``sqlite:///…``, ``postgresql://…``) the sqlite folder is created
    and a new experiment keeps its artifacts under ``artifacts_root`` (params ``paths.mlflow_artifacts``)
    instead of MLflow's default ``./mlruns`` in the current directory. A server URI (``http(s)://``) leaves
    artifact storage to the server. Returns the URI in use.
    """
    resolved = set_uri(uri)
    served = resolved.startswith(("http://", "https://", "databricks"))
    if not served and artifacts_root is not None and mlflow.get_experiment_by_name(experiment) is None:
        root = Path(artifacts_root).resolve() / experiment
        root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(MlflowException):  # created concurrently
            mlflow.create_experiment(experiment, artifact_location=root.as_uri())
    mlflow.set_experiment(experiment)
    return resolved


def data_digest(manifest: str | Path, dvc_lock: str | Path | None = None) -> dict[str, str]:
    """md5 of the manifest (and patches when listed) from ``dvc.lock``; the manifest file's md5 otherwise.

    Returns {"digest": ..., "origin": "dvc.lock" | "file", optionally "patches_md5": ...}.
    """
    manifest = Path(manifest).resolve()
    if dvc_lock is not None:
        outs = stage_outs_md5(dvc_lock, "prepare")
        if outs.get(manifest):
            found = {"digest": str(outs[manifest]), "origin": "dvc.lock"}
            patches_md5 = outs.get(manifest.parent / "patches.npy")
            if patches_md5:
                found["patches_md5"] = str(patches_md5)
            return found
    return {"digest": file_md5(manifest), "origin": "file"}


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
        tags = {"digest_origin": info["origin"]}
        if "patches_md5" in info:
            tags["patches_md5"] = info["patches_md5"]
        mlflow.log_input(ds, context=context, tags=tags)


# --- model flavour ----------------------------------------------------------------------------------


class NASLungPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of one NASLungNet or DnasNet: artifacts ``weights`` (state dict .pt) and ``spec`` (JSON).

    ``predict`` takes float32 (n, 1, 32, 32, 32) (or (n, 32, 32, 32)) in [0, 1] and returns the
    malignancy probability softmax(model(x))[:, 1] as float32 (n,).
    """

    def load_context(self, context: Any) -> None:
        from naslung.models.factory import build, spec_from_dict

        meta = json.loads(Path(context.artifacts["spec"]).read_text(encoding="utf-8"))
        self.spec = spec_from_dict(meta["spec"])  # ArchSpec or DNAS-derived DnasArch
        self.model = build(self.spec, margin_m=int(meta.get("margin_m", 4)))
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval()

    # np.ndarray is a hint MLflow does not infer a schema from: the explicit tensor signature governs input.
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        if isinstance(model_input, dict):  # a named-tensor payload: {"patch": array}
            (model_input,) = model_input.values()
        x = np.asarray(model_input, dtype=np.float32)
        if x.ndim == 4:
            x = x[:, None]
        if x.ndim != 5 or x.shape[1:] != (1, 32, 32, 32):
            raise ValueError(f"NASLungPyfunc: expected (n, 1, 32, 32, 32) float32, got {x.shape}")
        with torch.no_grad():
            logits = self.model(torch.from_numpy(np.ascontiguousarray(x)))
            return torch.softmax(logits.float(), dim=1)[:, 1].numpy().astype(np.float32)


def model_signature() -> ModelSignature:
    """float32 (-1, 1, 32, 32, 32) -> float32 (-1,) malignancy probability."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), INPUT_SHAPE)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,))]),
    )


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


@contextmanager
def training_run(
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[str]:
    """Start an MLflow run, log ``params`` (flat) and tags incl. the git commit; yields the run id."""
    with mlflow.start_run(run_name=run_name, parent_run_id=parent_run_id, nested=parent_run_id is not None) as run:
        commit = git_commit(Path(__file__).resolve().parent)
        all_tags = dict(tags or {})
        if commit:
            all_tags["mlflow.source.git.commit"] = commit
        mlflow.set_tags(all_tags)
        mlflow.log_params({k: (json.dumps(v) if isinstance(v, (list, tuple, dict)) else v) for k, v in params.items()})
        yield run.info.run_id


def log_epoch(row: Mapping[str, float]) -> None:
    """Per-epoch metrics of the active run (step = epoch)."""
    step = int(row["epoch"])
    metrics = {("epoch_seconds" if k == "seconds" else k): float(v) for k, v in row.items() if k != "epoch"}
    mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)}, step=step)


def log_metrics(metrics: Mapping[str, float], prefix: str = "") -> None:
    """Scalar metrics of the active run (nan/inf values are skipped: MLflow stores them poorly)."""
    mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in metrics.items() if np.isfinite(float(v))})


def log_dict(obj: Any, artifact_file: str) -> None:
    mlflow.log_dict(obj, artifact_file)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path)


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
