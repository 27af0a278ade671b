"""Training area: honest protocol guard, augmentation, fit, metrics, Davies–Bouldin index, latency."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from builders import MODEL1, model1, open_store, synthetic_patches, write_tiny_store

from naslung.features import davies_bouldin
from naslung.latency import measure_latency
from naslung.metrics import binary_metrics
from naslung.params import ModelParams, TrainParams, load_params
from naslung.train.augment import augment_batch
from naslung.train.protocol import HeldOutTest, ProtocolError, check_not_sealed, make_split, open_split

FAST_TRAIN = TrainParams(epochs=3, batch_size=8, lr=3e-3, patience=10)


# --- protocol ----------------------------------------------------------------------------------------


def test_make_split_holds_out_test_and_carves_validation_from_training() -> None:
    for test_fold in range(10):
        s = make_split(10, test_fold, seed=7)
        assert s.test_fold == test_fold
        assert test_fold not in s.val_folds and not set(s.val_folds) & set(s.train_folds)
        assert test_fold not in s.train_folds
        assert sorted((*s.train_folds, *s.val_folds, s.test_fold)) == list(range(10))
        assert make_split(10, test_fold, seed=7) == s
    assert len({make_split(10, 1, seed=k).val_folds for k in range(20)}) > 1  # the seed matters
    with pytest.raises(ValueError):
        make_split(10, 10, seed=0)


def test_test_fold_cannot_reach_selection_and_is_touched_once(tmp_path: Path) -> None:
    from naslung.train.loop import fit

    store = open_store(write_tiny_store(tmp_path / "store"))
    split = make_split(10, 1, seed=0)
    dev, test = open_split(store, split)
    assert isinstance(test, HeldOutTest)
    assert len(dev.val[1]) > 0 and len(test) == 6
    spec = model1()
    # the held-out object cannot be unpacked or passed for fitting/selection
    with pytest.raises(ProtocolError):
        _X, _y = test
    with pytest.raises(ProtocolError):
        fit(spec, dev.train, test, ModelParams(), FAST_TRAIN)  # type: ignore[arg-type]
    # re-reading the test fold from the store and passing it as validation data is refused too
    X_test, y_test, _ = store.arrays([split.test_fold])
    with pytest.raises(ProtocolError, match="held-out test fold"):
        fit(spec, dev.train, (X_test, y_test), ModelParams(), FAST_TRAIN)
    mixed = (np.concatenate([dev.train[0], X_test[:1]]), np.concatenate([dev.train[1], y_test[:1]]))
    with pytest.raises(ProtocolError):
        fit(spec, mixed, dev.val, ModelParams(), FAST_TRAIN)
    # evaluation happens exactly once
    res = test.evaluate(lambda X: np.full(len(X), 0.7))
    assert res.metrics["sensitivity"] == 1.0 and res.metrics["specificity"] == 0.0
    with pytest.raises(ProtocolError, match="already evaluated"):
        test.evaluate(lambda X: np.full(len(X), 0.7))
    # after its single evaluation the fold may serve as training data of another split (cross-validation)
    check_not_sealed(X_test, "training")


def test_a_failed_fit_inside_with_test_lifts_the_seal(tmp_path: Path) -> None:
    store = open_store(write_tiny_store(tmp_path / "store"))
    split = make_split(10, 1, seed=0)
    _dev, test = open_split(store, split)
    X_test, _, _ = store.arrays([split.test_fold])
    with pytest.raises(ProtocolError):
        check_not_sealed(X_test, "training")
    with pytest.raises(RuntimeError, match="fit failed"), test:  # as run_training does around fit
        raise RuntimeError("fit failed")
    assert not test.evaluated
    check_not_sealed(X_test, "training")  # no longer sealed, although the object is still alive


# --- augmentation ------------------------------------------------------------------------------------


def test_augmentation_shapes_determinism_and_content() -> None:
    x = torch.rand(5, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    a = augment_batch(x, torch.Generator().manual_seed(3), pad=2, flips=True)
    b = augment_batch(x, torch.Generator().manual_seed(3), pad=2, flips=True)
    c = augment_batch(x, torch.Generator().manual_seed(4), pad=2, flips=True)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(augment_batch(x, torch.Generator(), pad=0, flips=False), x)
    # every output sample is a 32^3 window of the replicate-padded input, flipped along some axes
    padded = F.pad(x, (2,) * 6, mode="replicate")
    for i in range(5):
        found = False
        for dz in range(5):
            for dy in range(5):
                for dx in range(5):
                    win = padded[i, :, dz : dz + 32, dy : dy + 32, dx : dx + 32]
                    for dims in ([], [1], [2], [3], [1, 2], [1, 3], [2, 3], [1, 2, 3]):
                        if torch.equal(win.flip(dims) if dims else win, a[i]):
                            found = True
        assert found, f"sample {i} is not a flipped crop of its padded input"


def test_axis_permutation_draws_cube_symmetries_and_keeps_crops_and_flips() -> None:
    import itertools

    x = torch.rand(24, 1, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    out = augment_batch(x, torch.Generator().manual_seed(2), pad=0, flips=True, permute_axes=True)
    symmetries = [
        (perm, dims)
        for perm in itertools.permutations((2, 3, 4))
        for r in range(4)
        for dims in itertools.combinations((2, 3, 4), r)
    ]
    seen_orders = set()
    for i in range(24):
        hits = [p for p, dims in symmetries if torch.equal(x[i : i + 1].flip(list(dims)).permute(0, 1, *p)[0], out[i])]
        assert hits, f"sample {i} is not one of the 48 symmetries of the cube"
        seen_orders.update(hits)
    assert len(seen_orders) > 1  # the axis order really varies between samples
    # crop offsets and flips are drawn before the permutation: switching it on leaves those draws alone
    plain = augment_batch(x, torch.Generator().manual_seed(2), pad=0, flips=True)
    assert sum(torch.equal(plain[i], out[i]) for i in range(24)) >= 1
    with pytest.raises(ValueError, match="cubic"):
        augment_batch(torch.rand(2, 1, 8, 8, 6), torch.Generator(), permute_axes=True)


# --- fit ---------------------------------------------------------------------------------------------


def test_fit_learns_a_synthetic_task_and_is_deterministic() -> None:
    from naslung.train.loop import fit, predict_proba

    Xtr, ytr = synthetic_patches(48, seed=1)
    Xva, yva = synthetic_patches(16, seed=2)
    spec = model1(head="linear", cbam=False)
    a = fit(spec, (Xtr, ytr), (Xva, yva), ModelParams(), FAST_TRAIN, seed=5)
    b = fit(spec, (Xtr, ytr), (Xva, yva), ModelParams(), FAST_TRAIN, seed=5)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert len(a.history) == 3 and 1 <= a.best_epoch <= 3
    assert a.val_metrics == {k[4:]: v for k, v in a.history[a.best_epoch - 1].items() if k.startswith("val_")}
    Xte, yte = synthetic_patches(16, seed=3)
    assert binary_metrics(yte, predict_proba(a.model, Xte))["auc"] > 0.8
    c = fit(spec, (Xtr, ytr), (Xva, yva), ModelParams(), FAST_TRAIN, seed=6)
    assert not all(torch.equal(sa[k], c.model.state_dict()[k]) for k in sa)


def test_lr_schedule_constant_or_cosine_is_recorded_per_epoch() -> None:
    from naslung.train.loop import fit

    Xtr, ytr = synthetic_patches(16, seed=1)
    Xva, yva = synthetic_patches(8, seed=2)
    spec = model1(head="linear", cbam=False)
    tp = dataclasses.replace(FAST_TRAIN, epochs=4, lr=1e-3)
    const = fit(spec, (Xtr, ytr), (Xva, yva), ModelParams(), tp, seed=1)
    assert [h["lr"] for h in const.history] == [1e-3] * 4
    cos = fit(spec, (Xtr, ytr), (Xva, yva), ModelParams(), dataclasses.replace(tp, lr_schedule="cosine"), seed=1)
    lrs = [h["lr"] for h in cos.history]  # lr used in each epoch: cosine from 1e-3 towards 0 over 4 epochs
    assert lrs == pytest.approx([1e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    with pytest.raises(ValueError, match="lr_schedule"):
        fit(spec, (Xtr, ytr), (Xva, yva), ModelParams(), dataclasses.replace(tp, lr_schedule="step"), seed=1)


def test_fit_selects_best_on_validation_stops_early_and_anneals_lambda() -> None:
    from naslung.train.loop import fit, selection_key

    a = {"val_f1": 0.5, "val_auc": 0.6, "val_loss": 0.9}
    b = {"val_f1": 0.4, "val_auc": 0.9, "val_loss": 0.1}
    assert selection_key(b) > selection_key(a)  # default: validation AUC first
    assert selection_key(a, "f1") > selection_key(b, "f1")
    assert selection_key(b, "loss") > selection_key(a, "loss")
    # an "everything malignant" epoch (F1 ~0.6, AUC 0.5) loses to a real classifier under AUC selection
    assert selection_key({"val_f1": 0.4, "val_auc": 0.8, "val_loss": 0.7}) > selection_key(
        {"val_f1": 0.62, "val_auc": 0.5, "val_loss": 0.69}
    )
    assert selection_key({"val_f1": 0.5, "val_auc": 0.6, "val_loss": 0.5}) > selection_key(
        {"val_f1": 0.5, "val_auc": 0.6, "val_loss": 0.6}
    )
    assert selection_key({"val_f1": 0.0, "val_auc": 0.1, "val_loss": 9}) > selection_key(
        {"val_f1": 0.0, "val_auc": float("nan"), "val_loss": 0.1}
    )
    with pytest.raises(ValueError, match="select_by"):
        selection_key(a, "accuracy")
    Xtr, ytr = synthetic_patches(24, seed=1)
    Xva, yva = synthetic_patches(8, seed=2)
    tp = dataclasses.replace(FAST_TRAIN, epochs=8, patience=2, lr=0.05)
    res = fit(model1(), (Xtr, ytr), (Xva, yva), ModelParams(), tp, seed=0)
    keys = [selection_key(h, tp.select_by) for h in res.history]
    assert res.best_epoch == 1 + keys.index(max(keys))  # first epoch reaching the best key
    assert len(res.history) == 8 or len(res.history) == res.best_epoch + 2  # stopped exactly `patience` later
    lams = [h["lambda"] for h in res.history]  # A-Softmax: lambda decays per iteration, never below its floor
    assert all(x >= y for x, y in itertools.pairwise(lams)) and lams[0] < ModelParams().lambda_base
    assert min(lams) >= ModelParams().lambda_min


# --- metrics, features, latency ----------------------------------------------------------------------


def test_binary_metrics_match_a_known_confusion_matrix() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.6, 0.2, 0.7, 0.4, 0.3, 0.2, 0.1, 0.05])  # tp=3 fn=1 fp=1 tn=5
    m = binary_metrics(y, p)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 1, 5)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["sensitivity"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["f1"] == pytest.approx(2 * 0.75 * 0.75 / 1.5)
    assert m["auc"] == pytest.approx(19.5 / 24)  # pairwise: 6 + 6 + 5 + 2.5 (one tie) of 24
    assert math.isnan(binary_metrics([1, 1], [0.2, 0.9])["auc"])
    with pytest.raises(ValueError):
        binary_metrics([0, 1], [0.5])


def test_davies_bouldin_on_hand_made_clusters() -> None:
    c0 = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]])  # RMS distance to centroid (0,0) = 1
    c1 = np.array([[12.0, 0], [8, 0], [10, 2], [10, -2]])  # centroid (10, 0), RMS distance = 2
    d = davies_bouldin(np.vstack([c0, c1]), np.array([0] * 4 + [1] * 4))
    assert d["S0"] == pytest.approx(1.0) and d["S1"] == pytest.approx(2.0)
    assert d["M01"] == pytest.approx(10.0) and d["DBI"] == pytest.approx(0.3)
    assert d["dbi_sklearn"] == pytest.approx(0.3)  # equal distances: mean = RMS here
    with pytest.raises(ValueError):
        davies_bouldin(c0, np.zeros(4))


def test_latency_reports_ms_per_nodule_with_threads() -> None:
    from naslung.models.net import build_model

    model = build_model(model1())
    lat = measure_latency(model, batch_size=2, device="cpu", warmup=1, repeats=5)
    assert lat["ms_per_nodule"] > 0 and lat["batch_size"] == 2
    assert lat["ms_per_nodule"] == pytest.approx(lat["ms_per_call_median"] / 2)
    assert lat["ms_per_call_q1"] <= lat["ms_per_call_median"] <= lat["ms_per_call_q3"]
    assert lat["threads"] == torch.get_num_threads() and lat["iqr_over_median"] >= 0
    assert model.training  # mode restored


def test_known_latency_is_reused_only_when_measured_the_same_way(tmp_path: Path) -> None:
    """The search's latency of an architecture is the member's (one figure in the Pareto plot, the member run
    and the card) when batch, device, threads, warmup and repeats match; otherwise it is measured anew."""
    import json

    from naslung.ensemble.training import selection_latencies
    from naslung.latency import measure_batches
    from naslung.models.net import build_model

    model = build_model(model1())
    search = {"ms_per_nodule": 123.0, "batch_size": 1, "device": "cpu", "threads": torch.get_num_threads()}
    search |= {"warmup": 1, "repeats": 3, "load_1min_before": 0.4}
    lat = measure_batches(model, [1, 2], "cpu", warmup=1, repeats=3, known={1: search})
    assert lat[1]["ms_per_nodule"] == 123.0 and lat[1]["reused"] and lat[1]["load_1min_before"] == 0.4
    assert "reused" not in lat[2] and lat[2]["batch_size"] == 2 and lat[2]["ms_per_nodule"] != 123.0
    for other in ({"threads": torch.get_num_threads() + 1}, {"repeats": 4}, {"device": "cuda"}):
        again = measure_batches(model, [1], "cpu", warmup=1, repeats=3, known={1: search | other})
        assert "reused" not in again[1] and again[1]["ms_per_nodule"] != 123.0, other

    # selection_latencies reads the search's figure off selected.json, keyed by the member's spec id
    spec = model1()
    selected = [
        {"spec": spec.to_dict(), "spec_id": spec.spec_id, "latency_detail": search},
        {"spec": spec.to_dict(), "spec_id": "m1-other"},  # no detail: nothing to reuse
    ]
    (tmp_path / "selected.json").write_text(json.dumps(selected))
    repo = Path(__file__).resolve().parents[2]
    params = load_params(repo / "params.yaml", {"ensemble.members": str(tmp_path / "selected.json")})
    assert selection_latencies(params) == {spec.spec_id: {1: search}}
    explicit = load_params(repo / "params.yaml", {"ensemble.specs": [MODEL1]})
    assert selection_latencies(explicit) == {}


def test_cli_registers_training_commands() -> None:
    from naslung.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        ["train", "--spec", MODEL1, "--fold", "1", "--head", "linear", "--no-cbam", "--epochs", "2"]
    )
    assert (args.fold, args.head, args.cbam, args.epochs) == (1, "linear", False, 2)
    args = parser.parse_args(["cv", "--folds", "1", "2"])
    assert args.folds == [1, 2]
    from naslung.commands.train import _setup

    repo = Path(__file__).resolve().parents[2]
    args = parser.parse_args(["--params", str(repo / "params.yaml"), "cv", "--lr", "0.003", "--patience", "20"])
    params, spec = _setup(args)  # overrides land in the typed params the run logs; the rest is untouched
    assert (params.train.lr, params.train.patience) == (0.003, 20) and params.train.betas == (0.5, 0.999)
    assert (params.train.lr_schedule, params.train.permute_axes) == ("constant", False)  # params.yaml defaults
    args = parser.parse_args(["--params", str(repo / "params.yaml"), "cv", "--lr-schedule", "cosine", "--permute-axes"])
    params, _ = _setup(args)
    default_lr = load_params(repo / "params.yaml").train.lr
    assert (params.train.lr_schedule, params.train.permute_axes, params.train.lr) == ("cosine", True, default_lr)
    assert spec.head == params.model.head
    assert parser.parse_args(["evaluate-run", "--run-id", "abc"]).run_id == "abc"
    assert parser.parse_args(["features", "--fold", "3"]).fold == 3


@pytest.mark.slow
def test_cli_cv_prints_each_fold_and_the_fold_wise_diameter_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import yaml

    from naslung.cli import main
    from naslung.params import load_params, to_dict

    repo = Path(__file__).resolve().parents[2]
    store = write_tiny_store(tmp_path / "store")
    data = to_dict(load_params(repo / "params.yaml"))
    data["paths"]["artifacts"] = str(store)
    data["train"].update(batch_size=8, num_threads=1)
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(data))
    argv = [
        "--params",
        str(pfile),
        "cv",
        "--folds",
        "1",
        "2",
        "--epochs",
        "1",
        "--no-log",
        "--lr",
        "0.003",
        "--lr-schedule",
        "cosine",
        "--permute-axes",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fold 1: test accuracy" in out and "fold 2: test accuracy" in out
    # the tiny store's diameters separate the classes exactly: the fold-wise rule is perfect, pooled and per fold,
    # and each fold's line compares the model with it (paired tests)
    assert "pooled over test folds [1, 2]:" in out and "test fold 1:" in out and "test fold 2:" in out
    assert out.count("diameter     accuracy 1.000 [1.000, 1.000]") == 3, out
    assert "model vs diameter: McNemar p=" in out and "model vs voxel_stats: McNemar p=" in out
    summary = json.loads(next(store.glob("cv_*.json")).read_text())
    assert [r["fold"] for r in summary["folds"]] == [1, 2]
