"""Cutting 32^3 nodule patches at 1 mm from a CT scan, the same code for training and scoring.

One patch per world point (x, y, z in mm): a region a little larger than the patch is cropped from the
scan by index (no interpolation, no copy of the whole scan), then ONE ``sitk.Resample`` puts it onto a
``patch_size``^3 grid of ``spacing_mm`` voxels, axis-aligned with the world (identity direction), centred on
the point (voxel centres symmetric about it: origin = point - (size - 1) / 2 * spacing), linear
interpolation, ``fill_hu`` (air, -1024 HU) outside the scan. The HU window maps onto [0, 1] float32.
Arrays are numpy order (z, y, x).

:func:`check_patches` is the one check that an array is a batch of such patches (shape, dtype, values),
used wherever patches arrive from outside the process (a request body, the CSV scorer's scorer).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from naslung.data.scans import inside_scan, world_to_index
from naslung.params import PrepareParams

PATCH_SIZE = 32
"""Voxels per side of a model input patch (``prepare.patch_size`` of the served models)."""


class OutsideScanError(ValueError):
    """A world point lies outside the scan's physical extent."""


class PatchArrayError(ValueError):
    """An array that is not a usable batch of patches; the message names where it came from and what is wrong."""


def check_patches(
    arr: np.ndarray,
    where: str,
    *,
    size: int | None = PATCH_SIZE,
    dtypes: tuple[type[np.generic], ...] = (np.float32,),
    values: bool = True,
    allow_empty: bool = False,
) -> np.ndarray:
    """Check that ``arr`` is a batch of patches and return it as ``(N, size, size, size)`` (a view).

    Accepted: ``(N, P, P, P)`` or ``(N, 1, P, P, P)`` (the channel axis is dropped), numpy order
    (z, y, x), with ``P == size`` (``size=None``: any spatial shape ``(D, H, W)``); dtype one of
    ``dtypes``; ``N >= 1`` unless ``allow_empty``; with ``values``, floating-point patches must be finite
    and lie in [0, 1] (integer patches are not range-checked). Checks run in that order (dtype, shape,
    count, values) and the first failure raises :class:`PatchArrayError` ``"<where>: <what is wrong>"``.
    """
    if not isinstance(arr, np.ndarray):
        raise PatchArrayError(f"{where}: expected a numpy array of patches, got {type(arr).__name__}")
    accepted = [np.dtype(d) for d in dtypes]
    if arr.dtype not in accepted:
        names = " or ".join(str(d) for d in accepted)
        raise PatchArrayError(f"{where}: dtype {arr.dtype} not accepted: expected {names}")
    x = arr[:, 0] if arr.ndim == 5 and arr.shape[1] == 1 else arr
    side = "P" if size is None else str(size)
    if x.ndim != 4 or (size is not None and x.shape[1:] != (size, size, size)):
        raise PatchArrayError(
            f"{where}: shape {tuple(arr.shape)} not accepted: expected (N, {side}, {side}, {side}) "
            f"or (N, 1, {side}, {side}, {side})"
        )
    if x.shape[0] == 0 and not allow_empty:
        raise PatchArrayError(f"{where}: holds zero patches")
    if values and np.issubdtype(x.dtype, np.floating) and x.size:
        bad = ~np.isfinite(x)
        if bad.any():
            rows = sorted({int(i) for i in np.nonzero(bad)[0][:1000]})
            raise PatchArrayError(f"{where}: non-finite values (NaN/inf) in patch(es) {rows[:10]}")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise PatchArrayError(f"{where}: values must lie in [0, 1]; got min {lo:.4g}, max {hi:.4g}")
    return x


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
