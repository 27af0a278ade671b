"""Partial Order Pruning (POP; Li et al., CVPR 2019) as NASLung uses it: the search loop.

Objectives: maximise the validation ``score`` (``search.objective`` — ROC AUC or balanced accuracy on the
pooled validation folds, in [0, 1]; :mod:`naslung.search.objective`), minimise ``latency`` (ms per nodule
when measured; any unit, as long as one search uses one unit). Pareto set: trained candidates not
dominated by another trained candidate (:func:`naslung.search.pareto.dominates`, shared with DNAS).

Latency tolerance ``t`` (``latency_tolerance``; the POP strategy passes ``search.latency_tolerance`` when
latencies are measured and 0 for ``latency_source: flops``, which is deterministic): ``B`` is *faster*
than ``A`` only when ``lat(B) < lat(A) * (1 - t)``. Pruning and dominance both use that rule, so a
latency difference inside the measurement noise never removes a candidate.

Pruning rule. POP assumes ``A ⪯ C`` (:mod:`naslung.search.order`) implies ``score(A) <= score(C)``. So for
a trained ``C`` every untrained ``A ⪯ C`` scores at most as well as ``C``; if some trained ``B`` scores at
least as well as ``C`` (``score(B) >= score(C)``) and is faster than ``A`` beyond the tolerance
(``lat(B) < lat(A) * (1 - t)``), then ``B`` dominates ``A`` and ``A`` cannot reach the front: it is
removed without training. The pair ``(C, B)`` is a pruning certificate; for each trained ``C`` the
strongest one uses the fastest trained ``B`` with ``score(B) >= score(C)`` (``B = C`` is allowed).

Laziness. The space can hold ~10^5 members, so pruning is never applied to the whole space. Certificates are
kept, and every candidate the sampler draws is tested against them; only a candidate that lies under some
certificate's ``C`` needs its latency (measured on the untrained network, cached per architecture).

What the counts mean:

* ``pruned``: distinct members the sampler drew and discarded by a certificate (latency checked) — exact,
  a lower bound on what the certificates exclude;
* ``covered`` (:func:`estimate_covered`): members of the space lying under the ``C`` of some certificate,
  i.e. where the rule may apply — an upper bound on what can be pruned; exact for enumerated spaces,
  otherwise a Monte-Carlo estimate from uniform samples (count and sample size reported).

Stopping: the Pareto set (as a set of architectures) unchanged for ``patience`` consecutive iterations,
``budget`` candidates trained, or nothing left to sample. Each iteration trains ``batch_size`` candidates
(``batch_size=1`` is the sequential POP). The sampler is seeded; ``known`` results (read back on resume) are
reused instead of training, and ``latency_cache`` holds the latencies measured before, so a resumed search
follows the same path and reaches the same front.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from naslung.search.order import precedes
from naslung.search.pareto import dominates, faster, nondominated_layers, pareto_front
from naslung.search.space import SearchSpace, Stages

__all__ = [
    "Certificate",
    "Evaluated",
    "IterationLog",
    "PopResult",
    "build_certificates",
    "covering",
    "dominates",
    "estimate_covered",
    "faster",
    "nondominated_layers",
    "pareto_front",
    "prune_check",
    "run_pop",
]


@dataclass(frozen=True)
class Evaluated:
    """One trained candidate: architecture, validation ``score`` (``search.objective``), latency and anything
    else (``info``: the candidate record, with the score interval and the validation accuracy)."""

    stages: Stages
    score: float
    latency: float
    info: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> Stages:
        """Identity in the front and the selection (:mod:`naslung.search.pareto`): the stages."""
        return self.stages

    @property
    def shape(self) -> tuple[float, ...]:
        """The three stage depths, then the log2 mean width of each stage."""
        depths = [float(len(st)) for st in self.stages]
        widths = [math.log2(sum(st) / len(st)) for st in self.stages]
        return (*depths, *widths)


@dataclass(frozen=True)
class Certificate:
    """``upper`` = trained C, ``witness`` = trained B with score(B) >= score(C); prunes A ⪯ C with
    lat(B) < lat(A) * (1 - tolerance)."""

    upper: Stages
    upper_score: float
    witness: Stages
    witness_score: float
    witness_latency: float


@dataclass(frozen=True)
class IterationLog:
    iteration: int
    batch: tuple[Stages, ...]
    trained: int
    reused: int
    pruned: int
    pruned_this_iteration: int
    front_size: int
    front_changed: bool


@dataclass
class PopResult:
    trained: list[Evaluated]
    front: list[Evaluated]
    pruned: dict[Stages, Certificate]
    iterations: list[IterationLog]
    stop_reason: str
    reused: int
    latency_cache: dict[Stages, float]
    certificates: list[Certificate]
    latency_tolerance: float = 0.0


def build_certificates(trained: Sequence[Evaluated]) -> list[Certificate]:
    """One certificate per trained C, with the fastest trained B such that score(B) >= score(C)."""
    certs = []
    for c in trained:
        b = min(
            (x for x in trained if x.score >= c.score),
            key=lambda x: (x.latency, -x.score, x.stages),
        )
        certs.append(Certificate(c.stages, c.score, b.stages, b.score, b.latency))
    return certs


def covering(a: Stages, certs: Sequence[Certificate]) -> list[Certificate]:
    """Certificates whose upper architecture C satisfies ``a ⪯ C``."""
    return [c for c in certs if precedes(a, c.upper)]


def prune_check(
    a: Stages, certs: Sequence[Certificate], latency_of: Callable[[Stages], float], tolerance: float = 0.0
) -> Certificate | None:
    """The certificate that prunes ``a`` (A ⪯ C and lat(B) < lat(A) * (1 - tolerance)), or None. The latency
    of ``a`` is asked only when some certificate covers it."""
    cov = covering(a, certs)
    if not cov:
        return None
    best = min(cov, key=lambda c: (c.witness_latency, c.upper))
    return best if faster(best.witness_latency, latency_of(a), tolerance) else None


def estimate_covered(
    space: SearchSpace,
    certs: Sequence[Certificate],
    trained: Iterable[Stages] = (),
    n_samples: int = 2000,
    seed: int = 0,
    exhaustive_below: int = 5000,
) -> dict[str, Any]:
    """Members (untrained) under the C of some certificate. Exact when the space is small, else Monte Carlo."""
    size = space.size()
    done = set(trained)
    if size <= exhaustive_below:
        n = sum(1 for m in space if m not in done and covering(m, certs))
        return {"covered": n, "covered_fraction": n / size, "method": "exact", "n_samples": size}
    rng = random.Random(seed)
    hits = sum(1 for _ in range(n_samples) if covering(space.sample(rng), certs))
    frac = hits / n_samples
    return {"covered": round(frac * size), "covered_fraction": frac, "method": "monte-carlo", "n_samples": n_samples}


class _Sampler:
    """Seeded draws of untrained, unpruned members (explicit list for small spaces, rejection otherwise)."""

    def __init__(self, space: SearchSpace, seed: int, exhaustive_below: int, max_draws: int) -> None:
        self.space = space
        self.rng = random.Random(seed)
        self.members = list(space) if space.size() <= exhaustive_below else None
        self.max_draws = max_draws

    def draw(self, excluded: Callable[[Stages], bool]) -> Stages | None:
        if self.members is not None:
            left = [m for m in self.members if not excluded(m)]
            return left[self.rng.randrange(len(left))] if left else None
        for _ in range(self.max_draws):
            m = self.space.sample(self.rng)
            if not excluded(m):
                return m
        return None


def run_pop(
    space: SearchSpace,
    evaluate: Callable[[list[Stages]], list[Evaluated]],
    latency_of: Callable[[Stages], float],
    *,
    budget: int,
    patience: int,
    batch_size: int = 1,
    seed: int = 0,
    known: Mapping[Stages, Evaluated] | None = None,
    latency_cache: Mapping[Stages, float] | None = None,
    on_iteration: Callable[[IterationLog, PopResult], None] | None = None,
    exhaustive_below: int = 5000,
    max_draws: int = 200_000,
    prune: bool = True,
    latency_tolerance: float = 0.0,
) -> PopResult:
    """Run POP. ``evaluate(batch)`` trains the batch (possibly in parallel) and returns one record each, in order.

    ``latency_of(stages)`` gives the latency of an untrained member (only called for candidates under a
    certificate; cached). ``known`` maps architectures to finished results reused without training.
    ``prune=False`` gives the random-search baseline (same sampler, no pruning). ``latency_tolerance``:
    relative tolerance of "faster" in pruning and in the front (module docstring).
    """
    if latency_tolerance < 0 or latency_tolerance >= 1:
        raise ValueError(f"run_pop: latency_tolerance must be in [0, 1), got {latency_tolerance}")
    if budget < 1 or batch_size < 1 or patience < 1:
        raise ValueError(
            f"run_pop: budget, batch_size and patience must be >= 1 (got {budget}, {batch_size}, {patience})"
        )
    known = dict(known or {})
    lat_cache: dict[Stages, float] = dict(latency_cache or {})

    def cached_latency(s: Stages) -> float:
        if s not in lat_cache:
            lat_cache[s] = float(latency_of(s))
        return lat_cache[s]

    sampler = _Sampler(space, seed, exhaustive_below, max_draws)
    result = PopResult([], [], {}, [], "", 0, lat_cache, [], latency_tolerance)
    trained_keys: set[Stages] = set()
    front_keys: frozenset[Stages] = frozenset()
    stable = 0
    iteration = 0
    while True:
        iteration += 1
        batch: list[Stages] = []
        pruned_now = 0
        while len(batch) < min(batch_size, budget - len(result.trained)):
            in_batch = set(batch)
            pick = sampler.draw(lambda m: m in trained_keys or m in result.pruned or m in in_batch)  # noqa: B023
            if pick is None:
                break
            cert = prune_check(pick, result.certificates, cached_latency, latency_tolerance) if prune else None
            if cert is not None:
                result.pruned[pick] = cert
                pruned_now += 1
                continue
            batch.append(pick)
        if not batch:
            result.stop_reason = "exhausted"
            break
        fresh = [s for s in batch if s not in known]
        new = dict(zip(fresh, evaluate(fresh), strict=True)) if fresh else {}
        for s in batch:
            rec = known[s] if s in known else new[s]
            if rec.stages != s:
                raise ValueError(f"run_pop: evaluate returned {rec.stages} for {s}")
            result.reused += s in known
            result.trained.append(rec)
            trained_keys.add(s)
            lat_cache.setdefault(s, rec.latency)
        result.front = pareto_front(result.trained, latency_tolerance)
        keys = frozenset(e.stages for e in result.front)
        changed = keys != front_keys
        stable = 0 if changed else stable + 1
        front_keys = keys
        result.certificates = build_certificates(result.trained)
        log = IterationLog(
            iteration,
            tuple(batch),
            len(result.trained),
            result.reused,
            len(result.pruned),
            pruned_now,
            len(result.front),
            changed,
        )
        result.iterations.append(log)
        if on_iteration is not None:
            on_iteration(log, result)
        if len(result.trained) >= budget:
            result.stop_reason = "budget"
            break
        if stable >= patience:
            result.stop_reason = "patience"
            break
    return result
