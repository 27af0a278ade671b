"""MLflow Model Registry: pyfunc ensemble, lineage tags, promotion gate, rollback (real MLflow).

The gate is exercised with fixed ensembles: members that always say benign or always malignant (refused by
the specificity / sensitivity floors whatever the champion), and a "fitted" ensemble whose members are
seeded untrained nets with a linear head fitted by logistic regression on the training folds' features
(non-constant, validation AUC ~0.9 on the tiny store). On the tiny store the voxel-statistics baseline
separates the classes perfectly, so with the default ``registry.baseline_margin`` 0 the fitted ensemble is
refused for being below it; the sequence then gates with a margin of -0.1 to exercise promotion,
champion comparison on the same validation rows and rollback. Runs on the session SQLite store, and on
PostgreSQL when ``NASLUNG_TEST_POSTGRES_URL`` is set (a fresh schema per run, dropped afterwards).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
import zipfile
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from builders import constant_ensemble, make_project
from mlflow import MlflowClient

from naslung import registry, torchserve, tracking
from naslung.card import ModelCard
from naslung.ensemble.evaluation import evaluate_ensemble
from naslung.ensemble.training import data_version, member_specs, score_member, train_ensemble, write_index
from naslung.params import Params, load_params

REPO = Path(__file__).resolve().parents[2]


def _write_validation(params: Params, success: bool, md5: dict[str, str] | None = None) -> None:
    """A validation verdict about the current patch store (or about the data of ``md5``)."""
    from naslung.lineage import store_md5

    art = Path(params.paths.artifacts)
    md5 = md5 or store_md5(art)
    (art / "validation.json").write_text(json.dumps({"success": success, "suites": {}, "md5": md5}))


def _register_constant(params_path: Path, tmp: Path, tag: str, malignant: bool) -> registry.Registration:
    params = constant_ensemble(params_path, tmp / f"ens-{tag}", malignant)
    evaluate_ensemble(params)
    return registry.register(params)


def _fitted_member(params: Params, spec, fold: int, seed: int) -> torch.nn.Module:
    """A seeded untrained net whose linear head is a logistic regression on its (standardised) penultimate
    features of the split's training folds."""
    from sklearn.linear_model import LogisticRegression

    from naslung.data.store import PatchStore
    from naslung.models.net import build_model
    from naslung.train.loop import extract_features
    from naslung.train.protocol import make_split

    split = make_split(params.prepare.n_folds, fold, params.seed, params.train.val_folds)
    X, y, _ = PatchStore.open(params.paths.artifacts).arrays(list(split.train_folds))
    torch.manual_seed(seed)
    model = build_model(spec).eval()
    f = extract_features(model, X)
    mu, sd = f.mean(axis=0), f.std(axis=0) + 1e-12
    lr = LogisticRegression(max_iter=2000).fit((f - mu) / sd, y)
    w = lr.coef_[0] / sd
    b = float(lr.intercept_[0] - (w * mu).sum())
    with torch.no_grad():
        wt = torch.tensor(w, dtype=torch.float32)
        model.head.weight.copy_(torch.stack([-wt / 2, wt / 2]))
        model.head.bias.copy_(torch.tensor([-b / 2, b / 2]))
    return model


def _register_fitted(params_path: Path, tmp: Path, tag: str) -> registry.Registration:
    params = load_params(params_path)
    params = params.replace(ensemble=replace(params.ensemble, out_dir=str(tmp / f"ens-{tag}")))
    specs = member_specs(params)
    data = data_version(params.paths.artifacts)
    recs = [
        score_member(params, s, f, data["hash"], _fitted_member(params, s, f, i))
        for f in params.ensemble.folds
        for i, s in enumerate(specs)
    ]
    write_index(params, specs, recs, data)
    evaluate_ensemble(params)
    return registry.register(params)


def _gate_sequence(tmp_path: Path, name: str) -> None:
    params_path = make_project(tmp_path, registry_name=name)
    strict = load_params(params_path)
    params = strict.replace(registry=replace(strict.registry, baseline_margin=-0.1))
    from naslung.validation import validate

    assert validate(params)["success"], "the tiny project must pass the real data validation"
    client = MlflowClient(params.mlflow_uri, params.mlflow_uri)

    v1 = _register_fitted(params_path, tmp_path, "fitted1")
    assert registry.aliases(params) == {"challenger": v1.version}
    tags1 = client.get_model_version(name, v1.version).tags
    val = json.loads(tags1["naslung.val.figures"])
    assert val["data"]["role"] == "validation" and val["data"]["n"] == 16 and val["data"]["test_fold"] == 1
    assert 1 not in val["data"]["folds"] and set(val["baselines"]) == {"diameter", "voxel_stats"}
    assert val["baselines"]["voxel_stats"]["auc"] > val["auc"] > 0.75  # the toy store: voxel stats are perfect
    assert val["constant_accuracy"] == 0.5 and tags1["naslung.val.data_hash"] == val["data"]["hash"]
    d0 = registry.promote(strict)  # default margin 0: below the voxel-statistics baseline
    assert not d0.promoted and "voxel_stats baseline" in d0.reason
    assert registry.aliases(params) == {"challenger": v1.version}
    d1 = registry.promote(params)
    assert d1.promoted and "no champion yet" in d1.reason and d1.challenger_auc == pytest.approx(val["auc"])

    v2 = _register_constant(params_path, tmp_path, "malignant", malignant=True)
    d2 = registry.promote(params)
    assert not d2.promoted and "validation specificity 0.0000 not >= 0.6000" in d2.reason
    assert d2.compared_with_champion  # same validation rows as the champion
    v3 = _register_constant(params_path, tmp_path, "benign", malignant=False)
    d3 = registry.promote(params)
    assert not d3.promoted and "validation sensitivity 0.0000 not >= 0.6000" in d3.reason
    assert registry.aliases(params) == {"champion": v1.version, "challenger": v3.version}
    mv2 = client.get_model_version(name, v2.version)
    assert mv2.tags["naslung.gate.decision"] == "refused" and "specificity" in mv2.tags["naslung.gate.reason"]
    # the decision record: a JSON artifact of the version's run, every check with the rows it was measured on
    record_path = mv2.tags["naslung.gate.record"]
    record = json.loads(Path(client.download_artifacts(mv2.run_id, record_path, str(tmp_path))).read_text())
    assert record["verdict"] == "refused" and record["reason"] == d2.reason and record["version"] == v2.version
    assert record["champion"]["version"] == v1.version
    assert record["challenger"]["val"]["data"]["hash"] == val["data"]["hash"]
    assert {c["name"]: c["passed"] for c in record["checks"]}["validation specificity"] is False
    assert all(f"n={val['data']['n']}" in c["data"] for c in record["checks"])
    assert record["challenger"]["reported_only"]["f1_per_fold"].keys() == {"1", "2"}  # test folds: reported only
    assert record["settings"]["auc_tolerance"] == params.registry.auc_tolerance
    assert record["settings"]["baseline_margin"] == -0.1 and record["settings"]["require_validation"] is True

    v4 = _register_fitted(params_path, tmp_path, "fitted4")  # the same ensemble again: within the tolerance
    d4 = registry.promote(params)
    assert d4.promoted and d4.compared_with_champion and d4.champion_auc == pytest.approx(d1.challenger_auc)
    assert registry.aliases(params) == {"champion": v4.version, "previous": v1.version}
    assert client.get_model_version(name, v4.version).tags["naslung.gate.decision"] == "promoted"

    batch = np.random.default_rng(0).uniform(size=(3, 1, 32, 32, 32)).astype(np.float32)
    champ = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(batch)
    members = champ[[c for c in champ.columns if c.startswith("prob_")]]
    np.testing.assert_allclose(champ["raw_probability"], members.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(champ["uncertainty"], members.std(axis=1, ddof=0), rtol=1e-4, atol=1e-6)
    assert champ["refer"].tolist() == (champ["uncertainty"] > params.ensemble.refer_spread).tolist()

    registry.rollback(params)
    assert registry.aliases(params)["champion"] == v1.version
    assert registry.aliases(params)["previous"] == v4.version

    # a verdict about other data does not count: the gate refuses
    _write_validation(params, True, {"manifest": "0" * 32, "patches": "0" * 32})
    v5 = _register_fitted(params_path, tmp_path, "fitted5")
    d5 = registry.promote(params, v5.version)
    assert not d5.promoted and "other data" in d5.reason
    # without a validation result the gate refuses, whatever the figures
    (Path(params.paths.artifacts) / "validation.json").unlink()
    v6 = _register_fitted(params_path, tmp_path, "fitted6")
    d6 = registry.promote(params, v6.version)
    assert not d6.promoted and "not validated" in d6.reason
    assert registry.aliases(params)["champion"] == v1.version


def test_gate_refuses_constant_and_below_baseline_accepts_good_and_rolls_back(tmp_path: Path) -> None:
    _gate_sequence(tmp_path, f"naslung-gate-{uuid.uuid4().hex[:6]}")


def test_registered_version_carries_lineage_and_predicts(tmp_path: Path) -> None:
    name = f"naslung-lineage-{uuid.uuid4().hex[:6]}"
    params = load_params(make_project(tmp_path, folds=[1], registry_name=name))
    registry.configure(params, "naslung-search-test")
    with mlflow.start_run(run_name="search-parent") as search_run:
        pass
    out = Path(params.search.out_dir)
    out.mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps({"parent_run_id": search_run.info.run_id}))
    (out / "selected.json").write_text(json.dumps(list(params.ensemble.specs)))  # members come from "the search"
    params = params.replace(ensemble=replace(params.ensemble, specs=(), members=str(out / "selected.json")))
    _write_validation(params, True)
    index = train_ensemble(params, tracker=tracking.MlflowTracker(), progress=False)
    evaluate_ensemble(params)
    reg = registry.register(params)

    client = MlflowClient(params.mlflow_uri, params.mlflow_uri)
    mv = client.get_model_version(name, reg.version)
    tags = mv.tags
    assert tags["naslung.data.hash"] == data_version(params.paths.artifacts)["hash"]
    assert tags["naslung.data.manifest_md5"] == index["data"]["md5"]["manifest"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    if head.returncode == 0:
        assert tags["naslung.git_commit"] == head.stdout.strip()
    assert tags["naslung.params_hash"] == params.section_hash()
    assert tags["naslung.search_run_id"] == search_run.info.run_id
    member_runs = json.loads(tags["naslung.member_run_ids"])
    assert len(member_runs) == 3
    for run_id in member_runs.values():  # each member's training run exists and trained that spec
        run = client.get_run(run_id)
        assert run.data.params["fold"] == "1" and run.data.tags["naslung.spec_id"] in member_runs
    assert tags["naslung.validation"] == "passed"
    assert mv.run_id == reg.run_id and "Reproduce" in mv.description
    card = Path(client.download_artifacts(reg.run_id, "model_card.md", str(tmp_path))).read_text()
    assert "Intended use" in card and "not a diagnosis" in card.lower() and "Known limits" in card
    # the card as data: its tags are the version's lineage tags, its markdown the logged card
    data = json.loads(Path(client.download_artifacts(reg.run_id, "model_card.json", str(tmp_path))).read_text())
    card_data = ModelCard.from_dict(data)
    assert card_data.to_tags().items() <= tags.items() and card_data.to_markdown() == card
    assert card_data.input.shape == (-1, 1, 32, 32, 32) and card_data.evaluation.folds == [1]
    # ... and the TorchServe package's model info (no Java needed to build a .mar)
    mar = torchserve.package_from_registry(params, alias="challenger", version=None)
    with zipfile.ZipFile(mar) as z:
        info = json.loads(z.read("model_info.json"))
        assert any(n.endswith("ensemble/calibration.json") for n in z.namelist())  # the .mar carries it too
        model_config = yaml.safe_load(z.read("model-config.yaml"))
    assert (info["name"], info["version"], info["alias"], info["run_id"]) == (
        name,
        reg.version,
        "challenger",
        reg.run_id,
    )
    assert info["f1_mean"] == card_data.f1_mean and info["members"] == json.loads(tags["naslung.members"])
    assert info["input"]["shape"] == [-1, 1, 32, 32, 32] and info["git_commit"] == card_data.code.git_commit
    assert model_config == torchserve.model_config(params.serve)
    assert {
        "device": params.serve.device,
        "torch_threads": params.serve.torch_threads,
        "max_payload_mb": params.serve.max_payload_mb,
    }.items() <= model_config["handler"].items()
    assert registry.aliases(params) == {"challenger": reg.version}
    # Fig. 5 analogue of this version: panels and map-mass summary of the deploy fold, in the register run
    assert tags["naslung.explain_panel"] == "explain/panel_cam.png"
    panel = Path(client.download_artifacts(reg.run_id, "explain", str(tmp_path / "explain")))
    assert (panel / "panel_cam.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((panel / "explain.json").read_text())
    n_test = json.loads((Path(params.paths.artifacts) / "metrics_detail.json").read_text())["ensemble"]["n_test"]["1"]
    assert summary["test_fold"] == 1 and summary["n"] == n_test > 0
    all_cbam = all(s.cbam for s in member_specs(params))  # attention maps need CBAM in every member
    assert "CAM" in summary and ("attention" in summary) == all_cbam == (panel / "panel_attention.png").is_file()
    assert client.get_run(reg.run_id).data.metrics["explain.CAM_mass_ratio"] > 0
    # calibration report (reliability plot + data) and the gate's figures in the register run
    cal_dir = Path(client.download_artifacts(reg.run_id, "calibration", str(tmp_path / "cal")))
    assert (cal_dir / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (cal_dir / "reliability.csv").read_text().startswith("kind,bin,")
    run_metrics = client.get_run(reg.run_id).data.metrics
    assert "calibration.validation.raw.brier" in run_metrics and "calibration.test.calibrated.ece" in run_metrics
    assert run_metrics["val.auc"] == pytest.approx(float(tags["naslung.val.auc"]), abs=1e-6)
    assert "## Calibration" in card

    # The model's environment resolves from a package index: the naslung code travels with the model.
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@challenger", dst_path=str(tmp_path / "m")))
    reqs = (local / "requirements.txt").read_text().split()
    assert not [r for r in reqs if r.split("==")[0].lower() == "naslung"], reqs
    assert {r.split("==")[0] for r in reqs} >= {"torch", "numpy", "pandas", "mlflow"}
    assert (local / "code" / "naslung" / "ensemble" / "model.py").is_file()

    model = mlflow.pyfunc.load_model(f"models:/{name}@challenger")
    sig = model.metadata.get_input_schema().inputs[0]
    assert sig.shape == (-1, 1, 32, 32, 32) and sig.type == np.dtype(np.float32)
    batch = np.random.default_rng(1).uniform(size=(4, 1, 32, 32, 32)).astype(np.float32)
    out = model.predict(batch)
    assert len(out) == 4 and {"probability", "raw_probability", "uncertainty", "refer", "label", "votes"} <= set(
        out.columns
    )
    member_cols = [c for c in out.columns if c.startswith("prob_")]
    assert len(member_cols) == 3
    np.testing.assert_allclose(out["raw_probability"], out[member_cols].mean(axis=1), rtol=1e-5)
    # the calibrator travels inside the registered model and is applied to the mean probability
    from naslung.calibration import Calibrator

    ens_dir, _meta = registry.download_ensemble(params, tmp_path / "dl", alias="challenger")
    stored = Calibrator.from_dict(json.loads((ens_dir / "calibration.json").read_text()))
    assert stored == Calibrator.from_dict(index["calibration"]["calibrator"])
    assert stored.method == params.ensemble.calibration and stored.fitted_on.n == int(tags["naslung.val.n"])
    np.testing.assert_allclose(out["probability"], stored.apply(out["raw_probability"]), rtol=1e-5, atol=1e-6)


@pytest.fixture
def postgres_uri(monkeypatch: pytest.MonkeyPatch) -> str:
    base = os.environ.get("NASLUNG_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("NASLUNG_TEST_POSTGRES_URL not set (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    import sqlalchemy

    schema = f"naslung_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    uri = f"{base}{sep}options=-csearch_path%3D{schema}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    # monkeypatch restores the variable only after this teardown: point MLflow back explicitly, so later
    # tests never talk to the dropped schema.
    mlflow.set_tracking_uri(previous)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


def test_gate_on_postgresql(tmp_path: Path, postgres_uri: str) -> None:
    _gate_sequence(tmp_path, "naslung-ensemble-pg")
    assert mlflow.get_tracking_uri().startswith("postgresql://")


def test_search_run_ids_of_a_mixed_selection(tmp_path: Path) -> None:
    """Members mixed from a POP and a DNAS selection name both searches in the lineage."""
    params = load_params(REPO / "params.yaml")
    files = []
    for kind, rid in (("pop", "run-pop"), ("dnas", "run-dnas")):
        d = tmp_path / kind
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"strategy": kind, "parent_run_id": rid}))
        files.append(str(d / "selected.json"))
    one = params.replace(ensemble=replace(params.ensemble, specs=(), members=files[0]))
    both = params.replace(ensemble=replace(params.ensemble, specs=(), members=tuple(files)))
    assert registry.search_run_id(one) == "run-pop"
    assert json.loads(registry.search_run_id(both)) == ["run-pop", "run-dnas"]
    explicit = params.replace(ensemble=replace(params.ensemble, specs=("[4, 4, [4], [8], [8]]",)))
    assert registry.search_run_id(explicit) is None
