"""Ensemble evaluation honesty: folds the architecture search saw are flagged as optimistic."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from naslung.ensemble.evaluation import selection_leak_folds
from naslung.params import load_params

REPO = Path(__file__).resolve().parents[2]


def test_folds_seen_by_the_search_are_flagged() -> None:
    p = load_params(REPO / "params.yaml")
    p = p.replace(search=replace(p.search, fold=1), ensemble=replace(p.ensemble, specs=[]))
    assert selection_leak_folds(p, [1]) == []
    assert selection_leak_folds(p, [1, 2, 3]) == [2, 3]
    # explicit member specs were not chosen by the search: nothing to flag
    fixed = p.replace(ensemble=replace(p.ensemble, specs=["[4, 4, [4], [8], [8]]"]))
    assert selection_leak_folds(fixed, [1, 2, 3]) == []
