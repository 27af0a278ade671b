"""Do the maps mean something? Map mass inside the nodule against the nodule's share of the patch volume.

For a map ``m (S, S, S)`` and a nodule mask ``M`` (bool, same grid, numpy order ``(z, y, x)``):

* the map is min-max normalised per patch: ``h = (m - min m) / (max m - min m)`` (a constant map -> 0);
* ``mass = sum(h · M) / sum(h)``: fraction of the map's mass inside the nodule;
* ``share = mean(M)``: the nodule's fraction of the patch volume (what a uniform map would give);
* ``ratio = mass / share``: 1 means "no better than uniform", larger means the map concentrates on the nodule.

A ``support`` (bool, same grid) restricts all three to part of the patch: min and max are taken over the
support, ``mass = sum(h · M · support) / sum(h · support)`` and ``share = sum(M · support) / sum(support)``.
The attention figures use the padding-free interior (:func:`interior_mask`), see :mod:`naslung.explain.maps`.

Nodule masks come from the known geometry: :func:`sphere_mask` with the nodule diameter in mm (manifest
``diameter_mm``; patches are 1 mm isotropic and centred on the nodule). :func:`sphere_patches` makes a toy
labelled set where a bright sphere decides the label, with masks, for the sanity test.

Controls. Patches are centred on their nodule by construction, so a map that merely peaks at the patch
centre scores well without looking at anything: :func:`centred_reference` is that map (an isotropic Gaussian
centred on the patch centre ``(S - 1) / 2`` with a fixed ``sigma_mm``, :data:`REFERENCE_SIGMA_MM` = 4 mm by
default, the same map for every nodule: it uses no image and no diameter). Its ratio is what "looks at the
centre" alone earns; the ratio of an untrained (re-initialised) model is what the architecture alone earns
(:func:`naslung.explain.maps.reinitialised`). A trained model's ratio means something only against both.
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


REFERENCE_SIGMA_MM = 4.0
"""Default standard deviation (mm) of the centred reference map :func:`centred_reference`."""


def interior_mask(size: int = 32, rim_vox: int = 0) -> np.ndarray:
    """Bool ``(size,)*3``: True farther than ``rim_vox - 1`` voxels from every face (the outer ``rim_vox``
    voxel layers are False; ``rim_vox = 0`` is the whole patch)."""
    if not 0 <= rim_vox < size // 2:
        raise ValueError(f"interior_mask: rim of {rim_vox} voxels does not fit a {size}^3 patch")
    m = np.zeros((size,) * 3, bool)
    m[rim_vox : size - rim_vox, rim_vox : size - rim_vox, rim_vox : size - rim_vox] = True
    return m


def centred_reference(size: int = 32, sigma_mm: float = REFERENCE_SIGMA_MM, spacing_mm: float = 1.0) -> np.ndarray:
    """The centred reference map ``(size,)*3`` float32: ``exp(-r^2 / (2 sigma^2))`` with ``r`` (mm) the
    distance to the patch centre ``(size - 1) / 2`` (voxels times ``spacing_mm``); peak 1 at the centre."""
    if not sigma_mm > 0 or not np.isfinite(sigma_mm):
        raise ValueError(f"centred_reference: sigma must be a positive number of mm, got {sigma_mm}")
    c = (size - 1) / 2.0
    z, y, x = np.ogrid[:size, :size, :size]
    r2 = ((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2) * spacing_mm**2
    return np.exp(-r2 / (2.0 * sigma_mm**2)).astype(np.float32)


def mass_inside(heat: np.ndarray, mask: np.ndarray, support: np.ndarray | None = None) -> float:
    """Fraction of the min-max normalised map's mass inside ``mask`` (nan for a map constant on the support);
    with ``support``, min, max and both sums are taken over the support only."""
    h = np.asarray(heat, dtype=np.float64)
    if h.shape != mask.shape:
        raise ValueError(f"mass_inside: map {h.shape} and mask {mask.shape} differ")
    if support is not None:
        if support.shape != h.shape:
            raise ValueError(f"mass_inside: map {h.shape} and support {support.shape} differ")
        h, mask = h[support], np.asarray(mask)[support]
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


def mass_report(maps: np.ndarray, masks: np.ndarray, support: np.ndarray | None = None) -> MassReport:
    """:class:`MassReport` of maps ``(n, S, S, S)`` (or one map ``(S, S, S)`` for every nodule, such as
    :func:`centred_reference`) against bool masks ``(n, S, S, S)``, on an optional ``support (S, S, S)``."""
    maps = np.asarray(maps)
    if maps.shape == masks.shape[1:]:
        maps = np.broadcast_to(maps, masks.shape)
    if maps.shape != masks.shape:
        raise ValueError(f"mass_report: maps {maps.shape} and masks {masks.shape} differ")
    mass = np.array([mass_inside(m, k, support) for m, k in zip(maps, masks)])
    flat = masks.reshape(len(masks), -1)
    share = flat.mean(1) if support is None else flat[:, support.ravel()].mean(1)
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
