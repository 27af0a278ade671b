"""Training precision (``train.precision``): autocast of the forward and a GradScaler for fp16 (the fp32
parity check is in :mod:`naslung.train.parity`).

* ``fp32`` (default): no autocast; the CPU path is exactly the one without this module.
* ``bf16`` / ``fp16``: :func:`torch.autocast` around the model's forward (convolutions, BatchNorm and
  pooling in the reduced type); the A-Softmax head (:class:`~naslung.models.asoftmax.AngleLinear`, whose
  ``cos(mθ)`` Chebyshev polynomial amplifies input error up to ``m²``-fold near ``|cos θ| = 1``) leaves
  autocast and runs in fp32, and the loss is computed on fp32 logits outside autocast. fp16 scales the loss
  (:class:`torch.amp.GradScaler`; its finite-gradient check reads one flag back per step); bf16 needs none.
* ``auto``: bf16 on a CUDA device that supports it, else fp32 (so CPU stays fp32).

The weights stay fp32 (autocast casts per op); only the activations are reduced. The fp32 parity check of
a reduced-precision training run is :func:`naslung.train.parity.precision_parity`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``fp32`` | ``bf16`` | ``fp16`` for ``precision`` on ``device`` (``auto``: bf16 on CUDA when the device
    supports it, else fp32). ValueError for an unknown name."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    dev = torch.device(device)
    return "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: fp32, no autocast)."""
    return _DTYPES[precision]


def autocast(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for a resolved ``precision`` on ``device``; a no-op context for fp32."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def grad_scaler(device: str | torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (gradients underflow without one); None for fp32 and bf16."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def fp32_outputs(out: Any) -> Any:
    """The model's training output (a tensor or the A-Softmax pair) as fp32 (no copy when already fp32)."""
    if isinstance(out, tuple):
        return tuple(o.float() for o in out)
    return out.float()
