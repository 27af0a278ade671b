"""Honest evaluation protocol: the test fold is held out from training *and* from model selection.

For a test fold ``k`` (patient-level folds from the patch store), :func:`make_split` carves
validation folds out of the remaining folds (seeded). Everything that trains or selects — epochs, early
stopping, the best checkpoint, search candidates — receives a :class:`DevData` (train + validation
arrays only). The test fold is reachable only through a :class:`HeldOutTest`:

* it does not expose its arrays, cannot be unpacked as ``(X, y)`` and is refused by ``fit``;
* while it is open its patches are *sealed*: ``fit`` (through :func:`check_not_sealed`) raises
  :class:`ProtocolError` when any training or validation row equals a sealed test row, so re-reading the
  test fold from the store and passing it as validation data fails too;
* :meth:`HeldOutTest.evaluate` may be called exactly once; a second call raises.

The reference NAS-Lung protocol (best epoch picked on the test fold) therefore cannot happen by accident.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from naslung.errors import UserError


class ProtocolError(UserError, RuntimeError):
    """The test fold was about to be used for fitting or selection, or evaluated twice."""


class _Store(Protocol):  # the part of naslung.data.store.PatchStore used here
    def arrays(self, folds: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray | Sequence[Any]]: ...


@dataclass(frozen=True)
class FoldSplit:
    """Fold numbers of one evaluation split: train folds, validation folds (pooled), one test fold."""

    train_folds: tuple[int, ...]
    val_folds: tuple[int, ...]
    test_fold: int

    def __post_init__(self) -> None:
        if not self.val_folds:
            raise ProtocolError(f"split has no validation fold: {self}")
        if self.test_fold in self.train_folds or set(self.val_folds) & set(self.train_folds):
            raise ProtocolError(f"split overlaps: {self}")
        if self.test_fold in self.val_folds:
            raise ProtocolError(f"validation folds include the test fold: {self}")


def make_split(n_folds: int, test_fold: int, seed: int, n_val: int = 1) -> FoldSplit:
    """Split folds ``0..n_folds-1``: ``test_fold`` held out, ``n_val`` seeded validation folds from the rest.

    The validation folds are drawn (without replacement) with ``numpy.random.default_rng([seed, test_fold])``
    from the other folds, so they are stable for a (seed, test fold, n_val) triple; all remaining folds are
    training folds. Folds are patient-level, so pooled validation folds never share a patient with training.
    """
    if n_folds < 3:
        raise ValueError(f"make_split: need at least 3 folds (train, validation, test), got {n_folds}")
    if not 0 <= test_fold < n_folds:
        raise ValueError(f"make_split: test fold {test_fold} is not in 0..{n_folds - 1}")
    if not 1 <= n_val <= n_folds - 2:
        raise ValueError(f"make_split: {n_val} validation folds leave no training fold out of {n_folds}")
    others = [f for f in range(n_folds) if f != test_fold]
    val = sorted(int(v) for v in np.random.default_rng([seed, test_fold]).choice(others, size=n_val, replace=False))
    return FoldSplit(tuple(f for f in others if f not in val), tuple(val), test_fold)


# --- sealing of held-out rows -------------------------------------------------------------------------

_SEALED: dict[bytes, int] = {}  # row digest -> number of open HeldOutTest objects holding it
_LOCK = threading.Lock()


def row_digests(X: np.ndarray) -> list[bytes]:
    """Content digest (BLAKE2b, 16 bytes) of each row of ``X`` (n, ...) as float32."""
    if hasattr(X, "detach"):  # torch tensor, possibly on an accelerator
        X = X.detach().cpu().numpy()
    a = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    return [hashlib.blake2b(a[i].tobytes(), digest_size=16).digest() for i in range(a.shape[0])]


def check_not_sealed(X: Any, role: str) -> None:
    """Raise :class:`ProtocolError` if ``X`` is a held-out test set or holds a row of an open one."""
    if isinstance(X, HeldOutTest):
        raise ProtocolError(f"the held-out test fold cannot be used as {role} data")
    with _LOCK:
        if not _SEALED:
            return
        sealed = set(_SEALED)
    hits = sum(d in sealed for d in row_digests(X))
    if hits:
        raise ProtocolError(
            f"{hits} {role} row(s) belong to the held-out test fold; selection must not see the test fold"
        )


def _seal(digests: list[bytes]) -> None:
    with _LOCK:
        for d in digests:
            _SEALED[d] = _SEALED.get(d, 0) + 1


def _unseal(digests: list[bytes]) -> None:
    with _LOCK:
        for d in digests:
            left = _SEALED.get(d, 0) - 1
            if left > 0:
                _SEALED[d] = left
            else:
                _SEALED.pop(d, None)


# --- data objects ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevData:
    """Training and validation arrays of a split; never contains the test fold.

    ``train`` and ``val`` are ``(X, y)`` with X (n, 1, 32, 32, 32) float32 and y (n,) int64.
    """

    split: FoldSplit
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    train_ids: tuple[Any, ...] = ()
    val_ids: tuple[Any, ...] = ()


@dataclass
class EvalResult:
    """Outcome of the single test evaluation: labels, probabilities, metrics, optional features."""

    y: np.ndarray
    prob: np.ndarray
    ids: tuple[Any, ...]
    metrics: dict[str, float]
    features: np.ndarray | None = None


@dataclass(eq=False)
class HeldOutTest:
    """The test fold of a split, sealed until evaluated; evaluable exactly once."""

    split: FoldSplit
    _X: np.ndarray = field(repr=False)
    _y: np.ndarray = field(repr=False)
    _ids: tuple[Any, ...] = field(repr=False, default=())
    _used: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self._digests = row_digests(self._X)
        _seal(self._digests)
        self._sealed = True

    def __len__(self) -> int:
        return int(self._y.shape[0])

    def __iter__(self) -> Iterator[Any]:
        raise ProtocolError("the held-out test fold cannot be unpacked into arrays for fitting/selection")

    def __getitem__(self, item: Any) -> Any:
        raise ProtocolError("the held-out test fold cannot be indexed; use evaluate(model) once")

    @property
    def evaluated(self) -> bool:
        return self._used

    def release(self) -> None:
        """Lift the seal (done by :meth:`evaluate`; call it to abandon a split without evaluating)."""
        if self._sealed:
            _unseal(self._digests)
            self._sealed = False

    def __enter__(self) -> HeldOutTest:
        return self

    def __exit__(self, *exc: object) -> None:
        """Leaving a ``with held_out:`` block lifts the seal, evaluated or not (e.g. when fitting raised)."""
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # pragma: no cover - interpreter shutdown
            self.release()

    def evaluate(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        features: Callable[[np.ndarray], np.ndarray] | None = None,
        threshold: float = 0.5,
    ) -> EvalResult:
        """Score the test fold once: ``predict(X) -> prob (n,)``; optional ``features(X) -> (n, C)``.

        A second call raises :class:`ProtocolError`. The seal is lifted afterwards, so a later split
        (another test fold in cross-validation) may train on these rows.
        """
        from naslung.metrics import binary_metrics

        if self._used:
            raise ProtocolError(f"test fold {self.split.test_fold} was already evaluated; it is touched once")
        self._used = True
        try:
            prob = np.asarray(predict(self._X), dtype=np.float64).ravel()
            feats = np.asarray(features(self._X)) if features is not None else None
        finally:
            self.release()
        return EvalResult(self._y.copy(), prob, self._ids, binary_metrics(self._y, prob, threshold), feats)


def open_split(store: _Store, split: FoldSplit) -> tuple[DevData, HeldOutTest]:
    """Read a split from a patch store: the :class:`HeldOutTest` (sealed first) and the :class:`DevData`."""
    test = held_out_test(store, split)
    return dev_data(store, split), test


def dev_data(store: _Store, split: FoldSplit) -> DevData:
    """Training (``split.train_folds``) and validation (``split.val_folds``, pooled) arrays of ``store``."""
    Xt, yt, idt = store.arrays(list(split.train_folds))
    Xv, yv, idv = store.arrays(list(split.val_folds))
    for name, y in (
        ("training folds " + str(list(split.train_folds)), yt),
        (f"validation folds {list(split.val_folds)}", yv),
    ):
        if len(y) == 0:
            raise ValueError(f"dev_data: the {name} hold no nodules")
    return DevData(split, (Xt, yt), (Xv, yv), tuple(idt), tuple(idv))


def held_out_test(store: _Store, split: FoldSplit) -> HeldOutTest:
    """The sealed test fold of ``split``."""
    X, y, ids = store.arrays([split.test_fold])
    if len(y) == 0:
        raise ValueError(f"held_out_test: test fold {split.test_fold} holds no nodules")
    return HeldOutTest(split, X, np.asarray(y), tuple(ids))
