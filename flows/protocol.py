"""Prefect 3 flow ``protocol``: the paper's evaluation protocol end to end on a named parameter set, in its own
folder (``naslung protocol --set-file experiments/paper.yaml``; ``make paper``).

A *set* is a YAML mapping of dotted params keys to values (what ``naslung --set`` takes), named after its file
(``experiments/paper.yaml`` -> ``paper``). The flow is thin: each step is the library's or another flow's —

synth (:func:`naslung.data.synth.synthesize`, skipped when the folder already holds the same set) ->
prepare (:func:`naslung.data.prepare.prepare`) -> validate (:func:`naslung.validation.validate`; a failure stops
the run) -> search (the ``search`` flow: POP or DNAS by ``search.strategy``) -> ``train_ensemble`` (one member
per selected spec and test fold of ``ensemble.folds``) -> ``evaluate`` (ensemble vs the diameter-only and
voxel-statistics baselines, bootstrap intervals, paired tests) -> ``protocol.json``.

Every path of the run lies under ``runs/<set>/`` (``out_root``): ``data/`` (paths.raw, the annotations),
``artifacts/`` (paths.artifacts: patch store, metrics), ``search/`` (search.out_dir, dnas.out_dir below it),
``ensemble/`` (ensemble.out_dir; ensemble.members = the run's own selected.json) and an MLflow store of its own
(``mlflow.db``, ``mlflow-artifacts/``; ``MLFLOW_TRACKING_URI`` still wins), so a protocol run never touches the
default pipeline's data, artifacts, search, ensemble or MLflow store. A set cannot set those keys.

``protocol.json`` collects: the set and its overrides, the device, wall time per step, the data counts, the
validation result, the search summary (trained, pruned, front, best score with its interval), and, per test
fold and pooled, the ensemble and both baselines (estimate and 95 % interval of accuracy, sensitivity,
specificity, F1, AUC) with the paired tests, plus the folds flagged by the selection provenance.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.ensemble import evaluate, train_ensemble, validate_task
from flows.search import run_search
from naslung.artifact_paths import ArtifactPaths
from naslung.data.prepare import prepare
from naslung.data.synth import synthesize
from naslung.params import Params, load_params, parse_value, to_dict

RUN_KEYS = (
    "paths.raw",
    "paths.annotations",
    "paths.artifacts",
    "paths.mlflow_uri",
    "paths.mlflow_artifacts",
    "search.out_dir",
    "dnas.out_dir",
    "ensemble.out_dir",
    "ensemble.members",
)
"""Keys the protocol sets itself (a run's own folder); a set that names one is refused."""
METRICS = ("accuracy", "sensitivity", "specificity", "f1", "auc")
SYNTH_SAME = ("generator_version", "seed", "n_scans", "nodules_per_scan", "crop_margin_mm")


def read_set_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A set file: a YAML mapping of dotted params keys to values (``search.budget: 100``). Keys are checked
    against the schema (an unknown key is an error naming it); text values are read as ``--set`` reads them.
    The run's own paths (:data:`RUN_KEYS`) are refused."""
    p = Path(path)
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping of SECTION.KEY: VALUE, got {type(data).__name__}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        if key in RUN_KEYS:
            raise ValueError(f"{p}: '{key}' is set by the protocol (the run's own folder), not by a set")
        out[key] = parse_value(key, value) if isinstance(value, str) else value
    return out


def run_overrides(out_root: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's own paths under ``out_root`` (:data:`RUN_KEYS`)."""
    root = Path(out_root)
    return {
        "paths.raw": str(root / "data"),
        "paths.annotations": str(root / "data" / "annotations_with_malignancy.csv"),
        "paths.artifacts": str(root / "artifacts"),
        "paths.mlflow_uri": f"sqlite:///{root / 'mlflow.db'}",
        "paths.mlflow_artifacts": str(root / "mlflow-artifacts"),
        "search.out_dir": str(root / "search"),
        "dnas.out_dir": str(root / "search" / "dnas"),
        "ensemble.out_dir": str(root / "ensemble"),
        "ensemble.members": str(root / "search" / "selected.json"),
    }


def device_description(params: Params) -> str:
    """The device training runs on (``train.device``), in words: GPU name, or the CPU with its core count."""
    import torch

    from naslung.train.loop import resolve_device

    device = torch.device(resolve_device(params.train.device))
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {os.cpu_count()} cores, {params.train.num_threads} torch threads (torch {torch.__version__})"


@task(name="synth", cache_policy=NO_CACHE)
def synth_task(params: Params) -> dict[str, Any]:
    """The set's synthetic dataset into ``paths.raw``; reused when that folder's summary is the same set's."""
    out = Path(params.paths.raw)
    summary_file = out / "synth_summary.json"
    if summary_file.exists():
        from naslung.data.synth import GENERATOR_VERSION

        old = json.loads(summary_file.read_text(encoding="utf-8"))
        want = {
            "generator_version": GENERATOR_VERSION,
            "seed": params.synth.seed,
            "n_scans": params.synth.n_scans,
            "nodules_per_scan": list(params.synth.nodules_per_scan),
            "crop_margin_mm": params.synth.crop_margin_mm,
        }
        if old.get("rendered") and all(old.get(k) == want[k] for k in SYNTH_SAME):
            return {**old, "reused": True}
    return {**synthesize(out, params.synth, progress=False), "reused": False}


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(params: Params) -> dict[str, Any]:
    return prepare(params.paths.raw, params.paths.annotations, params.paths.artifacts, params.prepare, progress=False)


def _interval(iv: Mapping[str, Any]) -> dict[str, float | None]:
    return {k: (None if iv.get(k) is None else float(iv[k])) for k in ("estimate", "low", "high")}


def _scorers(report: Mapping[str, Any]) -> dict[str, Any]:
    """``{n, n_malignant, ensemble: {metric: interval}, <baseline>: {...}, tests: {<baseline>: p-values}}``."""
    out: dict[str, Any] = {
        "n": int(report["n"]),
        "n_malignant": int(report["n_malignant"]),
        "ensemble": {m: _interval(report["model"][m]) for m in METRICS},
    }
    for name, base in report.get("baselines", {}).items():
        out[name] = {m: _interval(base[m]) for m in METRICS}
    out["tests"] = {
        name: {
            "p_accuracy_mcnemar": t["accuracy_mcnemar"]["p_value"],
            "auc_difference": _interval(
                {
                    "estimate": t["auc_paired_bootstrap"]["difference"],
                    "low": t["auc_paired_bootstrap"]["low"],
                    "high": t["auc_paired_bootstrap"]["high"],
                }
            ),
            "p_auc_paired_bootstrap": t["auc_paired_bootstrap"]["p_value"],
        }
        for name, t in report.get("tests", {}).items()
    }
    return out


SEARCH_KEYS = (
    "strategy",
    "search_id",
    "space_size",
    "trained",
    "pruned",
    "covered",
    "covered_fraction",
    "fraction_trained",
    "front_size",
    "iterations",
    "stop_reason",
    "best_spec",
    "best_score",
    "best_score_low",
    "best_score_high",
    "objective",
    "n_val",
    "latency_source",
    "latency_unit",
    "selected",
    "selected_trained",
    "selected_untrained",
    "wall_seconds",
)


def collect(
    params: Params,
    *,
    name: str,
    overrides: Mapping[str, Any],
    steps: Mapping[str, float],
    data: Mapping[str, Any],
    validation: Mapping[str, Any],
    search: Mapping[str, Any],
    device: str,
) -> dict[str, Any]:
    """The content of ``protocol.json`` from the steps' results and ``metrics_detail.json``."""
    paths = ArtifactPaths.from_params(params)
    detail = json.loads(paths.artifacts.metrics_detail.read_text(encoding="utf-8"))
    comp = detail["comparison"]
    prov = detail["selection_provenance"]
    return {
        "set": name,
        "overrides": dict(overrides),
        "device": device,
        "wall_seconds": round(sum(steps.values()), 1),
        "step_seconds": {k: round(v, 1) for k, v in steps.items()},
        "data": dict(data),
        "validation_success": bool(validation.get("success")),
        "search": {k: search[k] for k in SEARCH_KEYS if k in search},
        "ensemble": {
            "folds": detail["folds"],
            "n_members": detail["n_members"],
            "members": detail["member_names"],
            "pooled": _scorers(comp["pooled"]),
            "per_fold": {str(f): _scorers(r) for f, r in comp["per_fold"].items()},
            "fold_mean_std": detail["ensemble"]["mean_std"],
            "intervals": f"stratified bootstrap {comp.get('level', 0.95):g} ({comp.get('n_boot')} resamples); "
            "p: exact McNemar (accuracy), paired bootstrap (AUC difference)",
        },
        "selection_provenance": prov,
        "flagged_folds": prov.get("flagged_folds", []),
        "headline": detail["summary"],
        "paths": {k.split(".", 1)[1] if k.startswith("paths.") else k: str(v) for k, v in run_overrides_of(params)},
        "params": to_dict(params),
    }


def run_overrides_of(params: Params) -> list[tuple[str, Any]]:
    """The values of :data:`RUN_KEYS` in ``params``."""
    flat = to_dict(params)
    out = []
    for key in RUN_KEYS:
        section, leaf = key.split(".")
        out.append((key, flat[section][leaf]))
    return out


@flow(name="protocol", log_prints=True, validate_parameters=False)
def protocol(
    params_path: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    name: str = "protocol",
    out_root: str | None = None,
) -> dict[str, Any]:
    """The protocol on ``params_path`` + ``overrides`` (a set's keys, then any ``--set``) in ``out_root``
    (default ``runs/<name>``); writes and returns ``<out_root>/protocol.json``."""
    root = Path(out_root or Path("runs") / name)
    for key in overrides or {}:
        if key in RUN_KEYS:
            raise ValueError(f"protocol: '{key}' is set by the protocol (the run's own folder under {root})")
    sets = {**(overrides or {}), **run_overrides(root)}
    params = load_params(params_path, overrides=sets)
    root.mkdir(parents=True, exist_ok=True)
    device = device_description(params)
    steps: dict[str, float] = {}

    def timed(step: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        steps[step] = time.perf_counter() - t0
        print(f"protocol {name}: {step} done in {steps[step]:.1f} s")
        return out

    synth = timed("synth", synth_task, params)
    prep = timed("prepare", prepare_task, params)
    checked = timed("validate", validate_task, params)
    if not checked["success"]:
        suites = {k: v["success"] for k, v in checked["suites"].items()}
        raise RuntimeError(f"protocol {name}: data validation failed ({suites}); see {params.paths.artifacts}")
    search = timed("search", run_search, params, progress=False)
    timed("train", train_ensemble, params_path, sets)
    timed("evaluate", evaluate, params_path, sets)
    data = {
        "synth": {
            k: synth.get(k) for k in ("n_scans", "n_nodules", "n_labelled", "n_malignant", "raw_bytes", "reused")
        },
        "prepare": {k: prep.get(k) for k in ("n_nodules", "n_malignant", "n_benign", "n_rejected")},
    }
    result = collect(
        params,
        name=name,
        overrides=overrides or {},
        steps=steps,
        data=data,
        validation=checked,
        search=search,
        device=device,
    )
    out = root / "protocol.json"
    out.write_text(encoding="utf-8", data=json.dumps(result, indent=1, default=str) + "\n")
    print(f"protocol {name}: {out} ({result['wall_seconds']:.0f} s on {result['device']})")
    return result
