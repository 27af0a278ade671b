"""Batch scoring of a hospital nodule CSV (``naslung score``): a pipeline over one result per row.

Input CSV: ``seriesuid``, ``coordX``, ``coordY``, ``coordZ`` (world mm, x/y/z) and optionally
``nodule_id``; other columns are carried through. Stages (:mod:`naslung.scoring_csv`):

1. read and check the file (:mod:`naslung.checks.nodule_csv`, Great Expectations): file-level errors
   stop the file, row-level errors make error rows; one :class:`RowResult` per input row;
2. resume: rows already ``ok`` in an existing output (same input values) are not scored again;
3. resolve each series inside ``--scans`` (:mod:`naslung.scoring_csv.scans`): ``<seriesuid>.mhd``,
   ``<seriesuid>.nii[.gz]`` or a DICOM series of that SeriesInstanceUID, any nesting; a uid holding a path
   separator or ``..`` (an escape attempt) or an absolute path, and a DICOM series that fails its checks
   (not CT, not axial, uneven or missing slices), are error rows;
4. group rows by series, read each scan once, cut 32^3 1 mm windowed patches of all its points in one
   vectorised pass (:class:`naslung.data.patches.MultiPointCutter`, within 1e-3 HU of the training
   path's :class:`~naslung.data.patches.PatchCutter`; a point outside the scan is an error row), one scan
   ahead of the requests in flight;
5. score the patches in requests of ``serve.request_patches`` with ``serve.concurrency`` requests in
   flight through an injected scorer ``(patches) -> answers`` (TorchServe:
   :class:`naslung.serving_client.ServingClient`); a failed request makes error rows of its rows only;
6. write every input row exactly once, in input order, followed by ``probability``, ``label``,
   ``votes``, ``model_version``, ``status`` (ok / error; ``pending`` only in a checkpoint of an
   interrupted run) and ``error``, then the audit trail (:data:`AUDIT_COLUMNS`: request id, input-row and
   patch sha256, the model's name / alias / data revision / git commit from the answers, scored-at UTC).
   The output is rewritten atomically every few seconds, so a killed run can resume;
7. write the run manifest ``<out stem>.manifest.json`` (input sha256, counts, timings, software, model,
   drift against the model's reference profile; :mod:`naslung.scoring_csv.manifest`) and the drift plot
   ``<out stem>.drift.png`` (:mod:`naslung.scoring_csv.drift`). Logging the run to MLflow is the CLI's and
   the flow's job (:mod:`naslung.registry.scoring_runs`).

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
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from naslung.checks.nodule_csv import check_nodule_csv
from naslung.params import Params, PrepareParams, ServeParams
from naslung.scoring_csv.drift import drift_summary, plot_drift, scan_metadata
from naslung.scoring_csv.extract import ExtractionTimes, group_by_series, scan_patches
from naslung.scoring_csv.manifest import build_manifest, drift_png_path, manifest_path, write_manifest
from naslung.scoring_csv.overlays import write_overlay
from naslung.scoring_csv.requests import Request, RequestPool, Scorer
from naslung.scoring_csv.results_file import resumable_rows, write_results
from naslung.scoring_csv.rows import (
    AUDIT_COLUMNS,
    EXPLAIN_COLUMN,
    RESULT_COLUMNS,
    RowResult,
    input_sha256,
    new_run_id,
    result_columns,
    rows_of,
    take_answers,
    utc_now,
)
from naslung.scoring_csv.scans import ScanFinder, index_scans, unsafe_uid_reason
from naslung.scoring_csv.summary import ScoreSummary
from naslung.serving_client import ServingClient, ServingError

__all__ = [
    "AUDIT_COLUMNS",
    "CHECKPOINT_EVERY_S",
    "EXPLAIN_COLUMN",
    "RESULT_COLUMNS",
    "RowResult",
    "ScoreSummary",
    "ServingClient",
    "ServingError",
    "index_scans",
    "packaged_reference",
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
        self.run_id = summary.request_id
        self.devices: set[str] = set()
        self.explain = EXPLAIN_COLUMN in columns
        self.png_dir = out.parent / f"{out.stem}_explain"
        self.bar: Any = None
        self.last_write = time.monotonic()

    def fail(self, row: RowResult, message: str) -> None:
        row.fail(message)
        row.stamp(self.run_id)
        self.summary.errors[row.row] = message

    def fail_one(self, row: RowResult, message: str) -> None:
        """:meth:`fail` during extraction: the row is done."""
        self.fail(row, message)
        self.bar.update(1)

    def answered(self, request: Request) -> None:
        """Take one finished request's answers into its rows (and draw overlays); checkpoint now and then."""
        error = request.error
        for row, digest in zip(request.rows, request.patch_sha256):  # hashed in the request's thread
            row.patch_sha256 = digest
        if error is None:
            self.summary.request_s += request.seconds
            self.devices.update(str(a["device"]) for a in request.answers if isinstance(a, dict) and a.get("device"))
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
                row.stamp(self.run_id)
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
    reference: Mapping[str, Any] | None = None,
    manifest: bool = True,
) -> ScoreSummary:
    """Score ``csv_path``; write ``out_path`` (every input row, in order, plus the result columns).

    The scorer maps patches (n, 32, 32, 32) float32 in [0, 1], (z, y, x), to one answer dict per patch
    (an exception fails that request's rows): ``predict`` when given (e.g. an in-process scorer), else
    ``client.predict``; with ``explain``, ``explain_predict`` or else ``client.explain``, whose answers
    must carry an encoded ``cam`` per patch, and each ok row gets a PNG overlay and an ``explain_png``
    column (see the module docstring). Returns a :class:`ScoreSummary`; a file-level problem is
    reported in ``file_error`` (and, when the rows could be read, every row is written as an error row).
    Raises FileNotFoundError when ``scans_dir`` is not a folder.

    Every row gets the audit cells (:data:`AUDIT_COLUMNS`; the model facts from the answers). With
    ``manifest`` (default) the run manifest ``<out stem>.manifest.json`` is written beside the results
    (:mod:`naslung.scoring_csv.manifest`), with the drift summary of the batch against ``reference`` (a
    reference profile, :mod:`naslung.scoring_csv.drift`; None: batch figures only) and, when a row is ok,
    the drift plot ``<out stem>.drift.png``.
    """
    t0 = time.perf_counter()
    csv_path, scans_dir, out_path = Path(csv_path), Path(scans_dir), Path(out_path)
    summary = ScoreSummary(csv=csv_path, out=out_path, request_id=new_run_id(), started_at=utc_now())
    check = check_nodule_csv(csv_path)
    rows = rows_of(check.frame.to_dict("records"), check.coords)
    for row in rows:
        row.input_sha256 = input_sha256(row.inputs)
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
        if manifest and summary.out is not None:
            _write_manifest(results, None, reference)
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
    if manifest:
        _write_manifest(results, scans, reference)
    return summary


def _write_manifest(results: _Results, scans: ScanFinder | None, reference: Mapping[str, Any] | None) -> None:
    """Drift summary (and plot) of the run's ok rows, then the run manifest; the results are already
    written, so a failure here only warns."""
    summary, rows = results.summary, results.rows
    summary.scored_at = utc_now()
    out = results.out
    drift: dict[str, Any] | None = None
    png: Path | None = None
    try:
        ok = [row for row in rows if row.status == "ok"]
        metas = []
        if scans is not None:
            for uid in dict.fromkeys(row.seriesuid for row in ok):
                try:
                    entry = scans.entry(uid)
                    metas.append(scan_metadata(entry.dicom.files if entry.dicom is not None else entry.path))
                except (OSError, ValueError) as exc:  # UnusableSeries is a ValueError
                    warnings.warn(f"{out}: no acquisition metadata of series {uid!r}: {exc}", stacklevel=3)
        probs = [float(row.probability) for row in ok if row.probability]
        drift = drift_summary(metas, probs, reference)
        if ok:
            png = plot_drift(drift_png_path(out), metas, probs, reference, drift, title=f"{summary.csv.name}: drift")
    except Exception as exc:  # drift is a report: never lose the run over it
        warnings.warn(f"{out}: no drift summary: {type(exc).__name__}: {exc}", stacklevel=3)
    data = build_manifest(summary, rows, drift, png, sorted(results.devices))
    summary.manifest = write_manifest(manifest_path(out), data)
    summary.drift_png = png


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


def packaged_reference(params: Params) -> dict[str, Any] | None:
    """The reference profile the packaged model carries (``ensemble/reference_profile.json`` of
    ``<artifacts>/serve/model-store/<name>.mar``, written at ``naslung register``); None (with a warning
    when the .mar exists) for a model registered without one."""
    import json
    import zipfile

    from naslung.ensemble.layout import ENSEMBLE_DIR
    from naslung.scoring_csv.drift import PROFILE_FILE, SCHEMA
    from naslung.torchserve import model_name_of, serve_dir

    mar = serve_dir(params) / "model-store" / f"{model_name_of(params)}.mar"
    if not mar.is_file():
        return None
    try:
        with zipfile.ZipFile(mar) as z:
            data = json.loads(z.read(f"{ENSEMBLE_DIR}/{PROFILE_FILE}"))
    except (KeyError, OSError, ValueError, zipfile.BadZipFile) as exc:
        warnings.warn(
            f"{mar}: no reference profile ({type(exc).__name__}: {exc}); drift without reference", stacklevel=2
        )
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def score_with_server(
    params: Params, csv_path: Path, scans_dir: Path, out_path: Path, progress: bool = True, explain: bool = False
) -> ScoreSummary:
    """:func:`score_csv` through the running TorchServe of ``params`` (see :func:`server_client`), the drift
    against the packaged model's reference profile (:func:`packaged_reference`)."""
    reference = packaged_reference(params)
    with server_client(params) as client:
        return score_csv(
            csv_path,
            scans_dir,
            out_path,
            client,
            params.prepare,
            params.serve,
            progress=progress,
            explain=explain,
            reference=reference,
        )
