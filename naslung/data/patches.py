"""Cutting 32^3 nodule patches at 1 mm from a CT scan, the same code for training and scoring.

One patch per world point (x, y, z in mm): a region a little larger than the patch is cropped from the
scan by index (no interpolation, no copy of the whole scan), then ONE ``sitk.Resample`` puts it onto a
``patch_size``^3 grid of ``spacing_mm`` voxels, axis-aligned with the world (identity direction), centred on
the point (voxel centres symmetric about it: origin = point - (size - 1) / 2 * spacing), linear
interpolation, ``fill_hu`` (air, -1024 HU) outside the scan. The HU window maps onto [0, 1] float32.
Arrays are numpy order (z, y, x).

:class:`PatchCutter` (one ``sitk.Resample`` per point) is THE cutter of ``naslung prepare`` (the training
data, tracked by DVC): its patches must not change. :class:`MultiPointCutter` is the scoring path's
cutter (``naslung score``): the patches of many points of one scan in one vectorised numpy pass, the
same values as :meth:`PatchCutter.cut_hu` within float32 rounding (well under 1 HU), the same per-point
out-of-scan errors.

:func:`check_patches` is the one check that an array is a batch of such patches (shape, dtype, values),
used wherever patches arrive from outside the process (a request body, the CSV scorer's scorer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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

    The training-data cutter (``naslung prepare``); scoring uses :class:`MultiPointCutter` (same values).

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
            raise _not_finite(pt)
        if require_inside and not bool(inside_scan(self.image, pt[None, :])[0]):
            raise _outside(pt, scan_extent_text(self.image))
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


def _not_finite(pt: np.ndarray) -> OutsideScanError:
    return OutsideScanError(f"point {tuple(pt)} mm is not finite")


def _outside(pt: np.ndarray, extent: str) -> OutsideScanError:
    return OutsideScanError(f"point ({pt[0]:.2f}, {pt[1]:.2f}, {pt[2]:.2f}) mm is outside the scan extent {extent}")


_BLAS: list[object] = []  # the process's threadpoolctl controller, found once (its introspection costs ms)


def _one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """BLAS limited to one thread while cutting (threadpoolctl, a scikit-learn dependency; no-op without it)."""
    try:
        from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    if not _BLAS:
        _BLAS.append(ThreadpoolController())
    limit: contextlib.AbstractContextManager[object] = _BLAS[0].limit(limits=1, user_api="blas")  # type: ignore[attr-defined]
    return limit


AXIS_ALIGNED_TOL = 1e-5
"""Largest |off-axis| direction cosine still treated as axis-aligned by :class:`MultiPointCutter` (over a
32 mm patch the neglected drift is < 1e-3 voxel; the patch origin itself uses the exact matrix)."""


class MultiPointCutter:
    """The scoring path's cutter: patches of MANY world points of one scan in one vectorised pass.

    Same patches as :meth:`PatchCutter.cut_hu` (same grid: ``patch_size``^3 voxels of ``spacing_mm``,
    world-axis-aligned, origin = point - (size - 1) / 2 * spacing; linear interpolation with ITK's edge
    rule: a sample whose continuous index lies in [-0.5, n - 0.5) takes the clamped neighbours, beyond it
    ``fill_hu``), to float32 rounding (< 1e-2 HU on CT values); the same out-of-scan errors per point.
    Not used by ``naslung prepare``, whose DVC-tracked training patches come from :class:`PatchCutter`.

    How: the scan stays in place (a numpy view of the SimpleITK buffer, (z, y, x), no copy). When the
    direction matrix is a signed permutation (identity, flips, axis swaps; off-axis cosines up to
    :data:`AXIS_ALIGNED_TOL`) trilinear interpolation is separable: per point a block of
    ``ceil((size - 1) * spacing / scan spacing) + 2`` voxels a side is gathered and contracted with three
    (block, size) linear-interpolation matrices (three small float32 matrix products per point, BLAS on
    one thread), ``chunk`` points at a time (their blocks and weights built together).
    Continuous indices come from the image's own index<->world matrix (origin, spacing, direction), index
    order (x, y, z). An oblique direction falls back to :meth:`PatchCutter.cut_hu` per point.

    ``image``: the whole scan (any scalar pixel type; HU); it must outlive the cutter. Points: world
    (x, y, z) mm, arrays (n, 3).
    """

    def __init__(self, image: sitk.Image, p: PrepareParams, chunk: int = 64) -> None:
        self.image = image
        self.p = p
        self.size = int(p.patch_size)
        self.spacing = float(p.spacing_mm)
        self.half = (self.size - 1) / 2.0 * self.spacing
        self.fill = float(p.fill_hu)
        self.chunk = max(1, int(chunk))
        self.img_size = np.array(image.GetSize(), dtype=np.int64)  # (x, y, z)
        direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)  # world = origin + D @ (spacing * index)
        img_spacing = np.array(image.GetSpacing(), dtype=float)
        self.origin = np.array(image.GetOrigin(), dtype=float)
        self.to_index = np.linalg.inv(direction @ np.diag(img_spacing))  # continuous (x, y, z) index = M @ (w - o)
        self.axis_world = np.argmax(np.abs(direction), axis=0)  # image axis a <-> world axis axis_world[a]
        sign = np.sign(direction[self.axis_world, np.arange(3)])
        off = np.abs(direction).copy()
        off[self.axis_world, np.arange(3)] = 0.0
        self.aligned = bool(
            len(set(self.axis_world.tolist())) == 3
            and off.max() <= AXIS_ALIGNED_TOL
            and image.GetNumberOfComponentsPerPixel() == 1
        )
        # The vectorised index<->world matrix must agree with SimpleITK's own transform (the reference for
        # world <-> index everywhere else): checked on the scan's 8 corners, else the per-point fallback.
        corners = np.array(
            [
                [i, j, k]
                for i in (0, self.img_size[0] - 1)
                for j in (0, self.img_size[1] - 1)
                for k in (0, self.img_size[2] - 1)
            ],
            dtype=float,
        )
        world = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(map(float, c))) for c in corners])
        self.aligned = self.aligned and bool(np.allclose(self.index_of(world), corners, atol=1e-6))
        self.step = sign * self.spacing / img_spacing  # index step per output voxel along image axis a
        self.block = np.minimum(np.ceil((self.size - 1) * np.abs(self.step) - 1e-9).astype(np.int64) + 2, self.img_size)
        self._extent: str | None = None
        self._fallback: PatchCutter | None = None

    def extent_text(self) -> str:
        if self._extent is None:
            self._extent = scan_extent_text(self.image)
        return self._extent

    def index_of(self, points_xyz_mm: np.ndarray) -> np.ndarray:
        """Continuous indices (n, 3), (x, y, z), of world points (n, 3) (x, y, z) mm."""
        pts = np.asarray(points_xyz_mm, dtype=float).reshape(-1, 3)
        return (pts - self.origin) @ self.to_index.T

    def errors(self, points_xyz_mm: np.ndarray) -> list[OutsideScanError | None]:
        """Per point: the :class:`OutsideScanError` :meth:`PatchCutter.cut_hu` would raise (not finite;
        outside the voxel extent, index in [-0.5, size - 0.5]), or None."""
        pts = np.asarray(points_xyz_mm, dtype=float).reshape(-1, 3)
        with np.errstate(invalid="ignore"):
            idx = self.index_of(pts)
            inside = np.all((idx >= -0.5) & (idx <= self.img_size - 0.5), axis=1) & np.all(np.isfinite(idx), axis=1)
        out: list[OutsideScanError | None] = []
        for pt, ok in zip(pts, inside):
            if not np.all(np.isfinite(pt)):
                out.append(_not_finite(pt))
            elif not ok:
                out.append(_outside(pt, self.extent_text()))
            else:
                out.append(None)
        return out

    def cut_hu(self, points_xyz_mm: np.ndarray, require_inside: bool = True) -> np.ndarray:
        """Raw HU patches (n, size, size, size) float32, (z, y, x), for world points (n, 3) (x, y, z) mm.

        Raises the first point's :class:`OutsideScanError` (see :meth:`errors`) unless ``require_inside``
        is False (then an outside point gives what overlaps the scan, ``fill_hu`` elsewhere; a non-finite
        point still raises)."""
        pts = np.asarray(points_xyz_mm, dtype=float).reshape(-1, 3)
        for pt, err in zip(pts, self.errors(pts)):
            if err is not None and (require_inside or not np.all(np.isfinite(pt))):
                raise err
        out = np.empty((len(pts),) + (self.size,) * 3, dtype=np.float32)
        for start in range(0, len(pts), self.chunk):
            out[start : start + self.chunk] = self._cut_chunk(pts[start : start + self.chunk])
        return out

    def cut(self, points_xyz_mm: np.ndarray) -> np.ndarray:
        """Windowed patches (n, size, size, size) float32 in [0, 1], (z, y, x); errors as :meth:`cut_hu`."""
        return window_hu(self.cut_hu(points_xyz_mm), self.p.hu_window)

    def iter_cut(self, points_xyz_mm: np.ndarray) -> Iterator[np.ndarray]:
        """Windowed patches of points (n, 3) inside the scan, ``chunk`` points at a time (k, size, size, size),
        in order; memory stays at one chunk however many points. Errors as :meth:`cut_hu`."""
        pts = np.asarray(points_xyz_mm, dtype=float).reshape(-1, 3)
        for start in range(0, len(pts), self.chunk):
            yield self.cut(pts[start : start + self.chunk])

    def _cut_chunk(self, pts: np.ndarray) -> np.ndarray:
        if not self.aligned:
            if self._fallback is None:
                self._fallback = PatchCutter(self.image, self.p)
            return np.stack([self._fallback.cut_hu(pt, require_inside=False) for pt in pts])
        n_pts, s = len(pts), self.size
        c0 = self.index_of(pts - self.half)  # (P, 3) continuous index of each patch's origin voxel
        t = np.arange(s, dtype=float)
        vol = sitk.GetArrayViewFromImage(self.image)  # (z, y, x), the image's buffer
        weights, valid, starts = [], [], []
        for a in range(3):  # image axes x, y, z
            c = c0[:, a, None] + t[None, :] * self.step[a]  # (P, s)
            n, length = int(self.img_size[a]), int(self.block[a])
            valid.append((c >= -0.5) & (c < n - 0.5))
            lo = np.floor(c)
            frac = (c - lo).astype(np.float32)
            i0 = np.clip(lo, 0, n - 1).astype(np.int64)
            i1 = np.clip(lo + 1, 0, n - 1).astype(np.int64)
            start = np.clip(i0.min(axis=1), 0, n - length)  # (P,): block along this axis
            starts.append(start)
            w = np.zeros((n_pts, length, s), dtype=np.float32)
            pi, ti = np.arange(n_pts)[:, None], np.arange(s)[None, :]
            w[pi, i0 - start[:, None], ti] = 1.0 - frac
            w[pi, i1 - start[:, None], ti] += frac
            weights.append(w)  # (P, block_a, s): sample t of image axis a from block voxel i
        lx, ly, lz = (int(v) for v in self.block)
        blocks = np.empty((n_pts, lz, ly, lx), dtype=np.float32)  # each point's block, (z, y, x)
        for i, (z0, y0, x0) in enumerate(zip(starts[2].tolist(), starts[1].tolist(), starts[0].tolist())):
            blocks[i] = vol[z0 : z0 + lz, y0 : y0 + ly, x0 : x0 + lx]
        wy_t = np.ascontiguousarray(weights[1].transpose(0, 2, 1))  # (P, s, ly)
        wz_t = np.ascontiguousarray(weights[2].transpose(0, 2, 1))  # (P, s, lz)
        r = np.empty((n_pts, s, s, s), dtype=np.float32)
        with _one_blas_thread():  # tiny GEMMs: BLAS threads only cost synchronisation
            for i in range(n_pts):
                x1 = (blocks[i].reshape(lz * ly, lx) @ weights[0][i]).reshape(lz, ly, s)  # along image x
                x2 = np.matmul(wy_t[i], x1)  # along image y: (lz, s, s)
                r[i] = (wz_t[i] @ x2.reshape(lz, s * s)).reshape(s, s, s)  # along image z
        for k in np.nonzero(~(valid[0].all(axis=1) & valid[1].all(axis=1) & valid[2].all(axis=1)))[0].tolist():
            mask = valid[2][k][:, None, None] & valid[1][k][None, :, None] & valid[0][k][None, None, :]
            r[k][~mask] = np.float32(self.fill)  # samples beyond the scan's half-voxel border
        # r's axes 1..3 are image z, y, x; the patch wants world z, y, x: image axis of world axis w
        image_axis = {int(w): a for a, w in enumerate(self.axis_world)}
        return r.transpose(0, *(1 + (2 - image_axis[w]) for w in (2, 1, 0)))


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
