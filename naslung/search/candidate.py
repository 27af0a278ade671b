"""Train and score one search candidate on the pooled validation folds; measure or look up its latency.

The search only ever sees the training and validation folds of
``make_split(n_folds, search.fold, seed, search.val_folds)``: :func:`load_dev` reads them through
:func:`naslung.train.protocol.dev_data`, which has no access to the test fold.

Score (:func:`train_candidate`): ``search.objective`` (ROC AUC or balanced accuracy) of the candidate's
malignancy probabilities on the pooled validation folds, with its stratified bootstrap 95 % interval
(:mod:`naslung.search.objective`); the record keeps ``score``, ``score_low``, ``score_high``,
``objective`` and, for information, the validation ``accuracy``. The scored weights are those after the
fixed ``search.epochs`` (no early stopping): the *final* epoch's weights (``checkpoint: "final"``;
:func:`naslung.train.loop.fit` with ``keep="last"``), so no epoch is chosen on the nodules that are scored.
The validation folds only feed the per-epoch curves (``val_*`` history columns, for information).

Latency (``search.latency_source``):

* ``measured``: :func:`naslung.latency.measure_latency` on the untrained network (latency depends on the
  architecture, not on the weights) at ``latency.batch_sizes[0]`` on the training device with
  ``train.num_threads`` torch threads (set before any timing), warmed (``latency.warmup``) and the median
  of ``latency.repeats`` calls, in ms per nodule; the detail (batch, threads, warmup, repeats, device,
  spread, 1-minute load average) is kept with the value;
* ``flops``: multiply-adds per nodule in millions (:func:`naslung.models.complexity.count_flops`), a
  deterministic proxy for tests and reproducible comparisons; it is never mixed with measured values.

:func:`latency_tolerance` is the relative tolerance pruning and dominance use: ``search.latency_tolerance``
for measured latencies, 0 for FLOPs (exact). :class:`LatencyCache` keeps one value and its detail per
(architecture id, device, source, batch, threads, warmup, repeats) in a JSON file in the search folder.

:func:`run_candidate` is one unit of a POP search's fan-out (a :class:`CandidateJob` in, its
:class:`CandidateRecord` out): it trains the candidate inside its nested run of the search's tracker
(layout: :mod:`naslung.search.runs`), so the per-epoch curves are logged while it trains.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from naslung.params import LatencyParams, LatencySource, Params, SearchParams
from naslung.search import runs
from naslung.search.pop import Evaluated
from naslung.search.space import Stages
from naslung.tracker import NULL_TRACKER, Tracker

if TYPE_CHECKING:  # pragma: no cover
    from naslung.models.factory import AnySpec
    from naslung.models.spec import ArchSpec
    from naslung.train.loop import FitResult
    from naslung.train.protocol import DevData

LATENCY_UNITS: dict[LatencySource, str] = {"measured": "ms_per_nodule", "flops": "Mmac_per_nodule"}
"""Unit of a search's latency figures per ``search.latency_source``."""


@dataclass
class CandidateRecord:
    """Everything the search keeps about one trained candidate (JSON-safe)."""

    spec: dict[str, Any]
    spec_id: str
    ref_string: str
    stages: list[list[int]]
    objective: str
    score: float
    score_low: float
    score_high: float
    accuracy: float
    latency: float
    latency_unit: str
    flops: int
    n_params: int
    val_metrics: dict[str, float]
    history: list[dict[str, float]]
    best_epoch: int
    epochs: int
    seed: int
    device: str
    train_seconds: float
    started_at: float
    finished_at: float
    latency_detail: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = "final"
    n_val: int = 0
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CandidateRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def key(self) -> Stages:
        return stages_key(self.stages)

    def to_evaluated(self) -> Evaluated:
        return Evaluated(self.key, float(self.score), float(self.latency), self.to_dict())


def stages_key(stages: Any) -> Stages:
    a, b, c = (tuple(int(w) for w in st) for st in stages)
    return (a, b, c)


def latency_unit(search: SearchParams) -> str:
    """Unit of ``search.latency_source`` (a validated :data:`naslung.params.LatencySource`)."""
    return LATENCY_UNITS[search.latency_source]


def latency_tolerance(search: SearchParams) -> float:
    """Relative tolerance of "faster" in pruning and dominance: ``search.latency_tolerance`` for measured
    latencies, 0 for ``flops`` (deterministic, so any difference is real)."""
    return float(search.latency_tolerance) if search.latency_source == "measured" else 0.0


def latency_conditions(search: SearchParams, latency: LatencyParams, threads: int) -> dict[str, Any]:
    """What a cached latency must have been measured under to be reused (part of its cache key)."""
    if search.latency_source == "flops":
        return {}
    return {
        "batch_size": int(latency.batch_sizes[0]),
        "threads": int(threads),
        "warmup": int(latency.warmup),
        "repeats": int(latency.repeats),
    }


def spec_latency(
    spec: AnySpec,
    search: SearchParams,
    latency: LatencyParams,
    device: str = "cpu",
    margin_m: int = 4,
    threads: int | None = None,
) -> tuple[float, dict[str, Any]]:
    """Latency of ``spec`` (an ``ArchSpec`` or a DNAS ``DnasArch``) per ``search.latency_source`` (see
    module docstring) and the measurement detail. ``threads``: torch intra-op threads set before timing
    (``train.num_threads``; None keeps the process's setting, which the detail records either way)."""
    unit = latency_unit(search)
    if search.latency_source == "flops":
        from naslung.models.factory import spec_flops

        flops = int(spec_flops(spec))
        return flops / 1e6, {"unit": unit, "flops": flops}
    import torch

    from naslung.latency import measure_latency
    from naslung.models.factory import build

    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    torch.manual_seed(0)
    model = build(spec, margin_m=margin_m).to(device)
    detail = measure_latency(
        model, batch_size=int(latency.batch_sizes[0]), device=device, warmup=latency.warmup, repeats=latency.repeats
    )
    return float(detail["ms_per_nodule"]), {"unit": unit, **detail}


class LatencyCache:
    """Latency and its measurement detail per (spec id, device, source, conditions), optionally persisted.

    JSON layout: ``{key: {"value": float, "detail": {...}}}`` with ``key`` from :meth:`key`; a file of the
    older ``{key: value}`` layout is read with empty details. ``conditions`` (:func:`latency_conditions`:
    batch, threads, warmup, repeats; none for FLOPs) are part of the key, so a value measured under other
    settings is never reused. :meth:`put` saves at once when the cache has a path, so every latency measured
    is on disk before anything trains and a resumed search re-measures nothing.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path and self.path.exists():
            self.update(json.loads(self.path.read_text(encoding="utf-8")))

    @staticmethod
    def key(spec_id: str, device: str, source: str, conditions: Mapping[str, Any] | None = None) -> str:
        cond = "|".join(f"{k}={v}" for k, v in sorted((conditions or {}).items()))
        return f"{spec_id}|{device}|{source}" + (f"|{cond}" if cond else "")

    def update(self, data: Mapping[str, Any] | None) -> None:
        """Merge entries of either JSON layout (see the class docstring); present keys are kept."""
        for k, v in (data or {}).items():
            entry = (
                {"value": float(v["value"]), "detail": dict(v.get("detail") or {})}
                if isinstance(v, Mapping)
                else {
                    "value": float(v),
                    "detail": {},
                }
            )
            self.entries.setdefault(str(k), entry)

    @property
    def values(self) -> dict[str, float]:
        """``{key: value}`` of every entry."""
        return {k: float(e["value"]) for k, e in self.entries.items()}

    def get(self, spec_id: str, device: str, source: str, conditions: Mapping[str, Any] | None = None) -> float | None:
        e = self.entries.get(self.key(spec_id, device, source, conditions))
        return None if e is None else float(e["value"])

    def detail(
        self, spec_id: str, device: str, source: str, conditions: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        e = self.entries.get(self.key(spec_id, device, source, conditions))
        return {} if e is None else dict(e["detail"])

    def put(
        self,
        spec_id: str,
        device: str,
        source: str,
        value: float,
        detail: Mapping[str, Any] | None = None,
        conditions: Mapping[str, Any] | None = None,
    ) -> None:
        self.entries[self.key(spec_id, device, source, conditions)] = {
            "value": float(value),
            "detail": dict(detail or {}),
        }
        self.save()

    def to_json(self) -> dict[str, Any]:
        return {k: {"value": e["value"], "detail": e["detail"]} for k, e in sorted(self.entries.items())}

    def save(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(encoding="utf-8", data=json.dumps(self.to_json(), indent=1, default=float))
            tmp.replace(self.path)


@functools.lru_cache(maxsize=4)
def load_dev(artifacts: str, n_folds: int, test_fold: int, seed: int, n_val: int = 1) -> DevData:
    """Training + validation arrays of the search split (test fold excluded), cached per process."""
    from naslung.data.store import PatchStore
    from naslung.train.protocol import dev_data, make_split

    store = PatchStore.open(artifacts)
    return dev_data(store, make_split(n_folds, test_fold, seed, n_val))


def fit_fixed_epochs(
    spec: AnySpec,
    dev: DevData,
    params: Params,
    epochs: int,
    device: str,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> tuple[FitResult, str]:
    """Train ``spec`` for exactly ``epochs`` (``patience`` raised to ``epochs``: no early stopping) and keep
    the final weights (:func:`~naslung.train.loop.fit` with ``keep="last"``), so nothing is chosen on the
    validation folds; returns the fit and the checkpoint name (``"final"``)."""
    from naslung.train.loop import fit

    tp = dataclasses.replace(params.train, patience=max(int(params.train.patience), int(epochs)))
    res = fit(
        spec,
        dev.train,
        dev.val,
        params.model,
        tp,
        epochs=int(epochs),
        seed=params.seed,
        device=device,
        on_epoch=on_epoch,
        keep="last",
    )
    return res, "final"


def train_candidate(
    spec: ArchSpec,
    dev: DevData,
    params: Params,
    latency_value: float,
    latency_detail: dict[str, Any] | None = None,
    epochs: int | None = None,
    device: str | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    fitted: FitResult | None = None,
) -> CandidateRecord:
    """Train ``spec`` for ``epochs`` (default ``search.epochs``, fixed: no early stopping) on ``dev`` and score
    its final weights on the pooled validation folds by ``search.objective`` with a bootstrap interval (see
    the module docstring; :func:`fit_fixed_epochs`, :func:`naslung.search.objective.score_predictions`).

    ``latency_value`` is measured beforehand (by the caller, while nothing else trains) in
    ``latency_unit(params.search)``. ``on_epoch`` gets each history row while it trains. ``val_metrics``:
    :func:`naslung.metrics.binary_metrics` of the scored weights on the validation folds. ``fitted``: this
    very fit already made (:func:`run_candidates` with ``train.concurrent`` > 1); its rows go to ``on_epoch``.
    """
    import torch

    from naslung.metrics import binary_metrics
    from naslung.models.complexity import count_flops, count_params
    from naslung.search.objective import score_predictions
    from naslung.train.loop import predict_proba, resolve_device

    torch.set_num_threads(max(1, int(params.train.num_threads)))
    dev_name = resolve_device(device or params.train.device)
    n_epochs = int(epochs if epochs is not None else params.search.epochs)
    started = time.time()
    if fitted is not None:
        result, checkpoint = fitted, "final"
        started -= float(fitted.seconds)
        for row in fitted.history:
            if on_epoch is not None:
                on_epoch(row)
    else:
        result, checkpoint = fit_fixed_epochs(spec, dev, params, n_epochs, dev_name, on_epoch)
    finished = time.time()
    y_val = dev.val[1]
    prob = predict_proba(result.model, dev.val[0], dev_name)
    sc = score_predictions(y_val, prob, params.search.objective, seed=params.seed)
    vm = {k: float(v) for k, v in binary_metrics(y_val, prob).items()}
    return CandidateRecord(
        spec=spec.to_dict(),
        spec_id=spec.spec_id,
        ref_string=spec.ref_string(),
        stages=[list(st) for st in spec.stages],
        objective=sc.objective,
        score=sc.score,
        score_low=sc.score_low,
        score_high=sc.score_high,
        accuracy=sc.accuracy,
        latency=float(latency_value),
        latency_unit=latency_unit(params.search),
        flops=int(count_flops(spec)),
        n_params=int(count_params(result.model)),
        val_metrics=vm,
        history=[{k: float(v) for k, v in row.items()} for row in result.history],
        best_epoch=int(result.best_epoch),
        epochs=n_epochs,
        seed=int(params.seed),
        device=dev_name,
        train_seconds=float(result.seconds),
        started_at=started,
        finished_at=finished,
        latency_detail=dict(latency_detail or {}),
        checkpoint=checkpoint,
        n_val=sc.n_val,
    )


@dataclass(frozen=True)
class CandidateJob:
    """One candidate of a POP iteration, ready to train: its spec, its latency (measured before anything
    trains, in ``latency_unit(search)``) with the measurement detail, and where its run goes."""

    spec: ArchSpec
    latency: float
    latency_detail: Mapping[str, Any]
    search_id: str
    iteration: int
    parent_run_id: str | None = None


def run_candidates(
    jobs: list[CandidateJob], params: Params, artifacts: str, tracker: Tracker = NULL_TRACKER
) -> list[CandidateRecord]:
    """:func:`run_candidate` of each job, in order (a ``train_batch`` of :func:`naslung.search.pop_run.run_pop_search`).

    With ``train.concurrent`` = N > 1 the candidates' fixed-epoch fits are made N at a time first
    (:func:`naslung.train.concurrent.fit_many`, one CUDA stream each), each equal to its fit alone; each
    candidate's nested run then gets its epoch rows and result as if it had trained there.
    """
    n = int(params.train.concurrent)
    if n <= 1 or len(jobs) <= 1:
        return [run_candidate(j, params, artifacts, tracker) for j in jobs]
    from naslung.train.concurrent import FitJob, fit_in_groups
    from naslung.train.loop import resolve_device

    dev = load_dev(artifacts, params.prepare.n_folds, params.search.fold, params.seed, params.search.val_folds)
    epochs = int(params.search.epochs)
    tp = dataclasses.replace(params.train, patience=max(int(params.train.patience), epochs))
    fits = fit_in_groups(
        [
            FitJob(j.spec, dev.train, dev.val, params.model, tp, epochs=epochs, seed=params.seed, keep="last")
            for j in jobs
        ],
        n,
        device=resolve_device(params.train.device),
    )
    return [run_candidate(j, params, artifacts, tracker, fitted=f) for j, f in zip(jobs, fits)]


def run_candidate(
    job: CandidateJob, params: Params, artifacts: str, tracker: Tracker = NULL_TRACKER, fitted: FitResult | None = None
) -> CandidateRecord:
    """Train ``job.spec`` on the search split of ``artifacts`` (:func:`load_dev`, cached per process) inside
    its nested run under ``job.parent_run_id``; returns the record with its ``run_id``. ``fitted``: its fit
    already made (:func:`run_candidates`)."""
    from naslung.train.loop import resolve_device

    dev = load_dev(artifacts, params.prepare.n_folds, params.search.fold, params.seed, params.search.val_folds)
    spec = job.spec
    with runs.candidate_run(
        tracker,
        job.parent_run_id,
        spec,
        search_id=job.search_id,
        strategy="pop",
        run_name=f"cand-{spec.spec_id}",
        params={
            "depths": "x".join(str(len(st)) for st in spec.stages),
            "epochs": params.search.epochs,
            "seed": params.seed,
            "device": resolve_device(params.train.device),
            "latency_unit": latency_unit(params.search),
            "objective": params.search.objective,
            "val_folds": params.search.val_folds,
        },
        tags={"naslung.iteration": str(job.iteration)},
        artifacts=artifacts,
    ) as run_id:
        record = train_candidate(
            spec, dev, params, job.latency, dict(job.latency_detail), on_epoch=tracker.log_epoch, fitted=fitted
        )
        record.run_id = run_id
        runs.log_candidate_result(tracker, record.to_dict())
    return record
