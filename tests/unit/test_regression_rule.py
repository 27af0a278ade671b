"""The stored-output regression rule without a registry: :func:`naslung.registry.regression.check` on score
records, rule 8 of the gate (:func:`naslung.gate.decide` with a :class:`~naslung.gate.RegressionCheck`) and
the patch set's loading (null setting, missing file, malformed file, the real 82 patches)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from naslung.gate import DataRef, GateSettings, RegressionCheck, VersionFigures, decide, validation_figures
from naslung.params import Params
from naslung.registry import regression

REPO = Path(__file__).resolve().parents[2]
PARAMS = Params()
TOL, MEAN_TOL = PARAMS.registry.regression_tolerance, PARAMS.registry.regression_mean_tolerance


def record(p: np.ndarray, sha: str = "a" * 64) -> dict:
    return {
        "format": regression.FORMAT,
        "patches": {"path": "set.npz", "sha256": sha, "n": int(p.size)},
        "scores": {"probability": p.tolist(), "raw_probability": (p * 0.9).tolist()},
    }


P = np.linspace(0.05, 0.95, 20)


def test_check_outcomes() -> None:
    base = record(P)
    assert regression.check(PARAMS, record(P), "", None, None).status == "baseline"
    same = regression.check(PARAMS, record(P), "", base, "3")
    assert same.status == "passed" and same.max_abs_delta == 0.0 and same.baseline_version == "3"
    small = P.copy()
    small[4] += TOL * 0.9  # one patch moves by less than the tolerance, the mean stays below its own
    assert regression.check(PARAMS, record(small), "", base, "3").status == "passed"
    moved = P.copy()
    moved[7] += TOL * 1.5
    r = regression.check(PARAMS, record(moved), "", base, "3")
    assert r.status == "failed" and r.deltas["probability"]["worst_index"] == 7
    assert r.max_abs_delta == pytest.approx(TOL * 1.5) and "--rebaseline" in r.reason
    drift = P + MEAN_TOL * 1.5  # every patch a little: max within, mean beyond
    assert TOL > MEAN_TOL * 1.5 and regression.check(PARAMS, record(drift), "", base, "3").status == "failed"
    # skips: nothing to score, a champion without scores, another patch set
    assert (
        regression.check(PARAMS, None, "skipped: file not found: x", base, "3").reason == "skipped: file not found: x"
    )
    assert "has no stored regression scores" in regression.check(PARAMS, record(P), "", None, "3").reason
    other = regression.check(PARAMS, record(P, sha="b" * 64), "", base, "3")
    assert other.status == "skipped" and "another patch set" in other.reason
    # a re-baseline holds against the champion it was granted against, not another one
    grant = regression.rebaseline_record("retrained", "3")
    assert grant["why"] == "retrained" and grant["who"] and grant["when"]
    assert regression.check(PARAMS, record(moved), "", base, "3", grant).status == "rebaselined"
    assert regression.check(PARAMS, record(moved), "", base, "4", grant).status == "failed"
    with pytest.raises(ValueError, match="needs a reason"):
        regression.rebaseline_record("  ", "3")


def test_regression_check_round_trip_and_status() -> None:
    r = regression.check(PARAMS, record(P + 0.01), "", record(P), "3")
    assert RegressionCheck.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    with pytest.raises(ValueError, match="status 'odd'"):
        RegressionCheck("odd", "", "", 0.1, 0.1)


Y = np.array([0, 1] * 20)
DATA = DataRef("validation", (2, 3), Y.size, int(Y.sum()), "rows")
GOOD = np.clip(Y * 0.6 + np.random.default_rng(0).uniform(0, 0.4, Y.size), 0, 1)
SETTINGS = GateSettings(0.02, baseline_margin=-1.0)


def figures(version: str, reg: RegressionCheck | None) -> VersionFigures:
    val = validation_figures(Y, GOOD, (GOOD >= 0.5).astype(int), DATA, {"diameter": (Y, Y), "voxel_stats": (Y, Y)})
    return VersionFigures("m", version, "passed", "ok", val, "d", regression=reg)


def test_gate_rule_8() -> None:
    champion = figures("1", None)
    assert decide(figures("2", None), champion, SETTINGS).promoted  # no regression check: rules 1-7 only
    failed = regression.check(PARAMS, record(P + 0.1), "", record(P), "1")
    d = decide(figures("2", failed), champion, SETTINGS)
    assert not d.promoted and d.reason.startswith("failed: regression max |dp| vs champion v1 0.1000 not <= 0.0050")
    passed = regression.check(PARAMS, record(P), "", record(P), "1")
    d = decide(figures("2", passed), champion, SETTINGS)
    assert d.promoted and [c.name for c in d.regression_checks] == [
        "regression max |dp| vs champion v1",
        "regression mean |dp| vs champion v1",
    ]
    assert not any(c.name.startswith("regression") for c in d.checks)  # rules 4-7: validation rows only
    grant = regression.rebaseline_record("new data", "1")
    rebased = regression.check(PARAMS, record(P + 0.1), "", record(P), "1", grant)
    d = decide(figures("2", rebased), champion, SETTINGS)
    assert d.promoted and "re-baselined by" in d.reason and "new data" in d.reason
    skipped = regression.check(PARAMS, None, "skipped: file not found: x.npz", None, None)
    d = decide(figures("2", skipped), champion, SETTINGS)
    assert d.promoted and "skipped: file not found: x.npz" in d.reason
    d = decide(figures("2", replace(passed, baseline_version="7")), champion, SETTINGS)  # made against another champion
    assert not d.promoted and "not the current champion v1" in d.reason
    record_json = json.loads(json.dumps(d.as_dict()))
    assert any(c["op"] == "<=" for c in record_json["regression_checks"])


def test_load_patch_set(tmp_path: Path) -> None:
    off = replace(PARAMS, registry=replace(PARAMS.registry, regression_patches=None))
    assert regression.load_patch_set(off) == (
        None,
        "skipped: registry.regression_patches is null (regression check off)",
    )
    gone = replace(PARAMS, registry=replace(PARAMS.registry, regression_patches=str(tmp_path / "x.npz")))
    ps, why = regression.load_patch_set(gone)
    assert ps is None and why.startswith(f"skipped: file not found: {tmp_path / 'x.npz'}")
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 16, 16, 16), np.int16))
    with pytest.raises(ValueError, match=r"bad.npz: 'images' has shape \(2, 16, 16, 16\)"):
        regression.load_patch_set(replace(PARAMS, registry=replace(PARAMS.registry, regression_patches=str(bad))))
    real = (REPO / PARAMS.registry.regression_patches).resolve()
    if not real.is_file():
        pytest.skip(f"no {real}")
    ps, why = regression.load_patch_set(
        replace(PARAMS, registry=replace(PARAMS.registry, regression_patches=str(real)))
    )
    assert why == "" and ps is not None and ps.n == 82 and ps.x.dtype == np.float32
    assert float(ps.x.min()) >= 0.0 and float(ps.x.max()) <= 1.0
    from naslung.data.patches import window_hu

    with np.load(real) as z:
        np.testing.assert_array_equal(ps.x, window_hu(z["images"], PARAMS.prepare.hu_window))
    assert ps.rows[0]["kind"] == "lidc_nodule" and len(ps.rows[0]["world_xyz"]) == 3
