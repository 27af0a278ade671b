"""The accuracy/latency Pareto front and the choice of k ensemble members, for both search strategies.

Objectives: maximise validation ``accuracy`` (fraction in [0, 1]), minimise ``latency`` (one unit per
search: ms per nodule or M multiply-adds per nodule). ``b`` dominates ``a`` when ``acc(b) >= acc(a)`` and
``lat(b) <= lat(a)`` with one of them strict; the front is the non-dominated candidates, sorted by latency,
then descending accuracy, then :attr:`Candidate.key`.

Selection rule (:func:`select_k`, one rule for POP and DNAS, chosen on purpose): candidates are taken layer
by layer (non-dominated sorting: the front, then the front of the rest, ...). When a layer holds more than
the places left, places are filled by greedy farthest-point selection in a normalised descriptor space —
log2 latency, accuracy and the candidate's architecture :attr:`~Candidate.shape` — starting from the most
accurate member of that layer (when nothing is chosen yet). So the chosen members spread along the
accuracy/latency curve and differ in shape, which is what an ensemble wants. This was POP's rule, kept so a
POP search selects exactly what it did; the DNAS strategy used to fill an overflowing layer by accuracy
alone (the most accurate first), which could pick near-copies from one end of the curve.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypeVar


class Candidate(Protocol):
    """A trained candidate as the front and the selection see it."""

    @property
    def accuracy(self) -> float:
        """Validation accuracy (fraction)."""
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


def dominates(b: Candidate, a: Candidate) -> bool:
    """``b`` is at least as accurate and as fast as ``a``, and strictly better in one."""
    return b.accuracy >= a.accuracy and b.latency <= a.latency and (b.accuracy > a.accuracy or b.latency < a.latency)


def pareto_front(items: Iterable[C]) -> list[C]:
    """Non-dominated items, sorted by latency, then descending accuracy, then key."""
    pool = list(items)
    front = [a for a in pool if not any(dominates(b, a) for b in pool)]
    return sorted(front, key=lambda e: (e.latency, -e.accuracy, e.key))


def nondominated_layers(items: Iterable[C]) -> list[list[C]]:
    """Non-dominated sorting: layer 0 is the Pareto front, layer 1 the front of the rest, and so on."""
    rest = list(items)
    layers: list[list[C]] = []
    while rest:
        layer = pareto_front(rest)
        keys = {e.key for e in layer}
        rest = [e for e in rest if e.key not in keys]
        layers.append(layer)
    return layers


def descriptor(e: Candidate) -> tuple[float, ...]:
    """(log2 latency, accuracy, *shape): the space in which :func:`diverse_subset` spreads its choice."""
    return (math.log2(max(e.latency, 1e-12)), e.accuracy, *e.shape)


def _normalised(items: Sequence[Candidate]) -> list[tuple[float, ...]]:
    raw = [descriptor(e) for e in items]
    lo = [min(c) for c in zip(*raw)]
    hi = [max(c) for c in zip(*raw)]
    return [tuple((v - a) / (b - a) if b > a else 0.0 for v, a, b in zip(r, lo, hi)) for r in raw]


def diverse_subset(items: Sequence[C], k: int, already: Sequence[C] = ()) -> list[C]:
    """Greedy max-min distance choice of ``k`` of ``items`` away from ``already`` (deterministic; ties by
    accuracy, then lower latency, then the order most accurate first)."""
    if k >= len(items):
        return list(items)
    pool = list(already) + list(items)
    vecs = dict(zip((e.key for e in pool), _normalised(pool)))
    chosen: list[C] = list(already)
    left = sorted(items, key=lambda e: (-e.accuracy, e.latency, e.key))
    picked: list[C] = []
    if not chosen:
        picked.append(left.pop(0))
    while len(picked) < k:
        ref = chosen + picked

        def score(e: C) -> tuple[float, float, float]:
            d = min(math.dist(vecs[e.key], vecs[r.key]) for r in ref)  # noqa: B023
            return (d, e.accuracy, -e.latency)

        best = max(left, key=score)
        left.remove(best)
        picked.append(best)
    return picked


def select_k(trained: Sequence[C], k: int) -> list[C]:
    """``k`` candidates (fewer only when fewer were trained): front first, then the next layers (see the
    module docstring); sorted by latency, then descending accuracy, then key."""
    if k < 1:
        raise ValueError(f"select_k: k must be >= 1, got {k}")
    chosen: list[C] = []
    for layer in nondominated_layers(trained):
        room = k - len(chosen)
        if room <= 0:
            break
        chosen.extend(diverse_subset(layer, room, already=chosen))
    return sorted(chosen, key=lambda e: (e.latency, -e.accuracy, e.key))
