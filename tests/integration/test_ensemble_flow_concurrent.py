"""The Prefect ``train_ensemble`` flow with ``train.concurrent`` = 2 (one ``train-member-group`` task per two
uncached members of a fold, trained at once) writes the same members as the library trained one by one, and a
re-run takes them all from the cache (the ``train-member`` path) — a real Prefect flow run, real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import make_project

from naslung.ensemble.training import train_ensemble as train_in_process
from naslung.params import load_params

pytestmark = pytest.mark.integration


def _members(index_path: Path) -> list[dict]:
    return json.loads(index_path.read_text(encoding="utf-8"))["members"]


def test_flow_trains_member_groups_like_one_by_one(tmp_path: Path) -> None:
    from flows.ensemble import train_ensemble as train_flow

    extra = {"ensemble": {"epochs": 2}}
    one = load_params(make_project(tmp_path / "one", folds=[1], extra=extra))
    reference = train_in_process(one, progress=False)["members"]

    two_path = make_project(tmp_path / "two", folds=[1], extra={**extra, "train": {"concurrent": 2}})
    index = Path(train_flow(str(two_path)))
    got = _members(index)
    assert len(got) == len(reference) >= 2
    for a, b in zip(reference, got):
        assert (a["name"], a["key"], a["best_epoch"], a["val"]) == (b["name"], b["key"], b["best_epoch"], b["val"])
        pa = json.loads((Path(a["dir"]) / "member.json").read_text())
        pb = json.loads((Path(b["dir"]) / "member.json").read_text())
        assert pa["test_predictions"] == pb["test_predictions"]

    mtimes = {m["dir"]: (Path(m["dir"]) / "member.json").stat().st_mtime_ns for m in got}
    again = _members(Path(train_flow(str(two_path))))  # every member cached: no group task trains
    assert [m["key"] for m in again] == [m["key"] for m in got]
    assert {m["dir"]: (Path(m["dir"]) / "member.json").stat().st_mtime_ns for m in again} == mtimes
