"""Per-batch drift of a scoring run against the registered model's training data.

**Reference profile** (``reference_profile.json`` inside the ensemble directory, so the registered model
and the .mar's ``ensemble/`` carry it; written at ``naslung register`` by :func:`reference_profile`):

- ``scans``: the acquisition of the training scans, one value per scan: ``spacing_xy_mm`` (mean in-plane
  voxel spacing, mm), ``spacing_z_mm`` (slice interval, mm), ``slice_thickness_mm`` (DICOM (0018,0050);
  absent for MetaImage), and counts of the categorical ``kernel`` (0018,1210) and ``manufacturer``
  (0008,0070) where the files record them;
- ``scores``: the registered ensemble's calibrated P(malignant) on its members' validation rows: counts on
  :data:`SCORE_EDGES` (10 equal bins on [0, 1]) and the values (at most :data:`MAX_VALUES`).

**Batch**: the same quantities of the scans read in one run (:func:`scan_metadata`, header only) and the
``probability`` of its ok rows. :func:`drift_summary` gives per quantity the batch and reference figures
(n, mean, median, min, max), the population stability index (PSI, reference deciles as bins; proportions
floored at 1e-4) and the two-sample Kolmogorov-Smirnov statistic (sup |F_batch - F_ref|, in [0, 1]);
PSI > 0.25 is the usual "shifted" mark (:data:`PSI_SHIFT`). :func:`plot_drift` draws it as a PNG.
MetaImage files carry only the geometry: kernel, manufacturer and slice thickness are then "unknown".
"""

from __future__ import annotations

import json
import locale
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

PROFILE_FILE = "reference_profile.json"
"""File name of the reference profile inside an ensemble directory."""
SCHEMA = "naslung.reference-profile/1"
QUANTITIES = ("spacing_xy_mm", "spacing_z_mm", "slice_thickness_mm")
"""Numeric acquisition quantities compared per scan (mm)."""
CATEGORIES = {"kernel": "0018|1210", "manufacturer": "0008|0070"}
"""Categorical acquisition facts and their DICOM tags (group|element, SimpleITK's key form)."""
THICKNESS_TAG = "0018|0050"
SCORE_EDGES = tuple(float(x) for x in np.linspace(0.0, 1.0, 11))
"""Bin edges of the score histograms (P(malignant), 10 equal bins)."""
MAX_VALUES = 5000
"""Most values kept per quantity in a reference profile (an even subsample beyond it)."""
PSI_SHIFT = 0.25
"""PSI above which a quantity counts as shifted."""
_FLOOR = 1e-4


def _meta(source: Any, key: str) -> str | None:
    try:
        if source.HasMetaDataKey(key):
            value = str(source.GetMetaData(key)).strip()
            return value or None
    except (AttributeError, RuntimeError):
        return None
    return None


def image_metadata(source: Any) -> dict[str, Any]:
    """Acquisition facts of a ``sitk.Image`` or of a ``sitk.ImageFileReader`` after
    ``ReadImageInformation``: spacing (mm), DICOM slice thickness, kernel, manufacturer (None when absent)."""
    sx, sy, sz = (float(v) for v in source.GetSpacing()[:3])
    thickness = _meta(source, THICKNESS_TAG)
    try:
        thick = float(thickness) if thickness is not None else None
    except ValueError:
        thick = None
    out: dict[str, Any] = {"spacing_xy_mm": (sx + sy) / 2.0, "spacing_z_mm": sz, "slice_thickness_mm": thick}
    out.update({name: _meta(source, tag) for name, tag in CATEGORIES.items()})
    return out


def _read_info(path: Path) -> Any:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    saved = locale.setlocale(locale.LC_CTYPE)  # GDCM may leave LC_CTYPE at "C"
    try:
        reader.ReadImageInformation()
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)
    return reader


def scan_metadata(scan: str | Path | Sequence[Path]) -> dict[str, Any] | None:
    """:func:`image_metadata` of a scan, read without the voxels: a scan file (``.mhd``, NIfTI: its
    header), a DICOM series as its files in slice order (the first file's header; the slice interval is
    the distance of the first two slices' origins), or a DICOM folder (its first series, GDCM order).
    None when it cannot be read."""
    try:
        if isinstance(scan, (str, Path)) and Path(scan).is_dir():
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(scan))
            if not ids:
                return None
            files: list[Path] = [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(scan), ids[0])]
        elif isinstance(scan, (str, Path)):
            return image_metadata(_read_info(Path(scan)))
        else:
            files = [Path(f) for f in scan]
        first = _read_info(files[0])
        meta = image_metadata(first)
        if len(files) > 1:  # a slice file's own z spacing is not the slice interval: measure two slices
            gap = float(np.linalg.norm(np.subtract(_read_info(files[1]).GetOrigin(), first.GetOrigin())))
            if gap > 0:
                meta["spacing_z_mm"] = gap
        return meta
    except (RuntimeError, OSError, IndexError, ValueError):
        return None


def _subsample(values: Sequence[float]) -> list[float]:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if len(v) > MAX_VALUES:
        idx = np.linspace(0, len(v) - 1, MAX_VALUES).round().astype(int)
        v = [v[i] for i in idx]
    return v


def scans_profile(metas: Iterable[Mapping[str, Any] | None]) -> dict[str, Any]:
    """The ``scans`` part of a profile from per-scan :func:`scan_metadata` dicts (None: unreadable)."""
    rows = [m for m in metas if m is not None]
    out: dict[str, Any] = {"n": len(rows)}
    for q in QUANTITIES:
        out[q] = [round(float(m[q]), 4) for m in rows if m.get(q) is not None]
    for name in CATEGORIES:
        out[name] = dict(Counter(str(m.get(name) or "unknown") for m in rows))
    return out


def score_histogram(probabilities: Sequence[float]) -> list[int]:
    """Counts of ``probabilities`` on :data:`SCORE_EDGES` (values clipped to [0, 1])."""
    p = np.clip(np.asarray([float(x) for x in probabilities], dtype=float), 0.0, 1.0)
    counts, _ = np.histogram(p, bins=np.asarray(SCORE_EDGES))
    return [int(c) for c in counts]


def reference_profile(
    scan_metas: Iterable[Mapping[str, Any] | None],
    probabilities: Sequence[float],
    source: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A reference profile (see the module docstring) of the training scans' metadata and the validation
    predictions (calibrated P(malignant), (n,)); ``source`` says where they came from."""
    values = _subsample(probabilities)
    return {
        "schema": SCHEMA,
        "scans": scans_profile(scan_metas),
        "scores": {"edges": list(SCORE_EDGES), "counts": score_histogram(probabilities), "values": values},
        "source": dict(source or {}),
    }


def write_profile(directory: str | Path, profile: Mapping[str, Any]) -> Path:
    """Write ``reference_profile.json`` into an ensemble directory."""
    path = Path(directory) / PROFILE_FILE
    path.write_text(encoding="utf-8", data=json.dumps(dict(profile), indent=1) + "\n")
    return path


def read_profile(directory: str | Path) -> dict[str, Any] | None:
    """The reference profile of an ensemble directory, None when it has none (or an unreadable one)."""
    path = Path(directory) / PROFILE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def _figures(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"n": 0}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _psi_from_counts(batch: Sequence[float] | np.ndarray, ref: Sequence[float] | np.ndarray) -> float | None:
    b, r = np.asarray(batch, dtype=float), np.asarray(ref, dtype=float)
    if b.sum() <= 0 or r.sum() <= 0:
        return None
    pb = np.maximum(b / b.sum(), _FLOOR)
    pr = np.maximum(r / r.sum(), _FLOOR)
    return float(np.sum((pb - pr) * np.log(pb / pr)))


def psi(batch: Sequence[float], reference: Sequence[float]) -> float | None:
    """Population stability index of ``batch`` against ``reference`` values, on the reference's deciles
    as bin edges (ties merged); None when either side is empty."""
    b, r = np.asarray(batch, dtype=float), np.asarray(reference, dtype=float)
    if b.size == 0 or r.size == 0:
        return None
    edges = np.unique(np.quantile(r, np.linspace(0.0, 1.0, 11)[1:-1]))
    nb = np.bincount(np.digitize(b, edges, right=True), minlength=edges.size + 1)
    nr = np.bincount(np.digitize(r, edges, right=True), minlength=edges.size + 1)
    return _psi_from_counts(nb, nr)


def ks_statistic(batch: Sequence[float], reference: Sequence[float]) -> float | None:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_batch - F_reference| in [0, 1]; None when empty."""
    b, r = np.sort(np.asarray(batch, dtype=float)), np.sort(np.asarray(reference, dtype=float))
    if b.size == 0 or r.size == 0:
        return None
    grid = np.concatenate([b, r])
    fb = np.searchsorted(b, grid, side="right") / b.size
    fr = np.searchsorted(r, grid, side="right") / r.size
    return float(np.max(np.abs(fb - fr)))


def drift_summary(
    batch_scans: Sequence[Mapping[str, Any] | None],
    probabilities: Sequence[float],
    reference: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Drift of one batch (per-scan :func:`scan_metadata` dicts, the ok rows' probabilities) against a
    reference profile (None: batch figures only). Keys: ``reference`` (whether one was given and its
    source), ``quantities`` (per numeric quantity: ``batch`` and ``reference`` figures, ``psi``, ``ks``),
    ``categories`` (batch and reference counts of kernel / manufacturer), ``scores`` (edges, batch and
    reference counts, ``psi`` on those bins, ``ks`` against the reference values), ``max_psi`` and
    ``shifted`` (the quantities with PSI > :data:`PSI_SHIFT`)."""
    batch = scans_profile(batch_scans)
    ref_scans = (reference or {}).get("scans") or {}
    ref_scores = (reference or {}).get("scores") or {}
    quantities: dict[str, Any] = {}
    for q in QUANTITIES:
        bv, rv = batch.get(q, []), ref_scans.get(q, [])
        quantities[q] = {
            "batch": _figures(bv),
            "reference": _figures(rv),
            "psi": psi(bv, rv),
            "ks": ks_statistic(bv, rv),
        }
    categories = {name: {"batch": batch.get(name, {}), "reference": ref_scans.get(name, {})} for name in CATEGORIES}
    counts = score_histogram(probabilities)
    ref_counts = ref_scores.get("counts") or []
    scores = {
        "edges": list(SCORE_EDGES),
        "batch": {**_figures(probabilities), "counts": counts},
        "reference": {**_figures(ref_scores.get("values") or []), "counts": list(ref_counts)},
        "psi": _psi_from_counts(counts, ref_counts) if len(ref_counts) == len(counts) else None,
        "ks": ks_statistic(probabilities, ref_scores.get("values") or []),
    }
    all_psi = {q: v["psi"] for q, v in quantities.items() if v["psi"] is not None}
    if scores["psi"] is not None:
        all_psi["score"] = scores["psi"]
    return {
        "reference": {"given": reference is not None, "source": dict((reference or {}).get("source") or {})},
        "n_scans": int(batch["n"]),
        "quantities": quantities,
        "categories": categories,
        "scores": scores,
        "max_psi": max(all_psi.values()) if all_psi else None,
        "shifted": sorted(k for k, v in all_psi.items() if v > PSI_SHIFT),
    }


def plot_drift(
    path: Path,
    batch_scans: Sequence[Mapping[str, Any] | None],
    probabilities: Sequence[float],
    reference: Mapping[str, Any] | None,
    summary: Mapping[str, Any],
    title: str = "",
) -> Path:
    """PNG of the batch against the reference: in-plane spacing, slice interval (per scan, mm) and the
    score histogram (proportions), PSI / KS in each panel's title."""
    from matplotlib.figure import Figure

    batch = scans_profile(batch_scans)
    ref_scans = (reference or {}).get("scans") or {}
    fig = Figure(figsize=(12, 3.6), dpi=100)
    axes = fig.subplots(1, 3)

    def stats(d: Mapping[str, Any]) -> str:
        p, k = d.get("psi"), d.get("ks")
        return f"PSI {p:.3f}, KS {k:.3f}" if p is not None and k is not None else "no reference"

    for ax, q, label in zip(axes[:2], QUANTITIES[:2], ("in-plane spacing (mm)", "slice interval (mm)")):
        bv, rv = batch.get(q, []), ref_scans.get(q, [])
        both = [*bv, *rv]
        if both:
            lo, hi = min(both), max(both)
            bins = np.linspace(lo - 0.05, hi + 0.05, 21)
            if rv:
                ax.hist(rv, bins=bins, weights=np.full(len(rv), 1 / len(rv)), alpha=0.5, label="training")
            if bv:
                ax.hist(bv, bins=bins, weights=np.full(len(bv), 1 / len(bv)), alpha=0.5, label="batch")
            ax.legend(fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("share of scans")
        ax.set_title(stats(summary["quantities"][q]), fontsize=9)
    ax = axes[2]
    centres = (np.asarray(SCORE_EDGES[:-1]) + np.asarray(SCORE_EDGES[1:])) / 2
    width = 0.045
    for counts, name, shift in (
        (summary["scores"]["reference"]["counts"], "validation", -width / 2),
        (summary["scores"]["batch"]["counts"], "batch", width / 2),
    ):
        c = np.asarray(counts, dtype=float)
        if c.size == centres.size and c.sum() > 0:
            ax.bar(centres + shift, c / c.sum(), width=width, alpha=0.7, label=name)
    ax.set_xlabel("P(malignant)")
    ax.set_ylabel("share of nodules")
    ax.set_title(stats(summary["scores"]), fontsize=9)
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path))
    return path
