"""The search's candidate score (objective on pooled validation folds, with an interval, not chosen on the
scored nodules), the persisted latency cache and a resume that measures nothing again, the nine-member fill."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import make_project

from naslung.params import Params, load_params
from naslung.search.candidate import LatencyCache, fit_fixed_epochs, load_dev
from naslung.search.objective import objective_label, score_predictions
from naslung.search.pop_run import run_pop_search
from naslung.search.space import SearchSpace
from naslung.tracker import NullTracker


def test_constant_prediction_scores_chance_not_the_majority_rate() -> None:
    """27 benign of 34: "all benign" has accuracy 0.794, but AUC and balanced accuracy 0.5."""
    y = np.array([0] * 27 + [1] * 7)
    const = np.full(34, 0.1)
    for objective in ("auc", "balanced_accuracy"):
        sc = score_predictions(y, const, objective)
        assert sc.score == pytest.approx(0.5) and sc.accuracy == pytest.approx(27 / 34)
        assert sc.objective == objective and sc.n_val == 34 and sc.n_val_malignant == 7
    rng = np.random.default_rng(0)
    noisy = np.clip(y * 0.3 + rng.uniform(0, 0.7, 34), 0, 1)
    sc = score_predictions(y, noisy, "auc", seed=1)
    assert sc.score_low <= sc.score <= sc.score_high and sc.score_high - sc.score_low > 0.05
    assert score_predictions(y, noisy, "auc", seed=1) == sc  # seeded
    assert score_predictions(y, y.astype(float), "auc").score == 1.0
    with pytest.raises(ValueError, match="both classes"):
        score_predictions(np.zeros(5), np.zeros(5), "auc")
    with pytest.raises(ValueError, match="objective"):
        score_predictions(y, noisy, "accuracy")
    assert "AUC" in objective_label("auc") and "balanced accuracy" in objective_label("balanced_accuracy")


def test_latency_cache_keeps_detail_and_conditions(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    c = LatencyCache(path)
    cond = {"batch_size": 1, "threads": 2, "warmup": 5, "repeats": 30}
    c.put("m1-a", "cpu", "measured", 3.5, {"threads": 2, "iqr_over_median": 0.1}, cond)
    assert path.is_file()  # saved at once
    again = LatencyCache(path)
    assert again.get("m1-a", "cpu", "measured", cond) == 3.5
    assert again.detail("m1-a", "cpu", "measured", cond)["threads"] == 2
    assert again.get("m1-a", "cpu", "measured", {**cond, "threads": 1}) is None  # other threads: not reused
    assert again.get("m1-a", "cpu", "flops") is None
    old = tmp_path / "old.json"  # the older {key: value} layout still reads
    old.write_text(json.dumps({LatencyCache.key("m1-b", "cpu", "flops"): 7.0}))
    assert LatencyCache(old).get("m1-b", "cpu", "flops") == 7.0


def _params(tmp_path: Path, **search: object) -> Params:
    pfile = make_project(
        tmp_path,
        extra={
            "search": {
                "widths": [4, 8],
                "max_blocks": 4,
                "epochs": 2,
                "budget": 2,
                "patience": 50,
                "val_folds": 2,
                "k_select": 5,
                "latency_source": "flops",
                **search,
            },
            "model": {"cbam": False, "head": "linear"},
        },
    )
    return load_params(pfile)


def test_scored_weights_do_not_depend_on_the_validation_labels(tmp_path: Path) -> None:
    """Fixed epochs, no early stopping, nothing chosen on the validation nodules: flipping their labels
    leaves the trained weights unchanged (a best-on-validation checkpoint would follow the labels)."""
    params = _params(tmp_path)
    dev = load_dev(params.paths.artifacts, params.prepare.n_folds, params.search.fold, params.seed, 2)
    assert len(dev.split.val_folds) == 2
    spec = SearchSpace.from_params(params.search, cbam=False, head="linear").to_spec(((4,), (8,), (8,)))
    flipped = dataclasses.replace(dev, val=(dev.val[0], 1 - dev.val[1]))
    a, ck_a = fit_fixed_epochs(spec, dev, params, 3, "cpu")
    b, ck_b = fit_fixed_epochs(spec, flipped, params, 3, "cpu")
    assert ck_a == ck_b == "final"
    assert len(a.history) == 3  # train.patience is 1, yet all 3 epochs ran
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k


def test_pop_search_scores_fills_to_k_and_resumes_without_measuring(tmp_path: Path) -> None:
    params = _params(tmp_path)
    out = tmp_path / "search"
    run = run_pop_search(params, params.paths.artifacts, out, "t1", tracker=NullTracker(), progress=False)
    s = run.summary
    assert s["objective"] == "auc" and s["val_folds"] == 2 and s["n_val"] == 16
    assert s["latency_tolerance"] == 0.0 and s["latency_threads"] == 1  # flops: exact, no tolerance
    assert s["selected"] == 5 and s["selected_trained"] == 2 and s["selected_untrained"] == 3
    assert s["latency_measured_this_run"] == 2 + 3  # the trained and the filled ones
    front = json.loads((out / "front.json").read_text())
    selected = json.loads((out / "selected.json").read_text())
    assert front and len(selected) == 5
    for e in front + selected[:2]:
        assert e["trained"] is True and e["objective"] == "auc" and e["n_val"] == 16
        assert e["score_low"] <= e["score"] <= e["score_high"] and 0 <= e["accuracy"] <= 1
        assert e["checkpoint"] == "final"
    space = SearchSpace.from_params(params.search, cbam=False, head="linear")
    trained_ids = {e.info["spec_id"] for e in run.result.trained}
    front_ids = {e["spec_id"] for e in front}
    for e in selected[2:]:
        assert e["trained"] is False and e["score"] is None and e["neighbour_of"] in front_ids
        assert e["spec_id"] not in trained_ids and tuple(tuple(st) for st in e["stages"]) in space
        assert e["latency_detail"]["unit"] == "Mmac_per_nodule"  # how the fill member's latency was taken
    assert all(len(e.info["history"]) == 2 for e in run.result.trained)  # fixed search.epochs
    cache = json.loads((out / "latency_cache.json").read_text())
    assert len(cache) == 5 and all(v["detail"]["unit"] == "Mmac_per_nodule" for v in cache.values())
    assert (out / "pareto.png").stat().st_size > 1000

    again = run_pop_search(params, params.paths.artifacts, out, "t1", tracker=NullTracker(), progress=False)
    assert again.summary["latency_measured_this_run"] == 0  # every latency read back from the search folder
    assert json.loads((out / "front.json").read_text()) == front
    assert json.loads((out / "selected.json").read_text()) == selected


def test_measured_latency_uses_train_threads_and_a_resume_reuses_it(tmp_path: Path) -> None:
    params = _params(tmp_path, latency_source="measured", budget=2, k_select=2)
    torch.set_num_threads(2)  # the search must set train.num_threads (1) itself before timing
    out = tmp_path / "search"
    first = run_pop_search(params, params.paths.artifacts, out, "t2", tracker=NullTracker(), progress=False)
    assert first.summary["latency_tolerance"] == pytest.approx(params.search.latency_tolerance)
    assert first.summary["latency_measured_this_run"] >= 2
    cache = json.loads((out / "latency_cache.json").read_text())
    for key, v in cache.items():
        d = v["detail"]
        assert d["threads"] == 1 and d["batch_size"] == 2 and d["repeats"] == 1 and "load_1min_before" in d
        assert "|threads=1|" in key
    lat_first = {e.info["spec_id"]: e.latency for e in first.result.trained}
    again = run_pop_search(params, params.paths.artifacts, out, "t2", tracker=NullTracker(), progress=False)
    assert again.summary["latency_measured_this_run"] == 0
    assert {e.info["spec_id"]: e.latency for e in again.result.trained} == lat_first  # exact, not re-timed
