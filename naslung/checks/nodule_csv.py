"""Great Expectations suite for hospital nodule CSVs (the input of ``naslung score``).

Expected columns: ``seriesuid`` and world coordinates ``coordX``, ``coordY``, ``coordZ`` in mm
(x, y, z, LUNA16 convention); optional ``nodule_id`` (row id; when present it must be unique). Any other
column is carried through to the results untouched.

File-level problems (nothing can be scored): a 0-byte or unreadable file, no header, a missing
required column. Row-level problems (that row is an error row, the others go on): empty series uid,
coordinates that are not finite numbers, a duplicate ``nodule_id``. The file is read as text with
``utf-8-sig`` so a byte-order mark does not corrupt the first column name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from naslung.checks.gx import missing_columns, run_expectations

REQUIRED_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ")
COORD_COLUMNS = ("coordX", "coordY", "coordZ")
ID_COLUMN = "nodule_id"


@dataclass
class NoduleCsvCheck:
    """Result of checking one nodule CSV.

    ``frame``: the file as strings (every cell as written, NaN-free: empty cells are ""), positional
    index 0..n-1. ``coords``: (n, 3) float world (x, y, z) mm, NaN where unusable. ``row_errors``: row
    position -> messages. ``file_error``: set when the whole file is unusable.
    """

    path: Path
    frame: pd.DataFrame
    coords: np.ndarray
    row_errors: dict[int, list[str]] = field(default_factory=dict)
    file_error: str | None = None

    def error_text(self, row: int) -> str:
        return "; ".join(self.row_errors.get(row, []))


def read_nodule_csv(path: Path) -> pd.DataFrame:
    """The CSV as strings (BOM stripped, empty cells as ""); raises ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), expected a header row {','.join(REQUIRED_COLUMNS)}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable CSV ({type(exc).__name__}: {str(exc).strip()[:200]})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.reset_index(drop=True)


def check_nodule_csv(path: Path) -> NoduleCsvCheck:
    """Read and validate a nodule CSV with Great Expectations (``result_format=COMPLETE`` row indices)."""
    import great_expectations as gx

    path = Path(path)
    try:
        raw = read_nodule_csv(path)
    except ValueError as exc:
        return NoduleCsvCheck(path, pd.DataFrame(), np.zeros((0, 3)), {}, str(exc))
    n = len(raw)
    missing = missing_columns(raw, REQUIRED_COLUMNS)
    if missing:
        return NoduleCsvCheck(
            path,
            raw,
            np.full((n, 3), np.nan),
            {},
            f"{path}: missing required column(s) {missing}; found {list(raw.columns)}",
        )
    checked = pd.DataFrame({"seriesuid": raw["seriesuid"].str.strip().replace("", None)})
    for col in COORD_COLUMNS:
        values = pd.to_numeric(raw[col].str.strip(), errors="coerce").astype(float)
        checked[col] = values.where(np.isfinite(values), None)
    expectations = [gx.expectations.ExpectColumnValuesToNotBeNull(column="seriesuid")]
    expectations += [gx.expectations.ExpectColumnValuesToNotBeNull(column=c) for c in COORD_COLUMNS]
    if ID_COLUMN in raw.columns:
        checked[ID_COLUMN] = raw[ID_COLUMN]
        expectations += [
            gx.expectations.ExpectColumnValuesToNotBeNull(column=ID_COLUMN),
            gx.expectations.ExpectColumnValuesToBeUnique(column=ID_COLUMN),
        ]
        checked[ID_COLUMN] = checked[ID_COLUMN].replace("", None)
    report = run_expectations("nodule_csv", checked, expectations)
    row_errors: dict[int, list[str]] = {}
    for failure in report.failures:
        col = failure.column
        for row in failure.rows:
            if failure.expectation == "expect_column_values_to_be_unique":
                msg = f"duplicate {col} {raw.loc[row, col]!r}"
            elif col in COORD_COLUMNS:
                msg = f"{col} {raw.loc[row, col]!r} is not a finite number (world mm)"
            elif col == "seriesuid":
                msg = "seriesuid is empty"
            else:
                msg = f"{col} is empty"
            row_errors.setdefault(int(row), []).append(msg)
        if not failure.rows:  # a table-level failure without rows: report it against the file
            return NoduleCsvCheck(path, raw, np.full((n, 3), np.nan), row_errors, f"{path}: {failure.describe()}")
    coords = checked[list(COORD_COLUMNS)].astype(float).to_numpy()
    return NoduleCsvCheck(path, raw, coords, row_errors, None)
