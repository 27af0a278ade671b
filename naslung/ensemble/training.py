"""Training the ensemble members with the honest protocol, one member per (spec, test fold), cached.

For every test fold ``k`` in ``params.ensemble.folds`` and every selected spec, the member is trained by
:func:`naslung.train.run.run_training` (train folds for fitting, one validation fold for early stopping
and checkpoint selection, test fold ``k`` evaluated exactly once). Each finished member is written to a
content-addressed cache folder ``<ensemble.out_dir>/members/<spec_id>-fold<k>-<key>/``:

* ``weights.pt`` — CPU state dict (``torch.load(..., weights_only=True)``);
* ``member.json`` — spec, fold split, MLflow run id, validation and test metrics, the validation-fold
  predictions (nodule ids, labels, malignancy probabilities of the best checkpoint on the pooled
  validation folds: calibration and the promotion gate use them) and the test-fold predictions (used,
  reported only, by the ensemble evaluation).

``key`` hashes (spec id, spec, fold, data version, params hash), so a re-run (e.g. after a crash) skips
every member already finished and a change of data or params retrains. Members may be NASLung nets
(:class:`~naslung.models.spec.ArchSpec`, ids ``m1-...``) and DNAS-derived MBConv nets
(:class:`~naslung.models.mbconv.DnasArch`, ids ``d-...``) mixed in one ensemble (see
:mod:`naslung.models.factory`). The members of
``ensemble.deploy_fold`` form the deployable :class:`~naslung.ensemble.model.Ensemble` saved to
``<out_dir>/model``, with its :class:`~naslung.calibration.Calibrator` (``ensemble.calibration``) fitted on
those members' shared validation predictions (:func:`validation_predictions`) and its report (reliability
data and plot, Brier, slope/intercept, ECE on the validation rows and, reported only, on the deploy test
fold) in ``<out_dir>/calibration/``; ``<out_dir>/training.json`` indexes everything for the evaluate /
register steps.
File layouts: :mod:`naslung.ensemble.layout`.

The member loop has three parts that both runners share — :func:`plan_members` (which (fold, spec)
members to train, in order, and the data version), :func:`train_member` (one member) and
:func:`write_index` (the deployable ensemble and the index). :func:`train_ensemble` runs them in-process;
the Prefect flow ``flows/ensemble.py::train_ensemble`` maps one ``train-member`` task over the plan. With
``train.concurrent`` = N > 1, :func:`train_ensemble` trains the members still to train N at a time per test
fold (:func:`member_groups`, :func:`prefit_members`: :func:`naslung.train.concurrent.fit_many`, one CUDA
stream each) and hands each member its fit; every member equals the one trained alone (same key, cache,
run and record).
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

from naslung import calibration
from naslung.ensemble import layout
from naslung.ensemble.layout import INDEX_FILE, MEMBER_FILE, MODEL_DIR, WEIGHTS_FILE
from naslung.lineage import data_identity
from naslung.models.factory import AnySpec, build, parse_member_spec, spec_flops, spec_from_dict
from naslung.params import Params, to_dict
from naslung.tracker import NULL_TRACKER, Tracker

# --- member specs ------------------------------------------------------------------------------------


def _spec_from_entry(entry: Any, params: Params, where: str) -> AnySpec:
    e = params.ensemble
    try:
        return parse_member_spec(entry, cbam=e.cbam, head=e.head, block=params.model.block)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: cannot read an architecture spec from {entry!r}: {exc}") from exc


def selection_paths(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """Selection file(s) of ``ensemble.members`` (one path or a list) as a list of paths."""
    if isinstance(source, (str, Path)):
        return [Path(source)]
    return [Path(p) for p in source]


def _selection_entries(path: Path) -> Any:
    """The entries of one selection file: its JSON list, or the ``selected`` (else ``specs``) list of a mapping."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return data.get("selected", data.get("specs")) if isinstance(data, dict) else data


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
            data = _selection_entries(path)
            if not isinstance(data, list) or not data:
                raise ValueError(f"{path}: expected a non-empty JSON list of member specs")
            specs += [_spec_from_entry(d, params, f"{path} entry {i}") for i, d in enumerate(data)]
    unique: dict[str, AnySpec] = {}
    for s in specs:
        unique.setdefault(s.spec_id, s)
    return list(unique.values())


def selection_latencies(params: Params) -> dict[str, dict[int, dict[str, Any]]]:
    """Spec id -> {batch size: latency detail} measured by the search, from the selection file(s) of
    ``ensemble.members`` (entries with ``latency_detail``, e.g. POP's ``selected.json``); empty with explicit
    ``ensemble.specs`` or without selection files. Only entries whose spec, read with the ensemble's flags,
    keeps the search's ``spec_id`` count (same architecture, so the same latency)."""
    if params.ensemble.specs:
        return {}
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for path in selection_paths(params.ensemble.members):
        if not path.is_file():
            continue
        data = _selection_entries(path)
        for i, entry in enumerate(data if isinstance(data, list) else []):
            detail = entry.get("latency_detail") if isinstance(entry, dict) else None
            if not isinstance(detail, dict) or "batch_size" not in detail:
                continue
            spec_id = _spec_from_entry(entry, params, f"{path} entry {i}").spec_id
            if spec_id == entry.get("spec_id"):
                out.setdefault(spec_id, {})[int(detail["batch_size"])] = detail
    return out


# --- data / params identity ---------------------------------------------------------------------------


def data_version(artifacts: str | Path, dvc_lock: str | Path = "dvc.lock") -> dict[str, Any]:
    """Identity of the patch store: md5 of ``manifest.csv`` and ``patches.npy`` (see
    :func:`naslung.lineage.data_identity`: from ``dvc.lock``'s prepare outs when it lists both, else from
    the files); ``{"hash", "origin", "md5", "artifacts"}``."""
    return data_identity(artifacts, dvc_lock).as_dict()


_RESULT_NEUTRAL_TRAIN = {"concurrent": None, "eval_batch_size": 0, "precision": "fp32"}
"""``train`` keys left out of the member hash: ``concurrent`` always (scheduling only: a member trained with
others equals the member trained alone), the others at the value that reproduces the training from before
they existed (so members cached before them stay valid)."""


def _result_sections(params: Params) -> str:
    """``params.section_hash("seed", "model", "train")`` without the result-neutral ``train`` keys."""
    data = to_dict(params)
    data = {s: data[s] for s in ("seed", "model", "train")}
    data["train"] = {
        k: v
        for k, v in data["train"].items()
        if k not in _RESULT_NEUTRAL_TRAIN or (_RESULT_NEUTRAL_TRAIN[k] is not None and v != _RESULT_NEUTRAL_TRAIN[k])
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def member_params_hash(params: Params) -> str:
    """Hash of everything that changes a trained member besides spec, fold and data (``train.concurrent``
    and the other result-neutral keys at their neutral values left out)."""
    blob = json.dumps(
        {
            "sections": _result_sections(params),
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
    latency_detail: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Batch size -> the measurement (threads, device, load average, ``reused``: the search's figure)."""
    cached: bool = False

    def arch(self) -> AnySpec:
        """The member's spec: ``ArchSpec`` or (for ``"kind": "dnas"``) ``DnasArch``."""
        return spec_from_dict(self.spec)

    def _payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = json.loads((Path(self.dir) / MEMBER_FILE).read_text(encoding="utf-8"))
        return payload

    def predictions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Test-fold (ids (n,) str, y (n,) int64, prob (n,) float64) of this member."""
        return _arrays(self._payload()["test_predictions"])

    def val_predictions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validation-fold (ids (n,) str, y (n,) int64, prob (n,) float64) of this member (best checkpoint,
        pooled validation folds of its split, rows in ``PatchStore.arrays(val_folds)`` order)."""
        pred = self._payload().get("val_predictions")
        if pred is None:
            raise ValueError(f"{self.dir}: member has no validation predictions (trained before they were stored)")
        return _arrays(pred)

    def split(self) -> dict[str, Any]:
        """The member's fold split ``{"train_folds", "val_folds", "test_fold"}``."""
        split: dict[str, Any] = self._payload()["split"]
        return split


def _arrays(pred: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.asarray(pred["ids"], dtype=str), np.asarray(pred["y"], np.int64), np.asarray(pred["prob"], np.float64)


def load_cached(member_dir: Path) -> MemberRecord | None:
    """The record of a finished member folder, or None when it is absent or incomplete (a member written
    before validation predictions were stored counts as incomplete and is trained again)."""
    data = layout.read_member(member_dir)
    if data is None or "val_predictions" not in data:
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
    fitted: Any = None,
) -> MemberRecord:
    """Train ``spec`` with test fold ``fold`` held out (or return the cached member).

    Uses :func:`naslung.train.run.run_training` (``ensemble.epochs`` epochs, early stopping on the
    validation fold, one test evaluation) and logs a training run to ``tracker`` when one is given. The
    search's latency of the architecture (:func:`selection_latencies`) is reused where its settings match.
    ``fitted``: the member's :class:`~naslung.train.loop.FitResult` already trained (:func:`prefit_members`);
    everything else (test evaluation, latency, logging, cache) is as without it.
    """
    key = member_key(spec, fold, data_hash, member_params_hash(params))
    mdir = layout.member_dir(params.ensemble.out_dir, spec.spec_id, fold, key)
    cached = load_cached(mdir)
    if cached is not None:
        return cached
    from naslung.data.store import PatchStore
    from naslung.train.run import run_training

    store = store if store is not None else PatchStore.open(params.paths.artifacts)
    out = run_training(
        params,
        spec,
        fold,
        epochs=params.ensemble.epochs,
        artifacts=params.paths.artifacts,
        tracker=tracker,
        progress=progress,
        store=store,
        known_latency=selection_latencies(params).get(spec.spec_id),
        fitted=fitted,
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
            latency_detail={str(b): dict(v) for b, v in out.latency.items()},
        ),
        out.fit.model,
        asdict(out.split),
        (out.test.ids, out.test.y, out.test.prob),
        _val_predictions(store, out.split, out.fit.model, out.fit.device),
    )


def _val_predictions(store: Any, split: Any, model: torch.nn.Module, device: str) -> tuple[Any, Any, Any]:
    """(ids, y, prob) of ``model`` (the restored best checkpoint) on the pooled validation folds of ``split``."""
    from naslung.train.loop import predict_proba
    from naslung.train.protocol import dev_data

    dev = dev_data(store, split)
    X, y = dev.val
    return dev.val_ids, y, predict_proba(model, X, device)


def _pred_json(pred: tuple[Any, Any, Any]) -> dict[str, list[Any]]:
    ids, y, prob = pred
    return {"ids": [str(i) for i in ids], "y": [int(v) for v in y], "prob": [float(v) for v in prob]}


def _write_member(
    mdir: Path,
    rec: MemberRecord,
    model: torch.nn.Module,
    split: dict[str, Any],
    test: tuple[Any, Any, Any],
    val: tuple[Any, Any, Any],
) -> MemberRecord:
    payload = {
        "record": asdict(rec),
        "split": split,
        "val_predictions": _pred_json(val),
        "test_predictions": _pred_json(test),
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

    The model is scored once on the held-out test fold (honest protocol) and on the split's validation folds,
    and cached like a trained member; used for externally trained or fixed models. Replaces a cached member
    with the same key.
    """
    from naslung.data.store import PatchStore
    from naslung.models.complexity import count_params
    from naslung.train.loop import predict_proba
    from naslung.train.protocol import held_out_test, make_split

    store = store if store is not None else PatchStore.open(params.paths.artifacts)
    split = make_split(params.prepare.n_folds, fold, params.seed, params.train.val_folds)
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
    val = _val_predictions(store, split, model, "cpu")
    return _write_member(mdir, rec, model, asdict(split), (result.ids, result.y, result.prob), val)


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


def rows_identity(ids: Sequence[Any] | np.ndarray, y: Sequence[Any] | np.ndarray) -> str:
    """Identity of a set of labelled rows: sha256 (16 hex) of the sorted ``id:label`` lines. Two model
    versions were evaluated on the same data exactly when these agree."""
    lines = sorted(f"{i}:{int(v)}" for i, v in zip((str(i) for i in ids), y))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EnsembleRows:
    """Member predictions of one ensemble on shared rows: ``ids (n,)``, ``y (n,)``, ``member_probs (n, k)``
    (columns in member order), the folds the rows come from and the split's training folds."""

    ids: np.ndarray
    y: np.ndarray
    member_probs: np.ndarray
    folds: tuple[int, ...]
    train_folds: tuple[int, ...]
    test_fold: int

    @property
    def raw_prob(self) -> np.ndarray:
        """(n,) mean member probability."""
        return np.asarray(self.member_probs.mean(axis=1), dtype=np.float64)

    @property
    def hash(self) -> str:
        return rows_identity(self.ids, self.y)

    def data(self) -> dict[str, Any]:
        """``{"folds", "n", "n_malignant", "hash"}``: where figures computed on these rows come from."""
        return {"folds": list(self.folds), "n": int(self.y.size), "n_malignant": int(self.y.sum()), "hash": self.hash}


def _shared_rows(records: Sequence[MemberRecord], which: str) -> EnsembleRows:
    if not records:
        raise ValueError("ensemble rows: no members")
    splits = [r.split() for r in records]
    key = "val_folds" if which == "validation" else "test_fold"
    if len({json.dumps(sp[key]) for sp in splits}) != 1:
        raise ValueError(f"ensemble rows: the members do not share their {which} folds ({[sp[key] for sp in splits]})")
    first = records[0].val_predictions() if which == "validation" else records[0].predictions()
    ids, y = first[0], first[1]
    order = {v: i for i, v in enumerate(ids)}
    cols = []
    for r in records:
        rid, _ry, rp = r.val_predictions() if which == "validation" else r.predictions()
        if set(rid) != set(order) or len(rid) != len(ids):
            raise ValueError(f"ensemble rows: member {r.name} was scored on other {which} rows than {records[0].name}")
        col = np.empty(len(ids), np.float64)
        col[[order[v] for v in rid]] = rp
        cols.append(col)
    sp = splits[0]
    folds = tuple(int(f) for f in sp["val_folds"]) if which == "validation" else (int(sp["test_fold"]),)
    return EnsembleRows(
        ids, y, np.stack(cols, axis=1), folds, tuple(int(f) for f in sp["train_folds"]), int(sp["test_fold"])
    )


def validation_predictions(records: Sequence[MemberRecord]) -> EnsembleRows:
    """The members' predictions on their shared validation rows (all members of one test fold share the
    split, so the same pooled validation folds); rows in the first member's order."""
    return _shared_rows(records, "validation")


def heldout_predictions(records: Sequence[MemberRecord]) -> EnsembleRows:
    """The members' predictions on their shared test fold (for reporting only)."""
    return _shared_rows(records, "test")


def fit_ensemble_calibrator(params: Params, records: Sequence[MemberRecord]) -> calibration.Calibrator:
    """``ensemble.calibration`` fitted on the members' shared validation predictions (raw mean probability),
    with ``ensemble.refer_spread``."""
    val = validation_predictions(records)
    fit = calibration.FitData(val.folds, int(val.y.size), int(val.y.sum()), val.hash)
    return calibration.fit_calibrator(
        val.y, val.raw_prob, params.ensemble.calibration, refer_spread=params.ensemble.refer_spread, fitted_on=fit
    )


def ensemble_calibration_report(
    calibrator: calibration.Calibrator, records: Sequence[MemberRecord]
) -> calibration.CalibrationReport:
    """Figures of ``calibrator`` on the members' validation rows (where it was fitted) and, reported only, on
    their test fold."""
    val, test = validation_predictions(records), heldout_predictions(records)
    return calibration.calibration_report(
        calibrator,
        {"validation": (val.y, val.raw_prob), "test": (test.y, test.raw_prob)},
        {"validation": val.data(), "test": test.data()},
    )


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
    data_hash = plan.data["hash"]
    records = []
    fitted: dict[tuple[int, str], Any] = {}
    groups = member_groups(params, plan.jobs, data_hash)
    for fold, spec in tqdm(plan.jobs, desc="ensemble members", unit="member", disable=not progress):
        group = groups.get((fold, spec.spec_id))
        if group is not None and (fold, spec.spec_id) not in fitted:
            fitted = prefit_members(params, group, store)  # the group's first member: train the whole group
        fit_result = fitted.pop((fold, spec.spec_id), None)
        records.append(
            train_member(params, spec, fold, data_hash, tracker=tracker, progress=False, store=store, fitted=fit_result)
        )
    return write_index(params, plan.specs, records, plan.data)


def member_groups(
    params: Params, jobs: Sequence[tuple[int, AnySpec]], data_hash: str
) -> dict[tuple[int, str], list[tuple[int, AnySpec]]]:
    """With ``train.concurrent`` = N > 1: the members still to train (not cached), in plan order, in groups
    of up to N of one test fold (they share the split's data); ``{(fold, spec_id): its group}``. Empty for
    N = 1 (one by one, as before)."""
    n = int(params.train.concurrent)
    if n <= 1:
        return {}
    todo = [
        (fold, spec)
        for fold, spec in jobs
        if load_cached(
            layout.member_dir(
                params.ensemble.out_dir,
                spec.spec_id,
                fold,
                member_key(spec, fold, data_hash, member_params_hash(params)),
            )
        )
        is None
    ]
    out: dict[tuple[int, str], list[tuple[int, AnySpec]]] = {}
    group: list[tuple[int, AnySpec]] = []
    for fold, spec in todo:
        if group and (len(group) >= n or group[0][0] != fold):
            group = []
        group.append((fold, spec))
        out[(fold, spec.spec_id)] = group
    return out


def prefit_members(params: Params, group: Sequence[tuple[int, AnySpec]], store: Any) -> dict[tuple[int, str], Any]:
    """The fits of a group of members of one test fold, trained at once
    (:func:`naslung.train.concurrent.fit_many`: lockstep, one CUDA stream each), each equal to the fit
    :func:`~naslung.train.run.run_training` would make of it alone (same split, ``ensemble.epochs``, seed
    ``params.seed``, ``train.device``)."""
    from naslung.train.concurrent import FitJob, fit_many
    from naslung.train.loop import resolve_device
    from naslung.train.protocol import dev_data, make_split

    folds = {fold for fold, _ in group}
    if len(folds) != 1:
        raise ValueError(f"prefit_members: a group shares one test fold, got {sorted(folds)}")
    fold = folds.pop()
    split = make_split(params.prepare.n_folds, fold, params.seed, params.train.val_folds)
    dev = dev_data(store, split)
    jobs = [
        FitJob(spec, dev.train, dev.val, params.model, params.train, epochs=params.ensemble.epochs, seed=params.seed)
        for _, spec in group
    ]
    results = fit_many(jobs, device=resolve_device(params.train.device))
    return {(fold, spec.spec_id): r for (_, spec), r in zip(group, results)}


def write_index(
    params: Params, specs: Sequence[AnySpec], records: Sequence[MemberRecord], data: dict[str, Any]
) -> dict[str, Any]:
    """Save the ``deploy_fold`` ensemble (with its calibrator, fitted on those members' validation
    predictions) to ``<out_dir>/model``, its calibration report to ``<out_dir>/calibration/`` and write
    ``<out_dir>/training.json``."""
    e = params.ensemble
    out = Path(e.out_dir)
    deploy = [r for r in records if r.fold == e.deploy_fold]
    if not deploy:
        raise ValueError(f"train_ensemble: no member was trained for ensemble.deploy_fold={e.deploy_fold}")
    calibrator = fit_ensemble_calibrator(params, deploy)
    build_ensemble(deploy, params.model.margin_m).with_calibrator(calibrator).save(out / MODEL_DIR)
    report = ensemble_calibration_report(calibrator, deploy)
    report_files = calibration.write_report(
        report, out / calibration.REPORT_DIR, f"Reliability, deploy fold {e.deploy_fold} ({calibrator.method})"
    )
    index = {
        "specs": [s.to_dict() for s in specs],
        "spec_refs": [s.ref_string() for s in specs],
        "folds": list(e.folds),
        "deploy_fold": e.deploy_fold,
        "data": data,
        "params_hash": params.section_hash(),
        "member_params_hash": member_params_hash(params),
        "model_dir": str(out / MODEL_DIR),
        "calibration": {
            "calibrator": calibrator.to_dict(),
            "figures": report.figures,
            "data": report.data,
            "files": {k: str(v) for k, v in report_files.items()},
        },
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
