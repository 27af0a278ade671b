"""Sending patches to a scorer in requests of a fixed size, several requests in flight.

The scorer is any callable ``(patches) -> answers``: ``patches`` (n, 32, 32, 32) in [0, 1], (z, y, x),
float32 (uint8 0..255 when the pool quantises: ``wire="uint8"``, then the scorer sends them as they are);
``answers`` one dict per patch (``probability``, ``label``, ``votes``, ``model_version``, and
with explanations ``cam`` / ``explain_target``); an exception means the whole request failed. E.g.
:meth:`naslung.serving_client.ServingClient.predict`, or an in-process function.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from naslung.scoring import quantise_uint8
from naslung.scoring_csv.rows import RowResult, wire_sha256

Scorer = Callable[[np.ndarray], list[dict[str, Any]]]


@dataclass
class Request:
    """One request: its rows and their stacked patches (n, 32, 32, 32); after it ran, either
    ``answers`` (what the scorer returned, not yet checked) or ``error``, and ``seconds`` it took."""

    rows: list[RowResult]
    patches: np.ndarray
    answers: list[dict[str, Any]] = field(default_factory=list)
    error: Exception | None = None
    seconds: float = 0.0
    patch_sha256: list[str] = field(default_factory=list)
    """:func:`~naslung.scoring_csv.rows.patch_sha256` of each patch, hashed in the request's thread from the
    uint8 wire form it quantised once (whatever ``wire`` sends)."""


def _run(scorer: Scorer, request: Request, wire: str = "float32") -> Request:
    quantised = quantise_uint8(request.patches)  # once: the hashed form and, with wire uint8, what is sent
    request.patch_sha256 = wire_sha256(quantised)
    t = time.perf_counter()
    request.answers = scorer(quantised if wire == "uint8" else request.patches)
    request.seconds = time.perf_counter() - t
    return request


class RequestPool:
    """Groups ``(row, patch)`` pairs into requests of ``size`` patches (in the order added) and runs them
    on ``concurrency`` threads, with at most ``2 * concurrency`` requests submitted and not yet handed
    back. ``on_done(request)`` is called in the caller's thread for every finished request.

    Use as a context manager: ``add`` patches, ``send`` the full requests, ``finish`` at the end.

    ``wire``: ``"uint8"`` quantises each request's patches once (:func:`naslung.scoring.quantise_uint8`,
    a quarter of the memory and of the bytes sent) before the scorer sees them; ``"float32"`` (default)
    passes them as they are. :attr:`Request.patches` keeps the float32 patches (overlays are drawn from them).
    """

    def __init__(
        self,
        scorer: Scorer,
        size: int,
        concurrency: int,
        on_done: Callable[[Request], None],
        wire: str = "float32",
    ) -> None:
        if wire not in ("uint8", "float32"):
            raise ValueError(f"wire must be uint8 or float32, got {wire!r}")
        self.wire = wire
        self.scorer = scorer
        self.size = max(1, int(size))
        workers = max(1, int(concurrency))
        self.max_in_flight = 2 * workers
        self.on_done = on_done
        self.n_sent = 0
        self.wait_s = 0.0
        """Time (s) the caller spent waiting for answers."""
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="score")
        self._pending: dict[Future[Request], Request] = {}
        self._buffer: list[tuple[RowResult, np.ndarray]] = []

    def __enter__(self) -> RequestPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)

    def add(self, items: Iterable[tuple[RowResult, np.ndarray]]) -> None:
        """Queue patches; nothing is sent until :meth:`send`."""
        self._buffer.extend(items)

    def send(self, partial: bool = False) -> None:
        """Submit every full request queued (and, with ``partial``, the last short one), first waiting
        for answers whenever the in-flight limit is reached."""
        while len(self._buffer) >= self.size or (partial and self._buffer):
            chunk = self._buffer[: self.size]
            del self._buffer[: self.size]
            self._drain(self.max_in_flight - 1)
            request = Request([row for row, _ in chunk], np.stack([patch for _, patch in chunk]))
            self._pending[self._pool.submit(_run, self.scorer, request, self.wire)] = request
            self.n_sent += len(chunk)

    def finish(self) -> None:
        """Send what is queued and hand back every answer."""
        self.send(partial=True)
        self._drain(0)

    def _drain(self, limit: int) -> None:
        while len(self._pending) > limit:
            t = time.perf_counter()
            finished, _ = wait(list(self._pending), return_when=FIRST_COMPLETED)
            self.wait_s += time.perf_counter() - t
            for future in finished:
                request = self._pending.pop(future)
                try:
                    future.result()
                except Exception as exc:
                    request.error = exc
                self.on_done(request)
