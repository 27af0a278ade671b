"""Great Expectations suites: real validations on small tables that pass, and on broken ones whose
failures must name the column and the offending rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from naslung.params import Params
from naslung.validation import check_annotations, check_manifest, check_patches, format_failures, validate

P = Params()


def _manifest(n_per_fold: int = 4, n_folds: int = 10) -> pd.DataFrame:
    rows = []
    for fold in range(n_folds):
        for i in range(n_per_fold):
            rows.append(
                {
                    "nodule_id": f"n{fold}-{i}",
                    "seriesuid": f"1.2.{fold}.{i // 2}",
                    "label": i % 2,
                    "fold": fold,
                }
            )
    frame = pd.DataFrame(rows)
    frame["patch_index"] = np.arange(len(frame))
    return frame


def _annotations(tmp_path: Path, rows: list[list[object]]) -> Path:
    path = tmp_path / "annotations_with_malignancy.csv"
    frame = pd.DataFrame(
        rows, columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "mal_bool", "mal_details"]
    )
    frame.to_csv(path, index=False)
    return path


def test_manifest_passes_and_fails_with_rows() -> None:
    good = _manifest()
    assert check_manifest(good, P).success

    bad = good.copy()
    bad.loc[3, "label"] = 2  # not a class
    bad.loc[5, "fold"] = 7  # series 1.2.0.1 now in folds 0 and 7
    report = check_manifest(bad, P)
    assert not report.success
    by_exp = {(f.expectation, f.column): f for f in report.failures}
    assert by_exp[("expect_column_values_to_be_in_set", "label")].rows == [3]
    series_rows = by_exp[("expect_column_values_to_be_in_set", "folds_of_series")].rows
    assert 5 in series_rows and 4 in series_rows


def test_manifest_fold_without_a_class_is_named() -> None:
    frame = _manifest()
    frame.loc[frame["fold"] == 6, "label"] = 0
    report = check_manifest(frame, P)
    assert not report.success
    failure = next(f for f in report.failures if f.column == "n_malignant")
    assert failure.rows == [6]  # reported as the fold number
    assert "n_malignant" in failure.describe()


def test_annotations_suite_names_bad_rows(tmp_path: Path) -> None:
    uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.1"
    good = [[uid, 1.0, 2.0, 3.0, 6.5, False, "[2, 1]"], [uid, 10.0, 2.0, 3.0, 14.0, True, "[4, 5, 4]"]]
    assert check_annotations(_annotations(tmp_path, good), P).success

    bad = [
        *good,
        [uid, "abc", 2.0, 3.0, 6.0, False, "[2]"],  # row 2: text coordinate
        [uid, 20.0, 2.0, 3.0, 99.0, True, "[4]"],  # row 3: diameter out of range
        [uid, 30.0, 2.0, 3.0, 6.0, True, "[7, 4]"],  # row 4: score 7
        [uid, 1.0, 2.0, 3.0, 6.5, False, "[2, 1]"],  # row 5: duplicate of row 0
    ]
    report = check_annotations(_annotations(tmp_path, bad), P)
    assert not report.success
    rows = {f.column: f.rows for f in report.failures}
    assert rows["coordX"] == [2]
    assert rows["diameter_mm"] == [3]
    assert rows["invalid_scores"] == [4]
    assert sorted(rows["nodule_key"]) == [0, 5]


def test_annotations_missing_column_is_a_file_level_error(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    pd.DataFrame({"seriesuid": ["1"], "coordX": [1.0]}).to_csv(path, index=False)
    report = check_annotations(path, P)
    assert not report.success
    assert "coordY" in str(report.failures[0].observed) and str(path) in str(report.failures[0].observed)


def test_patch_suite() -> None:
    patches = np.random.default_rng(0).random((5, 32, 32, 32), dtype=np.float32)
    assert check_patches(patches, 5, 32).success
    patches[2, 0, 0, 0] = np.nan
    patches[4, 1, 1, 1] = 1.5
    report = check_patches(patches, 6, 32)
    assert not report.success
    rows = {(f.check, f.column): f.rows for f in report.failures}
    assert rows[("patches", "n_nan")] == [2]
    assert rows[("patches", "max")] == [4]
    assert any(f.check == "patches_shape" for f in report.failures)


def test_validate_writes_json_and_readable_failures(tmp_path: Path) -> None:
    uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.1"
    ann = _annotations(tmp_path, [[uid, 1.0, 2.0, 3.0, 6.5, False, "[2, 1]"]])
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    manifest = _manifest()
    manifest.to_csv(artifacts / "manifest.csv", index=False)
    np.save(artifacts / "patches.npy", np.full((len(manifest), 32, 32, 32), 0.5, dtype=np.float32))
    result = validate(P, ann, artifacts)
    assert result["success"]
    assert json.loads((artifacts / "validation.json").read_text())["success"] is True

    manifest.loc[0, "label"] = 5
    manifest.to_csv(artifacts / "manifest.csv", index=False)
    result = validate(P, ann, artifacts)
    assert not result["success"]
    text = format_failures(result)
    assert "manifest" in text and "label" in text and "rows 0" in text
