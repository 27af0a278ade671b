"""Spreadsheet exports of the nodule CSV score like the plain file, or fail with a clear message.

The same rows are written as a plain UTF-8 comma CSV and as the files spreadsheets export (``;`` with
decimal commas and a UTF-8 byte-order mark, Windows-1252 with CRLF and a non-ASCII cell, tab-delimited with
CR line endings, header names that differ in case / spacing or are aliases); each is scored in-process
through :func:`naslung.score_csv.score_csv` on small synthetic scans and must give the same rows and the
same probabilities, its own cells and header kept as written. One malformed line makes one error row
(with its file line), never the loss of the file; an ambiguous number is an error, never a wrong value.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from naslung.checks.nodule_csv import check_nodule_csv
from naslung.params import PrepareParams, ServeParams
from naslung.score_csv import score_csv
from naslung.scoring_csv.columns import canonical_of
from naslung.scoring_csv.csv_text import parse_coordinate

UID_A = "1.2.826.0.1.3680043.8.498.2001"
UID_B = "1.2.826.0.1.3680043.8.498.2002"
PREPARE = PrepareParams()
SERVE = replace(ServeParams(), request_patches=4, concurrency=2)

ROWS = [
    ("n1", UID_A, -12.5, 3.25, 0.5, "Hôpital Sévérine"),
    ("n2", UID_B, 0.0, 0.0, 0.0, "north"),
    ("n3", UID_A, 10.75, -7.5, 6.0, "Lyon, Hôpital"),
    ("n4", UID_B, 2.5, 2.5, -10.0, "süd"),
    ("n5", UID_A, 300.0, 0.0, 0.0, "outside"),
]


def _scan(path: Path, seed: int) -> None:
    """64 x 64 x 24 voxels (x, y, z), spacing 0.75 x 0.75 x 2 mm, origin (-24, -24, -24) mm, noise + a blob."""
    rng = np.random.default_rng(seed)
    arr = rng.normal(-700, 150, size=(24, 64, 64)).astype(np.int16)  # (z, y, x)
    arr[10:14, 28:36, 28:36] = 40
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.75, 0.75, 2.0))
    img.SetOrigin((-24.0, -24.0, -24.0))
    sitk.WriteImage(img, str(path))


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("csv_formats") / "scans"
    root.mkdir()
    _scan(root / f"{UID_A}.mhd", 11)
    _scan(root / f"{UID_B}.mhd", 12)
    return root


def _answer(patch: np.ndarray) -> dict[str, Any]:
    prob = float(0.5 * patch.mean() + 0.5 * patch[16, 16, 16])
    return {"probability": prob, "label": int(prob > 0.3), "votes": 1, "model_version": "3"}


def _predict(patches: np.ndarray) -> list[dict[str, Any]]:
    return [_answer(p) for p in patches]


def _text(header: list[str], rows: list[tuple[Any, ...]], sep: str, decimal: str = ".", newline: str = "\n") -> str:
    def cell(v: Any) -> str:
        text = repr(v).replace(".", decimal) if isinstance(v, float) else str(v)
        return f'"{text}"' if sep in text or '"' in text else text

    lines = [sep.join(header)] + [sep.join(cell(v) for v in r) for r in rows]
    return newline.join(lines) + newline


def _score(csv: Path, scans: Path) -> pd.DataFrame:
    out = csv.with_name(csv.stem + "_out.csv")
    summary = score_csv(csv, scans, out, None, PREPARE, SERVE, progress=False, predict=_predict)
    assert summary.file_error is None, summary.file_error
    return pd.read_csv(out, dtype=str, keep_default_na=False)


PLAIN = ["nodule_id", "seriesuid", "coordX", "coordY", "coordZ", "site"]
EXPORTS = {
    # name: (header, delimiter, decimal mark, line ending, encoding)
    "semicolon-decimal-comma-bom": (
        ["Nodule ID", "SeriesInstanceUID", "X (mm)", "Y (mm)", "Z (mm)", "site"],
        ";",
        ",",
        "\r\n",
        "utf-8-sig",
    ),
    "cp1252-crlf": (["nodule_id", "series_uid", "coord_x", "coord_y", "coord_z", "site"], ",", ".", "\r\n", "cp1252"),
    "tab-cr": (["NODULE_ID", " seriesUID ", "x", "y", "z", "site"], "\t", ".", "\r", "utf-8"),
    "semicolon-point-lf": (["nodule_id", "SeriesUID", "worldX", "worldY", "worldZ", "site"], ";", ".", "\n", "utf-8"),
}


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_spreadsheet_exports_score_like_the_plain_csv(scans: Path, tmp_path: Path, name: str) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_text(_text(PLAIN, ROWS, ","), encoding="utf-8")
    ref = _score(plain, scans)
    assert list(ref["status"]) == ["ok"] * 4 + ["error"]

    header, sep, decimal, newline, encoding = EXPORTS[name]
    export = tmp_path / f"{name}.csv"
    export.write_bytes(_text(header, ROWS, sep, decimal, newline).encode(encoding))
    res = _score(export, scans)
    assert list(res.columns)[:6] == [h.strip() for h in header]  # the header as written
    assert list(res["probability"]) == list(ref["probability"])  # the same numbers, bit for bit
    assert list(res["status"]) == list(ref["status"]) and list(res["error"]) == list(ref["error"])
    assert list(res["site"]) == [r[5] for r in ROWS]  # non-ASCII and quoted cells carried through
    if decimal == ",":
        assert res.iloc[0, 2] == "-12,5"  # cells kept as written


def test_cp1252_fallback_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(_text(PLAIN, ROWS, ",", newline="\r\n").encode("cp1252"))
    with caplog.at_level(logging.WARNING):
        check = check_nodule_csv(path)
    assert check.file_error is None and check.encoding == "cp1252" and not check.row_errors
    assert check.notes and "not UTF-8" in check.notes[0] and "cp1252" in check.notes[0]
    assert any("read as cp1252" in r.getMessage() for r in caplog.records)
    assert check.frame.loc[0, "site"] == "Hôpital Sévérine"
    assert check.seriesuids == [r[1] for r in ROWS]


def test_malformed_lines_become_error_rows_and_every_other_row_is_scored(scans: Path, tmp_path: Path) -> None:
    lines = [",".join(PLAIN)]
    points = [(-9.0 + 1.5 * i, 0.5 * i, -6.0 + i) for i in range(14)]
    for i, (x, y, z) in enumerate(points):
        lines.append(f"m{i},{UID_A if i % 2 else UID_B},{x},{y},{z},s{i}")
    lines[12] += ",surplus"  # file line 13: one field too many
    lines[4] = f"m3,{UID_A},{points[3][0]},{points[3][1]}"  # file line 5: two fields too few
    lines[7] = f'm6,{UID_A},"{points[6][0]},{points[6][1]},{points[6][2]},s6'  # file line 8: a quote that never closes
    lines[9] = f'm8,{UID_A},{points[8][0]},{points[8][1]},{points[8][2]},"two\nlines"'  # a quoted cell over 2 lines
    csv = tmp_path / "malformed.csv"
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = _score(csv, scans)
    assert len(res) == 14 and list(res["nodule_id"]) == [f"m{i}" for i in range(14)]
    bad = {3: "file line 5: 4 fields where the header has 6", 6: "file line 8: a quote that does not close"}
    bad[11] = "file line 14: 7 fields where the header has 6"  # the 2-line cell above moves it down one line
    for i in range(14):
        if i in bad:
            assert res.loc[i, "status"] == "error" and res.loc[i, "error"].startswith(f"row {i + 1}: {bad[i]}")
            assert res.loc[i, "probability"] == ""
        else:
            assert res.loc[i, "status"] == "ok", (i, res.loc[i, "error"])
    assert res.loc[8, "site"] == "two\nlines"
    assert "surplus" in res.loc[11, "error"]  # the line's text is in the message: nothing is lost


def test_ambiguous_numbers_are_errors_not_wrong_values(scans: Path, tmp_path: Path) -> None:
    comma = tmp_path / "comma.csv"
    comma.write_text(
        "nodule_id,seriesuid,coordX,coordY,coordZ\n"
        f'a,{UID_A},"1,250",0.0,0.0\n'  # thousands separator or decimal comma?
        f'b,{UID_A},"-12,5",0.0,0.0\n'
        f"c,{UID_A},1.5,0.0,0.0\n"
        f"d,{UID_A},1 250,0.0,0.0\n",
        encoding="utf-8",
    )
    res = _score(comma, scans)
    assert list(res["status"]) == ["error", "error", "ok", "error"]
    assert "coordX '1,250' holds a ','" in res.loc[0, "error"] and "'-12,5' holds a ','" in res.loc[1, "error"]
    assert "coordX '1 250' is not a finite number" in res.loc[3, "error"]

    semi = tmp_path / "semi.csv"
    semi.write_text(
        "nodule_id;seriesuid;coordX;coordY;coordZ\n"
        f"a;{UID_A};-12,5;0;0\n"
        f"b;{UID_A};1.250;0;0\n"  # a '.' in a decimal-comma file: 1.25 or 1250?
        f"c;{UID_A};1.250,5;0;0\n",
        encoding="utf-8",
    )
    res = _score(semi, scans)
    assert list(res["status"]) == ["ok", "error", "error"]
    assert "holds a '.' but this file writes decimals with ','" in res.loc[1, "error"]


def test_file_level_refusals_say_what_was_found_and_expected(scans: Path, tmp_path: Path) -> None:
    both = tmp_path / "both.csv"
    both.write_text(f"seriesuid,x,coordX,y,z\n{UID_A},1,1,0,0\n", encoding="utf-8")
    check = check_nodule_csv(both)
    assert check.file_error and "ambiguous columns" in check.file_error and "['x', 'coordX']" in check.file_error

    cm = tmp_path / "cm.csv"
    cm.write_text(f"seriesuid;x (cm);y (cm);z (cm)\n{UID_A};1;0;0\n", encoding="utf-8")
    check = check_nodule_csv(cm)
    assert check.file_error and "missing required column(s) ['coordX', 'coordY', 'coordZ']" in check.file_error
    assert "found ['seriesuid', 'x (cm)', 'y (cm)', 'z (cm)']" in check.file_error and "X (mm)" in check.file_error
    summary = score_csv(cm, scans, tmp_path / "cm_out.csv", None, PREPARE, SERVE, progress=False, predict=_predict)
    out = pd.read_csv(tmp_path / "cm_out.csv", dtype=str, keep_default_na=False)
    assert list(out["status"]) == ["error"] and out.loc[0, "error"] == summary.file_error

    nul = tmp_path / "utf16.csv"
    nul.write_bytes("seriesuid,coordX,coordY,coordZ\n".encode("utf-16-le"))
    assert "NUL bytes" in str(check_nodule_csv(nul).file_error)
    bom16 = tmp_path / "bom16.csv"
    bom16.write_bytes(_text(PLAIN, ROWS, "\t").encode("utf-16"))
    check = check_nodule_csv(bom16)
    assert check.file_error is None and check.encoding == "utf-16" and len(check.frame) == len(ROWS)


def test_number_and_name_rules() -> None:
    assert parse_coordinate(" -12.5 ", ",", ".") == (-12.5, None)
    assert parse_coordinate("-12,5", ";", ",") == (-12.5, None)
    assert parse_coordinate("\u221212,5", ";", ",") == (-12.5, None)  # a typographic minus
    assert parse_coordinate("1e2", ",", ".") == (100.0, None)
    for cell, sep, dec in [
        ("inf", ",", "."),
        ("nan", ",", "."),
        ("1,2,3", ";", ","),
        ("", ",", "."),
        ("abc", ";", "."),
    ]:
        assert parse_coordinate(cell, sep, dec) == (None, None), cell
    assert parse_coordinate("1,5", ",", ".")[1] and parse_coordinate("1.5", ";", ",")[1]
    for name, canonical in [
        ("SeriesInstanceUID", "seriesuid"),
        ("series_uid", "seriesuid"),
        ("Series UID", "seriesuid"),
        ("X (mm)", "coordX"),
        ("coord_x", "coordX"),
        ("COORDZ", "coordZ"),
        ("y [mm]", "coordY"),
        ("Nodule-ID", "nodule_id"),
        ("x (cm)", None),
        ("voxelX", None),
    ]:
        assert canonical_of(name) == canonical, name


def test_excel_sep_line_and_a_repeated_required_column(tmp_path: Path) -> None:
    hinted = tmp_path / "hinted.csv"
    hinted.write_bytes(("sep=;\r\n" + _text(PLAIN, ROWS, ";", ",", "\r\n")).encode("cp1252"))
    check = check_nodule_csv(hinted)
    assert check.file_error is None and check.delimiter == ";" and check.decimal == ","
    assert check.lines[0] == 3 and np.allclose(check.coords[0], (-12.5, 3.25, 0.5))

    twice = tmp_path / "twice.csv"
    twice.write_text(f"seriesuid,coordX,coordY,coordZ,seriesuid\n{UID_A},1,0,0,{UID_B}\n", encoding="utf-8")
    check = check_nodule_csv(twice)
    assert (
        check.file_error
        and "ambiguous columns" in check.file_error
        and "['seriesuid', 'seriesuid']" in check.file_error
    )
