"""``naslung`` command line: one entry point, one subcommand per pipeline step.

Step names are shared across the platform: the DVC stage, the CLI subcommand, the Prefect task and the
module that implements it carry the same name (``prepare``, ``validate``, ``search``, ``train`` ...).
Each area registers its subcommands in ``naslung/commands/<area>.py``; heavy imports happen inside the
handlers so ``naslung --help`` stays fast.

Global options, accepted before or after the subcommand: ``--params FILE`` and the repeatable
``--set SECTION.KEY=VALUE`` (the ``dvc exp run -S`` idiom; values are YAML, checked by the schema of
:mod:`naslung.params`), collected in command-line order into ``args.overrides`` for
:func:`naslung.commands.params_of`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from collections.abc import Sequence

from naslung.commands import AREAS
from naslung.errors import UserError

SET_HELP = (
    "override one parameter, e.g. --set search.budget=3 --set train.betas='[0.5, 0.9]' (repeatable, "
    "later wins; values are YAML; unknown keys are refused)"
)
_SET = "--set"
_SET_METAVAR = "SECTION.KEY=VALUE"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="naslung",
        description="NASLung: search, train, register and serve 3D CNNs for pulmonary nodule malignancy.",
    )
    parser.add_argument(
        "--params",
        default=os.environ.get("NASLUNG_PARAMS", "params.yaml"),
        help="parameter file (default: params.yaml or $NASLUNG_PARAMS)",
    )
    parser.add_argument(_SET, dest=_set_dest(0), action="append", default=[], metavar=_SET_METAVAR, help=SET_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for area in AREAS:
        try:
            module = importlib.import_module(f"naslung.commands.{area}")
        except ModuleNotFoundError as exc:  # an area not installed in this build
            if exc.name == f"naslung.commands.{area}":
                continue
            raise
        module.add_parsers(sub)
    _accept_params_anywhere(parser)
    return parser


def _set_dest(depth: int) -> str:
    """Namespace attribute of the ``--set`` items given at one subcommand depth (0: before COMMAND)."""
    return f"overrides_{depth}"


def _accept_params_anywhere(parser: argparse.ArgumentParser, depth: int = 1) -> None:
    """``--params`` and ``--set`` are also accepted after any subcommand (``naslung search --params p.yaml
    --set search.budget=3``). ``--params`` given there overrides the one before the subcommand, which keeps
    its default otherwise; ``--set`` items of every depth are kept (each depth has its own attribute, so a
    subcommand's namespace never replaces its parent's items) and joined by :func:`_overrides`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if not any("--params" in a.option_strings for a in child._actions):
                    child.add_argument("--params", default=argparse.SUPPRESS, help="parameter file (as before COMMAND)")
                if not any(_SET in a.option_strings for a in child._actions):
                    child.add_argument(
                        _SET,
                        dest=_set_dest(depth),
                        action="append",
                        default=argparse.SUPPRESS,
                        metavar=_SET_METAVAR,
                        help=SET_HELP,
                    )
                _accept_params_anywhere(child, depth + 1)


def _overrides(args: argparse.Namespace) -> list[str]:
    """Every ``--set`` item in command-line order (before COMMAND first, then each subcommand's)."""
    prefix = _set_dest(0)[:-1]
    depths = sorted(int(k[len(prefix) :]) for k in vars(args) if k.startswith(prefix) and k[len(prefix) :].isdigit())
    return [item for d in depths for item in getattr(args, _set_dest(d)) or []]


_DEFAULT_KEY = re.compile(r"\(default: (?:params )?([a-z_]+(?:\.[a-z_0-9]+)+)\)")


def show_param_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Help texts name their defaults as params keys (``(default: search.budget)``); add the value the
    run would use (``(default: search.budget = 6)``) from the ``--params`` file in ``argv`` (else the
    default file), or the schema's defaults when that file cannot be read."""
    from naslung.params import Params, load_params, to_dict

    path = os.environ.get("NASLUNG_PARAMS", "params.yaml")
    for i, a in enumerate(argv):
        if a == "--params" and i + 1 < len(argv):
            path = argv[i + 1]
        elif a.startswith("--params="):
            path = a.split("=", 1)[1]
    try:
        values = to_dict(load_params(path))
    except (OSError, ValueError):
        values = to_dict(Params())

    def value_of(key: str) -> str | None:
        node: object = values
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return json.dumps(node) if isinstance(node, (list, dict)) or node is None else str(node)

    def fill(match: re.Match[str]) -> str:
        v = value_of(match.group(1))
        return match.group(0) if v is None else f"(default: {match.group(1)} = {v})"

    def walk(p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            if action.help and action.help is not argparse.SUPPRESS:
                action.help = _DEFAULT_KEY.sub(fill, action.help)
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    walk(child)

    walk(parser)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        show_param_values(parser, argv)
    args = parser.parse_args(argv)
    args.overrides = _overrides(args)
    try:
        if args.overrides:  # a malformed, unknown or invalid --set fails before any work, whatever the command
            from naslung.params import load_params

            load_params(args.params, overrides=args.overrides)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, UserError) as exc:
        # User-facing errors (bad params, missing inputs, unreadable scans, no server) get one line, no traceback.
        print(f"naslung {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
