"""Choose k architectures for the ensemble from the search results: Pareto layers first, diverse within a layer.

Candidates are taken layer by layer (non-dominated sorting: the Pareto front, then the front of the
rest, ...). When a layer holds more than the places left, places are filled by greedy farthest-point
selection in a normalised descriptor space — log2 latency, accuracy, the three stage depths and the log2
mean width of each stage — starting from the most accurate member of that layer. So the chosen members
spread along the accuracy/latency curve and differ in shape, not only in one width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from naslung.search.pop import Evaluated, nondominated_layers


def descriptor(e: Evaluated) -> tuple[float, ...]:
    depths = [float(len(st)) for st in e.stages]
    widths = [math.log2(sum(st) / len(st)) for st in e.stages]
    return (math.log2(max(e.latency, 1e-12)), e.accuracy, *depths, *widths)


def _normalised(items: Sequence[Evaluated]) -> list[tuple[float, ...]]:
    raw = [descriptor(e) for e in items]
    lo = [min(c) for c in zip(*raw)]
    hi = [max(c) for c in zip(*raw)]
    return [tuple((v - a) / (b - a) if b > a else 0.0 for v, a, b in zip(r, lo, hi)) for r in raw]


def diverse_subset(items: Sequence[Evaluated], k: int, already: Sequence[Evaluated] = ()) -> list[Evaluated]:
    """Greedy max-min distance choice of ``k`` of ``items`` (deterministic; ties by accuracy then stages)."""
    if k >= len(items):
        return list(items)
    pool = list(already) + list(items)
    vecs = dict(zip((e.stages for e in pool), _normalised(pool)))
    chosen: list[Evaluated] = list(already)
    left = sorted(items, key=lambda e: (-e.accuracy, e.latency, e.stages))
    picked: list[Evaluated] = []
    if not chosen:
        picked.append(left.pop(0))
    while len(picked) < k:
        ref = chosen + picked

        def score(e: Evaluated) -> tuple[float, float, float]:
            d = min(math.dist(vecs[e.stages], vecs[r.stages]) for r in ref)  # noqa: B023
            return (d, e.accuracy, -e.latency)

        best = max(left, key=score)
        left.remove(best)
        picked.append(best)
    return picked


def select_k(trained: Sequence[Evaluated], k: int) -> list[Evaluated]:
    """``k`` architectures (fewer only when fewer were trained): front first, then the next layers."""
    if k < 1:
        raise ValueError(f"select_k: k must be >= 1, got {k}")
    chosen: list[Evaluated] = []
    for layer in nondominated_layers(trained):
        room = k - len(chosen)
        if room <= 0:
            break
        chosen.extend(diverse_subset(layer, room, already=chosen))
    return sorted(chosen, key=lambda e: (e.latency, -e.accuracy, e.stages))
