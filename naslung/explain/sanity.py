"""Do the maps mean something? Map mass inside the nodule against the nodule's share of the patch volume.

For a map ``m (S, S, S)`` and a nodule mask ``M`` (bool, same grid, numpy order ``(z, y, x)``):

* the map is min-max normalised per patch: ``h = (m - min m) / (max m - min m)`` (a constant map -> 0);
* ``mass = sum(h · M) / sum(h)``: fraction of the map's mass inside the nodule;
* ``share = mean(M)``: the nodule's fraction of the patch volume (what a uniform map would give);
* ``ratio = mass / share``: 1 means "no better than uniform", larger means the map concentrates on the nodule.

Nodule masks come from the known geometry: :func:`sphere_mask` with the nodule diameter in mm (manifest
``diameter_mm``; patches are 1 mm isotropic and centred on the nodule). :func:`sphere_patches` makes a toy
labelled set where a bright sphere decides the label, with masks, for the sanity test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def sphere_mask(
    diameter_mm: float, size: int = 32, spacing_mm: float = 1.0, centre_zyx: Sequence[float] | np.ndarray | None = None
) -> np.ndarray:
    """Bool ``(size,)*3`` mask of a sphere of ``diameter_mm`` (mm) centred at ``centre_zyx`` (voxels;
    default the patch centre ``(size - 1) / 2``). At least the centre voxel is always inside."""
    if diameter_mm <= 0 or not np.isfinite(diameter_mm):
        raise ValueError(f"sphere_mask: diameter must be a positive number of mm, got {diameter_mm}")
    c = np.full(3, (size - 1) / 2.0) if centre_zyx is None else np.asarray(centre_zyx, float)
    z, y, x = np.ogrid[:size, :size, :size]
    r_vox = diameter_mm / 2.0 / spacing_mm
    mask = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r_vox**2
    if not mask.any():
        mask[tuple(np.clip(np.round(c).astype(int), 0, size - 1))] = True
    return mask


def mass_inside(heat: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the min-max normalised map's mass inside ``mask`` (nan for a constant map)."""
    h = np.asarray(heat, dtype=np.float64)
    if h.shape != mask.shape:
        raise ValueError(f"mass_inside: map {h.shape} and mask {mask.shape} differ")
    lo, hi = h.min(), h.max()
    if not hi > lo:
        return float("nan")
    h = (h - lo) / (hi - lo)
    return float((h * mask).sum() / h.sum())


@dataclass
class MassReport:
    """Per-patch ``mass``, ``share``, ``ratio`` (n,) and their summaries (means; ``ratio_of_means`` =
    mean mass / mean share, ``median_ratio`` of the per-patch ratios)."""

    mass: np.ndarray
    share: np.ndarray
    ratio: np.ndarray

    @property
    def mean_mass(self) -> float:
        return float(np.nanmean(self.mass))

    @property
    def mean_share(self) -> float:
        return float(np.mean(self.share))

    @property
    def ratio_of_means(self) -> float:
        return self.mean_mass / self.mean_share

    @property
    def median_ratio(self) -> float:
        return float(np.nanmedian(self.ratio))

    def to_dict(self) -> dict[str, float]:
        return {
            "mean_mass": self.mean_mass,
            "mean_share": self.mean_share,
            "ratio_of_means": self.ratio_of_means,
            "median_ratio": self.median_ratio,
            "n": int(self.mass.size),
        }


def mass_report(maps: np.ndarray, masks: np.ndarray) -> MassReport:
    """:class:`MassReport` of maps ``(n, S, S, S)`` against bool masks ``(n, S, S, S)``."""
    if maps.shape != masks.shape:
        raise ValueError(f"mass_report: maps {maps.shape} and masks {masks.shape} differ")
    mass = np.array([mass_inside(m, k) for m, k in zip(maps, masks)])
    share = masks.reshape(len(masks), -1).mean(1)
    return MassReport(mass, share, mass / share)


def masks_from_diameters(diameters_mm: Sequence[float], size: int = 32, spacing_mm: float = 1.0) -> np.ndarray:
    """Bool ``(n, size, size, size)`` centred sphere masks for the manifest diameters (mm)."""
    return np.stack([sphere_mask(float(d), size, spacing_mm) for d in diameters_mm])


def sphere_patches(
    n: int, seed: int = 0, size: int = 32, radius_vox: tuple[float, float] = (3.0, 6.0)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Toy set: ``X (n, 1, S, S, S)`` float32 in [0, 1], ``y (n,)`` int64, ``masks (n, S, S, S)`` bool.

    Every patch holds one sphere (radius uniform in ``radius_vox`` voxels) at a random position (fully
    inside) over smoothed noise around 0.25; the sphere is bright (0.85) for class 1 and faint (0.45) for
    class 0, so only the sphere tells the classes apart and its mask is exactly known.
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    rng.shuffle(y)
    X = np.empty((n, 1, size, size, size), np.float32)
    masks = np.empty((n, size, size, size), bool)
    for i in range(n):
        r = rng.uniform(*radius_vox)
        c = rng.uniform(r + 1, size - 2 - r, 3)
        m = sphere_mask(2 * r, size, 1.0, c)
        noise = rng.normal(0.0, 0.08, (size, size, size))
        noise = (noise + np.roll(noise, 1, 0) + np.roll(noise, 1, 1) + np.roll(noise, 1, 2)) / 2.0
        vol = 0.25 + noise
        vol[m] = (0.85 if y[i] == 1 else 0.45) + 0.05 * rng.normal(size=int(m.sum()))
        X[i, 0] = np.clip(vol, 0.0, 1.0)
        masks[i] = m
    return X, y.astype(np.int64), masks
