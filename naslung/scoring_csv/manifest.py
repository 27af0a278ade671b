"""The run manifest of one CSV scoring run: ``<out stem>.manifest.json`` beside the results CSV.

Keys (schema ``naslung.scoring-manifest/1``): ``request_id`` (the run's id; rows carry ``<id>/<row>``),
``started_at`` / ``scored_at`` (UTC ISO 8601: start and end of the run), ``input`` (path, sha256 of the
file's bytes, size), ``results`` (path, drift PNG path), ``counts`` (rows, ok, error, pending — counted
from the rows as written — plus resumed, sent, scans), ``timings_s`` (read, cut, wait, request, render,
wall), ``model`` (the model that scored most ok rows: name, version, alias, data_revision, git_commit;
``models`` lists every distinct one with its row count, e.g. after a resume across a model change),
``devices`` (where the answers say they ran), ``software`` (:func:`software_versions`), ``hashes`` (what
``input_sha256`` / ``patch_sha256`` hash), ``drift`` (:func:`naslung.scoring_csv.drift.drift_summary`),
``file_error`` and ``errors`` (the first 200 error messages by 1-based row). The MLflow logging
(``naslung score`` without ``--no-log``) adds ``mlflow``: its tracking URI, experiment and run id.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections import Counter
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA = "naslung.scoring-manifest/1"
MODEL_KEYS = ("model_name", "model_version", "model_alias", "data_revision", "git_commit")
MAX_ERRORS = 200


def manifest_path(out: Path) -> Path:
    """``<out stem>.manifest.json`` beside the results CSV ``out``."""
    return Path(out).with_name(Path(out).stem + ".manifest.json")


def drift_png_path(out: Path) -> Path:
    """``<out stem>.drift.png`` beside the results CSV ``out``."""
    return Path(out).with_name(Path(out).stem + ".drift.png")


def file_sha256(path: Path) -> str:
    """sha256 hex of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def software_versions(devices: Sequence[str] = ()) -> dict[str, Any]:
    """Versions of python, naslung, numpy, pandas, torch, SimpleITK (and the OS); with a ``cuda`` device
    among ``devices`` (where the answers say they ran) also torch's CUDA and cuDNN versions."""
    import numpy
    import pandas
    import SimpleITK
    import torch

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "naslung": _version("naslung"),
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "torch": torch.__version__,
        "SimpleITK": SimpleITK.Version.VersionString(),
    }
    if any(str(d).startswith("cuda") for d in devices):
        out["cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version()
    return out


def model_facts(rows: Sequence[Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the model facts most ok rows share, every distinct one with its ``rows`` count) of result rows
    (objects with the :data:`MODEL_KEYS` attributes and ``status``)."""
    seen = Counter(tuple(str(getattr(r, k)) for k in MODEL_KEYS) for r in rows if r.status == "ok")
    models: list[dict[str, Any]] = [
        {**{k.removeprefix("model_"): v for k, v in zip(MODEL_KEYS, key)}, "rows": n} for key, n in seen.most_common()
    ]
    if not models:
        return None, []
    top = {k: v for k, v in models[0].items() if k != "rows"}
    return top, models


def build_manifest(
    summary: Any,
    rows: Sequence[Any],
    drift: Mapping[str, Any] | None,
    drift_png: Path | None,
    devices: Sequence[str],
) -> dict[str, Any]:
    """The manifest of a finished run (:class:`~naslung.scoring_csv.summary.ScoreSummary` ``summary`` and
    its :class:`~naslung.scoring_csv.rows.RowResult` ``rows``); see the module docstring."""
    csv = Path(summary.csv)
    statuses = Counter(r.status for r in rows)
    model, models = model_facts(rows)
    return {
        "schema": SCHEMA,
        "request_id": summary.request_id,
        "started_at": summary.started_at,
        "scored_at": summary.scored_at,
        "input": {
            "path": str(csv),
            "sha256": file_sha256(csv) if csv.is_file() else None,
            "bytes": csv.stat().st_size if csv.is_file() else None,
        },
        "results": {
            "path": str(summary.out) if summary.out else None,
            "drift_png": str(drift_png) if drift_png else None,
        },
        "counts": {
            "rows": len(rows),
            "ok": statuses.get("ok", 0),
            "error": statuses.get("error", 0),
            "pending": statuses.get("pending", 0),
            "resumed": summary.n_resumed,
            "sent": summary.n_sent,
            "scans": summary.n_scans,
        },
        "timings_s": {
            k: round(float(getattr(summary, f"{k}_s")), 4) for k in ("read", "cut", "wait", "request", "render", "wall")
        },
        "model": model,
        "models": models,
        "devices": sorted(set(devices)),
        "software": software_versions(devices),
        "hashes": {
            "input_sha256": "sha256 of the UTF-8 compact JSON [[column, cell], ...] of the input row, cells as read",
            "patch_sha256": "sha256 of the patch's uint8 wire form (32^3 bytes, z-y-x, C order)",
        },
        "drift": dict(drift) if drift is not None else None,
        "file_error": summary.file_error,
        "errors": {str(i + 1): m for i, m in sorted(summary.errors.items())[:MAX_ERRORS]},
    }


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> Path:
    """Write the manifest as indented JSON, atomically (a ``.tmp`` beside it, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(encoding="utf-8", data=json.dumps(dict(manifest), indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return data
