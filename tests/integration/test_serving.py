"""TorchServe batch scoring, end to end on loopback: registry -> .mar -> TorchServe -> scored CSV.

A small 3-member ensemble is registered twice in a temporary SQLite MLflow store (v1 champion, v2
challenger), the champion is packaged and served by a real TorchServe (Java 17), and a CSV mixing the
real LIDC-IDRI-0001 nodule (../shared/data, symlinked into a temporary --scans folder) and a synthetic
SimpleITK scan is scored. Results must equal in-process ``mlflow.pyfunc`` predictions of the same
version; every bad row / payload gets a clear error while the server keeps answering.

Only one TorchServe can run per machine: the module holds ``torchserve_lock`` while its server runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from builders import MAP_KEYS, tiny_ensemble

from naslung.params import load_params
from naslung.scoring import decode_map, encode_payload, quantise_uint8

REPO = Path(__file__).resolve().parents[2]
LIDC_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
LIDC_NODULE = (56.21, 86.34, -115.87)
SYNTH_UID = "1.2.826.0.1.3680043.8.498.99999999"
SPEC = "[4, 4, [4, 4], [4, 8], [8, 8]]"

HAS_JAVA = shutil.which("java") is not None or Path("/usr/bin/java").exists()


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _synthetic_scan(path: Path) -> None:
    """A 96x96x48 voxel scan (x, y, z), spacing 0.75 x 0.75 x 2 mm, noise in HU plus two blobs."""
    import SimpleITK as sitk

    rng = np.random.default_rng(1)
    arr = rng.normal(-800, 80, size=(48, 96, 96)).astype(np.int16)  # (z, y, x)
    zz, yy, xx = np.mgrid[:48, :96, :96]
    for cz, cy, cx, r in ((24, 40, 40, 6), (20, 60, 70, 9)):
        blob = ((zz - cz) * 2.0) ** 2 + ((yy - cy) * 0.75) ** 2 + ((xx - cx) * 0.75) ** 2 < r**2
        arr[blob] = 40
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.75, 0.75, 2.0))
    img.SetOrigin((-36.0, -36.0, -48.0))
    sitk.WriteImage(img, str(path), useCompression=True)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, shared_data: Path):
    """Registered ensemble (v1 champion, v2 challenger), packaged champion, running TorchServe."""
    if not HAS_JAVA:
        pytest.skip("TorchServe needs Java 17 (no java found)")
    import mlflow
    from mlflow import MlflowClient

    from naslung import registry, tracking
    from naslung import torchserve as S

    tmp = tmp_path_factory.mktemp("serving")
    base = load_params(REPO / "params.yaml")
    ports = _free_ports(3)
    params = base.replace(
        paths=replace(
            base.paths,
            artifacts=str(tmp / "artifacts"),
            mlflow_artifacts=str(tmp / "mlartifacts"),
            mlflow_uri=f"sqlite:///{tmp / 'mlflow.db'}",
        ),
        serve=replace(
            base.serve,
            inference_port=ports[0],
            management_port=ports[1],
            metrics_port=ports[2],
            batch_size=4,
            max_batch_delay_ms=20,
            workers=1,
            torch_threads=1,
            max_payload_mb=1.0,
            request_patches=3,
            concurrency=2,
            device="cpu",
        ),
        ensemble=replace(base.ensemble, experiment="serving-test"),
    )
    # The registry follows MLFLOW_TRACKING_URI when set (conftest sets a session store): use it.
    registry.configure(params)
    name = params.registry.name
    for version, seed in ((1, 0), (2, 1)):
        ens_dir = tmp / f"ensemble_v{version}"
        tiny_ensemble(seed).save(ens_dir)
        with mlflow.start_run(run_name=f"serving-test-v{version}"):
            info = mlflow.pyfunc.log_model(
                name="ensemble",
                python_model=registry.EnsemblePyfunc(),
                artifacts={"ensemble": str(ens_dir)},
                signature=registry.signature(["m0", "m1", "m2"]),
                registered_model_name=name,
                **tracking.model_environment(),
            )
        registered = str(info.registered_model_version)
        MlflowClient().set_registered_model_alias(name, "champion" if version == 1 else "challenger", registered)
        if version == 1:
            champion = registered
        else:
            challenger = registered

    scans = tmp / "scans"
    (scans / "subset0").mkdir(parents=True)
    real = shared_data / "LIDC-CT-concept-to-clinic" / "full"
    for suffix in (".mhd", ".zraw"):
        (scans / "subset0" / f"{LIDC_UID}{suffix}").symlink_to(real / f"{LIDC_UID}{suffix}")
    _synthetic_scan(scans / f"{SYNTH_UID}.mhd")

    with S.torchserve_lock():
        mar = S.package_from_registry(params, alias="champion", version=None)
        server = S.start_server(params)
        try:
            yield {
                "params": params,
                "server": server,
                "scans": scans,
                "tmp": tmp,
                "mar": mar,
                "champion": champion,
                "challenger": challenger,
                "S": S,
            }
        finally:
            S.stop_server()


@pytest.fixture(scope="module")
def client(env):
    from naslung.score_csv import ServingClient

    server = env["server"]
    return ServingClient(
        server.inference_url, server.model_name, server.inference_key(), timeout_s=60, wire=env["params"].serve.wire
    )


# ------------------------------------------------------------------------------------ serving tests
def test_package_records_champion_and_challenger_needs_explicit_choice(env) -> None:
    import zipfile

    import yaml

    with zipfile.ZipFile(env["mar"]) as z:
        names = set(z.namelist())
        info = json.loads(z.read("model_info.json"))
        config = yaml.safe_load(z.read("model-config.yaml"))
    assert {"handler.py", "model_info.json", "ensemble/members.json", "ensemble/member_0.pt"} <= names
    assert info["version"] == env["champion"] and info["alias"] == "champion"
    assert config == env["S"].model_config(env["params"].serve) and config["handler"]["max_payload_mb"] == 1.0
    logs = Path(env["params"].paths.artifacts) / "serve" / "logs"
    worker_log = "".join(f.read_text(errors="replace") for f in logs.glob("model_log*.log"))
    # CPU: channels-last-3d convolutions, kept because they gave the eager results at start-up
    assert "loaded on cpu (cpu, fp32, channels-last-3d; 1 threads, payload limit 1048576 bytes)" in worker_log
    assert "CPU channels-last-3d check: fp32 vs fp32 on 8 patches" in worker_log and "(tol 1e-06: ok)" in worker_log
    S = env["S"]
    other = S.package_from_registry(
        env["params"].replace(paths=replace(env["params"].paths, artifacts=str(env["tmp"] / "other"))),
        alias=None,
        version=env["challenger"],
    )
    assert json.loads(other.with_suffix(".json").read_text())["version"] == env["challenger"]
    from naslung import registry

    with pytest.raises(ValueError):
        registry.download_ensemble(env["params"], env["tmp"] / "x")  # neither alias nor version


def test_config_is_loopback_token_auth_no_model_api(env) -> None:
    cfg = (Path(env["params"].paths.artifacts) / "serve" / "config.properties").read_text()
    for key in ("inference_address", "management_address", "metrics_address"):
        assert f"{key}=http://127.0.0.1:" in cfg
    assert "disable_token_authorization=false" in cfg and "enable_model_api=false" in cfg
    assert '"batchSize": 4' in cfg and '"maxBatchDelay": 20' in cfg
    status = env["S"].server_status(env["params"])
    assert status["ping"] == "Healthy" and status["ready"] is True


def test_request_without_token_is_refused(env, client) -> None:
    x = np.full((1, 32, 32, 32), 0.5, np.float32)
    status, text = client.post(encode_payload(x), auth=False)
    assert status in (400, 401, 403) and "Token" in text
    bad_key = type(client)(env["server"].inference_url, env["server"].model_name, "wrong-key")
    status, _ = bad_key.post(encode_payload(x))
    assert status in (400, 401, 403)


def test_bad_payloads_get_4xx_and_worker_survives(client) -> None:
    rng = np.random.default_rng(2)
    good = rng.random((2, 32, 32, 32), dtype=np.float32)
    nan = good.copy()
    nan[0, 0, 0, 0] = np.nan
    bad = {
        "wrong shape": (encode_payload(good[:, :20]), "shape"),
        "wrong dtype": (encode_payload(good.astype(np.float64)), "dtype"),
        "truncated": (encode_payload(good)[:700], "truncated"),
        "empty": (b"", "empty"),
        "oversize": (encode_payload(rng.random((10, 32, 32, 32), dtype=np.float32)), "exceeds"),
        "nan": (encode_payload(nan), "NaN"),
    }
    for what, (body, word) in bad.items():
        status, text = client.post(body)
        assert 400 <= status < 500, (what, status, text)
        assert word in text, (what, text)
        out = client.predict(good)  # the next good request succeeds
        assert len(out) == 2 and 0.0 <= out[0]["probability"] <= 1.0
    # Mixed batch: concurrent good and bad requests are answered one by one.
    bodies = [encode_payload(good)] * 5 + [b"garbage"] + [encode_payload(good)] * 2
    with ThreadPoolExecutor(8) as pool:
        statuses = [s for s, _ in pool.map(client.post, bodies)]
    assert statuses == [200] * 5 + [400] + [200] * 2


def test_explanations_endpoint_returns_maps_only_when_asked(client) -> None:
    rng = np.random.default_rng(5)
    x = rng.random((3, 32, 32, 32), dtype=np.float32)
    plain = client.predict(x)
    assert len(plain) == 3 and all(MAP_KEYS.isdisjoint(r) for r in plain)
    explained = client.explain(x)  # POST /explanations/<model>: the frontend's "explain" header reached the handler
    assert len(explained) == 3
    for p, e in zip(plain, explained):
        assert e["probability"] == pytest.approx(p["probability"], abs=1e-6)
        assert (e["label"], e["votes"], e["model_version"]) == (p["label"], p["votes"], p["model_version"])
        assert e["explain_target"] == e["label"]
        assert "attention" in e and e["attention"] is None  # the served ensemble has a member without CBAM
        cam = decode_map(e["cam"])
        assert cam.shape == (32, 32, 32) and np.isfinite(cam).all()
    status, text = client.post(b"garbage", path=client.explain_path)
    assert status == 400 and "npy" in text

    # Concurrent predictions and explanations (TorchServe may put them in one batch): each gets its kind.
    chunks = [rng.random((1 + i % 2, 32, 32, 32), dtype=np.float32) for i in range(8)]
    kinds = ["explain" if i % 2 else "predict" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda kc: getattr(client, kc[0])(kc[1]), zip(kinds, chunks)))
    for kind, chunk, ans in zip(kinds, chunks, answers):
        assert len(ans) == len(chunk)
        for r in ans:
            if kind == "explain":
                assert set(r) >= MAP_KEYS and decode_map(r["cam"]).shape == (32, 32, 32)
            else:
                assert MAP_KEYS.isdisjoint(r)
    # ... and the same probabilities as alone.
    alone = [a["probability"] for c in chunks for a in client.predict(c)]
    assert [a["probability"] for ans in answers for a in ans] == pytest.approx(alone, abs=1e-6)


def test_wire_formats_and_columnar_answer_agree(env, client) -> None:
    """uint8 and float32 bodies, per-patch and columnar answers: same values where the inputs are the same,
    within the quantisation where they are not; every answer names the worker's device."""
    from naslung.serving_client import ServingClient

    server = env["server"]
    x = np.random.default_rng(11).random((6, 32, 32, 32), dtype=np.float32)
    kw = {"timeout_s": 60}
    with (
        ServingClient(server.inference_url, server.model_name, server.inference_key(), wire="float32", **kw) as f32,
        ServingClient(
            server.inference_url, server.model_name, server.inference_key(), wire="uint8", columnar=False, **kw
        ) as old,
    ):
        full = f32.predict(x)
        lean_rows = old.predict(x)
        status, text = old.post(old.body(x))  # no columnar header: the per-patch list of old clients
    lean_cols = client.predict(x) if client.wire == "uint8" else None
    assert status == 200 and isinstance(json.loads(text), list)
    assert all(r["device"] == "cpu" for r in full + lean_rows)
    if lean_cols is not None:
        assert lean_cols == lean_rows  # columnar answer == per-patch answer on the same body
    dp = max(abs(a["probability"] - b["probability"]) for a, b in zip(full, lean_rows))
    assert dp <= 1e-3


def _write_csv(path: Path, rows: list[dict], bom: bool = False) -> Path:
    text = pd.DataFrame(rows).to_csv(index=False)
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def test_score_csv_matches_pyfunc_and_reports_bad_rows(env, client) -> None:
    import mlflow
    import SimpleITK as sitk

    from naslung.data.patches import PatchCutter
    from naslung.score_csv import AUDIT_COLUMNS, score_csv
    from naslung.scoring_csv.manifest import file_sha256, read_manifest

    params, tmp = env["params"], env["tmp"]
    good = [
        {
            "nodule_id": "lidc-1",
            "seriesuid": LIDC_UID,
            "coordX": LIDC_NODULE[0],
            "coordY": LIDC_NODULE[1],
            "coordZ": LIDC_NODULE[2],
            "site": "A",
        },
        {"nodule_id": "s-1", "seriesuid": SYNTH_UID, "coordX": -6.0, "coordY": -6.0, "coordZ": 0.0, "site": "B"},
        {"nodule_id": "s-2", "seriesuid": SYNTH_UID, "coordX": 16.5, "coordY": 9.0, "coordZ": -8.0, "site": "B"},
        {"nodule_id": "s-3", "seriesuid": SYNTH_UID, "coordX": 0.0, "coordY": 0.0, "coordZ": 0.0, "site": "B"},
    ]
    bad = [
        {"nodule_id": "nan", "seriesuid": SYNTH_UID, "coordX": "", "coordY": 1.0, "coordZ": 0.0, "site": "C"},
        {"nodule_id": "text", "seriesuid": SYNTH_UID, "coordX": 1.0, "coordY": "abc", "coordZ": 0.0, "site": "C"},
        {"nodule_id": "unknown", "seriesuid": "1.2.3.4.nope", "coordX": 1.0, "coordY": 1.0, "coordZ": 0.0, "site": "C"},
        {"nodule_id": "outside", "seriesuid": SYNTH_UID, "coordX": 500.0, "coordY": 0.0, "coordZ": 0.0, "site": "C"},
        {"nodule_id": "dup", "seriesuid": SYNTH_UID, "coordX": 1.0, "coordY": 1.0, "coordZ": 1.0, "site": "C"},
        {"nodule_id": "dup", "seriesuid": SYNTH_UID, "coordX": 2.0, "coordY": 2.0, "coordZ": 2.0, "site": "C"},
        {
            "nodule_id": "escape",
            "seriesuid": f"../scans/{SYNTH_UID}",
            "coordX": 1.0,
            "coordY": 1.0,
            "coordZ": 0.0,
            "site": "C",
        },
    ]
    rows = [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3], bad[4], bad[5], bad[6], good[3]]
    csv = _write_csv(tmp / "nodules.csv", rows, bom=True)
    out = tmp / "results.csv"
    summary = score_csv(csv, env["scans"], out, client, params.prepare, params.serve, progress=False)
    res = pd.read_csv(out, dtype=str, keep_default_na=False)

    # Every input row once, in order, input columns first and untouched.
    assert list(res.columns) == [
        "nodule_id",
        "seriesuid",
        "coordX",
        "coordY",
        "coordZ",
        "site",
        "probability",
        "raw_probability",
        "uncertainty",
        "refer",
        "label",
        "votes",
        "model_version",
        "status",
        "error",
        *AUDIT_COLUMNS,
    ]
    assert list(res["nodule_id"]) == [r["nodule_id"] for r in rows]
    assert summary.n_rows == 11 and summary.n_ok == 4 and summary.n_error == 7
    by_id = res.groupby("nodule_id")
    errors = {k: " ".join(g["error"]) for k, g in by_id}
    assert "coordX" in errors["nan"] and "finite" in errors["nan"]
    assert "coordY" in errors["text"] and "'abc'" in errors["text"]
    assert "unknown series" in errors["unknown"]
    assert "outside the scan" in errors["outside"]
    assert errors["dup"].count("duplicate nodule_id 'dup'") == 2
    assert "only inside --scans" in errors["escape"]
    ok = res[res["status"] == "ok"]
    assert list(ok["nodule_id"]) == ["lidc-1", "s-1", "s-2", "s-3"]
    assert set(res.loc[res["status"] == "error", "nodule_id"]) == {"nan", "text", "unknown", "outside", "dup", "escape"}
    assert (ok["model_version"] == env["champion"]).all() and (ok["error"] == "").all()

    # In-process reference: the same patches through mlflow.pyfunc of the champion version.
    patches = []
    for r in good:
        scan = env["scans"] / ("subset0" if r["seriesuid"] == LIDC_UID else "") / f"{r['seriesuid']}.mhd"
        cutter = PatchCutter(sitk.ReadImage(str(scan)), params.prepare)
        patches.append(cutter.cut(np.array([r["coordX"], r["coordY"], r["coordZ"]], float)))
    sent = np.stack(patches).astype(np.float32)
    if params.serve.wire == "uint8":  # what the server saw: the patches quantised to 1/255
        sent = quantise_uint8(sent).astype(np.float32) / np.float32(255.0)
    ref = mlflow.pyfunc.load_model(f"models:/{params.registry.name}/{env['champion']}").predict(sent[:, None])
    np.testing.assert_allclose(ok["probability"].astype(float).to_numpy(), ref["probability"].to_numpy(), atol=1e-5)
    np.testing.assert_array_equal(ok["votes"].astype(int).to_numpy(), ref["votes"].to_numpy())
    np.testing.assert_array_equal(ok["label"].astype(int).to_numpy(), ref["label"].to_numpy())
    for col in ("raw_probability", "uncertainty"):  # the members' mean and spread, as the pyfunc gives them
        np.testing.assert_allclose(ok[col].astype(float).to_numpy(), ref[col].to_numpy(), atol=1e-5)
    np.testing.assert_array_equal(ok["refer"].astype(int).to_numpy(), ref["refer"].astype(int).to_numpy())
    assert (res.loc[res["status"] == "error", ["raw_probability", "uncertainty", "refer"]] == "").all().all()

    # The audit trail: the model facts come from TorchServe's answers (the .mar's model_info.json).
    info = json.loads(env["mar"].with_suffix(".json").read_text())
    assert (ok["model_name"] == params.registry.name).all() and (ok["model_alias"] == "champion").all()
    assert (ok["data_revision"] == (info.get("data_hash") or "")).all()
    assert (ok["git_commit"] == (info.get("git_commit") or "")).all()
    assert list(res["request_id"]) == [f"{summary.request_id}/{i + 1}" for i in range(len(rows))]
    assert (res["input_sha256"].str.len() == 64).all() and (res["scored_at"].str.endswith("Z")).all()
    # patch_sha256: of the uint8 wire form of the patch the scoring path cut (its multi-point cutter)
    from naslung.data.patches import MultiPointCutter

    wire = []
    for r in good:
        scan = env["scans"] / ("subset0" if r["seriesuid"] == LIDC_UID else "") / f"{r['seriesuid']}.mhd"
        patch = MultiPointCutter(sitk.ReadImage(str(scan)), params.prepare).cut(
            np.array([[r["coordX"], r["coordY"], r["coordZ"]]], float)
        )[0]
        wire.append(hashlib.sha256(quantise_uint8(patch).tobytes()).hexdigest())
    assert list(ok["patch_sha256"]) == wire
    manifest = read_manifest(summary.manifest)
    counts = res["status"].value_counts().to_dict()
    assert (manifest["counts"]["ok"], manifest["counts"]["error"]) == (counts["ok"], counts["error"]) == (4, 7)
    assert manifest["input"]["sha256"] == file_sha256(csv) and manifest["request_id"] == summary.request_id
    assert manifest["model"]["version"] == env["champion"] and manifest["model"]["alias"] == "champion"
    assert manifest["devices"] == ["cpu"] and manifest["software"]["torch"]
    assert manifest["drift"]["n_scans"] == 2 and summary.drift_png is not None and summary.drift_png.is_file()

    # Resume: nothing is re-sent; a row made pending again is the only one re-sent.
    again = score_csv(csv, env["scans"], out, client, params.prepare, params.serve, progress=False)
    assert again.n_resumed == 4 and again.n_sent == 0 and again.n_ok == 4
    edited = pd.read_csv(out, dtype=str, keep_default_na=False)
    edited.loc[2, ["probability", "status"]] = ["", "pending"]
    edited.to_csv(out, index=False)
    third = score_csv(csv, env["scans"], out, client, params.prepare, params.serve, progress=False)
    assert third.n_resumed == 3 and third.n_sent == 1
    final = pd.read_csv(out, dtype=str, keep_default_na=False)
    run_cells = ["request_id", "scored_at"]  # the re-scored row names the run that scored it again
    assert final.drop(columns=run_cells).equals(res.drop(columns=run_cells))
    assert (
        final.loc[2, "request_id"] == f"{third.request_id}/3" and final.loc[0, "request_id"] == res.loc[0, "request_id"]
    )

    # The server is still up after all that.
    assert env["S"].server_status(params)["ready"] is True


def test_file_level_errors(env, client) -> None:
    from naslung.score_csv import score_csv

    params, tmp = env["params"], env["tmp"]
    empty = tmp / "empty.csv"
    empty.write_bytes(b"")
    s = score_csv(empty, env["scans"], tmp / "empty_out.csv", client, params.prepare, params.serve, progress=False)
    assert s.file_error and "0 bytes" in s.file_error and not (tmp / "empty_out.csv").exists()

    nocol = _write_csv(tmp / "nocol.csv", [{"seriesuid": SYNTH_UID, "lon": 1.0, "lat": 2.0, "height": 3.0}])
    out = tmp / "nocol_out.csv"
    s = score_csv(nocol, env["scans"], out, client, params.prepare, params.serve, progress=False)
    assert s.file_error and "missing required column" in s.file_error and "coordX" in s.file_error
    res = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(res) == 1 and res.loc[0, "status"] == "error" and "coordX" in res.loc[0, "error"]


def test_cli_score_runs_against_the_server(env) -> None:
    import yaml

    from naslung.params import to_dict

    params, tmp = env["params"], env["tmp"]
    pfile = tmp / "params.yaml"
    pfile.write_text(yaml.safe_dump(to_dict(params)))
    csv = _write_csv(tmp / "cli.csv", [{"seriesuid": SYNTH_UID, "coordX": 0.0, "coordY": 1.0, "coordZ": 2.0}])
    out = tmp / "cli_out.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from naslung.cli import main; import sys; sys.exit(main())",
            "--params",
            str(pfile),
            "score",
            str(csv),
            "--scans",
            str(env["scans"]),
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 ok, 0 error" in proc.stdout
    assert pd.read_csv(out).loc[0, "status"] == "ok"

    # The scoring run in MLflow (the store the subprocess used: MLFLOW_TRACKING_URI), linked to the version.
    from mlflow import MlflowClient

    from naslung import registry
    from naslung.scoring_csv.manifest import manifest_path, read_manifest

    manifest = read_manifest(manifest_path(out))
    registry.configure(params)
    client = MlflowClient()
    run = client.get_run(manifest["mlflow"]["run_id"])
    assert f"MLflow scoring run {run.info.run_id}" in proc.stdout
    assert run.data.tags["naslung.model.version"] == env["champion"] and run.data.tags["naslung.kind"] == "score"
    assert client.get_experiment(run.info.experiment_id).name == params.serve.scoring_experiment
    mv = client.get_model_version(params.registry.name, env["champion"])
    model_id = mv.model_id or mv.source.removeprefix("models:/")
    assert [m.model_id for m in run.inputs.model_inputs] == [model_id] and run.data.metrics["counts.ok"] == 1.0


def test_cli_score_explain_writes_one_overlay_per_ok_row(env, client) -> None:
    import yaml

    from naslung.params import to_dict
    from naslung.score_csv import score_csv

    params, tmp = env["params"], env["tmp"]
    pfile = tmp / "explain_params.yaml"
    pfile.write_text(yaml.safe_dump(to_dict(params)))
    rows = [
        {"nodule_id": "e-1", "seriesuid": SYNTH_UID, "coordX": -6.0, "coordY": -6.0, "coordZ": 0.0},
        {"nodule_id": "nope", "seriesuid": "1.2.3.4.nope", "coordX": 1.0, "coordY": 1.0, "coordZ": 0.0},
        {"nodule_id": "e/2 x", "seriesuid": SYNTH_UID, "coordX": 16.5, "coordY": 9.0, "coordZ": -8.0},
    ]
    csv = _write_csv(tmp / "explain.csv", rows)
    out = tmp / "explain_out.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from naslung.cli import main; import sys; sys.exit(main())",
            "--params",
            str(pfile),
            "score",
            str(csv),
            "--scans",
            str(env["scans"]),
            "--out",
            str(out),
            "--no-progress",
            "--explain",
            "--no-log",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 ok, 1 error" in proc.stdout and "MLflow scoring run" not in proc.stdout  # --no-log
    res = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(res["nodule_id"]) == ["e-1", "nope", "e/2 x"] and list(res.columns)[-1] == "explain_png"
    assert list(res["status"]) == ["ok", "error", "ok"]
    assert list(res["explain_png"]) == ["explain_out_explain/row1_e-1.png", "", "explain_out_explain/row3_e_2_x.png"]
    for rel in res.loc[res["status"] == "ok", "explain_png"]:
        assert (out.parent / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp / "explain_out_explain").iterdir()) == ["row1_e-1.png", "row3_e_2_x.png"]

    # Resume keeps ok rows whose PNG exists; a row whose PNG is gone is scored (and drawn) again.
    again = score_csv(csv, env["scans"], out, client, params.prepare, params.serve, progress=False, explain=True)
    assert again.n_resumed == 2 and again.n_sent == 0
    (out.parent / res.loc[2, "explain_png"]).unlink()
    third = score_csv(csv, env["scans"], out, client, params.prepare, params.serve, progress=False, explain=True)
    assert third.n_resumed == 1 and third.n_sent == 1
    run_cells = ["request_id", "scored_at"]
    assert (
        pd.read_csv(out, dtype=str, keep_default_na=False).drop(columns=run_cells).equals(res.drop(columns=run_cells))
    )

    # A missing map makes an error row (score kept, no PNG); no row is lost.
    def drop_second_cam(patches: np.ndarray) -> list[dict]:
        answers = client.explain(patches)
        answers[-1].pop("cam")
        return answers

    lossy = tmp / "explain_lossy.csv"
    s = score_csv(
        csv,
        env["scans"],
        lossy,
        client,
        params.prepare,
        params.serve,
        progress=False,
        explain=True,
        explain_predict=drop_second_cam,
    )
    got = pd.read_csv(lossy, dtype=str, keep_default_na=False)
    assert s.n_rows == 3 and s.n_ok == 1 and s.n_error == 2
    assert list(got["status"]) == ["ok", "error", "error"]
    assert "no explanation overlay" in got.loc[2, "error"] and "CAM" in got.loc[2, "error"]
    assert got.loc[2, "probability"] != "" and got.loc[2, "explain_png"] == ""


def test_score_folder_moves_inputs_and_writes_outbox(env) -> None:
    import yaml

    from flows.score import process_inbox, score_file
    from naslung.params import to_dict

    tmp = env["tmp"]
    pfile = tmp / "flow_params.yaml"
    pfile.write_text(yaml.safe_dump(to_dict(env["params"])))
    inbox, outbox = tmp / "inbox", tmp / "outbox"
    inbox.mkdir()
    _write_csv(inbox / "a.csv", [{"seriesuid": SYNTH_UID, "coordX": 3.0, "coordY": 1.0, "coordZ": 2.0}])
    (inbox / "b.csv").write_bytes(b"")
    out = process_inbox(str(pfile), inbox, outbox, env["scans"], runner=score_file)
    assert [o["ok"] for o in out] == [1, 0] and out[1]["file_error"]
    manifest = json.loads((outbox / "a.results.manifest.json").read_text())  # beside the results, in the outbox
    assert manifest["counts"]["ok"] == 1 and manifest["mlflow"]["run_id"] == out[0]["mlflow_run_id"]
    assert (outbox / "a.results.drift.png").is_file() and out[0]["manifest"] == str(outbox / "a.results.manifest.json")
    assert pd.read_csv(outbox / "a.results.csv").loc[0, "status"] == "ok"
    assert "0 bytes" in (outbox / "b.error.txt").read_text()
    assert (inbox / "done" / "a.csv").exists() and (inbox / "failed" / "b.csv").exists()
    assert not list(inbox.glob("*.csv"))
    # with explain, the overlays land beside the results in the outbox and the CSV names them
    _write_csv(inbox / "c.csv", [{"seriesuid": SYNTH_UID, "coordX": 3.0, "coordY": 1.0, "coordZ": 2.0}])
    assert [
        o["ok"] for o in process_inbox(str(pfile), inbox, outbox, env["scans"], runner=score_file, explain=True)
    ] == [1]
    res = pd.read_csv(outbox / "c.results.csv")
    assert res.loc[0, "status"] == "ok" and (outbox / res.loc[0, "explain_png"]).read_bytes()[:4] == b"\x89PNG"
