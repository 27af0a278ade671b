"""The results CSV: every input row once, in input order, its input cells untouched, then the result columns.

A result column is named ``result_<col>`` when the input already has a column ``col``. The file is
written atomically (a ``.tmp`` beside it, then ``os.replace``), so a checkpoint of a killed run is
always a whole file; a later run resumes it (:func:`resumable_rows`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from naslung.scoring_csv.rows import EXPLAIN_COLUMN, RESULT_COLUMNS, RowResult, input_sha256


def result_names(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, str]:
    """Output column name of each result column (``result_<col>`` when the input already has ``col``)."""
    return {col: col if col not in frame.columns else f"result_{col}" for col in columns}


def resumable_rows(
    out: Path, frame: pd.DataFrame, columns: Sequence[str] = RESULT_COLUMNS
) -> dict[int, dict[str, str]]:
    """Result cells (column -> text) of the rows of an existing output that are ``ok`` and whose input
    values equal the current file's (``frame``, read as text), by 0-based row; nothing when the output is
    missing, empty, unreadable, or of another length or other columns (so an output written before the
    audit columns existed is scored again in full). A row's ``input_sha256`` must also equal the hash of
    the current input row (:func:`naslung.scoring_csv.rows.input_sha256`); a resumed row keeps the audit
    trail (request id, model, scored-at) of the run that scored it.

    With the ``explain_png`` column, a row also needs its PNG (relative to the output's folder) on disk."""
    if not out.is_file() or out.stat().st_size == 0:
        return {}
    try:
        old = pd.read_csv(out, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return {}
    cols = list(frame.columns)
    names = result_names(frame, columns)
    if len(old) != len(frame) or not set(cols + list(names.values())) <= set(old.columns):
        return {}
    same = (old[cols].to_numpy() == frame[cols].to_numpy()).all(axis=1)
    ok = same & (old[names["status"]].to_numpy() == "ok")
    if "input_sha256" in names:  # the audit trail must vouch for the same input row
        hashes = [input_sha256({str(k): str(v) for k, v in rec.items()}) for rec in frame[cols].to_dict("records")]
        ok &= old[names["input_sha256"]].to_numpy() == np.array(hashes, dtype=object)
    if EXPLAIN_COLUMN in names:
        pngs = old[names[EXPLAIN_COLUMN]].to_numpy()
        ok &= np.array([bool(p) and (out.parent / p).is_file() for p in pngs], dtype=bool)
    # read with dtype=str and keep_default_na=False, so every cell is a str (pandas-stubs: any Scalar)
    return {int(i): {c: cast(str, old.at[i, n]) for c, n in names.items()} for i in np.nonzero(ok)[0]}


def write_results(out: Path, frame: pd.DataFrame, rows: Sequence[RowResult], columns: Sequence[str]) -> None:
    """Write ``frame`` (the input, as text; row i is ``rows[i]``) plus the result ``columns`` to ``out``."""
    table = frame.copy()
    for col, name in result_names(frame, columns).items():
        table[name] = [row.cell(col) for row in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, out)
