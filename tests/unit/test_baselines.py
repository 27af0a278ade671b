"""The two reference classifiers (naslung/baselines.py) on the 82 real LIDC patches of ../shared/data
(6 reader-marked nodules = 1, 76 LUNA16 excluded findings = 0) and on the synthetic builders' patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from builders import synthetic_patches
from sklearn.metrics import roc_auc_score

from naslung.baselines import VOXEL_FEATURE_NAMES, baseline_predictions, baseline_predictions_cv, voxel_features
from naslung.data.patches import window_hu
from naslung.data.prepare import MANIFEST_COLUMNS
from naslung.data.store import PatchStore

HU = (-1200.0, 600.0)


def _real_store(shared_data: Path, root: Path) -> PatchStore:
    """A patch store of the 82 real patches; manifest rows shuffled, patch_index a permutation, folds 0-4
    with one nodule in each of folds 0-4 (and the sixth in fold 0)."""
    base = shared_data / "LIDC-patches-derived" / "lidc_0001-0003_patches_32cube_1mm"
    z = np.load(f"{base}.npz")
    meta = pd.read_csv(f"{base}.csv")
    n = len(meta)
    label = (meta["kind"] == "lidc_nodule").to_numpy(np.int64)
    rng = np.random.default_rng(3)
    order = rng.permutation(n)  # manifest row r describes patch order[r]
    patches = window_hu(z["images"].astype(np.float32), HU)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "patches.npy", patches)
    pos = np.flatnonzero(label)
    fold = np.arange(n) % 5
    fold[pos] = np.arange(pos.size) % 5
    diam = np.where(label == 1, meta["xy_extent_mm_union"].fillna(0).to_numpy(float), np.nan)
    diam[np.flatnonzero(label == 0)[::3]] = 4.0  # some findings carry a size, others none (NaN)
    rows = []
    for r, i in enumerate(order):
        rows.append(
            {
                "nodule_id": f"p{i:03d}",
                "seriesuid": meta["seriesuid"][i],
                "coordX": meta["coordX"][i],
                "coordY": meta["coordY"][i],
                "coordZ": meta["coordZ"][i],
                "diameter_mm": diam[i],
                "reader_scores": "",
                "mean_score": np.nan,
                "label": int(label[i]),
                "fold": int(fold[i]),
                "scan_path": "x.mhd",
                "patch_index": int(i),
            }
        )
        assert r == len(rows) - 1
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(root / "manifest.csv", index=False)
    return PatchStore.open(root)


def test_rows_follow_patch_store_arrays_order(shared_data: Path, tmp_path: Path) -> None:
    store = _real_store(shared_data, tmp_path / "store")
    eval_folds = [3, 1]
    X, y, ids = store.arrays(eval_folds)
    out = baseline_predictions(store.manifest, store.patches, [0, 2, 4], eval_folds)
    assert set(out) == {"diameter", "voxel_stats"}
    rows = store.select(eval_folds)
    for b in out.values():
        np.testing.assert_array_equal(b.ids, ids)
        assert b.score.shape == b.label.shape == y.shape
        assert b.score.dtype == np.float64 and b.label.dtype == np.int64
        assert np.all((b.score >= 0) & (b.score <= 1)) and set(np.unique(b.label)) <= {0, 1}
        assert b.n_train == int(store.manifest["fold"].isin([0, 2, 4]).sum())
    # the features of row r come from patch patch_index[r] (here a permutation), the same X as arrays()
    feats = voxel_features(X, rows["diameter_mm"].fillna(0).to_numpy(float), HU)
    direct = voxel_features(
        store.patches[rows["patch_index"].to_numpy()], rows["diameter_mm"].fillna(0).to_numpy(float), HU
    )
    np.testing.assert_array_equal(feats, direct)
    assert feats.shape == (len(rows), len(VOXEL_FEATURE_NAMES)) == (len(rows), 12)
    # the 8-bin histogram is a fraction of the voxels within 8 voxels of the centre
    np.testing.assert_allclose(feats[:, 1:9].sum(axis=1), 1.0)


def test_no_eval_fold_row_is_used_for_fitting(shared_data: Path, tmp_path: Path) -> None:
    store = _real_store(shared_data, tmp_path / "store")
    m = store.manifest
    patches = np.array(store.patches)
    train, ev = [0, 1, 2, 3], [4]
    ref = baseline_predictions(m, patches, train, ev)
    # wreck everything about the eval rows except their own features: labels flipped, other folds' rows
    # unchanged -> identical predictions on the eval rows
    m2 = m.copy()
    is_ev = m2["fold"].isin(ev)
    m2.loc[is_ev, "label"] = 1 - m2.loc[is_ev, "label"]
    got = baseline_predictions(m2, patches, train, ev)
    for name in ref:
        np.testing.assert_array_equal(got[name].score, ref[name].score)
        np.testing.assert_array_equal(got[name].label, ref[name].label)
    # changing a training row's label does change the fit (the check above is not vacuous)
    m3 = m.copy()
    m3.loc[m3["fold"].isin(train) & (m3["label"] == 0), "label"] = 1
    m3.loc[m3.index[m3["fold"].isin(train)][:3], "label"] = 0
    changed = baseline_predictions(m3, patches, train, ev)
    assert not np.array_equal(changed["voxel_stats"].score, ref["voxel_stats"].score)
    with pytest.raises(ValueError, match="overlap"):
        baseline_predictions(m, patches, [0, 1, 4], [4])


def test_cv_fits_each_fold_without_it(shared_data: Path, tmp_path: Path) -> None:
    store = _real_store(shared_data, tmp_path / "store")
    per = baseline_predictions_cv(store.manifest, store.patches, [0, 2])
    for k, preds in per.items():
        ref = baseline_predictions(store.manifest, store.patches, [f for f in range(5) if f != k], [k])
        np.testing.assert_array_equal(preds["voxel_stats"].score, ref["voxel_stats"].score)
        assert preds["diameter"].n_train == int((store.manifest["fold"] != k).sum())


def test_voxel_statistics_learn_both_classes() -> None:
    """Synthetic blobs (big bright = malignant) with an uninformative diameter: the voxel statistics separate
    the classes on held-out folds and predict both; the diameter baseline cannot."""
    X, y = synthetic_patches(80, seed=1)
    man = pd.DataFrame(
        {
            "nodule_id": [f"n{i}" for i in range(80)],
            "diameter_mm": 8.0,
            "label": y,
            "fold": np.arange(80) % 4,
            "patch_index": np.arange(80),
        }
    )
    out = baseline_predictions(man, X[:, None], [0, 1, 2], [3])
    y_ev = y[np.arange(80) % 4 == 3]
    assert set(np.unique(y_ev)) == {0, 1}
    assert roc_auc_score(y_ev, out["voxel_stats"].score) > 0.9
    assert set(np.unique(out["voxel_stats"].label)) == {0, 1}
    assert np.ptp(out["diameter"].score) == 0.0  # one diameter: one score for everyone


def test_one_class_training_predicts_that_class() -> None:
    X, _ = synthetic_patches(12, seed=2)
    man = pd.DataFrame({"diameter_mm": np.linspace(3, 14, 12), "label": 0, "fold": np.arange(12) % 3})
    man.loc[man["fold"] == 2, "label"] = [0, 1, 0, 1]
    out = baseline_predictions(man, X, [0, 1], [2])
    for b in out.values():
        assert np.all(b.label == 0) and np.all(b.score == 0.0)
