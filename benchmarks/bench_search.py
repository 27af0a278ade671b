"""Benchmark of the POP search: fraction of the space trained, wall time per trained candidate, and
pruning versus random search (the same sampler without pruning) with the same number of trained candidates.

Modes:

* ``--mode real`` (default): real training (``naslung.search.candidate.train_candidate``, ``--epochs``
  fixed epochs, scored by ``search.objective`` on the pooled ``search.val_folds`` validation folds) on the
  patch store at ``--artifacts`` (default ``paths.artifacts``) with the latency source of params
  (``--latency flops`` for a deterministic one) and the search's latency tolerance
  (:func:`naslung.search.candidate.latency_tolerance`). Both searches share one result cache, so an
  architecture both pick is trained once. No Prefect/MLflow overhead (see flows/search.py).
* ``--mode proxy``: PROXY OBJECTIVES, NOT TRAINING — the score is a made-up monotone function of depth and
  width, latency the FLOPs formula; shows how pruning behaves with bigger budgets in seconds.

"Front members found" = how many of a method's trained candidates lie on the Pareto front of everything
either method trained (the best front known to the benchmark, with the same latency tolerance).

    .venv/bin/python benchmarks/bench_search.py --budget 12 --epochs 2
    .venv/bin/python benchmarks/bench_search.py --mode proxy --budget 200
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from naslung.params import load_params
from naslung.search.pop import Evaluated, PopResult, pareto_front, run_pop
from naslung.search.space import SearchSpace, Stages, size_table


def _proxy_objectives(space: SearchSpace):
    acc_w, lat_w = (0.02, 0.03, 0.05), (8.0, 1.0, 0.125)

    def acc(s: Stages) -> float:
        return 0.5 + sum(a * math.log2(w) for a, st in zip(acc_w, s) for w in st) / 20

    def lat(s: Stages) -> float:
        return sum(r * w * w / 16 for r, st in zip(lat_w, s) for w in st)

    return acc, lat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--mode", choices=["real", "proxy"], default="real")
    ap.add_argument("--budget", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=1, help="repeat with seeds seed..seed+n-1")
    ap.add_argument("--latency", choices=["measured", "flops"], help="override search.latency_source")
    ap.add_argument("--artifacts", help="patch store (default: paths.artifacts)")
    args = ap.parse_args(argv)

    params = load_params(args.params).with_overrides(
        {"search.epochs": args.epochs, "search.budget": args.budget, "search.latency_source": args.latency},
        drop_none=True,
    )
    sp = params.search
    space = SearchSpace.from_params(sp, cbam=params.model.cbam, head=params.model.head)
    size = space.size()
    print(
        f"space sizes (widths {list(space.widths)}, stem {list(space.stem)}, {sp.min_blocks}..{sp.max_blocks} blocks):"
    )
    for row in size_table(space.widths, space.stem, sp.min_blocks, sp.max_blocks):
        print(f"  monotone={row['monotone']!s:5}  depth_rule={row['depth_rule']!s:5}  {row['size']:>13,}")
    print(f"searched space: {size:,} members (monotone={sp.monotone}, depth_rule={sp.depth_rule})")

    from naslung.search.candidate import latency_tolerance

    cache: dict[Stages, Evaluated] = {}
    train_seconds: list[float] = []
    lat_cache: dict[Stages, float] = {}
    tol = latency_tolerance(sp) if args.mode == "real" else 0.0
    if args.mode == "proxy":
        print("MODE: PROXY objectives (no training; the score is a synthetic function of the architecture)")
        acc, lat = _proxy_objectives(space)

        def latency_of(s: Stages) -> float:
            return lat(s)

        def evaluate(batch: list[Stages]) -> list[Evaluated]:
            return [Evaluated(s, acc(s), lat(s)) for s in batch]
    else:
        import torch

        from naslung.search.candidate import load_dev, spec_latency, train_candidate
        from naslung.train.loop import resolve_device

        torch.set_num_threads(max(1, params.train.num_threads))
        artifacts = args.artifacts or params.paths.artifacts
        dev = load_dev(str(artifacts), params.prepare.n_folds, sp.fold, params.seed, sp.val_folds)
        device = resolve_device(params.train.device)
        print(
            f"MODE: REAL training, {sp.epochs} epoch(s) per candidate, {len(dev.train[1])} train / "
            f"{len(dev.val[1])} validation nodules ({sp.val_folds} folds pooled), objective {sp.objective}, "
            f"latency source {sp.latency_source} on {device} ({params.train.num_threads} threads, "
            f"tolerance {tol:g})"
        )

        def latency_of(s: Stages) -> float:
            if s not in lat_cache:
                lat_cache[s] = spec_latency(
                    space.to_spec(s), sp, params.latency, device, params.model.margin_m, params.train.num_threads
                )[0]
            return lat_cache[s]

        def evaluate(batch: list[Stages]) -> list[Evaluated]:
            out = []
            for s in batch:
                if s not in cache:
                    t0 = time.perf_counter()
                    rec = train_candidate(space.to_spec(s), dev, params, latency_of(s))
                    train_seconds.append(time.perf_counter() - t0)
                    cache[s] = rec.to_evaluated()
                out.append(cache[s])
            return out

    for seed in range(params.seed, params.seed + args.seeds):
        t0 = time.perf_counter()
        pop = run_pop(space, evaluate, latency_of, budget=sp.budget, patience=10**9, seed=seed, latency_tolerance=tol)
        t_pop = time.perf_counter() - t0
        rnd = run_pop(
            space, evaluate, latency_of, budget=sp.budget, patience=10**9, seed=seed, prune=False, latency_tolerance=tol
        )
        both = {e.stages: e for e in pop.trained + rnd.trained}
        best = {e.stages for e in pareto_front(both.values(), tol)}

        def found(res: PopResult, best: set = best) -> int:
            return sum(e.stages in best for e in res.trained)

        print(f"\nseed {seed}: trained {len(pop.trained)} of {size:,} = {len(pop.trained) / size:.6%} of the space")
        print(
            f"  POP   : pruned {len(pop.pruned)} sampled candidates without training; front {len(pop.front)}; "
            f"members of the joint front found: {found(pop)} / {len(best)}"
        )
        print(f"  random: front {len(rnd.front)}; members of the joint front found: {found(rnd)} / {len(best)}")
        print(f"  POP wall time {t_pop:.1f} s ({t_pop / len(pop.trained):.2f} s per trained candidate, incl. latency)")
    if train_seconds:
        print(
            f"\nreal training: {len(train_seconds)} distinct candidates, "
            f"{sum(train_seconds) / len(train_seconds):.2f} s per trained candidate (mean wall time)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
