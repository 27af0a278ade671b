"""PNG overlays of explainability maps on CT patches (matplotlib, Agg backend).

Patches and maps are ``(32, 32, 32)`` arrays in numpy order ``(z, y, x)``, 1 mm voxels; patches in [0, 1]
(HU window). Views through the centre voxel ``c``: axial ``patch[c_z]`` (y down, x right), coronal
``patch[:, c_y]`` (z up, x right), sagittal ``patch[:, :, c_x]`` (z up, y right).
"""

from __future__ import annotations

import textwrap
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


def nodule_title(name: str, prob: float, votes: int | None, n_members: int | None) -> str:
    """``name`` over ``P(malignant) 0.83, vote 5/9`` (the vote only for an ensemble of several members)."""
    head = f"{name}\n" if name else ""
    vote = f", vote {votes}/{n_members}" if votes is not None and n_members is not None and n_members > 1 else ""
    return f"{head}P(malignant) {prob:.2f}{vote}"


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
    votes: np.ndarray | None = None,
    n_members: int | None = None,
    rim: int = 0,
    caption: str = "",
) -> Path:
    """Fig. 5-style panel: rows benign/malignant x correctly/wrongly classified (mean P(malignant) >= 0.5
    is "malignant"), ``per_cell`` nodules each, shown as axial and coronal views with the map overlaid (each
    map min-max scaled to [0, 1] per nodule). Every nodule is titled with its P(malignant) and, with
    ``votes (n,)`` and ``n_members`` > 1, the members' malignant votes (``vote 5/9``). ``rim`` > 0: the outer
    ``rim`` voxel layers (zero-padding artefact, see :func:`naslung.explain.maps.attention_rim`) are not
    coloured, the scaling uses the interior only and a dashed box marks it. ``caption``: text under the
    panel (definitions, control figures). Empty cells say so."""
    plt = _plt()
    patches = np.asarray(patches)
    if patches.ndim == 5:
        patches = patches[:, 0]
    cells = pick_panel(y_true, prob, per_cell)
    size = patches.shape[-1]
    interior = np.zeros(patches.shape[1:], bool)
    interior[rim : size - rim, rim : size - rim, rim : size - rim] = True
    width_in = 2.0 * 2 * per_cell
    if caption:  # wrapped to the figure width (7.5 pt monospace: ~4.5 pt a character)
        chars = max(40, int(width_in * 72 / 4.6) - 8)
        caption = "\n".join(textwrap.fill(line, chars, subsequent_indent="  ") for line in caption.splitlines())
    cap_lines = len(caption.splitlines()) if caption else 0
    fig, axes = plt.subplots(4, 2 * per_cell, figsize=(width_in, 8.6 + 0.16 * cap_lines), dpi=100, squeeze=False)
    fig.subplots_adjust(top=0.9, bottom=0.04 + 0.022 * cap_lines, left=0.06, right=0.88, hspace=0.45)
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
                lo, hi = float(m[interior].min()), float(m[interior].max())
                m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
                shown = np.ma.masked_array(slices(m)[view], mask=~slices(interior)[view])
                ax.imshow(slices(patches[i])[view], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                im = ax.imshow(shown, cmap="jet", alpha=alpha, vmin=0, vmax=1, interpolation="nearest")
                if rim > 0:
                    ax.add_patch(
                        plt.Rectangle(
                            (rim - 0.5, rim - 0.5), size - 2 * rim, size - 2 * rim, fill=False, ec="w", ls="--", lw=0.6
                        )
                    )
                if v == 0:
                    nm = names[i] if names is not None else ""
                    vt = int(votes[i]) if votes is not None else None
                    ax.set_title(nodule_title(nm, float(prob[i]), vt, n_members), fontsize=7, loc="left")
        axes[r, 0].text(
            -0.12, 0.5, cname, rotation=90, ha="right", va="center", fontsize=9, transform=axes[r, 0].transAxes
        )
    if im is not None:
        cax = fig.add_axes((0.9, 0.3, 0.012, 0.45))
        fig.colorbar(im, cax=cax, label=f"{label} (scaled per nodule)")
    fig.suptitle(title or f"{label}: correctly / wrongly classified nodules per class (axial | coronal)", fontsize=10)
    if caption:
        fig.text(0.02, 0.01, caption, ha="left", va="bottom", fontsize=7.5, family="monospace")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plain_log_axis(ax: Any, values: Sequence[float]) -> None:
    """Log y axis with plain decimal ticks (0.5, 1, 2, 5, 10, ...) and limits around ``values``."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    v = np.asarray([x for x in values if np.isfinite(x) and x > 0], float)
    lo = min(0.5, float(v.min()) / 1.3) if v.size else 0.5
    hi = max(2.0, float(v.max()) * 1.3) if v.size else 2.0
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ticks = [m * 10.0**e for e in range(-3, 4) for m in (1.0, 2.0, 5.0)]
    ax.yaxis.set_major_locator(FixedLocator([t for t in ticks if lo <= t <= hi]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda t, _pos: f"{t:g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())


_CONTROL_STYLE = (
    {"marker": "x", "color": "0.45"},
    {"marker": "+", "color": "tab:red"},
    {"marker": "^", "color": "tab:green"},
)


def mass_figure(
    path: str | Path,
    reports: dict[str, Any],
    diameters_mm: np.ndarray | None = None,
    controls: dict[str, dict[str, Any]] | None = None,
    notes: dict[str, str] | None = None,
    name: str = "model",
) -> Path:
    """Map-mass figure, one panel per map kind in ``reports`` (kind -> :class:`~naslung.explain.sanity.MassReport`):
    the per-nodule ratio (map mass inside the nodule / its volume share) of ``name`` (filled dots) and of
    each control in ``controls`` (label -> kind -> report; drawn with open markers), against the diameter
    (mm) when given, with the uniform-map level 1; each series' ratio of means is in the legend. Log y axis
    with plain decimal ticks. ``notes`` (kind -> text) are added to the panel titles."""
    plt = _plt()
    controls = controls or {}
    kinds = list(reports)
    fig, axs = plt.subplots(1, len(kinds), figsize=(5.6 * len(kinds), 5.6), dpi=110, squeeze=False)
    for ax, kind in zip(axs[0], kinds):
        rep = reports[kind]
        xs = np.asarray(diameters_mm, float) if diameters_mm is not None else np.arange(rep.ratio.size)
        series = [(name, rep, {"marker": "o", "color": "tab:blue"})]
        series += [
            (lab, c[kind], _CONTROL_STYLE[k % len(_CONTROL_STYLE)])
            for k, (lab, c) in enumerate(controls.items())
            if kind in c
        ]
        seen: list[float] = [1.0]
        for lab, r, style in series:
            filled = lab == name
            ax.scatter(
                xs,
                r.ratio,
                s=16 if filled else 22,
                alpha=0.75,
                marker=style["marker"],
                color=style["color"],
                label=f"{lab}: {r.ratio_of_means:.2f}",
                linewidths=1.0,
            )
            seen += list(np.asarray(r.ratio, float))
        ax.axhline(1.0, c="0.3", ls="--", lw=1, label="uniform map: 1")
        plain_log_axis(ax, seen)
        ax.set_xlabel("nodule diameter (mm)" if diameters_mm is not None else "nodule")
        ax.set_ylabel("map mass inside nodule / nodule volume share")
        note = (notes or {}).get(kind, "")
        ax.set_title(f"{kind}{' — ' + note if note else ''}", fontsize=9)
        ax.legend(
            fontsize=7,
            title="mass / share (ratio of means)",
            title_fontsize=7,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
        )
        ax.grid(alpha=0.3)
    fig.suptitle("Do the maps look at the nodule? (above 1: more mass on the nodule than a uniform map)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
