"""MLflow Model Registry adapter for the ensemble: register with lineage, promotion gate, rollback.

The only module of the ensemble area that imports mlflow (next to :mod:`naslung.tracking`).

* :class:`EnsemblePyfunc` — ``mlflow.pyfunc.PythonModel`` carrying the ensemble directory
  (:meth:`naslung.ensemble.model.Ensemble.save`) as the artifact ``ensemble``. Input: float32 tensor
  (-1, 1, 32, 32, 32) (patches in [0, 1], (z, y, x)); output: a DataFrame with ``probability`` (mean
  member probability), ``label`` (majority vote), ``votes`` and one ``prob_<member>`` column per member.
* :func:`register` — one MLflow run (experiment ``ensemble.experiment``) that logs the evaluation metrics,
  plots, the patch manifest as dataset input and the pyfunc model, registered under ``registry.name``.
  The new version gets lineage tags (``naslung.*``: data hash and md5s from dvc.lock, git commit, params
  hash, search run id, member training run ids, validation result, per-fold F1), a description that says
  how to reproduce it, the model card (``model_card.md``, also inside the model artifact) and the alias
  ``challenger``.
* :func:`promote` — the gate: data validation passed AND challenger mean F1 >= champion mean F1 -
  ``registry.f1_tolerance`` on the folds both were evaluated on. On success: ``champion`` -> challenger,
  old champion -> ``previous``. Every decision is tagged on the version (``naslung.gate.*``) and printed.
* :func:`rollback` — ``champion`` <-> ``previous``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec

from naslung.params import Params, to_dict

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
INPUT_SHAPE = (-1, 1, 32, 32, 32)
TAG = "naslung."


# --- pyfunc -------------------------------------------------------------------------------------------


class EnsemblePyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of :class:`~naslung.ensemble.model.Ensemble` (artifact ``ensemble`` = its directory)."""

    def load_context(self, context: Any) -> None:
        from naslung.ensemble.model import Ensemble

        device = "cuda" if torch.cuda.is_available() and os.environ.get("NASLUNG_DEVICE", "cpu") == "cuda" else "cpu"
        self.ensemble = Ensemble.load(context.artifacts["ensemble"], device=device)

    # model_input is left without a type hint on purpose: the explicit tensor signature governs it.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        if isinstance(model_input, dict):  # a named tensor input arrives as {name: array}
            model_input = model_input.get("patch", next(iter(model_input.values())))
        x = np.asarray(model_input, dtype=np.float32)
        if x.ndim == 4:
            x = x[:, None]
        if x.ndim != 5 or x.shape[1:] != (1, 32, 32, 32):
            raise ValueError(f"EnsemblePyfunc: expected (n, 1, 32, 32, 32) float32 patches, got {x.shape}")
        pred = self.ensemble.predict(x)
        out = pd.DataFrame(
            {
                "probability": pred.prob.astype(np.float32),
                "label": pred.label.astype(np.int64),
                "votes": pred.votes.astype(np.int64),
            }
        )
        for j, name in enumerate(self.ensemble.member_names):
            out[f"prob_{name}"] = pred.member_probs[:, j].astype(np.float32)
        return out


def signature(member_names: list[str]) -> ModelSignature:
    """float32 tensor (-1, 1, 32, 32, 32) -> probability, label, votes, prob_<member> columns."""
    cols = [ColSpec("float", "probability"), ColSpec("long", "label"), ColSpec("long", "votes")]
    cols += [ColSpec("float", f"prob_{n}") for n in member_names]
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), INPUT_SHAPE)]), outputs=Schema(cols))


def input_example() -> np.ndarray:
    """Two mid-grey patches (batch >= 2 so nothing freezes the batch size)."""
    return np.full((2, 1, 32, 32, 32), 0.5, dtype=np.float32)


# --- setup ---------------------------------------------------------------------------------------------


def configure(params: Params, experiment: str | None = None) -> str:
    """Tracking + registry URI (``MLFLOW_TRACKING_URI`` or ``paths.mlflow_uri``) and the experiment
    (default ``ensemble.experiment``); see :func:`naslung.tracking.configure`."""
    from naslung import tracking

    return tracking.configure(
        params.mlflow_uri, experiment or params.ensemble.experiment, params.paths.mlflow_artifacts
    )


# --- lineage -------------------------------------------------------------------------------------------


def search_run_id(params: Params) -> str | None:
    """MLflow run id(s) of the search(es) that selected the members: ``parent_run_id`` of the
    ``summary.json`` beside each selection file of ``ensemble.members`` (one id, or a JSON list when the
    ensemble mixes selections, e.g. POP and DNAS); None for explicit ``ensemble.specs``."""
    if params.ensemble.specs:
        return None
    from naslung.ensemble.training import selection_paths

    ids: list[str] = []
    for sel in selection_paths(params.ensemble.members):
        summary = sel.parent / "summary.json"
        if summary.is_file():
            data = json.loads(summary.read_text(encoding="utf-8"))
            rid = data.get("parent_run_id") or data.get("run_id")
            if rid and str(rid) not in ids:
                ids.append(str(rid))
    if not ids:
        return None
    return ids[0] if len(ids) == 1 else json.dumps(ids)


def validation_status(params: Params, data_md5: dict[str, str] | None = None) -> tuple[bool, str]:
    """(passed, reason) from ``<paths.artifacts>/validation.json``; absent means not validated.

    With ``data_md5`` (``{"manifest": .., "patches": ..}`` of the data the model was trained on) the verdict
    only counts when it was made on that same data."""
    path = Path(params.paths.artifacts) / "validation.json"
    if not path.is_file():
        return False, f"{path} not found: the data was not validated (run `naslung validate`)"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return False, f"{path} is not valid JSON: {exc}"
    if data_md5 is not None:
        seen = data.get("md5") or {}
        differ = [k for k in ("manifest", "patches") if seen.get(k) != data_md5.get(k)]
        if differ:
            return False, (
                f"{path} is about other data than the model was trained on ({', '.join(differ)} md5 "
                f"{[seen.get(k) for k in differ]} vs {[data_md5.get(k) for k in differ]}); "
                "run `naslung validate` on the current data"
            )
    if data.get("success") is True:
        return True, f"{path}: success"
    failed = [k for k, v in (data.get("suites") or {}).items() if isinstance(v, dict) and not v.get("success")]
    return False, f"{path}: data validation failed" + (f" (suites: {', '.join(failed)})" if failed else "")


def dvc_url(path: str | Path) -> str | None:
    """``dvc.api.get_url`` of a DVC-tracked output (the cache location of this data version), else None."""
    try:
        import dvc.api

        return str(dvc.api.get_url(str(path)))
    except Exception:
        return None


def lineage(params: Params, index: dict[str, Any], metrics: dict[str, Any], search_id: str | None) -> dict[str, str]:
    """Lineage tags for a model version (all values strings)."""
    from naslung.lineage import git_commit

    data = index["data"]
    deploy = [m for m in index["members"] if m["fold"] == index["deploy_fold"]]
    validated, reason = validation_status(params, data["md5"])
    ens = metrics["ensemble"]
    tags = {
        "data.hash": data["hash"],
        "data.origin": data["origin"],
        "data.manifest_md5": data["md5"]["manifest"],
        "data.patches_md5": data["md5"]["patches"],
        "data.dvc_url": dvc_url(Path(params.paths.artifacts) / "patches.npy") or "",
        "git_commit": git_commit(Path.cwd()) or git_commit(Path(__file__).resolve().parent) or "",
        "params_hash": params.section_hash(),
        "member_params_hash": index["member_params_hash"],
        "search_run_id": search_id or "",
        "member_run_ids": json.dumps({m["name"]: m["run_id"] for m in deploy}),
        "members": json.dumps([m["name"] for m in deploy]),
        "deploy_fold": str(index["deploy_fold"]),
        "eval_folds": json.dumps(metrics["folds"]),
        "f1_mean": f"{ens['mean_std']['f1']['mean']:.6f}",
        "f1_per_fold": json.dumps({f: m["f1"] for f, m in ens["per_fold"].items()}),
        "auc_mean": f"{ens['mean_std']['auc']['mean']:.6f}",
        "validation": "passed" if validated else "failed",
        "validation_reason": reason,
    }
    return {TAG + k: str(v)[:5000] for k, v in tags.items()}


def _spec_text(spec: Any) -> str:
    """Short readable form of a member spec (reference string; ``dnas[...]`` for DNAS-derived members)."""
    from naslung.models.factory import spec_from_dict

    try:
        return spec_from_dict(spec).ref_string() if isinstance(spec, dict) else str(spec)
    except (KeyError, TypeError, ValueError):
        return json.dumps(spec)


def model_card(params: Params, index: dict[str, Any], metrics: dict[str, Any], tags: dict[str, str]) -> str:
    """Markdown model card: data and version, members, metrics per fold, intended use, limits."""
    from naslung.ensemble.evaluation import table_markdown
    from naslung.metrics import METRIC_NAMES

    ens = metrics["ensemble"]
    lines = [
        f"# Model card: {params.registry.name}",
        "",
        "## Intended use",
        "Decision support for radiologists: a malignancy score for a pulmonary nodule already found on CT "
        "(32 mm cube around its centre). Not a diagnosis, not a detector, not validated for clinical use.",
        "",
        "## Data",
        f"- patch store `{params.paths.artifacts}` (manifest md5 `{tags[TAG + 'data.manifest_md5']}`, "
        f"patches md5 `{tags[TAG + 'data.patches_md5']}`, origin {tags[TAG + 'data.origin']})",
        f"- data validation: {tags[TAG + 'validation']} ({tags[TAG + 'validation_reason']})",
        f"- git commit `{tags[TAG + 'git_commit']}`, params hash `{tags[TAG + 'params_hash']}`",
        "",
        f"## Architecture: {len(metrics['member_names'])} members, majority vote (mean probability as score)",
        "| member | spec | params | latency ms/nodule |",
        "|---|---|---|---|",
    ]
    refs = {m["name"]: m for m in index["members"] if m["fold"] == index["deploy_fold"]}
    for name, m in metrics["members"].items():
        lat = ", ".join(f"b{b}: {v:.2f}" for b, v in (refs.get(name, {}).get("latency_ms_per_nodule") or {}).items())
        lines.append(f"| {name} | `{_spec_text(m['spec'])}` | {m['n_params']} | {lat} |")
    lines += [
        "",
        f"## Metrics (test folds {metrics['folds']}, each member trained without its test fold)",
        table_markdown(metrics),
        "",
        "Ensemble per fold:",
        "",
        "| fold | " + " | ".join(METRIC_NAMES) + " |",
        "|---|" + "---|" * len(METRIC_NAMES),
    ]
    for f, m in ens["per_fold"].items():
        lines.append(f"| {f} | " + " | ".join(f"{m[n]:.3f}" for n in METRIC_NAMES) + " |")
    base = metrics.get("diameter_baseline")
    if base:
        lines += ["", f"Diameter-only baseline: `{json.dumps(base, default=float)[:400]}`"]
    lines += [
        "",
        "## Known limits",
        "- Trained on the embedded synthetic dataset unless the patch store was built from real LUNA16/LIDC "
        "data; metrics on synthetic data say nothing about clinical performance.",
        "- Labels are the mean of up to four LIDC readers' malignancy ratings (indeterminate nodules "
        "excluded), not pathology.",
        "- Small test folds: fold-to-fold spread is large; compare mean ± std, not single folds.",
        *(
            [
                f"- Test folds {metrics['selection_leak_folds']} were training/validation data of the architecture "
                f"search (it held out fold {params.search.fold} only): their figures are optimistic."
            ]
            if metrics.get("selection_leak_folds")
            else []
        ),
        "",
        "## Reproduce",
        reproduce_text(params, tags),
    ]
    return "\n".join(lines) + "\n"


def reproduce_text(params: Params, tags: dict[str, str]) -> str:
    commit = tags.get(TAG + "git_commit") or "<commit>"
    return (
        f"`git checkout {commit} && dvc pull && dvc repro` (or: `naslung prepare && naslung validate && "
        f"naslung ensemble train && naslung evaluate && naslung register && naslung promote`). "
        f"Data: patch store md5s {tags.get(TAG + 'data.manifest_md5')} / {tags.get(TAG + 'data.patches_md5')}; "
        f"params hash {tags.get(TAG + 'params_hash')}; members chosen by search run "
        f"{tags.get(TAG + 'search_run_id') or '(explicit ensemble.specs)'}."
    )


# --- register ------------------------------------------------------------------------------------------


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
    mpath = Path(metrics_path or Path(params.paths.artifacts) / "metrics.json")
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath}: not found (run `naslung evaluate` first)")
    metrics = json.loads(mpath.read_text(encoding="utf-8"))
    model_dir = Path(index["model_dir"])
    ensemble = Ensemble.load(model_dir)
    search_id = search_id or search_run_id(params)
    tags = lineage(params, index, metrics, search_id)
    card = model_card(params, index, metrics, tags)
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
        manifest = Path(params.paths.artifacts) / "manifest.csv"
        if manifest.is_file():
            tracking.log_manifest_input(manifest, Path("dvc.lock"), context="ensemble")
        mlflow.log_dict(metrics, "metrics.json")
        mlflow.log_dict(to_dict(params), "params.json")
        mlflow.log_dict(index, "training.json")
        for plot in sorted((Path(params.paths.artifacts) / "plots").glob("ensemble_*.png")):
            mlflow.log_artifact(str(plot), "plots")
        mlflow.log_text(card, "model_card.md")
        panel = log_explain_panel(params, ensemble, int(index["deploy_fold"]))
        with tempfile.TemporaryDirectory(prefix="naslung-register-") as tmp:
            card_path = Path(tmp) / "model_card.md"
            card_path.write_text(encoding="utf-8", data=card)
            info = mlflow.pyfunc.log_model(
                name="ensemble",
                python_model=EnsemblePyfunc(),
                artifacts={"ensemble": str(model_dir), "model_card": str(card_path)},
                signature=signature(ensemble.member_names),
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
    description = (
        f"NASLung ensemble of {len(ensemble)} members ({', '.join(ensemble.member_names)}), test-fold mean F1 "
        f"{tags[TAG + 'f1_mean']} over folds {metrics['folds']}. Registered by run {run.info.run_id}; member "
        f"training runs: {tags[TAG + 'member_run_ids']}. Model card: artifact `model_card.md` of that run.\n\n"
        f"Reproduce: {reproduce_text(params, tags)}"
    )
    client.update_model_version(name, version, description=description[:4900])
    client.set_registered_model_alias(name, CHALLENGER, version)
    print(f"registered {name} version {version} (alias {CHALLENGER}); run {run.info.run_id}")
    return Registration(name, version, run.info.run_id, info.model_uri, tags)


def download_ensemble(
    params: Params, dest: Path, alias: str | None = None, version: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """Download the ``ensemble`` artifact of ``registry.name`` at ``alias`` or ``version`` into ``dest``.

    Returns (ensemble dir, {"version", "run_id", "source", "aliases"}); ``serve package`` builds the .mar
    from it.
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
    if "ensemble" not in artifacts:
        raise ValueError(f"{uri}: the registered model has no 'ensemble' artifact (found {sorted(artifacts)})")
    ens_dir = local / artifacts["ensemble"]["path"]
    meta = {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "source": mv.source,
        "aliases": list(getattr(mv, "aliases", []) or []),
    }
    return ens_dir, meta


# --- gate / promotion / rollback ------------------------------------------------------------------------


@dataclass(frozen=True)
class GateDecision:
    name: str
    version: str
    promoted: bool
    reason: str
    challenger_f1: float | None = None
    champion_version: str | None = None
    champion_f1: float | None = None
    tolerance: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _alias(client: MlflowClient, name: str, alias: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _per_fold_f1(mv: Any) -> dict[str, float]:
    raw = mv.tags.get(TAG + "f1_per_fold")
    return {str(k): float(v) for k, v in json.loads(raw).items()} if raw else {}


def _record(client: MlflowClient, d: GateDecision) -> GateDecision:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    verdict = "promoted" if d.promoted else "refused"
    client.set_model_version_tag(d.name, d.version, TAG + "gate.decision", verdict)
    client.set_model_version_tag(d.name, d.version, TAG + "gate.reason", d.reason[:5000])
    client.set_model_version_tag(d.name, d.version, TAG + "gate.time", stamp)
    client.set_registered_model_tag(d.name, TAG + "last_decision", f"{stamp} v{d.version} {verdict}: {d.reason}"[:5000])
    print(f"gate {d.name} v{d.version}: {verdict.upper()} - {d.reason}")
    return d


def promote(params: Params, version: str | int | None = None) -> GateDecision:
    """Gate the ``challenger`` (or ``version``) and promote it to ``champion`` when it passes.

    Passes when (1) its data validation passed (when ``registry.require_validation``) and (2) there is no
    champion, or the mean F1 over the folds both versions were evaluated on is >= the champion's minus
    ``registry.f1_tolerance``. On promotion the old champion keeps the alias ``previous``.
    """
    configure(params)
    client = MlflowClient()
    name, tol = params.registry.name, float(params.registry.f1_tolerance)
    mv = client.get_model_version(name, str(version)) if version is not None else _alias(client, name, CHALLENGER)
    if mv is None:
        raise ValueError(f"promote: {name} has no version with alias '{CHALLENGER}' (run `naslung register` first)")
    v = str(mv.version)
    champ = _alias(client, name, CHAMPION)
    if champ is not None and str(champ.version) == v:
        return _record(client, GateDecision(name, v, False, f"version {v} already is the champion", tolerance=tol))
    if params.registry.require_validation and mv.tags.get(TAG + "validation") != "passed":
        why = mv.tags.get(TAG + "validation_reason", "no validation result recorded on the version")
        return _record(client, GateDecision(name, v, False, f"data validation did not pass: {why}", tolerance=tol))
    mine = _per_fold_f1(mv)
    if not mine:
        return _record(
            client, GateDecision(name, v, False, "version carries no per-fold F1 (naslung.f1_per_fold)", tolerance=tol)
        )
    if champ is None:
        f1 = float(np.mean(list(mine.values())))
        d = GateDecision(name, v, True, f"no champion yet; validation passed, mean F1 {f1:.4f}", f1, None, None, tol)
    else:
        theirs = _per_fold_f1(champ)
        common = sorted(set(mine) & set(theirs))
        if not common:
            return _record(
                client,
                GateDecision(
                    name,
                    v,
                    False,
                    f"no test fold in common with champion v{champ.version} ({sorted(mine)} vs {sorted(theirs)})",
                    None,
                    str(champ.version),
                    None,
                    tol,
                ),
            )
        f1 = float(np.mean([mine[f] for f in common]))
        cf1 = float(np.mean([theirs[f] for f in common]))
        ok = f1 >= cf1 - tol
        reason = (
            f"mean F1 {f1:.4f} {'>=' if ok else '<'} champion v{champ.version} {cf1:.4f} - tolerance {tol} "
            f"on folds {common}"
        )
        mine_data, their_data = mv.tags.get(TAG + "data.hash"), champ.tags.get(TAG + "data.hash")
        if mine_data != their_data:  # said, not hidden: new data means other test sets behind the same fold ids
            reason += f" (evaluated on other data: champion data {their_data}, challenger data {mine_data})"
        d = GateDecision(name, v, ok, reason, f1, str(champ.version), cf1, tol)
    if d.promoted:
        if champ is not None:
            client.set_registered_model_alias(name, PREVIOUS, str(champ.version))
        client.set_registered_model_alias(name, CHAMPION, v)
        ch = _alias(client, name, CHALLENGER)
        if ch is not None and str(ch.version) == v:
            client.delete_registered_model_alias(name, CHALLENGER)
    return _record(client, d)


def rollback(params: Params) -> dict[str, str]:
    """Make the ``previous`` version champion again; the demoted champion becomes ``previous``."""
    configure(params)
    client = MlflowClient()
    name = params.registry.name
    prev, champ = _alias(client, name, PREVIOUS), _alias(client, name, CHAMPION)
    if prev is None:
        raise ValueError(f"rollback: {name} has no '{PREVIOUS}' version to roll back to")
    client.set_registered_model_alias(name, CHAMPION, str(prev.version))
    if champ is not None:
        client.set_registered_model_alias(name, PREVIOUS, str(champ.version))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    old = str(champ.version) if champ is not None else "none"
    msg = f"rollback: champion v{old} -> v{prev.version}"
    client.set_model_version_tag(name, str(prev.version), TAG + "gate.decision", "rolled back to")
    client.set_model_version_tag(name, str(prev.version), TAG + "gate.reason", f"{stamp} {msg}")
    if champ is not None:
        client.set_model_version_tag(name, old, TAG + "gate.decision", "rolled back from")
        client.set_model_version_tag(name, old, TAG + "gate.reason", f"{stamp} {msg}")
    client.set_registered_model_tag(name, TAG + "last_decision", f"{stamp} {msg}")
    print(f"{name}: {msg}")
    return {"name": name, "champion": str(prev.version), "previous": old}


def aliases(params: Params) -> dict[str, str]:
    """Current alias -> version map of ``registry.name``."""
    configure(params)
    rm = MlflowClient().get_registered_model(params.registry.name)
    return {a: str(v) for a, v in (rm.aliases or {}).items()}
