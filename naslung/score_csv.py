"""Batch scoring of a hospital nodule CSV (``naslung score``): a pipeline over one result per row.

Input CSV: ``seriesuid``, ``coordX``, ``coordY``, ``coordZ`` (world mm, x/y/z) and optionally
``nodule_id``; other columns are carried through. Stages (:mod:`naslung.scoring_csv`):

1. read and check the file (:mod:`naslung.checks.nodule_csv`, Great Expectations): file-level errors
   stop the file, row-level errors make error rows; one :class:`RowResult` per input row;
2. resume: rows already ``ok`` in an existing output (same input values) are not scored again;
3. resolve each series to ``<scans>/**/<seriesuid>.mhd`` — only inside ``--scans``; a uid holding a
   path separator or ``..`` (an escape attempt) or an absolute path is an error row;
4. group rows by series, read each scan once, cut 32^3 1 mm windowed patches with the data spine's
   :class:`naslung.data.patches.PatchCutter` (a point outside the scan is an error row);
5. score the patches in requests of ``serve.request_patches`` with ``serve.concurrency`` requests in
   flight through an injected scorer ``(patches) -> answers`` (TorchServe:
   :class:`naslung.serving_client.ServingClient`); a failed request makes error rows of its rows only;
6. write every input row exactly once, in input order, followed by ``probability``, ``label``,
   ``votes``, ``model_version``, ``status`` (ok / error; ``pending`` only in a checkpoint of an
   interrupted run) and ``error``. The output is rewritten atomically every few seconds, so a killed
   run can resume.

With ``explain`` (``naslung score --explain``) the patches go to TorchServe's Explanations API
(``/explanations/<model>``, answers carry CAMs, see :mod:`naslung.scoring`) and every ok row gets a PNG
overlay (axial / coronal / sagittal views of the patch with the ensemble's CAM, P(malignant) in the
title) in ``<out stem>_explain/row<row>_<nodule_id or row>.png`` beside the results CSV; the extra
column ``explain_png`` holds its path relative to the results CSV's folder (empty for error rows). A row
whose answer has no usable map, or whose PNG cannot be written, becomes an error row saying so (its
probability is kept). On resume, an ok row is kept only when its PNG still exists.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from naslung.checks.nodule_csv import check_nodule_csv
from naslung.params import Params, PrepareParams, ServeParams
from naslung.scoring_csv.extract import ExtractionTimes, group_by_series, scan_patches
from naslung.scoring_csv.overlays import write_overlay
from naslung.scoring_csv.requests import Request, RequestPool, Scorer
from naslung.scoring_csv.results_file import resumable_rows, write_results
from naslung.scoring_csv.rows import EXPLAIN_COLUMN, RESULT_COLUMNS, RowResult, result_columns, rows_of, take_answers
from naslung.scoring_csv.scans import ScanFinder, index_scans, unsafe_uid_reason
from naslung.scoring_csv.summary import ScoreSummary
from naslung.serving_client import ServingClient, ServingError

__all__ = [
    "CHECKPOINT_EVERY_S",
    "EXPLAIN_COLUMN",
    "RESULT_COLUMNS",
    "RowResult",
    "ScoreSummary",
    "ServingClient",
    "ServingError",
    "index_scans",
    "score_csv",
    "score_with_server",
    "server_client",
    "unsafe_uid_reason",
]

CHECKPOINT_EVERY_S = 5.0
"""Least time (s) between two checkpoint writes of the results CSV."""


class _Results:
    """The rows of one run and their file: error rows, answers taken in, checkpoints."""

    def __init__(
        self, frame: pd.DataFrame, rows: list[RowResult], out: Path, columns: Sequence[str], summary: ScoreSummary
    ) -> None:
        self.frame, self.rows, self.out, self.columns, self.summary = frame, rows, out, columns, summary
        self.explain = EXPLAIN_COLUMN in columns
        self.png_dir = out.parent / f"{out.stem}_explain"
        self.bar: Any = None
        self.last_write = time.monotonic()

    def fail(self, row: RowResult, message: str) -> None:
        row.fail(message)
        self.summary.errors[row.row] = message

    def fail_one(self, row: RowResult, message: str) -> None:
        """:meth:`fail` during extraction: the row is done."""
        self.fail(row, message)
        self.bar.update(1)

    def answered(self, request: Request) -> None:
        """Take one finished request's answers into its rows (and draw overlays); checkpoint now and then."""
        error = request.error
        if error is None:
            self.summary.request_s += request.seconds
            try:
                take_answers(request.rows, request.answers)
            except Exception as exc:
                error = exc
        if error is not None:
            for row in request.rows:
                self.fail(row, f"row {row.row + 1}: scoring failed: {type(error).__name__}: {error}")
        else:
            t = time.perf_counter()
            for row, patch, answer in zip(request.rows, request.patches, request.answers):
                if self.explain:
                    try:
                        row.explain_png = write_overlay(self.png_dir, row, patch, answer)
                    except Exception as exc:
                        message = f"scored, but no explanation overlay: {type(exc).__name__}: {exc}"
                        self.fail(row, f"row {row.row + 1}: {message}")
                        continue
                row.succeed()
            if self.explain:
                self.summary.render_s += time.perf_counter() - t
        self.bar.update(len(request.rows))
        if time.monotonic() - self.last_write > CHECKPOINT_EVERY_S:
            self.write()
            self.last_write = time.monotonic()

    def write(self) -> None:
        write_results(self.out, self.frame, self.rows, self.columns)


def score_csv(
    csv_path: Path,
    scans_dir: Path,
    out_path: Path,
    client: ServingClient | Any,
    prepare: PrepareParams,
    serve: ServeParams,
    progress: bool = True,
    predict: Scorer | None = None,
    explain: bool = False,
    explain_predict: Scorer | None = None,
) -> ScoreSummary:
    """Score ``csv_path``; write ``out_path`` (every input row, in order, plus the result columns).

    The scorer maps patches (n, 32, 32, 32) float32 in [0, 1], (z, y, x), to one answer dict per patch
    (an exception fails that request's rows): ``predict`` when given (e.g. an in-process scorer), else
    ``client.predict``; with ``explain``, ``explain_predict`` or else ``client.explain``, whose answers
    must carry an encoded ``cam`` per patch, and each ok row gets a PNG overlay and an ``explain_png``
    column (see the module docstring). Returns a :class:`ScoreSummary`; a file-level problem is
    reported in ``file_error`` (and, when the rows could be read, every row is written as an error row).
    Raises FileNotFoundError when ``scans_dir`` is not a folder.
    """
    t0 = time.perf_counter()
    csv_path, scans_dir, out_path = Path(csv_path), Path(scans_dir), Path(out_path)
    summary = ScoreSummary(csv=csv_path, out=out_path)
    check = check_nodule_csv(csv_path)
    rows = rows_of(check.frame.to_dict("records"), check.coords)
    summary.n_rows = len(rows)
    columns = result_columns(explain)
    results = _Results(check.frame, rows, out_path, columns, summary)

    if check.file_error is not None:
        summary.file_error = check.file_error
        if rows:
            for row in rows:
                results.fail(row, check.file_error)
            results.write()
            summary.n_error = len(rows)
        else:
            summary.out = None
        summary.wall_s = time.perf_counter() - t0
        return summary
    if not scans_dir.is_dir():
        raise FileNotFoundError(f"--scans folder not found: {scans_dir}")

    done = resumable_rows(out_path, check.frame, columns)
    for i, cells in done.items():
        rows[i].restore(cells)
    summary.n_resumed = len(done)
    for i, messages in check.row_errors.items():
        if i not in done:
            results.fail(rows[i], f"row {i + 1}: " + "; ".join(messages))
    scans = ScanFinder(scans_dir)
    todo = [row for row in rows if row.row not in done and row.row not in check.row_errors]
    scorer = (explain_predict or client.explain) if explain else (predict or client.predict)

    times = ExtractionTimes()
    bar = tqdm(total=len(rows), unit="rows", desc=f"score {csv_path.name}", disable=not progress, smoothing=0.1)
    results.bar = bar
    bar.update(len(rows) - len(todo))
    with RequestPool(scorer, serve.request_patches, serve.concurrency, results.answered) as pool:
        for patches in scan_patches(group_by_series(todo), scans, prepare, results.fail_one, times):
            pool.add(patches)
            pool.send()
        pool.finish()
    bar.close()
    results.write()
    summary.read_s, summary.cut_s, summary.n_scans = times.read_s, times.cut_s, times.n_scans
    summary.n_sent, summary.wait_s = pool.n_sent, pool.wait_s
    summary.n_ok = sum(1 for row in rows if row.status == "ok")
    summary.n_error = sum(1 for row in rows if row.status == "error")
    summary.wall_s = time.perf_counter() - t0
    return summary


def server_client(params: Params) -> ServingClient:
    """Client of the TorchServe that ``naslung serve start`` runs for ``params``: inference URL, model
    name, the inference key from ``<artifacts>/serve/key_file.json``, ``serve.response_timeout_s`` and
    one connection per request in flight (``serve.concurrency``), patches sent as ``serve.wire`` (uint8:
    32 KiB per patch)."""
    from naslung.torchserve import model_name_of, read_inference_key, serve_dir

    s = params.serve
    return ServingClient(
        f"http://{s.host}:{s.inference_port}",
        model_name_of(params),
        read_inference_key(serve_dir(params) / "key_file.json"),
        timeout_s=s.response_timeout_s,
        max_connections=max(1, int(s.concurrency)),
        wire=s.wire,
    )


def score_with_server(
    params: Params, csv_path: Path, scans_dir: Path, out_path: Path, progress: bool = True, explain: bool = False
) -> ScoreSummary:
    """:func:`score_csv` through the running TorchServe of ``params`` (see :func:`server_client`)."""
    with server_client(params) as client:
        return score_csv(
            csv_path, scans_dir, out_path, client, params.prepare, params.serve, progress=progress, explain=explain
        )
