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

POP's saving (issue 15, part 6): POP runs its whole ``--budget``; its front is *final* after the candidate
whose training last changed it (``pop_front_final_at`` trained candidates). The unpruned random search (same
seed, so the same draws: every candidate POP pruned is trained instead) runs up to ``--random-budget`` and
the benchmark reports how many candidates it needs until it has

* ``same``: trained every architecture of POP's final front (``random_needs_same``), and
* ``as good``: for every member of POP's final front, trained that one or one at least as good (score no
  lower, not slower beyond the latency tolerance) (``random_needs_as_good``);

the saving is ``pop_front_final_at / random_needs_*``. Random trains one candidate more at a time until
it has found the front both ways (``--random-full``: its whole budget). When random does not get there
within its budget the benchmark says so and gives the share of POP's front it found, also with as many
candidates as POP trained.
``pop_front_dominated_by_pruned`` counts POP front members strictly dominated by a candidate POP pruned
(random trains it): pruning mistakes, possible with real training since POP's order assumption is only a
heuristic. ``--json FILE`` writes every figure.

    .venv/bin/python benchmarks/bench_search.py --budget 12 --epochs 2
    .venv/bin/python benchmarks/bench_search.py --mode proxy --budget 200
    .venv/bin/python benchmarks/bench_search.py --budget 16 --random-budget 48 --epochs 2 --latency flops \
        --artifacts /tmp/lidc/artifacts --json /tmp/pop-saving.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from naslung.params import load_params
from naslung.search.pop import Evaluated, PopResult, dominates, faster, pareto_front, run_pop
from naslung.search.space import SearchSpace, Stages, size_table


def _proxy_objectives(space: SearchSpace):
    acc_w, lat_w = (0.02, 0.03, 0.05), (8.0, 1.0, 0.125)

    def acc(s: Stages) -> float:
        return 0.5 + sum(a * math.log2(w) for a, st in zip(acc_w, s) for w in st) / 20

    def lat(s: Stages) -> float:
        return sum(r * w * w / 16 for r, st in zip(lat_w, s) for w in st)

    return acc, lat


def at_least_as_good(r: Evaluated, p: Evaluated, tol: float) -> bool:
    """``r`` scores no lower than ``p`` and is not slower beyond the latency tolerance."""
    return r.score >= p.score and not faster(p.latency, r.latency, tol)


def saving(pop: PopResult, rnd: PopResult, tol: float) -> dict:
    """POP's saving against the unpruned random search (module docstring): counts, shares and ratios."""
    front = pop.front
    changes = [log.trained for log in pop.iterations if log.front_changed]
    final_at = changes[-1] if changes else len(pop.trained)
    n_rnd = len(rnd.trained)

    def first(hit) -> list[int | None]:  # per POP front member: random candidates trained until the first hit
        out: list[int | None] = []
        for p in front:
            k = next((i + 1 for i, r in enumerate(rnd.trained) if hit(r, p)), None)
            out.append(k)
        return out

    same = first(lambda r, p: r.stages == p.stages)
    good = first(lambda r, p: at_least_as_good(r, p, tol))

    def needs(ks: list[int | None]) -> int | None:
        return None if any(k is None for k in ks) else max(ks, default=0)  # type: ignore[type-var]

    def share(ks: list[int | None], k: int) -> float:
        return sum(x is not None and x <= k for x in ks) / max(len(ks), 1)

    out = {
        "pop_trained": len(pop.trained),
        "pop_pruned": len(pop.pruned),
        "pop_front_size": len(front),
        "pop_front_final_at": final_at,
        "pop_front": [
            {"stages": str(list(map(list, e.stages))), "score": e.score, "latency": e.latency} for e in front
        ],
        "random_trained": n_rnd,
        "pop_front_dominated_by_pruned": sum(
            any(dominates(r, p, tol) for r in rnd.trained if r.stages in pop.pruned) for p in front
        ),
    }
    for name, ks in (("same", same), ("as_good", good)):
        need = needs(ks)
        out[f"random_needs_{name}"] = need
        out[f"saving_{name}"] = None if need is None else final_at / need
        out[f"random_share_{name}_at_pop_final"] = share(ks, final_at)
        out[f"random_share_{name}_at_pop_trained"] = share(ks, len(pop.trained))
        out[f"random_share_{name}_at_random_trained"] = share(ks, n_rnd)
    return out


def _print_saving(sv: dict) -> None:
    print(
        f"  saving: POP's front ({sv['pop_front_size']} members) was final after {sv['pop_front_final_at']} "
        f"trained candidates (of {sv['pop_trained']} trained, {sv['pop_pruned']} pruned)"
    )
    for name, what in (("same", "the same front"), ("as_good", "a front at least as good")):
        need = sv[f"random_needs_{name}"]
        shares = (
            f"share found with {sv['pop_front_final_at']} / {sv['pop_trained']} / {sv['random_trained']} trained: "
            f"{sv[f'random_share_{name}_at_pop_final']:.0%} / {sv[f'random_share_{name}_at_pop_trained']:.0%} / "
            f"{sv[f'random_share_{name}_at_random_trained']:.0%}"
        )
        if need is None:
            print(f"    random did NOT find {what} within its budget of {sv['random_trained']}; {shares}")
        else:
            print(
                f"    random needed {need} trained candidates for {what}: POP / random = "
                f"{sv['pop_front_final_at']} / {need} = {sv[f'saving_{name}']:.2f}; {shares}"
            )
    print(
        f"    POP front members strictly dominated by a candidate POP pruned (trained by random): "
        f"{sv['pop_front_dominated_by_pruned']}"
    )


def _progress(name: str, t0: float):
    shown = [0]

    def show(log, result: PopResult) -> None:  # one line per newly trained candidate (re-runs stay quiet)
        if log.trained <= shown[0]:
            return
        shown[0] = log.trained
        e = result.trained[-1]
        print(
            f"  [{name}] {time.perf_counter() - t0:7.1f} s  trained {log.trained:3d}  pruned {log.pruned:3d}  "
            f"front {log.front_size}  last score {e.score:.3f} latency {e.latency:.1f}",
            file=sys.stderr,
            flush=True,
        )

    return show


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--mode", choices=["real", "proxy"], default="real")
    ap.add_argument("--budget", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=1, help="repeat with seeds seed..seed+n-1")
    ap.add_argument("--latency", choices=["measured", "flops"], help="override search.latency_source")
    ap.add_argument("--artifacts", help="patch store (default: paths.artifacts)")
    ap.add_argument(
        "--random-budget", type=int, help="most candidates the unpruned random search trains (default: 3 x budget)"
    )
    ap.add_argument(
        "--random-full",
        action="store_true",
        help="train the random search's whole --random-budget (default: stop once it has found POP's front)",
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--json", help="write the figures (per seed) to this JSON file")
    args = ap.parse_args(argv)

    params = load_params(args.params, overrides=args.overrides or None).with_overrides(
        {"search.epochs": args.epochs, "search.budget": args.budget, "search.latency_source": args.latency},
        drop_none=True,
    )
    random_budget = args.random_budget or 3 * params.search.budget
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

    report: dict = {"mode": args.mode, "budget": sp.budget, "random_budget": random_budget, "seeds": []}
    t_start = time.perf_counter()
    for seed in range(params.seed, params.seed + args.seeds):
        t0 = time.perf_counter()
        pop = run_pop(
            space,
            evaluate,
            latency_of,
            budget=sp.budget,
            patience=10**9,
            seed=seed,
            latency_tolerance=tol,
            on_iteration=_progress("POP", t0) if args.mode == "real" else None,
        )
        t_pop = time.perf_counter() - t0
        # Random search, one more candidate at a time (a seeded prefix of the same run; trained ones come from
        # the cache) from POP's count until it has found POP's front both ways, or up to --random-budget.
        show = _progress("random", time.perf_counter()) if args.mode == "real" else None
        k = min(len(pop.trained), random_budget) if not args.random_full else random_budget
        while True:
            rnd = run_pop(
                space,
                evaluate,
                latency_of,
                budget=k,
                patience=10**9,
                seed=seed,
                prune=False,
                latency_tolerance=tol,
                on_iteration=show,
            )
            sv = saving(pop, rnd, tol)
            done = sv["random_needs_same"] is not None and sv["random_needs_as_good"] is not None
            if done or k >= random_budget or rnd.stop_reason == "exhausted":
                break
            k += 1
        rnd_same_n = PopResult(
            rnd.trained[: len(pop.trained)], [], {}, [], "", 0, {}, [], tol
        )  # random with as many trained as POP
        rnd_same_n.front = pareto_front(rnd_same_n.trained, tol)
        both = {e.stages: e for e in pop.trained + rnd_same_n.trained}
        best = {e.stages for e in pareto_front(both.values(), tol)}

        def found(res: PopResult, best: set = best) -> int:
            return sum(e.stages in best for e in res.trained)

        print(f"\nseed {seed}: trained {len(pop.trained)} of {size:,} = {len(pop.trained) / size:.6%} of the space")
        print(
            f"  POP   : pruned {len(pop.pruned)} sampled candidates without training; front {len(pop.front)}; "
            f"members of the joint front found: {found(pop)} / {len(best)}"
        )
        print(
            f"  random: front {len(rnd_same_n.front)}; members of the joint front found: {found(rnd_same_n)} / "
            f"{len(best)} (first {len(rnd_same_n.trained)} trained)"
        )
        print(f"  POP wall time {t_pop:.1f} s ({t_pop / len(pop.trained):.2f} s per trained candidate, incl. latency)")
        _print_saving(sv)
        report["seeds"].append({"seed": seed, "pop_wall_seconds": t_pop, **sv})
    if train_seconds:
        print(
            f"\nreal training: {len(train_seconds)} distinct candidates, "
            f"{sum(train_seconds) / len(train_seconds):.2f} s per trained candidate (mean wall time)"
        )
        report["distinct_trained"] = len(train_seconds)
        report["train_seconds_mean"] = sum(train_seconds) / len(train_seconds)
    report["wall_seconds"] = time.perf_counter() - t_start
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
