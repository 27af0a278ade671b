"""Training-time augmentation of nodule patches: pad, random crop back to size, random flips, axis permutations.

Shapes: a batch is a tensor (N, C, D, H, W) = (N, 1, 32, 32, 32) in numpy/torch order (z, y, x), 1 mm
voxels, intensities windowed to [0, 1]. Each sample is padded by ``pad`` voxels on every side of the three
spatial axes (32 -> 36 with the default pad of 2), a random 32^3 window is cut from it, and each of the
three axes is flipped with probability 1/2 — crop offsets and flips drawn independently per sample.
With ``permute_axes`` the three spatial axes of each sample are also put in a random order (one of 6, uniform):
on the isotropic 1 mm grid this is exact (no interpolation), and together with the flips it draws from all
48 symmetries of the cube — the 24 rotations by multiples of 90° and their mirror images. A nodule's label does
not depend on its orientation, so these are label-preserving.

Padding value: the border voxels are *replicated* (``mode="replicate"``). The patch is HU-windowed, so
air is about 0.11 and not 0; padding with the constant 0 would paint an artificial -1200 HU frame
around the nodule that the network could learn as a cue for the crop offset. Replicating the edge keeps
the padded rim at the tissue/air value that is already there.

The whole batch is done in one gather (no Python loop over samples, axis permutations included: they are
folded into the gather's index, so nothing reads a device tensor back to the host). Randomness comes only
from the ``torch.Generator`` passed in (a CPU generator), so the result is a deterministic function of the
batch and the generator state, on CPU and on CUDA alike. :func:`draw_augment` draws a batch's random numbers
(:class:`AugmentDraw`) and :func:`apply_augment` applies them on the batch's device; ``augment_batch`` is
the two in a row. The training loop draws a whole epoch's numbers up front (same draws, same order) and
moves them to the GPU in one copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

AXIS_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
"""The 6 orders of the spatial axes (z, y, x) = (0, 1, 2) that ``permute_axes`` draws from."""


@dataclass(frozen=True)
class AugmentDraw:
    """The random numbers of one augmented batch of ``n`` samples (CPU or device tensors).

    ``offsets (n, 3)`` int64 crop offsets in [0, 2·pad] per spatial axis (z, y, x); ``flip (n, 3)`` bool;
    ``order (n,)`` int64 index into :data:`AXIS_ORDERS`, or None without ``permute_axes``.
    """

    offsets: torch.Tensor
    flip: torch.Tensor
    order: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AugmentDraw:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return AugmentDraw(move(self.offsets), move(self.flip), None if self.order is None else move(self.order))

    def pin(self) -> AugmentDraw:
        """A copy in pinned host memory (for a ``non_blocking`` host -> device copy)."""
        order = None if self.order is None else self.order.pin_memory()
        return AugmentDraw(self.offsets.pin_memory(), self.flip.pin_memory(), order)

    def rows(self, start: int, stop: int) -> AugmentDraw:
        """The draws of samples ``start:stop`` (views, no copy)."""
        order = None if self.order is None else self.order[start:stop]
        return AugmentDraw(self.offsets[start:stop], self.flip[start:stop], order)

    @staticmethod
    def cat(draws: list[AugmentDraw]) -> AugmentDraw:
        """The draws of several batches, in order, as one (for one host -> device copy)."""
        orders = [d.order for d in draws]
        order = None if any(o is None for o in orders) else torch.cat([o for o in orders if o is not None])
        return AugmentDraw(torch.cat([d.offsets for d in draws]), torch.cat([d.flip for d in draws]), order)


def draw_augment(
    n: int, generator: torch.Generator, pad: int = 2, flips: bool = True, permute_axes: bool = False
) -> AugmentDraw | None:
    """Draw the random numbers :func:`augment_batch` uses for ``n`` samples, in its order (offsets, then flips
    when ``flips``, then axis orders when ``permute_axes``), from ``generator`` (CPU). None when the
    augmentation is the identity (``pad == 0`` and neither flips nor permutations: nothing is drawn)."""
    if pad < 0:
        raise ValueError(f"augment_batch: pad must be >= 0 voxels, got {pad}")
    if pad == 0 and not flips and not permute_axes:
        return None
    offsets = torch.randint(0, 2 * pad + 1, (n, 3), generator=generator)
    flip = torch.rand((n, 3), generator=generator) < 0.5 if flips else torch.zeros((n, 3), dtype=torch.bool)
    order = torch.randint(0, len(AXIS_ORDERS), (n,), generator=generator) if permute_axes else None
    return AugmentDraw(offsets, flip, order)


_INVERSE_ORDERS = torch.tensor([[axes.index(a) for a in range(3)] for axes in AXIS_ORDERS])
"""Row k: for each input axis (z, y, x), the output axis it goes to under ``AXIS_ORDERS[k]``."""
_INVERSE_ON: dict[torch.device, torch.Tensor] = {}


def _inverse_orders(device: torch.device) -> torch.Tensor:
    """:data:`_INVERSE_ORDERS` on ``device``, copied once (a per-step host -> device copy could sync)."""
    if device.type == "cpu":
        return _INVERSE_ORDERS
    if device not in _INVERSE_ON:
        _INVERSE_ON[device] = _INVERSE_ORDERS.to(device)
    return _INVERSE_ON[device]


def apply_augment(x: torch.Tensor, draw: AugmentDraw | None, pad: int) -> torch.Tensor:
    """Apply ``draw`` (from :func:`draw_augment` with the same ``pad``) to ``x`` (N, C, D, H, W) on
    ``x.device`` in one gather; no value is read back to the host. ``None`` returns ``x`` unchanged."""
    if draw is None:
        return x
    n, _c, d, h, w = x.shape
    dev = x.device
    draw = draw.to(dev)
    xp = F.pad(x, (pad,) * 6, mode="replicate") if pad else x
    index = []
    for axis, size in enumerate((d, h, w)):
        ramp = torch.arange(size, device=dev)
        ramp = torch.where(draw.flip[:, axis : axis + 1], size - 1 - ramp, ramp)  # (N, size)
        index.append(draw.offsets[:, axis : axis + 1] + ramp)
    iz, iy, ix = index
    batch = torch.arange(n, device=dev)
    channels_last = xp.permute(0, 2, 3, 4, 1)  # (N, D+2p, H+2p, W+2p, C)
    if draw.order is None:
        out = channels_last[
            batch[:, None, None, None], iz[:, :, None, None], iy[:, None, :, None], ix[:, None, None, :]
        ]  # (N, D, H, W, C)
    else:
        # Output voxel (p0, p1, p2) of sample i under axis order a = AXIS_ORDERS[k] is the cropped/flipped
        # voxel whose input axis a_j sits at p_j, so input axis t reads the output coordinate p_{inv[t]}.
        grid = torch.stack(torch.meshgrid(*(torch.arange(d, device=dev),) * 3, indexing="ij")).reshape(3, -1)
        inv = _inverse_orders(dev)[draw.order]  # (N, 3)
        coord = [torch.gather(idx, 1, grid[inv[:, t]]).view(n, d, d, d) for t, idx in enumerate(index)]
        out = channels_last[batch[:, None, None, None], coord[0], coord[1], coord[2]]
    return out.permute(0, 4, 1, 2, 3).contiguous()


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, pad: int = 2, flips: bool = True, permute_axes: bool = False
) -> torch.Tensor:
    """Randomly pad-crop, flip and (optionally) axis-permute a batch ``x`` (N, C, D, H, W).

    Returns a new tensor of the same shape. ``pad`` is in voxels per side; with ``pad == 0`` and ``flips``
    and ``permute_axes`` off the batch is returned unchanged. ``permute_axes`` needs cubic patches
    (D == H == W). Random numbers are drawn from ``generator`` (CPU, :func:`draw_augment`) and moved to
    ``x.device``; the permutations are drawn after the crop offsets and flips, so turning them on does not
    change those.
    """
    check_augment_input(x, pad, permute_axes)
    return apply_augment(x, draw_augment(x.shape[0], generator, pad, flips, permute_axes), pad)


def check_augment_input(x: torch.Tensor, pad: int, permute_axes: bool) -> None:
    """ValueError unless ``x`` is a batch (N, C, D, H, W), ``pad >= 0`` and (with ``permute_axes``) cubic."""
    if x.ndim != 5:
        raise ValueError(f"augment_batch: expected a batch (N, C, D, H, W), got shape {tuple(x.shape)}")
    if pad < 0:
        raise ValueError(f"augment_batch: pad must be >= 0 voxels, got {pad}")
    _n, _c, d, h, w = x.shape
    if permute_axes and not d == h == w:
        raise ValueError(f"augment_batch: permute_axes needs cubic patches, got (D, H, W) = {(d, h, w)}")
