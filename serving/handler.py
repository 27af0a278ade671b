"""TorchServe handler for the NASLung ensemble (packaged into the .mar by ``naslung serve package``).

The .mar holds the serving package of :mod:`naslung.ensemble.layout`: ``ensemble/`` (``members.json`` +
``member_<i>.pt``, the ``Ensemble.save`` layout) and ``model_info.json`` (registered model name, version,
alias, run id, the model card's facts), plus ``model-config.yaml``. Request body: see
``naslung.scoring`` (``.npy`` of (N, 32, 32, 32) float32 in [0, 1] or uint8 0..255). Response: a JSON list,
one object per patch (probability, label, votes, member_probs, model_name, model_version, device, the
model's audit facts ``model_alias`` / ``data_revision`` / ``git_commit`` from ``model_info.json`` where it
records them, and the ensemble's further prediction fields), or, when the request carries the header
``X-NASLung-Format: columnar`` (``naslung.scoring.COLUMNAR_HEADER``), one columnar JSON object with the
same values as arrays. Every answer names the device the worker runs on (``cpu``, ``cuda:<gpu_id>``) and
is encoded here as compact JSON bytes (TorchServe itself would indent it).

Explainability maps: a request sent to TorchServe's Explanations API (``POST /explanations/<model>``)
reaches the handler with the request header ``explain: True`` (set by the frontend, the flag
``BaseHandler._is_explain`` reads — but only for request 0; here every request of a batch is checked
on its own). Those requests' patch objects also carry ``cam``, ``attention`` and ``explain_target``
(encoding: ``naslung.scoring``); ``/predictions`` requests in the same batch are answered without maps.

All requests TorchServe groups into one batch are decoded one by one; the good ones are concatenated
and all members run on the whole batch in one forward (:class:`naslung.ensemble.fused.FusedEnsemble`):
on ``cuda:<gpu_id>`` when TorchServe assigned a GPU and CUDA is available (compiled, CUDA graphs per
batch bucket, autocast per ``precision``), on CPU otherwise (eager fp32, ``Ensemble.predict``'s
results; channels-last-3d convolutions when they agree with eager fp32 within
``CPU_LAYOUT_TOL`` on probe patches at start-up: handler setting ``channels_last``, default on). A bad
request gets its own 4xx (``context.set_response_status`` with ``idx``) and a JSON
``{"error", "status"}`` body; the others in the batch are answered normally and the worker keeps running.

Reduced precision is checked at start-up against fp32 on deterministic probe patches
(:func:`naslung.ensemble.fused.parity`); above 1e-3 the worker logs it and falls back to fp32.

Settings: the ``handler:`` section of the .mar's ``model-config.yaml`` (written by ``naslung serve package``
from the ``serve:`` params, read from ``context.model_yaml_config``): ``device`` (``auto`` | ``cpu``),
``torch_threads`` (torch threads per worker; 0 keeps torch's default), ``max_payload_mb`` (request size
limit in MiB; default ``model_info.json``'s ``max_payload_mb``, else 16), ``precision`` (auto | fp32 |
bf16 | fp16) and ``buckets`` (batch sizes the GPU forward is captured for).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler

from naslung.ensemble import layout
from naslung.ensemble.fused import (
    CPU_LAYOUT_TOL,
    DEFAULT_BUCKETS,
    FusedEnsemble,
    Parity,
    parity,
    probe_patches,
)
from naslung.ensemble.model import Ensemble
from naslung.scoring import COLUMNAR, COLUMNAR_HEADER, ModelId, score_requests

logger = logging.getLogger(__name__)


def _body(request: Any) -> bytes | bytearray | None:
    """Raw body of one TorchServe request (``data`` or ``body`` key); JSON/text bodies become bytes."""
    if not isinstance(request, dict):
        return request
    value = request.get("data")
    if value is None:
        value = request.get("body")
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (dict, list)):
        return json.dumps(value).encode()
    return value


def _header(context: Any, idx: int, name: str) -> str | None:
    """Request header ``name`` of request ``idx`` (case-insensitive), as text; None when absent."""
    try:
        headers = context.get_all_request_header(idx) or {}
    except (AttributeError, IndexError, KeyError, TypeError):
        headers = {}
    value = None
    with contextlib.suppress(AttributeError, IndexError, KeyError, TypeError):
        value = context.get_request_header(idx, name)
    if value is None:
        low = name.lower()
        value = next((v for k, v in headers.items() if str(k).lower() == low), None)
    if isinstance(value, (bytes, bytearray)):
        value = value.decode(errors="replace")
    return None if value is None else str(value)


def _wants_explain(context: Any, idx: int) -> bool:
    """True when request ``idx`` of the batch came through the Explanations API (header ``explain``)."""
    value = _header(context, idx, "explain")
    return value is not None and value.strip().lower() == "true"


def _wants_columnar(context: Any, idx: int, request: Any) -> bool:
    """True when request ``idx`` asks for the columnar answer (header ``X-NASLung-Format: columnar``, or the
    query parameter ``?format=columnar``, which TorchServe passes as a request key)."""
    value = _header(context, idx, COLUMNAR_HEADER)
    if value is None and isinstance(request, dict):
        raw = request.get("format")
        value = raw.decode(errors="replace") if isinstance(raw, (bytes, bytearray)) else raw
    return value is not None and str(value).strip().lower() == COLUMNAR


def _encode(response: Any) -> bytes:
    """Compact JSON bytes of one answer."""
    return json.dumps(response, separators=(",", ":"), allow_nan=False).encode()


class NASLungHandler(BaseHandler):
    """Ensemble scoring with per-request errors; one response per request in every batch."""

    def initialize(self, context: Any) -> None:
        props = context.system_properties
        model_dir = Path(props.get("model_dir", "."))
        settings = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        gpu_id = props.get("gpu_id")
        if str(settings.get("device", "auto")) != "cpu" and gpu_id is not None and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.device = torch.device("cpu")
        threads = int(settings.get("torch_threads") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        ensemble_dir, info = layout.read_package(model_dir)
        self.model_id = ModelId.from_info(info)  # name, version, alias, data revision, git commit
        max_mb = float(settings.get("max_payload_mb") or info.get("max_payload_mb", 16.0))
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.ensemble = Ensemble.load(ensemble_dir, device=str(self.device))
        precision = str(settings.get("precision") or "auto")
        buckets = tuple(int(b) for b in (settings.get("buckets") or DEFAULT_BUCKETS))
        self.fused = FusedEnsemble.from_ensemble(self.ensemble, precision=precision, buckets=buckets)
        self.parity: Parity | None = None
        if self.fused.dtype is not None:
            self.parity = parity(self.fused, probe_patches(64), members=self.ensemble.members)
            logger.info("NASLung start-up parity: %s", self.parity.describe())
            if not self.parity.ok:
                logger.warning("reduced precision off the fp32 results: falling back to fp32")
                self.fused = FusedEnsemble.from_ensemble(self.ensemble, precision="fp32", buckets=buckets)
        if self.device.type == "cpu" and self.fused.dtype is None and settings.get("channels_last", True):
            # CPU fp32: channels-last-3d convolutions (oneDNN) are faster; kept only when they give the
            # eager results on probe patches (max |dp| <= CPU_LAYOUT_TOL), else the plain eager forward.
            fast = FusedEnsemble.from_ensemble(self.ensemble, precision="fp32", buckets=buckets, channels_last=True)
            check = parity(fast, probe_patches(8), members=self.ensemble.members, tol=CPU_LAYOUT_TOL)
            logger.info("NASLung CPU channels-last-3d check: %s", check.describe())
            if check.ok:
                self.fused = fast
        if self.device.type == "cuda":
            t = time.perf_counter()
            self.fused.warmup()
            logger.info("NASLung forward warmed up for buckets %s in %.1f s", list(buckets), time.perf_counter() - t)
        self.device_name = str(self.device)
        self.context = context
        self.initialized = True
        logger.info(
            "NASLung ensemble %s v%s loaded on %s (%s; %d threads, payload limit %d bytes)",
            self.model_id.name,
            self.model_id.version,
            self.device,
            self.fused.describe(),
            torch.get_num_threads(),
            self.max_bytes,
        )

    def handle(self, data: list[Any], context: Any) -> list[Any]:
        self.context = context
        bodies = [_body(r) for r in data]
        explain = [_wants_explain(context, i) for i in range(len(data))]
        columnar = [_wants_columnar(context, i, r) for i, r in enumerate(data)]
        with torch.inference_mode():
            answers = score_requests(
                self.ensemble,
                bodies,
                self.max_bytes,
                self.model_id,
                explain=explain,
                columnar=columnar,
                predict=self.fused.predict,
                device=self.device_name,
            )
        out: list[Any] = []
        for i, (status, response) in enumerate(answers):
            if status != 200:
                context.set_response_status(code=status, phrase=response["error"], idx=i)
            with contextlib.suppress(AttributeError, IndexError, KeyError, TypeError):
                context.set_response_content_type(i, "application/json")
            out.append(_encode(response))
        return out
