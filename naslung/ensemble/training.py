"""Training the ensemble members with the honest protocol, one member per (spec, test fold), cached.

For every test fold ``k`` in ``params.ensemble.folds`` and every selected spec, the member is trained by
:func:`naslung.train.run.run_training` (train folds for fitting, one validation fold for early stopping
and checkpoint selection, test fold ``k`` evaluated exactly once). Each finished member is written to a
content-addressed cache folder ``<ensemble.out_dir>/members/<spec_id>-fold<k>-<key>/``:

* ``weights.pt`` — CPU state dict (``torch.load(..., weights_only=True)``);
* ``member.json`` — spec, fold split, MLflow run id, validation and test metrics, and the test-fold
  predictions (nodule ids, labels, malignancy probabilities) used by the ensemble evaluation.

``key`` hashes (spec id, spec, fold, data version, params hash), so a re-run (e.g. after a crash) skips
every member already finished and a change of data or params retrains. Members may be NASLung nets
(:class:`~naslung.models.spec.ArchSpec`, ids ``m1-...``) and DNAS-derived MBConv nets
(:class:`~naslung.models.mbconv.DnasArch`, ids ``d-...``) mixed in one ensemble (see
:mod:`naslung.models.factory`). The members of
``ensemble.deploy_fold`` form the deployable :class:`~naslung.ensemble.model.Ensemble` saved to
``<out_dir>/model``; ``<out_dir>/training.json`` indexes everything for the evaluate / register steps.
File layouts: :mod:`naslung.ensemble.layout`.

The member loop has three parts that both runners share — :func:`plan_members` (which (fold, spec)
members to train, in order, and the data version), :func:`train_member` (one member) and
:func:`write_index` (the deployable ensemble and the index). :func:`train_ensemble` runs them in-process;
the Prefect flow ``flows/ensemble.py::train_ensemble`` maps one ``train-member`` task over the plan.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from naslung.ensemble import layout
from naslung.ensemble.layout import INDEX_FILE, MEMBER_FILE, MODEL_DIR, WEIGHTS_FILE
from naslung.lineage import data_identity
from naslung.models.factory import AnySpec, build, parse_member_spec, spec_flops, spec_from_dict
from naslung.params import Params
from naslung.tracker import NULL_TRACKER, Tracker

# --- member specs ------------------------------------------------------------------------------------


def _spec_from_entry(entry: Any, params: Params, where: str) -> AnySpec:
    e = params.ensemble
    try:
        return parse_member_spec(entry, cbam=e.cbam, head=e.head)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: cannot read an architecture spec from {entry!r}: {exc}") from exc


def selection_paths(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """Selection file(s) of ``ensemble.members`` (one path or a list) as a list of paths."""
    if isinstance(source, (str, Path)):
        return [Path(source)]
    return [Path(p) for p in source]


def member_specs(params: Params, source: str | Path | Sequence[str | Path] | None = None) -> list[AnySpec]:
    """The member specs: ``ensemble.specs`` when non-empty, else the JSON list(s) in ``ensemble.members``.

    ``ensemble.members`` (or ``source``) is one selection file or a list of them, e.g. the POP selection
    ``search/selected.json`` and the DNAS selection ``search/dnas/selected.json``; their members are
    concatenated in the order given. Each JSON (a search's ``selected.json``) may be a list of spec dicts
    (``ArchSpec`` or ``{"kind": "dnas", ...}``) / spec strings / records holding a ``spec`` entry, or a
    mapping with a ``selected`` list. ``ensemble.specs`` entries may be spec strings or DNAS dicts.
    Duplicate specs (same ``spec_id``) are dropped, the first kept.
    """
    if params.ensemble.specs and source is None:
        specs = [_spec_from_entry(s, params, "params ensemble.specs") for s in params.ensemble.specs]
    else:
        paths = selection_paths(source if source is not None else params.ensemble.members)
        if not paths:
            raise ValueError("ensemble.members: no selection file given")
        specs = []
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: member list not found (run `naslung search` first or set ensemble.specs in params)"
                )
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                data = data.get("selected", data.get("specs"))
            if not isinstance(data, list) or not data:
                raise ValueError(f"{path}: expected a non-empty JSON list of member specs")
            specs += [_spec_from_entry(d, params, f"{path} entry {i}") for i, d in enumerate(data)]
    unique: dict[str, AnySpec] = {}
    for s in specs:
        unique.setdefault(s.spec_id, s)
    return list(unique.values())


# --- data / params identity ---------------------------------------------------------------------------


def data_version(artifacts: str | Path, dvc_lock: str | Path = "dvc.lock") -> dict[str, Any]:
    """Identity of the patch store: md5 of ``manifest.csv`` and ``patches.npy`` (see
    :func:`naslung.lineage.data_identity`: from ``dvc.lock``'s prepare outs when it lists both, else from
    the files); ``{"hash", "origin", "md5", "artifacts"}``."""
    return data_identity(artifacts, dvc_lock).as_dict()


def member_params_hash(params: Params) -> str:
    """Hash of everything that changes a trained member besides spec, fold and data."""
    blob = json.dumps(
        {
            "sections": params.section_hash("seed", "model", "train"),
            "epochs": params.ensemble.epochs,
            "n_folds": params.prepare.n_folds,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def member_key(spec: AnySpec, fold: int, data_hash: str, params_hash: str) -> str:
    """Cache key of one member: (spec id, spec, test fold, data hash, params hash)."""
    blob = json.dumps(
        {"spec_id": spec.spec_id, "spec": spec.to_dict(), "fold": int(fold), "data": data_hash, "params": params_hash},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --- member training ---------------------------------------------------------------------------------


@dataclass
class MemberRecord:
    """One trained member (spec trained with test fold ``fold`` held out), as stored in the cache."""

    name: str
    spec: dict[str, Any]
    spec_id: str
    fold: int
    key: str
    dir: str
    run_id: str | None
    val: dict[str, float]
    test: dict[str, float]
    best_epoch: int
    n_params: int
    flops: int
    latency_ms_per_nodule: dict[str, float] = field(default_factory=dict)
    cached: bool = False

    def arch(self) -> AnySpec:
        """The member's spec: ``ArchSpec`` or (for ``"kind": "dnas"``) ``DnasArch``."""
        return spec_from_dict(self.spec)

    def predictions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Test-fold (ids (n,) str, y (n,) int64, prob (n,) float64) of this member."""
        pred = json.loads((Path(self.dir) / MEMBER_FILE).read_text(encoding="utf-8"))["test_predictions"]
        return np.asarray(pred["ids"], dtype=str), np.asarray(pred["y"], np.int64), np.asarray(pred["prob"], np.float64)


def load_cached(member_dir: Path) -> MemberRecord | None:
    """The record of a finished member folder, or None when it is absent or incomplete."""
    data = layout.read_member(member_dir)
    if data is None:
        return None
    rec = MemberRecord(**data["record"])
    rec.dir, rec.cached = str(member_dir), True
    return rec


def train_member(
    params: Params,
    spec: AnySpec,
    fold: int,
    data_hash: str,
    *,
    tracker: Tracker = NULL_TRACKER,
    progress: bool = False,
    store: Any = None,
) -> MemberRecord:
    """Train ``spec`` with test fold ``fold`` held out (or return the cached member).

    Uses :func:`naslung.train.run.run_training` (``ensemble.epochs`` epochs, early stopping on the
    validation fold, one test evaluation) and logs a training run to ``tracker`` when one is given.
    """
    key = member_key(spec, fold, data_hash, member_params_hash(params))
    mdir = layout.member_dir(params.ensemble.out_dir, spec.spec_id, fold, key)
    cached = load_cached(mdir)
    if cached is not None:
        return cached
    from naslung.train.run import run_training

    out = run_training(
        params,
        spec,
        fold,
        epochs=params.ensemble.epochs,
        artifacts=params.paths.artifacts,
        tracker=tracker,
        progress=progress,
        store=store,
    )
    return _write_member(
        mdir,
        MemberRecord(
            name=spec.spec_id,
            spec=spec.to_dict(),
            spec_id=spec.spec_id,
            fold=int(fold),
            key=key,
            dir=str(mdir),
            run_id=out.run_id,
            val={k: float(v) for k, v in out.fit.val_metrics.items()},
            test={k: float(v) for k, v in out.test.metrics.items()},
            best_epoch=int(out.fit.best_epoch),
            n_params=int(out.n_params),
            flops=int(out.flops),
            latency_ms_per_nodule={str(b): float(v["ms_per_nodule"]) for b, v in out.latency.items()},
        ),
        out.fit.model,
        asdict(out.split),
        out.test.ids,
        out.test.y,
        out.test.prob,
    )


def _write_member(
    mdir: Path, rec: MemberRecord, model: torch.nn.Module, split: dict[str, Any], ids: Any, y: Any, prob: Any
) -> MemberRecord:
    payload = {
        "record": asdict(rec),
        "split": split,
        "test_predictions": {"ids": [str(i) for i in ids], "y": [int(v) for v in y], "prob": [float(v) for v in prob]},
    }
    layout.write_member(mdir, model, payload)
    return rec


def score_member(
    params: Params,
    spec: AnySpec,
    fold: int,
    data_hash: str,
    model: torch.nn.Module,
    *,
    run_id: str | None = None,
    store: Any = None,
) -> MemberRecord:
    """Add an already-built ``model`` (not trained here) as the member of ``spec`` for test fold ``fold``.

    The model is scored once on the held-out test fold (honest protocol) and cached like a trained member;
    used for externally trained or fixed models. Replaces a cached member with the same key.
    """
    from naslung.data.store import PatchStore
    from naslung.models.complexity import count_params
    from naslung.train.loop import predict_proba
    from naslung.train.protocol import held_out_test, make_split

    store = store if store is not None else PatchStore.open(params.paths.artifacts)
    split = make_split(params.prepare.n_folds, fold, params.seed)
    test = held_out_test(store, split)
    model = model.cpu().eval()
    result = test.evaluate(lambda X: predict_proba(model, X, "cpu"))
    key = member_key(spec, fold, data_hash, member_params_hash(params))
    mdir = layout.member_dir(params.ensemble.out_dir, spec.spec_id, fold, key)
    rec = MemberRecord(
        name=spec.spec_id,
        spec=spec.to_dict(),
        spec_id=spec.spec_id,
        fold=int(fold),
        key=key,
        dir=str(mdir),
        run_id=run_id,
        val={},
        test={k: float(v) for k, v in result.metrics.items()},
        best_epoch=0,
        n_params=int(count_params(model)),
        flops=int(spec_flops(spec)),
    )
    return _write_member(mdir, rec, model, asdict(split), result.ids, result.y, result.prob)


def build_ensemble(records: Sequence[MemberRecord], margin_m: int, device: str = "cpu") -> Any:
    """An :class:`~naslung.ensemble.model.Ensemble` of the given members (weights from their cache folders)."""
    from naslung.ensemble.model import Ensemble

    if not records:
        raise ValueError("build_ensemble: no members")
    members = []
    for r in records:
        m = build(r.arch(), margin_m=margin_m)
        m.load_state_dict(layout.load_state(Path(r.dir) / WEIGHTS_FILE))
        members.append(m)
    return Ensemble(members, [r.arch() for r in records], [r.name for r in records], margin_m=margin_m, device=device)


@dataclass(frozen=True)
class MemberPlan:
    """Which members an ensemble run trains: every spec for every test fold, in training order."""

    specs: list[AnySpec]
    folds: list[int]
    """``ensemble.folds`` then ``ensemble.deploy_fold`` (once)."""
    data: dict[str, Any]
    """The patch store's :func:`data_version` (its ``hash`` is part of every member's cache key)."""

    @property
    def jobs(self) -> list[tuple[int, AnySpec]]:
        """``(test fold, spec)`` of every member, fold-major (all specs of the first fold first)."""
        return [(f, s) for f in self.folds for s in self.specs]


def plan_members(params: Params, specs: Sequence[AnySpec] | None = None) -> MemberPlan:
    """The members to train: ``specs`` (default :func:`member_specs`) x (``ensemble.folds`` + deploy fold)."""
    e = params.ensemble
    return MemberPlan(
        specs=list(specs) if specs is not None else member_specs(params),
        folds=[int(f) for f in dict.fromkeys([*e.folds, e.deploy_fold])],
        data=data_version(params.paths.artifacts),
    )


def train_ensemble(
    params: Params,
    specs: Sequence[AnySpec] | None = None,
    *,
    tracker: Tracker = NULL_TRACKER,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or reuse) every member of :func:`plan_members` in-process, one after the other.

    Saves the deployable ensemble (members of ``deploy_fold``) to ``<out_dir>/model`` and writes and
    returns the index ``<out_dir>/training.json``.
    """
    from tqdm.auto import tqdm

    from naslung.data.store import PatchStore

    plan = plan_members(params, specs)
    store = PatchStore.open(params.paths.artifacts)
    records = [
        train_member(params, spec, fold, plan.data["hash"], tracker=tracker, progress=False, store=store)
        for fold, spec in tqdm(plan.jobs, desc="ensemble members", unit="member", disable=not progress)
    ]
    return write_index(params, plan.specs, records, plan.data)


def write_index(
    params: Params, specs: Sequence[AnySpec], records: Sequence[MemberRecord], data: dict[str, Any]
) -> dict[str, Any]:
    """Save the ``deploy_fold`` ensemble to ``<out_dir>/model`` and write ``<out_dir>/training.json``."""
    e = params.ensemble
    out = Path(e.out_dir)
    deploy = [r for r in records if r.fold == e.deploy_fold]
    if not deploy:
        raise ValueError(f"train_ensemble: no member was trained for ensemble.deploy_fold={e.deploy_fold}")
    build_ensemble(deploy, params.model.margin_m).save(out / MODEL_DIR)
    index = {
        "specs": [s.to_dict() for s in specs],
        "spec_refs": [s.ref_string() for s in specs],
        "folds": list(e.folds),
        "deploy_fold": e.deploy_fold,
        "data": data,
        "params_hash": params.section_hash(),
        "member_params_hash": member_params_hash(params),
        "model_dir": str(out / MODEL_DIR),
        "members": [asdict(r) for r in records],
    }
    out.mkdir(parents=True, exist_ok=True)
    layout.write_atomic(out / INDEX_FILE, json.dumps(index, indent=1, default=float))
    return index


def read_index(params: Params) -> tuple[dict[str, Any], list[MemberRecord]]:
    """``training.json`` and its member records (raises a clear error when the train step has not run)."""
    path = Path(params.ensemble.out_dir) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run `naslung ensemble train` first)")
    index = json.loads(path.read_text(encoding="utf-8"))
    return index, [MemberRecord(**m) for m in index["members"]]
