"""The score/latency Pareto front and the choice of k ensemble members, for both search strategies.

Objectives: maximise the validation ``score`` (``search.objective`` on the pooled validation folds: ROC AUC or
balanced accuracy, in [0, 1]; see :mod:`naslung.search.objective`), minimise ``latency`` (one unit per
search: ms per nodule or M multiply-adds per nodule).

Latency tolerance. Measured latencies spread by tens of % under load, so "faster" is taken with a relative
tolerance ``t`` (``search.latency_tolerance`` for measured latencies; 0 for FLOPs, which are exact):
``b`` is *faster* than ``a`` only when ``lat(b) < lat(a) * (1 - t)`` (:func:`faster`); two latencies
where neither is faster are a tie. Dominance uses exactly that: ``b`` dominates ``a`` when
``score(b) >= score(a)``, ``a`` is not faster than ``b``, and ``b`` is strictly better in one of them
(``score(b) > score(a)`` or ``b`` faster than ``a``). With ``t = 0`` this is the usual Pareto dominance.
Scores are never equal-within-noise here: the intervals are reported (``score_low``, ``score_high``), the
point estimate orders. The relation has no cycles, so the front is never empty. The front is the
non-dominated candidates, sorted by latency, then descending score, then :attr:`Candidate.key`.

Selection rule (:func:`select_k`, one rule for POP and DNAS, chosen on purpose): candidates are taken layer
by layer (non-dominated sorting: the front, then the front of the rest, ...). When a layer holds more than
the places left, places are filled by greedy farthest-point selection in a normalised descriptor space —
log2 latency, score and the candidate's architecture :attr:`~Candidate.shape` — starting from the best
scored member of that layer (when nothing is chosen yet). So the chosen members spread along the
score/latency curve and differ in shape, which is what an ensemble wants.

Filling to k (:func:`fill_neighbours`, ``search.fill: neighbours``; POP only, whose space has neighbours).
When fewer than ``k`` candidates were trained, the selection is filled with *untrained* one-step neighbours
of the front members (:meth:`naslung.search.space.SearchSpace.neighbours`: one block one width step wider or
narrower, one block added or one removed, inside the space's rules), never a trained or already chosen
architecture. The front members take turns, fastest first; each turn adds that member's nearest neighbour
not taken yet, nearest by ``|log2 FLOPs(neighbour) - log2 FLOPs(member)|`` (multiply-adds, deterministic),
ties by key; a member without neighbours left drops out of the turns. Filled entries carry no score
(``"trained": false`` in ``selected.json``); the ensemble stage trains every selected spec anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Protocol, TypeVar


class Candidate(Protocol):
    """A trained candidate as the front and the selection see it."""

    @property
    def score(self) -> float:
        """Validation score (``search.objective``, in [0, 1], higher is better)."""
        ...

    @property
    def latency(self) -> float:
        """Latency in the search's unit."""
        ...

    @property
    def key(self) -> Any:
        """Identity of the architecture and the last tie-break (comparable among one search's candidates)."""
        ...

    @property
    def shape(self) -> tuple[float, ...]:
        """Architecture descriptor (same length for one search's candidates), e.g. depths and log2 widths."""
        ...


C = TypeVar("C", bound=Candidate)
K = TypeVar("K", bound=Hashable)


def faster(lat_b: float, lat_a: float, tolerance: float = 0.0) -> bool:
    """``lat_b`` is lower than ``lat_a`` by more than the relative ``tolerance``: ``lat_b < lat_a * (1 - t)``."""
    if tolerance < 0:
        raise ValueError(f"latency tolerance must be >= 0, got {tolerance}")
    return lat_b < lat_a * (1.0 - tolerance)


def dominates(b: Candidate, a: Candidate, tolerance: float = 0.0) -> bool:
    """``b`` scores at least as well as ``a`` and is not slower (within ``tolerance``), and is strictly better
    in one: a higher score or faster beyond the tolerance (see the module docstring)."""
    if b.score < a.score or faster(a.latency, b.latency, tolerance):
        return False
    return b.score > a.score or faster(b.latency, a.latency, tolerance)


def pareto_front(items: Iterable[C], tolerance: float = 0.0) -> list[C]:
    """Non-dominated items, sorted by latency, then descending score, then key."""
    pool = list(items)
    front = [a for a in pool if not any(dominates(b, a, tolerance) for b in pool)]
    return sorted(front, key=lambda e: (e.latency, -e.score, e.key))


def nondominated_layers(items: Iterable[C], tolerance: float = 0.0) -> list[list[C]]:
    """Non-dominated sorting: layer 0 is the Pareto front, layer 1 the front of the rest, and so on."""
    rest = list(items)
    layers: list[list[C]] = []
    while rest:
        layer = pareto_front(rest, tolerance)
        keys = {e.key for e in layer}
        rest = [e for e in rest if e.key not in keys]
        layers.append(layer)
    return layers


def descriptor(e: Candidate) -> tuple[float, ...]:
    """(log2 latency, score, *shape): the space in which :func:`diverse_subset` spreads its choice."""
    return (math.log2(max(e.latency, 1e-12)), e.score, *e.shape)


def _normalised(items: Sequence[Candidate]) -> list[tuple[float, ...]]:
    raw = [descriptor(e) for e in items]
    lo = [min(c) for c in zip(*raw)]
    hi = [max(c) for c in zip(*raw)]
    return [tuple((v - a) / (b - a) if b > a else 0.0 for v, a, b in zip(r, lo, hi)) for r in raw]


def diverse_subset(items: Sequence[C], k: int, already: Sequence[C] = ()) -> list[C]:
    """Greedy max-min distance choice of ``k`` of ``items`` away from ``already`` (deterministic; ties by
    score, then lower latency, then the order best score first)."""
    if k >= len(items):
        return list(items)
    pool = list(already) + list(items)
    vecs = dict(zip((e.key for e in pool), _normalised(pool)))
    chosen: list[C] = list(already)
    left = sorted(items, key=lambda e: (-e.score, e.latency, e.key))
    picked: list[C] = []
    if not chosen:
        picked.append(left.pop(0))
    while len(picked) < k:
        ref = chosen + picked

        def rank(e: C) -> tuple[float, float, float]:
            d = min(math.dist(vecs[e.key], vecs[r.key]) for r in ref)  # noqa: B023
            return (d, e.score, -e.latency)

        best = max(left, key=rank)
        left.remove(best)
        picked.append(best)
    return picked


def select_k(trained: Sequence[C], k: int, tolerance: float = 0.0) -> list[C]:
    """``k`` candidates (fewer only when fewer were trained): front first, then the next layers (see the
    module docstring); sorted by latency, then descending score, then key."""
    if k < 1:
        raise ValueError(f"select_k: k must be >= 1, got {k}")
    chosen: list[C] = []
    for layer in nondominated_layers(trained, tolerance):
        room = k - len(chosen)
        if room <= 0:
            break
        chosen.extend(diverse_subset(layer, room, already=chosen))
    return sorted(chosen, key=lambda e: (e.latency, -e.score, e.key))


def fill_neighbours(
    front: Sequence[K],
    room: int,
    neighbours_of: Callable[[K], Iterable[K]],
    size_of: Callable[[K], float],
    exclude: Iterable[K] = (),
) -> list[tuple[K, K]]:
    """Up to ``room`` untrained neighbours ``(neighbour, front member)`` by the fill rule of the module
    docstring: ``front`` in turn order (fastest first), ``size_of`` the FLOPs (> 0) of an architecture,
    ``exclude`` the trained and already selected architectures."""
    taken = set(exclude) | set(front)
    queues: list[tuple[K, list[K]]] = []
    for m in front:
        log_m = math.log2(max(size_of(m), 1e-12))
        cands = sorted(
            set(neighbours_of(m)),
            key=lambda n: (abs(math.log2(max(size_of(n), 1e-12)) - log_m), n),
        )
        queues.append((m, cands))
    out: list[tuple[K, K]] = []
    while len(out) < room and queues:
        still: list[tuple[K, list[K]]] = []
        for m, cands in queues:
            if len(out) >= room:
                still.append((m, cands))
                continue
            while cands and cands[0] in taken:
                cands.pop(0)
            if not cands:
                continue
            n = cands.pop(0)
            taken.add(n)
            out.append((n, m))
            still.append((m, cands))
        queues = still
    return out
