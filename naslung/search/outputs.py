"""Search outputs in ``search.out_dir``: front.json, selected.json, pareto.png and summary.json.

Both strategies write the same four files. ``front.json`` / ``selected.json``: a list of candidates, each
with spec (``ArchSpec.to_dict()``, or ``DnasArch.to_dict()`` with ``"kind": "dnas"`` for the DNAS
strategy), spec_id, ref_string, ``trained`` (true), ``objective`` with ``score``, ``score_low`` and
``score_high`` (``search.objective`` on the pooled validation folds and its 95 % bootstrap interval),
``n_val`` (validation nodules), ``accuracy`` (validation accuracy, fraction, for information only),
``checkpoint`` (which weights were scored), latency (+ latency_unit, latency_detail), flops (multiply-adds
per nodule), n_params and the validation metrics; POP entries add ``stages``, DNAS entries ``ops``,
``log_prob`` and ``strategy``. ``selected.json`` may end with untrained fill entries
(:func:`neighbour_entry`: ``"trained": false``, no score; :func:`naslung.search.pareto.fill_neighbours`).
``summary.json``: see :func:`naslung.search.pop_run.run_pop_search` /
:func:`naslung.search.dnas_run.run_dnas_search`; it always holds ``strategy``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from naslung.artifact_paths import SearchDir
from naslung.search.plots import pareto_plot
from naslung.search.pop import Evaluated, PopResult

_KEEP = (
    "spec",
    "spec_id",
    "ref_string",
    "stages",
    "objective",
    "score",
    "score_low",
    "score_high",
    "n_val",
    "accuracy",
    "checkpoint",
    "latency",
    "latency_unit",
    "latency_detail",
    "flops",
    "n_params",
    "val_metrics",
    "best_epoch",
    "epochs",
    "run_id",
)
_KEEP_DNAS = (*_KEEP, "strategy", "ops", "log_prob")


def candidate_entry(e: Evaluated) -> dict[str, Any]:
    """front/selected entry of one trained POP candidate."""
    info = dict(e.info)
    out = {k: info[k] for k in _KEEP if k in info}
    out.setdefault("stages", [list(st) for st in e.stages])
    out["score"] = e.score
    out["latency"] = e.latency
    return {"trained": True, **out}


def neighbour_entry(
    spec: Any,
    neighbour_of: str,
    flops: int,
    latency: float | None,
    latency_unit: str,
    objective: str,
    latency_detail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """selected.json entry of an untrained fill member (a one-step neighbour of the front member with spec id
    ``neighbour_of``): no score, ``"trained": false``; ``latency`` in ``latency_unit`` when known, with how it
    was measured (``latency_detail``, as trained candidates have it) when measured."""
    extra = {"latency_detail": dict(latency_detail)} if latency_detail else {}
    return {
        "trained": False,
        "spec": spec.to_dict(),
        "spec_id": spec.spec_id,
        "ref_string": spec.ref_string(),
        "stages": [list(st) for st in spec.stages],
        "objective": objective,
        "score": None,
        "neighbour_of": neighbour_of,
        "flops": int(flops),
        "latency": latency,
        "latency_unit": latency_unit,
        **extra,
    }


def dnas_entry(record: Mapping[str, Any]) -> dict[str, Any]:
    """front/selected entry of one retrained DNAS-derived model (a record of ``run_dnas_search``)."""
    return {"trained": True, **{k: record[k] for k in _KEEP_DNAS if k in record}}


def output_paths(out_dir: str | Path) -> dict[str, Path]:
    out = SearchDir(Path(out_dir))
    return {"front": out.front, "selected": out.selected, "summary": out.summary, "pareto": out.pareto}


def _write(
    out_dir: str | Path,
    front: Sequence[Mapping[str, Any]],
    selected: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    plot: Callable[[Path], Any],
) -> dict[str, Path]:
    paths = output_paths(out_dir)
    paths["front"].parent.mkdir(parents=True, exist_ok=True)
    paths["front"].write_text(encoding="utf-8", data=json.dumps(list(front), indent=1, default=float))
    paths["selected"].write_text(encoding="utf-8", data=json.dumps(list(selected), indent=1, default=float))
    paths["summary"].write_text(
        encoding="utf-8", data=json.dumps(dict(summary), indent=1, sort_keys=True, default=float)
    )
    plot(paths["pareto"])
    return paths


def write_outputs(
    out_dir: str | Path,
    result: PopResult,
    selected: Sequence[Evaluated],
    summary: dict[str, Any],
    latency_label: str,
    score_label: str = "validation score",
    filled: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Path]:
    """Write the four outputs of a POP search (``filled``: untrained fill entries appended to the selection,
    :func:`neighbour_entry`); returns their paths by name."""
    return _write(
        out_dir,
        [candidate_entry(e) for e in result.front],
        [candidate_entry(e) for e in selected] + [dict(f) for f in filled],
        summary,
        lambda p: pareto_plot(
            result.trained,
            result.front,
            p,
            selected,
            latency_label=latency_label,
            score_label=score_label,
            n_untrained=len(filled),
        ),
    )


def write_dnas_outputs(
    out_dir: str | Path,
    records: Sequence[Mapping[str, Any]],
    front: Sequence[Mapping[str, Any]],
    selected: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    latency_label: str,
    pop_front: Sequence[Mapping[str, Any]] = (),
    score_label: str = "validation score",
) -> dict[str, Path]:
    """Write the four outputs of a DNAS run (``pareto.png``: derived models, their front and selection,
    and ``pop_front`` — entries of an earlier POP ``front.json`` in the same latency unit — for reference)."""
    return _write(
        out_dir,
        [dnas_entry(r) for r in front],
        [dnas_entry(r) for r in selected],
        summary,
        lambda p: pareto_plot(
            records,
            front,
            p,
            selected,
            latency_label=latency_label,
            score_label=score_label,
            title="DNAS: derived models (retrained)" + (" vs the POP front" if pop_front else ""),
            reference_front=pop_front,
            trained_label="DNAS derived",
            front_label="DNAS front",
        ),
    )


def read_pop_front(path: str | Path, latency_unit: str, objective: str | None = None) -> list[dict[str, Any]]:
    """POP entries of a ``front.json`` (none when the file is absent, is a DNAS front, was measured in
    another latency unit or, with ``objective``, scored by another objective — fronts in different units
    are never drawn together)."""
    p = Path(path)
    if not p.is_file():
        return []
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return []
    if not isinstance(data, list):
        return []
    return [
        e
        for e in data
        if isinstance(e, dict)
        and isinstance(e.get("score"), (int, float))
        and "latency" in e
        and (objective is None or e.get("objective") == objective)
        and not (isinstance(e.get("spec"), dict) and e["spec"].get("kind") == "dnas")
        and e.get("latency_unit", latency_unit) == latency_unit
    ]
