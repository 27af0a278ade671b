"""The ``prepare`` step: annotations + raw scans -> patch store (patches.npy, manifest.csv, rejects.csv,
prepare_metrics.json).

Every input row ends up in exactly one of ``manifest.csv`` (labelled, cut) or ``rejects.csv`` (with a
reason: ``bad coordinates``, ``missing series uid``, ``indeterminate``, ``unrated``, ``no scan for series
uid``, ``unreadable scan``, ``outside scan``; the text after the colon gives details). Each scan is read
once for all its nodules. Outputs are deterministic for the same inputs and params (no timings inside).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from tqdm import tqdm

from naslung.artifact_paths import MANIFEST_FILE as MANIFEST_FILE
from naslung.artifact_paths import PATCHES_FILE as PATCHES_FILE
from naslung.artifact_paths import ArtifactsDir
from naslung.data.folds import assign_folds
from naslung.data.labels import REJECT_COLUMNS, mean_score, read_annotations, row_label, valid_scores
from naslung.data.patches import OutsideScanError, PatchCutter
from naslung.data.scans import ScanError, ScanIndex, read_scan
from naslung.params import PrepareParams

MANIFEST_COLUMNS = [
    "nodule_id",
    "seriesuid",
    "coordX",
    "coordY",
    "coordZ",
    "diameter_mm",
    "reader_scores",
    "mean_score",
    "label",
    "fold",
    "scan_path",
    "patch_index",
]
"""Columns of ``manifest.csv``; ``patch_index`` is the row of ``patches.npy``."""


def reason_code(reason: str) -> str:
    """The category of a reject reason (the text before the first ':')."""
    return reason.split(":", 1)[0].strip()


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (as found by the scan index, symlinks not followed), else as given."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def prepare(
    raw_dir: str | Path,
    annotations_csv: str | Path,
    out_dir: str | Path,
    p: PrepareParams,
    progress: bool = True,
) -> dict[str, Any]:
    """Cut one windowed 32^3 1 mm patch per labelled nodule and write the patch store to ``out_dir``.

    ``raw_dir``: folder with ``.mhd`` scans and/or DICOM series (LUNA16 ``subsetK`` folders give folds);
    ``annotations_csv``: any table :func:`naslung.data.labels.read_annotations` reads. Returns the summary
    also written to ``prepare_metrics.json``.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    ann = read_annotations(annotations_csv)
    index = ScanIndex.build(raw_dir)
    folds = assign_folds({u: r.subset for u, r in index.scans.items()}, p.n_folds, p.fold_rule)

    rejects: list[dict[str, Any]] = []
    todo: dict[str, list[dict[str, Any]]] = {}

    def reject(row: dict[str, Any], reason: str) -> None:
        rejects.append({k: row.get(k) for k in REJECT_COLUMNS[:-1]} | {"reason": reason})

    # pandas-stubs types record keys as Hashable; read_annotations gives string column names.
    for row in cast("list[dict[str, Any]]", ann.to_dict("records")):
        if row["error"]:
            reject(row, row["error"])
            continue
        label, why = row_label(row["reader_scores"], row["given_label"])
        if label is None:
            score_text = ";".join(map(str, row["reader_scores"])) or "none"
            reject(row, f"{why}: reader scores {score_text}, source row {row['source_row']}")
            continue
        if row["seriesuid"] not in index:
            reject(row, f"no scan for series uid: {row['seriesuid']} not found under {raw_dir}")
            continue
        row["label"] = label
        todo.setdefault(row["seriesuid"], []).append(row)

    kept: list[tuple[dict[str, Any], np.ndarray]] = []
    n_read = 0
    for uid in tqdm(sorted(todo), desc="prepare: scans", unit="scan", disable=not progress):
        ref = index.scans[uid]
        try:
            image = read_scan(ref.path, uid if ref.kind == "dicom" else None)
        except ScanError as e:
            for row in todo[uid]:
                reject(row, f"unreadable scan: {e}")
            continue
        n_read += 1
        cutter = PatchCutter(image, p)
        for row in todo[uid]:
            pt = np.array([row["coordX"], row["coordY"], row["coordZ"]], dtype=float)
            try:
                patch = cutter.cut(pt)
            except OutsideScanError as e:
                reject(row, f"outside scan: {ref.path.name}: {e} (source row {row['source_row']})")
                continue
            except RuntimeError as e:  # SimpleITK failure on this region only
                reject(row, f"unreadable scan: {ref.path}: {e}")
                continue
            row["fold"] = folds[uid]
            row["scan_path"] = _rel(ref.path, raw_dir)
            kept.append((row, patch))
        del image, cutter

    kept.sort(key=lambda rp: rp[0]["source_row"])
    records = []
    for i, (row, _) in enumerate(kept):
        scores = valid_scores(row["reader_scores"])
        m = mean_score(scores)
        records.append(
            {
                **{k: row[k] for k in ("nodule_id", "seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")},
                "reader_scores": ";".join(map(str, scores)),
                "mean_score": round(m, 4) if m is not None else math.nan,
                "label": int(row["label"]),
                "fold": int(row["fold"]),
                "scan_path": row["scan_path"],
                "patch_index": i,
            }
        )
    manifest = pd.DataFrame.from_records(records, columns=MANIFEST_COLUMNS)
    rej = pd.DataFrame.from_records(rejects, columns=REJECT_COLUMNS).sort_values("source_row", kind="stable")
    size = int(p.patch_size)
    patches = (
        np.stack([pt for _, pt in kept]).astype(np.float32) if kept else np.zeros((0, size, size, size), np.float32)
    )
    summary = summarize(manifest, rej, n_rows=len(ann), p=p)
    summary.update(
        annotations=Path(annotations_csv).name,
        annotations_format=ann.attrs.get("format"),
        n_scans_indexed=len(index),
        n_scans_read=n_read,
    )

    out = ArtifactsDir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out.patches, patches)
    manifest.to_csv(out.manifest, index=False)
    rej.to_csv(out.rejects, index=False)
    out.prepare_metrics.write_text(encoding="utf-8", data=json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def summarize(manifest: pd.DataFrame, rejects: pd.DataFrame, n_rows: int, p: PrepareParams) -> dict[str, Any]:
    """Counts per class and per fold, rejects by reason, and the diameter-only baseline."""
    from naslung.data.baseline import diameter_baseline

    per_fold = {}
    for k in range(p.n_folds):
        f = manifest[manifest["fold"] == k]
        per_fold[str(k)] = {
            "n": len(f),
            "malignant": int((f["label"] == 1).sum()),
            "benign": int((f["label"] == 0).sum()),
            "n_series": int(f["seriesuid"].nunique()),
        }
    by_reason = Counter(reason_code(r) for r in rejects["reason"])
    lab = manifest[np.isfinite(manifest["diameter_mm"].astype(float))]
    baseline: dict[str, Any] = {"accuracy": None, "threshold_mm": None}
    if len(lab) and lab["label"].nunique() > 0:
        baseline = dict(diameter_baseline(lab["diameter_mm"].to_numpy(float), lab["label"].to_numpy(int)))
    baseline["n"] = len(lab)
    return {
        "n_rows": int(n_rows),
        "n_nodules": len(manifest),
        "n_malignant": int((manifest["label"] == 1).sum()),
        "n_benign": int((manifest["label"] == 0).sum()),
        "n_series": int(manifest["seriesuid"].nunique()),
        "per_fold": per_fold,
        "n_rejected": len(rejects),
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "diameter_baseline": {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in baseline.items()},
    }
