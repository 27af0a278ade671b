"""A-Softmax (SphereFace, Liu et al. 2017) head and loss, with a margin that really reaches the loss.

Head (:class:`AngleLinear`): weights ``W (C, K)`` normalised per class column; for features ``x (N, C)``

* ``cos θ_j = x·W_j / (||x|| ||W_j||)``,
* ``φ(θ) = (-1)^k cos(mθ) - 2k`` for ``θ in [kπ/m, (k+1)π/m]`` (monotone decreasing, ``φ(θ) <= cos θ``),

and both are scaled by ``||x||``. ``cos(mθ)`` is the Chebyshev polynomial ``T_m(cos θ)``.

Loss (:class:`ASoftmaxLoss`): the *target-class* logit only is replaced by
``(λ·||x|| cos θ_y + ||x|| φ(θ_y)) / (1 + λ)``; the other classes keep ``||x|| cos θ_j``; cross-entropy
over those logits. λ anneals per :meth:`ASoftmaxLoss.step` (one step per training batch, as in SphereFace):
``λ = max(lambda_min, lambda_base * (1 + lambda_gamma * it) ** -lambda_power)``. At λ → ∞ the loss is the
normalised-softmax loss (cross-entropy on ``||x|| cos θ``); at finite λ it is larger, since ``φ <= cos``.

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
        """``cos θ (N, K)`` in [-1, 1] and ``||x|| (N, 1)``."""
        w = F.normalize(self.weight, dim=0)
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

    ``.lam`` is the current λ, ``.step()`` advances the schedule by one iteration (call once per
    optimiser step). ``lam`` can be pinned (``fixed_lambda``) for analysis and tests.
    """

    def __init__(
        self,
        lambda_base: float = 1000.0,
        lambda_gamma: float = 0.12,
        lambda_power: float = 1.0,
        lambda_min: float = 5.0,
        fixed_lambda: float | None = None,
    ) -> None:
        super().__init__()
        if lambda_min < 0 or lambda_base < 0:
            raise ValueError(f"lambda_base and lambda_min must be >= 0, got {lambda_base}, {lambda_min}")
        self.lambda_base, self.lambda_gamma = float(lambda_base), float(lambda_gamma)
        self.lambda_power, self.lambda_min = float(lambda_power), float(lambda_min)
        self.fixed_lambda = fixed_lambda
        self.it = 0

    def lambda_at(self, it: int) -> float:
        """λ after ``it`` schedule steps."""
        if self.fixed_lambda is not None:
            return float(self.fixed_lambda)
        return max(self.lambda_min, self.lambda_base * (1.0 + self.lambda_gamma * it) ** (-self.lambda_power))

    @property
    def lam(self) -> float:
        return self.lambda_at(self.it)

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
        return f"it={self.it}, lam={self.lam:.4g}"


class SoftmaxLoss(nn.Module):
    """Cross-entropy on plain logits ``(N, K)``; ``step()`` is a no-op and ``lam`` is NaN (no schedule)."""

    lam: float = math.nan

    def step(self) -> None:
        return None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"SoftmaxLoss expects a logits tensor, got {type(logits).__name__} (A-Softmax head?)")
        return F.cross_entropy(logits, target.long())


def build_loss(spec: ArchSpec | DnasArch, model_params: ModelParams) -> nn.Module:
    """Loss for ``spec.head``: :class:`ASoftmaxLoss` (λ schedule from ``model_params``) or :class:`SoftmaxLoss`."""
    if spec.head == "asoftmax":
        return ASoftmaxLoss(
            lambda_base=model_params.lambda_base,
            lambda_gamma=model_params.lambda_gamma,
            lambda_power=model_params.lambda_power,
            lambda_min=model_params.lambda_min,
        )
    if spec.head == "linear":
        return SoftmaxLoss()
    raise ValueError(f"unknown head {spec.head!r}")
