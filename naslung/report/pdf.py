"""The PDF of one study (matplotlib's ``PdfPages``, Agg backend): the nodule table, then the CAM overlays.

Pages are A4 landscape. Table pages list every row of the study in input order -- error rows too, with
their error -- with the columns of :data:`TABLE_COLUMNS`: the 1-based input row, nodule id, world point
(x, y, z) in mm (LPS patient coordinates, as in the CSV), calibrated P(malignant), the members' raw mean,
their spread and the refer flag, the majority label, the votes, the model version and the status or
error. A page holds :data:`TABLE_LINES` text lines (a long error takes up to :data:`ERROR_LINES`
lines), so long studies continue on further table pages (:func:`table_pages`). Then one overlay page
per :data:`OVERLAYS_PER_PAGE` ok rows with an ``explain_png`` (axial / coronal / sagittal views of the
32 mm patch with the CAM, from ``naslung score --explain``); a PNG that is gone is named in its place.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from naslung.report.rows import ReportRow

PAGE_SIZE_IN = (11.69, 8.27)
"""A4 landscape, inches."""
TABLE_LINES = 30
"""Text lines of the table per page (header excluded)."""
ERROR_LINES = 3
"""Most lines an error message takes in the table (longer ones end in '…')."""
ERROR_WIDTH = 58
"""Characters per line of an error message."""
OVERLAYS_PER_PAGE = 2
HEADER_WIDTH = 175
"""Characters per header line (longer lines wrap)."""
TABLE_COLUMNS = (
    ("row", 0.0),
    ("nodule id", 0.035),
    ("world (x, y, z) mm", 0.12),
    ("P(malig.)", 0.285),
    ("raw P", 0.345),
    ("spread / refer", 0.4),
    ("label", 0.495),
    ("votes", 0.56),
    ("model", 0.6),
    ("status / error", 0.65),
)
"""Column titles and their left edges (fraction of the page's table width)."""


@dataclass(frozen=True)
class PdfHeader:
    """What the first lines of every page say."""

    title: str
    lines: tuple[str, ...] = ()


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(text: str, digits: int = 3) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{value:.{digits}f}" if math.isfinite(value) else text


def _label(text: str) -> str:
    return {"1": "malignant", "0": "benign"}.get(text, text)


def _error_lines(row: ReportRow) -> list[str]:
    if row.ok:
        return ["ok"]
    text = f"{row.status or 'pending'}: {row.error}" if row.error else (row.status or "pending")
    lines = textwrap.wrap(text, ERROR_WIDTH) or [text]
    if len(lines) > ERROR_LINES:
        lines = [*lines[: ERROR_LINES - 1], lines[ERROR_LINES - 1][: ERROR_WIDTH - 1] + "…"]
    return lines


def table_cells(row: ReportRow) -> list[list[str]]:
    """The row's table cells (one list per column; the status/error column may hold several lines)."""
    point = row.point_xyz_mm
    where = "(" + ", ".join(f"{v:.1f}" for v in point) + ")" if point is not None else ", ".join(row.coords)
    spread = _fmt(row.uncertainty)
    if row.refer:
        spread = f"{spread} / {'refer' if row.refer == '1' else 'no'}"
    return [
        [str(row.row + 1)],
        [row.nodule_id[:14] or "—"],
        [where[:34]],
        [_fmt(row.probability)],
        [_fmt(row.raw_probability)],
        [spread],
        [_label(row.label)],
        [row.votes],
        [row.model_version[:10]],
        _error_lines(row),
    ]


def table_pages(rows: Sequence[ReportRow]) -> list[list[ReportRow]]:
    """The rows on each table page (at least one page, also for no rows)."""
    pages: list[list[ReportRow]] = [[]]
    used = 0
    for row in rows:
        need = len(_error_lines(row))
        if pages[-1] and used + need > TABLE_LINES:
            pages.append([])
            used = 0
        pages[-1].append(row)
        used += need
    return pages


def overlay_rows(rows: Sequence[ReportRow]) -> list[ReportRow]:
    """The ok rows with an overlay PNG named, in input order."""
    return [row for row in rows if row.ok and row.explain_png]


def page_count(rows: Sequence[ReportRow]) -> int:
    """Pages of the PDF of ``rows``: table pages plus overlay pages."""
    return len(table_pages(rows)) + math.ceil(len(overlay_rows(rows)) / OVERLAYS_PER_PAGE)


def _header_lines(header: PdfHeader) -> list[str]:
    return [part for line in header.lines for part in (textwrap.wrap(line, HEADER_WIDTH) or [""])]


def _content_top(header: PdfHeader) -> float:
    """Top of the page's content (figure fraction), below the header lines."""
    return 0.92 - 0.022 * len(_header_lines(header)) - 0.01


def _page(plt: Any, header: PdfHeader, page: int, pages: int) -> tuple[Any, Any]:
    fig = plt.figure(figsize=PAGE_SIZE_IN)
    fig.text(0.04, 0.955, header.title, fontsize=13, weight="bold", va="top")
    for i, line in enumerate(_header_lines(header)):
        fig.text(0.04, 0.92 - 0.022 * i, line, fontsize=8, va="top")
    fig.text(0.96, 0.02, f"page {page} / {pages}", fontsize=7, ha="right")
    top = _content_top(header)
    ax = fig.add_axes((0.04, 0.05, 0.92, top - 0.05))
    ax.set_xlim(0, 1)
    ax.set_ylim(1, 0)
    ax.axis("off")
    return fig, ax


def _draw_table(ax: Any, rows: Sequence[ReportRow]) -> None:
    step = 1.0 / (TABLE_LINES + 1.5)
    for title, x in TABLE_COLUMNS:
        ax.text(x, step * 0.5, title, fontsize=7.5, weight="bold", va="center", family="DejaVu Sans")
    ax.axhline(step, color="black", lw=0.8)
    y = step
    for row in rows:
        cells = table_cells(row)
        height = step * max(len(c) for c in cells)
        if not row.ok:
            ax.axhspan(y, y + height, color="#fbe3e3", lw=0)
        for (_title, x), lines in zip(TABLE_COLUMNS, cells):
            for k, line in enumerate(lines):
                ax.text(x, y + step * (k + 0.5), line, fontsize=7, va="center", family="DejaVu Sans Mono")
        y += height
        ax.axhline(y, color="#bbbbbb", lw=0.4)


def _draw_overlays(fig: Any, plt: Any, rows: Sequence[ReportRow], base_dir: Path, top: float) -> None:
    height = (top - 0.06) / OVERLAYS_PER_PAGE
    for i, row in enumerate(rows):
        y0 = top - height * (i + 1)
        caption = f"row {row.row + 1}  {row.name}  P(malignant) {_fmt(row.probability)}  label {_label(row.label)}"
        fig.text(0.05, y0 + height - 0.005, caption, fontsize=9, va="top")
        ax = fig.add_axes((0.05, y0 + 0.01, 0.9, height - 0.045))
        ax.axis("off")
        png = base_dir / row.explain_png
        if png.is_file():
            ax.imshow(plt.imread(str(png)))
        else:
            ax.text(0.5, 0.5, f"overlay missing: {row.explain_png}", ha="center", va="center", fontsize=9)


def write_pdf(path: Path, rows: Sequence[ReportRow], header: PdfHeader, base_dir: Path) -> Path:
    """Write the PDF of one study's ``rows`` to ``path`` (see the module docstring); overlay PNG paths
    are relative to ``base_dir`` (the results CSV's folder). Written beside ``path``, then renamed."""
    plt = _plt()
    from matplotlib.backends.backend_pdf import PdfPages

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tables = table_pages(rows)
    overlays = overlay_rows(rows)
    chunks = [overlays[i : i + OVERLAYS_PER_PAGE] for i in range(0, len(overlays), OVERLAYS_PER_PAGE)]
    pages = len(tables) + len(chunks)
    with PdfPages(tmp) as pdf:
        info = pdf.infodict()
        info["Title"] = header.title
        info["Creator"] = "naslung report"
        info["CreationDate"] = datetime.now(UTC)
        for n, chunk in enumerate(tables, 1):
            fig, ax = _page(plt, header, n, pages)
            _draw_table(ax, chunk)
            if not rows:
                ax.text(0.5, 0.5, "no rows", ha="center", fontsize=10)
            pdf.savefig(fig)
            plt.close(fig)
        for n, chunk in enumerate(chunks, len(tables) + 1):
            fig, ax = _page(plt, header, n, pages)
            fig.delaxes(ax)
            _draw_overlays(fig, plt, chunk, Path(base_dir), _content_top(header))
            pdf.savefig(fig)
            plt.close(fig)
    os.replace(tmp, path)
    return path
