"""Counts and timings of one CSV scoring run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ScoreSummary:
    """Counts and timings of one scoring run (times in s). ``errors``: 0-based row -> message of the rows
    that became error rows in this run. ``file_error``: the whole file was unusable (``out`` is None when
    not even its rows could be read)."""

    csv: Path
    out: Path | None
    n_rows: int = 0
    n_ok: int = 0
    n_error: int = 0
    n_resumed: int = 0
    n_sent: int = 0
    n_scans: int = 0
    file_error: str | None = None
    read_s: float = 0.0
    cut_s: float = 0.0
    request_s: float = 0.0
    wait_s: float = 0.0
    render_s: float = 0.0
    wall_s: float = 0.0
    errors: dict[int, str] = field(default_factory=dict)
    request_id: str = ""
    """The run's id (rows carry ``<request_id>/<row + 1>``)."""
    started_at: str = ""
    scored_at: str = ""
    """UTC ISO 8601 start and end of the run."""
    manifest: Path | None = None
    """The run manifest JSON (:mod:`naslung.scoring_csv.manifest`), when one was written."""
    drift_png: Path | None = None
    """The drift plot PNG, when one was drawn."""

    @property
    def extraction_s(self) -> float:
        return self.read_s + self.cut_s

    def describe(self) -> str:
        if self.file_error and self.n_rows == 0:
            return f"{self.csv}: FILE ERROR: {self.file_error}"
        text = (
            f"{self.csv}: {self.n_rows} rows -> {self.out}: {self.n_ok} ok, {self.n_error} error "
            f"({self.n_resumed} resumed from an earlier run, {self.n_sent} sent); {self.n_scans} scans; "
            f"wall {self.wall_s:.1f} s = extraction {self.extraction_s:.1f} s (read {self.read_s:.1f}, cut "
            f"{self.cut_s:.1f}) + waiting for inference {self.wait_s:.1f} s"
            + (f" + drawing overlays {self.render_s:.1f} s" if self.render_s else "")
            + f"; request time {self.request_s:.1f} s"
        )
        if self.manifest:
            text += f"\nmanifest {self.manifest}" + (f", drift plot {self.drift_png}" if self.drift_png else "")
        if self.file_error:
            text += f"\nFILE ERROR: {self.file_error}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The run in brief (what the inbox flow returns per file): csv, out (None without an output),
        rows, ok, error, resumed, file_error, wall_s (rounded to 0.01 s), request_id, manifest (None
        without one)."""
        return {
            "csv": str(self.csv),
            "out": str(self.out) if self.out else None,
            "rows": self.n_rows,
            "ok": self.n_ok,
            "error": self.n_error,
            "resumed": self.n_resumed,
            "file_error": self.file_error,
            "wall_s": round(self.wall_s, 2),
            "request_id": self.request_id,
            "manifest": str(self.manifest) if self.manifest else None,
        }
