"""One entry point for both model families: NASLung residual nets (:class:`ArchSpec`) and DNAS-derived
MBConv nets (:class:`DnasArch`).

Both spec kinds are plain data with the same surface (``spec_id``, ``to_dict``/``to_json``, ``ref_string``,
``head``, ``cbam``); they differ in their ``to_dict()`` form: a DNAS architecture carries ``"kind": "dnas"``,
an ``ArchSpec`` has no ``kind``. The functions here read either kind from what selection files, params and
saved ensembles hold, build its model and count its multiply-adds, so callers need no ``isinstance``.

Models: ``build(ArchSpec)`` -> :class:`~naslung.models.net.NASLungNet`, ``build(DnasArch)`` ->
:class:`~naslung.models.mbconv.DnasNet`; both take ``(N, 1, 32, 32, 32)`` float32 patches and return
``(N, 2)`` logits, and :func:`naslung.models.asoftmax.build_loss` picks the loss from ``spec.head``
(``DnasArch.head`` is ``"linear"``: cross-entropy).
"""

from __future__ import annotations

import json
from typing import Any

from torch import nn

from naslung.models.mbconv import DnasArch, DnasNet
from naslung.models.net import build_model
from naslung.models.spec import ArchSpec, SpecError

AnySpec = ArchSpec | DnasArch
"""A spec of either model family."""

DNAS_KIND = DnasArch.KIND


def is_dnas_dict(data: Any) -> bool:
    """True for a mapping in :meth:`DnasArch.to_dict` form (``"kind": "dnas"``)."""
    return isinstance(data, dict) and data.get("kind") == DNAS_KIND


def spec_from_dict(data: dict[str, Any]) -> AnySpec:
    """:class:`DnasArch` for ``{"kind": "dnas", ...}``, else :meth:`ArchSpec.from_dict` (strict both ways)."""
    if is_dnas_dict(data):
        return DnasArch.from_dict(data)
    if isinstance(data, dict) and "kind" in data:
        raise SpecError(f"unknown spec kind {data['kind']!r}; expected {DNAS_KIND!r} or no kind (ArchSpec)")
    return ArchSpec.from_dict(data)


def spec_from_json(text: str) -> AnySpec:
    """Inverse of ``spec.to_json()`` for either kind."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"spec JSON is not valid JSON: {exc}") from exc
    return spec_from_dict(data)


def parse_member_spec(
    entry: Any, cbam: bool | None = None, head: str | None = None, block: str | None = None
) -> AnySpec:
    """A member spec from what ``ensemble.specs`` or a selection file (``selected.json``) holds.

    * :class:`ArchSpec` / :class:`DnasArch`: returned as is;
    * a string: :meth:`ArchSpec.parse` (reference form ``spcbam[...]`` or bare list ``[...]``, whose flags come
      from ``cbam`` / ``head``; the block from a ``ref-`` marker, else ``block``, default ``"paper"``);
    * a list (a bare list already parsed from YAML/JSON): like its bare-list string;
    * a mapping with ``spec`` or ``arch`` (a search record): that entry, read recursively;
    * a mapping with ``"kind": "dnas"``: :meth:`DnasArch.from_dict`;
    * a mapping with a ``ref``/``ref_string`` string: parsed like a string;
    * any other mapping: :meth:`ArchSpec.from_dict`.

    Raises :class:`ValueError` (:class:`SpecError` for ArchSpec problems) on anything else.
    """
    if isinstance(entry, (ArchSpec, DnasArch)):
        return entry
    if isinstance(entry, str):
        return ArchSpec.parse(entry, cbam=cbam, head=head, block=block)
    if isinstance(entry, (list, tuple)):
        return ArchSpec.parse(json.dumps(list(entry)), cbam=cbam, head=head, block=block)
    if isinstance(entry, dict):
        for key in ("spec", "arch"):
            if key in entry:
                return parse_member_spec(entry[key], cbam=cbam, head=head, block=block)
        if is_dnas_dict(entry):
            return DnasArch.from_dict(entry)
        for key in ("ref", "ref_string"):
            if isinstance(entry.get(key), str):
                return ArchSpec.parse(entry[key], cbam=cbam, head=head, block=block)
        return spec_from_dict(entry)
    raise SpecError(f"a member spec must be a string, a list or a mapping, got {type(entry).__name__}: {entry!r}")


def build(spec: AnySpec, margin_m: int = 4) -> nn.Module:
    """The untrained model of ``spec`` (``margin_m`` only matters for an A-Softmax ``ArchSpec``).

    Seed with ``torch.manual_seed`` first for a deterministic init.
    """
    if isinstance(spec, DnasArch):
        return DnasNet(spec)
    if isinstance(spec, ArchSpec):
        return build_model(spec, margin_m=margin_m)
    raise TypeError(f"build: expected an ArchSpec or a DnasArch, got {type(spec).__name__}")


def spec_flops(spec: AnySpec, input_size: int = 32) -> int:
    """Multiply-adds per nodule of one ``input_size``^3 patch: analytic for an ``ArchSpec``
    (:func:`~naslung.models.complexity.count_flops`), hooks on a built model for a ``DnasArch``
    (:func:`~naslung.models.complexity.count_flops_hooks`; the two agree on ``NASLungNet``)."""
    from naslung.models.complexity import count_flops, count_flops_hooks

    if isinstance(spec, DnasArch):
        return count_flops_hooks(DnasNet(spec), input_size)
    return count_flops(spec, input_size)


def spec_summary(spec: AnySpec) -> dict[str, Any]:
    """Flat, loggable description of a spec (MLflow params): kind plus the architecture fields."""
    if isinstance(spec, DnasArch):
        return {"spec_kind": DNAS_KIND, "spec_ops": list(spec.ops), "spec_space": spec.space.to_dict()}
    return {"spec_stem": list(spec.stem), "spec_stages": [list(s) for s in spec.stages], "spec_block": spec.block}
