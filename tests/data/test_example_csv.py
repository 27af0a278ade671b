"""The README's sample nodule list (``examples/nodules.csv``) stays true to the embedded default dataset: its
series are scans of test fold 1 (``subset1``) of ``naslung data synth`` with the committed params, its
demo rows are annotated nodule centres of those scans (world mm, x y z), and the two rows meant to fail do
(a point outside the scan, an unknown series); the file passes the nodule-CSV checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from naslung.checks.nodule_csv import check_nodule_csv
from naslung.data.synth import plan
from naslung.params import load_params

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "nodules.csv"


def test_example_csv_points_at_test_fold_nodules_of_the_embedded_default() -> None:
    params = load_params(REPO / "params.yaml")
    scans = {s.layout.seriesuid: s for s in plan(params.synth)}
    rows = pd.read_csv(EXAMPLE)
    check = check_nodule_csv(EXAMPLE)
    assert check.file_error is None and not check.row_errors
    demo = rows[~rows["nodule_id"].isin(["demo-outside", "demo-unknown-series"])]
    assert len(demo) >= 5
    for _, r in demo.iterrows():
        scan = scans[r["seriesuid"]]
        assert scan.layout.subset == 1, "demo rows come from test fold 1 (held out of training and search)"
        centres = np.array([n.centre_xyz for n in scan.nodules])
        assert np.abs(centres - r[["coordX", "coordY", "coordZ"]].to_numpy(float)).max(axis=1).min() < 0.01
    assert rows.loc[rows["nodule_id"] == "demo-unknown-series", "seriesuid"].iloc[0] not in scans
    outside = rows[rows["nodule_id"] == "demo-outside"].iloc[0]
    geo = scans[outside["seriesuid"]].layout.geometry
    extent = np.asarray(geo.origin_xyz) + np.asarray(geo.spacing_xyz) * np.asarray(geo.size_xyz)
    assert (outside[["coordX", "coordY", "coordZ"]].to_numpy(float) > extent).all()
