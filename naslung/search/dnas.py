"""Differentiable architecture search (CovidNet3D / GDAS style) over 3D MBConv blocks for 32^3 patches.

Tensors are channels-first ``(N, C, D, H, W)`` in voxels; input patches ``(N, 1, 32, 32, 32)`` float32 in
[0, 1], numpy order ``(z, y, x)``.

Search space (:class:`DnasSpace`, defined with :class:`DnasArch`, :class:`MBConv3d` and :class:`DnasNet` in
:mod:`naslung.models.mbconv` and re-exported here): a stride-2 stem conv (``32^3 -> 16^3``), then
``len(layers)`` searchable layers ``(c_out, stride)`` (default 16^3 -> 8^3 -> 4^3), then a 1x1x1 head conv,
global average pooling and a linear classifier (2 classes). Each searchable layer picks one op from
``k{K}_e{E}`` = :class:`MBConv3d` (1x1x1 expand x E, depthwise KxKxK, 1x1x1 project; BN; ReLU6; residual
when shape preserving) for K in ``kernels`` x E in ``expansions``, plus ``skip`` where the layer keeps the
shape (stride 1, same width).

Sampling (:func:`gumbel_straight_through`): per layer and per forward, a Gumbel-softmax sample of the
architecture logits α at temperature τ; forward uses the hard one-hot ``h`` (one op is run), the backward
pass uses the soft sample's gradient (``h = onehot - soft.detach() + soft``). The chosen op's output is
multiplied by its weight ``h_k`` (== 1 in value), so α receives a gradient. (Casting ``h`` to bool, as the
public CovidNet3D code does, detaches it: α gets no gradient.) Two mixing modes:

* ``mixed="all"`` (default): every op runs and the layer outputs ``sum_j h_j · op_j(x)`` (== ``op_k(x)`` in
  value; only op ``k``'s weights are trained by the step); ``dL/dh_j = <g, op_j(x)>``, and since the softmax
  Jacobian rows sum to zero, ``dL/dα`` is driven by ``<g, op_j(x) - op_k(x)>``: the first-order loss change of
  swapping the sampled op for op ``j``. This is the estimator the tests prove on a toy task.
* ``mixed="sampled"`` (GDAS): only op ``k`` runs, ``dL/dα = dL/dh_k · dsoft_k/dα``; ~n_ops times cheaper but
  it only says "more or less of op k" and drifted to ``skip`` on the toy task where ``k7`` is clearly best.

Search loop (:func:`search`): τ anneals exponentially from ``tau_max`` to ``tau_min`` over the epochs;
after ``warmup_epochs`` of weight-only training every step alternates one weight update on a training
batch and one α update on a batch of the α split (held-out rows of the training folds). The final
architecture is ``argmax α`` per layer (:func:`derive`); :func:`derive_top` gives the ``k`` most probable
architectures (beam search on the product of per-layer softmax(α)). :class:`DnasNet` builds a derived
architecture as a standalone model; it trains from scratch with :func:`naslung.train.loop.fit` like any
``ArchSpec`` (see :mod:`naslung.search.dnas_run` for the whole search-and-retrain run).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from naslung.models.mbconv import (
    N_CLASSES,
    SKIP,
    DnasArch,
    DnasNet,
    DnasSpace,
    MBConv3d,
    build_dnas_model,
    head_conv_block,
    make_op,
    parse_op,
    stem_block,
)
from naslung.params import MixedOps

__all__ = [
    "N_CLASSES",
    "SKIP",
    "DnasArch",
    "DnasNet",
    "DnasSpace",
    "MBConv3d",
    "MixedOp",
    "SearchResult",
    "Supernet",
    "alpha_entropy",
    "build_dnas_model",
    "derive",
    "derive_top",
    "gumbel_straight_through",
    "make_op",
    "parse_op",
    "search",
    "space_from_params",
    "split_alpha",
    "tau_at",
]


# --------------------------------------------------------------------------------------------- supernet


def gumbel_straight_through(
    alpha: torch.Tensor, tau: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, int]:
    """Hard one-hot Gumbel-softmax sample of logits ``alpha (K,)`` with straight-through gradients.

    Returns ``(h, k)``: ``h (K,)`` equals the one-hot of ``k`` in value and carries the gradient of
    ``softmax((alpha + g) / tau)`` (``g`` standard Gumbel noise); ``k`` is the sampled index.
    """
    u = torch.rand(alpha.shape, generator=generator, dtype=alpha.dtype).to(alpha.device)
    g = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-10)))
    soft = F.softmax((alpha + g) / tau, dim=-1)
    k = int(soft.argmax())
    hard = F.one_hot(torch.tensor(k, device=alpha.device), alpha.numel()).to(soft.dtype)
    return hard - soft.detach() + soft, k


class MixedOp(nn.Module):
    """All candidate ops of one layer; ``forward(x, h, k)`` sums ``h_j · op_j(x)`` over all ops (``all``)
    or runs op ``k`` scaled by ``h[k]`` (``sampled``)."""

    def __init__(self, names: Sequence[str], c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.names = list(names)
        self.ops = nn.ModuleList(make_op(n, c_in, c_out, stride) for n in self.names)

    def forward(self, x: torch.Tensor, h: torch.Tensor, k: int, mixed: MixedOps = "all") -> torch.Tensor:
        if mixed == "all":
            return sum(h[j] * op(x) for j, op in enumerate(self.ops))
        return h[k] * self.ops[k](x)


class Supernet(nn.Module):
    """Weight-sharing supernet of :class:`DnasSpace`; ``alphas[i] (n_ops_i,)`` are the architecture logits.

    ``forward(x) -> (N, 2)`` logits of one Gumbel sample per layer (``self.tau``; ``self.mixed``);
    ``last_choice`` holds the sampled op indices.
    """

    def __init__(self, space: DnasSpace, mixed: MixedOps = "all", seed: int = 0) -> None:
        super().__init__()
        if mixed not in get_args(MixedOps):  # a public class: callers other than dnas_run pass bare strings
            raise ValueError(f"mixed must be one of {get_args(MixedOps)}, got {mixed!r}")
        self.space, self.mixed, self.tau = space, mixed, 1.0
        self.stem = stem_block(space)
        self.cells = nn.ModuleList(
            MixedOp(space.candidates(i), ci, co, s) for i, (ci, co, s) in enumerate(space.layer_io())
        )
        self.alphas = nn.ParameterList(
            nn.Parameter(1e-3 * torch.randn(len(cast(MixedOp, c).names))) for c in self.cells
        )
        self.head_conv = head_conv_block(space.layers[-1][0], space.head_channels)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Linear(space.head_channels, N_CLASSES)
        self.generator = torch.Generator().manual_seed(seed)
        self.last_choice: list[int] = []

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas)

    def weight_parameters(self) -> list[nn.Parameter]:
        ids = {id(a) for a in self.alphas}
        return [p for p in self.parameters() if id(p) not in ids]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        self.last_choice = []
        for cell, alpha in zip(self.cells, self.alphas):
            h, k = gumbel_straight_through(alpha, self.tau, self.generator)
            self.last_choice.append(k)
            x = cell(x, h, k, self.mixed)
        return self.head(self.pool(self.head_conv(x)).flatten(1))

    def probabilities(self) -> list[np.ndarray]:
        """softmax(α) per layer."""
        return [F.softmax(a.detach().float(), 0).cpu().numpy() for a in self.alphas]


def derive(supernet: Supernet) -> DnasArch:
    """The argmax-α architecture."""
    return DnasArch(
        supernet.space,
        tuple(cast(MixedOp, c).names[int(a.detach().argmax())] for c, a in zip(supernet.cells, supernet.alphas)),
    )


def derive_top(supernet: Supernet, k: int = 1) -> list[tuple[DnasArch, float]]:
    """The ``k`` architectures of highest joint probability ``prod_i softmax(α_i)[op_i]`` (beam search),
    most probable first, with their log-probabilities. The first is :func:`derive`."""
    beams: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]
    for p in supernet.probabilities():
        logp = np.log(np.clip(p, 1e-12, None))
        beams = sorted(((s + float(logp[j]), (*ops, j)) for s, ops in beams for j in range(len(p))), reverse=True)[
            : max(1, k)
        ]
    return [
        (DnasArch(supernet.space, tuple(cast(MixedOp, c).names[j] for c, j in zip(supernet.cells, ops))), s)
        for s, ops in beams
    ]


# --------------------------------------------------------------------------------------------- search


@dataclass
class SearchResult:
    """Outcome of :func:`search`: the supernet (α trained), per-epoch history, the derived architecture
    (``None`` for a duck-typed supernet that is not a :class:`Supernet`), wall seconds, softmax(α) per layer."""

    supernet: Supernet
    history: list[dict[str, float]]
    arch: DnasArch | None
    seconds: float
    probabilities: list[list[float]] = field(default_factory=list)


def tau_at(epoch: int, epochs: int, tau_max: float, tau_min: float) -> float:
    """Exponential annealing: ``tau_max`` at epoch 0 down to ``tau_min`` at the last epoch."""
    if epochs <= 1:
        return float(tau_min)
    return float(tau_max * (tau_min / tau_max) ** (epoch / (epochs - 1)))


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        idx = perm[i : i + batch_size]
        if idx.numel() >= 2 or n < 2:  # BatchNorm needs 2+ samples
            yield idx


def _cycle(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        yield from _batches(n, batch_size, gen)


def alpha_entropy(supernet: Supernet) -> float:
    """Mean entropy (nats) of softmax(α) over layers; log(n_ops) at the start, 0 when decided."""
    ps = supernet.probabilities()
    return float(np.mean([-(p * np.log(np.clip(p, 1e-12, None))).sum() for p in ps]))


def search(
    supernet: Supernet,
    train: tuple[torch.Tensor, torch.Tensor],
    alpha_split: tuple[torch.Tensor, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    *,
    epochs: int = 10,
    warmup_epochs: int = 1,
    batch_size: int = 32,
    w_lr: float = 1e-3,
    alpha_lr: float = 3e-3,
    alpha_weight_decay: float = 1e-3,
    tau_max: float = 5.0,
    tau_min: float = 0.2,
    seed: int = 0,
    device: str = "cpu",
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> SearchResult:
    """Alternating DNAS: weights on ``train`` batches, α on ``alpha_split`` batches (after warm-up).

    ``train``/``alpha_split`` are ``(X, y)`` tensors (any shapes ``loss_fn(supernet(X), y)`` accepts).
    History rows: epoch, tau, w_loss, alpha_loss, alpha_accuracy (fraction of α-batch argmax hits when the
    output is (N, K) logits), alpha_entropy, alpha_grad_norm, seconds.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    supernet.to(device)
    w_opt = torch.optim.Adam(supernet.weight_parameters(), lr=w_lr)
    a_opt = torch.optim.Adam(
        supernet.arch_parameters(), lr=alpha_lr, betas=(0.5, 0.999), weight_decay=alpha_weight_decay
    )
    Xt, yt = train
    Xa, ya = alpha_split
    a_iter = _cycle(int(Xa.shape[0]), batch_size, gen)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        supernet.tau = tau_at(epoch, epochs, tau_max, tau_min)
        supernet.train()
        w_sum = a_sum = hits = seen_w = seen_a = 0.0
        gnorm = 0.0
        n_alpha_steps = 0
        for idx in _batches(int(Xt.shape[0]), batch_size, gen):
            xb = Xt[idx]
            if augment is not None:
                xb = augment(xb, gen)
            xb, yb = xb.to(device), yt[idx].to(device)
            w_opt.zero_grad(set_to_none=True)
            loss = loss_fn(supernet(xb), yb)
            loss.backward()
            w_opt.step()
            w_sum += float(loss.detach()) * len(idx)
            seen_w += len(idx)
            if epoch >= warmup_epochs:
                aidx = next(a_iter)
                xa, yb_a = Xa[aidx].to(device), ya[aidx].to(device)
                a_opt.zero_grad(set_to_none=True)
                w_opt.zero_grad(set_to_none=True)
                out = supernet(xa)
                aloss = loss_fn(out, yb_a)
                aloss.backward()
                gnorm += float(torch.sqrt(sum((a.grad**2).sum() for a in supernet.alphas if a.grad is not None)))
                a_opt.step()
                n_alpha_steps += 1
                a_sum += float(aloss.detach()) * len(aidx)
                seen_a += len(aidx)
                if out.ndim == 2 and yb_a.ndim == 1:
                    hits += float((out.argmax(1) == yb_a).sum())
        row = {
            "epoch": float(epoch + 1),
            "tau": supernet.tau,
            "w_loss": w_sum / max(seen_w, 1),
            "alpha_loss": a_sum / seen_a if seen_a else math.nan,
            "alpha_accuracy": hits / seen_a if seen_a else math.nan,
            "alpha_entropy": alpha_entropy(supernet),
            "alpha_grad_norm": gnorm / n_alpha_steps if n_alpha_steps else 0.0,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    supernet.eval()
    return SearchResult(
        supernet,
        history,
        derive(supernet) if isinstance(supernet, Supernet) else None,
        time.perf_counter() - start,
        [p.tolist() for p in supernet.probabilities()],
    )


def split_alpha(
    X: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Stratified split of training rows into (weights part, α part) with ``fraction`` of each class in α."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"alpha fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng([seed, 7])
    a_idx = []
    for cls in np.unique(y):
        rows = np.flatnonzero(y == cls)
        rng.shuffle(rows)
        a_idx.extend(rows[: max(1, int(round(fraction * rows.size)))].tolist())
    mask = np.zeros(len(y), bool)
    mask[a_idx] = True
    return (X[~mask], y[~mask]), (X[mask], y[mask])


def space_from_params(p: Any) -> DnasSpace:
    """:class:`DnasSpace` from ``params.dnas`` (:class:`naslung.params.DnasParams`)."""
    return DnasSpace(
        stem=p.stem,
        layers=tuple(tuple(x) for x in p.layers),
        head_channels=p.head_channels,
        kernels=tuple(p.kernels),
        expansions=tuple(p.expansions),
        skip=p.skip,
    )
