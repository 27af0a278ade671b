"""The `search` Prefect flow for real: a killed search resumes from MLflow; a Dask run trains in parallel.

Tiny synthetic patch store (32 nodules, 4 folds, both classes in each), widths {4, 8}, at most 4 blocks
(19 architectures), 1 epoch per candidate, scored by AUC on 2 pooled validation folds, latency_source=flops
(a deterministic latency, so fronts can be compared exactly; no timed asserts).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from naslung.params import load_params

REPO = Path(__file__).resolve().parents[2]


def _write_store(root: Path, n_per_fold: int = 8, n_folds: int = 4) -> None:
    from naslung.data.prepare import MANIFEST_COLUMNS, MANIFEST_FILE, PATCHES_FILE

    rng = np.random.default_rng(0)
    n = n_per_fold * n_folds
    labels = np.array([i % 2 for i in range(n)])
    zz, yy, xx = np.mgrid[:32, :32, :32]
    patches = rng.uniform(0.0, 0.2, size=(n, 32, 32, 32)).astype(np.float32)
    for i, lab in enumerate(labels):  # malignant: a bigger, brighter blob
        r = 8 if lab else 4
        patches[i][(zz - 16) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2 < r * r] += 0.6 if lab else 0.3
    rows = [
        {
            "nodule_id": f"n{i}",
            "seriesuid": f"s{i // 2}",
            "coordX": 0.0,
            "coordY": 0.0,
            "coordZ": 0.0,
            "diameter_mm": 8.0,
            "reader_scores": "4;4" if labels[i] else "1;2",
            "mean_score": 4.0 if labels[i] else 1.5,
            "label": int(labels[i]),
            "fold": (i // 2) % n_folds,  # a patient's pair of nodules in one fold; both classes per fold
            "scan_path": "synthetic",
            "patch_index": i,
        }
        for i in range(n)
    ]
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(root / MANIFEST_FILE, index=False)
    np.save(root / PATCHES_FILE, patches)


def _params_file(tmp: Path, experiment: str, **search: object) -> Path:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["prepare"]["n_folds"] = 4
    data["train"].update({"batch_size": 8, "num_threads": 1, "device": "cpu", "patience": 5})
    data["search"].update(
        {
            "widths": [4, 8],
            "stem": [4, 4],
            "max_blocks": 4,
            "epochs": 1,
            "budget": 4,
            "patience": 50,
            "batch_size": 1,
            "runner": "local",
            "latency_source": "flops",
            "fold": 1,
            "val_folds": 2,
            "k_select": 3,
            "experiment": experiment,
        }
    )
    data["search"].update(search)
    path = tmp / f"params-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    _write_store(root)
    return root


def _parent(experiment: str, search_id: str) -> str | None:
    from naslung import tracking
    from naslung.search.runs import ROLE_TAG, SEARCH_ID_TAG

    return tracking.find_run(experiment, {SEARCH_ID_TAG: search_id, ROLE_TAG: "search"})


def _children(experiment: str, search_id: str, status: str | None = "FINISHED") -> list:
    from naslung import tracking

    parent = _parent(experiment, search_id)
    return tracking.children(parent, status) if parent else []


def _front(out: Path) -> list[tuple[str, float, float]]:
    return [
        (e["spec_id"], e["score"], e["score_low"], e["score_high"], e["latency"])
        for e in json.loads((out / "front.json").read_text())
    ]


@pytest.mark.slow
def test_killed_search_resumes_without_retraining(tmp_path: Path, store: Path, harness: None) -> None:
    from flows.search import run_search

    experiment = f"search-test-{uuid.uuid4().hex[:6]}"
    pfile = _params_file(tmp_path, experiment)
    params = load_params(pfile)
    sid = "resume-" + uuid.uuid4().hex[:6]
    out_a = tmp_path / "a"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "naslung.cli",
        "--params",
        str(pfile),
        "search",
        "--search-id",
        sid,
        "--artifacts",
        str(store),
        "--out-dir",
        str(out_a),
    ]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while len(_children(experiment, sid)) < 2:
            assert proc.poll() is None, (
                f"search ended before it could be killed:\n{proc.stdout.read().decode()[-3000:]}"
            )
            assert time.monotonic() < deadline, "search did not finish 2 candidates in time"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole process group this test started
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = {r.run_id: r.params["spec_id"] for r in _children(experiment, sid)}
    assert 2 <= len(before) < params.search.budget
    assert not (out_a / "front.json").exists()

    summary = run_search(params, sid, str(store), str(out_a), progress=False)
    after = _children(experiment, sid)
    spec_ids = [r.params["spec_id"] for r in after]
    assert summary["trained"] == params.search.budget == len(after)
    assert len(set(spec_ids)) == len(spec_ids)  # nothing trained twice
    assert set(before) <= {r.run_id for r in after}  # finished runs kept, not redone
    assert summary["reused"] == len(before) and summary["trained_this_run"] == params.search.budget - len(before)
    assert _children(experiment, sid, "RUNNING") == []
    # every latency the killed run computed was persisted: the resume computes only the new candidates'
    assert summary["latency_measured_this_run"] <= summary["latency_cached"] - len(before)

    out_b = tmp_path / "b"
    full = run_search(params, "full-" + uuid.uuid4().hex[:6], str(store), str(out_b), progress=False)
    assert full["reused"] == 0 and full["trained"] == summary["trained"]
    assert _front(out_a) == _front(out_b)
    assert {e["spec_id"] for e in json.loads((out_a / "selected.json").read_text())} == {
        e["spec_id"] for e in json.loads((out_b / "selected.json").read_text())
    }
    s = json.loads((out_a / "summary.json").read_text())
    assert s["space_size"] == 19 and s["fraction_trained"] == pytest.approx(4 / 19)
    assert s["objective"] == "auc" and s["val_folds"] == 2 and s["n_val"] == 16
    assert s["selected"] == params.search.k_select  # filled with untrained neighbours when the front is short
    selected = json.loads((out_a / "selected.json").read_text())
    assert len(selected) == params.search.k_select
    for e in selected:
        if e["trained"]:
            assert e["score_low"] <= e["score"] <= e["score_high"] and e["objective"] == "auc"
        else:
            assert e["score"] is None and e["neighbour_of"]
    assert (out_a / "pareto.png").stat().st_size > 1000
    assert json.loads((out_a / "latency_cache.json").read_text())

    from mlflow import MlflowClient

    hist = MlflowClient().get_metric_history(summary["parent_run_id"], "pruned_iteration")
    assert len(hist) >= s["iterations"]  # one value per iteration (the killed run logged some too)
    logged = MlflowClient().get_run(summary["parent_run_id"]).data.params  # the whole config, flattened
    assert logged["train.lr"] == str(params.train.lr) and logged["search.widths"] == "[4, 8]"
    curves = MlflowClient().get_metric_history(after[0].run_id, "train_loss")
    assert [h.step for h in curves] == [1]  # per-epoch curve of a candidate (1 epoch), logged while it trained
    kid = MlflowClient().get_run(after[0].run_id).data
    assert kid.metrics["score_low"] <= kid.metrics["score"] <= kid.metrics["score_high"]
    assert kid.tags["naslung.objective"] == "auc" and kid.params["objective"] == "auc"


@pytest.mark.slow
def test_dask_runner_trains_candidates_in_parallel(tmp_path: Path, store: Path, harness: None) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.search import run_search

    experiment = f"search-dask-{uuid.uuid4().hex[:6]}"
    params = load_params(_params_file(tmp_path, experiment, runner="dask", batch_size=2, dask_workers=2))
    sid = "dask-" + uuid.uuid4().hex[:6]
    summary = run_search(params, sid, str(store), str(tmp_path / "out"), progress=False)

    runs = _children(experiment, sid)
    assert summary["trained"] == len(runs) == params.search.budget
    front = json.loads((tmp_path / "out" / "front.json").read_text())
    run_ids = {r.run_id for r in runs}
    assert front and all(e["run_id"] in run_ids for e in front)  # front built from logged candidates

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[summary["flow_run_id"]]))
        )
    cands = [t for t in task_runs if t.name.startswith("candidate-") and t.state and t.state.is_completed()]
    assert len(cands) == params.search.budget
    spans = sorted((t.start_time, t.end_time) for t in cands)
    overlaps = sum(1 for (s0, e0), (s1, _) in itertools.pairwise(spans) if s1 < e0)
    assert overlaps >= 1, f"no two candidate task runs overlapped: {spans}"
    # and the training itself overlapped, per the timestamps logged in MLflow
    iv = sorted((r.metrics["train_started_at"], r.metrics["train_finished_at"]) for r in runs)
    assert any(s1 < e0 for (_, e0), (s1, _) in itertools.pairwise(iv))
    # each candidate run (opened in a Dask worker) spans its training and names its data and code
    from mlflow import MlflowClient

    client = MlflowClient(params.mlflow_uri)
    for r in runs:
        run = client.get_run(r.run_id)
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["patch-manifest"], r.run_id
        trained_ms = 1000 * (r.metrics["train_finished_at"] - r.metrics["train_started_at"])
        assert run.info.end_time - run.info.start_time >= trained_ms - 1
        assert run.data.tags.get("mlflow.source.git.commit") or not (REPO / ".git").exists()
    parent = client.get_run(runs[0].tags["mlflow.parentRunId"])
    assert parent.data.tags.get("mlflow.source.git.commit") or not (REPO / ".git").exists()


def test_default_search_id_hashes_data_content_not_path(tmp_path: Path, store: Path) -> None:
    import shutil

    from flows.search import default_search_id

    params = load_params(_params_file(tmp_path, "ids"))
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    sid = default_search_id(params, str(store))
    assert sid.startswith("pop-") and default_search_id(params, str(copy)) == sid  # same data elsewhere: resumes
    patches = np.load(copy / "patches.npy")
    patches[0, 0, 0, 0] += 0.5
    np.save(copy / "patches.npy", patches)
    assert default_search_id(params, str(copy)) != sid  # new data: a new search
    dnas_params = params.replace(search=type(params.search)(**{**params.search.__dict__, "strategy": "dnas"}))
    assert default_search_id(dnas_params, str(store)).startswith("dnas-")


def test_pop_search_in_the_library_resumes_with_an_injected_fan_out(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run_pop_search`` without Prefect: the batch trainer is injected; a search killed after its first
    batch resumes from MLflow without retraining; with no tracker it reaches the same front."""
    from naslung.search.candidate import run_candidate
    from naslung.search.pop_run import run_pop_search
    from naslung.tracker import NullTracker
    from naslung.tracking import MlflowTracker

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = f"search-lib-{uuid.uuid4().hex[:6]}"
    params = load_params(_params_file(tmp_path, experiment, budget=3, batch_size=2))
    tracker = MlflowTracker()
    tracker.configure(params.mlflow_uri)
    batches: list[list[str]] = []

    def killed_after_one_batch(jobs):
        if batches:
            raise KeyboardInterrupt("killed")
        batches.append([j.spec.spec_id for j in jobs])
        return [run_candidate(j, params, str(store), tracker) for j in jobs]

    with pytest.raises(KeyboardInterrupt):
        run_pop_search(params, store, tmp_path / "a", "lib", tracker=tracker, train_batch=killed_after_one_batch)
    assert len(batches[0]) == 2 and len(_children(experiment, "lib")) == 2

    got = run_pop_search(params, store, tmp_path / "a", "lib", tracker=tracker, progress=False).summary
    assert got["reused"] == 2 and got["trained_this_run"] == 1 and len(_children(experiment, "lib")) == 3
    from mlflow import MlflowClient

    parent = MlflowClient().get_run(got["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["train.lr"] == str(params.train.lr)

    plain = run_pop_search(params, store, tmp_path / "b", "lib", tracker=NullTracker(), progress=False).summary
    assert plain["parent_run_id"] is None and plain["reused"] == 0 and plain["trained"] == 3
    assert _front(tmp_path / "a") == _front(tmp_path / "b")


TINY_DNAS = {
    "stem": 4,
    "layers": [[4, 1], [8, 2], [8, 2]],
    "head_channels": 8,
    "kernels": [3],
    "expansions": [2],
    "skip": True,
    "epochs": 2,
    "warmup_epochs": 1,
    "batch_size": 8,
    "derive_k": 2,
    "retrain_epochs": 1,
}


@pytest.mark.slow
def test_dnas_strategy_flow_writes_search_outputs_and_mlflow_runs(tmp_path: Path, store: Path, harness: None) -> None:
    from mlflow import MlflowClient

    from flows.search import run_search
    from naslung import tracking
    from naslung.models.factory import parse_member_spec
    from naslung.models.mbconv import DnasArch

    experiment = f"search-dnas-{uuid.uuid4().hex[:6]}"
    pop_dir = tmp_path / "pop"
    pfile = _params_file(tmp_path, "unused", strategy="dnas", out_dir=str(pop_dir))
    data = yaml.safe_load(pfile.read_text())
    data["dnas"].update({**TINY_DNAS, "experiment": experiment})
    pfile.write_text(yaml.safe_dump(data))
    params = load_params(pfile)
    pop_dir.mkdir()  # an earlier POP front (same latency unit) is drawn under the derived models
    (pop_dir / "front.json").write_text(
        json.dumps(
            [
                {
                    "spec": {"stem": [4, 4], "stages": [[4], [4], [4]], "cbam": False, "head": "linear"},
                    "spec_id": "m1-x",
                    "objective": "auc",
                    "score": 0.5,
                    "score_low": 0.4,
                    "score_high": 0.6,
                    "accuracy": 0.5,
                    "latency": 1.0,
                    "latency_unit": "Mmac_per_nodule",
                }
            ]
        )
    )

    out = tmp_path / "out"
    summary = run_search(params, None, str(store), str(out), progress=False)
    assert summary["strategy"] == "dnas" and summary["search_id"].startswith("dnas-")
    assert summary["trained"] == summary["trained_this_run"] == 2 and summary["pop_front_size"] == 1
    for name in ("front.json", "selected.json", "summary.json", "pareto.png", "dnas.json"):
        assert (out / name).is_file(), name
    assert (out / "pareto.png").stat().st_size > 1000
    assert json.loads((out / "summary.json").read_text())["strategy"] == "dnas"
    front = json.loads((out / "front.json").read_text())
    selected = json.loads((out / "selected.json").read_text())
    assert front and 1 <= len(selected) <= params.search.k_select
    assert all(e["spec"]["kind"] == "dnas" and e["latency_unit"] == "Mmac_per_nodule" for e in selected)
    assert all(isinstance(parse_member_spec(e), DnasArch) for e in selected)  # usable as ensemble members
    for a in front:  # the front is non-dominated among the derived models
        assert not any(b["score"] >= a["score"] and b["latency"] < a["latency"] for b in selected)
    assert all(e["score_low"] <= e["score"] <= e["score_high"] and e["objective"] == "auc" for e in selected)

    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    parent = _parent(experiment, summary["search_id"])
    assert parent == summary["parent_run_id"] and exp is not None
    prun = client.get_run(parent)
    assert prun.info.status == "FINISHED" and prun.data.tags["naslung.strategy"] == "dnas"
    assert len(client.get_metric_history(parent, "alpha_entropy")) == TINY_DNAS["epochs"]
    assert prun.data.params["dnas.derive_k"] == "2" and "train.lr" in prun.data.params  # the whole config
    kids = tracking.children(parent, "FINISHED")
    assert len(kids) == 2 and all(k.tags["naslung.strategy"] == "dnas" for k in kids)
    by_id = {k.params["spec_id"]: k for k in kids}
    for e in selected:
        run = by_id[e["spec_id"]]
        assert e["run_id"] == run.run_id and run.metrics["score"] == pytest.approx(e["score"])
        assert run.metrics["accuracy"] == pytest.approx(e["accuracy"])
        assert json.loads(run.params["spec_json"]) == e["spec"]
        full = client.get_run(run.run_id)
        assert [d.dataset.name for d in full.inputs.dataset_inputs] == ["patch-manifest"]
        assert {"model/weights.pt", "model/arch.json"} <= {a.path for a in client.list_artifacts(run.run_id, "model")}

    again = run_search(params, None, str(store), str(tmp_path / "again"), progress=False)  # same data: resumes
    assert again["search_id"] == summary["search_id"] and again["reused"] == 2 and again["trained_this_run"] == 0
    assert len(tracking.children(parent)) == 2  # nothing retrained
    assert _front(tmp_path / "again") == _front(out)
