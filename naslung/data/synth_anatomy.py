"""Procedural chest-CT anatomy for the embedded synthetic dataset: scan geometry, thorax, lungs, vessels.

Conventions:
- World coordinates are LUNA16/ITK physical coordinates in mm, ordered (x, y, z) (LPS: +x patient left,
  +y posterior, +z head). Every scan has an identity direction matrix, so the world point of voxel index
  (i, j, k) (x, y, z order) is ``origin + spacing * (i, j, k)``; SimpleITK writes the same geometry.
- Volumes are numpy arrays in (z, y, x) order, values in HU (float32 while rendering).
- The scan is a sub-volume of a life-size thorax: its field of view covers one lung, the mediastinum
  and the chest wall on that side, over 96-140 mm of height.

Everything a nodule table needs (geometry, thorax shape, :func:`lung_depth_mm`) is analytic and drawn
from the scan's *layout* random stream, so the table can be produced without rendering any voxel.
Vessels and noise come from a separate *render* stream.
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


@dataclass(frozen=True)
class ScanLayout:
    """Everything about one scan that the nodule table depends on."""

    index: int
    seriesuid: str
    subset: int
    geometry: ScanGeometry
    thorax: Thorax
    noise_hu: float
    """Standard deviation of the image noise (HU) after the point-spread blur."""


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
        lung_hu=float(rng.uniform(-880.0, -840.0)),
        lung_hu_gradient=float(rng.uniform(0.1, 0.35)),
        side=side,
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
    return ScanLayout(
        index=index,
        seriesuid=seriesuid,
        subset=index % n_subsets,
        geometry=geometry,
        thorax=thorax,
        noise_hu=float(rng.uniform(20.0, 40.0)),
    )


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


def _ramp(signed_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """Partial-volume occupancy in [0, 1] from a signed inside depth (mm), linear over ``width_mm``."""
    return np.clip(0.5 + signed_mm / width_mm, 0.0, 1.0)


def render_background(layout: ScanLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body, bones and mediastinum, and the lung parenchyma.

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
    sl = sl * (1 - aorta) + BLOOD_HU * aorta
    sl = sl.astype(np.float32)
    r2d, heart_q2, static = (v.astype(np.float32) for v in _lung_depth_2d(th, x, y))
    heart_inside = cavity > 0.5
    near_wall = (depth_body < th.fat_mm + th.muscle_mm + 16.0) & (body > 0.5)
    theta = np.abs(np.arctan2((y - cy) / by, (x - cx) / bx)).astype(np.float32)
    lung_hu = (th.lung_hu + th.lung_hu_gradient * (y - (cy - by))).astype(np.float32)
    vol = np.empty((nz, ny, nx), dtype=np.float32)
    occ = np.empty((nz, ny, nx), dtype=np.float32)
    content = np.empty((nz, ny, nx), dtype=np.float32)
    hz, hax, haz = th.heart_centre[2], th.heart_axes[0], th.heart_axes[2]
    for k, zk in enumerate(z.astype(np.float32)):
        v = sl.copy()
        if (zk - th.rib_phase * 27.0) % 27.0 < 5.0:  # intervertebral disc
            v[bone > 0.5] = 80.0
        hq = np.sqrt(heart_q2 + ((zk - hz) / haz) ** 2)
        heart = _ramp((1.0 - hq) * hax, 1.5) * heart_inside
        v += (BLOOD_HU - v) * heart
        depth = _lung_depth_z(th, r2d, heart_q2, static, zk)
        # ribs: oblique bands just outside the lung along the chest wall, periodic in z and slanting with
        # the angle around the body (cortex at their upper and lower edges, marrow between)
        phase = np.mod((zk + th.rib_slope * theta) / th.rib_period_mm + th.rib_phase, 1.0)
        rib = (phase < 0.24) & (depth > -11.0) & (depth < -1.0) & near_wall
        v[rib] = np.where(np.abs(phase[rib] - 0.12) > 0.08, CORTEX_HU, BONE_HU * 0.5)
        vol[k] = v
        occ[k] = _ramp(depth, 1.2)
        content[k] = lung_hu
    return vol, occ, content


@dataclass(frozen=True)
class Segment:
    """Tapered tube from ``a`` to ``b`` (world mm) with radii ``ra`` -> ``rb`` (mm)."""

    a: tuple[float, float, float]
    b: tuple[float, float, float]
    ra: float
    rb: float


def sample_vessel_tree(rng: np.random.Generator, layout: ScanLayout) -> list[Segment]:
    """Branching pulmonary vessel trees from the hilum of each lung (render stream).

    Each branch splits in two (radius x0.86 and x0.72) until it is thinner than 0.6 mm or leaves the lung.
    """
    th = layout.thorax
    cx, cy = th.centre_xy
    ax, ay = th.lung_axes
    segments: list[Segment] = []
    for side in (-1, 1):
        lx = cx + side * th.lung_dx
        n_trees = int(rng.integers(6, 9))
        for t in range(n_trees):
            root = np.array(
                [
                    lx - side * 0.55 * ax,
                    cy + th.lung_dy + rng.uniform(-0.2, 0.2) * ay,
                    th.lung_zc + rng.uniform(-0.35, 0.35) * th.lung_hz,
                ]
            )
            tilt = (t / max(n_trees - 1, 1) - 0.5) * 2.0
            d0 = np.array([side * 0.8, rng.uniform(-1.0, 1.0), tilt + rng.uniform(-0.3, 0.3)])
            stack = [(root, d0 / np.linalg.norm(d0), float(rng.uniform(2.8, 4.2)), 0)]
            while stack:
                p, d, r, depth = stack.pop()
                length = float(rng.uniform(3.0, 5.0) * r + 4.0)
                q = p + d * length
                r_end = r * 0.95
                segments.append(Segment(tuple(p), tuple(q), r, r_end))
                inside = float(lung_depth_mm(th, q[0], q[1], q[2])) > -1.0
                if r_end < 0.6 or depth >= 11 or not inside:
                    continue
                for k in range(2):
                    perp = rng.normal(size=3)
                    perp -= perp.dot(d) * d
                    perp /= np.linalg.norm(perp) + 1e-12
                    angle = rng.uniform(0.3, 0.7)
                    nd = np.cos(angle) * d + np.sin(angle) * perp
                    nd /= np.linalg.norm(nd)
                    stack.append((q, nd, r_end * (0.86 if k == 0 else 0.72), depth + 1))
    return segments


def tube_occupancy(
    geometry: ScanGeometry, seg: Segment, edge_mm: float = 0.8
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Partial-volume occupancy of one tapered tube, computed only in its bounding box."""
    a = np.asarray(seg.a)
    b = np.asarray(seg.b)
    pad = max(seg.ra, seg.rb) + edge_mm
    box = geometry.box_slices(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
    if box is None:
        return None
    z = geometry.axis_mm(2, box[0].start, box[0].stop)[:, None, None] - a[2]
    y = geometry.axis_mm(1, box[1].start, box[1].stop)[None, :, None] - a[1]
    x = geometry.axis_mm(0, box[2].start, box[2].stop)[None, None, :] - a[0]
    d = b - a
    dd = float(d.dot(d)) + 1e-12
    t = np.clip((x * d[0] + y * d[1] + z * d[2]) / dd, 0.0, 1.0)
    dist = np.sqrt((x - t * d[0]) ** 2 + (y - t * d[1]) ** 2 + (z - t * d[2]) ** 2)
    radius = seg.ra + (seg.rb - seg.ra) * t
    return box, _ramp(radius - dist, edge_mm).astype(np.float32)


def draw_vessels(content: np.ndarray, geometry: ScanGeometry, segments: list[Segment]) -> None:
    """Composite vessels (blood HU, partial volume) into the lung content volume, in place."""
    vessel = np.zeros(content.shape, dtype=np.float32)
    for seg in segments:
        res = tube_occupancy(geometry, seg)
        if res is None:
            continue
        box, occ = res
        np.maximum(vessel[box], occ, out=vessel[box])
    content += (BLOOD_HU - content) * vessel


def finish(volume: np.ndarray, layout: ScanLayout, rng: np.random.Generator) -> np.ndarray:
    """Add correlated noise, blur with the scanner's point-spread function, round to int16 HU."""
    sp = np.asarray(layout.geometry.spacing_xyz)
    sigma_zyx = (0.425, 0.35 / sp[1] + 0.15, 0.35 / sp[0] + 0.15)  # voxels; z ~ slice profile FWHM
    gain = 1.0
    for s in sigma_zyx:  # noise std reduction of the truncated Gaussian kernel used by scipy
        r = int(4.0 * s + 0.5)
        w = np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2)
        w /= w.sum()
        gain *= float(np.sqrt((w * w).sum()))
    noise = rng.standard_normal(size=volume.shape, dtype=np.float32) * np.float32(layout.noise_hu / gain)
    volume += noise
    out = gaussian_filter(volume, sigma=sigma_zyx, mode="nearest")
    np.clip(out, *HU_CLIP, out=out)
    return np.rint(out).astype(np.int16)
