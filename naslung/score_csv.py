"""Batch scoring of a hospital nodule CSV through TorchServe (``naslung score``).

Input CSV: ``seriesuid``, ``coordX``, ``coordY``, ``coordZ`` (world mm, x/y/z) and optionally
``nodule_id``; other columns are carried through. Steps:

1. validate the file (:mod:`naslung.checks.nodule_csv`, Great Expectations): file-level errors stop
   the file, row-level errors make error rows;
2. resolve each series to ``<scans>/**/<seriesuid>.mhd`` — only inside ``--scans``; a uid holding a
   path separator or ``..`` (an escape attempt) or an absolute path is an error row;
3. group rows by series, read each scan once, cut 32^3 1 mm windowed patches with the data spine's
   :class:`naslung.data.patches.PatchCutter` (a point outside the scan is an error row);
4. send patches in requests of ``serve.request_patches`` with ``serve.concurrency`` requests in flight;
5. write every input row exactly once, in input order, followed by ``probability``, ``label``,
   ``votes``, ``model_version``, ``status`` (ok / error; ``pending`` only in a checkpoint of an
   interrupted run) and ``error``. The output is rewritten atomically every few seconds, so a killed
   run can resume: rows already ``ok`` in an existing output (same input values) are not re-sent.

With ``explain`` (``naslung score --explain``) the patches go to TorchServe's Explanations API
(``/explanations/<model>``, answers carry CAMs, see :mod:`naslung.scoring`) and every ok row gets a PNG
overlay (axial / coronal / sagittal views of the patch with the ensemble's CAM, P(malignant) in the
title) in ``<out stem>_explain/row<row>_<nodule_id or row>.png`` beside the results CSV; the extra
column ``explain_png`` holds its path relative to the results CSV's folder (empty for error rows). A row
whose answer has no usable map, or whose PNG cannot be written, becomes an error row saying so (its
probability is kept). On resume, an ok row is kept only when its PNG still exists.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from tqdm import tqdm

from naslung.checks.nodule_csv import check_nodule_csv
from naslung.params import PrepareParams, ServeParams
from naslung.scoring import decode_map, encode_payload

RESULT_COLUMNS = ("probability", "label", "votes", "model_version", "status", "error")
EXPLAIN_COLUMN = "explain_png"
CHECKPOINT_EVERY_S = 5.0

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- client
class ServingError(RuntimeError):
    """A request TorchServe (or the handler) refused; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ServingClient:
    """Thread-safe client of one TorchServe model: keep-alive connection per thread, bearer token.

    ``predict(patches)`` posts the ``.npy`` payload (see :mod:`naslung.scoring`) to
    ``/predictions/<model>`` and returns one dict per patch (probability, label, votes, member_probs,
    model_name, model_version); ``explain(patches)`` posts it to ``/explanations/<model>`` and each dict
    also holds ``cam``, ``attention`` and ``explain_target`` (decode the maps with
    :func:`naslung.scoring.decode_map`).
    """

    def __init__(
        self, base_url: str, model_name: str, key: str | None, timeout_s: float = 120.0, retries: int = 2
    ) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = f"/predictions/{model_name}"
        self.explain_path = f"/explanations/{model_name}"
        self.key = key
        self.timeout_s = timeout_s
        self.retries = retries
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def post(self, body: bytes, auth: bool = True, path: str | None = None) -> tuple[int, str]:
        """POST a raw body (to ``path``, default the predictions path); returns (status, text).
        Retries connection failures and 503s."""
        headers = {"Content-Type": "application/octet-stream"}
        if auth and self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                conn = self._conn()
                conn.request("POST", path or self.path, body=body, headers=headers)
                resp = conn.getresponse()
                text = resp.read().decode(errors="replace")
                if resp.will_close:
                    self._drop()
                if resp.status in (502, 503, 504) and attempt < self.retries:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                return resp.status, text
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                last = exc
                time.sleep(0.5 * (attempt + 1))
        raise ServingError(f"no answer from TorchServe at {self.host}:{self.port}: {last}", 0)

    def predict(self, patches: np.ndarray) -> list[dict[str, Any]]:
        """One result dict per patch from ``/predictions/<model>``."""
        return self._answers(self.post(encode_payload(patches)), patches)

    def explain(self, patches: np.ndarray) -> list[dict[str, Any]]:
        """One result dict per patch, with encoded maps, from ``/explanations/<model>``."""
        return self._answers(self.post(encode_payload(patches), path=self.explain_path), patches)

    @staticmethod
    def _answers(answer: tuple[int, str], patches: np.ndarray) -> list[dict[str, Any]]:
        status, text = answer
        if status != 200:
            raise ServingError(f"TorchServe answered HTTP {status}: {_message(text)}", status)
        out = json.loads(text)
        if isinstance(out, dict):  # a single-patch request may come back unwrapped
            out = [out]
        if len(out) != len(patches):
            raise ServingError(f"TorchServe returned {len(out)} results for {len(patches)} patches", 502)
        return out


def _message(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:300] or "(empty body)"
    if isinstance(data, dict):
        return str(data.get("error") or data.get("message") or data)[:300]
    return str(data)[:300]


# ------------------------------------------------------------------------------------------- scans
def unsafe_uid_reason(uid: str) -> str | None:
    """Why a series uid cannot name a file inside --scans (path separators, '..', absolute), else None."""
    if uid in (".", "..") or "/" in uid or "\\" in uid or uid.startswith("~") or os.path.isabs(uid) or "\x00" in uid:
        return (
            f"seriesuid {uid!r} is not a plain series name: scan paths resolve only inside --scans "
            "(path separators, '..' and absolute paths are refused)"
        )
    return None


def index_scans(scans_dir: Path) -> dict[str, Path]:
    """``<uid>.mhd`` files anywhere below ``scans_dir`` (lexical paths, symlinked files allowed).

    A header whose ``ElementDataFile`` points outside ``scans_dir`` (``../x.raw``, an absolute path) is
    left out, so a crafted header cannot make the scorer read files beyond the scan root.
    """
    from naslung.data.scans import ScanError, ScanIndex, read_mhd_header

    index = ScanIndex.build(scans_dir, dicom=False)
    root = os.path.abspath(scans_dir)

    def inside(path: Path | str) -> bool:
        return os.path.commonpath([root, os.path.abspath(path)]) == root

    out: dict[str, Path] = {}
    for uid, ref in index.scans.items():
        if not inside(ref.path):
            continue
        try:
            data_name = read_mhd_header(Path(ref.path))["ElementDataFile"]
        except ScanError:
            out[uid] = ref.path  # unreadable header: reading it later gives the row its error
            continue
        if (
            data_name.upper() == "LOCAL"
            or data_name.upper().startswith("LIST")
            or inside(Path(ref.path).parent / data_name)
        ):
            out[uid] = ref.path
        else:
            logger.warning("%s: data file %r lies outside the scan root %s; scan ignored", ref.path, data_name, root)
    return out


# ------------------------------------------------------------------------------------------- run
@dataclass
class ScoreSummary:
    """Counts and timings of one scoring run (times in s)."""

    csv: Path
    out: Path | None
    n_rows: int = 0
    n_ok: int = 0
    n_error: int = 0
    n_resumed: int = 0
    n_sent: int = 0
    n_scans: int = 0
    file_error: str | None = None
    read_s: float = 0.0
    cut_s: float = 0.0
    request_s: float = 0.0
    wait_s: float = 0.0
    render_s: float = 0.0
    wall_s: float = 0.0
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def extraction_s(self) -> float:
        return self.read_s + self.cut_s

    def describe(self) -> str:
        if self.file_error and self.n_rows == 0:
            return f"{self.csv}: FILE ERROR: {self.file_error}"
        text = (
            f"{self.csv}: {self.n_rows} rows -> {self.out}: {self.n_ok} ok, {self.n_error} error "
            f"({self.n_resumed} resumed from an earlier run, {self.n_sent} sent); {self.n_scans} scans; "
            f"wall {self.wall_s:.1f} s = extraction {self.extraction_s:.1f} s (read {self.read_s:.1f}, cut "
            f"{self.cut_s:.1f}) + waiting for inference {self.wait_s:.1f} s"
            + (f" + drawing overlays {self.render_s:.1f} s" if self.render_s else "")
            + f"; request time {self.request_s:.1f} s"
        )
        if self.file_error:
            text += f"\nFILE ERROR: {self.file_error}"
        return text


def _out_names(frame: pd.DataFrame, columns: tuple[str, ...]) -> dict[str, str]:
    """Output column name of each result column (``result_<col>`` when the input already has ``col``)."""
    return {col: col if col not in frame.columns else f"result_{col}" for col in columns}


def _resume(out: Path, frame: pd.DataFrame, columns: tuple[str, ...] = RESULT_COLUMNS) -> dict[int, dict[str, str]]:
    """Rows of an existing output that are ``ok`` and whose input values equal the current file's.

    With the ``explain_png`` column, a row also needs its PNG (relative to the output's folder) on disk."""
    if not out.is_file() or out.stat().st_size == 0:
        return {}
    try:
        old = pd.read_csv(out, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return {}
    cols = list(frame.columns)
    names = _out_names(frame, columns)
    if len(old) != len(frame) or not set(cols + list(names.values())) <= set(old.columns):
        return {}
    same = (old[cols].to_numpy() == frame[cols].to_numpy()).all(axis=1)
    ok = same & (old[names["status"]].to_numpy() == "ok")
    if EXPLAIN_COLUMN in names:
        pngs = old[names[EXPLAIN_COLUMN]].to_numpy()
        ok &= np.array([bool(p) and (out.parent / p).is_file() for p in pngs], dtype=bool)
    # read with dtype=str and keep_default_na=False, so every cell is a str (pandas-stubs: any Scalar)
    return {int(i): {c: cast(str, old.at[i, n]) for c, n in names.items()} for i in np.nonzero(ok)[0]}


def _write(out: Path, frame: pd.DataFrame, results: dict[str, list[Any]]) -> None:
    table = frame.copy()
    for col, name in _out_names(frame, tuple(results)).items():
        table[name] = results[col]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, out)


def score_csv(
    csv_path: Path,
    scans_dir: Path,
    out_path: Path,
    client: ServingClient | Any,
    prepare: PrepareParams,
    serve: ServeParams,
    progress: bool = True,
    predict: Callable[[np.ndarray], list[dict[str, Any]]] | None = None,
    explain: bool = False,
    explain_predict: Callable[[np.ndarray], list[dict[str, Any]]] | None = None,
) -> ScoreSummary:
    """Score ``csv_path``; write ``out_path`` (every input row, in order, plus the result columns).

    ``client.predict`` (or ``predict``, e.g. an in-process scorer) maps patches (n, 32, 32, 32) float32
    to one result dict per patch. With ``explain``, ``client.explain`` (or ``explain_predict``) is used
    instead, its answers must carry an encoded ``cam`` per patch, and each ok row gets a PNG overlay and
    an ``explain_png`` column (see the module docstring). Returns a :class:`ScoreSummary`; a file-level
    problem is reported in ``file_error`` (and, when the rows could be read, every row is written as an
    error row).
    """
    from naslung.data.patches import OutsideScanError, PatchCutter
    from naslung.data.scans import ScanError, read_scan

    t0 = time.perf_counter()
    csv_path, scans_dir, out_path = Path(csv_path), Path(scans_dir), Path(out_path)
    summary = ScoreSummary(csv=csv_path, out=out_path)
    check = check_nodule_csv(csv_path)
    frame = check.frame
    n = len(frame)
    summary.n_rows = n
    columns = RESULT_COLUMNS + ((EXPLAIN_COLUMN,) if explain else ())
    results: dict[str, list[Any]] = {c: [""] * n for c in columns}
    results["status"] = ["pending"] * n
    png_dir = out_path.parent / f"{out_path.stem}_explain"

    def fail(row: int, message: str) -> None:
        results["status"][row] = "error"
        results["error"][row] = message
        if explain:
            results[EXPLAIN_COLUMN][row] = ""
        summary.errors[row] = message

    if check.file_error is not None:
        summary.file_error = check.file_error
        if n:
            for i in range(n):
                fail(i, check.file_error)
            _write(out_path, frame, results)
            summary.n_error = n
        else:
            summary.out = None
        summary.wall_s = time.perf_counter() - t0
        return summary
    if not scans_dir.is_dir():
        raise FileNotFoundError(f"--scans folder not found: {scans_dir}")

    done = _resume(out_path, frame, columns)
    for i, old in done.items():
        for c in columns:
            results[c][i] = old[c]
    summary.n_resumed = len(done)
    for i, msgs in check.row_errors.items():
        if i not in done:
            fail(i, f"row {i + 1}: " + "; ".join(msgs))

    scans = index_scans(scans_dir)
    todo = [i for i in range(n) if i not in done and i not in check.row_errors]
    groups: dict[str, list[int]] = {}
    for i in todo:
        groups.setdefault(cast(str, frame.at[i, "seriesuid"]).strip(), []).append(i)  # str cells (checked CSV)

    bar = tqdm(total=n, unit="rows", desc=f"score {csv_path.name}", disable=not progress, smoothing=0.1)
    bar.update(n - len(todo))
    if explain:
        do_predict = explain_predict or client.explain
    else:
        do_predict = predict or client.predict
    has_id = "nodule_id" in frame.columns

    def overlay(row: int, patch: np.ndarray, answer: dict[str, Any]) -> str:
        """Write the row's CAM overlay PNG; returns its path relative to the results CSV's folder."""
        from naslung.explain.render import save_overlay

        cam = answer.get("cam")
        if cam is None:
            raise ValueError("the answer holds no CAM (was the request sent to the explanations endpoint?)")
        heat = decode_map(cam)
        target = int(answer.get("explain_target", answer["label"]))
        ident = str(frame.at[row, "nodule_id"]).strip() if has_id else ""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", ident).strip("._")[:80] or str(row + 1)
        name = f"nodule {ident}" if ident else f"row {row + 1}"
        path = png_dir / f"row{row + 1}_{safe}.png"
        save_overlay(
            path,
            patch,
            heat,
            prob=float(answer["probability"]),
            name=name,
            label=f"CAM, class {target} ({'malignant' if target == 1 else 'benign'})",
        )
        return f"{png_dir.name}/{path.name}"

    lock = threading.Lock()
    last_write = [time.monotonic()]

    def timed_predict(patches: np.ndarray) -> tuple[list[dict[str, Any]], float]:
        t = time.perf_counter()
        out = do_predict(patches)
        return out, time.perf_counter() - t

    def collect(fut: Future, rows: list[int], patches: np.ndarray) -> None:
        try:
            answers, took = fut.result()
            summary.request_s += took
            if len(answers) != len(rows):
                raise ValueError(f"{len(answers)} answers for {len(rows)} patches")
            for r, a in zip(rows, answers):
                results["probability"][r] = repr(float(a["probability"]))
                results["label"][r] = int(a["label"])
                results["votes"][r] = int(a["votes"])
                results["model_version"][r] = a.get("model_version", "")
                results["status"][r] = "pending"
        except Exception as exc:
            for r in rows:
                fail(r, f"row {r + 1}: scoring failed: {type(exc).__name__}: {exc}")
        else:
            t = time.perf_counter()
            for j, (r, a) in enumerate(zip(rows, answers)):
                if explain:
                    try:
                        results[EXPLAIN_COLUMN][r] = overlay(r, patches[j], a)
                    except Exception as exc:
                        fail(r, f"row {r + 1}: scored, but no explanation overlay: {type(exc).__name__}: {exc}")
                        continue
                results["status"][r] = "ok"
                results["error"][r] = ""
            if explain:
                summary.render_s += time.perf_counter() - t
        bar.update(len(rows))
        if time.monotonic() - last_write[0] > CHECKPOINT_EVERY_S:
            with lock:
                _write(out_path, frame, results)
                last_write[0] = time.monotonic()

    pending: dict[Future, tuple[list[int], np.ndarray]] = {}
    buf_rows: list[int] = []
    buf_patches: list[np.ndarray] = []
    size = max(1, int(serve.request_patches))
    max_in_flight = max(1, int(serve.concurrency)) * 2

    with ThreadPoolExecutor(max_workers=max(1, int(serve.concurrency)), thread_name_prefix="score") as pool:

        def drain(limit: int) -> None:
            while len(pending) > limit:
                t = time.perf_counter()
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                summary.wait_s += time.perf_counter() - t
                for fut in finished:
                    collect(fut, *pending.pop(fut))

        def flush(all_: bool) -> None:
            while len(buf_rows) >= size or (all_ and buf_rows):
                rows, patches = buf_rows[:size], buf_patches[:size]
                del buf_rows[:size], buf_patches[:size]
                drain(max_in_flight - 1)
                batch = np.stack(patches)
                pending[pool.submit(timed_predict, batch)] = (rows, batch)
                summary.n_sent += len(rows)

        for uid, rows in groups.items():
            reason = unsafe_uid_reason(uid)
            path = scans.get(uid) if reason is None else None
            if reason is None and path is None:
                reason = f"unknown series {uid!r}: no {uid}.mhd under --scans {scans_dir}"
            if reason is not None:
                for r in rows:
                    fail(r, f"row {r + 1}: {reason}")
                bar.update(len(rows))
                continue
            t = time.perf_counter()
            try:
                image = read_scan(cast(Path, path))  # not None: reason is None here
            except ScanError as exc:
                for r in rows:
                    fail(r, f"row {r + 1}: {exc}")
                bar.update(len(rows))
                continue
            summary.read_s += time.perf_counter() - t
            summary.n_scans += 1
            t = time.perf_counter()
            cutter = PatchCutter(image, prepare)
            for r in rows:
                try:
                    patch = cutter.cut(check.coords[r])
                except (OutsideScanError, RuntimeError, ValueError) as exc:  # RuntimeError: SimpleITK
                    fail(r, f"row {r + 1}: {exc}")
                    bar.update(1)
                    continue
                buf_rows.append(r)
                buf_patches.append(patch)
            summary.cut_s += time.perf_counter() - t
            del image, cutter
            flush(False)
        flush(True)
        drain(0)
    bar.close()
    _write(out_path, frame, results)
    summary.n_ok = sum(1 for s in results["status"] if s == "ok")
    summary.n_error = sum(1 for s in results["status"] if s == "error")
    summary.wall_s = time.perf_counter() - t0
    return summary
