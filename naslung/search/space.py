"""The NASLung architecture search space: depths and block widths of residual stages 3, 4 and 5.

A member of the space is a ``Stages`` value: three tuples holding the output widths (channels) of the
residual blocks of stages 3, 4 and 5, e.g. ``((4, 4), (4, 8), (8, 8))``. Stem widths and the
CBAM/head flags are fixed per space (from params) and are not part of a member; :meth:`SearchSpace.to_spec`
turns a member into a :class:`naslung.models.spec.ArchSpec`.

Constraints (``S = L + M + N`` is the total number of blocks, ``L, M, N`` the depths of stages 3, 4, 5):

* every stage has at least one block and ``min_blocks <= S <= max_blocks`` (default 3..9);
* ``depth_rule`` (paper eq. 5): ``floor(S/4) <= D <= ceil(S/2)`` for each ``D`` in ``(L, M, N)``;
* widths come from ``widths`` (paper eq. 6: {4, 8, 16, 32, 64, 128});
* ``monotone``: widths never decrease along the network, across stage boundaries too; with
  ``stem_in_monotone`` the first block is also no narrower than the stem's last width.

One-step neighbours (:meth:`SearchSpace.neighbours`, used to fill a selection to ``search.k_select``): the
members reached by one *width step* (one block moved to the next wider or next narrower width of
:attr:`SearchSpace.block_widths`), one *block removed* (any block of any stage) or one *block added* (a block
of any allowed width inserted at any position of one stage), keeping only results inside the space (depths,
eq. 5, monotone widths).

Counting is exact and never materialises members: for one depth triple the number of width sequences of
length ``S`` over ``w`` allowed widths is ``w**S`` (free) or ``C(S + w - 1, S)`` (non-decreasing:
multisets of size ``S``), and the space size is the sum over the admissible depth triples.

Cross-check with the reference code (``get_all_search_space(3, 9, [4..128])``): monotone, no eq. 5,
stem not constrained (or stem (4, 4), which constrains nothing since 4 is the smallest width) gives
``sum_{S=3..9} C(S+5, 5) * C(S-1, 2) = 101,529`` members.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # pragma: no cover
    from naslung.models.spec import ArchSpec
    from naslung.params import SearchParams

Stages = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
"""Block widths (channels) of stages 3, 4 and 5."""

Depths = tuple[int, int, int]


@dataclass(frozen=True)
class SearchSpace:
    """Lazy, countable, samplable search space (see the module docstring for the constraints)."""

    widths: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
    stem: tuple[int, int] = (4, 4)
    monotone: bool = True
    depth_rule: bool = True
    min_blocks: int = 3
    max_blocks: int = 9
    stem_in_monotone: bool = True
    cbam: bool = True
    head: str = "asoftmax"

    def __post_init__(self) -> None:
        if not self.widths or any(w <= 0 for w in self.widths):
            raise ValueError(f"search space: widths must be positive, got {self.widths}")
        if len(set(self.widths)) != len(self.widths):
            raise ValueError(f"search space: widths must be distinct, got {self.widths}")
        object.__setattr__(self, "widths", tuple(sorted(self.widths)))
        if self.min_blocks < 3 or self.max_blocks < self.min_blocks:
            raise ValueError(
                f"search space: need 3 <= min_blocks <= max_blocks, got {self.min_blocks}..{self.max_blocks}"
            )

    @classmethod
    def from_params(cls, search: SearchParams, cbam: bool = True, head: str = "asoftmax") -> SearchSpace:
        return cls(
            widths=tuple(search.widths),
            stem=(int(search.stem[0]), int(search.stem[1])),
            monotone=search.monotone,
            depth_rule=search.depth_rule,
            min_blocks=search.min_blocks,
            max_blocks=search.max_blocks,
            cbam=cbam,
            head=head,
        )

    # ---- structure -------------------------------------------------------------------------------
    @property
    def block_widths(self) -> tuple[int, ...]:
        """Widths a block may take (with ``monotone`` + ``stem_in_monotone``: those >= the stem width)."""
        if self.monotone and self.stem_in_monotone:
            return tuple(w for w in self.widths if w >= self.stem[-1])
        return self.widths

    def depth_ok(self, depths: Depths) -> bool:
        s = sum(depths)
        if not (self.min_blocks <= s <= self.max_blocks) or min(depths) < 1:
            return False
        if self.depth_rule:
            lo, hi = s // 4, -(-s // 2)
            return all(lo <= d <= hi for d in depths)
        return True

    def depth_triples(self) -> Iterator[Depths]:
        """Admissible (L, M, N), by total S then lexicographically."""
        for s in range(self.min_blocks, self.max_blocks + 1):
            for l in range(1, s - 1):
                for m in range(1, s - l):
                    d = (l, m, s - l - m)
                    if self.depth_ok(d):
                        yield d

    def n_sequences(self, s: int) -> int:
        """Number of width sequences of length ``s`` (exact, combinatorial)."""
        w = len(self.block_widths)
        return math.comb(s + w - 1, s) if self.monotone else w**s

    # ---- counting --------------------------------------------------------------------------------
    def size(self) -> int:
        """Exact number of members, without enumerating them."""
        return sum(self.n_sequences(sum(d)) for d in self.depth_triples())

    def __len__(self) -> int:  # may exceed sys.maxsize only for absurd spaces
        return self.size()

    # ---- membership ------------------------------------------------------------------------------
    def __contains__(self, stages: object) -> bool:
        try:
            # any object may be asked about; a non-iterable one raises TypeError, caught below
            parts = tuple(tuple(int(w) for w in st) for st in cast("Iterable[Iterable[Any]]", stages))
        except TypeError:
            return False
        if len(parts) != 3 or not self.depth_ok((len(parts[0]), len(parts[1]), len(parts[2]))):
            return False
        flat = [w for st in parts for w in st]
        allowed = set(self.block_widths)
        if any(w not in allowed for w in flat):
            return False
        return not self.monotone or all(a <= b for a, b in itertools.pairwise(flat))

    # ---- enumeration -----------------------------------------------------------------------------
    def _sequences(self, s: int) -> Iterator[tuple[int, ...]]:
        bw = self.block_widths
        if self.monotone:
            return itertools.combinations_with_replacement(bw, s)
        return itertools.product(bw, repeat=s)

    def __iter__(self) -> Iterator[Stages]:
        """Lazy enumeration of every member (a generator; nothing is materialised)."""
        for d in self.depth_triples():
            for seq in self._sequences(sum(d)):
                yield split(seq, d)

    # ---- sampling --------------------------------------------------------------------------------
    def sample(self, rng: random.Random) -> Stages:
        """One member drawn uniformly at random (exact; O(S) work, no enumeration)."""
        triples = list(self.depth_triples())
        weights = [self.n_sequences(sum(d)) for d in triples]
        r = rng.randrange(sum(weights))
        for d, wgt in zip(triples, weights):  # noqa: B007
            if r < wgt:
                break
            r -= wgt
        s = sum(d)
        bw = self.block_widths
        if self.monotone:
            # Uniform multiset of size s from w items: s "stars" among s + w - 1 slots (stars and bars).
            slots = sorted(rng.sample(range(s + len(bw) - 1), s))
            seq = tuple(bw[p - i] for i, p in enumerate(slots))
        else:
            seq = tuple(rng.choice(bw) for _ in range(s))
        return split(seq, d)

    # ---- neighbourhood ---------------------------------------------------------------------------
    def neighbours(self, stages: Stages) -> list[Stages]:
        """One-step neighbours of ``stages`` inside the space (see the module docstring), sorted, without
        ``stages`` itself."""
        bw = self.block_widths
        pos = {w: i for i, w in enumerate(bw)}
        parts = [list(st) for st in stages]
        out: set[Stages] = set()

        def emit(new: list[list[int]]) -> None:
            cand = cast(Stages, tuple(tuple(st) for st in new))
            if cand != stages and cand in self:
                out.add(cand)

        for si, st in enumerate(parts):
            for bi, w in enumerate(st):
                for step in (-1, 1):
                    j = pos.get(w, -10) + step
                    if 0 <= j < len(bw):
                        emit([*parts[:si], [*st[:bi], bw[j], *st[bi + 1 :]], *parts[si + 1 :]])
                emit([*parts[:si], st[:bi] + st[bi + 1 :], *parts[si + 1 :]])
            for bi in range(len(st) + 1):
                for w in bw:
                    emit([*parts[:si], [*st[:bi], w, *st[bi:]], *parts[si + 1 :]])
        return sorted(out)

    # ---- conversion ------------------------------------------------------------------------------
    def to_spec(self, stages: Stages) -> ArchSpec:
        from naslung.models.spec import ArchSpec

        return ArchSpec(stem=self.stem, stages=stages, cbam=self.cbam, head=self.head)

    def describe(self) -> dict[str, Any]:
        return {
            "widths": list(self.widths),
            "stem": list(self.stem),
            "monotone": self.monotone,
            "depth_rule": self.depth_rule,
            "blocks": [self.min_blocks, self.max_blocks],
            "stem_in_monotone": self.stem_in_monotone,
            "size": self.size(),
        }


def split(seq: tuple[int, ...], depths: Depths) -> Stages:
    """Cut a flat width sequence into the three stages of the given depths."""
    l, m, _ = depths
    return (tuple(seq[:l]), tuple(seq[l : l + m]), tuple(seq[l + m :]))


def flat(stages: Stages) -> tuple[int, ...]:
    return tuple(w for st in stages for w in st)


def size_table(
    widths: tuple[int, ...] = (4, 8, 16, 32, 64, 128),
    stem: tuple[int, int] = (4, 4),
    min_blocks: int = 3,
    max_blocks: int = 9,
) -> list[dict[str, Any]]:
    """Space size for every combination of the ``monotone`` and ``depth_rule`` options."""
    rows = []
    for monotone in (True, False):
        for depth_rule in (True, False):
            sp = SearchSpace(widths, stem, monotone, depth_rule, min_blocks, max_blocks)
            rows.append({"monotone": monotone, "depth_rule": depth_rule, "size": sp.size()})
    return rows


REFERENCE_MONOTONE_NO_EQ5 = 101_529
"""Size of the reference code's monotone space without eq. 5 (``get_all_search_space(3, 9, widths)``)."""
