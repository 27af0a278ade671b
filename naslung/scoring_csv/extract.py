"""Patches of the rows to score: each scan read once, all its nodules cut in one vectorised pass.

Patches are (32, 32, 32) float32 in [0, 1], numpy order (z, y, x), 1 mm voxels, centred on each row's
world point (x, y, z) mm. They are cut with :class:`naslung.data.patches.MultiPointCutter`, the scoring
path's multi-point cutter: the same values as the training data's
:class:`naslung.data.patches.PatchCutter` (``naslung prepare``) within float32 rounding, the same
per-point errors. Reading and cutting run in one background thread, ``prefetch`` scans ahead of the
consumer, so extraction overlaps with the requests in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from naslung.data.patches import MultiPointCutter, OutsideScanError, PatchCutter
from naslung.data.scans import ScanError, read_scan
from naslung.params import PrepareParams
from naslung.scoring_csv.rows import RowResult
from naslung.scoring_csv.scans import ScanFinder, UnusableSeries


@dataclass
class ExtractionTimes:
    """Where extraction time went (s) and how many scans were read."""

    read_s: float = 0.0
    cut_s: float = 0.0
    n_scans: int = 0


def group_by_series(rows: Sequence[RowResult]) -> dict[str, list[RowResult]]:
    """Rows per series uid, series in order of first appearance, rows in input order."""
    groups: dict[str, list[RowResult]] = {}
    for row in rows:
        groups.setdefault(row.seriesuid, []).append(row)
    return groups


@dataclass
class _ScanCut:
    """What the extraction thread made of one series: a read error, or its patches and per-row errors."""

    read_error: Exception | None = None
    cut: list[tuple[RowResult, np.ndarray]] = field(default_factory=list)
    errors: list[tuple[RowResult, str]] = field(default_factory=list)
    read_s: float = 0.0
    cut_s: float = 0.0


def cut_rows(image: sitk.Image, rows: Sequence[RowResult], prepare: PrepareParams) -> _ScanCut:
    """Windowed patches of ``rows`` on ``image`` (one :class:`MultiPointCutter` pass); rows whose point lies
    outside the scan (or is not finite) get ``"row <n>: <reason>"`` instead. Should the vectorised pass
    fail as a whole (e.g. an unusual pixel type), the rows are cut one by one with :class:`PatchCutter`, so
    a failure still only affects its own row."""
    out = _ScanCut()
    points = np.array([row.point for row in rows], dtype=float).reshape(-1, 3)
    try:
        cutter = MultiPointCutter(image, prepare)
        ok: list[int] = []
        for i, (row, err) in enumerate(zip(rows, cutter.errors(points))):
            if err is None:
                ok.append(i)
            else:
                out.errors.append((row, f"row {row.row + 1}: {err}"))
        if ok:
            patches = cutter.cut(points[ok])
            out.cut = [(rows[i], patches[j]) for j, i in enumerate(ok)]
        return out
    except (RuntimeError, ValueError):  # RuntimeError: SimpleITK
        pass
    out = _ScanCut()
    single = PatchCutter(image, prepare)
    for row in rows:
        try:
            out.cut.append((row, single.cut(row.point)))
        except (OutsideScanError, RuntimeError, ValueError) as exc:
            out.errors.append((row, f"row {row.row + 1}: {exc}"))
    return out


def _read_and_cut(uid: str, rows: Sequence[RowResult], scans: ScanFinder, prepare: PrepareParams) -> _ScanCut:
    t = time.perf_counter()
    try:
        image = read_scan(scans.find(uid))
    except (UnusableSeries, ScanError) as exc:
        return _ScanCut(read_error=exc)
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    out = cut_rows(image, rows, prepare)
    out.read_s, out.cut_s = read_s, time.perf_counter() - t
    return out


def scan_patches(
    groups: Mapping[str, Sequence[RowResult]],
    scans: ScanFinder,
    prepare: PrepareParams,
    fail: Callable[[RowResult, str], None],
    times: ExtractionTimes,
    prefetch: int = 1,
) -> Iterator[list[tuple[RowResult, np.ndarray]]]:
    """For each series (in ``groups`` order) whose scan can be read, yield its rows' ``(row, patch)``.

    A row whose series is unsafe, unknown or unreadable, or whose point lies outside the scan, is passed
    to ``fail(row, "row <n>: <reason>")`` instead (in the caller's thread, before that series' patches
    are yielded). Reading and cutting run in one background thread up to ``prefetch`` series ahead of the
    consumer (0: in the caller's thread), so at most ``prefetch + 1`` scans' patches are in memory; every
    scan's voxels are released once cut. ``times`` gets the reading and cutting time (of the extraction
    thread, not the time the consumer spends between scans).
    """
    items = list(groups.items())
    if prefetch <= 0:
        for uid, rows in items:
            yield from _deliver(_read_and_cut(uid, rows, scans, prepare), rows, fail, times)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="extract") as pool:
        ahead: list[tuple[Sequence[RowResult], Future[_ScanCut]]] = []
        todo = iter(items)
        try:
            while True:
                while len(ahead) <= prefetch:
                    nxt = next(todo, None)
                    if nxt is None:
                        break
                    ahead.append((nxt[1], pool.submit(_read_and_cut, nxt[0], nxt[1], scans, prepare)))
                if not ahead:
                    return
                rows, future = ahead.pop(0)
                yield from _deliver(future.result(), rows, fail, times)
        finally:
            for _, future in ahead:
                future.cancel()


def _deliver(
    done: _ScanCut, rows: Sequence[RowResult], fail: Callable[[RowResult, str], None], times: ExtractionTimes
) -> Iterator[list[tuple[RowResult, np.ndarray]]]:
    if done.read_error is not None:
        for row in rows:
            fail(row, f"row {row.row + 1}: {done.read_error}")
        return
    times.read_s += done.read_s
    times.cut_s += done.cut_s
    times.n_scans += 1
    for row, message in done.errors:
        fail(row, message)
    yield done.cut
