"""The audit trail, run manifest, drift summary and MLflow scoring run of ``naslung score``, in-process.

The scorer is a plain function of the patch (as in ``test_score_csv.py``) whose answers carry the model
facts TorchServe's answers carry; the MLflow store is a real SQLite store in a temporary folder (a tiny
registered model version stands for the served one). No TorchServe: ``tests/integration/test_serving.py``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from naslung.data.patches import MultiPointCutter
from naslung.params import PrepareParams, ServeParams, load_params
from naslung.score_csv import AUDIT_COLUMNS, score_csv
from naslung.scoring import quantise_uint8
from naslung.scoring_csv.drift import read_profile, reference_profile, scan_metadata, score_histogram, write_profile
from naslung.scoring_csv.manifest import file_sha256, manifest_path, read_manifest
from naslung.scoring_csv.rows import input_sha256

REPO = Path(__file__).resolve().parents[2]
PREPARE = PrepareParams()
SERVE = replace(ServeParams(), request_patches=2, concurrency=2)
MODEL = {"model_name": "naslung-ensemble", "model_version": "3", "model_alias": "champion"}
FACTS = {"data_revision": "0123456789ab", "git_commit": "f" * 40}


def _scan(path: Path, seed: int, spacing: tuple[float, float, float]) -> None:
    """A scan of 48 x 48 x 48 mm around the origin (voxels of ``spacing`` mm), noise in HU plus a blob."""
    size = [int(round(48 / s)) for s in spacing]  # x, y, z
    rng = np.random.default_rng(seed)
    arr = rng.normal(-800, 80, size=(size[2], size[1], size[0])).astype(np.int16)
    c = [n // 2 for n in size]
    arr[c[2] - 2 : c[2] + 2, c[1] - 3 : c[1] + 3, c[0] - 3 : c[0] + 3] = 40
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((-24.0, -24.0, -24.0))
    sitk.WriteImage(img, str(path))


def _answer(patch: np.ndarray) -> dict[str, Any]:
    prob = float(patch.mean())
    return {
        "probability": prob,
        "raw_probability": prob,
        "uncertainty": 0.01,
        "refer": False,
        "label": int(prob > 0.15),
        "votes": 3 * int(prob > 0.15),
        "device": "cpu",
        **MODEL,
        **FACTS,
    }


def scorer(patches: np.ndarray) -> list[dict[str, Any]]:
    return [_answer(p) for p in patches]


def _row(nid: str, uid: str, x: float, y: float = 0.0, z: float = 0.0, **extra: Any) -> dict[str, Any]:
    return {"nodule_id": nid, "seriesuid": uid, "coordX": x, "coordY": y, "coordZ": z, **extra}


def _csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training-like scans (0.75 x 0.75 x 2 mm) t0..t5 and others (1.5 x 1.5 x 5 mm) o0..o5."""
    root = tmp_path_factory.mktemp("audit") / "scans"
    root.mkdir()
    for i in range(6):
        _scan(root / f"t{i}.mhd", i, (0.75, 0.75, 2.0))
        _scan(root / f"o{i}.mhd", 10 + i, (1.5, 1.5, 5.0))
    return root


@pytest.fixture(scope="module")
def reference(scans: Path) -> dict[str, Any]:
    """A profile like the registered model's: training-like scans, validation scores spread over [0, 1]."""
    rng = np.random.default_rng(0)
    metas = [scan_metadata(scans / f"t{i}.mhd") for i in range(6)]
    return reference_profile(metas, rng.beta(2, 5, 400).tolist(), {"test": True})


def _patch(scans: Path, uid: str, xyz: tuple[float, float, float]) -> np.ndarray:
    """The patch the scoring path cuts (its multi-point cutter) at ``xyz`` (world mm)."""
    return MultiPointCutter(sitk.ReadImage(str(scans / f"{uid}.mhd")), PREPARE).cut(np.array([xyz], float))[0]


def test_every_row_has_its_audit_trail(scans: Path, tmp_path: Path, reference: dict[str, Any]) -> None:
    rows = [
        _row("a", "t0", 0.0, site="x"),
        _row("b", "t1", 3.0, -2.0, 1.0, site="y"),
        _row("nope", "unknown.uid", 0.0, site="z"),
        _row("far", "t0", 300.0, site="x"),
    ]
    csv, out = _csv(tmp_path / "in.csv", rows), tmp_path / "out.csv"
    summary = score_csv(csv, scans, out, None, PREPARE, SERVE, progress=False, predict=scorer, reference=reference)
    res = _read(out)
    assert list(res.columns)[-len(AUDIT_COLUMNS) :] == list(AUDIT_COLUMNS)
    assert list(res["status"]) == ["ok", "ok", "error", "error"]
    run = summary.request_id
    assert len(run) == 32 and list(res["request_id"]) == [f"{run}/{i}" for i in range(1, 5)]
    for _, r in res.iterrows():  # every row: request id, input hash, scored-at (UTC)
        inputs = {k: r[k] for k in ("nodule_id", "seriesuid", "coordX", "coordY", "coordZ", "site")}
        assert r["input_sha256"] == input_sha256(inputs)
        assert datetime.fromisoformat(r["scored_at"]).utcoffset().total_seconds() == 0
        assert r["scored_at"].endswith("Z")
    # the canonical form of the input hash, spelled out
    canonical = '[["nodule_id","a"],["seriesuid","t0"],["coordX","0.0"],["coordY","0.0"],["coordZ","0.0"],["site","x"]]'
    assert res.loc[0, "input_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    ok = res[res["status"] == "ok"]
    for i, xyz in ((0, (0.0, 0.0, 0.0)), (1, (3.0, -2.0, 1.0))):
        wire = quantise_uint8(_patch(scans, f"t{i}", xyz))  # the uint8 wire form, 32^3 bytes
        assert ok.loc[i, "patch_sha256"] == hashlib.sha256(wire.tobytes()).hexdigest()
    assert (ok[["model_name", "model_version", "model_alias"]].to_numpy() == list(MODEL.values())).all()
    assert (ok["data_revision"] == FACTS["data_revision"]).all() and (ok["git_commit"] == FACTS["git_commit"]).all()
    assert (res.loc[2:, "patch_sha256"] == "").all()  # no patch was cut for these
    assert (res["input_sha256"].str.len() == 64).all()


def test_hashes_follow_the_input_cell_and_the_patch(scans: Path, tmp_path: Path) -> None:
    rows = [_row("a", "t0", 0.0, site="x"), _row("b", "t0", 4.0, site="x"), _row("c", "t1", -4.0, site="x")]
    csv, out = _csv(tmp_path / "in.csv", rows), tmp_path / "out.csv"
    first = score_csv(csv, scans, out, None, PREPARE, SERVE, progress=False, predict=scorer)
    before = _read(out)

    # the same input again, scored from scratch: every hash is the same, the run id is new
    again = score_csv(csv, scans, tmp_path / "again.csv", None, PREPARE, SERVE, progress=False, predict=scorer)
    twice = _read(tmp_path / "again.csv")
    assert again.request_id != first.request_id
    for col in ("input_sha256", "patch_sha256"):
        assert list(twice[col]) == list(before[col])

    # a carried cell changes: only that row's input hash; the patch is the same
    rows[0]["site"] = "y"
    # a coordinate changes: the row's input hash and its patch hash
    rows[2]["coordY"] = 3.0
    _csv(csv, rows)
    third = score_csv(csv, scans, out, None, PREPARE, SERVE, progress=False, predict=scorer)
    after = _read(out)
    assert third.n_resumed == 1 and after.loc[1].equals(before.loc[1])  # unchanged row resumed as it was
    assert [after.loc[i, "input_sha256"] != before.loc[i, "input_sha256"] for i in range(3)] == [True, False, True]
    assert [after.loc[i, "patch_sha256"] != before.loc[i, "patch_sha256"] for i in range(3)] == [False, False, True]
    assert after.loc[1, "request_id"] == f"{first.request_id}/2"  # a resumed row keeps the run that scored it
    assert after.loc[0, "request_id"] == f"{third.request_id}/1"

    # an edited audit cell in the output makes its row be scored again (the trail must vouch for the input)
    edited = _read(out)
    edited.loc[1, "input_sha256"] = "0" * 64
    edited.to_csv(out, index=False)
    fourth = score_csv(csv, scans, out, None, PREPARE, SERVE, progress=False, predict=scorer)
    assert fourth.n_resumed == 2 and fourth.n_sent == 1
    assert _read(out).loc[1, "input_sha256"] == before.loc[1, "input_sha256"]


def test_manifest_counts_equal_the_csv_and_name_the_run(scans: Path, tmp_path: Path, reference: dict) -> None:
    rows = [_row(f"n{i}", f"t{i % 3}", float(i)) for i in range(5)] + [_row("bad", "t0", 999.0)]
    csv, out = _csv(tmp_path / "in.csv", rows), tmp_path / "results.csv"
    summary = score_csv(csv, scans, out, None, PREPARE, SERVE, progress=False, predict=scorer, reference=reference)
    assert summary.manifest == manifest_path(out) == tmp_path / "results.manifest.json"
    m = read_manifest(summary.manifest)
    res = _read(out)
    statuses = res["status"].value_counts().to_dict()
    assert {k: m["counts"][k] for k in ("ok", "error")} == {"ok": statuses["ok"], "error": statuses["error"]}
    assert m["counts"]["rows"] == len(res) and m["counts"]["pending"] == 0 and m["counts"]["sent"] == 5
    assert m["input"]["sha256"] == file_sha256(csv) == hashlib.sha256(csv.read_bytes()).hexdigest()
    assert m["request_id"] == summary.request_id and set(res["request_id"].str.split("/").str[0]) == {m["request_id"]}
    assert m["model"] == {
        "name": "naslung-ensemble",
        "version": "3",
        "alias": "champion",
        "data_revision": FACTS["data_revision"],
        "git_commit": FACTS["git_commit"],
    }
    assert m["models"][0]["rows"] == 5 and m["devices"] == ["cpu"]
    assert {"python", "torch", "SimpleITK", "numpy", "naslung"} <= set(m["software"]) and "cuda" not in m["software"]
    assert set(m["timings_s"]) == {"read", "cut", "wait", "request", "render", "wall"} and m["timings_s"]["wall"] > 0
    assert m["errors"] == {"6": res.loc[5, "error"]} and m["scored_at"] >= m["started_at"]
    assert Path(m["results"]["drift_png"]).read_bytes()[:4] == b"\x89PNG"

    # a file-level error still writes a manifest with the counts
    nocol = _csv(tmp_path / "nocol.csv", [{"seriesuid": "t0", "x": 1.0}])
    s = score_csv(nocol, scans, tmp_path / "nocol_out.csv", None, PREPARE, SERVE, progress=False, predict=scorer)
    mm = read_manifest(manifest_path(tmp_path / "nocol_out.csv"))
    assert mm["file_error"] == s.file_error and mm["counts"]["error"] == 1 and mm["model"] is None


def test_drift_is_larger_for_a_batch_with_other_spacing(scans: Path, tmp_path: Path, reference: dict) -> None:
    def drift_of(prefix: str) -> dict[str, Any]:
        rows = [_row(f"{prefix}{i}", f"{prefix}{i}", 0.0) for i in range(6)]
        csv, out = _csv(tmp_path / f"{prefix}.csv", rows), tmp_path / f"{prefix}_out.csv"
        s = score_csv(csv, scans, out, None, PREPARE, SERVE, progress=False, predict=scorer, reference=reference)
        assert s.n_ok == 6 and s.drift_png is not None and s.drift_png.read_bytes()[:4] == b"\x89PNG"
        drift: dict[str, Any] = read_manifest(manifest_path(out))["drift"]
        return drift

    like, other = drift_of("t"), drift_of("o")
    for q in ("spacing_xy_mm", "spacing_z_mm"):
        assert like["quantities"][q]["psi"] == pytest.approx(0.0, abs=1e-9) and like["quantities"][q]["ks"] == 0.0
        assert other["quantities"][q]["psi"] > 1.0 and other["quantities"][q]["ks"] == 1.0
        assert other["quantities"][q]["reference"]["mean"] == like["quantities"][q]["batch"]["mean"]
    assert other["quantities"]["spacing_z_mm"]["batch"]["mean"] == pytest.approx(5.0)
    assert "spacing_xy_mm" in other["shifted"] and not {"spacing_xy_mm", "spacing_z_mm"} & set(like["shifted"])
    assert like["max_psi"] < other["max_psi"]
    # MetaImage: no kernel / manufacturer / thickness, reported as unknown; the score histogram is compared
    assert like["categories"]["kernel"]["batch"] == {"unknown": 6}
    assert like["quantities"]["slice_thickness_mm"]["psi"] is None
    assert sum(like["scores"]["batch"]["counts"]) == 6 and sum(like["scores"]["reference"]["counts"]) == 400
    assert like["scores"]["psi"] is not None and 0.0 <= like["scores"]["ks"] <= 1.0
    # without a reference: batch figures only
    rows = [_row("t0", "t0", 0.0)]
    score_csv(
        _csv(tmp_path / "nr.csv", rows),
        scans,
        tmp_path / "nr_out.csv",
        None,
        PREPARE,
        SERVE,
        progress=False,
        predict=scorer,
    )
    bare = read_manifest(manifest_path(tmp_path / "nr_out.csv"))["drift"]
    assert bare["reference"]["given"] is False and bare["quantities"]["spacing_z_mm"]["batch"]["mean"] == 2.0
    assert bare["max_psi"] is None


def test_profile_round_trip_and_dicom_metadata(tmp_path: Path, reference: dict) -> None:
    write_profile(tmp_path, reference)
    assert read_profile(tmp_path) == json.loads(json.dumps(reference))
    assert read_profile(tmp_path / "nowhere") is None
    # a small DICOM series: kernel (0018,1210), manufacturer (0008,0070), thickness (0018,0050), slice interval
    series = tmp_path / "dicom"
    series.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(3):
        sl = sitk.GetImageFromArray(np.zeros((1, 8, 8), np.int16))
        sl.SetSpacing((0.7, 0.7, 2.5))
        sl.SetOrigin((0.0, 0.0, 2.5 * k))
        for tag, value in (
            ("0008|0060", "CT"),
            ("0008|0070", "ACME"),
            ("0018|1210", "B30f"),
            ("0018|0050", "2.0"),
            ("0020|000e", "1.2.3.4"),
            ("0020|0013", str(k + 1)),
            ("0020|0032", f"0\\0\\{2.5 * k}"),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
        ):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(series / f"s{k}.dcm"))
        writer.Execute(sl)
    meta = scan_metadata(sorted(series.glob("*.dcm")))
    assert meta is not None
    assert (meta["kernel"], meta["manufacturer"], meta["slice_thickness_mm"]) == ("B30f", "ACME", 2.0)
    assert meta["spacing_xy_mm"] == pytest.approx(0.7) and meta["spacing_z_mm"] == pytest.approx(2.5)
    assert scan_metadata(series)["kernel"] == "B30f"  # a folder: its first series
    assert scan_metadata(tmp_path / "missing.mhd") is None


# ------------------------------------------------------------------------------------------ MLflow
@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Params on a fresh SQLite MLflow store in ``tmp_path`` holding one registered version (alias champion)."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    base = load_params(REPO / "params.yaml")
    params = base.replace(
        paths=replace(base.paths, mlflow_uri=uri, mlflow_artifacts=str(tmp_path / "mlartifacts")),
        ensemble=replace(base.ensemble, experiment="audit-test"),
    )
    from naslung.registry import configure

    configure(params)

    class Constant(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
        def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
            return np.zeros(len(model_input))

    with mlflow.start_run(run_name="audit-register"):
        info = mlflow.pyfunc.log_model(
            name="ensemble", python_model=Constant(), registered_model_name=MODEL["model_name"]
        )
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(MODEL["model_name"], "champion", version)
    return params, version


def test_scoring_run_in_mlflow_linked_to_the_model_version(scans: Path, tmp_path: Path, store: Any, reference) -> None:
    from mlflow import MlflowClient

    from naslung.registry.scoring_runs import log_scoring_run

    params, version = store
    answers = {**MODEL, "model_version": version}

    def served(patches: np.ndarray) -> list[dict[str, Any]]:
        return [{**_answer(p), **answers} for p in patches]

    rows = [_row(f"n{i}", f"o{i}", 0.0) for i in range(3)] + [_row("x", "none", 0.0)]
    csv, out = _csv(tmp_path / "batch.csv", rows), tmp_path / "batch_out.csv"
    summary = score_csv(csv, scans, out, None, PREPARE, SERVE, progress=False, predict=served, reference=reference)
    run_id = log_scoring_run(params, summary.manifest)
    assert run_id is not None
    client = MlflowClient()
    run = client.get_run(run_id)
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == params.serve.scoring_experiment == "naslung-scoring"
    tags = run.data.tags
    assert tags["naslung.kind"] == "score" and tags["naslung.request_id"] == summary.request_id
    assert (tags["naslung.model.name"], tags["naslung.model.version"]) == (MODEL["model_name"], version)
    assert tags["naslung.model.alias"] == "champion" and tags["naslung.model.data_revision"] == FACTS["data_revision"]
    assert f"#/models/{MODEL['model_name']}/versions/{version}" in tags["mlflow.note.content"]
    mv = client.get_model_version(MODEL["model_name"], version)
    model_id = mv.model_id or mv.source.removeprefix("models:/")  # MLflow 3: the version's logged model
    assert model_id.startswith("m-") and [m.model_id for m in run.inputs.model_inputs] == [model_id]
    m = run.data.metrics
    assert (m["counts.ok"], m["counts.error"], m["counts.rows"]) == (3.0, 1.0, 4.0)
    assert m["drift.spacing_z_mm.psi"] > 1.0 and "timings.wall_s" in m
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"batch_out.manifest.json", "batch_out.drift.png"} <= arts
    manifest = read_manifest(summary.manifest)
    assert manifest["mlflow"]["run_id"] == run_id and manifest["mlflow"]["model_id"] == model_id


def test_an_unreachable_store_only_warns(scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from naslung.registry.scoring_runs import log_scoring_run

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker / 'mlflow.db'}")
    csv, out = _csv(tmp_path / "in.csv", [_row("a", "t0", 0.0)]), tmp_path / "out.csv"
    summary = score_csv(csv, scans, out, None, PREPARE, SERVE, progress=False, predict=scorer)
    before = (out.read_bytes(), summary.manifest.read_bytes())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert log_scoring_run(load_params(REPO / "params.yaml"), summary.manifest) is None
    assert any("scoring run not logged to MLflow" in str(w.message) for w in caught)
    assert (out.read_bytes(), summary.manifest.read_bytes()) == before and _read(out).loc[0, "status"] == "ok"


def test_registration_stores_the_reference_profile_with_the_model(tmp_path: Path) -> None:
    """``with_reference_profile`` (called by ``naslung register`` before the model is logged): a copy of the
    ensemble directory with the training scans' acquisition and the validation score histogram."""
    from builders import constant_ensemble, make_project

    from naslung.ensemble.training import read_index
    from naslung.registry.versions import with_reference_profile

    params_path = make_project(tmp_path / "project", folds=[1])
    params = constant_ensemble(params_path, tmp_path / "ens", malignant=False)
    index, _ = read_index(params)
    raw = Path(params.paths.raw) / "subset0"
    raw.mkdir(parents=True)
    manifest = pd.read_csv(Path(params.paths.artifacts) / "manifest.csv")
    for uid in manifest["seriesuid"][:12]:  # some of the store's scans exist (the rest are unreadable: skipped)
        _scan(raw / f"{uid}.mhd", 0, (0.75, 0.75, 2.0))
    model_dir = Path(index["model_dir"])
    staged = with_reference_profile(params, index, model_dir, tmp_path / "stage")
    profile = read_profile(staged)
    assert staged != model_dir and read_profile(model_dir) is None  # the DVC output stays untouched
    assert profile is not None and (staged / "members.json").is_file()
    train_folds = set(profile["source"]["train_folds"])
    expected = sum(1 for f in manifest["fold"][:12] if f in train_folds)
    assert profile["scans"]["n"] == expected > 0 and set(profile["scans"]["spacing_z_mm"]) == {2.0}
    n_val = profile["source"]["validation"]["n"]
    assert sum(profile["scores"]["counts"]) == n_val == len(profile["scores"]["values"]) > 0
    # calibrated: a constant predictor on balanced validation rows is calibrated to about 1/2
    assert profile["scores"]["counts"] == score_histogram(profile["scores"]["values"])
    assert np.ptp(profile["scores"]["values"]) < 1e-6 and 0.4 <= profile["scores"]["values"][0] <= 0.6
