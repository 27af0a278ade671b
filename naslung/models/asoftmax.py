"""A-Softmax (SphereFace, Liu et al. 2017) head and loss, with a margin that really reaches the loss.

Head (:class:`AngleLinear`): weights ``W (C, K)`` normalised per class column; for features ``x (N, C)``

* ``cos θ_j = x·W_j / (||x|| ||W_j||)``,
* ``φ(θ) = (-1)^k cos(mθ) - 2k`` for ``θ in [kπ/m, (k+1)π/m]`` (monotone decreasing, ``φ(θ) <= cos θ``),

and both are scaled by ``||x||``. ``cos(mθ)`` is the Chebyshev polynomial ``T_m(cos θ)``.

Loss (:class:`ASoftmaxLoss`): the *target-class* logit only is replaced by
``(λ·||x|| cos θ_y + ||x|| φ(θ_y)) / (1 + λ) = ||x|| cos θ_y + w·||x|| (φ(θ_y) - cos θ_y)`` with the
**margin weight** ``w = 1 / (1 + λ)``; the other classes keep ``||x|| cos θ_j``; cross-entropy over those
logits. At λ → ∞ (w → 0) the loss is the normalised-softmax loss (cross-entropy on ``||x|| cos θ``); at finite
λ it is larger, since ``φ <= cos``; ``w`` is the share of the margin logit in the target logit.

λ schedule (SphereFace form, one :meth:`ASoftmaxLoss.step` per optimiser step):
``λ(it) = max(λ_min, λ_base · (1 + γ·it) ** -p)``. γ is not a fixed constant but is derived from the
*planned* run (:meth:`ASoftmaxLoss.plan` with the run's total optimiser steps ``T`` = epochs × steps per
epoch) so that λ reaches its floor at the fraction ``f = lambda_floor_at`` of the run:

``γ = ((λ_base / λ_min) ** (1 / p) - 1) / (f · T)``, i.e. ``λ(f·T) = λ_min``,

and for the rest of the run the margin weight is ``1 / (1 + λ_min)`` (1/6 ≈ 0.17 at λ_min = 5). With the
old fixed γ = 0.12, ~9 steps per epoch gave λ ≈ 85 / 44 / 30 / 18 after 10 / 20 / 30 / 50 epochs (margin
weight 1–5 %), so the margin hardly shaped training; with the planned γ every run length reaches the floor.
An unplanned :class:`ASoftmaxLoss` (no ``total_steps``, no ``fixed_lambda``) refuses to give λ.

Prediction uses the normalised logits ``||x|| cos θ`` (no margin): ``NASLungNet.forward`` returns them and
``softmax(...)[:, 1]`` is the malignancy probability. The margin only shapes training.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from naslung.models.mbconv import DnasArch
    from naslung.models.spec import ArchSpec
    from naslung.params import ModelParams

_EPS = 1e-12


def chebyshev_cos_m(cos: torch.Tensor, m: int) -> torch.Tensor:
    """``cos(mθ)`` from ``cos θ`` via the Chebyshev recurrence ``T_{n+1} = 2c T_n - T_{n-1}``."""
    t_prev, t = torch.ones_like(cos), cos
    if m == 0:
        return t_prev
    for _ in range(m - 1):
        t_prev, t = t, 2 * cos * t - t_prev
    return t


def phi_theta(cos: torch.Tensor, m: int) -> torch.Tensor:
    """SphereFace ``φ(θ) = (-1)^k cos(mθ) - 2k``, ``k = floor(mθ/π)``, from ``cos θ`` (any shape)."""
    cos_m = chebyshev_cos_m(cos, m)
    with torch.no_grad():
        theta = torch.acos(cos.clamp(-1.0, 1.0))
        k = torch.floor(m * theta / math.pi).clamp(0, m - 1) if m > 0 else torch.zeros_like(theta)
        sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * cos_m - 2.0 * k


class AngleLinear(nn.Module):
    """SphereFace angular head ``(N, C) -> (N, K)``.

    ``forward`` returns ``(||x|| cos θ, ||x|| φ(θ))`` (what :class:`ASoftmaxLoss` needs);
    :meth:`logits` returns ``||x|| cos θ`` only (prediction, no margin).
    """

    def __init__(self, in_features: int, out_features: int = 2, m: int = 4) -> None:
        super().__init__()
        if m < 1:
            raise ValueError(f"A-Softmax margin m must be >= 1, got {m}")
        self.in_features, self.out_features, self.m = in_features, out_features, m
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.weight, -1.0, 1.0)
        with torch.no_grad():
            self.weight.copy_(F.normalize(self.weight, dim=0))

    def cos_and_norm(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos θ (N, K)`` in [-1, 1] and ``||x|| (N, 1)``, in fp32 also under autocast (``cos(mθ)`` of a
        bf16 ``cos θ`` would be off by up to ``m² · 2⁻⁸``; the head is a (C x 2) matmul, cheap in fp32)."""
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            w = F.normalize(self.weight.float(), dim=0)
            xnorm = x.norm(dim=1, keepdim=True)
            cos = (x @ w) / xnorm.clamp_min(_EPS)
            return cos.clamp(-1.0, 1.0), xnorm

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised-weight logits ``||x|| cos θ`` (N, K), used for prediction."""
        cos, xnorm = self.cos_and_norm(x)
        return cos * xnorm

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, xnorm = self.cos_and_norm(x)
        return cos * xnorm, phi_theta(cos, self.m) * xnorm

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, m={self.m}"


class ASoftmaxLoss(nn.Module):
    """A-Softmax loss on ``(cos_x, phi_x)`` = :meth:`AngleLinear.forward` output, targets ``y (N,)`` int64.

    ``.lam`` is the current λ and ``.margin_weight`` = ``1 / (1 + λ)``; ``.step()`` advances the schedule by
    one iteration (call once per optimiser step). The schedule needs the planned number of optimiser steps
    of the run (``total_steps`` here or :meth:`plan`); ``lam`` can be pinned (``fixed_lambda``) for analysis
    and tests, which needs no plan.
    """

    def __init__(
        self,
        lambda_base: float = 1000.0,
        lambda_power: float = 1.0,
        lambda_min: float = 5.0,
        lambda_floor_at: float = 0.5,
        total_steps: int | None = None,
        fixed_lambda: float | None = None,
    ) -> None:
        super().__init__()
        if lambda_min < 0 or lambda_base < 0:
            raise ValueError(f"lambda_base and lambda_min must be >= 0, got {lambda_base}, {lambda_min}")
        if lambda_power <= 0:
            raise ValueError(f"lambda_power must be > 0, got {lambda_power}")
        if not 0 < lambda_floor_at <= 1:
            raise ValueError(f"lambda_floor_at must be in (0, 1], got {lambda_floor_at}")
        self.lambda_base, self.lambda_power = float(lambda_base), float(lambda_power)
        self.lambda_min, self.lambda_floor_at = float(lambda_min), float(lambda_floor_at)
        self.fixed_lambda = fixed_lambda
        self.total_steps: int | None = None
        self.lambda_gamma = math.nan
        self.floor_step = math.inf
        self.it = 0
        if total_steps is not None:
            self.plan(total_steps)

    def plan(self, total_steps: int) -> ASoftmaxLoss:
        """Define the schedule over a run of ``total_steps`` optimiser steps (epochs × steps per epoch).

        Sets ``lambda_gamma = ((base / min) ** (1 / p) - 1) / (floor_at · T)`` and ``floor_step = floor_at · T``
        (λ is ``lambda_min`` from there on); resets the step counter. Returns ``self``.
        """
        if isinstance(total_steps, bool) or int(total_steps) != total_steps or total_steps < 1:
            raise ValueError(f"ASoftmaxLoss.plan: total_steps must be an integer >= 1, got {total_steps!r}")
        if self.lambda_min <= 0 and self.fixed_lambda is None:
            raise ValueError("ASoftmaxLoss.plan: lambda_min must be > 0 (λ never reaches a floor of 0)")
        self.total_steps = int(total_steps)
        self.floor_step = self.lambda_floor_at * self.total_steps
        ratio = self.lambda_base / self.lambda_min if self.lambda_min > 0 else math.inf
        self.lambda_gamma = (ratio ** (1.0 / self.lambda_power) - 1.0) / self.floor_step if ratio > 1 else 0.0
        self.it = 0
        return self

    def lambda_at(self, it: int) -> float:
        """λ after ``it`` schedule steps (``lambda_min`` from ``floor_step`` on)."""
        if self.fixed_lambda is not None:
            return float(self.fixed_lambda)
        if self.total_steps is None:
            raise RuntimeError(
                "ASoftmaxLoss: the λ schedule is defined over the planned run; call plan(total_steps) first "
                "(total optimiser steps = epochs x steps per epoch) or pass fixed_lambda"
            )
        if it >= self.floor_step:
            return self.lambda_min
        return max(self.lambda_min, self.lambda_base * (1.0 + self.lambda_gamma * it) ** (-self.lambda_power))

    def margin_weight_at(self, it: int) -> float:
        """Weight ``1 / (1 + λ)`` of the margin logit in the target logit after ``it`` steps."""
        return 1.0 / (1.0 + self.lambda_at(it))

    @property
    def lam(self) -> float:
        return self.lambda_at(self.it)

    @property
    def margin_weight(self) -> float:
        """Current ``1 / (1 + λ)``."""
        return self.margin_weight_at(self.it)

    def step(self) -> None:
        self.it += 1

    def margin_logits(self, outputs: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Logits the cross-entropy sees: target class blended with the margin logit, others ``||x|| cos θ``."""
        if not (isinstance(outputs, (tuple, list)) and len(outputs) == 2):
            raise TypeError(
                "ASoftmaxLoss expects (cos_x, phi_x) from an A-Softmax model's forward_train; "
                f"got {type(outputs).__name__} (is the spec's head 'linear'?)"
            )
        cos_x, phi_x = outputs
        onehot = F.one_hot(target.long(), cos_x.shape[1]).bool()
        lam = self.lam
        blended = cos_x + (phi_x - cos_x) / (1.0 + lam)  # == (λ cos_x + phi_x) / (1 + λ)
        return torch.where(onehot, blended, cos_x)

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.margin_logits(outputs, target), target.long())

    def extra_repr(self) -> str:
        if self.fixed_lambda is None and self.total_steps is None:
            return f"it={self.it}, unplanned"
        return f"it={self.it}, total_steps={self.total_steps}, lam={self.lam:.4g}"


class SoftmaxLoss(nn.Module):
    """Cross-entropy on plain logits ``(N, K)``; ``plan()``/``step()`` are no-ops and ``lam``/``margin_weight``
    are NaN (no schedule, no margin)."""

    lam: float = math.nan
    margin_weight: float = math.nan

    def plan(self, total_steps: int) -> SoftmaxLoss:
        return self

    def step(self) -> None:
        return None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"SoftmaxLoss expects a logits tensor, got {type(logits).__name__} (A-Softmax head?)")
        return F.cross_entropy(logits, target.long())


def build_loss(spec: ArchSpec | DnasArch, model_params: ModelParams, total_steps: int | None = None) -> nn.Module:
    """Loss for ``spec.head``: :class:`ASoftmaxLoss` (λ schedule from ``model_params``, planned over
    ``total_steps`` optimiser steps when given, else call ``.plan`` before training) or :class:`SoftmaxLoss`."""
    if spec.head == "asoftmax":
        return ASoftmaxLoss(
            lambda_base=model_params.lambda_base,
            lambda_power=model_params.lambda_power,
            lambda_min=model_params.lambda_min,
            lambda_floor_at=model_params.lambda_floor_at,
            total_steps=total_steps,
        )
    if spec.head == "linear":
        return SoftmaxLoss()
    raise ValueError(f"unknown head {spec.head!r}")
