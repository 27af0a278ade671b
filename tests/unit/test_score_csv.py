"""The hospital-CSV contract of ``naslung score``, run in-process: the whole pipeline with a plain Python scorer.

Scans are small synthetic SimpleITK volumes written to a temporary ``--scans`` folder; the scorer is a
function of the patch (its mean intensity), so every result can be recomputed from the patch the data
spine cuts. No TorchServe, no Java: the round trip through a real TorchServe is ``tests/integration/test_serving.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from naslung.data.patches import MultiPointCutter
from naslung.params import PrepareParams, ServeParams
from naslung.score_csv import RESULT_COLUMNS, score_csv
from naslung.scoring import encode_map

UID_A = "1.2.826.0.1.3680043.8.498.1001"
UID_B = "1.2.826.0.1.3680043.8.498.1002"
UID_LINKED = "1.2.826.0.1.3680043.8.498.1003"  # header and voxels symlinked from outside the root: allowed
UID_ESCAPE = "1.2.826.0.1.3680043.8.498.1004"  # a symlinked header whose voxel file lies outside the root
PREPARE = PrepareParams()
SERVE = replace(ServeParams(), request_patches=2, concurrency=2)


def _scan(path: Path, seed: int, data_file: str | None = None) -> None:
    """A 64 x 64 x 24 voxel scan (x, y, z), spacing 0.75 x 0.75 x 2 mm, origin (-24, -24, -24) mm (so it
    spans x, y in [-24, 23.25] and z in [-24, 22] mm), noise in HU plus one blob."""
    rng = np.random.default_rng(seed)
    arr = rng.normal(-800, 80, size=(24, 64, 64)).astype(np.int16)  # (z, y, x)
    arr[10:14, 28:36, 28:36] = 40
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.75, 0.75, 2.0))
    img.SetOrigin((-24.0, -24.0, -24.0))
    sitk.WriteImage(img, str(path))
    if data_file is not None:
        header = path.read_text()
        path.write_text(header.replace(f"= {path.stem}.raw", f"= {data_file}"))


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("score_csv")
    root, outside = tmp / "scans", tmp / "outside"
    (root / "subset0").mkdir(parents=True)
    outside.mkdir()
    _scan(root / f"{UID_A}.mhd", 1)
    _scan(root / "subset0" / f"{UID_B}.mhd", 2)
    _scan(outside / f"{UID_LINKED}.mhd", 3)
    for suffix in (".mhd", ".raw"):
        (root / f"{UID_LINKED}{suffix}").symlink_to(outside / f"{UID_LINKED}{suffix}")
    _scan(outside / f"{UID_ESCAPE}.mhd", 4, data_file=f"../outside/{UID_ESCAPE}.raw")
    (root / f"{UID_ESCAPE}.mhd").symlink_to(outside / f"{UID_ESCAPE}.mhd")
    return root


def _answer(patch: np.ndarray) -> dict[str, Any]:
    prob = float(patch.mean())
    return {
        "probability": prob,
        "raw_probability": prob / 2,
        "uncertainty": prob / 4,
        "refer": prob > 0.2,
        "label": int(prob > 0.15),
        "votes": 3 * int(prob > 0.15),
        "model_version": "7",
    }


class Scorer:
    """The injected scorer: answers from the patch alone; records every request's patches (thread-safe).
    ``fail_with(patches)`` may return an exception to raise for that request, ``short`` drops the last
    answer of a request holding the given patch."""

    def __init__(self, fail_with: Callable[[np.ndarray], Exception | None] | None = None) -> None:
        self.fail_with = fail_with
        self.requests: list[np.ndarray] = []
        self._lock = threading.Lock()

    def __call__(self, patches: np.ndarray) -> list[dict[str, Any]]:
        assert patches.shape[1:] == (32, 32, 32) and patches.dtype == np.float32
        with self._lock:
            self.requests.append(patches.copy())
        error = self.fail_with(patches) if self.fail_with else None
        if error is not None:
            raise error
        return [_answer(p) for p in patches]


def _csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _patch(scans: Path, uid: str, xyz: tuple[float, float, float]) -> np.ndarray:
    found = next(scans.rglob(f"{uid}.mhd"))
    # The scoring path's cutter (PatchCutter's values within float32 rounding: tests/data/test_multipoint_cutter.py).
    return MultiPointCutter(sitk.ReadImage(str(found)), PREPARE).cut(np.array([xyz], float))[0]


def _row(nid: str, uid: str, x: Any, y: Any = 0.0, z: Any = 0.0, **extra: Any) -> dict[str, Any]:
    return {"nodule_id": nid, "seriesuid": uid, "coordX": x, "coordY": y, "coordZ": z, **extra}


def _holding(target: np.ndarray) -> Callable[[np.ndarray], bool]:
    return lambda patches: any(np.array_equal(p, target) for p in patches)


def test_every_row_once_in_order_with_status_and_reason(scans: Path, tmp_path: Path) -> None:
    rows = [
        _row("a1", UID_A, 0.0, site="north"),
        _row("bad-uid", "../scans/" + UID_A, 0.0),
        _row("b1", UID_B, -5.0, 3.0, -4.0),
        _row("unknown", "1.2.3.4.nope", 0.0),
        _row("escape", UID_ESCAPE, 0.0),
        _row("linked", UID_LINKED, 2.0, -2.0, 0.0),
        _row("outside", UID_A, 300.0),
        _row("text", UID_A, 1.0, "abc"),
        _row("empty", UID_B, ""),
        _row("dup", UID_A, 1.0, 1.0, 1.0),
        _row("dup", UID_A, 2.0, 2.0, 2.0),
        _row("a2", UID_A, 10.5, -7.25, 6.0),
        _row("", UID_B, 1.0),
    ]
    for r in rows:
        r.setdefault("site", "south")
    csv, out = _csv(tmp_path / "in.csv", rows), tmp_path / "out.csv"
    scorer = Scorer()
    summary = score_csv(csv, scans, out, None, PREPARE, SERVE, progress=False, predict=scorer)
    res = _read(out)

    assert list(res.columns) == ["nodule_id", "seriesuid", "coordX", "coordY", "coordZ", "site", *RESULT_COLUMNS]
    assert list(res["nodule_id"]) == [r["nodule_id"] for r in rows] and list(res["site"])[:1] == ["north"]
    ok = ["a1", "b1", "linked", "a2"]
    assert list(res.loc[res["status"] == "ok", "nodule_id"]) == ok
    assert set(res["status"]) == {"ok", "error"} and (res.loc[res["status"] == "ok", "error"] == "").all()
    errors = dict(zip(res.index, res["error"]))
    expected = {
        1: "only inside --scans",
        3: "unknown series '1.2.3.4.nope'",
        4: f"unknown series '{UID_ESCAPE}'",
        6: "outside the scan extent",
        7: "coordY 'abc' is not a finite number",
        8: "coordX '' is not a finite number",
        9: "duplicate nodule_id 'dup'",
        10: "duplicate nodule_id 'dup'",
        12: "nodule_id is empty",
    }
    for i, text in expected.items():
        assert errors[i].startswith(f"row {i + 1}: ") and text in errors[i], (i, errors[i])
        assert res.loc[i, "probability"] == "" and res.loc[i, "status"] == "error"
    assert summary.n_rows == 13 and summary.n_ok == 4 and summary.n_error == 9 and summary.n_sent == 4
    assert summary.errors == {i: errors[i] for i in expected} and summary.n_scans == 3

    # Each ok row holds the scorer's answer for the very patch the data spine cuts at its point.
    for _, r in res[res["status"] == "ok"].iterrows():
        want = _answer(_patch(scans, r["seriesuid"], (float(r["coordX"]), float(r["coordY"]), float(r["coordZ"]))))
        assert r["probability"] == repr(want["probability"])
        assert (r["raw_probability"], r["uncertainty"]) == (repr(want["raw_probability"]), repr(want["uncertainty"]))
        assert r["refer"] == str(int(want["refer"]))
        assert (r["label"], r["votes"], r["model_version"]) == (str(want["label"]), str(want["votes"]), "7")
    # Requests of serve.request_patches patches in row order, scan after scan: (a1, a2) from the first
    # series, then (b1, linked) across two scans; each patch sent once.
    assert [len(p) for p in scorer.requests] == [2, 2]
    sent = [r for p in scorer.requests for r in p]
    assert all(np.array_equal(a, b) for a, b in zip(sent[2:], [_patch(scans, UID_B, (-5.0, 3.0, -4.0))]))


def test_a_failing_request_fails_only_its_rows(scans: Path, tmp_path: Path) -> None:
    points = [(-6.0, 0.0, 0.0), (-3.0, 0.0, 0.0), (0.0, 0.0, 0.0), (3.0, 0.0, 0.0), (6.0, 0.0, 0.0)]
    csv = _csv(tmp_path / "in.csv", [_row(f"n{i}", UID_A, *p) for i, p in enumerate(points)])
    holds_third = _holding(_patch(scans, UID_A, points[2]))
    scorer = Scorer(lambda patches: RuntimeError("boom") if holds_third(patches) else None)
    summary = score_csv(csv, scans, tmp_path / "out.csv", None, PREPARE, SERVE, progress=False, predict=scorer)
    res = _read(tmp_path / "out.csv")
    # requests of 2 in row order: (n0, n1), (n2, n3), (n4); the second one fails
    assert list(res["status"]) == ["ok", "ok", "error", "error", "ok"]
    assert list(res["error"][2:4]) == [f"row {i}: scoring failed: RuntimeError: boom" for i in (3, 4)]
    assert (res["probability"][2:4] == "").all() and summary.n_ok == 3 and summary.n_error == 2


def test_a_scorer_returning_fewer_answers_makes_error_rows(scans: Path, tmp_path: Path) -> None:
    points = [(-6.0, 0.0, 0.0), (-3.0, 0.0, 0.0), (0.0, 0.0, 0.0)]
    csv = _csv(tmp_path / "in.csv", [_row(f"n{i}", UID_A, *p) for i, p in enumerate(points)])
    holds_first = _holding(_patch(scans, UID_A, points[0]))

    def short(patches: np.ndarray) -> list[dict[str, Any]]:
        answers = [_answer(p) for p in patches]
        return answers[:-1] if holds_first(patches) else answers

    summary = score_csv(csv, scans, tmp_path / "out.csv", None, PREPARE, SERVE, progress=False, predict=short)
    res = _read(tmp_path / "out.csv")
    assert list(res["status"]) == ["error", "error", "ok"] and summary.n_error == 2
    assert list(res["error"][:2]) == [f"row {i}: scoring failed: ValueError: 1 answers for 2 patches" for i in (1, 2)]


def test_resume_sends_only_rows_not_yet_ok(scans: Path, tmp_path: Path) -> None:
    points = [(-6.0, 0.0, 0.0), (-3.0, 0.0, 0.0), (0.0, 0.0, 0.0), (3.0, 0.0, 0.0), (6.0, 0.0, 0.0)]
    rows = [_row(f"n{i}", UID_A if i % 2 else UID_B, *p) for i, p in enumerate(points)]
    csv, out = _csv(tmp_path / "in.csv", rows), tmp_path / "out.csv"
    failing = _holding(_patch(scans, UID_A, points[3]))  # requests: (n0, n2), (n4, n1), (n3)
    first = score_csv(
        csv,
        scans,
        out,
        None,
        PREPARE,
        SERVE,
        progress=False,
        predict=Scorer(lambda p: OSError("server went away") if failing(p) else None),
    )
    before = _read(out)
    assert first.n_ok == 4 and list(before["status"]) == ["ok", "ok", "ok", "error", "ok"]

    again = Scorer()
    second = score_csv(csv, scans, out, None, PREPARE, SERVE, progress=False, predict=again)
    after = _read(out)
    assert second.n_resumed == 4 and second.n_sent == 1 and second.n_ok == 5
    assert [len(p) for p in again.requests] == [1]
    assert np.array_equal(again.requests[0][0], _patch(scans, UID_A, points[3]))
    kept = [0, 1, 2, 4]
    assert after.iloc[kept].equals(before.iloc[kept])  # resumed rows are copied, not re-scored

    # A row whose input changed is scored again; nothing is sent for an unchanged, complete output.
    rows[1]["coordZ"] = 2.0
    _csv(csv, rows)
    third = score_csv(csv, scans, out, None, PREPARE, SERVE, progress=False, predict=Scorer())
    assert third.n_resumed == 4 and third.n_sent == 1 and _read(out).loc[1, "coordZ"] == "2.0"
    fourth = score_csv(csv, scans, out, None, PREPARE, SERVE, progress=False, predict=Scorer())
    assert fourth.n_resumed == 5 and fourth.n_sent == 0


def test_file_level_errors_and_a_missing_scan_root(scans: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    s = score_csv(empty, scans, tmp_path / "o1.csv", None, PREPARE, SERVE, progress=False, predict=Scorer())
    assert s.file_error and "0 bytes" in s.file_error and s.out is None and not (tmp_path / "o1.csv").exists()

    nocol = _csv(tmp_path / "nocol.csv", [{"seriesuid": UID_A, "x": 1.0}, {"seriesuid": UID_B, "x": 2.0}])
    s = score_csv(nocol, scans, tmp_path / "o2.csv", None, PREPARE, SERVE, progress=False, predict=Scorer())
    res = _read(tmp_path / "o2.csv")
    assert list(res.columns) == ["seriesuid", "x", *RESULT_COLUMNS] and list(res["status"]) == ["error", "error"]
    assert (res["error"] == s.file_error).all() and "missing required column" in str(s.file_error)

    good = _csv(tmp_path / "good.csv", [_row("n", UID_A, 0.0)])
    with pytest.raises(FileNotFoundError, match="--scans folder not found"):
        score_csv(good, tmp_path / "nope", tmp_path / "o3.csv", None, PREPARE, SERVE, progress=False, predict=Scorer())


def test_input_columns_named_like_result_columns_are_kept(scans: Path, tmp_path: Path) -> None:
    csv = _csv(tmp_path / "in.csv", [_row("n", UID_A, 0.0, status="received", error="none")])
    score_csv(csv, scans, tmp_path / "out.csv", None, PREPARE, SERVE, progress=False, predict=Scorer())
    res = _read(tmp_path / "out.csv")
    assert list(res[["status", "error", "result_status", "result_error"]].iloc[0]) == ["received", "none", "ok", ""]


def test_explain_writes_overlays_and_a_missing_map_is_an_error_row(scans: Path, tmp_path: Path) -> None:
    rows = [_row("e/1", UID_A, 0.0), _row("nope", "1.2.3.4.nope", 0.0), _row("e2", UID_A, 5.0)]
    csv, out = _csv(tmp_path / "in.csv", rows), tmp_path / "out.csv"
    second = _holding(_patch(scans, UID_A, (5.0, 0.0, 0.0)))

    def explain(patches: np.ndarray) -> list[dict[str, Any]]:
        answers = [_answer(p) | {"cam": encode_map(p), "explain_target": 1} for p in patches]
        for p, a in zip(patches, answers):
            if second(p[None]):
                a.pop("cam")
        return answers

    s = score_csv(csv, scans, out, None, PREPARE, SERVE, progress=False, explain=True, explain_predict=explain)
    res = _read(out)
    assert list(res.columns)[-1] == "explain_png" and list(res["status"]) == ["ok", "error", "error"]
    assert list(res["explain_png"]) == ["out_explain/row1_e_1.png", "", ""]
    assert (tmp_path / "out_explain" / "row1_e_1.png").read_bytes()[:4] == b"\x89PNG"
    assert "scored, but no explanation overlay: ValueError" in res.loc[2, "error"] and res.loc[2, "probability"]
    assert s.n_ok == 1 and s.render_s > 0
