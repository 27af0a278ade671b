"""Column names of a nodule CSV: the canonical names and the explicit alias table that maps a spreadsheet
export's header onto them.

Canonical columns: ``seriesuid``, ``coordX``, ``coordY``, ``coordZ`` (world mm, x/y/z) and ``nodule_id``.
A header cell is matched after :func:`normalise_name` (case-folded; spaces, ``_``, ``-`` and ``.``
removed; a trailing unit ``(mm)`` / ``[mm]`` dropped), against this table (normalised forms):

=============  ====================================================================
canonical      header cells accepted (as normalised; e.g. ``Series UID``, ``X (mm)``)
=============  ====================================================================
seriesuid      ``seriesuid`` (``series_uid``, ``seriesUID``), ``seriesinstanceuid``
coordX         ``coordx`` (``coord_x``), ``x`` (``X (mm)``), ``worldx``
coordY         ``coordy``, ``y``, ``worldy``
coordZ         ``coordz``, ``z``, ``worldz``
nodule_id      ``noduleid`` (``nodule_id``, ``Nodule ID``)
=============  ====================================================================

A unit other than mm (``x (cm)``) matches nothing, so the file is refused as missing a column rather than
read in the wrong unit. The results CSV keeps the header as written; only parsing uses these names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

CANONICAL_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "nodule_id")

ALIASES: dict[str, tuple[str, ...]] = {
    "seriesuid": ("seriesuid", "seriesinstanceuid"),
    "coordX": ("coordx", "x", "worldx"),
    "coordY": ("coordy", "y", "worldy"),
    "coordZ": ("coordz", "z", "worldz"),
    "nodule_id": ("noduleid",),
}
"""Canonical column -> the normalised header names that mean it (see the module docstring)."""

_BY_ALIAS = {alias: canonical for canonical, aliases in ALIASES.items() for alias in aliases}
_UNIT = re.compile(r"(\(mm\)|\[mm\])$")
_DROP = re.compile(r"[\s_.\-]+")


def normalise_name(name: str) -> str:
    """``name`` case-folded, without spaces, ``_``, ``-``, ``.`` and a trailing ``(mm)`` / ``[mm]``."""
    return _UNIT.sub("", _DROP.sub("", str(name).casefold()))


def canonical_of(name: str) -> str | None:
    """The canonical column a header cell means (see :data:`ALIASES`), else None."""
    return _BY_ALIAS.get(normalise_name(name))


def match_columns(names: Iterable[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Map a header onto the canonical columns.

    Returns ``(found, clashes)``: ``found`` canonical -> the header cell (as written) that holds it;
    ``clashes`` canonical -> every header cell that means it, where more than one does (e.g. ``x`` and
    ``coordX``): such a file is ambiguous and must be refused.
    """
    hits: dict[str, list[str]] = {}
    for name in names:
        canonical = canonical_of(name)
        if canonical is not None:
            hits.setdefault(canonical, []).append(str(name))
    found = {c: cells[0] for c, cells in hits.items() if len(cells) == 1}
    clashes = {c: cells for c, cells in hits.items() if len(cells) > 1}
    return found, clashes


@lru_cache(maxsize=64)
def _columns_of(names: tuple[str, ...]) -> dict[str, str]:
    return match_columns(names)[0]


def canonical_cell(inputs: Mapping[str, str], canonical: str) -> str:
    """The stripped cell of ``inputs`` (column as written -> text) holding ``canonical`` ("" when none)."""
    if canonical in inputs:
        return str(inputs[canonical]).strip()
    name = _columns_of(tuple(inputs)).get(canonical)
    return "" if name is None else str(inputs[name]).strip()


def expected_text() -> str:
    """The accepted header names, for messages: ``seriesuid (or series_uid, SeriesInstanceUID ...)``."""
    shown = {
        "seriesuid": "series_uid, seriesUID, SeriesInstanceUID",
        "coordX": "x, coord_x, X (mm), worldX",
        "coordY": "y, coord_y, Y (mm), worldY",
        "coordZ": "z, coord_z, Z (mm), worldZ",
    }
    return ", ".join(f"{c} (or {a})" for c, a in shown.items())
