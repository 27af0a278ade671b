"""PNG plots: ROC curves (a model and its baselines), confusion matrix, learning curves, t-SNE scatter, the
ensemble-size curve and per-fold grouped bars.

Uses matplotlib's object API (``matplotlib.figure.Figure`` renders with the Agg canvas), so no display
and no global pyplot state are involved. Every function writes one PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve


def _save(fig: Figure, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    return p


def roc_png(
    y_true: np.ndarray,
    prob: np.ndarray | Mapping[str, np.ndarray],
    path: str | Path,
    title: str = "ROC",
) -> Path:
    """ROC curve(s) of malignancy scores against ``y_true`` (n,): one array (n,), or ``{label: scores (n,)}``
    for several scorers of the same nodules (e.g. a model and its baselines); each curve's AUC is in the
    legend, a note replaces the curves when only one class is present. Long titles wrap instead of clipping."""
    curves = {"model": prob} if not isinstance(prob, Mapping) else dict(prob)
    fig = Figure(figsize=(5.0, 4.8))
    ax = fig.add_subplot()
    y = np.asarray(y_true).ravel()
    if np.unique(y).size == 2:
        for k, (label, s) in enumerate(curves.items()):
            fpr, tpr, _ = roc_curve(y, np.asarray(s, dtype=np.float64))
            auc = roc_auc_score(y, s)
            name = f"AUC = {auc:.3f}" if len(curves) == 1 else f"{label}: AUC {auc:.3f}"
            ax.plot(fpr, tpr, lw=2.2 if k == 0 else 1.4, ls="-" if k == 0 else (":", "-.", "--")[k % 3], label=name)
    else:
        ax.text(0.5, 0.5, "single class: ROC undefined", ha="center")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance (AUC 0.5)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(-0.01, 1.01), ylim=(-0.01, 1.02))
    ax.set_title(_wrap(title, 48), fontsize=10)
    return _save(fig, path)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def size_curve_png(curve: Mapping[str, Mapping[str, float]], path: str | Path, n_folds: int = 1) -> Path:
    """Ensemble-size curve (``naslung.ensemble.evaluation.size_curve``): F1, AUC and accuracy (fold mean) vs
    members; the error bars are ± 1 sample s.d. over the random member subsets of each size (explained in the
    legend; 0 at the full size, where every subset is the whole ensemble)."""
    fig = Figure(figsize=(5.6, 4.2))
    ax = fig.add_subplot()
    ns = [int(n) for n in curve]
    reps = int(max((float(curve[str(n)].get("n_subsets", 1)) for n in ns), default=1))
    shift = 0.04 * (max(ns) - min(ns) if len(ns) > 1 else 1)  # side by side, so equal values stay visible
    for k, (metric, marker) in enumerate((("f1", "o"), ("auc", "s"), ("accuracy", "^"))):
        ax.errorbar(
            [n + (k - 1) * shift for n in ns],
            [curve[str(n)][f"{metric}_mean"] for n in ns],
            yerr=[curve[str(n)][f"{metric}_std"] for n in ns],
            marker=marker,
            capsize=3,
            label=metric,
        )
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("members in the ensemble (random subsets)")
    where = "test fold" if n_folds == 1 else f"mean over {n_folds} test folds"
    ax.set_ylabel(f"metric ({where})")
    ax.set_xticks(ns)
    ax.set_title("Ensemble size", fontsize=10)
    ax.legend(title=f"error bars: ± 1 s.d. over {reps}\nrandom member subsets per size", fontsize=8, title_fontsize=8)
    return _save(fig, path)


def fold_bars_png(
    groups: Mapping[str, Sequence[float]],
    fold_labels: Sequence[str],
    path: str | Path,
    metric: str = "F1",
    title: str = "",
) -> Path:
    """One group of bars per test fold, one bar per scorer (``groups[name] = values per fold``), so every
    scorer stays visible even when values tie and one fold is drawn as one group. The scorer named
    ``ensemble`` is black; ``baseline: ...`` scorers grey and hatched; the others take distinct colours; the
    legend lists every bar; each bar carries its value."""
    names = list(groups)
    n_f = len(fold_labels)
    width = 0.8 / max(1, len(names))
    fig = Figure(figsize=(max(5.5, 1.2 + n_f * (0.35 * len(names) + 0.6)), 4.2))
    ax = fig.add_subplot()
    x = np.arange(n_f, dtype=float)
    others = [n for n in names if n != "ensemble" and not n.startswith("baseline")]
    colours = {n: f"C{i % 10}" for i, n in enumerate(others)}
    greys = iter(("0.55", "0.8", "0.7"))
    for j, name in enumerate(names):
        vals = np.asarray(groups[name], dtype=float)
        kw: dict = {"color": colours.get(name)}
        if name == "ensemble":
            kw = {"color": "black"}
        elif name.startswith("baseline"):
            kw = {"color": next(greys, "0.6"), "hatch": "//", "edgecolor": "0.3"}
        bars = ax.bar(x - 0.4 + width * (j + 0.5), np.nan_to_num(vals), width, label=name, **kw)
        if len(names) * n_f <= 40:
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=6, rotation=90, padding=2)
    ax.set_xticks(x, list(fold_labels))
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.15)
    ax.set_title(_wrap(title, 60), fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, path)


def confusion_png(counts: Mapping[str, float], path: str | Path, title: str = "Confusion matrix") -> Path:
    """2x2 confusion matrix from counts tn, fp, fn, tp (rows = true class, columns = predicted)."""
    cm = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]], dtype=float)
    fig = Figure(figsize=(3.8, 3.4))
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, f"{int(v)}", ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["benign", "malignant"], yticklabels=["benign", "malignant"])
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(fig, path)


def curves_png(history: Sequence[Mapping[str, float]], path: str | Path, best_epoch: int | None = None) -> Path:
    """Train/validation loss and validation F1/AUC per epoch."""
    ep = [h["epoch"] for h in history]
    fig = Figure(figsize=(8, 3.4))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax1.plot(ep, [h["train_loss"] for h in history], label="train")
    ax1.plot(ep, [h["val_loss"] for h in history], label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.plot(ep, [h["val_f1"] for h in history], label="val F1")
    ax2.plot(ep, [h["val_auc"] for h in history], label="val AUC")
    ax2.set(xlabel="epoch", title="validation metrics", ylim=(0, 1.02))
    for ax in (ax1, ax2):
        if best_epoch:
            ax.axvline(best_epoch, ls=":", c="grey", label=f"selected epoch ({best_epoch})")
        ax.legend(fontsize=8)
    return _save(fig, path)


def tsne_png(panels: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """Side-by-side t-SNE scatters: ``panels[name] = (embedding (n, 2), labels (n,))``."""
    fig = Figure(figsize=(4.2 * len(panels), 4.0))
    for k, (name, (emb, y)) in enumerate(panels.items(), start=1):
        ax = fig.add_subplot(1, len(panels), k)
        y = np.asarray(y)
        for cls, colour, label in ((0, "tab:blue", "benign"), (1, "tab:red", "malignant")):
            ax.scatter(emb[y == cls, 0], emb[y == cls, 1], s=12, c=colour, label=label, alpha=0.8)
        ax.set(title=name, xticks=[], yticks=[])
        ax.legend(loc="best", fontsize=8)
    return _save(fig, path)
