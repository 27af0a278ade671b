"""Realism of the synthetic patches: the same per-patch statistics on synthetic and real 32^3 HU patches.

Patches are HU cubes ``(n, S, S, S)`` in numpy order (z, y, x), 1 mm isotropic voxels (``prepare.spacing_mm``),
the point of interest at the voxel-centre midpoint ``(S - 1) / 2`` (15.5 for S = 32), exactly what
:meth:`naslung.data.patches.PatchCutter.cut_hu` returns. All distances below are in voxels (= mm at 1 mm).

Statistics (:func:`patch_statistics`, one value per patch):

* ``whole_*`` / ``shell_*``: fraction of the voxels of the whole patch / of the outer shell (distance from
  the patch centre >= :data:`SHELL_RADIUS` = 12 voxels, 25,560 of 32,768 voxels) in a HU band
  (:data:`BANDS`): ``soft`` -300 <= HU <= 200 (soft tissue, vessels, nodule, chest wall), ``aerated``
  -950 <= HU <= -700 (normally aerated lung), ``low`` HU < -900 (air-like lung, airways, outside-scan
  fill), ``dense`` HU > 200 (bone, calcification, contrast).
* ``lung_hu``: median HU of the shell voxels in the lung parenchyma range :data:`LUNG_RANGE` (-1000..-500
  HU: the usual lung-mask threshold of -500 HU, so vessel walls and partial-volume soft tissue are
  left out). Real: -852 HU around nodules, -863 HU around non-nodule locations (an earlier rough
  measurement quoted -836 HU with another, unrecorded voxel selection; the comparison only needs the
  same definition on both sides). NaN when the shell holds no such voxel.
* ``noise_hu``: voxel noise, the robust standard deviation (1.4826 * median absolute deviation) of the
  high-pass residual ``HU - mean of its 3x3x3 neighbourhood`` over the voxels whose whole 3x3x3
  neighbourhood is aerated (so edges of vessels and walls are left out). For white noise of sd s it is
  ``s * sqrt(26/27)``; on CT resampled to 1 mm (linear interpolation, from 0.7 x 0.7 x 1.25-2.5 mm) the
  noise is correlated between neighbours and the figure is smaller: real 12.3 HU around nodules, 13.3 HU
  around non-nodule locations (an earlier rough figure of ~22 HU corresponds to a 5x5x5 mean: 21 HU on
  the same voxels). NaN without such voxels.
* ``touch_pleura`` (0/1): a chest wall / mediastinum (pleural surface) enters the patch: some connected
  component (26-connectivity) of the shell voxels above -300 HU holds >= :data:`PLEURA_MIN_VOXELS`
  (3,000 voxels = 3 cm^3) and covers >= :data:`PLEURA_MIN_FACE` (1/4) of one face of the cube (planar:
  a wall cuts a face over a large area; a vessel crosses it in a small disc; a central nodule, even one
  30 mm across, covers well under a quarter of a face). Checked on the 82 real patches: every patch whose
  slices show chest wall or mediastinum has >= 4,234 such voxels covering >= 64 % of a face; vessel
  bundles and the largest real nodule stay <= 2,417 voxels (the nodule covers 50 % of a face with
  2,366 voxels, below the volume bar).
* ``touch_vessel`` (0/1): a thin tubular structure (> -600 HU) joined to the central region reaches the
  patch border: take the connected components of HU > -600 that meet the central ball (distance <=
  :data:`CENTRAL_RADIUS` = 3 voxels); their *thin* part is what a morphological opening with a ball of
  radius :data:`THIN_RADIUS` (2 voxels) removes, i.e. structures under ~5 mm across (vessels, not a
  nodule body or a wall); a thin component of >= :data:`VESSEL_MIN_VOXELS` voxels counts when it touches
  the patch's outer face and either meets the central ball itself or is 26-adjacent to the thick body
  that does (a vessel leaving the nodule).

:func:`summarize` gives the per-statistic means; :func:`real_reference` the means of the real patches of
``../shared/data/LIDC-patches-derived`` (the ``params.yaml`` key ``registry.regression_patches``) for
the groups ``nodules``, ``non_nodules`` and ``all``; :data:`TOLERANCES` and :func:`compare` put a synthetic
summary side by side with them. :func:`synthetic_patches` generates a small synthetic set and cuts its
nodule patches in HU with the project's own cutter.

Imports numpy, scipy.ndimage and the project's data modules only (matplotlib lazily, in
:func:`realism_png`; no engines).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from scipy import ndimage as ndi

from naslung.params import PrepareParams, SynthParams

SHELL_RADIUS = 12.0
"""Voxels at distance >= this (voxels) from the patch centre form the outer shell."""
BANDS: dict[str, tuple[float, float]] = {
    "soft": (-300.0, 200.0),
    "aerated": (-950.0, -700.0),
    "low": (-math.inf, -900.0),
    "dense": (200.0, math.inf),
}
"""HU bands (lo, hi) of the fraction statistics; ``soft`` and ``aerated`` are closed intervals, ``low``
is HU < -900 and ``dense`` HU > 200 (strict)."""
LUNG_RANGE = (-1000.0, -500.0)
"""HU range (closed) of the shell voxels whose median is ``lung_hu``."""
PLEURA_HU = -300.0
"""Voxels above this HU are wall candidates for ``touch_pleura``."""
PLEURA_MIN_VOXELS = 3000
"""Smallest shell component (voxels) that counts as a wall for ``touch_pleura``."""
PLEURA_MIN_FACE = 0.25
"""Smallest fraction of one cube face the wall component must cover."""
VESSEL_HU = -600.0
"""Voxels above this HU are vessel / nodule candidates for ``touch_vessel``."""
CENTRAL_RADIUS = 3.0
"""Radius (voxels) of the central ball that defines the central region."""
THIN_RADIUS = 2
"""Radius (voxels) of the opening ball: what it removes is 'thin' (under ~2 * radius + 1 voxels across)."""
VESSEL_MIN_VOXELS = 10
"""Smallest thin component (voxels) that counts as a vessel."""

FRACTIONS = tuple(f"{where}_{band}" for where in ("whole", "shell") for band in BANDS)
STATISTICS: tuple[str, ...] = (*FRACTIONS, "lung_hu", "noise_hu", "touch_pleura", "touch_vessel")
"""Names of the statistics of :func:`patch_statistics`, in report order."""
UNITS: dict[str, str] = dict.fromkeys(FRACTIONS, "fraction") | {
    "lung_hu": "HU",
    "noise_hu": "HU",
    "touch_pleura": "share",
    "touch_vessel": "share",
}
GROUPS = ("nodules", "non_nodules", "all")
"""Groups of :func:`real_reference`."""
NODULE_KIND = "lidc_nodule"
"""``kind`` of the real npz's nodule rows (rows 0-5); every other row is a non-nodule location."""


def _grid(size: int) -> np.ndarray:
    """Distance (voxels) of every voxel centre from the patch centre, shape (size, size, size)."""
    c = (size - 1) / 2.0
    g = np.indices((size,) * 3, dtype=np.float64) - c
    return np.sqrt((g**2).sum(axis=0))


def _ball(radius: float) -> np.ndarray:
    r = int(math.floor(radius))
    g = np.indices((2 * r + 1,) * 3) - r
    return (g**2).sum(axis=0) <= radius**2


def _per_patch(structure3d: np.ndarray) -> np.ndarray:
    """A 3-D structuring element as a 4-D one that never links two patches of a batch."""
    s = np.zeros((3, *structure3d.shape), dtype=bool)
    s[1] = structure3d
    return s


_CONN26 = _per_patch(np.ones((3, 3, 3), dtype=bool))


def _face_mask(size: int) -> np.ndarray:
    m = np.zeros((size,) * 3, dtype=bool)
    m[[0, -1]] = True
    m[:, [0, -1]] = True
    m[:, :, [0, -1]] = True
    return m


def _band(x: np.ndarray, band: str) -> np.ndarray:
    lo, hi = BANDS[band]
    if band == "low":
        return x < hi
    if band == "dense":
        return x > lo
    return (x >= lo) & (x <= hi)


def _masked_median(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-row median of ``values[i][mask[i]]`` (rows of a 2-D array); NaN for an empty row."""
    v = np.where(mask, values, np.nan)
    out = np.full(len(v), np.nan)
    has = mask.any(axis=1)
    if has.any():
        out[has] = np.nanmedian(v[has], axis=1)
    return out


def _owner(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Patch index of every label 1..n (index 0 unused) of a batch labelling (n, S, S, S)."""
    owner = np.full(n_labels + 1, -1, dtype=np.int64)
    flat = labels.reshape(len(labels), -1)
    rows, _ = np.nonzero(flat)
    owner[flat[flat > 0]] = rows
    return owner


def _touch_pleura(x: np.ndarray, shell: np.ndarray) -> np.ndarray:
    n, size = len(x), x.shape[1]
    labels, k = ndi.label((x > PLEURA_HU) & shell, structure=_CONN26)
    if k == 0:
        return np.zeros(n)
    volume = np.bincount(labels.ravel(), minlength=k + 1)
    face_cover = np.zeros(k + 1, dtype=np.int64)
    faces = (
        labels[:, 0],
        labels[:, -1],
        labels[:, :, 0],
        labels[:, :, -1],
        labels[:, :, :, 0],
        labels[:, :, :, -1],
    )
    for face in faces:
        face_cover = np.maximum(face_cover, np.bincount(face.ravel(), minlength=k + 1))
    wall = (volume >= PLEURA_MIN_VOXELS) & (face_cover >= PLEURA_MIN_FACE * size * size)
    wall[0] = False
    out = np.zeros(n)
    owner = _owner(labels, k)
    out[np.unique(owner[np.nonzero(wall)[0]])] = 1.0
    return out


def _touch_vessel(x: np.ndarray, central: np.ndarray, face: np.ndarray) -> np.ndarray:
    n = len(x)
    dense = x > VESSEL_HU
    labels, k = ndi.label(dense, structure=_CONN26)
    out = np.zeros(n)
    if k == 0:
        return out
    hit = np.zeros(k + 1, dtype=bool)
    hit[labels[:, central].ravel()] = True
    hit[0] = False
    body = hit[labels]  # the components of HU > -600 meeting the central ball
    if not body.any():
        return out
    ball = _per_patch(_ball(THIN_RADIUS))
    # Erosion treats outside the cube as foreground, so a wall or vessel cut by the face is not thinned there.
    thick = ndi.binary_dilation(ndi.binary_erosion(body, structure=ball, border_value=1), structure=ball) & body
    thin = body & ~thick
    tl, tk = ndi.label(thin, structure=_CONN26)
    if tk == 0:
        return out
    size = np.bincount(tl.ravel(), minlength=tk + 1)
    on_face = np.zeros(tk + 1, dtype=bool)
    on_face[tl[:, face].ravel()] = True
    core = thick & np.broadcast_to(central, x.shape)
    core_labels, ck = ndi.label(thick, structure=_CONN26)
    core_hit = np.zeros(ck + 1, dtype=bool)
    core_hit[core_labels[core]] = True
    core_hit[0] = False
    near_core = ndi.binary_dilation(core_hit[core_labels], structure=_CONN26)
    joined = np.zeros(tk + 1, dtype=bool)
    joined[tl[near_core | np.broadcast_to(central, x.shape)]] = True
    vessel = joined & on_face & (size >= VESSEL_MIN_VOXELS)
    vessel[0] = False
    owner = _owner(tl, tk)
    out[np.unique(owner[np.nonzero(vessel)[0]])] = 1.0
    return out


def patch_statistics(images_hu: np.ndarray) -> dict[str, np.ndarray]:
    """Per-patch realism statistics of HU patches ``(n, S, S, S)`` (z, y, x), 1 mm voxels.

    Returns ``{name: (n,) float64}`` for every name in :data:`STATISTICS` (definitions in the module
    docstring). Any numeric dtype (int16 HU or float32 HU); windowed [0, 1] patches are NOT accepted
    (they would give nonsense, so a batch whose values all lie in [0, 1] raises ``ValueError``).
    """
    x = np.asarray(images_hu)
    if x.ndim != 4 or not (x.shape[1] == x.shape[2] == x.shape[3]):
        raise ValueError(f"patch_statistics: expected (n, S, S, S) HU patches, got shape {x.shape}")
    x = x.astype(np.float32, copy=False)
    n, size = len(x), x.shape[1]
    if n and float(x.min()) >= 0.0 and float(x.max()) <= 1.0:
        raise ValueError("patch_statistics: values lie in [0, 1]: windowed patches, expected HU")
    dist = _grid(size)
    shell = dist >= SHELL_RADIUS
    central = dist <= CENTRAL_RADIUS
    face = _face_mask(size)
    out: dict[str, np.ndarray] = {}
    flat = x.reshape(n, -1)
    sh = x[:, shell]
    for band in BANDS:
        out[f"whole_{band}"] = _band(flat, band).mean(axis=1, dtype=np.float64)
        out[f"shell_{band}"] = _band(sh, band).mean(axis=1, dtype=np.float64)
    lo, hi = LUNG_RANGE
    out["lung_hu"] = _masked_median(sh, (sh >= lo) & (sh <= hi))

    aer = _band(x, "aerated")
    calm = ndi.binary_erosion(aer, structure=_CONN26, border_value=0)
    resid = x - ndi.uniform_filter(x, size=(1, 3, 3, 3), mode="nearest")
    r = resid.reshape(n, -1)
    m = calm.reshape(n, -1)
    med = _masked_median(r, m)
    out["noise_hu"] = 1.4826 * _masked_median(np.abs(r - med[:, None]), m)

    out["touch_pleura"] = _touch_pleura(x, shell)
    out["touch_vessel"] = _touch_vessel(x, central, face)
    return {k: out[k] for k in STATISTICS}


def summarize(stats: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of every statistic over the patches (NaNs left out) plus ``n`` (number of patches)."""
    n = len(next(iter(stats.values()))) if stats else 0
    out: dict[str, float] = {"n": float(n)}
    for k in STATISTICS:
        v = np.asarray(stats[k], dtype=np.float64)
        ok = np.isfinite(v)
        out[k] = float(v[ok].mean()) if ok.any() else math.nan
    return out


def load_real_patches(npz_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The real patches ``images`` (n, 32, 32, 32) int16 HU (z, y, x) and a (n,) bool "is a nodule" mask
    (``kind == "lidc_nodule"``: rows 0-5 of the LIDC-derived set). Raises ``FileNotFoundError`` naming the
    path when it does not exist."""
    path = _existing(npz_path)
    with np.load(path, allow_pickle=False) as d:
        images = np.asarray(d["images"])
        kind = np.asarray(d["kind"]).astype(str)
    return images, kind == NODULE_KIND


def _existing(npz_path: str | Path) -> Path:
    path = Path(npz_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"real patches not found: {path} (the .npz of LIDC-patches-derived, see params registry.regression_patches)"
        )
    return path


def real_reference(npz_path: str | Path) -> dict[str, dict[str, float]]:
    """:func:`summarize` of the real patches per group: ``nodules`` (6 LIDC nodules), ``non_nodules`` (76
    LUNA16 'excluded finding' lung locations, >10 mm from any nodule) and ``all``."""
    images, is_nodule = load_real_patches(npz_path)
    stats = patch_statistics(images)
    groups = {"nodules": is_nodule, "non_nodules": ~is_nodule, "all": np.ones_like(is_nodule)}
    return {g: summarize({k: v[m] for k, v in stats.items()}) for g, m in groups.items()}


TOLERANCES: dict[str, float] = {
    "whole_soft": 0.04,
    "whole_aerated": 0.04,
    "whole_low": 0.03,
    "whole_dense": 0.01,
    "shell_soft": 0.05,
    "shell_aerated": 0.04,
    "shell_low": 0.03,
    "shell_dense": 0.015,
    "lung_hu": 15.0,
    "noise_hu": 2.0,
    "touch_pleura": 0.2,
    "touch_vessel": 0.2,
}
"""Absolute margin per statistic (in its unit: fraction, HU, share) around the real target interval.

Target: the mean over the synthetic NODULE patches (:func:`synthetic_patches`, every nodule centre) must
lie in [min - tol, max + tol] of the real ``nodules`` mean (6 LIDC nodules) and the real ``non_nodules``
mean (76 LUNA16 excluded-finding locations of the same 3 scans) (:func:`band`). Why both groups: 6 nodules
of 3 patients are a very small sample, and the non-nodule locations are real surroundings of real
findings in the same scans; a realistic synthetic nodule patch should sit somewhere between the two,
and neither small group alone is a sharp target. No synthetic non-nodule locations are compared: the real
ones are radiologists' "irrelevant findings" (mostly on the chest wall or on vessels), which the generator
does not model as a class.

Each margin is about one standard error of the 6-nodule mean (per-patch sd over the 6 real nodules /
sqrt(6), measured with this module: whole_soft 0.093 -> 0.038, whole_aerated 0.076 -> 0.031, whole_low
0.073 -> 0.030, whole_dense 0.027 -> 0.011, shell_soft 0.133 -> 0.054, shell_aerated 0.104 -> 0.042,
shell_low 0.079 -> 0.032, shell_dense 0.032 -> 0.013, lung_hu 31 HU -> 13 HU, noise_hu 2.5 HU -> 1.0 HU,
touch_pleura 0.55 -> 0.22, touch_vessel 0.52 -> 0.21), rounded to 0.01 / 5 HU / 0.05; ``noise_hu`` gets
2 HU (twice its standard error: scanner noise differs more between scans than within one, and the 3
real scans are one sample of scanners).
"""


def band(
    statistic: str, real: dict[str, dict[str, float]], tolerances: dict[str, float] = TOLERANCES
) -> tuple[float, float]:
    """Accepted interval (lo, hi) of a synthetic mean: [min - tol, max + tol] of the real nodule and
    non-nodule means."""
    a, b = real["nodules"][statistic], real["non_nodules"][statistic]
    tol = tolerances[statistic]
    return min(a, b) - tol, max(a, b) + tol


class CompareRow(TypedDict):
    """One statistic side by side (:func:`compare`)."""

    statistic: str
    unit: str
    synthetic: float
    real_nodules: float
    real_non_nodules: float
    tolerance: float
    lo: float
    hi: float
    within: bool


def compare(
    synth_summary: dict[str, float],
    real_reference: dict[str, dict[str, float]],
    tolerances: dict[str, float] = TOLERANCES,
) -> list[CompareRow]:
    """Rows (one per statistic of :data:`STATISTICS`, in order): the synthetic mean, the real nodule and
    non-nodule means, the tolerance, the accepted interval [lo, hi] and whether the synthetic mean lies in
    it (NaN never does)."""
    rows: list[CompareRow] = []
    for s in STATISTICS:
        lo, hi = band(s, real_reference, tolerances)
        v = float(synth_summary[s])
        rows.append(
            CompareRow(
                statistic=s,
                unit=UNITS[s],
                synthetic=v,
                real_nodules=float(real_reference["nodules"][s]),
                real_non_nodules=float(real_reference["non_nodules"][s]),
                tolerance=float(tolerances[s]),
                lo=lo,
                hi=hi,
                within=bool(math.isfinite(v) and lo <= v <= hi),
            )
        )
    return rows


def synthetic_patches(
    synth_params: SynthParams,
    prepare_params: PrepareParams,
    workdir: str | Path,
    *,
    progress: bool = False,
) -> np.ndarray:
    """Generate a synthetic set with :func:`naslung.data.synth.synthesize` into ``workdir`` and return the
    HU patches at all its nodule centres (excluded / indeterminate nodules included, like the real set).

    ``synth_params``: e.g. ``SynthParams(n_scans=3, seed=...)`` (``n_scans`` sets the size: ~13 nodules a
    scan). ``prepare_params``: patch size, spacing and fill (``load_params().prepare``). Returns
    ``(n_nodules, S, S, S)`` float32 HU, numpy order (z, y, x), cut by
    :meth:`naslung.data.patches.PatchCutter.cut_hu` (the cutter of ``naslung prepare``, not windowed: the
    prepared store holds [0, 1] windowed patches), in the row order of ``workdir/synth_truth.csv``.
    ``workdir`` is created; existing files in it are overwritten.
    """
    import pandas as pd

    from naslung.data.patches import PatchCutter
    from naslung.data.scans import read_scan
    from naslung.data.synth import synthesize

    root = Path(workdir)
    synthesize(root, synth_params, progress=progress)
    table = pd.read_csv(root / "synth_truth.csv")
    size = int(prepare_params.patch_size)
    out = np.empty((len(table), size, size, size), dtype=np.float32)
    for scan_path, rows in table.groupby("scan_path", sort=False):
        cutter = PatchCutter(read_scan(root / str(scan_path)), prepare_params)
        for i, row in zip(rows.index, rows[["coordX", "coordY", "coordZ"]].to_numpy(float)):
            out[int(i)] = cutter.cut_hu(row)
    return out


def format_table(rows: list[CompareRow]) -> str:
    """The rows of :func:`compare` as a plain-text table (one line per statistic, a header, a count)."""
    head = (
        f"{'statistic':<14} {'unit':<8} {'synthetic':>10} {'real nod.':>10} {'real non-nod.':>13} {'accepted':>22}  ok"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        f = ".1f" if r["unit"] == "HU" else ".3f"
        accepted = f"[{r['lo']:{f}}, {r['hi']:{f}}]"
        lines.append(
            f"{r['statistic']:<14} {r['unit']:<8} {r['synthetic']:>10{f}} {r['real_nodules']:>10{f}} "
            f"{r['real_non_nodules']:>13{f}} {accepted:>22}  {'yes' if r['within'] else 'NO'}"
        )
    n_ok = sum(r["within"] for r in rows)
    lines.append(f"{n_ok} of {len(rows)} statistics within tolerance")
    return "\n".join(lines)


def realism_png(rows: list[CompareRow], path: str | Path) -> Path:
    """One panel per statistic: the synthetic mean (a dot, green inside / red outside the band), the two
    real group means (markers) and the accepted band (shaded). Writes a PNG; returns its path."""
    from matplotlib.figure import Figure

    ncol = 4
    nrow = math.ceil(len(rows) / ncol)
    fig = Figure(figsize=(3.0 * ncol, 2.1 * nrow))
    for k, r in enumerate(rows):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        ax.axhspan(r["lo"], r["hi"], color="0.85", label="accepted")
        ax.plot([0], [r["real_nodules"]], "s", c="tab:blue", label="real nodules")
        ax.plot([1], [r["real_non_nodules"]], "^", c="tab:orange", label="real non-nodules")
        ax.plot([2], [r["synthetic"]], "o", ms=8, c="tab:green" if r["within"] else "tab:red", label="synthetic")
        ax.set_xticks([0, 1, 2], ["real nod.", "real non", "synth"], fontsize=7)
        ax.set_xlim(-0.5, 2.5)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(f"{r['statistic']} ({r['unit']})", fontsize=9)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0.0, 0.05, 1.0, 1.0))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100)
    return p


def realism_report(
    synth_params: SynthParams,
    prepare_params: PrepareParams,
    real_npz: str | Path,
    out_dir: str | Path,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """The whole comparison: generate ``synth_params.n_scans`` synthetic scans (in a temporary folder,
    removed afterwards), cut their nodule patches, compute the statistics of both sets, compare them and
    write ``out_dir/realism.json`` (summaries, rows, tolerances, timings) and ``out_dir/realism.png``.

    Returns the dict written to ``realism.json``. Raises ``FileNotFoundError`` naming ``real_npz`` when the
    real patches are missing (checked before anything is generated).
    """
    import json
    import tempfile
    import time

    real_path = _existing(real_npz)  # fails before generating anything
    t0 = time.perf_counter()
    reference = real_reference(real_path)
    t_real = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="naslung-realism-") as tmp:
        t0 = time.perf_counter()
        synth = synthetic_patches(synth_params, prepare_params, tmp, progress=progress)
        t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    synth_summary = summarize(patch_statistics(synth))
    t_stats = time.perf_counter() - t0
    rows = compare(synth_summary, reference)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "synthetic": synth_summary,
        "real": reference,
        "rows": rows,
        "n_within": sum(r["within"] for r in rows),
        "n_statistics": len(rows),
        "target": "synthetic nodule patches vs [min - tol, max + tol] of the real nodule and non-nodule means",
        "tolerances": dict(TOLERANCES),
        "synth": {"n_scans": int(synth_params.n_scans), "seed": int(synth_params.seed)},
        "real_path": str(real_path),
        "seconds": {
            "real_statistics": round(t_real, 3),
            "synthesize_and_cut": round(t_gen, 3),
            "synthetic_statistics": round(t_stats, 3),
            "per_patch_ms": round(1000.0 * (t_real + t_stats) / max(1, int(reference["all"]["n"]) + len(synth)), 3),
        },
    }
    (out / "realism.json").write_text(json.dumps(_finite(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    realism_png(rows, out / "realism.png")
    return report


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
