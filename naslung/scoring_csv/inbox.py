"""Scoring a folder of nodule CSVs: ``<inbox>/<name>.csv`` -> ``<outbox>/<name>.results.csv``.

Files are taken in name order. Afterwards each input moves to ``<inbox>/done/`` — or, when the file
itself was unusable (0 bytes, missing columns) or the runner raised, to ``<inbox>/failed/`` with the
reason in ``<outbox>/<name>.error.txt``. A run killed half-way leaves the CSV in the inbox and a partial
results file in the outbox, which the next run resumes. Beside each results file the runner writes its run
manifest ``<name>.results.manifest.json`` and drift plot ``<name>.results.drift.png``
(:func:`naslung.score_csv.score_csv`); the runner's dict names the manifest (``manifest``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

Runner = Callable[..., dict[str, Any]]
"""``runner(params_path, csv_path, scans_dir, out_path[, explain=True][, log=False])`` -> a dict with at least
``file_error`` (None when the file could be scored), e.g. :meth:`ScoreSummary.to_dict`."""


def process_inbox(
    params_path: str,
    inbox: Path,
    outbox: Path,
    scans: Path,
    runner: Runner,
    explain: bool = False,
    log: bool = True,
) -> list[dict[str, Any]]:
    """Score every ``*.csv`` in ``inbox`` into ``outbox`` with ``runner``; move each input to ``done/`` or
    ``failed/``. ``explain`` is passed on to the runner only when set (CAM overlays), ``log=False`` (no
    MLflow scoring run) only when not logging. Returns the runner's dicts, in file order (``{"csv",
    "file_error"}`` for a file the runner raised on)."""
    inbox, outbox = Path(inbox), Path(outbox)
    outbox.mkdir(parents=True, exist_ok=True)
    results = []
    for csv in sorted(p for p in inbox.glob("*.csv") if p.is_file()):
        out = outbox / f"{csv.stem}.results.csv"
        try:
            extra: dict[str, Any] = {"explain": True} if explain else {}
            if not log:
                extra["log"] = False
            summary = runner(str(Path(params_path).resolve()), str(csv), str(scans), str(out), **extra)
        except Exception as exc:
            summary = {"csv": str(csv), "file_error": f"{csv.name}: {type(exc).__name__}: {exc}"}
        target = inbox / ("failed" if summary["file_error"] else "done")
        target.mkdir(exist_ok=True)
        if summary["file_error"]:
            (outbox / f"{csv.stem}.error.txt").write_text(encoding="utf-8", data=summary["file_error"] + "\n")
        shutil.move(str(csv), str(target / csv.name))
        results.append(summary)
    return results
