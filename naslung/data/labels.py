"""Malignancy labels from reader scores, and readers for the annotation table formats.

Label rule (as in DeepLung / NAS-Lung): mean of the valid reader scores (integers 1-5; zeros, NaN and
missing readers ignored) > 3 -> malignant (1), < 3 -> benign (0), exactly 3 or no valid score -> excluded
(``None``).

Coordinates in every table are LUNA16 world coordinates in mm, (x, y, z) order.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

MALIGNANT_ABOVE = 3.0
"""Mean reader score strictly above this is malignant, strictly below is benign, equal is indeterminate."""

NORMALIZED_COLUMNS = [
    "nodule_id",
    "seriesuid",
    "coordX",
    "coordY",
    "coordZ",
    "diameter_mm",
    "reader_scores",
    "source_row",
]
"""Columns of :func:`read_annotations`' output (reader_scores: list[int]; source_row: 1-based data row)."""

REJECT_COLUMNS = ["source_row", "nodule_id", "seriesuid", "coordX", "coordY", "coordZ", "reason"]


class AnnotationError(ValueError):
    """An annotation table cannot be read at all (unknown format, missing columns); names the file."""


def valid_scores(scores: Iterable[Any]) -> list[int]:
    """Reader scores in 1..5 as ints; zeros, NaN, None, blanks and out-of-range values are dropped."""
    out: list[int] = []
    for s in scores:
        if s is None:
            continue
        try:
            f = float(s)
        except (TypeError, ValueError):
            continue
        if math.isnan(f) or f < 1 or f > 5:
            continue
        out.append(int(round(f)))
    return out


def mean_score(scores: Sequence[Any]) -> float | None:
    """Mean of the valid reader scores (see :func:`valid_scores`), ``None`` when there is none."""
    v = valid_scores(scores)
    return sum(v) / len(v) if v else None


def label_from_scores(scores: Sequence[Any]) -> int | None:
    """1 (malignant) if mean valid score > 3, 0 (benign) if < 3, ``None`` if exactly 3 or unrated."""
    m = mean_score(scores)
    if m is None or m == MALIGNANT_ABOVE:
        return None
    return 1 if m > MALIGNANT_ABOVE else 0


def exclusion_reason(scores: Sequence[Any]) -> str | None:
    """``"unrated"`` (no valid score), ``"indeterminate"`` (mean exactly 3) or ``None`` (labelled)."""
    m = mean_score(scores)
    if m is None:
        return "unrated"
    if m == MALIGNANT_ABOVE:
        return "indeterminate"
    return None


_SPLIT = re.compile(r"[\s;,]+")


def parse_reader_scores(value: Any) -> list[int]:
    """Reader scores from ``"[4, 2, 4]"``, ``"4;2;4"``, ``"4 2 4"``, a list/tuple, or a single number.

    Invalid entries (0, NaN, text, out of 1..5) are dropped; empty / NaN / None gives ``[]``.
    """
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return valid_scores(value)
    if isinstance(value, float) and math.isnan(value):
        return []
    if isinstance(value, (int, float)):
        return valid_scores([value])
    text = str(value).strip().strip("[]()").strip()
    if not text:
        return []
    return valid_scores(t for t in _SPLIT.split(text) if t)


# --------------------------------------------------------------------------------------------------
# Annotation tables

SCORE_COLUMNS = ("reader_scores", "mal_details", "malignancy_ratings", "malignancy_scores", "malignancy", "scores")
"""Column names (first found wins) that hold per-reader scores in LUNA16-style tables."""

LABEL_COLUMNS = ("malignant", "label", "mal_bool")
"""Column names holding a ready-made 0/1 label, used only when a row carries no reader scores."""

_COORDS = ("coordX", "coordY", "coordZ")


def detect_format(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``"deeplung_readers"`` (scores as extra fields after ``malignant``), ``"dlwpt"`` (``mal_details``)
    or ``"luna16"`` (annotations.csv, optionally with a score or label column)."""
    cols = [c.strip() for c in header]
    if "malignant" in cols and cols[-1] == "malignant" and any(len(r) > len(cols) for r in rows):
        return "deeplung_readers"
    if "mal_details" in cols:
        return "dlwpt"
    return "luna16"


def _to_float(value: Any) -> float:
    try:
        return float(str(value).strip())
    except (TypeError, ValueError):
        return float("nan")


def _to_label(value: Any) -> int | None:
    text = str(value).strip().lower()
    if text in ("1", "1.0", "true", "malignant"):
        return 1
    if text in ("0", "0.0", "false", "benign"):
        return 0
    return None


def read_annotations(path: str | Path) -> pd.DataFrame:
    """Read an annotation table in any supported format into one normalized frame.

    Formats (detected from the header): LUNA16 ``annotations.csv`` plus a score column (one of
    :data:`SCORE_COLUMNS`, e.g. ``"4;2;4"``) or a label column; DeepLung's per-reader table
    (``seriesuid,coordX,coordY,coordZ,diameter_mm,malignant`` then a variable number of reader scores per
    row); dlwpt's ``annotations_with_malignancy.csv`` (``mal_details`` = ``"[4, 2, 4]"``).

    Returns one row per data row, columns :data:`NORMALIZED_COLUMNS` plus ``given_label`` (the table's own
    0/1 label or ``<NA>``) and ``error`` ("" for a usable row, else e.g. ``"bad coordinates: coordX='abc'"``).
    Coordinates are world mm (x, y, z); ``source_row`` is the 1-based data row (header excluded).
    ``nodule_id`` is the table's ``nodule_id`` column when present, else ``<seriesuid>-<k>`` with k the
    nodule's ordinal within its series in table order. Bad rows are flagged, never raised.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation table not found")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        all_rows = list(csv.reader(fh))
    if not all_rows:
        raise AnnotationError(f"{path}: empty annotation table")
    header = [c.strip() for c in all_rows[0]]
    body = [(i, r) for i, r in enumerate(all_rows[1:], 1) if any(c.strip() for c in r)]
    missing = [c for c in ("seriesuid", *_COORDS) if c not in header]
    if missing:
        raise AnnotationError(f"{path}: missing required column(s) {missing} (header: {header})")
    fmt = detect_format(header, [r for _, r in body])
    col = {c: k for k, c in enumerate(header)}
    score_col = next((c for c in SCORE_COLUMNS if c in col), None)
    label_col = next((c for c in LABEL_COLUMNS if c in col), None)

    records: list[dict[str, Any]] = []
    per_series: dict[str, int] = {}
    for source_row, r in body:

        def get(name: str) -> str:
            k = col.get(name)
            return r[k].strip() if k is not None and k < len(r) else ""  # noqa: B023

        uid = get("seriesuid")
        coords = {c: get(c) for c in _COORDS}
        values = {c: _to_float(v) for c, v in coords.items()}
        errors = []
        if not uid:
            errors.append("missing series uid")
        bad = [f"{c}={coords[c]!r}" for c in _COORDS if not math.isfinite(values[c])]
        if bad:
            errors.append("bad coordinates: " + ", ".join(bad))
        diam_text = get("diameter_mm")
        diameter = _to_float(diam_text) if diam_text else float("nan")
        if diam_text and not math.isfinite(diameter):
            errors.append(f"bad diameter: diameter_mm={diam_text!r}")
        if fmt == "deeplung_readers":
            scores = valid_scores(r[len(header) :])
        elif score_col is not None:
            scores = parse_reader_scores(get(score_col))
        else:
            scores = []
        given = _to_label(get(label_col)) if label_col else None
        if "nodule_id" in col and get("nodule_id"):
            nid = get("nodule_id")
        else:
            k = per_series.get(uid, 0)
            per_series[uid] = k + 1
            nid = f"{uid or 'row'}-{k if uid else source_row}"
        records.append(
            {
                "nodule_id": nid,
                "seriesuid": uid,
                **values,
                "diameter_mm": diameter,
                "reader_scores": scores,
                "source_row": source_row,
                "given_label": given,
                "error": "; ".join(errors),
            }
        )
    frame = pd.DataFrame.from_records(records, columns=[*NORMALIZED_COLUMNS, "given_label", "error"])
    frame["given_label"] = frame["given_label"].astype("Int64")
    frame["source_row"] = frame["source_row"].astype("int64")
    frame.attrs["format"] = fmt
    frame.attrs["path"] = str(path)
    return frame


def row_label(scores: Sequence[int], given_label: Any = None) -> tuple[int | None, str | None]:
    """(label, exclusion reason) for one nodule: the reader-score rule when there are scores, else the
    table's own 0/1 label, else ``(None, "unrated")``."""
    if valid_scores(scores):
        return label_from_scores(scores), exclusion_reason(scores)
    if given_label is not None and not pd.isna(given_label):
        return int(given_label), None
    return None, "unrated"


def label_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Counts of malignant / benign / indeterminate / unrated rows of a :func:`read_annotations` frame."""
    out = {"malignant": 0, "benign": 0, "indeterminate": 0, "unrated": 0}
    for scores, given in zip(frame["reader_scores"], frame["given_label"]):
        label, reason = row_label(scores, given)
        key = reason if label is None else ("malignant" if label == 1 else "benign")
        out[str(key)] += 1
    return out
