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

The whole batch is done in one gather (no Python loop over samples). Randomness comes only from the
``torch.Generator`` passed in (a CPU generator), so the result is a deterministic function of the batch
and the generator state, on CPU and on CUDA alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AXIS_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
"""The 6 orders of the spatial axes (z, y, x) = (0, 1, 2) that ``permute_axes`` draws from."""


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, pad: int = 2, flips: bool = True, permute_axes: bool = False
) -> torch.Tensor:
    """Randomly pad-crop, flip and (optionally) axis-permute a batch ``x`` (N, C, D, H, W).

    Returns a new tensor of the same shape. ``pad`` is in voxels per side; with ``pad == 0`` and ``flips``
    and ``permute_axes`` off the batch is returned unchanged. ``permute_axes`` needs cubic patches
    (D == H == W). Random numbers are drawn from ``generator`` (CPU) and moved to ``x.device``; the
    permutations are drawn after the crop offsets and flips, so turning them on does not change those.
    """
    if x.ndim != 5:
        raise ValueError(f"augment_batch: expected a batch (N, C, D, H, W), got shape {tuple(x.shape)}")
    if pad < 0:
        raise ValueError(f"augment_batch: pad must be >= 0 voxels, got {pad}")
    n, _c, d, h, w = x.shape
    if permute_axes and not d == h == w:
        raise ValueError(f"augment_batch: permute_axes needs cubic patches, got (D, H, W) = {(d, h, w)}")
    if pad == 0 and not flips and not permute_axes:
        return x
    xp = F.pad(x, (pad,) * 6, mode="replicate") if pad else x
    offsets = torch.randint(0, 2 * pad + 1, (n, 3), generator=generator)
    flip = torch.rand((n, 3), generator=generator) < 0.5 if flips else torch.zeros((n, 3), dtype=torch.bool)
    index = []
    for axis, size in enumerate((d, h, w)):
        ramp = torch.arange(size)
        ramp = torch.where(flip[:, axis : axis + 1], size - 1 - ramp, ramp)  # (N, size)
        index.append((offsets[:, axis : axis + 1] + ramp).to(x.device))
    iz, iy, ix = index
    batch = torch.arange(n, device=x.device)
    channels_last = xp.permute(0, 2, 3, 4, 1)  # (N, D+2p, H+2p, W+2p, C)
    out = channels_last[
        batch[:, None, None, None], iz[:, :, None, None], iy[:, None, :, None], ix[:, None, None, :]
    ]  # (N, D, H, W, C)
    if permute_axes:
        order = torch.randint(0, len(AXIS_ORDERS), (n,), generator=generator).to(x.device)
        permuted = out.clone()
        for k, axes in enumerate(AXIS_ORDERS[1:], start=1):
            rows = (order == k).nonzero().flatten()
            if rows.numel():
                permuted[rows] = out[rows].permute(0, *(1 + a for a in axes), 4)
        out = permuted
    return out.permute(0, 4, 1, 2, 3).contiguous()
