"""HTTP client of one model served by TorchServe's inference API (httpx; no TorchServe import).

Requests are ``POST /predictions/<model>`` (or ``/explanations/<model>``) with the ``.npy`` payload of
:mod:`naslung.scoring` and ``Authorization: Bearer <inference key>``. ``wire="uint8"`` (the default, as
``serve.wire``) sends the patches quantised to uint8 (32 KiB per 32^3 patch,
:func:`naslung.scoring.quantise_uint8`), ``"float32"`` as they are (128 KiB). ``columnar=True`` (default)
asks for the columnar answer of ``/predictions`` (header ``X-NASLung-Format: columnar``); the client
parses either encoding, so an older handler's per-patch list is read too, and always hands back one dict
per patch. Connection failures and 502/503/504 answers are retried (``retries`` times, waiting 0.5 s,
1 s, ...); any other non-200 answer raises :class:`ServingError` with the server's message.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from naslung.errors import UserError
from naslung.scoring import COLUMNAR, COLUMNAR_HEADER, encode_payload, quantise_uint8, rows_from_answer

RETRY_STATUSES = (502, 503, 504)


class ServingError(UserError, RuntimeError):
    """A request TorchServe (or the handler) refused; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ServingClient:
    """Thread-safe client of one TorchServe model: one pooled keep-alive httpx client, bearer token.

    ``predict(patches)`` posts patches (N, 32, 32, 32) float32 in [0, 1] to ``/predictions/<model>`` and
    returns one dict per patch (probability, label, votes, member_probs, model_name, model_version);
    ``explain(patches)`` posts them to ``/explanations/<model>`` and each dict also holds ``cam``,
    ``attention`` and ``explain_target`` (decode the maps with :func:`naslung.scoring.decode_map`).
    ``timeout_s`` bounds connecting, sending, waiting for the answer and waiting for a free connection
    (each, in s); ``max_connections`` caps the connections kept to the server (None: httpx's default, 100).
    """

    def __init__(
        self,
        base_url: str,
        model_name: str,
        key: str | None,
        timeout_s: float = 120.0,
        retries: int = 2,
        max_connections: int | None = None,
        wire: str = "uint8",
        columnar: bool = True,
    ) -> None:
        if wire not in ("uint8", "float32"):
            raise ValueError(f"wire must be uint8 or float32, got {wire!r}")
        self.wire = wire
        self.columnar = bool(columnar)
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = f"/predictions/{model_name}"
        self.explain_path = f"/explanations/{model_name}"
        self.key = key
        self.timeout_s = timeout_s
        self.retries = retries
        limits = httpx.Limits() if max_connections is None else httpx.Limits(max_connections=max_connections)
        # trust_env=False: loopback traffic never goes through an HTTP(S)_PROXY from the environment
        self._http = httpx.Client(
            base_url=f"http://{self.host}:{self.port}",
            timeout=httpx.Timeout(timeout_s),
            limits=limits,
            trust_env=False,
        )

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def post(self, body: bytes, auth: bool = True, path: str | None = None, columnar: bool = False) -> tuple[int, str]:
        """POST a raw body (to ``path``, default the predictions path); returns (status, text).
        ``columnar`` asks for the columnar answer. Retries connection failures and 502/503/504 answers;
        raises :class:`ServingError` (status 0) when no answer came."""
        headers = {"Content-Type": "application/octet-stream"}
        if columnar:
            headers[COLUMNAR_HEADER] = COLUMNAR
        if auth and self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                resp = self._http.post(path or self.path, content=body, headers=headers)
            except httpx.TransportError as exc:
                last = exc
                time.sleep(0.5 * (attempt + 1))
                continue
            if resp.status_code in RETRY_STATUSES and attempt < self.retries:
                time.sleep(0.5 * (attempt + 1))
                continue
            return resp.status_code, resp.content.decode(errors="replace")
        raise ServingError(f"no answer from TorchServe at {self.host}:{self.port}: {last}", 0)

    def body(self, patches: np.ndarray) -> bytes:
        """The request body of patches (n, 32, 32, 32) in [0, 1] in this client's wire format."""
        return encode_payload(quantise_uint8(patches) if self.wire == "uint8" else np.asarray(patches, np.float32))

    def predict(self, patches: np.ndarray) -> list[dict[str, Any]]:
        """One result dict per patch from ``/predictions/<model>``."""
        return answers(self.post(self.body(patches), columnar=self.columnar), len(patches))

    def explain(self, patches: np.ndarray) -> list[dict[str, Any]]:
        """One result dict per patch, with encoded maps, from ``/explanations/<model>``."""
        return answers(self.post(self.body(patches), path=self.explain_path), len(patches))


def answers(answer: tuple[int, str], n_patches: int) -> list[dict[str, Any]]:
    """The per-patch result dicts of one (status, text) answer, per-patch list or columnar object;
    :class:`ServingError` unless it is a 200 holding exactly ``n_patches`` results (a single-patch answer
    may come back unwrapped)."""
    status, text = answer
    if status != 200:
        raise ServingError(f"TorchServe answered HTTP {status}: {error_message(text)}", status)
    try:
        out = rows_from_answer(json.loads(text))
    except ValueError as exc:
        raise ServingError(f"TorchServe answer not understood: {exc}", 502) from exc
    if len(out) != n_patches:
        raise ServingError(f"TorchServe returned {len(out)} results for {n_patches} patches", 502)
    return out


def error_message(text: str) -> str:
    """The ``error`` (or ``message``) of a JSON error body, else the text itself; at most 300 characters."""
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:300] or "(empty body)"
    if isinstance(data, dict):
        return str(data.get("error") or data.get("message") or data)[:300]
    return str(data)[:300]
