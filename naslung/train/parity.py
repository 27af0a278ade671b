"""The fp32 parity check of reduced-precision training (``train.precision``, :mod:`naslung.train.precision`).

:func:`precision_parity` trains the same model from the same seed in fp32 and in a reduced precision and
reports the difference of validation probabilities and AUC (:class:`PrecisionParity`; tolerances
:data:`PARITY_FORWARD_TOL`, :data:`PARITY_TRAINED_TOL`, :data:`PARITY_AUC_TOL`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from naslung.metrics import binary_metrics
from naslung.train.loop import ArrayPair, fit, predict_proba
from naslung.train.precision import autocast, resolve_precision

if TYPE_CHECKING:  # pragma: no cover
    from naslung.models.factory import AnySpec
    from naslung.params import ModelParams, Precision, TrainParams

PARITY_FORWARD_TOL = 0.02
"""Largest accepted max |Δp| of the reduced-precision forward of the fp32-trained weights against their fp32
forward (validation rows): one forward's rounding, no training. bf16 keeps 8 significant bits; measured
1e-4 to 2e-4 on CPU (tiny Model-1 nets, synthetic patches)."""
PARITY_TRAINED_TOL = 0.05
"""Largest accepted max |Δp| over the validation rows between the model trained in fp32 and the same model
trained in the reduced precision from the same seed (training amplifies rounding: different gradients after
a few steps); measured 5e-4 to 1.3e-2 on CPU after 2-3 epochs."""
PARITY_AUC_TOL = 0.05
"""|Δ validation AUC| between the two trained models, gated only where the fp32 model's probabilities spread
over more than 10 × the trained max |Δp| (a ranking of near-constant probabilities, as a net has after one or
two epochs, flips under any rounding: measured |ΔAUC| 0.46 at a max |Δp| of 5e-4 there)."""


@dataclass(frozen=True)
class PrecisionParity:
    """A reduced-precision training run against the fp32 run of the same model, data and seed."""

    precision: str
    device: str
    n_val: int
    auc_fp32: float
    auc_reduced: float
    max_abs_prob_trained: float
    """max |Δp| over the validation rows between the two trained models."""
    mean_abs_prob_trained: float
    max_abs_prob_forward: float
    """max |Δp| of the fp32-trained weights evaluated under autocast vs in fp32 (one forward's rounding)."""
    prob_spread_fp32: float
    """max - min of the fp32 model's validation probabilities."""
    final_train_loss_fp32: float
    final_train_loss_reduced: float
    forward_tol: float = PARITY_FORWARD_TOL
    trained_tol: float = PARITY_TRAINED_TOL
    auc_tol: float = PARITY_AUC_TOL

    @property
    def auc_diff(self) -> float:
        return abs(self.auc_reduced - self.auc_fp32)

    @property
    def auc_gated(self) -> bool:
        """Whether the AUC difference counts (see :data:`PARITY_AUC_TOL`)."""
        return self.prob_spread_fp32 > 10 * self.max_abs_prob_trained and not math.isnan(self.auc_fp32)

    @property
    def ok(self) -> bool:
        values = (self.max_abs_prob_forward, self.max_abs_prob_trained, self.final_train_loss_reduced)
        if not all(math.isfinite(v) for v in values):
            return False
        auc_ok = not self.auc_gated or self.auc_diff <= self.auc_tol
        return bool(
            self.max_abs_prob_forward <= self.forward_tol and self.max_abs_prob_trained <= self.trained_tol and auc_ok
        )

    def describe(self) -> str:
        gate = f"tol {self.auc_tol}" if self.auc_gated else "not gated: probabilities hardly spread"
        return (
            f"{self.precision} vs fp32 on {self.device}, {self.n_val} validation rows: forward max |Δp| "
            f"{self.max_abs_prob_forward:.3g} (tol {self.forward_tol}); trained max |Δp| "
            f"{self.max_abs_prob_trained:.3g} (mean {self.mean_abs_prob_trained:.3g}, tol {self.trained_tol}); "
            f"AUC {self.auc_reduced:.4f} vs {self.auc_fp32:.4f} (|Δ| {self.auc_diff:.4f}, {gate}): "
            f"{'ok' if self.ok else 'FAILED'}"
        )


def precision_parity(
    spec: AnySpec,
    train: ArrayPair,
    val: ArrayPair,
    model_params: ModelParams,
    train_params: TrainParams,
    precision: str = "bf16",
    *,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> PrecisionParity:
    """Train ``spec`` twice from ``seed`` (fp32, then ``precision``; same data, epochs, fixed length: the
    last epoch's weights) and compare validation AUC and probabilities; also the fp32 weights' forward under
    autocast against fp32 (one forward's rounding, no training drift)."""
    reduced = resolve_precision(precision, device)
    n_epochs = int(epochs if epochs is not None else train_params.epochs)
    base = dataclasses.replace(train_params, patience=max(int(train_params.patience), n_epochs))
    runs = {}
    for name in ("fp32", reduced):
        tp = dataclasses.replace(base, precision=cast("Precision", name))
        runs[name] = fit(spec, train, val, model_params, tp, epochs=n_epochs, seed=seed, device=device, keep="last")
    X, y = val
    p32 = predict_proba(runs["fp32"].model, X, device)
    plow = predict_proba(runs[reduced].model, X, device)
    with autocast(device, reduced):
        p32_low = predict_proba(runs["fp32"].model, X, device)
    yv = np.asarray(y.cpu().numpy() if isinstance(y, torch.Tensor) else y).ravel()
    d = np.abs(p32.astype(np.float64) - plow.astype(np.float64))
    return PrecisionParity(
        precision=reduced,
        device=str(device),
        n_val=int(yv.size),
        auc_fp32=float(binary_metrics(yv, p32)["auc"]),
        auc_reduced=float(binary_metrics(yv, plow)["auc"]),
        max_abs_prob_trained=float(d.max()),
        mean_abs_prob_trained=float(d.mean()),
        max_abs_prob_forward=float(np.abs(p32.astype(np.float64) - p32_low.astype(np.float64)).max()),
        prob_spread_fp32=float(p32.max() - p32.min()),
        final_train_loss_fp32=float(runs["fp32"].history[-1]["train_loss"]),
        final_train_loss_reduced=float(runs[reduced].history[-1]["train_loss"]),
    )
