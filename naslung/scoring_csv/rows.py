"""One result per input row of a nodule CSV: the row's inputs and the result cells written for it."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from naslung.scoring import quantise_uint8
from naslung.scoring_csv.columns import canonical_cell

AUDIT_COLUMNS = (
    "request_id",
    "input_sha256",
    "patch_sha256",
    "model_name",
    "model_alias",
    "data_revision",
    "git_commit",
    "scored_at",
)
"""The audit trail of every row (see :class:`RowResult` for each cell): ``request_id`` the scoring run's id
and the row (``<run id>/<1-based row>``), ``input_sha256`` (:func:`input_sha256`), ``patch_sha256``
(:func:`patch_sha256`; empty when no patch was cut), the model that scored the row (``model_name``,
``model_alias``, ``data_revision``, ``git_commit``, as the answers carry them), ``scored_at`` (UTC ISO 8601).
A resumed row keeps the trail of the run that scored it."""

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
    *AUDIT_COLUMNS,
)
"""Result columns appended to every input row, in this order: ``probability`` calibrated P(malignant),
``raw_probability`` the members' mean, ``uncertainty`` the members' standard deviation, ``refer`` 1 when it
exceeds ``ensemble.refer_spread`` (empty for a model that gives none of these), majority-vote ``label``,
``votes``, ``model_version``, ``status``, ``error``, then the audit trail :data:`AUDIT_COLUMNS`."""
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
    request_id: str = ""
    """``<run id>/<row + 1>``: the run (:func:`new_run_id`) that gave the row its result, and the row."""
    input_sha256: str = ""
    """:func:`input_sha256` of :attr:`inputs` (set for every row, error rows too)."""
    patch_sha256: str = ""
    """:func:`patch_sha256` of the patch cut for the row ("" when none was cut)."""
    model_name: str = ""
    model_alias: str = ""
    data_revision: str = ""
    git_commit: str = ""
    """The model facts of the answer (registered name, alias, data hash at registration, git commit; ""
    where the answer has none)."""
    scored_at: str = ""
    """UTC ISO 8601 time (ms, ``Z``) the row got its result (answer taken in, or the row failed)."""
    explain_png: str = ""

    @property
    def seriesuid(self) -> str:
        """The series uid cell, stripped, from the column holding it (``seriesuid`` or an alias such as
        ``SeriesInstanceUID``, :mod:`naslung.scoring_csv.columns`)."""
        return canonical_cell(self.inputs, "seriesuid")

    @property
    def nodule_id(self) -> str:
        """The ``nodule_id`` cell, stripped ("" when the CSV has no such column)."""
        return canonical_cell(self.inputs, "nodule_id")

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
        for key in ("model_name", "model_alias", "data_revision", "git_commit"):
            value = answer.get(key)
            setattr(self, key, "" if value is None else str(value))
        self.status = "pending"

    def stamp(self, run_id: str) -> None:
        """Record that run ``run_id`` gives the row its result now (:attr:`request_id`, :attr:`scored_at`)."""
        self.request_id = f"{run_id}/{self.row + 1}"
        self.scored_at = utc_now()

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


def utc_now() -> str:
    """Now as UTC ISO 8601 with milliseconds and ``Z`` (``2026-01-31T12:00:00.123Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_run_id() -> str:
    """A fresh scoring-run id: 32 lower-case hex digits (uuid4)."""
    return uuid.uuid4().hex


def input_sha256(inputs: Mapping[str, str]) -> str:
    """sha256 hex of one input row's cells as written: the UTF-8 bytes of the compact JSON array of
    ``[column, cell]`` pairs in input column order (``json.dumps(..., ensure_ascii=False,
    separators=(",", ":"))``; cells are the text read from the CSV, "" for an empty cell)."""
    canonical = json.dumps([[str(k), str(v)] for k, v in inputs.items()], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def patch_sha256(patch: np.ndarray) -> str:
    """sha256 hex of a patch's uint8 wire form: :func:`naslung.scoring.quantise_uint8` of the (32, 32, 32)
    [0, 1] float32 patch, (z, y, x), C order, 32768 bytes — the bytes TorchServe scores with
    ``serve.wire: uint8`` (the default; with ``float32`` it is still the hash of this form)."""
    return wire_sha256(quantise_uint8(np.asarray(patch)[None]))[0]


def wire_sha256(wire: np.ndarray) -> list[str]:
    """:func:`patch_sha256` of each patch of an already quantised uint8 batch (n, 32, 32, 32), z-y-x."""
    if wire.dtype != np.uint8:
        raise TypeError(f"wire_sha256: expected the uint8 wire form, got {wire.dtype}")
    return [hashlib.sha256(np.ascontiguousarray(q).tobytes()).hexdigest() for q in wire]


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
