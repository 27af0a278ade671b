"""CBAM (Woo et al. 2018) for 3D maps: channel attention first, then spatial attention.

Tensors are channels-first ``(N, C, D, H, W)`` (voxels). Attention weights are in (0, 1) (sigmoid).

:class:`CBAM` is the paper's form (``y = s(x') * x'``, ``x' = c(x) * x``, sigmoid channel weights from a
ReLU MLP). :class:`ReferenceCBAM` is the public NAS-Lung code's attention layer (``block: reference``):
channel weights are a *softmax over channels* of a shared MLP without ReLU (they sum to 1), the spatial
weights are computed from the channel-weighted maps, and the output is ``s * x + x`` on the *input* ``x``
(a residual attention: the channel weights reach the output only through ``s``).
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """Shared MLP ``C -> max(1, C // reduction) -> C`` (ReLU between) over global avg- and max-pooled
    features, summed, sigmoid: weights ``(N, C, 1, 1, 1)``."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True), nn.Linear(hidden, channels, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3, 4))
        mx = x.amax(dim=(2, 3, 4))
        w = torch.sigmoid(self.mlp(avg) + self.mlp(mx))
        return w[:, :, None, None, None]


class SpatialAttention(nn.Module):
    """Channel-mean and channel-max maps ``(N, 2, D, H, W)`` -> 3D conv (``kernel``^3, same padding)
    -> sigmoid: weights ``(N, 1, D, H, W)``."""

    def __init__(self, kernel: int = 3) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"spatial attention kernel must be odd, got {kernel}")
        self.conv = nn.Conv3d(2, 1, kernel_size=kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """``y = s(x') * x'`` with ``x' = c(x) * x``: channel attention, then spatial attention on the
    channel-refined features. Shape preserving. The last weights are kept when ``keep_maps`` is set."""

    def __init__(self, channels: int, reduction: int = 4, spatial_kernel: int = 3) -> None:
        super().__init__()
        self.channel: nn.Module = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(spatial_kernel)
        self.keep_maps = False
        self.last_channel: torch.Tensor | None = None
        self.last_spatial: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cw = self.channel(x)
        x = x * cw
        sw = self.spatial(x)
        if self.keep_maps:
            self.last_channel, self.last_spatial = cw, sw
        return x * sw


class ReferenceChannelAttention(nn.Module):
    """Shared MLP ``C -> max(1, C // reduction) -> C`` (no ReLU, no bias) over global avg- and max-pooled
    features, summed, softmax over channels: weights ``(N, C, 1, 1, 1)`` in (0, 1) that sum to 1 per sample."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.Linear(hidden, channels, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3, 4))
        mx = x.amax(dim=(2, 3, 4))
        w = torch.softmax(self.mlp(avg) + self.mlp(mx), dim=1)
        return w[:, :, None, None, None]


class ReferenceCBAM(CBAM):
    """Reference-code attention: ``y = s(c(x) * x) * x + x`` with softmax channel weights ``c``
    (:class:`ReferenceChannelAttention`) and sigmoid spatial weights ``s`` (:class:`SpatialAttention`).
    Shape preserving; ``keep_maps`` keeps the last weights like :class:`CBAM`."""

    def __init__(self, channels: int, reduction: int = 4, spatial_kernel: int = 3) -> None:
        super().__init__(channels, reduction, spatial_kernel)
        self.channel = ReferenceChannelAttention(channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cw = self.channel(x)
        sw = self.spatial(x * cw)
        if self.keep_maps:
            self.last_channel, self.last_spatial = cw, sw
        return sw * x + x
