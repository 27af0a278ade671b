"""3D MBConv networks of the differentiable search space: the space, a derived architecture, the model.

Tensors are channels-first ``(N, C, D, H, W)`` in voxels; input patches ``(N, 1, 32, 32, 32)`` float32 in
[0, 1], numpy order ``(z, y, x)``.

* :class:`DnasSpace`: a stride-2 stem conv (``32^3 -> 16^3``), ``len(layers)`` searchable layers
  ``(c_out, stride)`` (default 16^3 -> 8^3 -> 4^3), a 1x1x1 head conv, global average pooling and a linear
  classifier (2 classes). Each searchable layer picks one op ``k{K}_e{E}`` = :class:`MBConv3d` (1x1x1
  expand x E, depthwise KxKxK, 1x1x1 project; BN; ReLU6; residual when shape preserving) for K in
  ``kernels`` x E in ``expansions``, plus ``skip`` where the layer keeps the shape (stride 1, same width).
* :class:`DnasArch`: a derived architecture (the space + one op per layer). It is data, like
  :class:`~naslung.models.spec.ArchSpec`, and answers the same questions (``spec_id``, ``to_dict`` with
  ``"kind": "dnas"``, ``ref_string``, ``head`` = ``"linear"``, ``cbam`` = False), so the training loop,
  the ensemble and the search outputs handle both kinds through :mod:`naslung.models.factory`.
* :class:`DnasNet`: the standalone model of a :class:`DnasArch`; it predicts like ``NASLungNet``
  (``forward -> (N, 2)`` logits, ``features (N, C)``, ``feature_maps (N, C, 4, 4, 4)``, ``forward_maps``,
  ``forward_train`` = logits for cross-entropy, and a linear ``head`` for class activation maps).

The weight-sharing supernet and the search itself live in :mod:`naslung.search.dnas`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

N_CLASSES = 2
SKIP = "skip"


# --------------------------------------------------------------------------------------------- space


@dataclass(frozen=True)
class DnasSpace:
    """Supernet layout: stem width, searchable layers ``(c_out, stride)``, head width, op grid."""

    stem: int = 8
    layers: tuple[tuple[int, int], ...] = ((8, 1), (16, 2), (16, 1), (32, 2), (32, 1))
    head_channels: int = 32
    kernels: tuple[int, ...] = (3, 5, 7)
    expansions: tuple[int, ...] = (3, 4, 6)
    skip: bool = True
    in_channels: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple((int(c), int(s)) for c, s in self.layers))
        object.__setattr__(self, "kernels", tuple(int(k) for k in self.kernels))
        object.__setattr__(self, "expansions", tuple(int(e) for e in self.expansions))
        if not self.layers:
            raise ValueError("DnasSpace: at least one searchable layer is needed")
        if any(k % 2 != 1 or k < 1 for k in self.kernels):
            raise ValueError(f"DnasSpace: kernels must be odd, got {self.kernels}")
        if any(s not in (1, 2) for _, s in self.layers):
            raise ValueError(f"DnasSpace: strides must be 1 or 2, got {self.layers}")

    def layer_io(self) -> list[tuple[int, int, int]]:
        """``(c_in, c_out, stride)`` of each searchable layer."""
        out, c = [], self.stem
        for c_out, stride in self.layers:
            out.append((c, c_out, stride))
            c = c_out
        return out

    def candidates(self, layer: int) -> list[str]:
        """Op names of a layer: ``k{K}_e{E}`` for the grid, plus ``skip`` when the layer keeps the shape."""
        c_in, c_out, stride = self.layer_io()[layer]
        ops = [f"k{k}_e{e}" for k in self.kernels for e in self.expansions]
        if self.skip and stride == 1 and c_in == c_out:
            ops.append(SKIP)
        return ops

    def to_dict(self) -> dict[str, Any]:
        return {
            "stem": self.stem,
            "layers": [list(x) for x in self.layers],
            "head_channels": self.head_channels,
            "kernels": list(self.kernels),
            "expansions": list(self.expansions),
            "skip": self.skip,
            "in_channels": self.in_channels,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DnasSpace:
        return cls(**{**d, "layers": tuple(tuple(x) for x in d["layers"])})


def parse_op(name: str) -> tuple[int, int]:
    """``"k5_e4" -> (5, 4)`` (kernel, expansion); raises on ``skip`` or a bad name."""
    try:
        k, e = name.split("_")
        if k[0] != "k" or e[0] != "e":
            raise ValueError
        return int(k[1:]), int(e[1:])
    except (ValueError, IndexError):
        raise ValueError(f"bad DNAS op name {name!r}; expected 'k<K>_e<E>' or 'skip'") from None


@dataclass(frozen=True)
class DnasArch:
    """A derived architecture: the space and one op name per searchable layer.

    Identity: :attr:`arch_id` (10 hex digits of the sha256 of :meth:`to_json`) and :attr:`spec_id`
    ``"d-" + arch_id`` (``ArchSpec`` ids start with ``"m1-"``, so the two kinds never collide).
    """

    KIND = "dnas"

    space: DnasSpace
    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        if len(self.ops) != len(self.space.layers):
            raise ValueError(f"DnasArch: {len(self.ops)} ops for {len(self.space.layers)} layers")
        for i, op in enumerate(self.ops):
            if op not in self.space.candidates(i):
                raise ValueError(f"DnasArch: op {op!r} is not a candidate of layer {i}: {self.space.candidates(i)}")

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": "dnas", "space": DnasSpace.to_dict(), "ops": [..]}`` (JSON-safe)."""
        return {"kind": self.KIND, "space": self.space.to_dict(), "ops": list(self.ops)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DnasArch:
        """Inverse of :meth:`to_dict` (``kind``, when present, must be ``"dnas"``)."""
        if not isinstance(d, dict):
            raise ValueError(f"DnasArch: mapping expected, got {type(d).__name__}")
        if d.get("kind", cls.KIND) != cls.KIND:
            raise ValueError(f"DnasArch: kind must be {cls.KIND!r}, got {d.get('kind')!r}")
        unknown = sorted(set(d) - {"kind", "space", "ops"})
        if unknown or "space" not in d or "ops" not in d:
            raise ValueError(f"DnasArch: expected keys kind, space, ops; got {sorted(d)}")
        return cls(DnasSpace.from_dict(d["space"]), tuple(d["ops"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DnasArch:
        return cls.from_dict(json.loads(text))

    @property
    def arch_id(self) -> str:
        """Short stable id (sha256 of the canonical JSON, 10 hex digits)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:10]

    @property
    def spec_id(self) -> str:
        """Stable id shared with ``ArchSpec.spec_id`` consumers: ``"d-" + arch_id``."""
        return "d-" + self.arch_id

    @property
    def head(self) -> str:
        """Classifier head kind: always ``"linear"`` (:class:`DnasNet` ends in ``nn.Linear(C, 2)``)."""
        return "linear"

    @property
    def cbam(self) -> bool:
        """No CBAM attention in MBConv networks."""
        return False

    @property
    def out_channels(self) -> int:
        """Width C of the penultimate features (``space.head_channels``)."""
        return self.space.head_channels

    def ref_string(self) -> str:
        """Readable form, e.g. ``dnas[k3_e3,skip,k5_e6,...]``."""
        return "dnas[" + ",".join(self.ops) + "]"

    def __str__(self) -> str:
        return self.ref_string()


# --------------------------------------------------------------------------------------------- blocks


class MBConv3d(nn.Module):
    """Inverted residual: 1x1x1 expand (x ``expansion``) + BN + ReLU6, depthwise ``kernel``^3 (stride) + BN +
    ReLU6, 1x1x1 project + BN; identity residual when ``stride == 1`` and ``c_in == c_out``.
    ``(N, c_in, S, S, S) -> (N, c_out, ceil(S / stride), ...)``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, expansion: int, stride: int = 1) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.block = nn.Sequential(
            nn.Conv3d(c_in, hidden, 1, bias=False),
            nn.BatchNorm3d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv3d(hidden, hidden, kernel, stride=stride, padding=kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm3d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv3d(hidden, c_out, 1, bias=False),
            nn.BatchNorm3d(c_out),
        )
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


def make_op(name: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    """The module of op ``name`` (``skip`` -> identity, only for shape-preserving layers)."""
    if name == SKIP:
        if stride != 1 or c_in != c_out:
            raise ValueError(f"skip needs stride 1 and c_in == c_out, got {c_in}->{c_out} stride {stride}")
        return nn.Identity()
    k, e = parse_op(name)
    return MBConv3d(c_in, c_out, k, e, stride)


def stem_block(space: DnasSpace) -> nn.Sequential:
    """3x3x3 stride-2 conv + BN + ReLU6: ``(N, in_channels, S, S, S) -> (N, stem, S/2, S/2, S/2)``."""
    return nn.Sequential(
        nn.Conv3d(space.in_channels, space.stem, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm3d(space.stem),
        nn.ReLU6(inplace=True),
    )


def head_conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """1x1x1 conv + BN + ReLU6: ``(N, c_in, S, S, S) -> (N, c_out, S, S, S)``."""
    return nn.Sequential(nn.Conv3d(c_in, c_out, 1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU6(inplace=True))


class DnasNet(nn.Module):
    """Standalone model of a derived :class:`DnasArch` (trains from scratch; predicts like ``NASLungNet``).

    ``forward(x) -> (N, 2)`` logits; ``features(x) -> (N, C)`` (C = ``head_channels``);
    ``feature_maps(x) -> (N, C, 4, 4, 4)`` for a 32^3 input; ``head`` is ``nn.Linear(C, 2)``.
    """

    def __init__(self, arch: DnasArch) -> None:
        super().__init__()
        self.arch = arch
        space = arch.space
        self.stem = stem_block(space)
        self.layers = nn.Sequential(*(make_op(op, ci, co, s) for op, (ci, co, s) in zip(arch.ops, space.layer_io())))
        self.head_conv = head_conv_block(space.layers[-1][0], space.head_channels)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Linear(space.head_channels, N_CLASSES)

    @property
    def spec(self) -> DnasArch:
        """The architecture (same attribute name as ``NASLungNet.spec``)."""
        return self.arch

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.arch.space.in_channels:
            raise ValueError(f"DnasNet expects input (N, 1, D, H, W), got shape {tuple(x.shape)}")
        return self.head_conv(self.layers(self.stem(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_maps(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_train(self, x: torch.Tensor) -> torch.Tensor:
        """Loss input: the logits ``(N, 2)`` (cross-entropy, ``build_loss`` of a linear head)."""
        return self(x)

    def forward_maps(self, x: torch.Tensor) -> dict[str, Any]:
        """Same keys as ``NASLungNet.forward_maps``; no CBAM, so the attention entries are ``None``."""
        maps = self.feature_maps(x)
        f = self.pool(maps).flatten(1)
        return {
            "logits": self.head(f),
            "features": f,
            "feature_maps": maps,
            "spatial_attention": None,
            "channel_attention": None,
        }

    def extra_repr(self) -> str:
        return f"arch={self.arch.ref_string()!r}, spec_id={self.arch.spec_id}"


def build_dnas_model(arch: DnasArch | dict[str, Any] | str) -> DnasNet:
    """:class:`DnasNet` from a :class:`DnasArch`, its ``to_dict()`` or its JSON."""
    if isinstance(arch, str):
        arch = DnasArch.from_json(arch)
    elif isinstance(arch, dict):
        arch = DnasArch.from_dict(arch)
    return DnasNet(arch)
