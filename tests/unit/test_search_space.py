"""Search space: exact counts (incl. the reference cross-check), lazy enumeration, uniform sampling, order."""

from __future__ import annotations

import collections
import itertools
import math
import random

import pytest

from naslung.search.order import precedes, stage_precedes
from naslung.search.space import REFERENCE_MONOTONE_NO_EQ5, SearchSpace, size_table


def _brute_force_size(space: SearchSpace) -> int:
    """Count by filtering every width sequence and every 3-way split (independent of the library code)."""
    n = 0
    for s in range(space.min_blocks, space.max_blocks + 1):
        for seq in itertools.product(space.widths, repeat=s):
            for a in range(1, s - 1):
                for b in range(a + 1, s):
                    if (seq[:a], seq[a:b], seq[b:]) in space:
                        n += 1
    return n


def test_reference_cross_check_101529() -> None:
    # Reference get_all_search_space(3, 9, [4..128]): monotone widths, no eq. 5, stem unconstrained.
    expected = sum(math.comb(s + 5, 5) * math.comb(s - 1, 2) for s in range(3, 10))
    assert expected == REFERENCE_MONOTONE_NO_EQ5 == 101_529
    assert SearchSpace(monotone=True, depth_rule=False, stem_in_monotone=False).size() == 101_529
    # With the default stem (4, 4) the stem constrains nothing (4 is the narrowest width) ...
    assert SearchSpace(stem=(4, 4), monotone=True, depth_rule=False).size() == 101_529
    # ... while a wider stem inside the monotone chain does.
    assert SearchSpace(stem=(16, 16), monotone=True, depth_rule=False).size() < 101_529


def test_size_table_default_widths() -> None:
    rows = {(r["monotone"], r["depth_rule"]): r["size"] for r in size_table()}
    assert rows[(True, False)] == 101_529
    assert rows[(True, True)] < rows[(True, False)] < rows[(False, True)] < rows[(False, False)]
    assert rows[(False, False)] == sum(6**s * math.comb(s - 1, 2) for s in range(3, 10))


@pytest.mark.parametrize("monotone", [True, False])
@pytest.mark.parametrize("depth_rule", [True, False])
def test_count_matches_enumeration_and_brute_force(monotone: bool, depth_rule: bool) -> None:
    space = SearchSpace(widths=(4, 8, 16), stem=(8, 8), monotone=monotone, depth_rule=depth_rule, max_blocks=6)
    members = list(space)
    assert len(members) == len(set(members)) == space.size() == _brute_force_size(space)
    assert all(m in space for m in members)


def test_depth_rule_eq5() -> None:
    space = SearchSpace(depth_rule=True)
    triples = set(space.depth_triples())
    assert (1, 1, 1) in triples
    assert (7, 1, 1) not in triples  # S = 9: ceil(9/2) = 5 < 7
    assert (1, 1, 7) not in triples
    assert (5, 2, 2) in triples and (6, 2, 1) not in triples  # floor(9/4) = 2 <= D <= 5
    for big_l, m, n in triples:
        s = big_l + m + n
        assert all(s // 4 <= d <= math.ceil(s / 2) for d in (big_l, m, n))


def test_monotone_members_never_narrow() -> None:
    space = SearchSpace(stem=(8, 8))
    rng = random.Random(0)
    for _ in range(300):
        m = space.sample(rng)
        flat = [w for st in m for w in st]
        assert flat == sorted(flat) and flat[0] >= 8
        assert m in space
    assert ((4,), (8,), (8,)) not in space  # below the stem width
    assert ((8,), (16,), (8,)) not in space  # narrows across a stage boundary


def test_sampling_is_uniform_and_seeded() -> None:
    space = SearchSpace(widths=(4, 8), monotone=True, depth_rule=True, max_blocks=5)
    n = space.size()
    rng = random.Random(1)
    counts = collections.Counter(space.sample(rng) for _ in range(200 * n))
    assert set(counts) == set(space)
    # chi-square against uniform, generous bound (df = n - 1)
    chi2 = sum((c - 200) ** 2 / 200 for c in counts.values())
    assert chi2 < 2 * n + 60
    a = [space.sample(random.Random(7)) for _ in range(3)]
    b = [space.sample(random.Random(7)) for _ in range(3)]
    assert a == b


def test_large_space_sampling_without_enumeration() -> None:
    space = SearchSpace(monotone=False, depth_rule=False)  # 3.2e8 members: never enumerated
    rng = random.Random(3)
    draws = [space.sample(rng) for _ in range(200)]
    assert all(d in space for d in draws)
    assert len(set(draws)) == 200


def test_partial_order_definition() -> None:
    b = ((8, 16), (16, 32), (64,))
    assert precedes(b, b)
    assert precedes(((8,), (16, 32), (64,)), b)  # one block removed
    assert precedes(((4, 16), (8, 32), (32,)), b)  # narrowed
    assert precedes(((16,), (32,), (4,)), b)  # second block of stage 3 kept, narrowed elsewhere
    assert not precedes(((16, 16), (16, 32), (64,)), b)  # 16 > 8 at position 0 and no later 16 left
    assert not precedes(((8, 16, 16), (16,), (64,)), b)  # more blocks in a stage
    assert not precedes(((8,), (16,), (128,)), b)  # wider
    assert not precedes(b, ((8,), (16,), (64,)))
    assert stage_precedes((8, 16), (16, 8, 16))  # matched to positions 0 and 2
    assert not stage_precedes((16, 8), (8, 16))  # order matters


def test_partial_order_is_a_partial_order() -> None:
    space = SearchSpace(widths=(4, 8, 16), stem=(4, 4), monotone=False, depth_rule=False, max_blocks=4)
    members = list(space)
    rng = random.Random(0)
    sample = rng.sample(members, 120)
    for a in sample:
        assert precedes(a, a)
        for b in sample:
            if a != b and precedes(a, b):
                assert not precedes(b, a)  # antisymmetric
                assert sum(map(len, a)) <= sum(map(len, b))
                for c in sample[:30]:
                    if precedes(b, c):
                        assert precedes(a, c)  # transitive


def test_neighbours_are_one_step_members_of_the_space() -> None:
    """A width step, one block removed or one added, inside the space's rules; symmetric; never itself."""
    space = SearchSpace(widths=(4, 8, 16, 32), stem=(4, 4), max_blocks=6)
    rng = random.Random(0)
    for _ in range(30):
        s = space.sample(rng)
        nbs = space.neighbours(s)
        assert nbs == sorted(set(nbs)) and s not in nbs and nbs
        for n in nbs:
            assert n in space
            assert s in space.neighbours(n)  # the relation is symmetric
            fs, fn = [w for st in s for w in st], [w for st in n for w in st]
            if len(fs) == len(fn):  # a width step: one block, to the adjacent allowed width
                diff = [(a, b) for a, b in zip(fs, fn) if a != b]
                bw = space.block_widths
                assert len(diff) == 1 and abs(bw.index(diff[0][0]) - bw.index(diff[0][1])) == 1
                assert [len(st) for st in s] == [len(st) for st in n]
            else:  # one block added or removed, in one stage
                assert abs(len(fs) - len(fn)) == 1
                assert sum(abs(len(a) - len(b)) for a, b in zip(s, n)) == 1
                small, big = (n, s) if len(fn) < len(fs) else (s, n)
                assert precedes(small, big)
    # Rules hold: (1,1,1) has no removal (a stage may not be empty) and min_blocks=3 forbids 2 blocks.
    assert all(sum(len(st) for st in n) >= 3 for n in space.neighbours(((4,), (8,), (8,))))
    assert ((4,), (4,), (8,)) in space.neighbours(((4,), (8,), (8,)))  # stage 4 one width step narrower
