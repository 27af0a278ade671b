"""Training loop: Adam, augmented mini-batches, validation each epoch, early stopping, best-on-val state.

Inputs are numpy/torch arrays X (n, 1, 32, 32, 32) float32 in [0, 1] (z, y, x order) and y (n,) int64
(0 benign, 1 malignant). Selection uses only the validation arrays passed in; the test fold never reaches
this module (see :mod:`naslung.train.protocol`, whose seal ``fit`` checks).

Model selection: by ``train_params.select_by`` (default validation ROC AUC, ties broken by F1, then by
lower validation loss; see :func:`selection_key`). Training stops after ``train_params.patience`` epochs without a
better epoch, and the returned model carries the weights of the best epoch.

A-Softmax margin: the loss's λ schedule is planned over the run before training
(``epochs × steps_per_epoch(n_train, batch_size)`` optimiser steps, :meth:`~naslung.models.asoftmax.ASoftmaxLoss.plan`),
so λ reaches ``model.lambda_min`` at ``model.lambda_floor_at`` of the planned epochs whatever their number;
each history row logs ``lambda`` and ``margin_weight`` = 1 / (1 + λ) after that epoch's steps (NaN for a
linear head). Early stopping ends a run before its plan: the plan follows the maximum epochs.

Determinism: with the same seed, data and device, two CPU fits give bitwise identical weights (weights are
initialised after ``torch.manual_seed(seed)``; shuffling and augmentation use a private generator).

Device path: the training and validation tensors are copied to the device once per fit; each epoch's
shuffling and augmentation numbers are drawn up front from the CPU generator (the same draws, in the same
order, as drawing them batch by batch, so the results are the same function of the seed on CPU and CUDA) and
copied in one pinned transfer; augmentation runs on the device (:func:`~naslung.train.augment.apply_augment`);
the training and validation losses are summed on the device in float64 and read back, with the validation
probabilities, once per epoch, so no optimiser step waits for the host. Validation runs in batches of
:func:`eval_batch_size` with one forward per batch. ``train.precision`` adds autocast
(:mod:`naslung.train.precision`). On CPU, with ``train.memory_format: contiguous``, all of this is the same
sequence of operations as the plain loop before it (tests/model/test_train_gpu_path.py compares them
bitwise); the default ``auto`` trains in channels-last-3d on CPU (:func:`resolve_memory_format`), which is
faster there and changes only the rounding (the same test bounds the difference). Several fits at once:
:func:`naslung.train.concurrent.fit_many`.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from naslung.data.patches import check_patches
from naslung.metrics import binary_metrics
from naslung.models.asoftmax import build_loss
from naslung.models.factory import AnySpec, build
from naslung.params import ModelParams, TrainParams
from naslung.train.augment import AugmentDraw, apply_augment, check_augment_input, draw_augment
from naslung.train.precision import autocast, fp32_outputs, grad_scaler, resolve_precision
from naslung.train.protocol import DevData, HeldOutTest, ProtocolError, check_not_sealed

ArrayPair = tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]
_TensorFn = Callable[[torch.Tensor], torch.Tensor]
"""Type of the model methods called here (``features``, ``forward_train``): ``nn.Module.__getattr__`` is typed
``Tensor | Module``."""


@dataclass
class FitResult:
    """A fitted model (best-on-validation weights loaded, eval mode) and its per-epoch history."""

    model: nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    val_metrics: dict[str, float]
    device: str = "cpu"
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    """The resolved ``train.precision`` it trained in (fp32 | bf16 | fp16)."""


def resolve_device(device: str | None) -> str:
    """``auto``/None -> ``cuda`` when available, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:<index>`` pass
    through (a ValueError names anything else, or CUDA asked for where there is none)."""
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda or cuda:<index>")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


def resolve_memory_format(memory_format: str, device: str | torch.device) -> torch.memory_format:
    """The training layout of ``train.memory_format`` on ``device``: ``channels_last`` ->
    ``torch.channels_last_3d``, ``contiguous`` -> ``torch.contiguous_format``, ``auto`` -> channels-last-3d on
    CPU (where oneDNN's 3D convolutions run faster in it), contiguous elsewhere. ValueError for other names."""
    if memory_format == "auto":
        memory_format = "channels_last" if torch.device(device).type == "cpu" else "contiguous"
    if memory_format == "channels_last":
        return torch.channels_last_3d
    if memory_format == "contiguous":
        return torch.contiguous_format
    raise ValueError(f"train.memory_format must be auto, channels_last or contiguous; got {memory_format!r}")


def _as_tensors(pair: ArrayPair, role: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(pair, HeldOutTest):
        raise ProtocolError(f"fit: the held-out test fold cannot be used as {role} data")
    try:
        X, y = pair
    except (TypeError, ValueError) as exc:
        raise TypeError(f"fit: {role} data must be a pair (X, y)") from exc
    check_not_sealed(X, role)
    arr = X.detach().float().cpu().numpy() if isinstance(X, torch.Tensor) else X  # once per fit, not per batch
    x = check_patches(np.asarray(arr, dtype=np.float32), f"fit: {role} X", size=None, values=False, allow_empty=True)
    Xt = torch.as_tensor(x).unsqueeze(1)
    yt = torch.as_tensor(np.array(y) if not isinstance(y, torch.Tensor) else y).long().ravel()
    if Xt.shape[0] != yt.shape[0]:
        raise ValueError(f"fit: {role} X has {Xt.shape[0]} rows but y has {yt.shape[0]}")
    if Xt.shape[0] == 0:
        raise ValueError(f"fit: {role} data is empty")
    return Xt, yt


def _as_batch(X: np.ndarray | torch.Tensor) -> torch.Tensor:
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float32) if not isinstance(X, torch.Tensor) else X).float()
    return Xt.unsqueeze(1) if Xt.ndim == 4 else Xt


@torch.no_grad()
def predict_proba(
    model: nn.Module, X: np.ndarray | torch.Tensor, device: str = "cpu", batch_size: int | None = None
) -> np.ndarray:
    """Malignancy probability (n,) = softmax(model(x))[:, 1], computed in eval mode in batches of
    ``batch_size`` (default 128 on CPU, 512 on CUDA). On CUDA ``X`` is copied to the device once and the
    probabilities come back once (no per-batch host sync)."""
    model.eval()
    Xt = _as_batch(X)
    cuda = torch.device(device).type == "cuda"
    bs = int(batch_size or (512 if cuda else 128))
    if cuda:
        Xt = Xt.to(device, non_blocking=False)
    out = []
    for i in range(0, Xt.shape[0], bs):
        logits = model(Xt[i : i + bs].to(device))
        p = torch.softmax(logits.float(), dim=1)[:, 1]
        out.append(p if cuda else p.cpu())
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, dtype=np.float32)


@torch.no_grad()
def extract_features(
    model: nn.Module, X: np.ndarray | torch.Tensor, device: str = "cpu", batch_size: int = 128
) -> np.ndarray:
    """Penultimate features (n, C) = ``model.features(x)`` (after global average pooling), eval mode."""
    model.eval()
    Xt = _as_batch(X)
    out = [
        cast(_TensorFn, model.features)(Xt[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, Xt.shape[0], batch_size)
    ]
    return torch.cat(out).numpy()


def eval_batch_size(train_params: TrainParams, device: str) -> int:
    """Validation batch size of :func:`fit`: ``train.eval_batch_size``, or for 0 (auto) max(batch_size, 64)
    on CPU (the historical setting: CPU results unchanged) and 256 on CUDA."""
    n = int(train_params.eval_batch_size)
    if n > 0:
        return n
    return max(int(train_params.batch_size), 64) if torch.device(device).type == "cpu" else 256


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimiser steps of one :func:`fit` epoch over ``n_train`` samples: ``ceil(n_train / batch_size)``, less
    a trailing batch of one sample, which the loop skips (BatchNorm needs 2+ samples)."""
    if n_train < 1 or batch_size < 1:
        raise ValueError(f"steps_per_epoch: n_train and batch_size must be >= 1, got {n_train}, {batch_size}")
    steps = math.ceil(n_train / batch_size)
    if n_train >= 2 and n_train % batch_size == 1:
        steps -= 1
    return steps


def selection_key(m: dict[str, float], select_by: str = "auc") -> tuple[float, float, float]:
    """Order of epochs for model selection (higher is better).

    ``select_by="auc"``: validation ROC AUC, then F1, then lower loss — threshold-free, so an epoch that
    calls every nodule malignant (F1 ≈ 0.6 on a balanced fold) cannot win; ``"f1"``: F1, then AUC, then
    loss; ``"loss"``: lower validation loss, then AUC, then F1. NaN AUC (one-class fold) ranks lowest.
    """
    auc = m["val_auc"] if not math.isnan(m["val_auc"]) else -1.0
    if select_by == "auc":
        return (auc, m["val_f1"], -m["val_loss"])
    if select_by == "f1":
        return (m["val_f1"], auc, -m["val_loss"])
    if select_by == "loss":
        return (-m["val_loss"], auc, m["val_f1"])
    raise ValueError(f"train.select_by must be auc, f1 or loss, got {select_by!r}")


class _Data:
    """The (X, y) tensors of the pairs a fit (or a :func:`~naslung.train.concurrent.fit_many` group) trains
    and validates on, checked once and moved to the device once; pairs passed as the same objects share."""

    def __init__(self) -> None:
        self._host: dict[tuple[int, int, str], tuple[ArrayPair, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._device: dict[tuple[int, str], torch.Tensor] = {}

    def get(self, pair: ArrayPair, role: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``_as_tensors(pair, role)``, once per (pair objects, role)."""
        key = (id(pair[0]), id(pair[1]), role) if isinstance(pair, (tuple, list)) and len(pair) == 2 else None
        if key is not None and key in self._host:
            return self._host[key][1]
        tensors = _as_tensors(pair, role)
        if key is not None:
            self._host[key] = (pair, tensors)  # the pair is kept alive, so its ids stay its own
        return tensors

    def on(self, t: torch.Tensor, device: str) -> torch.Tensor:
        """``t`` on ``device``, copied once."""
        if device == "cpu":
            return t
        key = (id(t), device)
        if key not in self._device:
            self._device[key] = t.to(device)
        return self._device[key]


class _Trainer:
    """One :func:`fit` as a state machine: set-up, then :meth:`epoch` (a generator yielding after each
    optimiser step and after launching the validation pass) until :attr:`done`, then :meth:`result`.

    :func:`fit` runs one; :func:`naslung.train.concurrent.fit_many` interleaves several. All randomness is
    private (weights initialised right after ``torch.manual_seed(seed)`` at set-up; shuffling and
    augmentation from the trainer's own CPU generator), so interleaving does not change any result.

    Per epoch the shuffling and augmentation numbers are drawn up front (the same draws in the same order as
    drawing them per batch) and, on CUDA, copied to the device in one pinned transfer; the training loss is
    summed on the device in float64 (exactly the sum of ``float(loss) * n`` the CPU loop always formed) and,
    with the validation loss and probabilities, read back once at the end of the epoch.
    """

    def __init__(
        self,
        spec: AnySpec,
        train: ArrayPair,
        val: ArrayPair,
        model_params: ModelParams,
        train_params: TrainParams,
        *,
        epochs: int | None,
        seed: int,
        device: str,
        on_epoch: Callable[[dict[str, float]], None] | None,
        progress: bool,
        keep: str,
        data: _Data | None = None,
        stream: bool = False,
    ) -> None:
        if isinstance(train, DevData) or isinstance(val, DevData):
            raise TypeError("fit: pass dev.train and dev.val (or use fit_dev)")
        if keep not in ("best", "last"):
            raise ValueError(f"fit: keep must be 'best' or 'last', got {keep!r}")
        data = data or _Data()
        Xtr, ytr = data.get(train, "training")
        Xva, yva = data.get(val, "validation")
        device = resolve_device(device)
        n_epochs = int(epochs if epochs is not None else train_params.epochs)
        if n_epochs < 1:
            raise ValueError(f"fit: epochs must be >= 1, got {n_epochs}")
        self.spec, self.tp, self.device, self.n_epochs, self.keep = spec, train_params, device, n_epochs, keep
        self.on_epoch = on_epoch
        self.bs = int(train_params.batch_size)
        self.eval_bs = eval_batch_size(train_params, device)
        self.precision = resolve_precision(train_params.precision, device)
        self.cuda = torch.device(device).type == "cuda"
        self.layout = resolve_memory_format(train_params.memory_format, device)

        torch.manual_seed(seed)
        self.model = build(spec, margin_m=model_params.margin_m).to(device)
        if self.layout != torch.contiguous_format:
            # the weights only: a one-channel batch (N, 1, D, H, W) is already channels-last-contiguous
            self.model = self.model.to(memory_format=self.layout)  # type: ignore[call-overload]
        steps = n_epochs * steps_per_epoch(Xtr.shape[0], self.bs)
        self.loss_fn = build_loss(spec, model_params, total_steps=steps).to(device)
        self.opt = torch.optim.Adam(
            self.model.parameters(),
            lr=train_params.lr,
            betas=cast("tuple[float, float]", tuple(train_params.betas)),
            weight_decay=train_params.weight_decay,
        )
        self.schedule: Any = (  # train.lr_schedule is a validated LrSchedule: constant | cosine
            torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=n_epochs)
            if train_params.lr_schedule == "cosine"
            else None
        )
        self.gen = torch.Generator().manual_seed(seed)
        check_augment_input(Xtr, train_params.pad, train_params.permute_axes)
        self.Xtr, self.ytr, self.Xva, self.yva = (data.on(t, device) for t in (Xtr, ytr, Xva, yva))
        self.yva_host = yva.numpy()
        self.scaler = grad_scaler(device, self.precision)
        self.stream: Any = None
        if self.cuda and stream:
            self.stream = torch.cuda.Stream(device=device)
            self.stream.wait_stream(torch.cuda.current_stream(device))  # data and weights made on the default one

        self.history: list[dict[str, float]] = []
        self.best_key: tuple[float, float, float] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch, self.best_row, self.since_best = 0, cast("dict[str, float]", {}), 0
        self.done = False
        self.epoch_no = 0
        self.start = time.perf_counter()
        self.bar = tqdm(
            total=n_epochs,
            desc=f"fit {getattr(spec, 'spec_id', '')}",
            unit="epoch",
            disable=not progress,
            leave=False,
        )

    def _on_stream(self) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def _draw_epoch(self) -> tuple[torch.Tensor, list[tuple[int, int]], AugmentDraw | None]:
        """This epoch's sample order (only full batches: a trailing singleton is dropped, BatchNorm needs 2+),
        the (start, stop) of each batch in it and the augmentation draws of all batches, in draw order."""
        tp, n = self.tp, self.Xtr.shape[0]
        perm = torch.randperm(n, generator=self.gen)
        kept, spans, draws = [], [], []
        pos = 0
        for i in range(0, perm.numel(), self.bs):
            idx = perm[i : i + self.bs]
            if idx.numel() < 2 and perm.numel() >= 2:
                continue
            kept.append(idx)
            spans.append((pos, pos + idx.numel()))
            pos += idx.numel()
            draw = draw_augment(idx.numel(), self.gen, pad=tp.pad, flips=tp.flips, permute_axes=tp.permute_axes)
            if draw is not None:
                draws.append(draw)
        order = torch.cat(kept)
        aug = AugmentDraw.cat(draws) if draws else None
        if self.cuda:  # one pinned host -> device copy per epoch
            order = order.pin_memory().to(self.device, non_blocking=True)
            aug = aug if aug is None else aug.pin().to(self.device, non_blocking=True)
        return order, spans, aug

    def epoch(self) -> Iterator[None]:
        """One epoch: yields after each optimiser step and once after launching validation, then records the
        epoch (history row, selection, early stopping, ``on_epoch``)."""
        if self.done:
            return
        tp, model, loss_fn = self.tp, self.model, self.loss_fn
        self.epoch_no += 1
        t0 = time.perf_counter()
        with self._on_stream():
            model.train()
            order, spans, aug = self._draw_epoch()
            running = torch.zeros((), dtype=torch.float64, device=self.device)
        seen = 0
        forward_train = cast(_TensorFn, model.forward_train)
        for start, stop in spans:
            with self._on_stream():
                idx = order[start:stop]
                xb = apply_augment(self.Xtr[idx], None if aug is None else aug.rows(start, stop), tp.pad)
                yb = self.ytr[idx]
                self.opt.zero_grad(set_to_none=True)
                with autocast(self.device, self.precision):
                    out = forward_train(xb)
                loss = loss_fn(fp32_outputs(out), yb)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.opt)
                    self.scaler.update()
                else:
                    loss.backward()
                    self.opt.step()
                if hasattr(loss_fn, "step"):
                    cast("Callable[[], object]", loss_fn.step)()
                running += loss.detach().double() * (stop - start)  # == float(loss) * n, summed in float64
                seen += stop - start
            yield
        with self._on_stream():
            pending = self._launch_eval()
        yield
        with self._on_stream():
            host = torch.cat([running.view(1), pending[0].view(1), pending[1].double()]).cpu()  # one read
        val_loss = float(host[1]) / self.Xva.shape[0]
        val_prob = host[2:].float().numpy()
        self._record(t0, float(host[0]) / max(seen, 1), val_loss, val_prob)

    @torch.no_grad()
    def _launch_eval(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation pass on the device: (sum of loss · n in float64, probabilities) — not read back here.
        One forward per batch: the prediction logits are the first output of ``forward_train`` (A-Softmax:
        ``||x|| cos θ``, what ``model(x)`` returns) or the output itself (linear head)."""
        model = self.model
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        probs = []
        forward_train = cast(_TensorFn, model.forward_train)
        for i in range(0, self.Xva.shape[0], self.eval_bs):
            xb, yb = self.Xva[i : i + self.eval_bs], self.yva[i : i + self.eval_bs]
            with autocast(self.device, self.precision):
                out = forward_train(xb)
            out = fp32_outputs(out)
            total += self.loss_fn(out, yb).double() * xb.shape[0]
            logits = out[0] if isinstance(out, tuple) else out
            probs.append(torch.softmax(logits.float(), dim=1)[:, 1])
        return total, torch.cat(probs)

    def _record(self, t0: float, train_loss: float, val_loss: float, val_prob: np.ndarray) -> None:
        vm = binary_metrics(self.yva_host, val_prob)
        row: dict[str, float] = {
            "epoch": float(self.epoch_no),
            "train_loss": train_loss,
            "val_loss": val_loss,
            **{f"val_{k}": v for k, v in vm.items()},
            "lambda": float(getattr(self.loss_fn, "lam", math.nan)),
            "margin_weight": float(getattr(self.loss_fn, "margin_weight", math.nan)),
            "lr": float(self.opt.param_groups[0]["lr"]),
            "seconds": time.perf_counter() - t0,
        }
        self.history.append(row)
        if self.schedule is not None:
            self.schedule.step()
        key = selection_key(row, self.tp.select_by)
        if self.best_key is None or key > self.best_key:
            self.best_key, self.best_epoch, self.best_row, self.since_best = key, self.epoch_no, row, 0
            with self._on_stream():
                self.best_state = self._state_copy()
        else:
            self.since_best += 1
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_f1=f"{vm['f1']:.3f}", best=self.best_epoch)
        if self.on_epoch is not None:
            self.on_epoch(row)
        if self.since_best >= self.tp.patience or self.epoch_no >= self.n_epochs:
            self.done = True

    def _state_copy(self) -> dict[str, torch.Tensor]:
        """The weights now (a copy on the training device: no device -> host transfer per best epoch)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def result(self) -> FitResult:
        """The fit: best-on-validation (or, with ``keep="last"``, last) weights loaded, eval mode."""
        self.bar.close()
        if self.keep == "last":
            self.best_epoch, self.best_row = len(self.history), self.history[-1]
            with self._on_stream():
                self.best_state = self._state_copy()
        assert self.best_state is not None
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        self.model.load_state_dict(self.best_state)
        if self.layout != torch.contiguous_format:  # returned as built: latency, export and fusion see NCDHW
            self.model = self.model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        self.model.eval()
        val_metrics = {k[4:]: v for k, v in self.best_row.items() if k.startswith("val_")}
        return FitResult(
            self.model,
            self.history,
            self.best_epoch,
            val_metrics,
            self.device,
            time.perf_counter() - self.start,
            precision=self.precision,
        )


def fit(
    spec: AnySpec,
    train: ArrayPair,
    val: ArrayPair,
    model_params: ModelParams,
    train_params: TrainParams,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    progress: bool = False,
    keep: str = "best",
) -> FitResult:
    """Train ``spec`` on ``train`` with early stopping on ``val``; return the best-on-val model.

    ``spec``: an :class:`~naslung.models.spec.ArchSpec` (``NASLungNet``) or a DNAS-derived
    :class:`~naslung.models.mbconv.DnasArch` (``DnasNet``); the model comes from
    :func:`naslung.models.factory.build` and the loss from the spec's head (``build_loss``: A-Softmax or
    cross-entropy; a ``DnasArch`` has a linear head, so cross-entropy).

    ``epochs`` defaults to ``train_params.epochs``. ``on_epoch`` is called with each history row
    (epoch, train_loss, val_loss, val_accuracy, val_sensitivity, val_specificity, val_f1, val_auc,
    lambda, margin_weight, lr, seconds). The loss's λ schedule is planned over
    ``epochs × steps_per_epoch(n_train, batch_size)`` optimiser steps. ``device``: ``cpu``, ``cuda`` or ``auto``.
    ``train_params.precision`` (fp32 | bf16 | fp16 | auto, :mod:`naslung.train.precision`) sets the autocast
    of the forward; the resolved one is ``FitResult.precision``. Validation runs in batches of
    :func:`eval_batch_size`.

    ``keep``: ``"best"`` (default) returns the best-on-validation epoch's weights; ``"last"`` the last epoch's
    (``best_epoch`` and ``val_metrics`` then describe that last epoch; early stopping still applies, so pair it
    with a ``patience`` >= ``epochs`` for a fixed-length run).
    """
    trainer = _Trainer(
        spec,
        train,
        val,
        model_params,
        train_params,
        epochs=epochs,
        seed=seed,
        device=device,
        on_epoch=on_epoch,
        progress=progress,
        keep=keep,
    )
    while not trainer.done:
        for _ in trainer.epoch():
            pass
    return trainer.result()


def fit_dev(
    spec: AnySpec,
    dev: DevData,
    model_params: ModelParams,
    train_params: TrainParams,
    **kwargs: Any,
) -> FitResult:
    """:func:`fit` on the train/validation arrays of a :class:`~naslung.train.protocol.DevData`."""
    if not isinstance(dev, DevData):
        raise TypeError(f"fit_dev: expected DevData, got {type(dev).__name__}")
    return fit(spec, dev.train, dev.val, model_params, train_params, **kwargs)
