"""``naslung`` command line: one entry point, one subcommand per pipeline step.

Step names are shared across the platform: the DVC stage, the CLI subcommand, the Prefect task and the
module that implements it carry the same name (``prepare``, ``validate``, ``search``, ``train`` ...).
Each area registers its subcommands in ``naslung/commands/<area>.py``; heavy imports happen inside the
handlers so ``naslung --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from naslung.commands import AREAS


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


def _accept_params_anywhere(parser: argparse.ArgumentParser) -> None:
    """``--params`` is also accepted after any subcommand (``naslung search --params p.yaml``); given there,
    it overrides the one before the subcommand, which keeps its default otherwise."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if not any("--params" in a.option_strings for a in child._actions):
                    child.add_argument("--params", default=argparse.SUPPRESS, help="parameter file (as before COMMAND)")
                _accept_params_anywhere(child)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as exc:
        # User-facing errors (bad params, missing inputs) get one clear line, not a traceback.
        print(f"naslung {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
