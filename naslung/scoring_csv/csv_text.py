"""Reading a nodule CSV as spreadsheets export it: encoding, line endings, delimiter, quoting, decimal commas.

* Encoding: a UTF-8 byte-order mark is dropped; UTF-16 with a byte-order mark (Excel's "Unicode text") is
  read as such; otherwise UTF-8 is tried first and, when the bytes are not UTF-8, Windows-1252 (cp1252, a
  superset of Latin-1's printable range) is used, with a note saying so (Latin-1 for the five bytes
  cp1252 leaves undefined).
* Line endings: LF, CRLF and CR (also mixed). Blank lines are skipped (they are not rows).
* Delimiter: named by an Excel ``sep=;`` first line, else sniffed from the header line: the first of
  ``,`` ``;`` tab whose split of the header holds every required column
  (:mod:`naslung.scoring_csv.columns`); when none does, the one giving the most columns (the caller then
  reports the missing ones).
* Quoting: ``"`` with ``""`` inside; a quoted cell may span lines (at most :data:`MAX_RECORD_LINES`; its
  line breaks are read as ``\n``).
* One malformed line never loses the file: a line with too many or too few fields, or with a quote that
  does not balance, becomes a row of its own with a message (its file line and what is wrong); its cells
  are the fields split at the delimiter, padded with "" or cut to the header's width. Extra fields that
  are all empty (a trailing delimiter) are dropped silently.
* Numbers (:func:`parse_coordinate`): in a ``,`` file a decimal point; in a ``;`` or tab file the decimal
  mark is ``,`` when any coordinate cell holds a comma (``-12,5``), else ``.``. A cell that could be read
  two ways (a ``,`` inside a number of a ``,`` file: thousands separator or decimal comma; a ``.`` in a
  decimal-comma file) is refused with a reason, never guessed.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from naslung.scoring_csv.columns import match_columns

DELIMITERS = (",", ";", "\t")
MAX_RECORD_LINES = 20
"""Most physical lines one quoted record may span; an open quote that does not close within them is a
malformed line."""

_LINE = re.compile(r"\r\n|\r|\n")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_SEP_HINT = re.compile(r"^sep=([,;\t|])\s*$")
_DELIMITER_NAMES = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}


class CsvFileError(ValueError):
    """The file cannot be read as a CSV at all; the message names the file, what was found and what is expected."""


@dataclass
class CsvText:
    """A CSV read as text. ``header``: column names as written (stripped; an empty one is ``Unnamed: <i>``,
    a repeated one ``<name>.<k>``, as pandas names them). ``rows``: cells per row, each ``len(header)``
    long. ``lines``: 1-based file line where each row starts. ``malformed``: row -> what is wrong with its
    line. ``notes``: how the file was read, where that is worth a warning (encoding fallback)."""

    path: Path
    header: list[str]
    header_cells: list[str]
    """The header's fields exactly as written (before naming empty / repeated ones)."""
    rows: list[list[str]]
    lines: list[int]
    encoding: str
    delimiter: str
    malformed: dict[int, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def delimiter_name(self) -> str:
        return _DELIMITER_NAMES.get(self.delimiter, repr(self.delimiter))


def decode(path: Path, data: bytes) -> tuple[str, str, list[str]]:
    """``(text, encoding, notes)`` of a file's bytes (see the module docstring); CsvFileError when the text
    cannot be a CSV (an invalid UTF-8 file with a UTF-8 byte-order mark, NUL bytes)."""
    notes: list[str] = []
    if data.startswith(codecs.BOM_UTF8):
        try:
            text, encoding = data[len(codecs.BOM_UTF8) :].decode("utf-8"), "utf-8-sig"
        except UnicodeDecodeError as e:
            raise CsvFileError(
                f"{path}: starts with a UTF-8 byte-order mark but is not valid UTF-8 ({_where(data, e.start)})"
            ) from None
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text, encoding = data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as e:
            raise CsvFileError(f"{path}: UTF-16 byte-order mark but not valid UTF-16 ({e.reason})") from None
    else:
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError as e:
            where = _where(data, e.start)
            try:
                text, encoding = data.decode("cp1252"), "cp1252"
            except UnicodeDecodeError:
                text, encoding = data.decode("latin-1"), "latin-1"
            notes.append(f"{path}: not UTF-8 ({where}); read as {encoding} (Windows-1252 / Latin-1)")
    if "\x00" in text:
        raise CsvFileError(
            f"{path}: holds NUL bytes (UTF-16 without a byte-order mark, or not a text file); "
            "expected a UTF-8 or Windows-1252 text CSV"
        )
    return text, encoding, notes


def _where(data: bytes, offset: int) -> str:
    line = data.count(b"\n", 0, offset) + 1
    return f"byte 0x{data[offset]:02x} on line {line} is not UTF-8"


def _parse(chunk: str, delimiter: str) -> tuple[list[str] | None, str | None]:
    """Fields of one record, or (None, reason) when ``chunk`` is not exactly one well-quoted record.
    ``reason`` is "open" when a quote is still open at the end of ``chunk``."""
    if '"' not in chunk and "\n" not in chunk:  # no quoting: the csv module would split just so
        return chunk.split(delimiter), None
    try:
        records = list(csv.reader(io.StringIO(chunk, newline=""), delimiter=delimiter, strict=True))
    except csv.Error as e:
        return None, "open" if "unexpected end of data" in str(e) else str(e)
    if len(records) != 1:
        return None, f"{len(records)} records on one line"
    return records[0], None


def _names(fields: Sequence[str]) -> list[str]:
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(fields):
        name = raw.strip() or f"Unnamed: {i}"
        if name in seen:
            seen[name] += 1
            name = f"{name}.{seen[name]}"
        else:
            seen[name] = 0
        out.append(name)
    return out


def sniff_delimiter(header_line: str, required: Sequence[str]) -> str:
    """The delimiter of a header line (see the module docstring)."""
    best, best_n = ",", 0
    for d in DELIMITERS:
        fields, _ = _parse(header_line, d)
        if fields is None:
            fields = header_line.split(d)
        found, _ = match_columns(f.strip() for f in fields)
        if all(c in found for c in required):
            return d
        if len(fields) > best_n:
            best, best_n = d, len(fields)
    return best


def read_csv_text(path: Path, required: Sequence[str]) -> CsvText:
    """Read ``path`` (see the module docstring); :class:`CsvFileError` for a file that is not a CSV at all
    (missing, 0 bytes, no header line, NUL bytes)."""
    path = Path(path)
    if not path.is_file():
        raise CsvFileError(f"{path}: file not found")
    data = path.read_bytes()
    if not data:
        raise CsvFileError(f"{path}: empty file (0 bytes), expected a header row {','.join(required)}")
    text, encoding, notes = decode(path, data)
    lines = _LINE.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    start = next((i for i, line in enumerate(lines) if line.strip()), None)
    if start is None:
        raise CsvFileError(f"{path}: no header line (only blank lines), expected {','.join(required)}")
    hint = _SEP_HINT.match(lines[start])
    if hint:  # Excel's "sep=;" first line names the delimiter; the header follows
        delimiter = hint.group(1)
        start = next((i for i in range(start + 1, len(lines)) if lines[i].strip()), None)
        if start is None:
            raise CsvFileError(f"{path}: only a 'sep=' line, no header line; expected {','.join(required)}")
    else:
        delimiter = sniff_delimiter(lines[start], required)
    fields, reason = _parse(lines[start], delimiter)
    if fields is None:
        raise CsvFileError(f"{path}: header line {start + 1} is not a CSV line ({reason}): {lines[start][:200]!r}")
    header = _names(fields)
    n = len(header)
    out = CsvText(path, header, list(fields), [], [], encoding, delimiter, {}, notes)
    i = start + 1
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        j, chunk = i, lines[i]
        cells, reason = _parse(chunk, delimiter)
        while reason == "open" and j + 1 < len(lines) and j - i + 1 < MAX_RECORD_LINES:
            j += 1
            chunk += "\n" + lines[j]
            cells, reason = _parse(chunk, delimiter)
        if j > i and (cells is None or len(_trimmed(cells, n)) != n):  # no closing quote: this line alone
            j, chunk = i, lines[i]
            cells, reason = _parse(chunk, delimiter)
        row = len(out.rows)
        out.lines.append(i + 1)
        if cells is None:
            problem = "a quote that does not close" if reason == "open" else f"bad quoting ({reason})"
            out.malformed[row] = f"file line {i + 1}: {problem}: {chunk[:200]!r}"
            cells = chunk.split(delimiter)
        else:
            cells = _trimmed(cells, n)
            if len(cells) != n:
                out.malformed[row] = (
                    f"file line {i + 1}: {len(cells)} fields where the header has {n} "
                    f"(split at {out.delimiter_name}): {chunk[:200]!r}"
                )
        out.rows.append((cells + [""] * n)[:n])
        i = j + 1
    return out


def _trimmed(cells: list[str], n: int) -> list[str]:
    """``cells`` without extra trailing fields that are all empty (a trailing delimiter)."""
    if len(cells) > n and not any(c.strip() for c in cells[n:]):
        return cells[:n]
    return cells


def decimal_mark(cells: Sequence[str], delimiter: str) -> str:
    """The decimal mark of a file's coordinate ``cells``: "," for a ``;``/tab file with a comma in any of
    them, else "."."""
    if delimiter == ",":
        return "."
    return "," if any("," in c for c in cells) else "."


def parse_coordinate(cell: str, delimiter: str, decimal: str) -> tuple[float | None, str | None]:
    """``(value, None)`` for a cell holding one finite number in mm, else ``(None, reason)``; reason is None
    for a plain non-number (the caller says "not a finite number"), else why the cell is ambiguous."""
    s = cell.strip().replace("\u2212", "-")
    if delimiter == "," and "," in s:
        return None, (
            f"{cell!r} holds a ',' (a thousands separator or a decimal comma?); "
            "in a comma-delimited file write numbers like -12.5"
        )
    if decimal == ",":
        if "." in s:
            return None, (
                f"{cell!r} holds a '.' but this file writes decimals with ',' (e.g. -12,5): "
                "a thousands separator or a decimal point?"
            )
        if s.count(",") > 1:
            return None, None
        s = s.replace(",", ".")
    if not _NUMBER.match(s):
        return None, None
    value = float(s)
    return (value, None) if math.isfinite(value) else (None, None)
