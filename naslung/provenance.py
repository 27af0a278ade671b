"""Where a registered ensemble comes from, read from the project's files (no MLflow, no DVC): the search
run(s) that chose its members, the provenance of explicit ``ensemble.specs`` (``ensemble.specs_origin``,
``specs_search_fold``, ``specs_search_id``) with the test folds it makes optimistic, and the data-validation
verdict about the data it was trained on."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from naslung.artifact_paths import SUMMARY_FILE, VALIDATION_FILE
from naslung.params import Params


def search_run_id(params: Params) -> str | None:
    """MLflow run id(s) of the search(es) that selected the members: ``parent_run_id`` of the
    ``summary.json`` beside each selection file of ``ensemble.members`` (one id, or a JSON list when the
    ensemble mixes selections, e.g. POP and DNAS); None for explicit ``ensemble.specs``."""
    if params.ensemble.specs:
        return None
    from naslung.ensemble.training import selection_paths

    ids: list[str] = []
    for sel in selection_paths(params.ensemble.members):
        summary = sel.parent / SUMMARY_FILE
        if summary.is_file():
            data = json.loads(summary.read_text(encoding="utf-8"))
            rid = data.get("parent_run_id") or data.get("run_id")
            if rid and str(rid) not in ids:
                ids.append(str(rid))
    if not ids:
        return None
    return ids[0] if len(ids) == 1 else json.dumps(ids)


def selection_provenance(params: Params, folds: Sequence[int] | None = None) -> dict[str, Any]:
    """Where the member architectures came from and the leak flags of ``folds`` (default
    ``ensemble.folds``): ``{"origin", "search_fold", "search_id", "leak_folds", "unknown_folds",
    "flagged_folds", "reason"}`` (the rule is :func:`naslung.ensemble.evaluation.selection_provenance`):

    * members from the search's selection (``ensemble.specs`` empty): every fold but ``search.fold``;
    * ``specs_origin: search``: every fold but ``specs_search_fold`` (unset: all folds, provenance unknown);
    * ``specs_origin: external``: none;
    * ``specs_origin: unknown``: all evaluated folds, as ``unknown_folds`` ("provenance unknown").
    """
    from naslung.ensemble.evaluation import selection_provenance as rule

    return rule(params, list(params.ensemble.folds) if folds is None else folds).as_dict()


def validation_status(params: Params, data_md5: dict[str, str] | None = None) -> tuple[bool, str]:
    """(passed, reason) from ``<paths.artifacts>/validation.json``; absent means not validated.

    With ``data_md5`` (``{"manifest": .., "patches": ..}`` of the data the model was trained on) the verdict
    only counts when it was made on that same data."""
    path = Path(params.paths.artifacts) / VALIDATION_FILE
    if not path.is_file():
        return False, f"{path} not found: the data was not validated (run `naslung validate`)"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return False, f"{path} is not valid JSON: {exc}"
    if data_md5 is not None:
        seen = data.get("md5") or {}
        differ = [k for k in ("manifest", "patches") if seen.get(k) != data_md5.get(k)]
        if differ:
            return False, (
                f"{path} is about other data than the model was trained on ({', '.join(differ)} md5 "
                f"{[seen.get(k) for k in differ]} vs {[data_md5.get(k) for k in differ]}); "
                "run `naslung validate` on the current data"
            )
    if data.get("success") is True:
        return True, f"{path}: success"
    failed = [k for k, v in (data.get("suites") or {}).items() if isinstance(v, dict) and not v.get("success")]
    return False, f"{path}: data validation failed" + (f" (suites: {', '.join(failed)})" if failed else "")
