"""MLflow Model Registry: pyfunc ensemble, lineage tags, promotion gate, rollback (real MLflow).

The gate is exercised with fixed ensembles whose members always say benign (F1 0) or malignant (F1 2/3 on
the balanced tiny store), so "worse" and "better" are certain. Runs on the session SQLite store, and on
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
import yaml
from builders import constant_ensemble, make_project
from mlflow import MlflowClient

from naslung import registry, torchserve, tracking
from naslung.card import ModelCard
from naslung.ensemble.evaluation import evaluate_ensemble
from naslung.ensemble.training import data_version, member_specs, train_ensemble
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


def _gate_sequence(tmp_path: Path, name: str) -> None:
    params_path = make_project(tmp_path, registry_name=name)
    params = load_params(params_path)
    from naslung.validation import validate

    assert validate(params)["success"], "the tiny project must pass the real data validation"
    client = MlflowClient(params.mlflow_uri, params.mlflow_uri)

    v1 = _register_constant(params_path, tmp_path, "benign1", malignant=False)
    assert registry.aliases(params) == {"challenger": v1.version}
    d1 = registry.promote(params)
    assert d1.promoted and "no champion yet" in d1.reason

    v2 = _register_constant(params_path, tmp_path, "malignant", malignant=True)
    d2 = registry.promote(params)
    assert d2.promoted and d2.challenger_f1 == pytest.approx(2 / 3) and d2.champion_f1 == 0.0
    assert registry.aliases(params) == {"champion": v2.version, "previous": v1.version}

    v3 = _register_constant(params_path, tmp_path, "benign3", malignant=False)  # deliberately worse
    d3 = registry.promote(params)
    assert not d3.promoted and "< champion" in d3.reason
    assert registry.aliases(params) == {"champion": v2.version, "previous": v1.version, "challenger": v3.version}
    mv3 = client.get_model_version(name, v3.version)
    assert mv3.tags["naslung.gate.decision"] == "refused" and "F1" in mv3.tags["naslung.gate.reason"]
    # the decision record: a JSON artifact of the version's run, with the figures the gate saw
    record_path = mv3.tags["naslung.gate.record"]
    record = json.loads(Path(client.download_artifacts(mv3.run_id, record_path, str(tmp_path))).read_text())
    assert record["verdict"] == "refused" and record["reason"] == d3.reason and record["version"] == v3.version
    assert record["champion"]["version"] == v2.version and record["challenger"]["f1_per_fold"] == {"1": 0.0, "2": 0.0}
    assert record["settings"] == {"f1_tolerance": params.registry.f1_tolerance, "require_validation": True}
    assert client.get_model_version(name, v2.version).tags["naslung.gate.decision"] == "promoted"

    batch = np.random.default_rng(0).uniform(size=(3, 1, 32, 32, 32)).astype(np.float32)
    champ = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(batch)
    assert champ["label"].tolist() == [1, 1, 1] and (champ["votes"] == 3).all()

    registry.rollback(params)
    assert registry.aliases(params)["champion"] == v1.version
    assert registry.aliases(params)["previous"] == v2.version
    champ = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(batch)
    assert champ["label"].tolist() == [0, 0, 0] and (champ["probability"] < 0.5).all()

    # a verdict about other data does not count: the gate refuses
    _write_validation(params, True, {"manifest": "0" * 32, "patches": "0" * 32})
    v5 = _register_constant(params_path, tmp_path, "malignant5", malignant=True)
    d5 = registry.promote(params, v5.version)
    assert not d5.promoted and "other data" in d5.reason
    # without a validation result the gate refuses, whatever the F1
    (Path(params.paths.artifacts) / "validation.json").unlink()
    v4 = _register_constant(params_path, tmp_path, "malignant4", malignant=True)
    d4 = registry.promote(params, v4.version)
    assert not d4.promoted and "not validated" in d4.reason
    assert registry.aliases(params)["champion"] == v1.version


def test_gate_refuses_worse_accepts_better_and_rolls_back(tmp_path: Path) -> None:
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
    assert model_config["handler"] == {
        "device": params.serve.device,
        "torch_threads": params.serve.torch_threads,
        "max_payload_mb": params.serve.max_payload_mb,
    }
    assert registry.aliases(params) == {"challenger": reg.version}
    # Fig. 5 analogue of this version: panels and map-mass summary of the deploy fold, in the register run
    assert tags["naslung.explain_panel"] == "explain/panel_cam.png"
    panel = Path(client.download_artifacts(reg.run_id, "explain", str(tmp_path / "explain")))
    assert (panel / "panel_cam.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((panel / "explain.json").read_text())
    n_test = json.loads((Path(params.paths.artifacts) / "metrics.json").read_text())["ensemble"]["n_test"]["1"]
    assert summary["test_fold"] == 1 and summary["n"] == n_test > 0
    all_cbam = all(s.cbam for s in member_specs(params))  # attention maps need CBAM in every member
    assert "CAM" in summary and ("attention" in summary) == all_cbam == (panel / "panel_attention.png").is_file()
    assert client.get_run(reg.run_id).data.metrics["explain.CAM_mass_ratio"] > 0

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
    assert len(out) == 4 and {"probability", "label", "votes"} <= set(out.columns)
    member_cols = [c for c in out.columns if c.startswith("prob_")]
    assert len(member_cols) == 3
    np.testing.assert_allclose(out["probability"], out[member_cols].mean(axis=1), rtol=1e-5)


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
