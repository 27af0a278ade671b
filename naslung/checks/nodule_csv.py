"""Great Expectations suite for hospital nodule CSVs (the input of ``naslung score``).

Expected columns: ``seriesuid`` and world coordinates ``coordX``, ``coordY``, ``coordZ`` in mm
(x, y, z, LUNA16 convention); optional ``nodule_id`` (row id; when present it must be unique). Header cells
are matched case- and space-insensitively with a small alias table (``SeriesInstanceUID``, ``series_uid``,
``x``, ``coord_x``, ``X (mm)`` ...: :mod:`naslung.scoring_csv.columns`). Any other column is carried
through to the results untouched, and every cell keeps its text as written.

The file is read as spreadsheets export it (:mod:`naslung.scoring_csv.csv_text`): UTF-8 with or without a
byte-order mark, else Windows-1252 / Latin-1 (with a warning); LF, CRLF or CR line endings; ``,`` ``;`` or
tab delimiters sniffed from the header; decimal commas in a ``;`` / tab file.

File-level problems (nothing can be scored): a 0-byte or unreadable file, no header, a missing required
column, two columns meaning the same required one (``x`` and ``coordX``). Row-level problems (that row is
an error row, the others go on): a malformed line (too many / too few fields, a quote that does not
balance: its file line and what is wrong), empty series uid, coordinates that are not finite numbers or
could be read two ways (a thousands separator or a decimal comma?), a duplicate ``nodule_id``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from naslung.checks.gx import run_expectations
from naslung.scoring_csv.columns import expected_text, match_columns
from naslung.scoring_csv.csv_text import CsvFileError, CsvText, decimal_mark, parse_coordinate, read_csv_text

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ")
COORD_COLUMNS = ("coordX", "coordY", "coordZ")
ID_COLUMN = "nodule_id"


@dataclass
class NoduleCsvCheck:
    """Result of checking one nodule CSV.

    ``frame``: the file as strings (every cell as written, NaN-free: empty cells are ""; the header as
    written), positional index 0..n-1. ``coords``: (n, 3) float world (x, y, z) mm, NaN where unusable.
    ``row_errors``: row position -> messages. ``file_error``: set when the whole file is unusable.
    ``columns``: canonical column -> the header cell holding it. ``seriesuids``: each row's series uid
    (stripped, from whichever column holds it). ``lines``: 1-based file line of each row. ``notes``: how
    the file was read, worth a warning (an encoding fallback). ``encoding``, ``delimiter``, ``decimal``:
    as detected.
    """

    path: Path
    frame: pd.DataFrame
    coords: np.ndarray
    row_errors: dict[int, list[str]] = field(default_factory=dict)
    file_error: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    seriesuids: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    encoding: str = ""
    delimiter: str = ""
    decimal: str = ""

    def error_text(self, row: int) -> str:
        return "; ".join(self.row_errors.get(row, []))


def read_nodule_csv(path: Path) -> pd.DataFrame:
    """The CSV as strings (see the module docstring; empty cells as ""); raises ValueError naming the file."""
    return _frame(read_csv_text(Path(path), REQUIRED_COLUMNS))


def _frame(text: CsvText) -> pd.DataFrame:
    frame = pd.DataFrame(text.rows, columns=text.header, dtype=str) if text.rows else pd.DataFrame(columns=text.header)
    return frame.astype(str).reset_index(drop=True)


def check_nodule_csv(path: Path) -> NoduleCsvCheck:
    """Read and validate a nodule CSV with Great Expectations (``result_format=COMPLETE`` row indices)."""
    import great_expectations as gx

    path = Path(path)
    try:
        text = read_csv_text(path, REQUIRED_COLUMNS)
    except CsvFileError as exc:
        return NoduleCsvCheck(path, pd.DataFrame(), np.zeros((0, 3)), {}, str(exc))
    for note in text.notes:
        logger.warning("%s", note)
    raw = _frame(text)
    n = len(raw)
    found, _ = match_columns(raw.columns)
    _, clashes = match_columns(text.header_cells)  # as written: a repeated "seriesuid" is a clash too

    def refused(message: str) -> NoduleCsvCheck:
        return NoduleCsvCheck(
            path, raw, np.full((n, 3), np.nan), {}, message, found, [""] * n, text.lines, text.notes,
            text.encoding, text.delimiter,
        )  # fmt: skip

    how = f"read as {text.encoding}, split at {text.delimiter_name}"
    if clashes:
        both = "; ".join(f"{c}: {cells}" for c, cells in clashes.items())
        return refused(f"{path}: ambiguous columns, more than one holds the same value ({both}); keep one of each")
    missing = [c for c in REQUIRED_COLUMNS if c not in found]
    if missing:
        return refused(
            f"{path}: missing required column(s) {missing}; found {list(raw.columns)} ({how}); "
            f"expected {expected_text()}"
        )
    at = {c: list(raw.columns).index(name) for c, name in found.items()}
    uids = [r[at["seriesuid"]].strip() for r in text.rows]
    coord_cells = {c: [r[at[c]] for r in text.rows] for c in COORD_COLUMNS}
    decimal = decimal_mark([v for cells in coord_cells.values() for v in cells], text.delimiter)
    checked = pd.DataFrame({"seriesuid": pd.Series(uids, dtype=object).replace("", None)})
    reasons: dict[tuple[int, str], str] = {}
    for col in COORD_COLUMNS:
        values: list[float | None] = []
        for i, cell in enumerate(coord_cells[col]):
            value, reason = parse_coordinate(cell, text.delimiter, decimal)
            values.append(value)
            if reason is not None:
                reasons[(i, col)] = reason
        checked[col] = pd.Series(values, dtype=object)
    expectations: list[Any] = [gx.expectations.ExpectColumnValuesToNotBeNull(column="seriesuid")]
    expectations += [gx.expectations.ExpectColumnValuesToNotBeNull(column=c) for c in COORD_COLUMNS]
    if ID_COLUMN in found:
        ids = pd.Series([r[at[ID_COLUMN]].strip() for r in text.rows], dtype=object).replace("", None)
        ids[list(text.malformed)] = None  # a malformed line's id takes no part in the uniqueness check
        checked[ID_COLUMN] = ids
        expectations += [
            gx.expectations.ExpectColumnValuesToNotBeNull(column=ID_COLUMN),
            gx.expectations.ExpectColumnValuesToBeUnique(column=ID_COLUMN),
        ]
    report = run_expectations("nodule_csv", checked, expectations)
    row_errors: dict[int, list[str]] = {}
    for failure in report.failures:
        column = str(failure.column)
        for row in failure.rows:
            name = found.get(column, column)
            if failure.expectation == "expect_column_values_to_be_unique":
                msg = f"duplicate {name} {raw.loc[row, name]!r}"
            elif column in COORD_COLUMNS:
                plain = f"{raw.loc[row, name]!r} is not a finite number (world mm)"
                msg = f"{name} {reasons.get((int(row), column)) or plain}"
            else:  # seriesuid, nodule_id
                msg = f"{name} is empty"
            row_errors.setdefault(int(row), []).append(msg)
        if not failure.rows:  # a table-level failure without rows: report it against the file
            return refused(f"{path}: {failure.describe()}")
    for row, message in text.malformed.items():
        row_errors[row] = [message]
    coords = np.array(checked[list(COORD_COLUMNS)].to_numpy(dtype=float, na_value=np.nan), dtype=float).reshape(n, 3)
    coords[list(text.malformed)] = np.nan
    return NoduleCsvCheck(
        path, raw, coords, row_errors, None, found, uids, text.lines, text.notes, text.encoding, text.delimiter,
        decimal,
    )  # fmt: skip
