"""Patches of the rows to score: one scan read at a time, its nodules cut with the data spine's cutter.

Patches are (32, 32, 32) float32 in [0, 1], numpy order (z, y, x), 1 mm voxels, centred on each row's
world point (x, y, z) mm (:class:`naslung.data.patches.PatchCutter`, the same code as training).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from naslung.data.patches import OutsideScanError, PatchCutter
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


def scan_patches(
    groups: Mapping[str, Sequence[RowResult]],
    scans: ScanFinder,
    prepare: PrepareParams,
    fail: Callable[[RowResult, str], None],
    times: ExtractionTimes,
) -> Iterator[list[tuple[RowResult, np.ndarray]]]:
    """For each series (in ``groups`` order) whose scan can be read, yield its rows' ``(row, patch)``.

    A row whose series is unsafe, unknown or unreadable, or whose point lies outside the scan, is passed
    to ``fail(row, "row <n>: <reason>")`` instead. Only one scan is in memory at a time; ``times`` gets
    the reading and cutting time (not the time the consumer spends between scans).
    """
    for uid, rows in groups.items():
        t = time.perf_counter()
        try:
            image = read_scan(scans.find(uid))
        except (UnusableSeries, ScanError) as exc:
            for row in rows:
                fail(row, f"row {row.row + 1}: {exc}")
            continue
        times.read_s += time.perf_counter() - t
        times.n_scans += 1
        t = time.perf_counter()
        cutter = PatchCutter(image, prepare)
        cut: list[tuple[RowResult, np.ndarray]] = []
        for row in rows:
            try:
                cut.append((row, cutter.cut(row.point)))
            except (OutsideScanError, RuntimeError, ValueError) as exc:  # RuntimeError: SimpleITK
                fail(row, f"row {row.row + 1}: {exc}")
        times.cut_s += time.perf_counter() - t
        del image, cutter
        yield cut
