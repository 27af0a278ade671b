"""Train and score one search candidate on the validation fold; measure or look up its latency.

The search only ever sees the training and validation folds of ``make_split(n_folds, search.fold, seed)``:
:func:`load_dev` reads them through :func:`naslung.train.protocol.dev_data`, which has no access to the
test fold. A candidate's score is the validation accuracy (fraction in [0, 1]) of its best-on-validation
epoch after ``search.epochs`` epochs (early stopping per ``train.patience``).

Latency (``search.latency_source``):

* ``measured``: :func:`naslung.latency.measure_latency` on the untrained network (latency depends on the
  architecture, not on the weights) at ``latency.batch_sizes[0]`` on the training device, warmed
  (``latency.warmup``) and the median of ``latency.repeats`` calls, in ms per nodule;
* ``flops``: multiply-adds per nodule in millions (:func:`naslung.models.complexity.count_flops`), a
  deterministic proxy for tests and reproducible comparisons; it is never mixed with measured values.

:class:`LatencyCache` keeps one value per (architecture id, device, source) in a JSON file.

:func:`run_candidate` is one unit of a POP search's fan-out (a :class:`CandidateJob` in, its
:class:`CandidateRecord` out): it trains the candidate inside its nested run of the search's tracker
(layout: :mod:`naslung.search.runs`), so the per-epoch curves are logged while it trains.
"""

from __future__ import annotations

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
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CandidateRecord:
        return cls(**d)

    @property
    def key(self) -> Stages:
        return stages_key(self.stages)

    def to_evaluated(self) -> Evaluated:
        return Evaluated(self.key, float(self.accuracy), float(self.latency), self.to_dict())


def stages_key(stages: Any) -> Stages:
    a, b, c = (tuple(int(w) for w in st) for st in stages)
    return (a, b, c)


def latency_unit(search: SearchParams) -> str:
    """Unit of ``search.latency_source`` (a validated :data:`naslung.params.LatencySource`)."""
    return LATENCY_UNITS[search.latency_source]


def spec_latency(
    spec: AnySpec, search: SearchParams, latency: LatencyParams, device: str = "cpu", margin_m: int = 4
) -> tuple[float, dict[str, Any]]:
    """Latency of ``spec`` (an ``ArchSpec`` or a DNAS ``DnasArch``) per ``search.latency_source`` (see
    module docstring) and the measurement detail."""
    unit = latency_unit(search)
    if search.latency_source == "flops":
        from naslung.models.factory import spec_flops

        flops = int(spec_flops(spec))
        return flops / 1e6, {"unit": unit, "flops": flops}
    import torch

    from naslung.latency import measure_latency
    from naslung.models.factory import build

    torch.manual_seed(0)
    model = build(spec, margin_m=margin_m).to(device)
    detail = measure_latency(
        model, batch_size=int(latency.batch_sizes[0]), device=device, warmup=latency.warmup, repeats=latency.repeats
    )
    return float(detail["ms_per_nodule"]), {"unit": unit, **detail}


class LatencyCache:
    """Latency per (spec id, device, source), optionally persisted as JSON (``{key: value}``)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self.values: dict[str, float] = {}
        if self.path and self.path.exists():
            self.values = {k: float(v) for k, v in json.loads(self.path.read_text(encoding="utf-8")).items()}

    @staticmethod
    def key(spec_id: str, device: str, source: str) -> str:
        return f"{spec_id}|{device}|{source}"

    def get(self, spec_id: str, device: str, source: str) -> float | None:
        return self.values.get(self.key(spec_id, device, source))

    def put(self, spec_id: str, device: str, source: str, value: float) -> None:
        self.values[self.key(spec_id, device, source)] = float(value)

    def save(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(encoding="utf-8", data=json.dumps(self.values, indent=1, sort_keys=True))


@functools.lru_cache(maxsize=4)
def load_dev(artifacts: str, n_folds: int, test_fold: int, seed: int) -> DevData:
    """Training + validation arrays of the search split (test fold excluded), cached per process."""
    from naslung.data.store import PatchStore
    from naslung.train.protocol import dev_data, make_split

    store = PatchStore.open(artifacts)
    return dev_data(store, make_split(n_folds, test_fold, seed))


def train_candidate(
    spec: ArchSpec,
    dev: DevData,
    params: Params,
    latency_value: float,
    latency_detail: dict[str, Any] | None = None,
    epochs: int | None = None,
    device: str | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> CandidateRecord:
    """Train ``spec`` for ``epochs`` (default ``search.epochs``) on ``dev`` and score it on the validation fold.

    ``latency_value`` is measured beforehand (by the caller, while nothing else trains) in
    ``latency_unit(params.search)``. ``on_epoch`` gets each history row while it trains.
    """
    import torch

    from naslung.models.complexity import count_flops, count_params
    from naslung.train.loop import fit, resolve_device

    torch.set_num_threads(max(1, int(params.train.num_threads)))
    dev_name = resolve_device(device or params.train.device)
    n_epochs = int(epochs if epochs is not None else params.search.epochs)
    started = time.time()
    result = fit(
        spec,
        dev.train,
        dev.val,
        params.model,
        params.train,
        epochs=n_epochs,
        seed=params.seed,
        device=dev_name,
        on_epoch=on_epoch,
    )
    finished = time.time()
    vm = {k: float(v) for k, v in result.val_metrics.items()}
    return CandidateRecord(
        spec=spec.to_dict(),
        spec_id=spec.spec_id,
        ref_string=spec.ref_string(),
        stages=[list(st) for st in spec.stages],
        accuracy=float(vm["accuracy"]),
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


def run_candidate(
    job: CandidateJob, params: Params, artifacts: str, tracker: Tracker = NULL_TRACKER
) -> CandidateRecord:
    """Train ``job.spec`` on the search split of ``artifacts`` (:func:`load_dev`, cached per process) inside
    its nested run under ``job.parent_run_id``; returns the record with its ``run_id``."""
    from naslung.train.loop import resolve_device

    dev = load_dev(artifacts, params.prepare.n_folds, params.search.fold, params.seed)
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
        },
        tags={"naslung.iteration": str(job.iteration)},
    ) as run_id:
        record = train_candidate(spec, dev, params, job.latency, dict(job.latency_detail), on_epoch=tracker.log_epoch)
        record.run_id = run_id
        runs.log_candidate_result(tracker, record.to_dict())
    return record
