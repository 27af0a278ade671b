"""The rows a report is built from: read back from a results CSV of ``naslung score``.

Reports are built after scoring, from the results file alone (plus the scans' headers), so they do not
depend on the scoring pipeline's internals. A result column ``col`` is read from ``result_<col>`` when
the results file has that column (the scorer renames a result column whose name the input already
used), else from ``col``; the input columns (series uid, world point, nodule id) are found under any
header the scorer accepts (:func:`naslung.scoring_csv.columns.match_columns`: ``SeriesInstanceUID``,
``X (mm)`` ...); a missing column reads as empty cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from naslung.scoring_csv.columns import match_columns
from naslung.scoring_csv.rows import EXPLAIN_COLUMN

RESULT_FIELDS = (
    "probability",
    "raw_probability",
    "uncertainty",
    "refer",
    "label",
    "votes",
    "model_version",
    "model_name",
    "status",
    "error",
    EXPLAIN_COLUMN,
)
"""The result columns a report uses (a subset of :data:`naslung.scoring_csv.rows.RESULT_COLUMNS`)."""


def _float(text: str) -> float | None:
    """The number a cell holds, else None; a decimal comma (``-12,5``, as a ``;`` spreadsheet export
    writes it, which the scorer accepts) reads as a decimal point."""
    text = text.strip()
    if text.count(",") == 1 and "." not in text:
        text = text.replace(",", ".")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class ReportRow:
    """One row of a results CSV, as text (the cells as written), with typed views of the numbers."""

    row: int
    """0-based position in the input CSV (messages and tables say ``row + 1``)."""
    seriesuid: str
    nodule_id: str
    coords: tuple[str, str, str]
    """The ``coordX``, ``coordY``, ``coordZ`` cells as written: world (x, y, z) in mm."""
    probability: str = ""
    raw_probability: str = ""
    uncertainty: str = ""
    refer: str = ""
    label: str = ""
    votes: str = ""
    model_version: str = ""
    model_name: str = ""
    """The registered model that scored the row, when the results file has the audit column (else "")."""
    status: str = ""
    error: str = ""
    explain_png: str = ""
    """The row's CAM overlay PNG, relative to the results CSV's folder ("" when none)."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def point_xyz_mm(self) -> tuple[float, float, float] | None:
        """World point (x, y, z) in mm, LPS patient coordinates (DICOM and LUNA16/SimpleITK alike);
        None when a coordinate is not a finite number."""
        values = [_float(c) for c in self.coords]
        if any(v is None for v in values):
            return None
        x, y, z = (float(v) for v in values if v is not None)
        return (x, y, z)

    @property
    def p_malignant(self) -> float | None:
        """Calibrated P(malignant) in [0, 1], or None."""
        return _float(self.probability)

    @property
    def name(self) -> str:
        """``nodule <id>``, or ``row <n>`` when the row has no nodule id."""
        return f"nodule {self.nodule_id}" if self.nodule_id else f"row {self.row + 1}"


def read_results(results_csv: Path) -> list[ReportRow]:
    """The rows of a results CSV, in file order (FileNotFoundError when it does not exist)."""
    table = pd.read_csv(Path(results_csv), dtype=str, keep_default_na=False, encoding="utf-8-sig")

    def cells(col: str | None) -> list[str]:
        return [str(v) for v in table[col]] if col is not None and col in table.columns else [""] * len(table)

    found, _clashes = match_columns([str(c) for c in table.columns])
    inputs = {c: cells(found.get(c)) for c in ("seriesuid", "nodule_id", "coordX", "coordY", "coordZ")}
    results = {c: cells(f"result_{c}" if f"result_{c}" in table.columns else c) for c in RESULT_FIELDS}
    return [
        ReportRow(
            row=i,
            seriesuid=inputs["seriesuid"][i].strip(),
            nodule_id=inputs["nodule_id"][i].strip(),
            coords=(inputs["coordX"][i], inputs["coordY"][i], inputs["coordZ"][i]),
            **{c: results[c][i] for c in RESULT_FIELDS},
        )
        for i in range(len(table))
    ]
