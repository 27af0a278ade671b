"""TorchServe handler for the NASLung ensemble (packaged into the .mar by ``naslung serve package``).

The .mar holds the serving package of :mod:`naslung.ensemble.layout`: ``ensemble/`` (``members.json`` +
``member_<i>.pt``, the ``Ensemble.save`` layout) and ``model_info.json`` (registered model name, version,
alias, run id, the model card's facts), plus ``model-config.yaml``. Request body: see
``naslung.scoring`` (``.npy`` of (N, 32, 32, 32) float32 in [0, 1] or uint8). Response: a JSON list,
one object per patch (probability, label, votes, member_probs, model_name, model_version).

Explainability maps: a request sent to TorchServe's Explanations API (``POST /explanations/<model>``)
reaches the handler with the request header ``explain: True`` (set by the frontend, the flag
``BaseHandler._is_explain`` reads — but only for request 0; here every request of a batch is checked
on its own). Those requests' patch objects also carry ``cam``, ``attention`` and ``explain_target``
(encoding: ``naslung.scoring``); ``/predictions`` requests in the same batch are answered without maps.

All requests TorchServe groups into one batch are decoded one by one; the good ones are concatenated
and every member runs on the whole batch at once, on ``cuda:<gpu_id>`` when TorchServe assigned a GPU
and CUDA is available, on CPU otherwise. A bad request gets its own 4xx (``context.set_response_status``
with ``idx``) and a JSON ``{"error", "status"}`` body; the others in the batch are answered normally
and the worker keeps running.

Settings: the ``handler:`` section of the .mar's ``model-config.yaml`` (written by ``naslung serve package``
from the ``serve:`` params, read from ``context.model_yaml_config``): ``device`` (``auto`` | ``cpu``),
``torch_threads`` (torch threads per worker; 0 keeps torch's default) and ``max_payload_mb`` (request size
limit in MiB; default ``model_info.json``'s ``max_payload_mb``, else 16).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler

from naslung.ensemble import layout
from naslung.ensemble.model import Ensemble
from naslung.scoring import ModelId, score_requests

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


def _wants_explain(context: Any, idx: int) -> bool:
    """True when request ``idx`` of the batch came through the Explanations API (header ``explain``)."""
    try:
        value = context.get_request_header(idx, "explain")
    except (AttributeError, IndexError, KeyError, TypeError):
        return False
    if isinstance(value, (bytes, bytearray)):
        value = value.decode(errors="replace")
    return str(value).strip().lower() == "true" if value is not None else False


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
        self.model_id = ModelId(name=str(info["name"]), version=str(info["version"]))
        max_mb = float(settings.get("max_payload_mb") or info.get("max_payload_mb", 16.0))
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.ensemble = Ensemble.load(ensemble_dir, device=str(self.device))
        self.context = context
        self.initialized = True
        logger.info(
            "NASLung ensemble %s v%s loaded on %s (%d threads, payload limit %d bytes)",
            self.model_id.name,
            self.model_id.version,
            self.device,
            torch.get_num_threads(),
            self.max_bytes,
        )

    def handle(self, data: list[Any], context: Any) -> list[Any]:
        self.context = context
        bodies = [_body(r) for r in data]
        explain = [_wants_explain(context, i) for i in range(len(data))]
        with torch.inference_mode():
            answers = score_requests(self.ensemble, bodies, self.max_bytes, self.model_id, explain=explain)
        out: list[Any] = []
        for i, (status, response) in enumerate(answers):
            if status != 200:
                context.set_response_status(code=status, phrase=response["error"], idx=i)
            out.append(response)
        return out
