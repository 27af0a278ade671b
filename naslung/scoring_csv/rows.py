"""One result per input row of a nodule CSV: the row's inputs and the result cells written for it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RESULT_COLUMNS = (
    "probability",
    "raw_probability",
    "uncertainty",
    "refer",
    "label",
    "votes",
    "model_version",
    "status",
    "error",
)
"""Result columns appended to every input row, in this order: ``probability`` calibrated P(malignant),
``raw_probability`` the members' mean, ``uncertainty`` the members' standard deviation, ``refer`` 1 when it
exceeds ``ensemble.refer_spread`` (empty for a model that gives none of these), majority-vote ``label``."""
EXPLAIN_COLUMN = "explain_png"
"""Extra last column with ``explain``: the row's CAM overlay PNG, relative to the results CSV's folder."""


def result_columns(explain: bool) -> tuple[str, ...]:
    """The result columns of a run, with :data:`EXPLAIN_COLUMN` last when ``explain``."""
    return RESULT_COLUMNS + ((EXPLAIN_COLUMN,) if explain else ())


@dataclass
class RowResult:
    """One input row and its result. Every result cell is the text written to the results CSV.

    ``probability`` is ``repr`` of the float (round-trips exactly), ``label`` 1 malignant / 0 benign
    (majority vote), ``votes`` the members voting malignant; they stay as they are when a scored row
    later becomes an error row (e.g. its overlay failed).
    """

    row: int
    """0-based position in the input CSV (messages say ``row <row + 1>``)."""
    inputs: dict[str, str]
    """The row's input cells as written (column -> text; empty cells are "")."""
    point_xyz_mm: tuple[float, float, float]
    """World point (x, y, z) in mm; NaN where the CSV check found no finite number."""
    probability: str = ""
    raw_probability: str = ""
    uncertainty: str = ""
    refer: str = ""
    label: str = ""
    votes: str = ""
    model_version: str = ""
    status: str = "pending"
    """ok | error | pending (only in a checkpoint of an interrupted run, or while the row is in flight)."""
    error: str = ""
    explain_png: str = ""

    @property
    def seriesuid(self) -> str:
        return self.inputs.get("seriesuid", "").strip()

    @property
    def nodule_id(self) -> str:
        """The ``nodule_id`` cell, stripped ("" when the CSV has no such column)."""
        return self.inputs.get("nodule_id", "").strip()

    @property
    def point(self) -> np.ndarray:
        """:attr:`point_xyz_mm` as a float array (3,)."""
        return np.array(self.point_xyz_mm, dtype=float)

    def fail(self, message: str) -> None:
        """Make this an error row (the scores, if any, are kept; no PNG)."""
        self.status = "error"
        self.error = message
        self.explain_png = ""

    def take_scores(self, answer: Mapping[str, Any]) -> None:
        """Copy one per-patch answer (probability, label, votes, model_version; raw_probability,
        uncertainty, refer when given) into the row; the status stays ``pending`` until :meth:`succeed`.
        Raises KeyError/TypeError/ValueError for an answer without usable numbers."""
        self.probability = repr(float(answer["probability"]))
        raw, spread, refer = (answer.get(k) for k in ("raw_probability", "uncertainty", "refer"))
        self.raw_probability = "" if raw is None else repr(float(raw))
        self.uncertainty = "" if spread is None else repr(float(spread))
        self.refer = "" if refer is None else str(int(bool(refer)))
        self.label = str(int(answer["label"]))
        self.votes = str(int(answer["votes"]))
        version = answer.get("model_version", "")
        self.model_version = "" if version is None else str(version)
        self.status = "pending"

    def succeed(self) -> None:
        self.status = "ok"
        self.error = ""

    def restore(self, cells: Mapping[str, str]) -> None:
        """Take the result cells of an earlier run's output (resume)."""
        for column, text in cells.items():
            setattr(self, column, text)

    def cell(self, column: str) -> str:
        """The text of one result column."""
        return str(getattr(self, column))


def rows_of(records: Sequence[Mapping[Any, Any]], points_xyz_mm: np.ndarray) -> list[RowResult]:
    """One pending :class:`RowResult` per input record (column -> cell, as text); ``points_xyz_mm`` (n, 3)
    world (x, y, z) mm."""
    pts = np.asarray(points_xyz_mm, dtype=float).reshape(-1, 3)
    if len(pts) != len(records):
        raise ValueError(f"rows_of: {len(records)} records but {len(pts)} points")
    return [
        RowResult(i, {str(k): str(v) for k, v in rec.items()}, (float(p[0]), float(p[1]), float(p[2])))
        for i, (rec, p) in enumerate(zip(records, pts))
    ]


def take_answers(rows: Sequence[RowResult], answers: Sequence[Mapping[str, Any]]) -> None:
    """Copy one request's answers into its rows, in order; ValueError when the counts differ (then no
    row is touched)."""
    if len(answers) != len(rows):
        raise ValueError(f"{len(answers)} answers for {len(rows)} patches")
    for row, answer in zip(rows, answers):
        row.take_scores(answer)
