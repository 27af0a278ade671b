"""One forward pass for all ensemble members: the member probabilities (n, k) of a batch of patches.

Input: patches X of shape (n, 1, 32, 32, 32) or (n, 32, 32, 32), float32 in [0, 1] (numpy order z, y, x,
1 mm voxels), a numpy array or a CPU tensor. Output of :meth:`FusedEnsemble.member_probs`: float32
(n, k), column j = ``softmax(member_j(x))[:, 1]`` (P(malignant)), members in ensemble order. How they are
combined (mean, majority vote, calibration) is :class:`naslung.ensemble.model.EnsemblePrediction`'s
business: :meth:`FusedEnsemble.predict` hands the member probabilities to the ensemble's combiner.

On CPU (the default there): eager fp32, the very ops of ``Ensemble.predict``, so the results are
identical to it. With ``channels_last=True`` on CPU the members run in channels-last-3d memory format
(oneDNN kernels; 1.1-1.3x the eager nodules/s on the 9-member benchmark ensemble at 32 patches a request,
2 threads, same member probabilities there);
the TorchServe handler uses it when it agrees with the eager forward within :data:`CPU_LAYOUT_TOL`.

On CUDA (the default there):

- the whole ensemble is one module wrapped in ``torch.compile(mode="reduce-overhead")`` (Inductor kernels
  replayed as CUDA graphs), which fuses mixed architectures (NASLung and DNAS nets alike);
- fixed batch buckets (``serve.buckets``): a chunk of m patches is padded with zeros up to the smallest
  bucket >= m (more than the largest bucket: chunks of the largest), so each bucket is compiled and
  captured once; padded rows are dropped from the answer (eval mode: rows do not interact);
- autocast per ``precision`` (``auto``: bf16 on CUDA, fp32 on CPU; ``bf16``; ``fp16``; ``fp32``) with
  the softmax in fp32; channels-last-3d memory format under reduced precision (cuDNN's NDHWC kernels);
- host -> device copies from two pinned staging buffers, ``non_blocking``, so copying chunk i+1 overlaps
  computing chunk i; results come back through a pinned host buffer.

Reduced precision must be checked against fp32: :func:`parity` gives max |delta p| over real patches (the
issue's bound is 1e-3; bf16 conv3d gave wrong results with cuDNN 9.10.2). The members are copied when the
GPU path changes them (memory format, compilation), so the source :class:`Ensemble` stays as it was.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
DEFAULT_BUCKETS: tuple[int, ...] = (1, 8, 32, 128, 512, 1024)
"""Batch sizes the CUDA forward is compiled and captured for (``serve.buckets``)."""
PARITY_TOL = 1e-3
"""Largest accepted max |delta p| of a reduced-precision forward against fp32."""
CPU_LAYOUT_TOL = 1e-6
"""Largest accepted max |delta p| of the CPU fp32 channels-last-3d forward against the eager one (the
handler checks it at start-up; measured 0 on the benchmark ensemble)."""

_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: plain fp32). ``auto`` is bf16 on CUDA, fp32
    elsewhere. Raises ValueError for an unknown name."""
    dev = torch.device(device)
    if precision == "auto":
        return torch.bfloat16 if dev.type == "cuda" else None
    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of auto, fp32, bf16, fp16; got {precision!r}")
    return _DTYPES[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32`` / ``bf16`` / ``fp16`` of an autocast dtype."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


class MemberStack(nn.Module):
    """All members as one module: ``forward(x)`` (n, 1, D, H, W) -> (n, k) float32 member P(malignant)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = [torch.softmax(m(x).float(), dim=1)[:, 1] for m in self.members]
        return torch.stack(probs, dim=1)


def as_batch(X: Any) -> torch.Tensor:
    """Patches as a float32 CPU-or-device tensor (n, 1, D, H, W); ValueError for another shape or n = 0."""
    x = X if isinstance(X, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    x = x.float()
    if x.ndim == 4:
        x = x.unsqueeze(1)
    if x.ndim != 5 or x.shape[1] != 1:
        raise ValueError(f"member_probs: expected patches (n, 1, D, H, W) or (n, D, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("member_probs: empty batch")
    return x


def bucket_plan(n: int, buckets: Sequence[int]) -> list[tuple[int, int, int]]:
    """Chunks ``(start, stop, padded_size)`` covering n rows: chunks of the largest bucket, the rest padded
    up to the smallest bucket that holds it. Empty ``buckets``: one unpadded chunk."""
    if n <= 0:
        return []
    sizes = sorted({int(b) for b in buckets if int(b) > 0})
    if not sizes:
        return [(0, n, n)]
    top = sizes[-1]
    plan = []
    start = 0
    while start < n:
        m = min(top, n - start)
        plan.append((start, start + m, next(b for b in sizes if b >= m)))
        start += m
    return plan


Combiner = Callable[[np.ndarray], Any]


def _allow_recompiles(n: int) -> None:
    """Let Dynamo keep at least ``n`` compiled variants of one frame: every bucket (and every fused ensemble,
    e.g. one per precision, since they share ``MemberStack.forward``) is one; past the limit (8 by default)
    Dynamo would silently run the frame eagerly."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(int(getattr(cfg, name)), n * (16 if "accumulated" in name else 1)))


class FusedEnsemble:
    """All members in one forward (see the module docstring); thread-safe (one forward at a time).

    ``device``: where the members run. ``precision``: auto | fp32 | bf16 | fp16. ``buckets``: fixed batch
    sizes (used when ``pad``). ``compile``/``pad``/``channels_last``/``pinned``: None picks the default
    (on for CUDA, off for CPU; channels-last only under reduced precision). ``combine``: member
    probabilities (n, k) -> prediction object (default ``EnsemblePrediction.from_member_probs``).
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        device: str | torch.device = "cpu",
        precision: str = "auto",
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        compile: bool | None = None,
        pad: bool | None = None,
        channels_last: bool | None = None,
        pinned: bool | None = None,
        combine: Combiner | None = None,
    ) -> None:
        if not members:
            raise ValueError("FusedEnsemble: needs at least one member")
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.dtype = autocast_dtype(precision, self.device)
        self.precision = precision_name(self.dtype)
        self.buckets = tuple(sorted({int(b) for b in buckets if int(b) > 0}))
        self.compiled = cuda if compile is None else bool(compile)
        self.pad = (cuda or self.compiled) if pad is None else bool(pad)
        self.channels_last = (cuda and self.dtype is not None) if channels_last is None else bool(channels_last)
        self.pinned = cuda if pinned is None else bool(pinned) and cuda
        changes = self.channels_last or self.compiled
        mods = [copy.deepcopy(m) if changes else m for m in members]
        self.module = MemberStack(mods).to(self.device).eval()
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        if self.compiled:
            _allow_recompiles(4 * (len(self.buckets) + 1))
        self._forward: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(self.module, mode="reduce-overhead", dynamic=False) if self.compiled else self.module
        )
        self.combine = combine
        self._lock = threading.Lock()
        self._stage: dict[tuple[int, int], torch.Tensor] = {}
        self._events: dict[int, Any] = {}

    @classmethod
    def from_ensemble(cls, ensemble: Any, device: str | torch.device | None = None, **kwargs: Any) -> FusedEnsemble:
        """Fuse the members of a :class:`naslung.ensemble.model.Ensemble` (on its device unless given).
        The prediction is built by the ensemble's ``prediction_from_member_probs`` when it has one (e.g.
        with calibration), else by ``EnsemblePrediction.from_member_probs``."""
        kwargs.setdefault("combine", getattr(ensemble, "prediction_from_member_probs", None))
        return cls(ensemble.members, device=device or ensemble.device, **kwargs)

    def __len__(self) -> int:
        return len(self.module.members)

    def describe(self) -> str:
        """One line: device, precision and what the forward does."""
        parts = [str(self.device), self.precision]
        if self.compiled:
            parts.append("torch.compile reduce-overhead")
        if self.pad:
            parts.append(f"buckets {list(self.buckets)}")
        if self.channels_last:
            parts.append("channels-last-3d")
        return ", ".join(parts)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _plan(self, n: int) -> list[tuple[int, int, int]]:
        return bucket_plan(n, self.buckets) if self.pad else [(0, n, n)]

    def _staging(self, size: int, slot: int, like: torch.Tensor) -> torch.Tensor:
        key = (size, slot)
        buf = self._stage.get(key)
        if buf is None:
            buf = torch.empty((size, *like.shape[1:]), dtype=torch.float32, pin_memory=True)
            self._stage[key] = buf
        return buf

    def member_probs(self, X: Any) -> np.ndarray:
        """(n, k) float32 member probabilities of patches X (see the module docstring)."""
        x = as_batch(X)
        with self._lock, torch.inference_mode(), self._autocast():
            if self.device.type != "cuda":
                return self._cpu(x)
            return self._cuda(x)

    def _cpu(self, x: torch.Tensor) -> np.ndarray:
        x = x.to(self.device)
        n = x.shape[0]
        outs = []
        for start, stop, size in self._plan(n):
            chunk = x[start:stop]
            if size > stop - start:
                chunk = torch.cat([chunk, chunk.new_zeros((size - (stop - start), *chunk.shape[1:]))])
            if self.channels_last:
                chunk = chunk.contiguous(memory_format=torch.channels_last_3d)
            outs.append(self._forward(chunk)[: stop - start].float())
        return (outs[0] if len(outs) == 1 else torch.cat(outs)).cpu().numpy()

    def _cuda(self, x: torch.Tensor) -> np.ndarray:
        n = x.shape[0]
        k = len(self)
        on_device = x.device.type == "cuda"
        out = torch.empty((n, k), dtype=torch.float32, pin_memory=self.pinned)
        for i, (start, stop, size) in enumerate(self._plan(n)):
            m = stop - start
            if on_device:
                xd = x[start:stop]
                if size > m:
                    xd = torch.cat([xd, xd.new_zeros((size - m, *xd.shape[1:]))])
            elif self.pinned:
                slot = i % 2
                event = self._events.get(slot)
                if event is not None:
                    event.synchronize()  # the copy out of this buffer (two chunks ago) has finished
                stage = self._staging(size, slot, x)
                stage[:m].copy_(x[start:stop])
                if size > m:
                    stage[m:].zero_()
                xd = stage.to(self.device, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                self._events[slot] = event
            else:
                xd = x[start:stop]
                if size > m:
                    xd = torch.cat([xd, xd.new_zeros((size - m, *xd.shape[1:]))])
                xd = xd.to(self.device)
            if self.channels_last:
                xd = xd.contiguous(memory_format=torch.channels_last_3d)
            if self.compiled:
                torch.compiler.cudagraph_mark_step_begin()
            y = self._forward(xd)
            out[start:stop].copy_(y[:m], non_blocking=self.pinned)
        torch.cuda.synchronize(self.device)
        return out.numpy()

    def predict(self, X: Any) -> Any:
        """The ensemble prediction of X: ``combine(member_probs(X))`` (default
        :meth:`naslung.ensemble.model.EnsemblePrediction.from_member_probs`)."""
        probs = self.member_probs(X)
        if self.combine is not None:
            return self.combine(probs)
        from naslung.ensemble.model import EnsemblePrediction

        return EnsemblePrediction.from_member_probs(probs)

    def warmup(self, patch_shape: tuple[int, int, int] = (32, 32, 32)) -> None:
        """Run every bucket (three times under ``compile``: compilation, CUDA-graph recording, a replay) so
        that no request pays for them."""
        sizes = self.buckets if self.pad else (1,)
        for size in sizes:
            x = torch.zeros((size, 1, *patch_shape))
            for _ in range(3 if self.compiled else 1):
                self.member_probs(x)


@dataclass(frozen=True)
class Parity:
    """A reduced-precision forward against the fp32 eager one on the same patches."""

    precision: str
    n_patches: int
    max_abs_member: float
    """max |delta p| over all patches and member probabilities."""
    max_abs_mean: float
    """max |delta p| of the mean member probability."""
    tol: float = PARITY_TOL

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs_member) and self.max_abs_member <= self.tol)

    def describe(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (
            f"{self.precision} vs fp32 on {self.n_patches} patches: max |dp| members {self.max_abs_member:.2e}, "
            f"mean {self.max_abs_mean:.2e} (tol {self.tol:.0e}: {verdict})"
        )


@contextlib.contextmanager
def _strict_fp32(device: torch.device) -> Iterator[None]:
    """No TF32 in CUDA convolutions / matmuls (the fp32 reference must be fp32)."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def reference_probs(members: Sequence[nn.Module], X: Any, device: str | torch.device = "cpu") -> np.ndarray:
    """(n, k) member probabilities of the plain fp32 eager forward (no TF32), in chunks of 256."""
    dev = torch.device(device)
    ref = FusedEnsemble(members, dev, precision="fp32", compile=False, pad=False, channels_last=False, pinned=False)
    x = as_batch(X)
    with _strict_fp32(dev):
        return np.concatenate([ref.member_probs(x[s : s + 256]) for s in range(0, len(x), 256)])


def parity(fused: FusedEnsemble, X: Any, members: Sequence[nn.Module] | None = None, tol: float = PARITY_TOL) -> Parity:
    """Compare ``fused`` with the fp32 eager forward of ``members`` (default: the fused module's own
    members) on patches X (real ones: the issue's bound is about real patches)."""
    ref = reference_probs(members if members is not None else list(fused.module.members), X, fused.device)
    got = fused.member_probs(X)
    d = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    dm = np.abs(got.astype(np.float64).mean(axis=1) - ref.astype(np.float64).mean(axis=1))
    return Parity(fused.precision, int(len(ref)), float(d.max()), float(dm.max()), tol)


def cpu_autocast_supported(dtype: torch.dtype = torch.bfloat16) -> tuple[bool, str]:
    """Whether conv3d runs under CPU autocast in ``dtype`` here: ``(ok, reason)``."""
    try:
        conv = nn.Conv3d(1, 2, 3, padding=1).eval()
        with torch.inference_mode(), torch.autocast(device_type="cpu", dtype=dtype):
            y = conv(torch.rand(1, 1, 4, 4, 4))
        return True, f"conv3d under CPU autocast gives {y.dtype}"
    except (RuntimeError, NotImplementedError) as exc:
        return False, f"conv3d under CPU {dtype} autocast fails: {exc}"


def probe_patches(n: int = 64, seed: int = 0, size: int = 32) -> np.ndarray:
    """Deterministic patch-like inputs (n, size, size, size) float32 in [0, 1] (air ~0.1 with one bright blob
    of random radius), for a start-up parity check where no real patches are at hand."""
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2.0
    z, y, x = np.mgrid[:size, :size, :size].astype(np.float32)
    r2 = (z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2
    out = 0.1 + 0.03 * rng.standard_normal((n, size, size, size)).astype(np.float32)
    for i in range(n):
        radius = rng.uniform(2.0, 10.0)
        out[i] += 0.5 * np.exp(-r2 / (2 * radius**2)).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
