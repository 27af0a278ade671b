"""PNG overlays of explainability maps on CT patches (matplotlib, Agg backend).

Patches and maps are ``(32, 32, 32)`` arrays in numpy order ``(z, y, x)``, 1 mm voxels; patches in [0, 1]
(HU window). Views through the centre voxel ``c``: axial ``patch[c_z]`` (y down, x right), coronal
``patch[:, c_y]`` (z up, x right), sagittal ``patch[:, :, c_x]`` (z up, y right).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

VIEWS = ("axial", "coronal", "sagittal")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def slices(vol: np.ndarray, centre_zyx: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Axial, coronal and sagittal 2D slices of ``vol (D, H, W)`` through ``centre_zyx`` (default the middle).
    Coronal and sagittal slices are flipped so that z (cranial) points up."""
    if vol.ndim != 3:
        raise ValueError(f"slices: expected a (D, H, W) volume, got shape {vol.shape}")
    c = [s // 2 for s in vol.shape] if centre_zyx is None else [int(v) for v in centre_zyx]
    return {"axial": vol[c[0]], "coronal": vol[::-1, c[1], :], "sagittal": vol[::-1, :, c[2]]}


def overlay_figure(
    patch: np.ndarray,
    heat: np.ndarray,
    title: str = "",
    label: str = "CAM",
    centre_zyx: Sequence[int] | None = None,
    alpha: float = 0.45,
    cmap: str = "jet",
) -> Any:
    """Figure with the three views of ``patch`` (grey) and ``heat`` (colour, with a colour bar)."""
    plt = _plt()
    if patch.shape != heat.shape:
        raise ValueError(f"overlay_figure: patch {patch.shape} and map {heat.shape} differ")
    ps, hs = slices(patch, centre_zyx), slices(heat, centre_zyx)
    vmin, vmax = float(np.min(heat)), float(np.max(heat))
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.6), dpi=110)
    im = None
    for ax, v in zip(axes, VIEWS):
        ax.imshow(ps[v], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        im = ax.imshow(
            hs[v],
            cmap=cmap,
            alpha=alpha,
            vmin=vmin,
            vmax=vmax if vmax > vmin else vmin + 1e-6,
            interpolation="bilinear",
        )
        ax.set_title(v, fontsize=9)
        ax.axis("off")
    fig.colorbar(im, ax=list(axes), fraction=0.025, pad=0.02, label=label)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_overlay(
    path: str | Path,
    patch: np.ndarray,
    heat: np.ndarray,
    prob: float | None = None,
    label: str = "CAM",
    name: str = "",
    **kwargs: Any,
) -> Path:
    """Write :func:`overlay_figure` to ``path`` (PNG); the title names the nodule and P(malignant)."""
    plt = _plt()
    title = " ".join(t for t in (name, f"P(malignant) = {prob:.3f}" if prob is not None else "") if t)
    fig = overlay_figure(np.asarray(patch), np.asarray(heat), title=title, label=label, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def pick_panel(y_true: np.ndarray, prob: np.ndarray, per_cell: int = 3, threshold: float = 0.5) -> dict[str, list[int]]:
    """Row indices for the four panel rows (most confident first): ``benign correct``, ``benign wrong``
    (predicted malignant), ``malignant correct``, ``malignant wrong`` (predicted benign)."""
    y_true, prob = np.asarray(y_true), np.asarray(prob, float)
    pred = (prob >= threshold).astype(int)
    conf = np.abs(prob - threshold)
    cells: dict[str, list[int]] = {}
    for cls, cname in ((0, "benign"), (1, "malignant")):
        for ok, oname in ((True, "correct"), (False, "wrong")):
            idx = np.flatnonzero((y_true == cls) & ((pred == cls) == ok))
            cells[f"{cname} {oname}"] = idx[np.argsort(-conf[idx])][:per_cell].tolist()
    return cells


def panel_figure(
    path: str | Path,
    patches: np.ndarray,
    maps: np.ndarray,
    y_true: np.ndarray,
    prob: np.ndarray,
    per_cell: int = 3,
    label: str = "CAM",
    names: Sequence[str] | None = None,
    title: str = "",
    alpha: float = 0.45,
) -> Path:
    """Fig. 5-style panel: rows benign/malignant x correctly/wrongly classified, ``per_cell`` nodules each,
    shown as axial and coronal views with the map overlaid (each map min-max scaled to [0, 1]); every
    nodule is titled with its P(malignant). Empty cells say so."""
    plt = _plt()
    patches = np.asarray(patches)
    if patches.ndim == 5:
        patches = patches[:, 0]
    cells = pick_panel(y_true, prob, per_cell)
    fig, axes = plt.subplots(4, 2 * per_cell, figsize=(2.0 * 2 * per_cell, 8.6), dpi=100, squeeze=False)
    im = None
    for r, (cname, idx) in enumerate(cells.items()):
        for j in range(per_cell):
            for v, view in enumerate(("axial", "coronal")):
                ax = axes[r, 2 * j + v]
                ax.axis("off")
                if j >= len(idx):
                    if j == 0 and v == 0:
                        ax.text(0.5, 0.5, "none", ha="center", va="center", fontsize=9, transform=ax.transAxes)
                    continue
                i = idx[j]
                m = maps[i]
                m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.zeros_like(m)
                ax.imshow(slices(patches[i])[view], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                im = ax.imshow(slices(m)[view], cmap="jet", alpha=alpha, vmin=0, vmax=1, interpolation="bilinear")
                if v == 0:
                    nm = f"{names[i]} " if names is not None else ""
                    ax.set_title(f"{nm}p={prob[i]:.2f}", fontsize=7)
        axes[r, 0].text(
            -0.12, 0.5, cname, rotation=90, ha="right", va="center", fontsize=9, transform=axes[r, 0].transAxes
        )
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.015, pad=0.01, label=f"{label} (scaled per nodule)")
    fig.suptitle(title or f"{label}: correctly / wrongly classified nodules per class (axial | coronal)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def mass_figure(path: str | Path, reports: dict[str, Any], diameters_mm: np.ndarray | None = None) -> Path:
    """Attention-mass figure: per-nodule ratio (map mass inside the nodule / its volume share) for each map
    kind in ``reports`` (name -> :class:`~naslung.explain.sanity.MassReport`), against the diameter (mm) when
    given, with the uniform-map level 1 and each kind's ratio of means in the legend."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for _k, (name, rep) in enumerate(reports.items()):
        xs = np.asarray(diameters_mm, float) if diameters_mm is not None else np.arange(rep.ratio.size)
        ax.scatter(
            xs,
            rep.ratio,
            s=12,
            alpha=0.7,
            label=f"{name}: mass/share = {rep.ratio_of_means:.2f} "
            f"(mass {rep.mean_mass:.3f}, share {rep.mean_share:.4f})",
        )
    ax.axhline(1.0, c="0.3", ls="--", lw=1, label="uniform map")
    ax.set_yscale("log")
    ax.set_xlabel("nodule diameter (mm)" if diameters_mm is not None else "nodule")
    ax.set_ylabel("map mass inside nodule / volume share")
    ax.set_title("Do the maps look at the nodule?")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
