"""Ensemble model, cached member training with the honest protocol, and the ensemble evaluation (the tiny
project these tests train on is built by ``tests/builders.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import TINY, constant_model, make_project

from naslung.calibration import fit_calibrator
from naslung.ensemble import layout
from naslung.ensemble.evaluation import ensemble_metrics, evaluate_ensemble
from naslung.ensemble.model import Ensemble, majority_label
from naslung.ensemble.training import (
    data_version,
    member_specs,
    plan_members,
    read_index,
    train_ensemble,
    validation_predictions,
    write_index,
)
from naslung.metrics import binary_metrics
from naslung.models.net import build_model
from naslung.models.spec import ArchSpec
from naslung.params import load_params

# --- Ensemble model -------------------------------------------------------------------------------------


def test_majority_label_needs_more_than_half() -> None:
    p = np.array([[0.9, 0.1, 0.6], [0.9, 0.2, 0.1], [0.5, 0.5, 0.49]])
    votes, label = majority_label(p)
    assert votes.tolist() == [2, 1, 2]
    assert label.tolist() == [1, 0, 1]
    _votes2, label2 = majority_label(np.array([[0.9, 0.1], [0.9, 0.8]]))  # k=2: both must agree
    assert label2.tolist() == [0, 1]


def test_ensemble_predict_save_load_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    specs = [ArchSpec.parse(s, cbam=True, head="asoftmax") for s in TINY]
    models = [build_model(s) for s in specs]
    ens = Ensemble(models, specs, [s.spec_id for s in specs])
    X = np.random.default_rng(1).uniform(size=(5, 32, 32, 32)).astype(np.float32)  # (n, D, H, W) accepted
    pred = ens.predict(X)
    assert pred.member_probs.shape == (5, 3) and pred.prob.shape == (5,)
    np.testing.assert_allclose(pred.prob, pred.member_probs.mean(axis=1), rtol=1e-6)
    assert pred.label.tolist() == (pred.votes > 1).astype(int).tolist()
    ens.save(tmp_path / "ens")
    state = torch.load(tmp_path / "ens" / "member_0.pt", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    again = Ensemble.load(tmp_path / "ens").predict(X[:, None])
    np.testing.assert_allclose(again.member_probs, pred.member_probs, rtol=1e-5, atol=1e-6)
    assert again.votes.tolist() == pred.votes.tolist()
    with pytest.raises(ValueError, match="expected patches"):
        ens.predict(np.zeros((2, 32, 32), np.float32))


def test_constant_members_vote(tmp_path: Path) -> None:
    spec = ArchSpec.parse(TINY[0], cbam=False, head="linear")
    ens = Ensemble(
        [constant_model(spec, True), constant_model(spec, True), constant_model(spec, False)],
        [spec] * 3,
        ["a", "b", "c"],
    )
    pred = ens.predict(np.zeros((4, 1, 32, 32, 32), np.float32))
    assert pred.votes.tolist() == [2] * 4 and pred.label.tolist() == [1] * 4


# --- training + evaluation --------------------------------------------------------------------------------


def test_member_plan_is_fold_major_with_the_deploy_fold_once(tmp_path: Path) -> None:
    params = load_params(make_project(tmp_path, folds=[2, 1], extra={"ensemble": {"deploy_fold": 3}}))
    plan = plan_members(params)
    specs = member_specs(params)
    assert plan.specs == specs and plan.folds == [2, 1, 3]
    assert plan.jobs == [(f, s) for f in (2, 1, 3) for s in specs]
    assert plan.data == data_version(params.paths.artifacts)
    assert plan_members(load_params(make_project(tmp_path / "b", folds=[1, 2]))).folds == [1, 2]  # deploy fold 1


def test_member_folder_is_finished_only_with_weights_and_record(tmp_path: Path) -> None:
    spec = ArchSpec.parse(TINY[0], cbam=False, head="linear")
    mdir = layout.member_dir(tmp_path, spec.spec_id, 3, "k123")
    assert mdir == tmp_path / "members" / f"{spec.spec_id}-fold3-k123"
    model = constant_model(spec, True)
    layout.write_member(mdir, model, {"record": {"name": spec.spec_id}})
    assert layout.read_member(mdir) == {"record": {"name": spec.spec_id}}
    state = layout.load_state(mdir / layout.WEIGHTS_FILE)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    (mdir / layout.WEIGHTS_FILE).unlink()
    assert layout.read_member(mdir) is None  # a half-written member is trained again


def test_train_is_cached_and_evaluation_is_complete(tmp_path: Path) -> None:
    params = load_params(make_project(tmp_path))
    index = train_ensemble(params, progress=False)
    assert len(index["members"]) == 3 * 2 and not any(m["cached"] for m in index["members"])
    # every member of fold k was trained without fold k: its split is recorded with the member
    for m in index["members"]:
        split = json.loads((Path(m["dir"]) / "member.json").read_text())["split"]
        assert (
            split["test_fold"] == m["fold"]
            and m["fold"] not in split["train_folds"]
            and m["fold"] not in split["val_folds"]
        )
    weights = [Path(m["dir"]) / "weights.pt" for m in index["members"]]
    mtimes = [w.stat().st_mtime_ns for w in weights]

    again = train_ensemble(params, progress=False)  # re-run: everything from the cache
    assert all(m["cached"] for m in again["members"])
    assert [w.stat().st_mtime_ns for w in weights] == mtimes

    result = evaluate_ensemble(params)
    assert result["folds"] == [1, 2] and result["n_members"] == 3
    for name in result["member_names"]:
        assert set(result["members"][name]["per_fold"]) == {"1", "2"}
        assert result["members"][name]["run_ids"]
    for metric in ("accuracy", "sensitivity", "specificity", "f1", "auc"):
        ms = result["ensemble"]["mean_std"][metric]
        per = [result["ensemble"]["per_fold"][f][metric] for f in ("1", "2")]
        assert ms["mean"] == pytest.approx(np.mean(per)) and ms["std"] == pytest.approx(np.std(per, ddof=1))
    assert set(result["size_curve"]) == {"1", "3"}  # 5 > 3 members: skipped
    assert json.loads((tmp_path / "artifacts" / "metrics.json").read_text())["n_members"] == 3
    assert (tmp_path / "artifacts" / "plots" / "ensemble_size.png").stat().st_size > 0
    # the deployable ensemble predicts exactly what the fold-1 members predicted on their test fold
    _, recs = read_index(params)
    ens = Ensemble.load(index["model_dir"])
    fold1 = {r.name: r for r in recs if r.fold == 1}
    from naslung.data.store import PatchStore

    X, _y, _ids = PatchStore.open(params.paths.artifacts).arrays([1])
    pred = ens.predict(X)
    for j, name in enumerate(ens.member_names):
        np.testing.assert_allclose(pred.member_probs[:, j], fold1[name].predictions()[2], rtol=1e-4, atol=1e-5)

    # every member stored its predictions on the pooled validation folds of its split (never its test fold),
    # made by the restored best checkpoint: the deployable members reproduce them
    store = PatchStore.open(params.paths.artifacts)
    for r in recs:
        ids, yv, pv = r.val_predictions()
        split = r.split()
        Xv, y_store, ids_store = store.arrays(split["val_folds"])
        assert ids.tolist() == ids_store.tolist() and yv.tolist() == y_store.tolist()
        assert r.fold not in split["val_folds"] and not set(ids) & set(r.predictions()[0])
        if r.fold == 1:
            j = ens.member_names.index(r.name)
            np.testing.assert_allclose(ens.predict(Xv).member_probs[:, j], pv, rtol=1e-4, atol=1e-5)
    # the deploy members share their validation rows; the stored calibrator was fitted on them
    deploy = [r for r in recs if r.fold == 1]
    val = validation_predictions(deploy)
    assert val.member_probs.shape == (len(val.ids), 3) and val.folds == tuple(deploy[0].split()["val_folds"])
    expected = fit_calibrator(
        val.y, val.raw_prob, params.ensemble.calibration, refer_spread=params.ensemble.refer_spread
    )
    assert ens.calibrator.method == "temperature" == params.ensemble.calibration
    assert ens.calibrator.temperature == pytest.approx(expected.temperature)
    assert ens.calibrator.fitted_on.hash == val.hash and ens.calibrator.fitted_on.n == len(val.ids)
    assert ens.calibrator.refer_spread == params.ensemble.refer_spread
    assert index["calibration"]["calibrator"] == ens.calibrator.to_dict()
    assert set(index["calibration"]["figures"]) == {"validation", "test"}
    assert index["calibration"]["data"]["test"]["folds"] == [1]
    for f in index["calibration"]["files"].values():
        assert Path(f).stat().st_size > 0
    # another calibration method needs no retraining: only the index and the model folder change
    iso = params.replace(ensemble=type(params.ensemble)(**{**params.ensemble.__dict__, "calibration": "isotonic"}))
    write_index(iso, member_specs(iso), recs, index["data"])
    assert Ensemble.load(index["model_dir"]).calibrator.method == "isotonic"

    # a new fold later: only those members train
    changed = params.replace(ensemble=type(params.ensemble)(**{**params.ensemble.__dict__, "folds": (1, 3)}))
    third = train_ensemble(changed, progress=False)  # new fold 3: only those members train
    assert sorted((m["fold"], m["cached"]) for m in third["members"]) == sorted([(1, True)] * 3 + [(3, False)] * 3)


def test_ensemble_metrics_use_vote_for_labels_and_mean_for_auc() -> None:
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.6, 0.1, 0.2], [0.1, 0.2, 0.3], [0.9, 0.8, 0.1], [0.4, 0.45, 0.9]])
    m = ensemble_metrics(y, probs)
    # votes: 1, 0, 2, 1 -> labels 0, 0, 1, 0
    assert m["tp"] == 1 and m["fn"] == 1 and m["fp"] == 0 and m["tn"] == 2
    assert m["auc"] == binary_metrics(y, probs.mean(axis=1))["auc"]
    single = ensemble_metrics(y, probs[:, :1])
    assert single["f1"] == binary_metrics(y, probs[:, 0])["f1"]


# --- mixing POP and DNAS members ----------------------------------------------------------------------------

DNAS_ARCH = {
    "kind": "dnas",
    "ops": ["skip", "k3_e2", "k3_e2"],
    "space": {
        "stem": 4,
        "layers": [[4, 1], [8, 2], [8, 2]],
        "head_channels": 8,
        "kernels": [3],
        "expansions": [2],
        "skip": True,
        "in_channels": 1,
    },
}


def test_member_specs_mix_selection_files_of_both_strategies(tmp_path: Path) -> None:
    from naslung.ensemble.training import MemberRecord, member_key
    from naslung.models.mbconv import DnasArch

    pop = [ArchSpec.parse(s, cbam=False, head="linear") for s in TINY[:2]]
    dn = DnasArch.from_dict(DNAS_ARCH)
    (tmp_path / "search" / "dnas").mkdir(parents=True)
    pop_file, dnas_file = tmp_path / "search" / "selected.json", tmp_path / "search" / "dnas" / "selected.json"
    pop_file.write_text(json.dumps([{"spec": s.to_dict(), "spec_id": s.spec_id, "accuracy": 0.5} for s in pop]))
    dnas_file.write_text(
        json.dumps([{"spec": dn.to_dict(), "spec_id": dn.spec_id, "strategy": "dnas"}, {"spec": pop[0].to_dict()}])
    )  # a duplicate is dropped
    params = load_params(
        make_project(
            tmp_path / "p", specs=[], extra={"ensemble": {"members": [str(pop_file), str(dnas_file)], "specs": []}}
        )
    )
    assert params.ensemble.members == (str(pop_file), str(dnas_file))
    specs = member_specs(params)
    assert specs == [*pop, dn]
    assert member_specs(params, str(dnas_file)) == [dn, pop[0]]  # one file still works
    # ensemble.specs takes DNAS dicts beside spec strings
    explicit = load_params(make_project(tmp_path / "q", specs=[TINY[0], DNAS_ARCH]))
    assert member_specs(explicit) == [ArchSpec.parse(TINY[0], cbam=False, head="linear"), dn]
    # cache keys: distinct per spec, and a member record reads its DNAS spec back
    keys = {member_key(s, 1, "data", "params") for s in specs}
    assert len(keys) == 3
    rec = MemberRecord(
        name=dn.spec_id,
        spec=dn.to_dict(),
        spec_id=dn.spec_id,
        fold=1,
        key="k",
        dir="d",
        run_id=None,
        val={},
        test={},
        best_epoch=1,
        n_params=1,
        flops=1,
    )
    assert rec.arch() == dn


def test_train_mixed_ensemble_pop_and_dnas_members(tmp_path: Path) -> None:
    from naslung.models.mbconv import DnasNet
    from naslung.models.net import NASLungNet

    params = load_params(make_project(tmp_path, specs=[TINY[0], DNAS_ARCH], folds=[1]))
    index = train_ensemble(params, progress=False)
    assert len(index["members"]) == 2 and not any(m["cached"] for m in index["members"])
    names = [m["name"] for m in index["members"]]
    assert names[0].startswith("m1-") and names[1].startswith("d-")
    assert all(Path(m["dir"]).name.startswith(m["spec_id"]) for m in index["members"])
    assert index["members"][1]["flops"] > 0 and index["members"][1]["n_params"] > 0
    ens = Ensemble.load(index["model_dir"])
    assert [type(m) for m in ens.members] == [NASLungNet, DnasNet]
    again = train_ensemble(params, progress=False)
    assert all(m["cached"] for m in again["members"])
    result = evaluate_ensemble(params)
    assert result["n_members"] == 2 and set(result["member_names"]) == set(names)
