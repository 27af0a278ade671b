"""The ``validate`` step: Great Expectations suites over the annotations table, the patch manifest
and the patch array. Writes ``artifacts/validation.json``; a failure stops ``dvc repro`` with a
readable list of what failed and where (file, column, rows, values).

Suites
- annotations (the raw table at ``paths.annotations``): required columns; numeric world coordinates
  (mm); diameter (mm) inside ``validate.diameter_mm``; reader scores integers in 1..5 (0 = "not rated"
  is allowed and ignored by the label rule); one row per nodule (no duplicate series uid + centre).
- manifest (``artifacts/manifest.csv``): label in {0, 1}; fold in 0..n_folds-1; every fold non-empty
  with both classes; no series in two folds; malignant fraction inside ``validate.class_fraction``;
  patch_index unique and inside the patch array.
- patches (``artifacts/patches.npy``): shape (N, P, P, P) with N = manifest rows; values in [0, 1];
  no NaN.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from naslung.artifact_paths import MANIFEST_FILE, ArtifactPaths
from naslung.checks.gx import CheckReport, Failure, missing_columns, run_expectations
from naslung.lineage import data_identity
from naslung.params import Params

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
SCORE_COLUMNS = ("mal_details", "reader_scores")
MANIFEST_COLUMNS = ("nodule_id", "seriesuid", "label", "fold", "patch_index")


def _column_report(check: str, source: str, n_rows: int, missing: list[str]) -> CheckReport:
    failure = Failure(
        check=check,
        expectation="required_columns",
        column=None,
        observed=f"{source}: missing column(s) {missing}",
    )
    return CheckReport(check=check, success=False, n_rows=n_rows, n_expectations=1, failures=[failure])


def _invalid_scores(text: str) -> str:
    """Reader-score tokens that are not an integer 0..5 (0 = not rated), joined; "" when all are valid."""
    tokens = [t for t in re.split(r"[\s,;]+", str(text).strip().strip("[]()")) if t]
    bad = []
    for token in tokens:
        try:
            value = float(token)
        except ValueError:
            bad.append(token)
            continue
        if not (0 <= value <= 5 and value == int(value)):
            bad.append(token)
    return " ".join(bad)


def check_annotations(path: Path, p: Params) -> CheckReport:
    """Suite for the raw annotations table (LUNA16 columns plus per-reader scores)."""
    import great_expectations as gx

    raw = pd.read_csv(path, dtype=str, encoding="utf-8-sig")
    missing = missing_columns(raw, ANNOTATION_COLUMNS)
    if missing:
        return _column_report("annotations", str(path), len(raw), missing)
    frame = pd.DataFrame({"seriesuid": raw["seriesuid"]})
    for col in ("coordX", "coordY", "coordZ", "diameter_mm"):
        frame[col] = pd.to_numeric(raw[col], errors="coerce")
    frame["nodule_key"] = (
        raw["seriesuid"].astype(str)
        + "@"
        + raw["coordX"].astype(str)
        + ","
        + raw["coordY"].astype(str)
        + ","
        + raw["coordZ"].astype(str)
    )
    score_col = next((c for c in SCORE_COLUMNS if c in raw.columns), None)
    lo, hi = p.validate.diameter_mm
    expectations: list[Any] = [
        gx.expectations.ExpectColumnValuesToNotBeNull(column="seriesuid"),
        *[gx.expectations.ExpectColumnValuesToNotBeNull(column=c) for c in ("coordX", "coordY", "coordZ")],
        gx.expectations.ExpectColumnValuesToBeBetween(column="diameter_mm", min_value=lo, max_value=hi),
        gx.expectations.ExpectColumnValuesToBeUnique(column="nodule_key"),
    ]
    if score_col is not None:
        frame["reader_scores"] = raw[score_col].fillna("")
        frame["invalid_scores"] = [_invalid_scores(v) for v in frame["reader_scores"]]
        expectations.append(gx.expectations.ExpectColumnValuesToBeInSet(column="invalid_scores", value_set=[""]))
    return run_expectations("annotations", frame, expectations)


def check_manifest(manifest: pd.DataFrame, p: Params) -> CheckReport:
    """Suite for the patch manifest (one row per labelled, extracted nodule)."""
    import great_expectations as gx

    missing = missing_columns(manifest, MANIFEST_COLUMNS)
    if missing:
        return _column_report("manifest", MANIFEST_FILE, len(manifest), missing)
    lo, hi = p.validate.class_fraction
    n_folds = p.prepare.n_folds
    frame = manifest[list(MANIFEST_COLUMNS)].copy()
    # Per-series fold count and per-fold class counts are tables of their own, checked in the same suite
    # by joining them back row-wise so GX can name offending rows.
    folds_per_series = manifest.groupby("seriesuid")["fold"].nunique()
    frame["folds_of_series"] = manifest["seriesuid"].map(folds_per_series)
    report = run_expectations(
        "manifest",
        frame,
        [
            gx.expectations.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]),
            gx.expectations.ExpectColumnValuesToBeBetween(column="fold", min_value=0, max_value=n_folds - 1),
            gx.expectations.ExpectColumnValuesToBeUnique(column="nodule_id"),
            gx.expectations.ExpectColumnValuesToBeUnique(column="patch_index"),
            gx.expectations.ExpectColumnValuesToBeInSet(column="folds_of_series", value_set=[1]),
            gx.expectations.ExpectColumnMeanToBeBetween(column="label", min_value=lo, max_value=hi),
        ],
    )
    counts = (
        manifest.pivot_table(index="fold", columns="label", values="nodule_id", aggfunc="count", fill_value=0)
        .reindex(index=range(n_folds), columns=[0, 1], fill_value=0)
        .rename(columns={0: "n_benign", 1: "n_malignant"})
        .reset_index()
    )
    per_fold = run_expectations(
        "manifest_folds",
        counts,
        [
            gx.expectations.ExpectColumnValuesToBeBetween(column="n_benign", min_value=1),
            gx.expectations.ExpectColumnValuesToBeBetween(column="n_malignant", min_value=1),
        ],
    )
    # Fold rows are reported as fold numbers, not frame positions.
    fold_failures = [
        Failure(**{**f.__dict__, "rows": [int(counts.loc[r, "fold"]) for r in f.rows]}) for f in per_fold.failures
    ]
    return CheckReport(
        check="manifest",
        success=report.success and per_fold.success,
        n_rows=len(manifest),
        n_expectations=report.n_expectations + per_fold.n_expectations,
        failures=report.failures + fold_failures,
    )


def check_patches(patches: np.ndarray, n_manifest: int, patch_size: int) -> CheckReport:
    """Suite for the patch array: shape, value range [0, 1], no NaN (statistics per patch)."""
    import great_expectations as gx

    flat = np.asarray(patches, dtype=np.float32).reshape(patches.shape[0], -1) if patches.ndim > 1 else patches
    stats = pd.DataFrame(
        {
            "patch_index": np.arange(patches.shape[0]),
            "n_nan": np.isnan(flat).sum(axis=1),
            "min": np.nanmin(flat, axis=1) if flat.size else [],
            "max": np.nanmax(flat, axis=1) if flat.size else [],
        }
    )
    shape = pd.DataFrame({"shape": [str(tuple(patches.shape))]})
    expected = str((n_manifest, patch_size, patch_size, patch_size))
    shape_report = run_expectations(
        "patches_shape", shape, [gx.expectations.ExpectColumnValuesToBeInSet(column="shape", value_set=[expected])]
    )
    report = run_expectations(
        "patches",
        stats,
        [
            gx.expectations.ExpectColumnValuesToBeInSet(column="n_nan", value_set=[0]),
            gx.expectations.ExpectColumnValuesToBeBetween(column="min", min_value=0.0, max_value=1.0),
            gx.expectations.ExpectColumnValuesToBeBetween(column="max", min_value=0.0, max_value=1.0),
        ],
    )
    return CheckReport(
        check="patches",
        success=report.success and shape_report.success,
        n_rows=len(stats),
        n_expectations=report.n_expectations + 1,
        failures=shape_report.failures + report.failures,
    )


def validate(p: Params, annotations: Path | None = None, artifacts: Path | None = None) -> dict[str, Any]:
    """Run the three suites and write ``<artifacts>/validation.json``; returns its content."""
    annotations = Path(annotations or p.paths.annotations)
    out = ArtifactPaths.from_params(p, artifacts=artifacts).artifacts
    manifest = pd.read_csv(out.manifest)
    patches = np.load(out.patches, mmap_mode="r")
    reports = [
        check_annotations(annotations, p),
        check_manifest(manifest, p),
        check_patches(patches, len(manifest), p.prepare.patch_size),
    ]
    result = {
        "success": all(r.success for r in reports),
        "annotations": str(annotations),
        "artifacts": str(out.root),
        # which data this verdict is about: the gate refuses a model trained on other data
        "md5": data_identity(out.root).md5,
        "suites": {r.check: r.to_dict() for r in reports},
    }
    out.validation.write_text(encoding="utf-8", data=json.dumps(result, indent=2) + "\n")
    return result


def format_failures(result: dict[str, Any]) -> str:
    """Human-readable list of failures, one line each, naming the suite, column and rows."""
    lines = []
    for name, suite in result["suites"].items():
        for failure in suite["failures"]:
            lines.append(f"- {name}: {failure['message']}")
    return "\n".join(lines)
