"""``naslung search``: the architecture search (POP or DNAS, ``search.strategy``) as the Prefect flow
``search`` (resumable, tracked in MLflow)."""

from __future__ import annotations

import argparse
from typing import get_args

from naslung.commands import params_of
from naslung.params import SEARCH_STRATEGIES, Runner


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "search",
        help="architecture search: Partial Order Pruning or DNAS (Prefect flow, MLflow runs)",
        description=(
            "Search the score/latency Pareto front with the strategy of search.strategy (or --strategy): "
            "pop = Partial Order Pruning over NASLung nets, dnas = differentiable search over MBConv nets "
            "(params section dnas) whose derived architectures are retrained from scratch. Every model trains "
            "on the training folds for a fixed number of epochs and its final weights are scored "
            "(search.objective, with a bootstrap interval) on the pooled validation folds (search.val_folds; "
            "never the test fold). Re-running with the same --search-id (default: a hash of the configuration "
            "and of the data) resumes a killed search without retraining finished models. Writes front.json, "
            "selected.json, pareto.png and summary.json into search.out_dir (or --out-dir)."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``naslung search``."""
    parser.add_argument("--strategy", choices=SEARCH_STRATEGIES, help="search strategy (default: search.strategy)")
    parser.add_argument("--budget", type=int, help="POP: most candidates to train (default: search.budget)")
    parser.add_argument("--epochs", type=int, help="POP: training epochs per candidate (default: search.epochs)")
    parser.add_argument("--runner", choices=get_args(Runner), help="task runner (default: search.runner)")
    parser.add_argument("--batch-size", type=int, help="candidates per iteration (default: search.batch_size)")
    parser.add_argument("--dask-address", help="existing Dask scheduler, e.g. tcp://host:8786 (implies --runner dask)")
    parser.add_argument("--search-id", help="search id; the same id resumes (default: hash of the configuration)")
    parser.add_argument("--artifacts", help="patch store folder (default: paths.artifacts)")
    parser.add_argument("--out-dir", help="output folder (default: search.out_dir)")
    parser.add_argument("--quiet", action="store_true", help="no per-iteration progress lines")


def _score(summary: dict) -> str:
    """``validation auc 0.871 [0.742, 0.968]`` from a search summary."""
    s, lo, hi = (summary.get(k) for k in ("best_score", "best_score_low", "best_score_high"))
    if s is None:
        return "no score"
    interval = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    return f"validation {summary.get('objective', 'score')} {s:.3f}{interval}"


def run(args: argparse.Namespace) -> int:
    """Handler of ``naslung search``."""
    params = params_of(
        args,
        {
            "search.budget": args.budget,
            "search.epochs": args.epochs,
            "search.runner": "dask" if args.dask_address else args.runner,
            "search.batch_size": args.batch_size,
            "search.dask_address": args.dask_address,
            "search.strategy": getattr(args, "strategy", None),
        },
    )

    from flows.search import run_search

    summary = run_search(params, args.search_id, args.artifacts, args.out_dir, progress=not args.quiet)
    if summary.get("strategy") == "dnas":
        print(
            f"dnas: derived {summary['trained']} (reused {summary['reused']})  front {summary['front_size']}  "
            f"selected {summary['selected']}  best {summary['best_spec']} ({_score(summary)})  "
            f"wall {summary['wall_seconds']:.1f} s  search id {summary['search_id']}"
        )
        return 0
    print(
        f"space {summary['space_size']:,}  trained {summary['trained']}  pruned {summary['pruned']}  "
        f"front {summary['front_size']}  fraction trained {summary['fraction_trained']:.6f}  "
        f"best {summary.get('best_spec')} ({_score(summary)})  selected {summary.get('selected')} "
        f"({summary.get('selected_untrained', 0)} untrained neighbours)  "
        f"wall {summary['wall_seconds']:.1f} s  search id {summary['search_id']}"
    )
    return 0
