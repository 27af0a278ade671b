"""Cutting 32^3 nodule patches at 1 mm from a CT scan, the same code for training and scoring.

One patch per world point (x, y, z in mm): a region a little larger than the patch is cropped from the
scan by index (no interpolation, no copy of the whole scan), then ONE ``sitk.Resample`` puts it onto a
``patch_size``^3 grid of ``spacing_mm`` voxels, axis-aligned with the world (identity direction), centred on
the point (voxel centres symmetric about it: origin = point - (size - 1) / 2 * spacing), linear
interpolation, ``fill_hu`` (air, -1024 HU) outside the scan. The HU window maps onto [0, 1] float32.
Arrays are numpy order (z, y, x).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from naslung.data.scans import inside_scan, world_to_index
from naslung.params import PrepareParams


class OutsideScanError(ValueError):
    """A world point lies outside the scan's physical extent."""


def window_hu(hu: np.ndarray, hu_window: tuple[float, float]) -> np.ndarray:
    """Map HU linearly so that ``hu_window`` -> [0, 1], clipped; float32, same shape."""
    lo, hi = float(hu_window[0]), float(hu_window[1])
    out = (np.asarray(hu, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


class PatchCutter:
    """Cuts patches from one scan; builds its Resample filter once and reuses it for every nodule.

    ``image``: the whole scan (any pixel type; HU). Points: world (x, y, z) mm.
    """

    def __init__(self, image: sitk.Image, p: PrepareParams, threads: int = 1) -> None:
        self.image = image
        self.p = p
        self.size = int(p.patch_size)
        self.spacing = float(p.spacing_mm)
        self.half = (self.size - 1) / 2.0 * self.spacing
        self.img_size = np.array(image.GetSize(), dtype=int)
        f = sitk.ResampleImageFilter()
        f.SetSize([self.size] * 3)
        f.SetOutputSpacing([self.spacing] * 3)
        f.SetOutputDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        f.SetInterpolator(sitk.sitkLinear)
        f.SetDefaultPixelValue(float(p.fill_hu))
        f.SetOutputPixelType(sitk.sitkFloat32)
        f.SetTransform(sitk.Transform(3, sitk.sitkIdentity))
        f.SetNumberOfThreads(max(1, threads))
        self._resample = f
        offs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
        self._corner_offsets = offs * self.half

    def crop_region(self, point_xyz_mm: np.ndarray) -> tuple[list[int], list[int]] | None:
        """(index, size) in (x, y, z) voxels of the input region the patch needs, plus the margin.

        Found from the continuous indices of the 8 corners of the patch's physical box, so a rotated
        direction matrix is handled. ``None`` when the region misses the scan entirely.
        """
        corners = world_to_index(self.image, np.asarray(point_xyz_mm, float)[None, :] + self._corner_offsets)
        m = int(self.p.margin_voxels)
        lo = np.floor(corners.min(axis=0)).astype(int) - m
        hi = np.ceil(corners.max(axis=0)).astype(int) + m
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, self.img_size - 1)
        if np.any(hi < lo):
            return None
        return lo.tolist(), (hi - lo + 1).tolist()

    def cut_hu(self, point_xyz_mm: np.ndarray, require_inside: bool = True) -> np.ndarray:
        """Raw HU patch (size, size, size) float32, (z, y, x), centred on the world point (x, y, z) mm.

        Raises :class:`OutsideScanError` if the point is outside the scan's extent (with
        ``require_inside=False`` such a point gives whatever overlaps the scan, ``fill_hu`` elsewhere).
        """
        pt = np.asarray(point_xyz_mm, dtype=float).reshape(3)
        if not np.all(np.isfinite(pt)):
            raise OutsideScanError(f"point {tuple(pt)} mm is not finite")
        if require_inside and not bool(inside_scan(self.image, pt[None, :])[0]):
            raise OutsideScanError(
                f"point ({pt[0]:.2f}, {pt[1]:.2f}, {pt[2]:.2f}) mm is outside the scan extent "
                f"{scan_extent_text(self.image)}"
            )
        region = self.crop_region(pt)
        if region is None:  # only reachable with require_inside=False
            return np.full((self.size,) * 3, self.p.fill_hu, dtype=np.float32)
        roi = sitk.RegionOfInterest(self.image, region[1], region[0])
        self._resample.SetOutputOrigin(tuple(float(v) for v in pt - self.half))
        out = self._resample.Execute(roi)
        return sitk.GetArrayFromImage(out)

    def cut(self, point_xyz_mm: np.ndarray) -> np.ndarray:
        """Windowed patch (size, size, size) float32 in [0, 1], (z, y, x)."""
        return window_hu(self.cut_hu(point_xyz_mm), self.p.hu_window)


def scan_extent_text(image: sitk.Image) -> str:
    """Physical bounding box of the scan's voxel centres as text: x[a, b] y[..] z[..] mm."""
    size = image.GetSize()
    pts = np.array(
        [
            image.TransformIndexToPhysicalPoint((i, j, k))
            for i in (0, size[0] - 1)
            for j in (0, size[1] - 1)
            for k in (0, size[2] - 1)
        ]
    )
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return " ".join(f"{a}[{l:.1f}, {h:.1f}]" for a, l, h in zip("xyz", lo, hi)) + " mm"


def extract_patch_hu(
    image: sitk.Image, points_xyz_mm: np.ndarray, p: PrepareParams, require_inside: bool = True
) -> np.ndarray:
    """Raw HU patches (n, size, size, size) float32 for world points (n, 3) (x, y, z) mm.

    Raises :class:`OutsideScanError` for the first point outside the scan unless ``require_inside`` is
    False (use :class:`PatchCutter` for per-point error handling).
    """
    cutter = PatchCutter(image, p)
    pts = np.asarray(points_xyz_mm, dtype=float).reshape(-1, 3)
    out = np.empty((len(pts),) + (int(p.patch_size),) * 3, dtype=np.float32)
    for i, pt in enumerate(pts):
        out[i] = cutter.cut_hu(pt, require_inside)
    return out


def extract_patches(image: sitk.Image, points_xyz_mm: np.ndarray, p: PrepareParams) -> np.ndarray:
    """Windowed patches (n, size, size, size) float32 in [0, 1], (z, y, x), for world points (n, 3) mm."""
    return window_hu(extract_patch_hu(image, points_xyz_mm, p), p.hu_window)
