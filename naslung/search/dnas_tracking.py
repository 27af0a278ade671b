"""MLflow adapter of the differentiable search (the only DNAS module that imports mlflow).

Layout, like the POP search (:mod:`naslung.search.tracking`, whose helpers it reuses): one parent run per
search (tags ``naslung.role = search``, ``naslung.search_id``, ``naslung.strategy = dnas``) with the search
params, per-epoch supernet metrics (``tau``, ``w_loss``, ``alpha_loss``, ``alpha_accuracy``,
``alpha_entropy``, ``alpha_grad_norm``; step = epoch) and ``alphas.json``; one nested run per derived
architecture (``naslung.role = candidate``) with params ``spec`` (``dnas[...]``), ``spec_json``,
``spec_id`` (``d-...``), ``epochs``, ``seed``, ``device``, ``latency_unit``, ``search_id``, ``strategy``;
metrics ``accuracy`` (validation), ``latency``, ``flops``, ``n_params``, ``train_seconds``, ``best_epoch``,
``log_prob``, ``best_val_<m>``, per-epoch curves; artifacts ``candidate.json``, ``model/weights.pt``
(state dict) and ``model/arch.json``. At the end the parent gets the summary metrics, ``alphas.json``
and the output files under ``search/``.

:class:`MlflowDnasTracker` bundles these for :func:`naslung.search.dnas_run.run_dnas_search` (its
:class:`~naslung.search.dnas_run.DnasTracker`); on a rerun with the same search id it reopens the parent,
marks derived runs a killed run left RUNNING as KILLED and hands back the FINISHED ones for reuse.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from naslung.search import tracking as pop_tracking

STRATEGY_TAG = "naslung.strategy"


def open_parent(uri: str, experiment: str, search_id: str, params: Mapping[str, Any]) -> tuple[str, str]:
    """Configure MLflow and create (or reuse) the parent run; returns (experiment id, run id)."""
    pop_tracking.configure(uri)
    exp_id = pop_tracking.experiment_id(experiment)
    run_id, _ = pop_tracking.open_parent(exp_id, search_id, params, {STRATEGY_TAG: "dnas"})
    return exp_id, run_id


def log_epoch(parent_run_id: str, row: Mapping[str, float]) -> None:
    step = int(row["epoch"])
    MlflowClient().log_batch(
        parent_run_id,
        metrics=[Metric(k, float(v), pop_tracking._now_ms(), step) for k, v in row.items() if k != "epoch" and v == v],
    )


def log_derived(
    parent_run_id: str, exp_id: str, record: Mapping[str, Any], model: torch.nn.Module, search_id: str
) -> str:
    """Nested run of one retrained derived architecture (see module docstring); returns its run id."""
    with mlflow.start_run(
        experiment_id=exp_id,
        run_name=f"dnas-{record['spec_id']}",
        parent_run_id=parent_run_id,
        nested=True,
        tags={
            pop_tracking.SEARCH_ID_TAG: search_id,
            pop_tracking.ROLE_TAG: "candidate",
            STRATEGY_TAG: "dnas",
            "naslung.spec_id": record["spec_id"],
        },
    ) as run:
        rid = run.info.run_id
        client = MlflowClient()
        params = {k: record[k] for k in ("epochs", "seed", "device", "latency_unit")}
        params.update(
            spec=record["ref_string"],
            spec_json=json.dumps(record["spec"], sort_keys=True),
            spec_id=record["spec_id"],
            search_id=search_id,
            strategy="dnas",
        )
        metrics = {
            k: record[k]
            for k in ("accuracy", "latency", "flops", "n_params", "train_seconds", "best_epoch", "log_prob")
            if k in record
        }
        metrics.update({f"best_val_{k}": v for k, v in record["val_metrics"].items()})
        ts = pop_tracking._now_ms()
        batch = [Metric(k, float(v), ts, 0) for k, v in metrics.items() if float(v) == float(v)]
        for row in record.get("history", []):
            batch += [Metric(k, float(v), ts, int(row["epoch"])) for k, v in row.items() if k != "epoch" and v == v]
        client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()])
        for i in range(0, len(batch), 900):
            client.log_batch(rid, metrics=batch[i : i + 900])
        mlflow.log_dict(dict(record), "candidate.json")
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, Path(tmp) / "weights.pt")
            (Path(tmp) / "arch.json").write_text(encoding="utf-8", data=json.dumps(record["spec"], indent=1))
            mlflow.log_artifacts(tmp, "model")
    return rid


def finish_parent(parent_run_id: str, summary: Mapping[str, Any], alphas: Any, files: Mapping[str, Path]) -> None:
    pop_tracking.save_parent_json(parent_run_id, alphas, "alphas.json")
    pop_tracking.finish_parent(parent_run_id, summary, files)


def fail_parent(parent_run_id: str) -> None:
    pop_tracking.fail_parent(parent_run_id)


def finished_derived(parent_run_id: str) -> dict[str, dict[str, Any]]:
    """Records of the FINISHED derived-model runs of a parent (rebuilt from params/metrics), by spec id."""
    out: dict[str, dict[str, Any]] = {}
    for run in pop_tracking.children(parent_run_id, "FINISHED"):
        p, m = run.data.params, run.data.metrics
        if "spec_json" not in p or "accuracy" not in m:
            continue
        spec = json.loads(p["spec_json"])
        out.setdefault(
            p["spec_id"],
            {
                "spec": spec,
                "spec_id": p["spec_id"],
                "ref_string": p.get("spec", ""),
                "strategy": "dnas",
                "ops": list(spec.get("ops", [])),
                "accuracy": m["accuracy"],
                "latency": m["latency"],
                "latency_unit": p.get("latency_unit", ""),
                "flops": int(m.get("flops", 0)),
                "n_params": int(m.get("n_params", 0)),
                "val_metrics": {k[len("best_val_") :]: v for k, v in m.items() if k.startswith("best_val_")},
                "best_epoch": int(m.get("best_epoch", 0)),
                "epochs": int(p.get("epochs", 0)),
                "seed": int(p.get("seed", 0)),
                "device": p.get("device", ""),
                "train_seconds": float(m.get("train_seconds", 0.0)),
                "run_id": run.info.run_id,
            },
        )
    return out


class MlflowDnasTracker:
    """:class:`~naslung.search.dnas_run.DnasTracker` on MLflow: opens (or reopens) the parent run of
    ``search_id`` in ``experiment`` at construction; ``params`` are logged on a new parent."""

    def __init__(self, uri: str, experiment: str, search_id: str, params: Mapping[str, Any]) -> None:
        self.search_id = search_id
        self.exp_id, self.parent_run_id = open_parent(uri, experiment, search_id, params)

    def known(self) -> dict[str, dict[str, Any]]:
        pop_tracking.close_stale_children(self.parent_run_id)
        return finished_derived(self.parent_run_id)

    def log_epoch(self, row: Mapping[str, float]) -> None:
        log_epoch(self.parent_run_id, row)

    def log_derived(self, record: Mapping[str, Any], model: torch.nn.Module) -> str:
        return log_derived(self.parent_run_id, self.exp_id, record, model, self.search_id)

    def finish(self, summary: Mapping[str, Any], alphas: Any, files: Mapping[str, Path]) -> None:
        finish_parent(self.parent_run_id, summary, alphas, files)

    def fail(self) -> None:
        fail_parent(self.parent_run_id)


def tracker_params(params: Any, search_id: str) -> dict[str, Any]:
    """Flat parent-run params of a DNAS search: ``dnas.<key>`` for the dnas section plus strategy, fold,
    seed, latency source and the search id."""
    from naslung.params import to_dict

    flat = {f"dnas.{k}": json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in to_dict(params.dnas).items()}
    return {
        **flat,
        "strategy": "dnas",
        "fold": params.search.fold,
        "seed": params.seed,
        "latency_source": params.search.latency_source,
        "k_select": params.search.k_select,
        "search_id": search_id,
    }
