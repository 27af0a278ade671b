"""The fused ensemble forward on CPU (today's results, bucket padding, reduced-precision parity), the uint8
wire format and the columnar answer (encoding and the client's decoding)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import tiny_ensemble

from naslung.data.patches import window_hu
from naslung.ensemble.fused import (
    FusedEnsemble,
    bucket_plan,
    cpu_autocast_supported,
    parity,
    probe_patches,
)
from naslung.scoring import (
    decode_payload,
    encode_payload,
    quantise_uint8,
    rows_from_answer,
    score_requests,
)
from naslung.serving_client import ServingClient, ServingError, answers


@pytest.fixture(scope="module")
def real_patches(shared_data: Path) -> np.ndarray:
    """The 82 real LIDC patches (82, 32, 32, 32) float32 in [0, 1], HU window [-1200, 600]."""
    ref = np.load(shared_data / "LIDC-patches-derived" / "lidc_0001-0003_patches_32cube_1mm.npz")
    return window_hu(ref["images"].astype(np.float32), (-1200.0, 600.0)).astype(np.float32)


def test_cpu_fused_forward_gives_exactly_the_ensembles_prediction() -> None:
    ens = tiny_ensemble(0)
    X = probe_patches(7, seed=1)
    fused = FusedEnsemble.from_ensemble(ens)
    assert (fused.precision, fused.compiled, fused.pad, fused.channels_last) == ("fp32", False, False, False)
    want = ens.predict(X)
    got = fused.predict(X)
    np.testing.assert_array_equal(fused.member_probs(X), want.member_probs)
    for field in ("prob", "label", "votes", "member_probs"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    np.testing.assert_array_equal(fused.member_probs(torch.from_numpy(X[:, None])), want.member_probs)
    assert fused.module.members[0] is ens.members[0]  # CPU eager: the members themselves, not copies
    with pytest.raises(ValueError):
        fused.member_probs(np.zeros((0, 32, 32, 32), np.float32))
    with pytest.raises(ValueError):
        FusedEnsemble(ens.members, precision="int8")


def test_bucket_plan_covers_every_row_once() -> None:
    assert bucket_plan(11, (4, 8)) == [(0, 8, 8), (8, 11, 4)]
    assert bucket_plan(3, (1, 8, 32)) == [(0, 3, 8)]
    assert bucket_plan(70, (8, 32)) == [(0, 32, 32), (32, 64, 32), (64, 70, 8)]
    assert bucket_plan(5, ()) == [(0, 5, 5)]
    for n in (1, 9, 33, 100):
        plan = bucket_plan(n, (1, 8, 32))
        assert [a for a, _, _ in plan] == [0] + [b for _, b, _ in plan[:-1]] and plan[-1][1] == n
        assert all(size >= b - a and size in (1, 8, 32) for a, b, size in plan)


def test_bucket_padding_gives_the_unpadded_results() -> None:
    ens = tiny_ensemble(2)
    X = probe_patches(11, seed=2)
    plain = FusedEnsemble.from_ensemble(ens).member_probs(X)
    padded = FusedEnsemble.from_ensemble(ens, pad=True, buckets=(4, 8))  # chunks 8 + 3 padded to 4
    assert padded.pad and padded.buckets == (4, 8)
    got = padded.member_probs(X)
    assert got.shape == plain.shape == (11, 3)
    np.testing.assert_allclose(got, plain, rtol=0, atol=1e-6)
    last = FusedEnsemble.from_ensemble(ens, pad=True, buckets=(16,)).member_probs(X[-1:])  # 1 row in 16
    np.testing.assert_allclose(last, plain[-1:], rtol=0, atol=1e-6)


def test_parity_of_fp32_with_itself_is_zero_and_bf16_on_cpu_is_within_bound(real_patches: np.ndarray) -> None:
    ens = tiny_ensemble(3)
    same = parity(FusedEnsemble.from_ensemble(ens, precision="fp32"), real_patches)
    assert same.n_patches == 82 and same.max_abs_member == 0.0 and same.ok
    ok, reason = cpu_autocast_supported(torch.bfloat16)
    if not ok:
        pytest.skip(reason)
    bf16 = FusedEnsemble.from_ensemble(ens, precision="bf16")
    assert bf16.dtype is torch.bfloat16 and ens.members[0].training is False
    result = parity(bf16, real_patches[:24], members=ens.members)  # 24 of them: bf16 on CPU is slow
    assert 0.0 < result.max_abs_member <= 1e-3, result.describe()  # bf16 does differ, but within the bound
    assert result.max_abs_mean <= result.max_abs_member and result.ok


def test_uint8_wire_round_trip_and_its_effect_on_real_patches(real_patches: np.ndarray) -> None:
    u = quantise_uint8(real_patches)
    assert u.dtype == np.uint8 and u.nbytes == 82 * 32 * 1024  # 32 KiB a patch
    assert quantise_uint8(u) is u
    body = encode_payload(u)
    assert len(body) < len(encode_payload(real_patches)) / 3.9
    back = decode_payload(body, max_bytes=8 << 20)[:, 0]
    assert float(np.abs(back - real_patches).max()) <= 0.5 / 255 + 1e-7  # rounding: at most half a step
    ens = tiny_ensemble(4)
    dp = np.abs(ens.predict(back).member_probs - ens.predict(real_patches).member_probs).max()
    assert float(dp) <= 1e-3


def test_columnar_answer_carries_the_per_patch_values() -> None:
    ens = tiny_ensemble(5)
    rng = np.random.default_rng(6)
    a = quantise_uint8(rng.random((4, 32, 32, 32), dtype=np.float32))
    b = rng.random((2, 32, 32, 32), dtype=np.float32)
    bodies = [encode_payload(a), encode_payload(b), b"junk", encode_payload(a)]
    fused = FusedEnsemble.from_ensemble(ens)
    out = score_requests(ens, bodies, 1 << 20, columnar=[True, True, True, False], predict=fused.predict, device="cpu")
    assert [s for s, _ in out] == [200, 200, 400, 200]
    col, col_b, err, rows = (r for _, r in out)
    assert col["format"] == "columnar" and col["n"] == 4 and col["device"] == "cpu"
    assert set(col) >= {"probability", "label", "votes", "member_probs", "model_name", "model_version"}
    assert len(col["member_probs"]) == 4 and len(col["member_probs"][0]) == 3
    assert isinstance(rows, list) and rows_from_answer(col) == rows  # same patches, same values
    assert rows_from_answer(json.loads(json.dumps(col))) == json.loads(json.dumps(rows))
    assert err["status"] == 400
    # the client reads both encodings, and rejects a columnar answer whose arrays disagree
    assert answers((200, json.dumps(col)), 4) == answers((200, json.dumps(rows)), 4)
    assert len(answers((200, json.dumps(col_b)), 2)) == 2
    broken = {**col, "label": col["label"][:2]}
    with pytest.raises(ServingError):
        answers((200, json.dumps(broken)), 4)
    with pytest.raises(ServingError):
        answers((200, json.dumps(col)), 3)


def test_optional_prediction_fields_reach_both_encodings() -> None:
    """Fields a calibrated ensemble adds (raw_prob, uncertainty, refer) are passed through when present."""
    from dataclasses import dataclass

    from naslung.ensemble.model import EnsemblePrediction

    @dataclass
    class Calibrated:
        base: EnsemblePrediction

        def __getattr__(self, name: str):
            return getattr(self.base, name)

        @property
        def raw_prob(self):
            return self.base.prob

        @property
        def uncertainty(self):
            return self.base.member_probs.std(axis=1)

        @property
        def refer(self):
            return self.base.member_probs.std(axis=1) > 0.01

    ens = tiny_ensemble(6)
    X = probe_patches(3, seed=3)
    out = score_requests(
        ens, [encode_payload(X)] * 2, 1 << 20, columnar=[True, False], predict=lambda x: Calibrated(ens.predict(x))
    )
    col, rows = out[0][1], out[1][1]
    assert {"raw_probability", "uncertainty", "refer"} <= set(col) and {"raw_probability", "refer"} <= set(rows[0])
    assert all(isinstance(r["refer"], bool) for r in rows) and rows_from_answer(col) == rows


def test_client_body_follows_its_wire_format() -> None:
    x = np.random.default_rng(7).random((2, 32, 32, 32), dtype=np.float32)
    lean = ServingClient("http://127.0.0.1:9", "m", None, wire="uint8")
    full = ServingClient("http://127.0.0.1:9", "m", None, wire="float32")
    try:
        assert decode_payload(lean.body(x), 1 << 20).shape == (2, 1, 32, 32, 32)
        assert len(lean.body(x)) < len(full.body(x)) / 3.9
        np.testing.assert_array_equal(decode_payload(full.body(x), 1 << 20)[:, 0], x)
    finally:
        lean.close()
        full.close()
    with pytest.raises(ValueError):
        ServingClient("http://127.0.0.1:9", "m", None, wire="float16")
