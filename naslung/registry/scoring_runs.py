"""MLflow adapter for scoring runs: one run per scored CSV in the experiment ``serve.scoring_experiment``.

Called by the CLI (``naslung score``, unless ``--no-log``) and the inbox flow (``flows/score.py``) after the
results CSV and its run manifest are written (:mod:`naslung.scoring_csv.manifest`); the library core
never imports MLflow. What a scoring run holds:

- tags ``naslung.kind`` = ``score``, ``naslung.request_id``, ``naslung.input_sha256``,
  ``naslung.model.{name,version,alias,data_revision,git_commit}`` (the model that scored the rows) and a
  run description (``mlflow.note.content``) linking the registered model version;
- the registered version's logged model as the run's model input (``MlflowClient.log_inputs``; MLflow 3
  shows the run with the model), when the version has one;
- params: input file name and sha256, results path, reference profile present;
- metrics ``counts.*`` (rows, ok, error, pending, resumed, sent, scans), ``timings.*_s`` and
  ``drift.<quantity>.psi`` / ``.ks``, ``drift.max_psi``;
- artifacts: the manifest JSON and the drift PNG.

An unreachable or broken store never fails the scoring: :func:`log_scoring_run` warns and returns None
(HTTP stores are tried once, with a 10 s timeout, unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` /
``MLFLOW_HTTP_REQUEST_TIMEOUT`` say otherwise). On success the manifest file gains ``mlflow``: the
tracking URI, experiment and run id.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from naslung.card import TAG
from naslung.params import Params
from naslung.registry.store import configure

KIND = "score"


@contextmanager
def _quick_http() -> Iterator[None]:
    """Few retries and a short timeout for HTTP stores while logging (the user's settings win)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _metrics(manifest: Mapping[str, Any]) -> dict[str, float]:
    out = {f"counts.{k}": float(v) for k, v in (manifest.get("counts") or {}).items() if v is not None}
    out.update({f"timings.{k}_s": float(v) for k, v in (manifest.get("timings_s") or {}).items()})
    drift = manifest.get("drift") or {}
    for q, figs in (drift.get("quantities") or {}).items():
        for stat in ("psi", "ks"):
            if figs.get(stat) is not None:
                out[f"drift.{q}.{stat}"] = float(figs[stat])
    scores = drift.get("scores") or {}
    for stat in ("psi", "ks"):
        if scores.get(stat) is not None:
            out[f"drift.score.{stat}"] = float(scores[stat])
    if drift.get("max_psi") is not None:
        out["drift.max_psi"] = float(drift["max_psi"])
    return out


def _link(client: MlflowClient, run_id: str, name: str, version: str) -> str | None:
    """Log the version's logged model as the run's model input; its model id, or None."""
    try:
        mv = client.get_model_version(name, version)
    except MlflowException:
        return None
    model_id = getattr(mv, "model_id", None)
    source = str(getattr(mv, "source", "") or "")
    if not model_id and source.startswith("models:/m-"):  # MLflow 3 registers the logged model's URI
        model_id = source[len("models:/") :].split("/")[0]
    if not model_id:
        return None
    from mlflow.entities import LoggedModelInput

    client.log_inputs(run_id, models=[LoggedModelInput(model_id)])
    return str(model_id)


def _log(params: Params, manifest_file: Path) -> dict[str, Any]:
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    experiment = params.serve.scoring_experiment
    uri = configure(params, experiment)
    model = manifest.get("model") or {}
    name, version = model.get("name") or "", model.get("version") or ""
    csv = Path(str((manifest.get("input") or {}).get("path") or "input.csv"))
    tags = {
        TAG + "kind": KIND,
        TAG + "request_id": str(manifest.get("request_id") or ""),
        TAG + "input_sha256": str((manifest.get("input") or {}).get("sha256") or ""),
        **{
            TAG + f"model.{k}": str(model.get(k) or "")
            for k in ("name", "version", "alias", "data_revision", "git_commit")
        },
    }
    if name and version:
        tags["mlflow.note.content"] = (
            f"Scoring of `{csv.name}` by registered model [{name} version {version}](#/models/{name}/versions/"
            f"{version}) (alias {model.get('alias') or '-'}); request id {manifest.get('request_id')}."
        )
    client = MlflowClient()
    with mlflow.start_run(run_name=f"score-{csv.stem}") as run:
        run_id = run.info.run_id
        mlflow.set_tags(tags)
        mlflow.log_params(
            {
                "input": csv.name,
                "input_sha256": tags[TAG + "input_sha256"],
                "results": str((manifest.get("results") or {}).get("path") or ""),
                "model": f"{name}/{version}" if name else "",
                "reference_profile": bool(((manifest.get("drift") or {}).get("reference") or {}).get("given")),
            }
        )
        mlflow.log_metrics(_metrics(manifest))
        mlflow.log_artifact(str(manifest_file))
        png = (manifest.get("results") or {}).get("drift_png")
        if png and Path(png).is_file():
            mlflow.log_artifact(str(png))
        model_id = _link(client, run_id, name, version) if name and version else None
    return {"tracking_uri": uri, "experiment": experiment, "run_id": run_id, "model_id": model_id}


def log_scoring_run(params: Params, manifest_file: Path) -> str | None:
    """Log the scoring run of ``manifest_file`` (see the module docstring); its run id, or None with a
    warning when the store cannot be reached or refuses (the results and the manifest stay as they are)."""
    manifest_file = Path(manifest_file)
    try:
        with _quick_http():
            record = _log(params, manifest_file)
    except Exception as exc:  # any store failure: the scoring itself is done and written
        warnings.warn(
            f"{manifest_file}: scoring run not logged to MLflow ({type(exc).__name__}: {exc}); "
            "the results CSV and the manifest are complete",
            stacklevel=2,
        )
        return None
    try:
        data = json.loads(manifest_file.read_text(encoding="utf-8"))
        data["mlflow"] = record
        tmp = manifest_file.with_name(manifest_file.name + ".tmp")
        tmp.write_text(encoding="utf-8", data=json.dumps(data, indent=1, default=str) + "\n")
        os.replace(tmp, manifest_file)
    except (OSError, ValueError) as exc:
        warnings.warn(
            f"{manifest_file}: MLflow run {record['run_id']} not recorded in the manifest: {exc}", stacklevel=2
        )
    return str(record["run_id"])
