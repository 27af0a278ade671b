"""Model size and compute: parameter count and multiply-adds (MACs) per nodule.

:func:`count_flops` is analytic (no model is built, so the search can call it freely) and counts the
multiply-adds of every convolution (incl. 1x1x1 projections and the CBAM spatial conv), of the CBAM
channel MLPs (avg and max path) and of the head, for one ``(1, 1, S, S, S)`` patch. BatchNorm, ReLU,
pooling, sigmoid, softmax, convolution biases and element-wise products are not counted (the usual MAC
convention). For ``block: reference`` specs it counts the per-stage stride-2 downsampling convs and the
always-present 1x1x1 shortcut of every residual block (the CBAM MLP has the same size, without ReLU).
:func:`count_flops_hooks` counts the same thing with forward hooks on a real 1-sample forward; the tests
check both agree.
"""

from __future__ import annotations

import torch
from torch import nn

from naslung.models.asoftmax import AngleLinear
from naslung.models.spec import ArchSpec

N_CLASSES = 2


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``); buffers (BN stats) excluded."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


def _conv_out(size: int, stride: int) -> int:
    # 3x3x3 padding 1 and 1x1x1 padding 0 give the same size: ceil(size / stride)
    return (size - 1) // stride + 1


def count_flops(spec: ArchSpec | str, input_size: int = 32, spatial_kernel: int = 3, reduction: int = 4) -> int:
    """Multiply-adds per nodule for a ``input_size``^3 voxel patch (analytic; see module docstring)."""
    spec = ArchSpec.coerce(spec)
    s = input_size
    vox = s**3
    total = 0

    def cbam(c: int, v: int) -> int:
        h = max(1, c // reduction)
        return 2 * (c * h + h * c) + v * 2 * spatial_kernel**3

    s1, s2 = spec.stem
    total += vox * 27 * (1 * s1 + s1 * s2)
    if spec.cbam:
        total += cbam(s2, vox)
    c = s2
    reference = spec.block == "reference"
    for widths in spec.stages:
        if reference:  # separate 3x3x3 stride-2 conv (c -> c), then stride-1 blocks with a 1x1x1 shortcut each
            s = _conv_out(s, 2)
            total += s**3 * 27 * c * c
        for i, w in enumerate(widths):
            stride = 2 if i == 0 and not reference else 1
            s = _conv_out(s, stride)
            v = s**3
            total += v * 27 * (c * w + w * w)
            if reference or c != w or stride != 1:
                total += v * c * w
            c = w
        if spec.cbam:
            total += cbam(c, s**3)
    total += c * N_CLASSES
    return int(total)


def count_flops_hooks(model: nn.Module, input_size: int = 32) -> int:
    """Multiply-adds of one ``(1, 1, S, S, S)`` forward counted with hooks on Conv3d/Linear/AngleLinear."""
    total = 0

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: object) -> None:
        nonlocal total
        x = inputs[0]
        if isinstance(mod, nn.Conv3d):
            assert isinstance(out, torch.Tensor)
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.kernel_size[2]
            total += out.numel() // out.shape[0] * (mod.in_channels // mod.groups) * k
        elif isinstance(mod, nn.Linear):
            total += x.numel() // mod.in_features * mod.in_features * mod.out_features
        elif isinstance(mod, AngleLinear):
            total += mod.in_features * mod.out_features

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv3d, nn.Linear, AngleLinear))
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            x = torch.zeros(1, 1, input_size, input_size, input_size)
            # forward_train runs the head's full forward (AngleLinear.forward, not only .logits)
            getattr(model, "forward_train", model)(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)
