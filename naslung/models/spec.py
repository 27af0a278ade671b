"""Architecture spec of a NASLung network: data, not code.

An :class:`ArchSpec` is the paper's genotype ``[s1, s2, [stage 3 widths], [stage 4 widths], [stage 5 widths]]``
plus two flags: ``cbam`` (CBAM after stages 2-5) and ``head`` (``"linear"`` softmax head or ``"asoftmax"``
A-Softmax head), and the residual-block variant ``block``: ``"paper"`` (the paper's equations, the default) or
``"reference"`` (the public code's ``ConvRes``; see :mod:`naslung.models.blocks`). Widths are output channels;
stage ``k`` of 3-5 holds ``len(stages[k-3])`` residual blocks.

String forms
------------
The public NAS-Lung code names its models ``<prefix>[s1,s2,[...], [...], [...]]`` with prefix ``sp``
(A-Softmax head), ``cbam`` (CBAM), ``spcbam`` (both) or no prefix (plain: linear head, no CBAM), e.g.
``spcbam[4,4,[8, 8, 8], [16, 16, 16], [32, 32]]``. :meth:`ArchSpec.parse` reads that form; for the bare list
form (no prefix) the flags come from its keyword arguments. An explicit prefix wins over the keyword
arguments (``none``/``plain`` are accepted as explicit "plain" prefixes). :meth:`ArchSpec.ref_string`
writes the reference form back, character for character as the reference code formats it.

A ``reference``-block spec is written with the marker ``ref-`` in front of that form
(``ref-spcbam[4,4,[4, 4], [4, 8], [8, 8]]``, ``ref-[...]`` for a plain one); :meth:`ArchSpec.parse` reads the
marker back (``ref:`` is accepted too). Without the marker the block comes from the ``block`` keyword
(default ``"paper"``), so every existing string keeps its meaning.

Identity
--------
:attr:`ArchSpec.spec_id` is ``"m1-"`` + the first 10 hex digits of the SHA-1 of the canonical JSON
(sorted keys, no whitespace) of :meth:`ArchSpec.to_dict`, so it is stable across processes and machines and
changes with any width or flag. ``to_dict`` leaves ``block`` out for the default ``"paper"`` (so the ids of
paper specs are the ones they had before the field existed) and writes ``"block": "reference"`` otherwise.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, get_args

import yaml

from naslung.params import HEADS, Block  # allowed ``head`` / ``block`` values (spelt once in naslung.params)

BLOCKS: tuple[str, ...] = get_args(Block)
DEFAULT_BLOCK = "paper"
REFERENCE_MARKER = "ref-"
"""Written in front of the reference string of a ``block="reference"`` spec."""

MAX_WIDTH = 4096
"""Sanity bound on any channel width (the reference models use at most 512)."""

_PREFIX_FLAGS: dict[str, tuple[bool, str]] = {
    "spcbam": (True, "asoftmax"),
    "sp": (False, "asoftmax"),
    "cbam": (True, "linear"),
    "none": (False, "linear"),
    "plain": (False, "linear"),
}
_STRING_RE = re.compile(r"^\s*(?:(ref)\s*[-:]\s*)?([A-Za-z]*)\s*(\[.*\])\s*$", re.DOTALL | re.IGNORECASE)
_STAGE_NAMES = ("stage 3", "stage 4", "stage 5")


class SpecError(ValueError):
    """An architecture spec (string, mapping or fields) is malformed; the message says what and where."""


def _check_width(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}: width must be an integer, got {value!r}")
    if value <= 0:
        raise SpecError(f"{where}: width must be > 0, got {value}")
    if value > MAX_WIDTH:
        raise SpecError(f"{where}: width {value} exceeds the sanity bound {MAX_WIDTH}")
    return int(value)


@dataclass(frozen=True)
class ArchSpec:
    """One NASLung architecture.

    Attributes:
        stem: output channels of stage 1 and stage 2 (one 3x3x3 conv each, stride 1, 32^3 voxels).
        stages: output channels of each residual block of stages 3, 4, 5 (first block of each stage has
            stride 2, so the maps are 16^3, 8^3, 4^3 voxels for a 32^3 input).
        cbam: CBAM attention after stages 2, 3, 4 and 5.
        head: ``"linear"`` (softmax over a linear layer) or ``"asoftmax"`` (SphereFace AngleLinear).
        block: ``"paper"`` (stride-2 first block per stage, identity/projection shortcut, ReLU after the sum)
            or ``"reference"`` (a separate stride-2 conv per stage, stride-1 blocks with an always-present
            1x1x1 shortcut and no ReLU after the sum, softmax CBAM); see :mod:`naslung.models.blocks`.

    Lists are accepted for ``stem``/``stages`` and normalised to tuples; every field is validated.
    """

    stem: tuple[int, int]
    stages: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    cbam: bool = False
    head: str = "linear"
    block: str = DEFAULT_BLOCK

    def __post_init__(self) -> None:
        stem = self.stem
        if isinstance(stem, (str, bytes)) or not hasattr(stem, "__len__") or len(stem) != 2:
            raise SpecError(f"stem must hold exactly 2 widths (stage 1, stage 2), got {stem!r}")
        stem_t = (_check_width(stem[0], "stem (stage 1)"), _check_width(stem[1], "stem (stage 2)"))
        stages = self.stages
        if isinstance(stages, (str, bytes)) or not hasattr(stages, "__len__") or len(stages) != 3:
            raise SpecError(f"stages must hold exactly 3 lists (stages 3, 4, 5), got {stages!r}")
        stages_t: list[tuple[int, ...]] = []
        for name, stage in zip(_STAGE_NAMES, stages):
            if isinstance(stage, (str, bytes, int)) or not hasattr(stage, "__len__"):
                raise SpecError(f"{name}: expected a list of widths, got {stage!r}")
            if len(stage) == 0:
                raise SpecError(f"{name}: empty stage (each of stages 3-5 needs at least one residual block)")
            stages_t.append(tuple(_check_width(w, f"{name} block {i + 1}") for i, w in enumerate(stage)))
        if not isinstance(self.cbam, bool):
            raise SpecError(f"cbam must be a bool, got {self.cbam!r}")
        if self.head not in HEADS:
            raise SpecError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.block not in BLOCKS:
            raise SpecError(f"block must be one of {BLOCKS}, got {self.block!r}")
        object.__setattr__(self, "stem", stem_t)
        object.__setattr__(self, "stages", tuple(stages_t))

    # ----------------------------------------------------------------- derived
    @property
    def depths(self) -> tuple[int, int, int]:
        """(L, M, N): number of residual blocks in stages 3, 4, 5."""
        return (len(self.stages[0]), len(self.stages[1]), len(self.stages[2]))

    @property
    def n_blocks(self) -> int:
        """Residual blocks in stages 3-5 together."""
        return sum(self.depths)

    @property
    def out_channels(self) -> int:
        """Width C of the penultimate features (last block of stage 5)."""
        return self.stages[2][-1]

    @property
    def spec_id(self) -> str:
        """Short stable id: ``m1-`` + 10 hex digits of SHA-1 of the canonical JSON."""
        return "m1-" + hashlib.sha1(self.canonical_json().encode("utf-8")).hexdigest()[:10]

    # ----------------------------------------------------------------- plain data
    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-safe mapping: ``{"stem": [..], "stages": [[..], [..], [..]], "cbam": .., "head": ..}``,
        plus ``"block": "reference"`` for a reference-block spec (a paper spec has no ``block`` key)."""
        d: dict[str, Any] = {
            "stem": list(self.stem),
            "stages": [list(s) for s in self.stages],
            "cbam": self.cbam,
            "head": self.head,
        }
        if self.block != DEFAULT_BLOCK:
            d["block"] = self.block
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        """Inverse of :meth:`to_dict`; unknown or missing keys are an error."""
        if not isinstance(data, dict):
            raise SpecError(f"spec mapping expected, got {type(data).__name__}")
        keys = {"stem", "stages", "cbam", "head", "block"}
        unknown = sorted(set(data) - keys)
        if unknown:
            raise SpecError(f"unknown spec key(s) {unknown}; allowed {sorted(keys)}")
        missing = sorted({"stem", "stages"} - set(data))
        if missing:
            raise SpecError(f"spec mapping lacks key(s) {missing}")
        return cls(
            stem=data["stem"],
            stages=data["stages"],
            cbam=data.get("cbam", False),
            head=data.get("head", "linear"),
            block=data.get("block", DEFAULT_BLOCK),
        )

    def canonical_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace) hashed by :attr:`spec_id`."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"spec JSON is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    @classmethod
    def from_yaml(cls, text: str) -> ArchSpec:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"spec YAML is not valid YAML: {exc}") from exc
        return cls.from_dict(data)

    # ----------------------------------------------------------------- reference strings
    def list_string(self) -> str:
        """Bare list form as the reference code writes it: ``[4,4,[8, 8, 8], [16, 16, 16], [32, 32]]``."""
        stages = ", ".join("[" + ", ".join(str(w) for w in s) + "]" for s in self.stages)
        return f"[{self.stem[0]},{self.stem[1]},{stages}]"

    def ref_string(self) -> str:
        """Reference form with its prefix (``sp``/``cbam``/``spcbam``; none for plain), after ``ref-`` for a
        reference-block spec."""
        prefix = ("sp" if self.head == "asoftmax" else "") + ("cbam" if self.cbam else "")
        marker = REFERENCE_MARKER if self.block == "reference" else ""
        return marker + prefix + self.list_string()

    def __str__(self) -> str:
        return self.ref_string()

    @classmethod
    def parse(cls, text: str, cbam: bool | None = None, head: str | None = None, block: str | None = None) -> ArchSpec:
        """Parse the reference string form or the bare list form.

        ``spcbam[...]``/``sp[...]``/``cbam[...]``/``none[...]`` fix both flags (the prefix wins over
        ``cbam``/``head``). For a bare ``[...]`` the flags come from ``cbam`` (default False) and ``head``
        (default ``"linear"``), so the reference code's unprefixed names parse as plain models. A leading
        ``ref-`` (or ``ref:``) marker fixes ``block="reference"``; without it the block is ``block``
        (default ``"paper"``).
        """
        if not isinstance(text, str):
            raise SpecError(f"spec string expected, got {type(text).__name__}: {text!r}")
        m = _STRING_RE.match(text)
        if not m:
            raise SpecError(f"spec {text!r}: expected '<prefix>[s1, s2, [..], [..], [..]]'")
        marker, prefix, body = m.group(1), m.group(2).lower(), m.group(3)
        block_v = "reference" if marker else (DEFAULT_BLOCK if block is None else block)
        if prefix:
            if prefix not in _PREFIX_FLAGS:
                raise SpecError(f"spec {text!r}: unknown prefix {prefix!r}; allowed {sorted(_PREFIX_FLAGS)}")
            cbam_v, head_v = _PREFIX_FLAGS[prefix]
        else:
            cbam_v = False if cbam is None else bool(cbam)
            head_v = "linear" if head is None else head
        try:
            value = ast.literal_eval(body)
        except (ValueError, SyntaxError) as exc:
            raise SpecError(f"spec {text!r}: list part is not a literal list ({exc})") from exc
        if not isinstance(value, list) or len(value) != 5:
            raise SpecError(
                f"spec {text!r}: expected 5 items [stage1, stage2, [stage3], [stage4], [stage5]], "
                f"got {len(value) if isinstance(value, list) else type(value).__name__}"
            )
        try:
            return cls(
                stem=(value[0], value[1]),
                stages=(value[2], value[3], value[4]),
                cbam=cbam_v,
                head=head_v,
                block=block_v,
            )
        except SpecError as exc:
            raise SpecError(f"spec {text!r}: {exc}") from None

    @classmethod
    def coerce(cls, value: ArchSpec | str | dict[str, Any], **flags: Any) -> ArchSpec:
        """ArchSpec from an ArchSpec, a spec string (see :meth:`parse`) or a :meth:`to_dict` mapping."""
        if isinstance(value, ArchSpec):
            return value
        if isinstance(value, str):
            return cls.parse(value, **flags)
        return cls.from_dict(value)
