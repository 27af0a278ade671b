"""Ensemble model, cached member training with the honest protocol, and the ensemble evaluation.

Also holds the tiny-project helpers used by tests/test_registry.py and tests/test_retrain_flow.py:
a random patch store (4 folds x 8 nodules, both classes per fold), an annotations table that passes the
data validation, and a params file pointing everything into a tmp folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from naslung.ensemble.evaluation import ensemble_metrics, evaluate_ensemble
from naslung.ensemble.model import Ensemble, majority_label
from naslung.ensemble.training import (
    data_version,
    member_specs,
    read_index,
    score_member,
    train_ensemble,
    write_index,
)
from naslung.metrics import binary_metrics
from naslung.models.net import build_model
from naslung.models.spec import ArchSpec
from naslung.params import Params, load_params

TINY = ["[4, 4, [4], [4], [4]]", "[4, 4, [4], [8], [8]]", "[4, 4, [4, 4], [4], [8]]"]
N_FOLDS, PER_FOLD = 4, 8


def make_project(
    root: Path,
    *,
    specs: list[str] = TINY,
    folds: list[int] = (1, 2),
    registry_name: str = "naslung-test",
    extra: dict | None = None,
) -> Path:
    """Tiny project in ``root``: patch store + annotations + params.yaml (absolute paths); returns params path."""
    root.mkdir(parents=True, exist_ok=True)
    art = root / "artifacts"
    art.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    n = N_FOLDS * PER_FOLD
    labels = np.tile([0, 1], n // 2)
    patches = rng.uniform(0.0, 0.3, size=(n, 32, 32, 32)).astype(np.float32)
    patches[labels == 1, 12:20, 12:20, 12:20] += 0.6  # a bright core in malignant patches
    np.save(art / "patches.npy", patches)
    rows = []
    for i in range(n):
        rows.append(
            {
                "nodule_id": f"n{i:03d}",
                "seriesuid": f"1.2.3.{i}",
                "coordX": 1.0 * i,
                "coordY": 2.0,
                "coordZ": 3.0,
                "diameter_mm": 8.0,
                "reader_scores": "4;5" if labels[i] else "1;2",
                "mean_score": 4.5 if labels[i] else 1.5,
                "label": int(labels[i]),
                "fold": i // PER_FOLD,
                "scan_path": f"subset0/1.2.3.{i}.mhd",
                "patch_index": i,
            }
        )
    manifest = pd.DataFrame(rows)
    manifest.to_csv(art / "manifest.csv", index=False)
    ann = manifest[["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]].copy()
    ann["mal_bool"] = manifest["label"].astype(bool)
    ann["mal_details"] = ["[4, 5]" if v else "[1, 2]" for v in manifest["label"]]
    ann.to_csv(root / "annotations.csv", index=False)
    params = {
        "paths": {
            "raw": str(root / "raw"),
            "annotations": str(root / "annotations.csv"),
            "artifacts": str(art),
            "mlflow_artifacts": str(root / "mlflow-artifacts"),
        },
        "prepare": {"n_folds": N_FOLDS},
        "train": {"batch_size": 8, "patience": 1, "device": "cpu", "num_threads": 1},
        "latency": {"batch_sizes": [2], "warmup": 0, "repeats": 1, "trials": 1},
        "search": {"out_dir": str(root / "search")},
        "ensemble": {
            "specs": list(specs),
            "epochs": 1,
            "folds": list(folds),
            "deploy_fold": folds[0],
            "sizes": [1, 3, 5],
            "size_repeats": 3,
            "out_dir": str(art / "ensemble"),
            "cbam": False,
            "head": "linear",
        },
        "registry": {"name": registry_name, "cron": "0 4 * * *"},
    }
    for section, values in (extra or {}).items():
        params.setdefault(section, {}).update(values)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def constant_model(spec: ArchSpec, malignant: bool) -> torch.nn.Module:
    """A linear-head net that always predicts the same class (probability ~0.9999 for it)."""
    model = build_model(spec)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([-5.0, 5.0] if malignant else [5.0, -5.0]))
    return model.eval()


def constant_ensemble(params_path: Path, out_dir: Path, malignant: bool) -> Params:
    """Members of ``ensemble.specs`` that always say malignant/benign, cached + indexed like trained ones."""
    params = load_params(params_path)
    params = params.replace(ensemble=type(params.ensemble)(**{**params.ensemble.__dict__, "out_dir": str(out_dir)}))
    specs = member_specs(params)
    data = data_version(params.paths.artifacts)
    recs = [
        score_member(params, s, f, data["hash"], constant_model(s, malignant))
        for f in params.ensemble.folds
        for s in specs
    ]
    write_index(params, specs, recs, data)
    return params


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


def test_train_is_cached_and_evaluation_is_complete(tmp_path: Path) -> None:
    params = load_params(make_project(tmp_path))
    index = train_ensemble(params, progress=False)
    assert len(index["members"]) == 3 * 2 and not any(m["cached"] for m in index["members"])
    # every member of fold k was trained without fold k: its split is recorded with the member
    for m in index["members"]:
        split = json.loads((Path(m["dir"]) / "member.json").read_text())["split"]
        assert (
            split["test_fold"] == m["fold"] and m["fold"] not in split["train_folds"] and split["val_fold"] != m["fold"]
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
