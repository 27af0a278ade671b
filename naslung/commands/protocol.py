"""``naslung protocol``: the paper's protocol end to end on a named parameter set (the Prefect flow ``protocol``,
:mod:`flows.protocol`), in its own folder ``runs/<set>/``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "protocol",
        help="the paper's protocol on a parameter set: synth -> prepare -> validate -> search -> train -> evaluate",
        description=(
            "Run the evaluation protocol as one Prefect flow on a named parameter set (a YAML file of "
            "SECTION.KEY: VALUE overrides, e.g. experiments/paper.yaml; --set items go on top): synthesize the "
            "set's data, cut patches, validate, search (search.*), train one member per selected spec and test "
            "fold (ensemble.folds), evaluate the ensemble against the diameter-only and voxel-statistics "
            "baselines with bootstrap intervals and paired tests. Everything is written under runs/<set>/ "
            "(or --out): its own data, patch store, search, ensemble and MLflow store, so the default pipeline's "
            "files are never touched; runs/<set>/protocol.json collects the figures, the search summary, the "
            "wall time and the device. A re-run reuses the synthesized data, the search (same search id) and "
            "the trained members."
        ),
    )
    parser.add_argument("--set-file", required=True, metavar="YAML", help="parameter set, e.g. experiments/paper.yaml")
    parser.add_argument("--name", help="set name (default: the file's stem); the run folder is runs/<name>")
    parser.add_argument("--out", help="run folder (default: runs/<name>)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``naslung protocol``."""
    from flows.protocol import protocol, read_set_file
    from naslung.params import load_params, parse_set

    name = args.name or Path(args.set_file).stem
    overrides = {**read_set_file(args.set_file), **parse_set(getattr(args, "overrides", None) or [])}
    load_params(args.params, overrides=overrides)  # a bad key or value fails here, before any flow run
    result = protocol(args.params, overrides, name, args.out)
    pooled = result["ensemble"]["pooled"]

    def fig(scorer: str, metric: str) -> str:
        iv = pooled[scorer][metric]
        return f"{iv['estimate']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]"

    s = result["search"]
    print(
        f"protocol {name}: search trained {s.get('trained')} (pruned {s.get('pruned')}, front {s.get('front_size')}); "
        f"{result['ensemble']['n_members']} members x folds {result['ensemble']['folds']}; pooled n={pooled['n']}: "
        f"AUC ensemble {fig('ensemble', 'auc')}, diameter {fig('diameter', 'auc')}, "
        f"voxel stats {fig('voxel_stats', 'auc')}; wall {result['wall_seconds']:.0f} s on {result['device']}"
    )
    print(json.dumps({"protocol_json": str(Path(args.out or Path("runs") / name) / "protocol.json")}))
    return 0
