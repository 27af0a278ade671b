"""The TorchServe handler's pieces without a server: payload decoding (float32 / uint8), map encoding, the
per-request explain flag, and the handler's settings read from the packaged model config (via TorchServe's own
model loader, no Java)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from builders import MAP_KEYS, tiny_ensemble

from naslung.params import load_params
from naslung.scoring import (
    PayloadError,
    decode_map,
    decode_payload,
    encode_map,
    encode_payload,
    quantise_uint8,
    score_requests,
)

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------ unit: payloads
def test_decode_payload_accepts_float_and_uint8_and_rejects_bad() -> None:
    x = np.random.default_rng(0).random((3, 32, 32, 32), dtype=np.float32)
    out = decode_payload(encode_payload(x), max_bytes=1 << 20)
    assert out.shape == (3, 1, 32, 32, 32) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], x)
    u = (x * 255).astype(np.uint8)
    np.testing.assert_allclose(decode_payload(encode_payload(u), 1 << 20)[:, 0], u / 255.0, atol=1e-7)
    nan = x.copy()
    nan[1, 2, 3, 4] = np.nan
    cases = {
        b"": 400,
        encode_payload(x)[:1000]: 400,
        b"not numpy at all": 400,
        encode_payload(x.astype(np.float64)): 422,
        encode_payload(x[:, :16]): 422,
        encode_payload(nan): 422,
        encode_payload(x * 2): 422,
        encode_payload(np.zeros((0, 32, 32, 32), np.float32)): 422,
        encode_payload(np.zeros((9, 32, 32, 32), np.float32)): 413,
    }
    for body, status in cases.items():
        with pytest.raises(PayloadError) as err:
            decode_payload(body, max_bytes=1 << 20)
        assert err.value.status == status and err.value.message


def test_map_encoding_round_trips_and_rejects_bad_text() -> None:
    m = np.random.default_rng(3).normal(size=(32, 32, 32)).astype(np.float32)
    text = encode_map(m)
    assert isinstance(text, str)
    back = decode_map(text)
    assert back.shape == (32, 32, 32) and back.dtype == np.float32
    np.testing.assert_allclose(back, m, rtol=1e-3, atol=1e-3)  # float16 on the wire
    assert np.isfinite(decode_map(encode_map(m * 1e6))).all()  # clipped to the float16 range, not inf
    for bad in ("not base64!", encode_map(m)[:100], 42):
        with pytest.raises(ValueError):
            decode_map(bad)
    with pytest.raises(ValueError):
        encode_map(m[:16])


def test_score_requests_explains_only_flagged_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    import naslung.explain.maps as maps

    rng = np.random.default_rng(4)
    a = rng.random((2, 32, 32, 32), dtype=np.float32)
    b = rng.random((3, 32, 32, 32), dtype=np.float32)
    big = (rng.random((9, 32, 32, 32)) * 255).astype(np.uint8)  # 288 KiB: fits 1 MiB, but > 8 explained patches
    seen: list[int] = []
    real = maps.explain

    def counting(models, X, *args, **kwargs):
        seen.append(len(X))
        return real(models, X, *args, **kwargs)

    monkeypatch.setattr(maps, "explain", counting)
    ens = tiny_ensemble(0)
    bodies = [
        encode_payload(a),
        encode_payload(b),
        b"garbage",
        encode_payload(a),
        encode_payload(big),
        encode_payload(big),
    ]
    plain = score_requests(ens, bodies, 1 << 20)
    assert seen == [] and all(MAP_KEYS.isdisjoint(r) for s, rs in plain if s == 200 for r in rs)
    predicted: list[int] = []
    real_predict = ens.predict
    monkeypatch.setattr(ens, "predict", lambda X: predicted.append(len(X)) or real_predict(X))
    mixed = score_requests(ens, bodies, 1 << 20, explain=[True, False, True, False, True, False])
    assert [s for s, _ in mixed] == [200, 200, 400, 200, 413, 200]
    assert "at most 8 patches" in mixed[4][1]["error"]
    assert seen == [2]  # only the flagged good request's patches went through the maps ...
    assert predicted == [3 + 2 + 9]  # ... and only the unflagged ones through the plain prediction: one pass each
    for k in (1, 3, 5):  # unflagged: the plain answer (batch composition may move the last float bits)
        assert [set(r) for r in mixed[k][1]] == [set(r) for r in plain[k][1]]
        assert [r["label"] for r in mixed[k][1]] == [r["label"] for r in plain[k][1]]
        assert [r["probability"] for r in mixed[k][1]] == pytest.approx(
            [r["probability"] for r in plain[k][1]], abs=1e-6
        )
    for got, want in zip(mixed[0][1], plain[0][1]):
        assert set(got) == set(want) | MAP_KEYS
        assert (got["label"], got["votes"]) == (want["label"], want["votes"])
        assert got["probability"] == pytest.approx(want["probability"], abs=1e-6)
        assert got["attention"] is None  # member 1 has no CBAM
        assert got["explain_target"] == got["label"]
        cam = decode_map(got["cam"])
        assert cam.shape == (32, 32, 32) and np.isfinite(cam).all() and cam.std() > 0
    with pytest.raises(ValueError):
        score_requests(ens, bodies, 1 << 20, explain=[True])

    # An all-CBAM ensemble also answers with the stage-2 attention, values in (0, 1).
    full = score_requests(tiny_ensemble(1, cbam=(True, True, True)), [encode_payload(b)], 1 << 20, explain=[True])
    att = np.stack([decode_map(r["attention"]) for r in full[0][1]])
    assert att.shape == (3, 32, 32, 32) and float(att.min()) >= 0.0 and float(att.max()) <= 1.0


def test_handler_takes_its_settings_from_the_packaged_model_config(tmp_path: Path, monkeypatch) -> None:
    """The handler loaded the way a TorchServe worker loads it (``ts.model_loader``), no server needed."""
    import zipfile

    import torch
    import yaml
    from ts.model_loader import TsModelLoader

    from naslung import torchserve as S

    base = load_params(REPO / "params.yaml")
    serve = replace(base.serve, torch_threads=3, max_payload_mb=0.5, device="cpu", batch_size=5, max_batch_delay_ms=7)
    tiny_ensemble(0).save(tmp_path / "ens")
    info = {"name": "naslung-test", "version": "7", "max_payload_mb": 16.0}
    mar = S.build_mar(tmp_path / "ens", info, tmp_path / "store", serve)
    assert json.loads((tmp_path / "store" / "naslung-test.json").read_text()) == info
    model_dir = tmp_path / "unpacked"
    with zipfile.ZipFile(mar) as z:
        z.extractall(model_dir)
    assert yaml.safe_load((model_dir / "model-config.yaml").read_text()) == {
        "minWorkers": serve.workers,
        "maxWorkers": serve.workers,
        "batchSize": 5,
        "maxBatchDelay": 7,
        "responseTimeout": serve.response_timeout_s,
        "startupTimeout": S.STARTUP_TIMEOUT_S,
        "handler": {
            "device": "cpu",
            "torch_threads": 3,
            "max_payload_mb": 0.5,
            "precision": serve.precision,
            "buckets": list(serve.buckets),
        },
    }
    monkeypatch.syspath_prepend(str(model_dir))
    threads = torch.get_num_threads()
    try:
        service = TsModelLoader().load("naslung-test", str(model_dir), "handler.py", batch_size=5)
        handler = service._entry_point.__self__
        assert service.context.model_yaml_config["handler"]["torch_threads"] == 3
        assert torch.get_num_threads() == 3 and str(handler.device) == "cpu"
        assert handler.max_bytes == 512 * 1024  # the model config's limit, not model_info's 16 MiB
        assert (handler.model_id.name, handler.model_id.version) == ("naslung-test", "7")
        assert handler.ensemble.member_names == ["m0", "m1", "m2"]
        assert handler.fused.precision == "fp32" and not handler.fused.compiled  # CPU: eager fp32
        _handler_answers_columnar_on_request(handler, service)
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop("handler", None)


def _handler_answers_columnar_on_request(handler, service) -> None:
    """One TorchServe batch through the loaded handler, built by TorchServe's own request decoding: a
    columnar request (header), a columnar request (query parameter), an old-style one, a bad one."""
    from ts.service import Service

    from naslung.scoring import COLUMNAR_HEADER, rows_from_answer

    rng = np.random.default_rng(5)
    x = rng.random((3, 32, 32, 32), dtype=np.float32)
    u = quantise_uint8(x)

    def request(rid: str, body: bytes, headers=(), params=()):
        parameters = [{"name": "body", "contentType": "application/octet-stream", "value": body}]
        parameters += [{"name": k, "contentType": "text/plain", "value": v} for k, v in params]
        return {
            "requestId": rid.encode(),
            "parameters": parameters,
            "headers": [{"name": k.encode(), "value": v.encode()} for k, v in headers],
        }

    batch = [
        request("a", encode_payload(u), headers=[(COLUMNAR_HEADER.lower(), "columnar")]),
        request("b", encode_payload(x[:2]), params=[("format", b"columnar")]),
        request("c", encode_payload(u)),
        request("d", b"junk", headers=[(COLUMNAR_HEADER, "columnar")]),
    ]
    headers, inputs, _ = Service.retrieve_data_for_inference(batch)
    context = service.context
    context.request_processor = headers
    out = handler.handle(inputs, context)
    assert all(isinstance(o, bytes) for o in out)
    a, b, c, d = (json.loads(o) for o in out)
    assert a["format"] == "columnar" and a["n"] == 3 and a["device"] == "cpu"
    assert b["format"] == "columnar" and b["n"] == 2
    assert isinstance(c, list) and len(c) == 3 and all(r["device"] == "cpu" for r in c)
    assert rows_from_answer(a) == c  # same patches (uint8 both): the two encodings carry the same values
    assert context.get_response_status(3)[0] == 400 and "error" in d
    assert [context.get_response_status(i)[0] for i in range(3)] == [200] * 3


# ------------------------------------------------------------------------------------ fixtures
