"""MLflow record of a training run, read back through the MLflow client.

The same logging runs against an embedded SQLite store and against a real ``mlflow server`` on
127.0.0.1 (free port, one worker, job execution off).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from builders import MODEL1, open_store, write_tiny_store

from naslung.params import LatencyParams, Params, TrainParams

REPO = Path(__file__).resolve().parents[2]


def _params(tmp: Path) -> Params:
    p = Params()
    return p.replace(
        train=TrainParams(epochs=2, batch_size=8, lr=1e-3, patience=5, num_threads=1, device="cpu"),
        latency=LatencyParams(batch_sizes=(1, 4), warmup=1, repeats=3),
        paths=type(p.paths)(artifacts=str(tmp / "store"), mlflow_artifacts=str(tmp / "mlartifacts")),
    )


def _git_head() -> str | None:
    if shutil.which("git") is None:
        return None
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    return out.stdout.strip() or None if out.returncode == 0 else None


def _train_and_check(tmp: Path) -> None:
    import mlflow

    from naslung import tracking
    from naslung.train.run import resolve_spec, run_training

    store_dir = write_tiny_store(tmp / "store")
    params = _params(tmp)
    spec = resolve_spec(MODEL1, head="asoftmax", cbam=True)
    out = run_training(params, spec, fold=1, progress=False, tracker=tracking)
    assert out.run_id is not None

    client = mlflow.MlflowClient()
    run = client.get_run(out.run_id)
    # MLflow 3's UI shows the experiment in its model-training views, not the GenAI traces view.
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["spec_id"] == spec.spec_id and p["fold"] == "1" and p["loss"] == "asoftmax" and p["cbam"] == "True"
    assert p["val_folds"] == str(list(out.split.val_folds)) and "1" not in p["train_folds"].strip("[]").split(", ")
    m = run.data.metrics
    for key in (
        "test_accuracy",
        "test_sensitivity",
        "test_specificity",
        "test_f1",
        "test_tp",
        "n_params",
        "flops",
        "latency_ms_b1",
        "latency_ms_b4",
        "best_epoch",
    ):
        assert key in m, key
    assert m["n_params"] == out.n_params > 0 and m["flops"] == out.flops > 0
    assert m["test_f1"] == pytest.approx(out.test.metrics["f1"])
    history = client.get_metric_history(out.run_id, "val_loss")
    assert sorted(h.step for h in history) == [1, 2]
    assert [h.value for h in sorted(history, key=lambda h: h.step)] == pytest.approx(
        [r["val_loss"] for r in out.fit.history]
    )
    assert len(client.get_metric_history(out.run_id, "train_loss")) == 2

    names = {a.path for a in client.list_artifacts(out.run_id)}
    assert {"spec.json", "history.json", "latency.json", "test_predictions.csv", "plots"} <= names
    plots = {a.path for a in client.list_artifacts(out.run_id, "plots")}
    assert {"plots/roc.png", "plots/confusion.png", "plots/curves.png"} <= plots
    assert mlflow.artifacts.load_dict(f"runs:/{out.run_id}/spec.json") == spec.to_dict()

    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    assert ds.name == "patch-manifest"
    assert ds.digest == hashlib.md5((store_dir / "manifest.csv").read_bytes()).hexdigest()
    assert str((store_dir / "manifest.csv").resolve()) in ds.source

    head = _git_head()
    if head:
        assert run.data.tags["mlflow.source.git.commit"] == head

    from naslung import tracking

    model_uri = tracking.run_summary(out.run_id)["model_uri"]
    loaded = mlflow.pyfunc.load_model(model_uri)
    sig = loaded.metadata.signature
    assert list(sig.inputs.inputs[0].shape) == [-1, 1, 32, 32, 32]
    X, _, _ = open_store(store_dir).arrays([1])
    prob = loaded.predict(X.astype(np.float32))
    assert prob.shape == (len(X),)
    np.testing.assert_allclose(prob, out.test.prob, rtol=1e-4, atol=1e-5)  # same weights as the run's test
    assert loaded.predict(X[:3].astype(np.float32)).shape == (3,)

    # `naslung evaluate-run --fold`: reporting on folds the run never fitted; its own folds are refused
    import argparse

    import yaml

    from naslung.commands.train import _evaluate
    from naslung.params import to_dict

    pfile = tmp / "params.yaml"
    pfile.write_text(yaml.safe_dump(to_dict(params)))
    ns = argparse.Namespace(params=str(pfile), run_id=out.run_id, artifacts=str(store_dir))
    assert _evaluate(argparse.Namespace(**vars(ns), fold=1)) == 0
    with pytest.raises(SystemExit, match="training/validation data"):
        _evaluate(argparse.Namespace(**vars(ns), fold=out.split.val_folds[0]))


def test_training_run_is_recorded_in_sqlite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    _train_and_check(tmp_path)
    assert (tmp_path / "mlartifacts" / "naslung-train").is_dir()  # artifacts not in ./mlruns


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    exe = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(exe),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "server.log", "wb"),  # noqa: SIM115 - the server outlives this call
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def test_training_run_is_recorded_on_an_mlflow_server(
    tmp_path: Path, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    _train_and_check(tmp_path)
    assert any((tmp_path / "server-artifacts").rglob("spec.json"))  # artifacts went through the server


def test_mlflow_ui_stops_with_its_server_on_sigterm(tmp_path: Path) -> None:
    """`naslung mlflow-ui` becomes the MLflow server: SIGTERM to it leaves no server process behind."""
    import signal

    import mlflow

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'ui.db'}"}
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp_id = client.create_experiment("naslung-search")
    parent = client.create_run(exp_id, run_name="search").info.run_id
    child = client.create_run(exp_id, tags={"mlflow.parentRunId": parent}, run_name="cand").info.run_id
    exe = Path(sys.executable).parent / "naslung"
    out = open(tmp_path / "ui.out", "wb")  # noqa: SIM115 - the server writes to it until it stops
    proc = subprocess.Popen(
        [str(exe), "--params", str(REPO / "params.yaml"), "mlflow-ui", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=out,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "mlflow-ui exited before it answered"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "MLflow UI did not answer /health"
            time.sleep(0.5)
        printed = (tmp_path / "ui.out").read_text()
        assert f"/#/experiments/{exp_id}?workflowType=machine_learning" in printed, printed
        assert "/#/models/naslung-ensemble?workflowType=machine_learning" in printed, printed
        assert f"/#/experiments/{exp_id}/runs/{parent}" in printed and child not in printed, printed
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while True:  # every process of the group (server and its workers) is gone
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, "MLflow server processes left running after SIGTERM"
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_null_tracker_records_nothing_and_config_flattens_to_section_keys() -> None:
    from naslung.params import to_dict
    from naslung.tracker import NullTracker, flat_config

    flat = flat_config(to_dict(Params()))
    assert flat["train.lr"] == Params().train.lr and flat["seed"] == Params().seed
    assert flat["search.widths"] == list(Params().search.widths) and not any(isinstance(v, dict) for v in flat.values())
    t = NullTracker()
    with t.training_run("run", {"a": 1}, parent_run_id="p") as run_id:
        t.log_metrics({"x": 1.0}, step=3)
    assert run_id is None and t.open_parent("e", "r", {"k": "v"}, {}) == (None, False)
    assert t.children(None) == [] and t.load_dict(None, "x.json") is None
