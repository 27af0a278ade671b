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
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
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
from naslung.train.augment import augment_batch
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


@torch.no_grad()
def predict_proba(
    model: nn.Module, X: np.ndarray | torch.Tensor, device: str = "cpu", batch_size: int = 128
) -> np.ndarray:
    """Malignancy probability (n,) = softmax(model(x))[:, 1], computed in eval mode in batches."""
    model.eval()
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float32) if not isinstance(X, torch.Tensor) else X).float()
    if Xt.ndim == 4:
        Xt = Xt.unsqueeze(1)
    out = []
    for i in range(0, Xt.shape[0], batch_size):
        logits = model(Xt[i : i + batch_size].to(device))
        out.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


@torch.no_grad()
def extract_features(
    model: nn.Module, X: np.ndarray | torch.Tensor, device: str = "cpu", batch_size: int = 128
) -> np.ndarray:
    """Penultimate features (n, C) = ``model.features(x)`` (after global average pooling), eval mode."""
    model.eval()
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float32) if not isinstance(X, torch.Tensor) else X).float()
    if Xt.ndim == 4:
        Xt = Xt.unsqueeze(1)
    out = [
        cast(_TensorFn, model.features)(Xt[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, Xt.shape[0], batch_size)
    ]
    return torch.cat(out).numpy()


@torch.no_grad()
def _evaluate(
    model: nn.Module, loss_fn: nn.Module, X: torch.Tensor, y: torch.Tensor, device: str, batch_size: int
) -> tuple[float, np.ndarray]:
    model.eval()
    total, probs = 0.0, []
    for i in range(0, X.shape[0], batch_size):
        xb, yb = X[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        total += float(loss_fn(cast(_TensorFn, model.forward_train)(xb), yb)) * xb.shape[0]
        probs.append(torch.softmax(model(xb).float(), dim=1)[:, 1].cpu())
    return total / X.shape[0], torch.cat(probs).numpy()


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

    ``keep``: ``"best"`` (default) returns the best-on-validation epoch's weights; ``"last"`` the last epoch's
    (``best_epoch`` and ``val_metrics`` then describe that last epoch; early stopping still applies, so pair it
    with a ``patience`` >= ``epochs`` for a fixed-length run).
    """
    if isinstance(train, DevData) or isinstance(val, DevData):
        raise TypeError("fit: pass dev.train and dev.val (or use fit_dev)")
    if keep not in ("best", "last"):
        raise ValueError(f"fit: keep must be 'best' or 'last', got {keep!r}")
    Xtr, ytr = _as_tensors(train, "training")
    Xva, yva = _as_tensors(val, "validation")
    device = resolve_device(device)
    n_epochs = int(epochs if epochs is not None else train_params.epochs)
    if n_epochs < 1:
        raise ValueError(f"fit: epochs must be >= 1, got {n_epochs}")
    bs = int(train_params.batch_size)

    torch.manual_seed(seed)
    model = build(spec, margin_m=model_params.margin_m).to(device)
    loss_fn = build_loss(spec, model_params, total_steps=n_epochs * steps_per_epoch(Xtr.shape[0], bs)).to(device)
    opt = torch.optim.Adam(
        model.parameters(),
        lr=train_params.lr,
        betas=cast("tuple[float, float]", tuple(train_params.betas)),
        weight_decay=train_params.weight_decay,
    )
    schedule: Any = (  # train.lr_schedule is a validated LrSchedule: constant | cosine
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_epochs)
        if train_params.lr_schedule == "cosine"
        else None
    )
    gen = torch.Generator().manual_seed(seed)
    if device != "cpu":
        Xtr, ytr = Xtr.to(device), ytr.to(device)

    history: list[dict[str, float]] = []
    best_key: tuple[float, float, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch, best_row, since_best = 0, {}, 0
    start = time.perf_counter()
    bar = tqdm(
        range(1, n_epochs + 1),
        desc=f"fit {getattr(spec, 'spec_id', '')}",
        unit="epoch",
        disable=not progress,
        leave=False,
    )
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(Xtr.shape[0], generator=gen)
        running, seen = 0.0, 0
        for i in range(0, perm.numel(), bs):
            idx = perm[i : i + bs]
            if idx.numel() < 2 and perm.numel() >= 2:  # BatchNorm needs 2+ samples; drop a last singleton
                continue
            idx = idx.to(Xtr.device)
            xb = augment_batch(
                Xtr[idx], gen, pad=train_params.pad, flips=train_params.flips, permute_axes=train_params.permute_axes
            ).to(device)
            yb = ytr[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(cast(_TensorFn, model.forward_train)(xb), yb)
            loss.backward()
            opt.step()
            if hasattr(loss_fn, "step"):
                cast("Callable[[], object]", loss_fn.step)()
            running += float(loss.detach()) * idx.numel()
            seen += idx.numel()
        val_loss, val_prob = _evaluate(model, loss_fn, Xva, yva, device, max(bs, 64))
        vm = binary_metrics(yva.numpy(), val_prob)
        row: dict[str, float] = {
            "epoch": float(epoch),
            "train_loss": running / max(seen, 1),
            "val_loss": val_loss,
            **{f"val_{k}": v for k, v in vm.items()},
            "lambda": float(getattr(loss_fn, "lam", math.nan)),
            "margin_weight": float(getattr(loss_fn, "margin_weight", math.nan)),
            "lr": float(opt.param_groups[0]["lr"]),
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if schedule is not None:
            schedule.step()
        key = selection_key(row, train_params.select_by)
        if best_key is None or key > best_key:
            best_key, best_epoch, best_row, since_best = key, epoch, row, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            since_best += 1
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_f1=f"{vm['f1']:.3f}", best=best_epoch)
        if on_epoch is not None:
            on_epoch(row)
        if since_best >= train_params.patience:
            break
    bar.close()
    if keep == "last":
        best_epoch, best_row = len(history), history[-1]
        best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    val_metrics = {k[4:]: v for k, v in best_row.items() if k.startswith("val_")}
    return FitResult(model, history, best_epoch, val_metrics, device, time.perf_counter() - start)


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
