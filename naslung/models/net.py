r"""NASLung network (Jiang et al. 2021): a 3D residual CNN with optional CBAM and an A-Softmax head.

Input ``(N, 1, 32, 32, 32)`` float32 patches in numpy order ``(z, y, x)``, 1 mm voxels, values in [0, 1].

* stage 1, stage 2: one 3x3x3 conv + BN + ReLU each (``spec.stem`` widths, stride 1; 32^3 maps);
* stages 3, 4, 5: ``spec.depths`` residual blocks of ``spec.stages`` widths, maps 16^3, 8^3, 4^3:

  - ``spec.block == "paper"``: :class:`~naslung.models.blocks.ResidualBlock`\ s, the first of each stage
    with stride 2;
  - ``spec.block == "reference"`` (the public code's ``ConvRes``): a 3x3x3 stride-2 conv + BN + ReLU
    (:func:`~naslung.models.blocks.downsample_conv`, channels kept) first, then stride-1
    :class:`~naslung.models.blocks.ReferenceResidualBlock`\ s; stage 1/2 convs carry a bias;

* CBAM after stages 2, 3, 4, 5 when ``spec.cbam`` (:class:`~naslung.models.cbam.CBAM`, or
  :class:`~naslung.models.cbam.ReferenceCBAM` for the reference block);
* global average pooling -> features ``(N, C)``, ``C = spec.out_channels``;
* head: ``nn.Linear(C, 2)`` or :class:`~naslung.models.asoftmax.AngleLinear` ``(C, 2, m)``.

``model(x)`` gives the prediction logits ``(N, 2)`` (for A-Softmax ``||x|| cos θ``, no margin);
``model.forward_train(x)`` what the loss of :func:`~naslung.models.asoftmax.build_loss` needs;
``model.forward_maps(x)`` the attention map of stage 2 and the last feature maps for explainability.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from naslung.models.asoftmax import AngleLinear
from naslung.models.blocks import ConvBNReLU, ReferenceResidualBlock, ResidualBlock, downsample_conv
from naslung.models.cbam import CBAM, ReferenceCBAM
from naslung.models.spec import ArchSpec

N_CLASSES = 2


class NASLungNet(nn.Module):
    """NASLung model built from an :class:`ArchSpec` (see module docstring for the layout)."""

    def __init__(self, spec: ArchSpec | str, margin_m: int = 4, spatial_kernel: int = 3) -> None:
        super().__init__()
        spec = ArchSpec.coerce(spec)
        self.spec = spec
        self.margin_m = int(margin_m)
        reference = spec.block == "reference"
        s1, s2 = spec.stem
        self.stage1 = ConvBNReLU(1, s1, bias=reference)
        self.stage2 = ConvBNReLU(s1, s2, bias=reference)
        c = s2
        stages: list[nn.Module] = []
        for widths in spec.stages:
            blocks: list[nn.Module] = [downsample_conv(c)] if reference else []
            for i, w in enumerate(widths):
                blocks.append(
                    ReferenceResidualBlock(c, w) if reference else ResidualBlock(c, w, stride=2 if i == 0 else 1)
                )
                c = w
            stages.append(nn.Sequential(*blocks))
        self.stage3, self.stage4, self.stage5 = stages
        cbam_cls = ReferenceCBAM if reference else CBAM

        def att(ch: int) -> nn.Module:
            return cbam_cls(ch, spatial_kernel=spatial_kernel) if spec.cbam else nn.Identity()

        self.cbam2 = att(s2)
        self.cbam3 = att(spec.stages[0][-1])
        self.cbam4 = att(spec.stages[1][-1])
        self.cbam5 = att(spec.stages[2][-1])
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head: nn.Module = (
            AngleLinear(c, N_CLASSES, m=self.margin_m) if spec.head == "asoftmax" else nn.Linear(c, N_CLASSES)
        )

    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"NASLungNet expects input (N, 1, D, H, W), got shape {tuple(x.shape)}")

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature maps ``(N, C, 4, 4, 4)`` (after stage 5 and its CBAM) for a 32^3 input."""
        self._check_input(x)
        x = self.cbam2(self.stage2(self.stage1(x)))
        x = self.cbam3(self.stage3(x))
        x = self.cbam4(self.stage4(x))
        return self.cbam5(self.stage5(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(N, C)`` after global average pooling."""
        return self.pool(self.feature_maps(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Prediction logits ``(N, 2)``; ``softmax(., 1)[:, 1]`` is P(malignant). A-Softmax: ``||x|| cos θ``."""
        f = self.features(x)
        if isinstance(self.head, AngleLinear):
            return self.head.logits(f)
        return self.head(f)

    def forward_train(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Loss input: logits ``(N, 2)`` (linear) or ``(||x|| cos θ, ||x|| φ(θ))`` (A-Softmax)."""
        return self.head(self.features(x))

    def forward_maps(self, x: torch.Tensor) -> dict[str, Any]:
        """Prediction plus explainability tensors (no ``no_grad`` here, so Grad-CAM can backprop).

        Returns ``logits (N, 2)``, ``features (N, C)``, ``feature_maps (N, C, 4, 4, 4)`` (input of the
        global pool), and when ``spec.cbam``: ``spatial_attention (N, 1, 32, 32, 32)`` and
        ``channel_attention (N, C2, 1, 1, 1)`` of the CBAM after stage 2 (else ``None``).
        """
        cbam2 = self.cbam2 if isinstance(self.cbam2, CBAM) else None
        if cbam2 is not None:
            cbam2.keep_maps = True
        try:
            maps = self.feature_maps(x)
        finally:
            if cbam2 is not None:
                cbam2.keep_maps = False
        f = self.pool(maps).flatten(1)
        logits = self.head.logits(f) if isinstance(self.head, AngleLinear) else self.head(f)
        out: dict[str, Any] = {
            "logits": logits,
            "features": f,
            "feature_maps": maps,
            "spatial_attention": cbam2.last_spatial if cbam2 is not None else None,
            "channel_attention": cbam2.last_channel if cbam2 is not None else None,
        }
        if cbam2 is not None:
            cbam2.last_spatial = cbam2.last_channel = None
        return out

    def extra_repr(self) -> str:
        return f"spec={self.spec.ref_string()!r}, spec_id={self.spec.spec_id}, margin_m={self.margin_m}"


def build_model(spec: ArchSpec | str, margin_m: int = 4) -> NASLungNet:
    """``NASLungNet(spec, margin_m)``; seed with ``torch.manual_seed`` first for a deterministic init."""
    return NASLungNet(spec, margin_m=margin_m)
