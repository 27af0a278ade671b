"""CLI areas: each module adds its subcommands with ``add_parsers(sub)``; ``naslung.cli`` loads them all.

Every handler gets its configuration from :func:`params_of`: the ``--params`` file, then each global
``--set section.key=value`` in command-line order, then the command's own shorthand flags
(``naslung search --budget 3`` is ``--set search.budget=3``), all validated by the schema of
:mod:`naslung.params`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from naslung.params import Params

AREAS: tuple[str, ...] = ("data", "validate", "train", "search", "ensemble", "serve", "explain", "protocol")


def params_of(args: argparse.Namespace, shorthands: Mapping[str, Any] | None = None) -> Params:
    """The run's :class:`~naslung.params.Params`: ``args.params`` with ``args.overrides`` (the ``--set``
    items) on top, then ``shorthands`` (dotted key -> flag value; None = flag not given, key left alone)."""
    from naslung.params import load_params

    params = load_params(args.params, overrides=getattr(args, "overrides", None) or None)
    return params.with_overrides(shorthands, drop_none=True) if shorthands else params
