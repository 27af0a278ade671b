"""``naslung validate``: Great Expectations checks on annotations, manifest and patches."""

from __future__ import annotations

import argparse
import sys

from naslung.commands import params_of


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "validate",
        help="validate annotations, patch manifest and patch array (Great Expectations)",
        description="Run the data-validation suites; exit 1 with a list of failures when any fails.",
    )
    parser.add_argument("--annotations", help="annotations table (default: params paths.annotations)")
    parser.add_argument("--artifacts", help="folder with manifest.csv and patches.npy (default: paths.artifacts)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from naslung.validation import format_failures, validate

    params = params_of(args, {"paths.annotations": args.annotations, "paths.artifacts": args.artifacts})
    result = validate(params)
    for name, suite in result["suites"].items():
        status = "passed" if suite["success"] else "FAILED"
        print(f"{name:12s} {status}  ({suite['n_expectations']} expectations, {suite['n_rows']} rows)")
    if not result["success"]:
        print("Data validation failed:\n" + format_failures(result), file=sys.stderr)
        return 1
    return 0
