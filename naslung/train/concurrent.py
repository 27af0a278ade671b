"""Several models trained at once on one device: :func:`fit_many`, lockstep over :func:`~naslung.train.loop.fit`.

Each :class:`FitJob` is one :func:`~naslung.train.loop.fit` call (spec, data, params, seed, ``on_epoch``,
``keep``). :func:`fit_many` sets all of them up, then runs epoch by epoch in lockstep: within an epoch the
optimiser steps of the models are interleaved (model 1 step 1, model 2 step 1, ..., model 1 step 2, ...), then
every model launches its validation pass, then each reads its epoch back (one host sync per model and epoch)
and records it; a model that stops early drops out of the rotation. On CUDA each model works on its own
``torch.cuda.Stream``, so the small kernels of several small networks can overlap on the GPU while Python
enqueues the next model's step; on CPU the streams are no-ops and the loop runs the models one after the other.

Results equal ``fit`` of each model alone with the same seed (tested on CPU, bitwise): every model's
randomness is its own (weights initialised right after ``torch.manual_seed(seed)`` at set-up, before the next
model is built; shuffling and augmentation from its own CPU generator), and nothing else is shared but the
read-only data tensors (jobs passing the same array objects share one device copy).

Streams rather than ``torch.func.stack_module_state`` / ``vmap``: the candidates and members have different
architectures (vmap needs one architecture; and BatchNorm's running statistics under ``functional_call``
would need the buffers batched too). For same-architecture members vmap would fuse the K forwards into one
kernel per layer; not done here.

Timing fields (``FitResult.seconds``, the rows' ``seconds``) are wall time and include the time of the other
models trained alongside.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from naslung.models.factory import AnySpec
from naslung.params import ModelParams, TrainParams
from naslung.train.loop import ArrayPair, FitResult, _Data, _Trainer, resolve_device

_DONE = object()


@dataclass(frozen=True)
class FitJob:
    """The arguments of one :func:`~naslung.train.loop.fit` call (``device`` and ``progress`` are
    :func:`fit_many`'s)."""

    spec: AnySpec
    train: ArrayPair
    val: ArrayPair
    model_params: ModelParams
    train_params: TrainParams
    epochs: int | None = None
    seed: int = 0
    on_epoch: Callable[[dict[str, float]], None] | None = None
    keep: str = "best"


def fit_many(jobs: Sequence[FitJob], device: str = "cpu", progress: bool = False) -> list[FitResult]:
    """Train every job at once, in lockstep (see the module docstring); results in job order, each equal to
    ``fit`` of that job alone. ``device``: cpu | cuda | cuda:<index> | auto (one device for all)."""
    device = resolve_device(device)
    data = _Data()
    trainers = [
        _Trainer(
            j.spec,
            j.train,
            j.val,
            j.model_params,
            j.train_params,
            epochs=j.epochs,
            seed=j.seed,
            device=device,
            on_epoch=j.on_epoch,
            progress=progress,
            keep=j.keep,
            data=data,
            stream=len(jobs) > 1,
        )
        for j in jobs
    ]
    while True:
        active = [t for t in trainers if not t.done]
        if not active:
            break
        epochs: list[Iterator[None]] = [t.epoch() for t in active]
        while epochs:  # round robin over the models' steps until each has finished its epoch
            epochs = [it for it in epochs if next(it, _DONE) is not _DONE]
    return [t.result() for t in trainers]


def fit_in_groups(jobs: Sequence[FitJob], size: int, device: str = "cpu", progress: bool = False) -> list[FitResult]:
    """:func:`fit_many` over consecutive groups of ``size`` jobs (``size`` 1: plain ``fit`` one by one)."""
    if size < 1:
        raise ValueError(f"fit_in_groups: size must be >= 1, got {size}")
    out: list[FitResult] = []
    for i in range(0, len(jobs), size):
        out += fit_many(jobs[i : i + size], device=device, progress=progress)
    return out
