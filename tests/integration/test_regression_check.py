"""Stored-output regression check of the champion (real MLflow SQLite store, real registry, real patches).

Ensembles: three tiny seeded nets whose linear heads are a logistic regression on the training folds'
features (validation AUC ~0.9 on the tiny store; gated with ``registry.baseline_margin`` -0.1 as in
test_registry.py, since voxel statistics separate the toy classes perfectly). The regression set is the 82 real
LIDC patches of ``../shared`` (skipped when the machine has no ``../shared``), read in place. The sequence:
first registration = baseline candidate, promoted; the identical model re-registered passes (|dp| = 0); a
model with a shifted head (scores moved ~0.02) fails the check and the gate refuses it; ``naslung promote
--rebaseline`` lets it through and records who / when / why; ``naslung register --rebaseline`` does the same
at registration; a missing patch file is a recorded skip, not a crash.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from builders import make_project
from mlflow import MlflowClient

from naslung import registry
from naslung.cli import main as cli_main
from naslung.ensemble.evaluation import evaluate_ensemble
from naslung.ensemble.training import data_version, member_specs, score_member, write_index
from naslung.params import Params, load_params
from naslung.registry import regression

REPO = Path(__file__).resolve().parents[2]
PATCHES = (REPO / Params().registry.regression_patches).resolve()


def _fitted_member(params: Params, spec, fold: int, seed: int, shift: float) -> torch.nn.Module:
    """A seeded untrained net with a logistic-regression head on its training-fold features; ``shift`` is
    added to the malignant-minus-benign logit (moves every probability, keeps the ranking)."""
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
    b = float(lr.intercept_[0] - (w * mu).sum()) + shift
    with torch.no_grad():
        wt = torch.tensor(w, dtype=torch.float32)
        model.head.weight.copy_(torch.stack([-wt / 2, wt / 2]))
        model.head.bias.copy_(torch.tensor([-b / 2, b / 2]))
    return model


def _build(params: Params, out: Path, shift: float = 0.0) -> Params:
    params = params.replace(ensemble=replace(params.ensemble, out_dir=str(out)))
    specs = member_specs(params)
    data = data_version(params.paths.artifacts)
    recs = [
        score_member(params, s, f, data["hash"], _fitted_member(params, s, f, i, shift))
        for f in params.ensemble.folds
        for i, s in enumerate(specs)
    ]
    write_index(params, specs, recs, data)
    evaluate_ensemble(params)
    return params


def _record(client: MlflowClient, mv, tmp: Path) -> dict:
    path = mv.tags["naslung.gate.record"]
    return json.loads(Path(client.download_artifacts(mv.run_id, path, str(tmp))).read_text())


@pytest.mark.skipif(not PATCHES.is_file(), reason=f"no regression patch file at {PATCHES}")
def test_stored_scores_regression_check_gates_and_rebaselines(tmp_path: Path) -> None:
    name = f"naslung-regression-{uuid.uuid4().hex[:6]}"
    params_path = make_project(
        tmp_path,
        folds=[1],
        registry_name=name,
        extra={"registry": {"baseline_margin": -0.1, "regression_patches": str(PATCHES)}},
    )
    base = load_params(params_path)
    from naslung.validation import validate

    assert validate(base)["success"]
    client = MlflowClient(base.mlflow_uri, base.mlflow_uri)

    # 1. first registration: no champion, the version's scores are the baseline candidate
    p1 = _build(base, tmp_path / "ens-a")
    v1 = registry.register(p1)
    assert v1.regression["status"] == "baseline" and "baseline candidate" in v1.regression["reason"]
    mv1 = client.get_model_version(name, v1.version)
    assert mv1.tags["naslung.regression.status"] == "baseline"
    stored = json.loads(Path(client.download_artifacts(v1.run_id, regression.SCORES_FILE, str(tmp_path))).read_text())
    assert stored["patches"]["n"] == 82 and stored["patches"]["subset"] == "all rows 0-81"
    assert stored["patches"]["kinds"] == {"lidc_nodule": 6, "luna16_excluded_finding": 76}
    assert stored["patches"]["hu_window"] == list(base.prepare.hu_window)
    assert len(stored["scores"]["probability"]) == len(stored["scores"]["raw_probability"]) == 82
    card = Path(client.download_artifacts(v1.run_id, "model_card.md", str(tmp_path / "c1"))).read_text()
    assert "## Regression check (stored outputs): baseline" in card and "--rebaseline WHY" in card
    d1 = registry.promote(p1)
    assert d1.promoted and "regression check baseline" in d1.reason
    assert json.loads(client.get_registered_model(name).tags["naslung.regression.baseline"])["version"] == v1.version

    # 2. the identical model registered again: passes (the scores did not move)
    v2 = registry.register(p1)
    assert v2.regression["status"] == "passed" and v2.regression["baseline_version"] == v1.version
    assert v2.regression["max_abs_delta"] == pytest.approx(0.0, abs=1e-6)
    d2 = registry.promote(p1)
    assert d2.promoted and "regression max |dp| vs champion v1" in d2.reason

    # 3. perturbed weights (head logit shifted): the scores move beyond the tolerance, the gate refuses
    p3 = _build(base, tmp_path / "ens-b", shift=0.15)
    v3 = registry.register(p3)
    assert v3.regression["status"] == "failed" and v3.regression["baseline_version"] == v2.version
    assert v3.regression["max_abs_delta"] > base.registry.regression_tolerance
    assert client.get_model_version(name, v3.version).tags["naslung.regression.status"] == "failed"
    d3 = registry.promote(p3)
    failed = [c.name for c in d3.checks + d3.regression_checks if not c.passed]
    assert not d3.promoted and failed == [
        f"regression max |dp| vs champion v{v2.version}",
        f"regression mean |dp| vs champion v{v2.version}",
    ]
    assert registry.aliases(p3)["champion"] == v2.version
    rec3 = _record(client, client.get_model_version(name, v3.version), tmp_path / "r3")
    assert rec3["verdict"] == "refused" and rec3["challenger"]["regression"]["status"] == "failed"
    assert "regression/scores.json" in rec3["regression_rule"]

    # 4. `naslung promote --rebaseline WHY`: accepted, recorded (who / when / why), its scores are the baseline
    d4 = registry.promote(p3, v3.version, rebaseline="head bias shifted on purpose")
    assert d4.promoted and "re-baselined by" in d4.reason and "head bias shifted on purpose" in d4.reason
    mv3 = client.get_model_version(name, v3.version)
    assert mv3.tags["naslung.regression.status"] == "rebaselined"
    rec4 = _record(client, mv3, tmp_path / "r4")
    grant = rec4["challenger"]["regression"]["rebaseline"]
    assert grant["why"] == "head bias shifted on purpose" and grant["who"] and grant["when"]
    assert grant["baseline_version"] == v2.version
    assert json.loads(client.get_registered_model(name).tags["naslung.regression.baseline"])["version"] == v3.version

    # 5. `naslung register --rebaseline WHY --promote` (the CLI): granted at registration against v3, promoted
    p5 = _build(base, tmp_path / "ens-c", shift=-0.15)
    out = tmp_path / "registration.json"
    argv = ["--params", str(params_path), "--set", f"ensemble.out_dir={p5.ensemble.out_dir}"]
    argv += ["register", "--rebaseline", "new calibration", "--promote"]
    assert cli_main([*argv, "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["regression"]["status"] == "rebaselined" and written["regression"]["baseline_version"] == v3.version
    assert written["regression"]["rebaseline"]["why"] == "new calibration"
    assert written["gate"]["promoted"] and "re-baselined by" in written["gate"]["reason"]


def test_a_missing_patch_file_is_recorded_as_skipped(tmp_path: Path) -> None:
    name = f"naslung-regression-skip-{uuid.uuid4().hex[:6]}"
    missing = tmp_path / "no-such-dir" / "patches.npz"
    params_path = make_project(
        tmp_path,
        folds=[1],
        registry_name=name,
        extra={"registry": {"baseline_margin": -0.1, "regression_patches": str(missing)}},
    )
    base = load_params(params_path)
    from naslung.validation import validate

    assert validate(base)["success"]
    params = _build(base, tmp_path / "ens")
    reg = registry.register(params)
    assert reg.regression["status"] == "skipped" and reg.regression["reason"].startswith("skipped: file not found")
    mv = MlflowClient(base.mlflow_uri, base.mlflow_uri).get_model_version(name, reg.version)
    assert mv.tags["naslung.regression.status"] == "skipped" and "naslung.regression.scores" not in mv.tags
    d = registry.promote(params)  # the check is skipped, not refused: the other checks decide
    assert d.promoted and "skipped: file not found" in d.reason
    assert d.regression_checks == () and not any(c.name.startswith("regression") for c in d.checks)
