"""Patient-level (series-level) fold assignment for 10-fold cross-validation.

Rule ``auto``: a scan in a LUNA16 ``subsetK`` folder is in fold K (mod ``n_folds``); otherwise the fold is
a deterministic hash of the series uid (SHA-256, stable across machines and Python runs, unlike
``hash()``). Rule ``hash``: always the hash; ``subset``: always the folder (an error outside one). Either
way every nodule of a series lands in the same fold. The rules are ``prepare.fold_rule``'s choices
(:data:`naslung.params.FoldRule`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from naslung.params import FOLD_RULES, FoldRule


def hash_fold(seriesuid: str, n_folds: int) -> int:
    """Fold in ``0..n_folds-1`` from the SHA-256 of the series uid."""
    digest = hashlib.sha256(seriesuid.strip().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n_folds


def fold_for(seriesuid: str, subset: int | None, n_folds: int, rule: FoldRule = "auto") -> int:
    """Fold of one series: ``subset % n_folds`` when known and the rule allows it, else :func:`hash_fold`."""
    if rule not in FOLD_RULES:
        raise ValueError(f"unknown fold rule {rule!r} (expected one of {FOLD_RULES})")
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    if rule in ("auto", "subset") and subset is not None:
        return int(subset) % n_folds
    if rule == "subset":
        raise ValueError(f"series {seriesuid}: fold rule 'subset' but the scan is not in a subsetK folder")
    return hash_fold(seriesuid, n_folds)


def assign_folds(
    subsets: Mapping[str, int | None] | Iterable[str], n_folds: int = 10, rule: FoldRule = "auto"
) -> dict[str, int]:
    """Series uid -> fold for many series (a mapping uid -> subset K or None, or just uids).

    With ``auto``, the subset folders are used only when every series has one, so a mixed layout cannot
    split one rule's folds across the other's.
    """
    subs: dict[str, int | None] = dict(subsets) if isinstance(subsets, Mapping) else dict.fromkeys(subsets)
    if rule == "auto" and any(v is None for v in subs.values()):
        rule, subs = "hash", dict.fromkeys(subs)
    return {uid: fold_for(uid, k, n_folds, rule) for uid, k in subs.items()}
