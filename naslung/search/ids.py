"""Default search ids: a hash of what changes a search's results, the data content included.

The same configuration on the same data gives the same id, so rerunning a killed search resumes it (its
MLflow parent run is found by id); new data (other bytes in ``manifest.csv`` / ``patches.npy``, wherever
the patch store lives) gives a new id, so a search is never resumed onto results of other data.

* POP (``pop-<10 hex>``): the ``search`` section without budget, patience, runner, Dask settings, out_dir,
  batch_size, k_select and fill (they change how far or how fast the search runs, or what is selected at
  the end, not a candidate's score; ``objective``, ``val_folds`` and ``latency_tolerance`` are in), the
  ``model``, ``train`` and ``latency`` sections, the seed, ``prepare.n_folds`` and the data md5s.
* DNAS (``dnas-<10 hex>``): the ``dnas`` section without out_dir and experiment, ``search.fold``,
  ``search.val_folds``, ``search.objective`` and ``search.latency_source``, the ``train`` and ``latency``
  sections (retraining, scoring and latency of the derived models), the seed, ``prepare.n_folds`` and the
  data md5s.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from naslung.lineage import data_identity
from naslung.params import Params, to_dict

POP_NOT_IN_ID = (
    "budget",
    "patience",
    "runner",
    "dask_address",
    "dask_workers",
    "out_dir",
    "batch_size",
    "k_select",
    "fill",
)
DNAS_NOT_IN_ID = ("out_dir", "experiment")


def data_md5(artifacts: str | Path) -> dict[str, str]:
    """md5 of the patch store's ``manifest.csv`` and ``patches.npy`` (read from the files themselves),
    keyed by file name."""
    return data_identity(artifacts).md5_by_file


def _digest(blob: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:10]


def default_search_id(params: Params, artifacts: str | Path, strategy: str | None = None) -> str:
    """Stable id of a search configuration on the data in ``artifacts`` (see the module docstring).

    ``strategy`` defaults to ``params.search.strategy``.
    """
    d = to_dict(params)
    strategy = strategy or params.search.strategy
    common = {
        "train": d["train"],
        "latency": d["latency"],
        "seed": d["seed"],
        "prepare_folds": d["prepare"]["n_folds"],
        "data": data_md5(artifacts),
    }
    if strategy == "pop":
        blob = {
            "search": {k: v for k, v in d["search"].items() if k not in POP_NOT_IN_ID and k != "strategy"},
            "model": d["model"],
            **common,
        }
        return "pop-" + _digest(blob)
    if strategy == "dnas":
        blob = {
            "dnas": {k: v for k, v in d["dnas"].items() if k not in DNAS_NOT_IN_ID},
            "fold": d["search"]["fold"],
            "val_folds": d["search"]["val_folds"],
            "objective": d["search"]["objective"],
            "latency_source": d["search"]["latency_source"],
            **common,
        }
        return "dnas-" + _digest(blob)
    raise ValueError(f"params search.strategy: expected 'pop' or 'dnas', got {strategy!r}")
