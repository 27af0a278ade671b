"""MLflow adapter of the architecture search (with ``flows/`` the only search code that imports mlflow).

Layout: one parent run per search (experiment ``search.experiment``), tagged ``naslung.search_id``; one
nested run per trained candidate (tag ``mlflow.parentRunId`` = parent, ``naslung.role`` = candidate) with

* params: ``spec`` (reference string), ``spec_json``, ``spec_id``, ``depths``, ``epochs``, ``seed``, ``device``,
  ``latency_unit``, ``search_id``;
* metrics: ``accuracy`` (validation), ``latency``, ``flops``, ``n_params``, ``train_seconds``, ``best_epoch``,
  ``best_val_<m>`` for each validation metric, and the per-epoch curves (``train_loss``, ``val_loss``,
  ``val_accuracy``, ``val_f1``, ``val_auc`` ..., step = epoch);
* artifact ``candidate.json`` (the full record).

The parent gets per-iteration metrics (``trained``, ``pruned``, ``pruned_iteration``, ``front_size``,
step = iteration), ``latency_cache.json`` (latencies used by pruning decisions, so a resumed search replays
them) and, at the end, the summary metrics and the output files.

MLflow's active run is per thread and candidates may train in parallel threads or Dask workers, so the
parent run is handled through :class:`mlflow.MlflowClient` by id and every candidate run is opened with
``mlflow.start_run(parent_run_id=..., nested=True)`` — never through an implicit active run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

SEARCH_ID_TAG = "naslung.search_id"
ROLE_TAG = "naslung.role"
PARENT_TAG = "mlflow.parentRunId"


def configure(uri: str) -> str:
    """Set the tracking URI (``MLFLOW_TRACKING_URI`` wins; see :func:`naslung.tracking.set_uri`)."""
    from naslung.tracking import set_uri

    return set_uri(uri)


def artifact_root() -> str | None:
    """``<folder of the sqlite db>/artifacts`` as a file URI for a sqlite tracking store (never ./mlruns of
    whatever the working folder is); None (the server decides) otherwise."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).resolve().parent / "artifacts").as_uri()
    return None


def experiment_id(name: str, client: MlflowClient | None = None) -> str:
    client = client or MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root())
    except mlflow.exceptions.MlflowException:  # created concurrently
        return client.get_experiment_by_name(name).experiment_id  # type: ignore[union-attr]


def find_parent(exp_id: str, search_id: str) -> str | None:
    """Run id of the parent run of ``search_id`` (oldest first if there were several), or None."""
    runs = MlflowClient().search_runs(
        [exp_id],
        filter_string=f"tags.`{SEARCH_ID_TAG}` = '{search_id}' and tags.`{ROLE_TAG}` = 'search'",
        order_by=["attributes.start_time ASC"],
    )
    return runs[0].info.run_id if runs else None


def open_parent(exp_id: str, search_id: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> tuple[str, bool]:
    """Reuse the parent run of ``search_id`` or create it; returns (run id, resumed?)."""
    client = MlflowClient()
    found = find_parent(exp_id, search_id)
    if found is not None:
        client.update_run(found, status="RUNNING")
        return found, True
    run = client.create_run(
        exp_id, run_name=f"search-{search_id}", tags={SEARCH_ID_TAG: search_id, ROLE_TAG: "search", **tags}
    )
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run.info.run_id, False


def children(parent_run_id: str, status: str | None = None) -> list[Any]:
    """Nested candidate runs of a parent (optionally only one status, e.g. ``FINISHED``), oldest first."""
    client = MlflowClient()
    parent = client.get_run(parent_run_id)
    filt = f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    if status:
        filt += f" and attributes.status = '{status}'"
    out: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id],
            filter_string=filt,
            order_by=["attributes.start_time ASC"],
            max_results=1000,
            page_token=token,
        )
        out.extend(page)
        token = page.token
        if not token:
            return out


def close_stale_children(parent_run_id: str) -> int:
    """Mark candidate runs left RUNNING by a killed search as KILLED; returns how many."""
    client = MlflowClient()
    stale = children(parent_run_id, "RUNNING")
    for run in stale:
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(stale)


def finished_records(parent_run_id: str) -> list[dict[str, Any]]:
    """Candidate records of the FINISHED nested runs (rebuilt from params and metrics), oldest first."""
    records = []
    for run in children(parent_run_id, "FINISHED"):
        p, m = run.data.params, run.data.metrics
        spec = json.loads(p["spec_json"])
        records.append(
            {
                "spec": spec,
                "spec_id": p["spec_id"],
                "ref_string": p.get("spec", ""),
                "stages": spec["stages"],
                "accuracy": m["accuracy"],
                "latency": m["latency"],
                "latency_unit": p.get("latency_unit", ""),
                "flops": int(m.get("flops", 0)),
                "n_params": int(m.get("n_params", 0)),
                "val_metrics": {k[len("best_val_") :]: v for k, v in m.items() if k.startswith("best_val_")},
                "best_epoch": int(m.get("best_epoch", 0)),
                "epochs": int(p.get("epochs", 0)),
                "run_id": run.info.run_id,
            }
        )
    return records


def log_candidate(parent_run_id: str, exp_id: str, record: Mapping[str, Any], search_id: str, iteration: int) -> str:
    """One nested run for a trained candidate (see module docstring); returns its run id."""
    history = record.get("history", [])
    with mlflow.start_run(
        experiment_id=exp_id,
        run_name=f"cand-{record['spec_id']}",
        parent_run_id=parent_run_id,
        nested=True,
        tags={
            SEARCH_ID_TAG: search_id,
            ROLE_TAG: "candidate",
            "naslung.spec_id": record["spec_id"],
            "naslung.iteration": str(iteration),
        },
    ) as run:
        client = MlflowClient()
        rid = run.info.run_id
        spec = record["spec"]
        params = {
            "spec": record["ref_string"],
            "spec_json": json.dumps(spec, sort_keys=True),
            "spec_id": record["spec_id"],
            "depths": "x".join(str(len(st)) for st in record["stages"]),
            "epochs": record["epochs"],
            "seed": record["seed"],
            "device": record["device"],
            "latency_unit": record["latency_unit"],
            "search_id": search_id,
        }
        metrics = {
            "accuracy": record["accuracy"],
            "latency": record["latency"],
            "flops": record["flops"],
            "n_params": record["n_params"],
            "train_seconds": record["train_seconds"],
            "train_started_at": record["started_at"],
            "train_finished_at": record["finished_at"],
            "best_epoch": record["best_epoch"],
            **{f"best_val_{k}": v for k, v in record["val_metrics"].items()},
        }
        ts = int(record.get("finished_at", 0) * 1000)
        batch = [Metric(k, float(v), ts, 0) for k, v in metrics.items()]
        for row in history:
            step = int(row.get("epoch", 0))
            batch += [Metric(k, float(v), ts, step) for k, v in row.items() if k != "epoch"]
        client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()])
        for i in range(0, len(batch), 900):
            client.log_batch(rid, metrics=batch[i : i + 900])
        mlflow.log_dict(dict(record), "candidate.json")
    return rid


def log_iteration(parent_run_id: str, iteration: int, values: Mapping[str, float]) -> None:
    MlflowClient().log_batch(
        parent_run_id, metrics=[Metric(k, float(v), _now_ms(), iteration) for k, v in values.items()]
    )


def save_parent_json(parent_run_id: str, data: Any, name: str) -> None:
    MlflowClient().log_dict(parent_run_id, data, name)


def load_parent_json(parent_run_id: str, name: str) -> Any | None:
    import tempfile

    client = MlflowClient()
    if not any(f.path == name for f in client.list_artifacts(parent_run_id)):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(parent_run_id, name, tmp)).read_text(encoding="utf-8"))


def finish_parent(parent_run_id: str, summary: Mapping[str, Any], files: Mapping[str, Path]) -> None:
    client = MlflowClient()
    numeric = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    client.log_batch(
        parent_run_id,
        metrics=[Metric(k, v, _now_ms(), 0) for k, v in numeric.items()],
        tags=[RunTag("naslung.stop_reason", str(summary.get("stop_reason", "")))],
    )
    for path in files.values():
        client.log_artifact(parent_run_id, str(path), "search")
    client.set_terminated(parent_run_id, status=RunStatus.to_string(RunStatus.FINISHED))


def fail_parent(parent_run_id: str) -> None:
    MlflowClient().set_terminated(parent_run_id, status="FAILED")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
