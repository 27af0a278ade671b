"""Pareto plot of a search (the paper's Fig. 4): validation score vs latency of every trained candidate.

One function for both strategies: POP (trained candidates, front, selection) and DNAS (derived models,
their front and selection, with an earlier POP front drawn for reference when there is one). The score is
``search.objective`` on the pooled validation folds, drawn with its 95 % bootstrap interval as a vertical
error bar (``score_low`` / ``score_high``) wherever the candidate carries one; the axis labels name the
objective and the latency conditions (unit, batch size, threads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from naslung.search.pop import Evaluated

Point = Evaluated | Mapping[str, Any]
"""A plotted candidate: an :class:`Evaluated` (its ``info`` holding the interval) or a front.json entry
(``score``, ``score_low``, ``score_high``, ``latency`` keys)."""


def _acc(e: Point) -> float:
    return float(e["score"] if isinstance(e, Mapping) else e.score)


def _interval(e: Point) -> tuple[float, float]:
    """(score - low, high - score), zeros when the candidate has no interval."""
    d: Mapping[str, Any] = e if isinstance(e, Mapping) else e.info
    s, lo, hi = _acc(e), d.get("score_low"), d.get("score_high")
    if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)) or lo != lo or hi != hi:
        return (0.0, 0.0)
    return (max(0.0, s - float(lo)), max(0.0, float(hi) - s))


def _errorbars(ax: Any, points: Sequence[Point], color: str, zorder: int) -> None:
    if not points:
        return
    err = [_interval(e) for e in points]
    if not any(a or b for a, b in err):
        return
    ax.errorbar(
        [_lat(e) for e in points],
        [_acc(e) for e in points],
        yerr=[[a for a, _ in err], [b for _, b in err]],
        fmt="none",
        ecolor=color,
        elinewidth=0.8,
        capsize=2,
        alpha=0.7,
        zorder=zorder,
    )


def _lat(e: Point) -> float:
    return float(e["latency"] if isinstance(e, Mapping) else e.latency)


def latency_axis_label(unit: str, source: str, batch_size: int, threads: int) -> str:
    """Latency axis label: unit and, for measured latencies, batch size and threads."""
    words = unit.replace("_", " ")
    if source == "flops":
        return f"latency proxy ({words}, analytic)"
    return f"latency ({words}, batch {batch_size}, {threads} thread{'' if threads == 1 else 's'})"


def pareto_plot(
    trained: Sequence[Point],
    front: Sequence[Point],
    path: str | Path,
    selected: Sequence[Point] = (),
    latency_label: str = "latency (ms per nodule)",
    title: str = "POP search: validation score vs latency",
    *,
    score_label: str = "validation score",
    n_untrained: int = 0,
    reference_front: Sequence[Point] = (),
    reference_label: str = "POP front",
    trained_label: str = "trained",
    front_label: str = "Pareto front",
) -> Path:
    """Scatter of all trained candidates (grey, with their score intervals), the Pareto front (red, step
    line), the selected ones (rings; ``n_untrained`` untrained fill members of the selection are counted in
    the legend, not drawn, having no score) and, when given, a reference front of another search (green,
    dashed step line; e.g. the POP front under DNAS-derived models). The score (``score_label``) is in
    [0, 1]; latency in the unit of ``latency_label`` (log axis when it spans more than 20x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ref = sorted(reference_front, key=_lat)
    if ref:
        ax.step([_lat(e) for e in ref], [_acc(e) for e in ref], where="post", c="tab:green", lw=1.0, ls="--")
        ax.scatter(
            [_lat(e) for e in ref],
            [_acc(e) for e in ref],
            s=26,
            c="tab:green",
            marker="s",
            label=f"{reference_label} ({len(ref)})",
            zorder=2,
        )
    _errorbars(ax, list(trained), "0.6", 1)
    ax.scatter(
        [_lat(e) for e in trained], [_acc(e) for e in trained], s=18, c="0.6", label=f"{trained_label} ({len(trained)})"
    )
    fr = sorted(front, key=_lat)
    _errorbars(ax, fr, "tab:red", 2)
    if fr:
        ax.step([_lat(e) for e in fr], [_acc(e) for e in fr], where="post", c="tab:red", lw=1.2)
        ax.scatter(
            [_lat(e) for e in fr],
            [_acc(e) for e in fr],
            s=30,
            c="tab:red",
            label=f"{front_label} ({len(fr)})",
            zorder=3,
        )
    if selected:
        ax.scatter(
            [_lat(e) for e in selected],
            [_acc(e) for e in selected],
            s=90,
            facecolors="none",
            edgecolors="tab:blue",
            label=f"selected ({len(selected)}"
            + (f" + {n_untrained} untrained neighbours" if n_untrained else "")
            + ")",
            zorder=4,
        )
    lats = [_lat(e) for e in [*trained, *ref]]
    if lats and min(lats) > 0 and max(lats) / min(lats) > 20:
        ax.set_xscale("log")
        # ticks at 1-2-5 steps, plain numbers; unlabelled minor ticks (their labels ran into each other)
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(latency_label)
    ax.set_ylabel(score_label)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
