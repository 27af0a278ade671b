"""POP loop: the pruning rule (with its latency tolerance) on hand-made examples, soundness on a whole small
space, resume, selection and the neighbour fill."""

from __future__ import annotations

import math

import pytest

from naslung.search.order import precedes
from naslung.search.pareto import select_k
from naslung.search.pop import (
    Evaluated,
    build_certificates,
    dominates,
    estimate_covered,
    nondominated_layers,
    pareto_front,
    prune_check,
    run_pop,
)
from naslung.search.space import SearchSpace, Stages

# Fake objectives that satisfy POP's assumption (A ⪯ B => score(A) <= score(B), lat(A) <= lat(B)) while trading
# off: deep stages add accuracy cheaply, early (high-resolution) stages cost latency.
ACC_W = (0.02, 0.03, 0.05)
LAT_W = (8.0, 1.0, 0.125)


def fake_acc(s: Stages) -> float:
    return 0.5 + sum(a * math.log2(w) for a, st in zip(ACC_W, s) for w in st) / 10


def fake_lat(s: Stages) -> float:
    return sum(r * w * w / 16 for r, st in zip(LAT_W, s) for w in st)


def fake_eval(calls: list[list[Stages]]):
    def evaluate(batch: list[Stages]) -> list[Evaluated]:
        calls.append(list(batch))
        return [Evaluated(s, fake_acc(s), fake_lat(s)) for s in batch]

    return evaluate


def E(stages: Stages, acc: float, lat: float) -> Evaluated:
    return Evaluated(stages, acc, lat)


def test_pruning_rule_hand_made_example() -> None:
    C = ((8,), (8,), (8,))
    B = ((4,), (4,), (16,))
    trained = [E(C, 0.80, 10.0), E(B, 0.85, 3.0)]
    certs = build_certificates(trained)
    cert_c = next(c for c in certs if c.upper == C)
    assert cert_c.witness == B and cert_c.witness_latency == 3.0  # fastest trained with score >= score(C)
    cert_b = next(c for c in certs if c.upper == B)
    assert cert_b.witness == B  # nothing faster is as accurate as B

    asked: list[Stages] = []
    lat = {((4,), (8,), (8,)): 5.0, ((4,), (4,), (4,)): 2.0, ((8, 8), (8,), (8,)): 99.0, ((4,), (4,), (8,)): 4.0}

    def latency_of(s: Stages) -> float:
        asked.append(s)
        return lat[s]

    # A ⪯ C, slower than B (5 > 3) and at most as accurate as C <= B: pruned by (C, B).
    got = prune_check(((4,), (8,), (8,)), certs, latency_of)
    assert got is not None and got.upper == C and got.witness == B
    # A ⪯ C but faster than B: may still reach the front.
    assert prune_check(((4,), (4,), (4,)), certs, latency_of) is None
    # A ⪯ B itself and slower than B: pruned by (B, B).
    got = prune_check(((4,), (4,), (8,)), certs, latency_of)
    assert got is not None and got.upper == B
    # Not below any trained architecture: never pruned, and its latency is never measured.
    asked.clear()
    assert prune_check(((8, 8), (8,), (8,)), certs, latency_of) is None
    assert asked == []


def test_pareto_front_and_layers() -> None:
    a, b, c, d = (((4,), (4,), (w,)) for w in (4, 8, 16, 32))
    items = [E(a, 0.6, 1.0), E(b, 0.7, 2.0), E(c, 0.65, 3.0), E(d, 0.7, 2.0)]
    front = pareto_front(items)
    assert [e.stages for e in front] == [a, b, d]  # equal (acc, lat) pairs are both kept
    assert dominates(items[1], items[2]) and not dominates(items[1], items[3])
    layers = nondominated_layers(items)
    assert [[e.stages for e in layer] for layer in layers] == [[a, b, d], [c]]


SMALL = SearchSpace(widths=(4, 8, 16), stem=(4, 4), monotone=True, depth_rule=True, max_blocks=6)


def test_pop_is_sound_and_saves_training_on_a_whole_space() -> None:
    truth = [Evaluated(s, fake_acc(s), fake_lat(s)) for s in SMALL]
    true_front = {e.stages for e in pareto_front(truth)}
    total_pruned = 0
    for seed in range(3):
        calls: list[list[Stages]] = []
        res = run_pop(SMALL, fake_eval(calls), fake_lat, budget=10**6, patience=10**6, seed=seed)
        trained = {e.stages for e in res.trained}
        assert res.stop_reason == "exhausted"
        assert trained.isdisjoint(res.pruned)
        assert len(trained) + len(res.pruned) == SMALL.size()
        # Soundness: nothing on the true front was pruned, so the search front is the true front.
        assert {e.stages for e in res.front} == true_front
        for a, cert in res.pruned.items():
            assert precedes(a, cert.upper) and fake_lat(a) > cert.witness_latency
            assert cert.witness_score >= cert.upper_score >= fake_acc(a)
        total_pruned += len(res.pruned)
    assert total_pruned > 0  # pruning saved training


def test_pop_stops_on_patience_and_budget_and_is_seeded() -> None:
    calls: list[list[Stages]] = []
    res = run_pop(SMALL, fake_eval(calls), fake_lat, budget=8, patience=100, seed=5)
    assert res.stop_reason == "budget" and len(res.trained) == 8
    again = run_pop(SMALL, fake_eval([]), fake_lat, budget=8, patience=100, seed=5)
    assert [e.stages for e in again.trained] == [e.stages for e in res.trained]
    other = run_pop(SMALL, fake_eval([]), fake_lat, budget=8, patience=100, seed=6)
    assert [e.stages for e in other.trained] != [e.stages for e in res.trained]

    res = run_pop(SMALL, fake_eval([]), fake_lat, budget=10**6, patience=2, seed=1)
    assert res.stop_reason == "patience"
    assert [it.front_changed for it in res.iterations][-2:] == [False, False]
    assert len(res.trained) < SMALL.size()


def test_batch_mode_trains_batches() -> None:
    calls: list[list[Stages]] = []
    res = run_pop(SMALL, fake_eval(calls), fake_lat, budget=7, patience=100, batch_size=3, seed=2)
    assert [len(c) for c in calls] == [3, 3, 1]
    assert all(len(set(c)) == len(c) for c in calls)
    assert len({e.stages for e in res.trained}) == 7


def test_resume_with_known_results_trains_nothing_twice() -> None:
    full = run_pop(SMALL, fake_eval([]), fake_lat, budget=12, patience=100, seed=9)
    first = run_pop(SMALL, fake_eval([]), fake_lat, budget=5, patience=100, seed=9)  # "crashed" after 5
    known = {e.stages: e for e in first.trained}
    calls: list[list[Stages]] = []
    resumed = run_pop(
        SMALL,
        fake_eval(calls),
        fake_lat,
        budget=12,
        patience=100,
        seed=9,
        known=known,
        latency_cache=first.latency_cache,
    )
    retrained = {s for c in calls for s in c} & set(known)
    assert retrained == set()
    assert resumed.reused == 5 and sum(len(c) for c in calls) == 7
    assert [e.stages for e in resumed.trained] == [e.stages for e in full.trained]
    assert [e.stages for e in resumed.front] == [e.stages for e in full.front]


def test_covered_estimate_exact_and_monte_carlo_agree() -> None:
    res = run_pop(SMALL, fake_eval([]), fake_lat, budget=10, patience=100, seed=3)
    exact = estimate_covered(SMALL, res.certificates, (e.stages for e in res.trained))
    mc = estimate_covered(SMALL, res.certificates, n_samples=4000, seed=1, exhaustive_below=0)
    assert exact["method"] == "exact" and mc["method"] == "monte-carlo"
    assert exact["covered"] >= sum(1 for a in res.pruned)
    assert mc["covered_fraction"] == pytest.approx((exact["covered"] + len(res.trained)) / SMALL.size(), abs=0.05)


def test_select_k_fills_from_next_layers_and_spreads() -> None:
    truth = [Evaluated(s, fake_acc(s), fake_lat(s)) for s in SMALL]
    layers = nondominated_layers(truth)
    front = layers[0]
    k = len(front) + 2
    chosen = select_k(truth, k)
    assert len(chosen) == k
    keys = {e.stages for e in chosen}
    assert {e.stages for e in front} <= keys
    assert len(keys - {e.stages for e in front}) == 2
    assert keys - {e.stages for e in front} <= {e.stages for e in layers[1]}

    few = select_k(truth, 3)
    assert {e.stages for e in few} <= {e.stages for e in front}
    best = max(front, key=lambda e: e.score)
    fastest = min(front, key=lambda e: e.latency)
    assert best in few and fastest in few  # spread: both ends of the curve
    with pytest.raises(ValueError):
        select_k(truth, 0)


def test_pruning_needs_a_latency_difference_beyond_the_tolerance() -> None:
    """With tolerance t, B prunes A only when lat(B) < lat(A) * (1 - t): a 6 % gap is noise at t = 0.1."""
    C = ((8,), (8,), (8,))
    B = ((4,), (4,), (16,))
    certs = build_certificates([E(C, 0.80, 10.0), E(B, 0.85, 3.0)])
    near, far = ((4,), (8,), (8,)), ((4,), (4,), (8,))
    lat = {near: 3.2, far: 3.5}
    assert prune_check(near, certs, lat.__getitem__) is not None  # no tolerance: 3.0 < 3.2 prunes
    assert prune_check(near, certs, lat.__getitem__, tolerance=0.1) is None  # 3.0 >= 3.2 * 0.9
    got = prune_check(far, certs, lat.__getitem__, tolerance=0.1)  # 3.0 < 3.5 * 0.9 = 3.15
    assert got is not None and got.witness == B
    with pytest.raises(ValueError):
        run_pop(SMALL, fake_eval([]), fake_lat, budget=3, patience=3, latency_tolerance=1.0)


def test_dominance_with_a_latency_tolerance() -> None:
    a, b = ((4,), (4,), (4,)), ((4,), (4,), (8,))
    slow_good, fast_bad = E(b, 0.80, 10.5), E(a, 0.70, 10.0)
    # 5 % faster is inside a 10 % tolerance: a tie in latency, so the better score dominates ...
    assert dominates(slow_good, fast_bad, tolerance=0.1) and not dominates(fast_bad, slow_good, tolerance=0.1)
    assert {e.stages for e in pareto_front([slow_good, fast_bad], tolerance=0.1)} == {b}
    # ... while without tolerance both are on the front.
    assert {e.stages for e in pareto_front([slow_good, fast_bad])} == {a, b}
    # Equal scores and a latency gap inside the tolerance: neither dominates.
    tie_a, tie_b = E(a, 0.7, 10.0), E(b, 0.7, 10.5)
    assert not dominates(tie_a, tie_b, 0.1) and not dominates(tie_b, tie_a, 0.1)
    assert dominates(tie_a, E(b, 0.7, 12.0), 0.1)  # 10 < 12 * 0.9: faster beyond the tolerance


def test_pop_with_tolerance_never_prunes_a_true_front_member() -> None:
    tol = 0.2
    truth = [Evaluated(s, fake_acc(s), fake_lat(s)) for s in SMALL]
    by_key = {e.stages: e for e in truth}
    true_front = {e.stages for e in pareto_front(truth, tol)}
    res = run_pop(SMALL, fake_eval([]), fake_lat, budget=10**6, patience=10**6, seed=4, latency_tolerance=tol)
    assert res.latency_tolerance == tol and res.pruned
    assert true_front <= {e.stages for e in res.front}
    for a, cert in res.pruned.items():  # every pruned member is dominated (with tolerance) by its witness
        assert dominates(by_key[cert.witness], by_key[a], tol)
        assert cert.witness_latency < fake_lat(a) * (1 - tol)
    plain = run_pop(SMALL, fake_eval([]), fake_lat, budget=10**6, patience=10**6, seed=4)
    assert len(res.pruned) < len(plain.pruned)  # the tolerance prunes less


def test_fill_neighbours_takes_turns_nearest_flops_first_and_skips_taken() -> None:
    from naslung.models.complexity import count_flops
    from naslung.search.pareto import fill_neighbours

    space = SearchSpace(widths=(4, 8, 16), stem=(4, 4), max_blocks=5)
    truth = [Evaluated(s, fake_acc(s), fake_lat(s)) for s in space]
    front = [e.stages for e in pareto_front(truth)][:2]
    flops = {s: float(count_flops(space.to_spec(s))) for s in space}
    exclude = {next(iter(space.neighbours(front[0])))}
    picks = fill_neighbours(front, 5, space.neighbours, flops.__getitem__, exclude=exclude)
    assert len(picks) == 5 and len({n for n, _ in picks}) == 5
    assert [m for _, m in picks][:4] == [front[0], front[1], front[0], front[1]]  # turns, fastest first
    for n, m in picks:
        assert n in space and n in space.neighbours(m) and n not in exclude and n not in front
    first = [n for n, m in picks if m == front[0]]
    d = [abs(math.log2(flops[n]) - math.log2(flops[front[0]])) for n in first]
    assert d == sorted(d)  # nearest FLOPs first
    rest = sorted(
        (n for n in space.neighbours(front[0]) if n not in exclude and n not in front),
        key=lambda n: (abs(math.log2(flops[n]) - math.log2(flops[front[0]])), n),
    )
    assert first == rest[: len(first)]
    assert fill_neighbours(front, 5, space.neighbours, flops.__getitem__, exclude=exclude) == picks  # deterministic
    assert fill_neighbours(front, 0, space.neighbours, flops.__getitem__) == []
