"""Convolution building blocks of NASLung (3D, channels-first ``(N, C, D, H, W)`` tensors, voxels).

Two residual-block variants (``ArchSpec.block``):

* ``paper`` (:class:`ResidualBlock`): the paper's equations; the first block of a stage has stride 2; shortcut
  identity or a 1x1x1 projection; ReLU after the sum; convolutions without bias (BatchNorm follows).
* ``reference`` (:class:`ReferenceResidualBlock`, stride 1, after a separate :func:`downsample_conv` per
  stage): the public NAS-Lung code's ``ConvRes`` block: conv3-BN-ReLU, conv3-BN-ReLU, plus an always-present
  1x1x1 conv-BN-ReLU shortcut, summed with no ReLU after the sum; its convolutions carry a bias.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBNReLU(nn.Sequential):
    """``kernel``^3 conv (same padding) + BatchNorm3d + ReLU:
    ``(N, c_in, S, S, S) -> (N, c_out, ceil(S/stride), ...)``. No conv bias by default (BatchNorm follows)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, bias: bool = False, kernel: int = 3) -> None:
        super().__init__(
            nn.Conv3d(c_in, c_out, kernel_size=kernel, stride=stride, padding=kernel // 2, bias=bias),
            nn.BatchNorm3d(c_out),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Residual block: conv3-BN-ReLU, conv3-BN, add shortcut, ReLU.

    The shortcut is the identity when ``c_in == c_out`` and ``stride == 1``; otherwise a 1x1x1 conv
    (same stride) + BatchNorm3d projection. ``(N, c_in, S, S, S) -> (N, c_out, ceil(S/stride), ...)``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if c_in == c_out and stride == 1:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv3d(c_in, c_out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm3d(c_out)
            )

    @property
    def is_identity(self) -> bool:
        """True when the shortcut is the identity (no projection)."""
        return isinstance(self.shortcut, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def downsample_conv(channels: int) -> ConvBNReLU:
    """The reference variant's per-stage downsampling: 3x3x3 stride-2 conv (no bias) + BN + ReLU, channels
    kept: ``(N, C, S, S, S) -> (N, C, ceil(S/2), ...)``."""
    return ConvBNReLU(channels, channels, stride=2, bias=False)


class ReferenceResidualBlock(nn.Module):
    """Reference-code residual block (stride 1): ``body(x) + shortcut(x)``, no ReLU after the sum.

    ``body`` = conv3-BN-ReLU, conv3-BN-ReLU; ``shortcut`` = 1x1x1 conv-BN-ReLU, present whatever the widths
    (never the identity). Convolutions have a bias. ``(N, c_in, S, S, S) -> (N, c_out, S, S, S)``; each branch
    is >= 0, so the output is too, but it is not clipped again (the sum is the block's output).
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(c_in, c_out, bias=True)
        self.conv2 = ConvBNReLU(c_out, c_out, bias=True)
        self.shortcut = ConvBNReLU(c_in, c_out, bias=True, kernel=1)

    @property
    def is_identity(self) -> bool:
        """Always False: the reference block always projects its shortcut."""
        return False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + self.shortcut(x)
