"""Explainability maps of NASLung models: class activation maps and CBAM stage-2 spatial attention.

Inputs are patches ``X (N, 1, 32, 32, 32)`` or ``(N, 32, 32, 32)`` float32 in [0, 1], numpy order
``(z, y, x)``, 1 mm voxels. Every map is returned as ``(N, 32, 32, 32)`` float32 on the patch grid.

* CAM (Zhou et al. 2016): ``cam_k = sum_c w_kc · F_c`` with ``F (N, C, 4, 4, 4)`` the last feature maps
  (input of the global average pool) and ``w_k (C,)`` the classifier weights of class ``k``; for the
  A-Softmax head (:class:`~naslung.models.asoftmax.AngleLinear`) the class column normalised to unit length
  (the head only uses ``W_k / ||W_k||``). The 4^3 map is upsampled trilinearly (``align_corners=False``) to
  the input size. Units: logits; the mean of the 4^3 map is the class logit without bias (linear head)
  or exactly ``||x|| cos θ_k`` (A-Softmax head).
* Attention: the spatial weights (0, 1) of the CBAM after stage 2 (already 32^3; receptive field 7^3: the
  3^3 convs of stages 1 and 2 and the CBAM's 3^3 spatial conv). All three convs pad with zeros, so the
  attention of a voxel closer than :func:`attention_rim` voxels (3 for NASLungNet) to a face depends on
  the padding, not on the image. Measured on 24 real LIDC patches with two small CBAM nets trained on the
  toy sphere set (:func:`~naslung.explain.sanity.sphere_patches`): the attention of the same voxels seen
  with and without their true neighbours (a 24^3 crop against the full patch) differs by up to 0.41-0.56
  (mean 0.03-0.06) in the outer 3 layers, against an interior spread of sd 0.02-0.05, and by < 0.001 from
  3 voxels in. That rim is the border
  artefact of the panels. The model computes it (its features are multiplied by it), so the maps are left
  as they are; the panels grey it out and scale the colours on the interior, and the attention's map-mass
  figures are taken on the interior (:mod:`naslung.explain.panel`).

Models: anything with ``forward_maps(x) -> dict`` (``logits``, ``feature_maps``, ``spatial_attention``)
and a ``head`` (``nn.Linear`` or ``AngleLinear``): ``NASLungNet`` and DNAS-derived ``DnasNet``. An
ensemble is a list of such models or an object with a ``members`` list; its maps are the mean over
members of the member maps, all for the same class (the ensemble's prediction, mean probability >= 0.5,
unless a class is given).

Control: :func:`reinitialised` gives the same architectures with fresh, seeded weights (an untrained
ensemble), whose maps show what the architecture alone produces.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from naslung.data.patches import check_patches
from naslung.models.asoftmax import AngleLinear

PATCH = 32


@dataclass
class Explanation:
    """Maps of ``N`` patches: ``prob (N,)`` P(malignant) (mean over members), ``target (N,)`` class the CAM
    is for, ``cam (N, S, S, S)``, ``attention (N, S, S, S)`` or ``None`` (no CBAM), and ``member_probs
    (N, M)`` each member's P(malignant) from the same forward pass; float32 numpy arrays."""

    prob: np.ndarray
    target: np.ndarray
    cam: np.ndarray
    attention: np.ndarray | None
    member_probs: np.ndarray


def _as_batch(X: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``X`` as a float32 CPU tensor ``(N, 1, D, H, W)`` (batches move to each member's device later);
    :class:`~naslung.data.patches.PatchArrayError` unless it holds patches ``(N, D, H, W)`` or
    ``(N, 1, D, H, W)`` of any spatial size."""
    arr = X.detach().float().cpu().numpy() if isinstance(X, torch.Tensor) else X
    x = check_patches(np.asarray(arr, dtype=np.float32), "explain", size=None, values=False)
    return torch.as_tensor(x)[:, None]


def class_weights(model: nn.Module) -> torch.Tensor:
    """Classifier weights ``(K, C)``: ``nn.Linear`` rows, or the unit-normalised A-Softmax class columns."""
    head = getattr(model, "head", None)
    if isinstance(head, AngleLinear):
        return F.normalize(head.weight.detach(), dim=0).t()
    if isinstance(head, nn.Linear):
        return head.weight.detach()
    raise TypeError(
        f"class_weights: {type(model).__name__}.head must be nn.Linear or AngleLinear, got {type(head).__name__}"
    )


def _members(models: Any) -> list[nn.Module]:
    if isinstance(models, nn.Module):
        return [models]
    members = getattr(models, "members", models)
    out = list(members)
    if not out or not all(isinstance(m, nn.Module) for m in out):
        raise TypeError("explain: expected a model, a list of models or an object with a 'members' list of models")
    return out


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _member_maps(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor | None, batch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(prob (N,), raw CAM (N, K, 4, 4, 4) -> later, attention) for one model; CAM for every class."""
    if not hasattr(model, "forward_maps"):
        raise TypeError(f"explain: {type(model).__name__} has no forward_maps(x)")
    was = model.training
    model.eval()
    dev = _device(model)
    W = class_weights(model).to(dev)
    probs, cams, atts = [], [], []
    try:
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(dev)
            # nn.Module.__getattr__ is typed Tensor | Module; forward_maps is checked above to exist.
            out = cast("Callable[[torch.Tensor], dict[str, Any]]", model.forward_maps)(xb)
            probs.append(torch.softmax(out["logits"].float(), 1)[:, 1].cpu())
            fm = out["feature_maps"].float()
            cam = torch.einsum("kc,ncdhw->nkdhw", W.float(), fm)
            cams.append(F.interpolate(cam, size=xb.shape[2:], mode="trilinear", align_corners=False).cpu())
            sa = out.get("spatial_attention")
            if sa is not None:
                if sa.shape[2:] != xb.shape[2:]:
                    sa = F.interpolate(sa.float(), size=xb.shape[2:], mode="trilinear", align_corners=False)
                atts.append(sa[:, 0].float().cpu())
    finally:
        model.train(was)
    att = torch.cat(atts).numpy() if len(atts) == len(probs) and atts else None
    return torch.cat(probs).numpy(), torch.cat(cams).numpy(), att


def explain(
    models: Any, X: np.ndarray | torch.Tensor, target: int | Sequence[int] | str = "pred", batch_size: int = 32
) -> Explanation:
    """CAM and stage-2 attention of one model or an ensemble (mean over members), one pass per member.

    ``target``: ``"pred"`` (the (ensemble) predicted class, mean P(malignant) >= 0.5), ``"vote"`` (the
    members' majority vote: a member votes malignant at P >= 0.5, malignant when more than half do — the
    label an ensemble reports), a class index for all patches, or one class per patch. Attention is
    ``None`` when any member has no CBAM. The member probabilities come back too, so a caller needs no
    separate prediction pass.
    """
    members = _members(models)
    x = _as_batch(X)
    per = [_member_maps(m, x, None, batch_size) for m in members]
    member_probs = np.stack([p for p, _, _ in per], axis=1).astype(np.float32)
    prob = member_probs.mean(axis=1).astype(np.float32)
    n = x.shape[0]
    if isinstance(target, str):
        if target == "pred":
            tgt = (prob >= 0.5).astype(np.int64)
        elif target == "vote":
            from naslung.ensemble.model import majority_label

            tgt = majority_label(member_probs)[1]
        else:
            raise ValueError(f"explain: target must be 'pred', 'vote', a class index or one per patch, got {target!r}")
    else:
        tgt = np.broadcast_to(np.asarray(target, dtype=np.int64), (n,)).copy()
    if ((tgt < 0) | (tgt > 1)).any():
        raise ValueError(f"explain: class targets must be 0 or 1, got {np.unique(tgt)}")
    rows = np.arange(n)
    cam = np.mean([c[rows, tgt] for _, c, _ in per], axis=0).astype(np.float32)
    atts = [a for _, _, a in per]
    att = (
        np.mean(cast("list[np.ndarray]", atts), axis=0).astype(np.float32) if all(a is not None for a in atts) else None
    )
    return Explanation(prob, tgt, cam, att, member_probs)


def cam_maps(models: Any, X: np.ndarray | torch.Tensor, target: int | Sequence[int] | str = "pred") -> np.ndarray:
    """Class activation maps ``(N, 32, 32, 32)`` (see :func:`explain`)."""
    return explain(models, X, target).cam


def attention_maps(models: Any, X: np.ndarray | torch.Tensor) -> np.ndarray:
    """Stage-2 CBAM spatial attention ``(N, 32, 32, 32)`` in (0, 1); raises when a member has no CBAM."""
    att = explain(models, X).attention
    if att is None:
        raise ValueError("attention_maps: the model (or an ensemble member) has no CBAM attention")
    return att


def reinitialised(models: Any, seed: int) -> list[nn.Module]:
    """Untrained copies of the members of ``models`` (a model, a list or an object with ``members``): the
    same architectures, every submodule's ``reset_parameters()`` called (PyTorch's default initialisation
    of convolutions, linear and A-Softmax heads; BatchNorm back to weight 1, bias 0 and running statistics
    0 / 1), member ``i`` under ``torch.manual_seed(seed + i)``, in eval mode on the member's device. The
    originals and the global torch RNG state are left untouched. TypeError when a module holds parameters
    it cannot reset (a trained weight would survive)."""
    out = []
    for i, member in enumerate(_members(models)):
        twin = copy.deepcopy(member)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) + i)
            for mod in twin.modules():
                reset = getattr(mod, "reset_parameters", None)
                has_own = any(True for _ in mod.parameters(recurse=False))
                if callable(reset):
                    reset()
                elif has_own:
                    raise TypeError(
                        f"reinitialised: {type(mod).__name__} holds parameters but has no reset_parameters()"
                    )
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.reset_running_stats()
        out.append(twin.eval())
    return out


def attention_rim(models: Any) -> int:
    """Voxel layers at each face whose stage-2 attention sees the zero padding: the sum of the paddings of
    the zero-padded ``Conv3d`` in ``stage1``, ``stage2`` and ``cbam2`` (all stride 1, so their reaches add;
    3 for NASLungNet's 3^3 convs), the largest over members; 0 for members without ``cbam2``."""
    rim = 0
    for member in _members(models):
        if not hasattr(member, "cbam2"):
            continue
        reach = 0
        for name in ("stage1", "stage2", "cbam2"):
            for mod in getattr(member, name).modules():
                if isinstance(mod, nn.Conv3d) and mod.padding_mode == "zeros":
                    if isinstance(mod.padding, str):  # "same" pads half the dilated kernel, "valid" nothing
                        same = mod.padding == "same"
                        reach += max(d * (k - 1) // 2 for k, d in zip(mod.kernel_size, mod.dilation)) if same else 0
                    else:
                        reach += int(max(mod.padding))
        rim = max(rim, reach)
    return rim
