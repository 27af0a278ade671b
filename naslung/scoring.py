"""Scoring core shared by the TorchServe handler, the CSV scorer and in-process checks.

Payload format (one HTTP request body): a NumPy ``.npy`` file (``np.save``, no pickle) holding

- ``(N, 32, 32, 32)`` or ``(N, 1, 32, 32, 32)`` patches in numpy order (z, y, x), 1 mm isotropic,
  HU window already mapped to intensity;
- dtype ``float32`` with values in [0, 1], or ``uint8`` (0..255, divided by 255 on arrival);
- ``N >= 1`` and the body no larger than the configured limit (``serve.max_payload_mb``).

The array checks are :func:`naslung.data.patches.check_patches`'s. Anything else raises
:class:`PayloadError`, which carries an HTTP-ish status (400 malformed, 413 too
large, 422 well-formed but unusable) and a message meant for the caller. This module imports neither
TorchServe nor MLflow.

Client side, :func:`quantise_uint8` turns [0, 1] float32 patches into the lean uint8 wire format
(``serve.wire: uint8``; 32 KiB per 32^3 patch instead of 128 KiB; values rounded to multiples of 1/255).

Response (``/predictions``), one of two encodings:

- the per-patch list (default, old clients): a JSON list, one object per patch: ``probability``
  (the ensemble's P(malignant): the mean member probability, or its calibrated value when the ensemble
  is calibrated), ``label`` (majority vote, 1 malignant), ``votes``, ``member_probs``, ``model_name``,
  ``model_version``, ``device`` (where the handler ran, e.g. ``cuda:0``), the model's audit facts when the
  package records them (``model_alias``: the registry alias it was packaged from, ``data_revision``: the
  data hash recorded at registration, ``git_commit``; see :class:`ModelId`), and the further prediction
  fields when the ensemble gives them (``raw_probability``, ``uncertainty``, ``refer``);
- columnar (when the request asks: header ``X-NASLung-Format: columnar``, :data:`COLUMNAR_HEADER`): ONE
  JSON object ``{"format": "columnar", "n": N, "probability": [N], "label": [N], "votes": [N],
  "member_probs": [N][k], ..., "model_name", "model_version", "device"}`` — the same per-patch values as
  arrays, encoded without a Python object per patch. :func:`rows_from_answer` turns either into the
  per-patch list.

Explainability maps (only for requests that ask, e.g. TorchServe's ``POST /explanations/<model>``; a
``/predictions`` request never computes them): each patch object additionally carries

- ``cam``: the ensemble's class activation map (mean over members, logit units) for ``explain_target``;
- ``attention``: the stage-2 CBAM spatial attention (mean over members, values in (0, 1)), or ``null``
  when a member has no CBAM;
- ``explain_target``: the class the CAM is for — the reported ``label`` (the ensemble's majority vote).

Each map is encoded as text: base64 (standard alphabet, padded) of a ``.npy`` file (``np.save``, no
pickle) holding a float16 array of shape (32, 32, 32) in the patch's (z, y, x) order, on the patch grid
(1 mm voxels). :func:`encode_map` writes it and :func:`decode_map` reads it back as float32, i.e.
``np.load(io.BytesIO(base64.b64decode(s)))``. An explanation request may hold at most as many patches
as a float32 payload at the size limit (``max_bytes // 131072``), so its answer stays bounded; more get 413.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np

from naslung.data.patches import PATCH_SIZE, PatchArrayError, check_patches

logger = logging.getLogger(__name__)


class PayloadError(ValueError):
    """A request body that cannot be scored; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status}


def encode_payload(patches: np.ndarray) -> bytes:
    """Serialise patches (N, 32, 32, 32) float32/uint8 to the ``.npy`` bytes the server expects."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(patches), allow_pickle=False)
    return buf.getvalue()


def decode_payload(
    body: bytes | bytearray | memoryview | None, max_bytes: int, patch_size: int = PATCH_SIZE
) -> np.ndarray:
    """Decode and validate one request body.

    Returns float32 patches of shape (N, 1, P, P, P) (model input), values in [0, 1].
    Raises :class:`PayloadError` (400 / 413 / 422) with a message naming what is wrong.
    """
    if body is not None and not isinstance(body, (bytes, bytearray, memoryview)):
        raise PayloadError(f"body of type {type(body).__name__} not accepted: send application/octet-stream .npy", 415)
    if body is None or len(body) == 0:
        raise PayloadError("empty body: send a .npy array of shape (N, 32, 32, 32)", 400)
    if len(body) > max_bytes:
        raise PayloadError(
            f"payload of {len(body)} bytes exceeds the limit of {max_bytes} bytes; send fewer patches per request",
            413,
        )
    if bytes(body[:6]) != b"\x93NUMPY":
        raise PayloadError("body is not a .npy file (missing the \\x93NUMPY magic); use numpy.save", 400)
    try:
        arr = np.load(io.BytesIO(bytes(body)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise PayloadError(f"cannot read the .npy payload (truncated or corrupt?): {exc}", 400) from exc
    if not isinstance(arr, np.ndarray):
        raise PayloadError("payload must be a single .npy array, not an archive", 400)
    try:
        x = check_patches(arr, "payload", size=patch_size, dtypes=(np.float32, np.uint8))
    except PatchArrayError as exc:
        raise PayloadError(str(exc), 422) from exc
    if x.dtype == np.uint8:
        out = x.astype(np.float32) / np.float32(255.0)
    else:
        out = np.ascontiguousarray(x, dtype=np.float32)
    return out[:, None]


COLUMNAR_HEADER = "X-NASLung-Format"
"""Request header asking for the columnar answer (value :data:`COLUMNAR`)."""
COLUMNAR = "columnar"

_FIELDS = (  # (response key, prediction attribute, cast) — optional ones only when the prediction has them
    ("probability", "prob", float),
    ("raw_probability", "raw_prob", float),
    ("uncertainty", "uncertainty", float),
    ("refer", "refer", bool),
    ("label", "label", int),
    ("votes", "votes", int),
    ("member_probs", "member_probs", float),
)
_REQUIRED = ("probability", "label", "votes", "member_probs")


def quantise_uint8(patches: np.ndarray) -> np.ndarray:
    """[0, 1] float patches -> uint8 ``round(clip(p, 0, 1) * 255)`` (the server divides by 255; the
    round trip is off by at most 1/510 per voxel). uint8 input is returned as it is."""
    a = np.asarray(patches)
    if a.dtype == np.uint8:
        return a
    return np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


class EnsembleLike(Protocol):
    """What scoring needs from ``naslung.ensemble.model.Ensemble``."""

    def predict(self, X: np.ndarray) -> Any: ...


@dataclass(frozen=True)
class ModelId:
    """The served model as the .mar's ``model_info.json`` records it: registered name and version, and,
    when known, the registry alias it was packaged from, its data revision (the model card's data hash:
    12 hex digits over the patch store's DVC md5s, tag ``naslung.data.hash``) and the git commit."""

    name: str
    version: str
    alias: str | None = None
    data_revision: str | None = None
    git_commit: str | None = None

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> ModelId:
        """The id of a ``model_info.json`` payload (``name``, ``version``, ``alias``, ``data_hash``,
        ``git_commit``; the last three may be absent or null)."""

        def text(key: str) -> str | None:
            value = info.get(key)
            return None if value in (None, "") else str(value)

        return cls(str(info["name"]), str(info["version"]), text("alias"), text("data_hash"), text("git_commit"))


def score_batch(
    ensemble: EnsembleLike, X: np.ndarray, model: ModelId | None = None, device: str | None = None
) -> list[dict[str, Any]]:
    """Run every member on the whole batch X (n,1,32,32,32) or (n,32,32,32) float32 at once.

    One dict per patch: ``probability``, ``label`` (majority vote, 1 malignant), ``votes`` (# malignant
    member votes), ``member_probs`` (list, one per member), the optional prediction fields, ``model_name``,
    ``model_version``, ``device`` (see the module docstring).
    """
    return patch_results(ensemble.predict(X), model, device)


def prediction_columns(pred: Any) -> dict[str, np.ndarray]:
    """The answer's arrays of a prediction (``prob``, ``label``, ``votes``, ``member_probs`` and, when
    present and not None, ``raw_prob``, ``uncertainty``, ``refer``), keyed by their response names."""
    cols: dict[str, np.ndarray] = {}
    for key, attr, cast_to in _FIELDS:
        value = getattr(pred, attr, None)
        if value is None:
            if key in _REQUIRED:
                raise AttributeError(f"prediction has no {attr!r}")
            continue
        dtype = {float: np.float64, int: np.int64, bool: np.bool_}[cast_to]
        cols[key] = np.asarray(value).astype(dtype)
    return cols


def _meta(model: ModelId | None, device: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "model_name": model.name if model else None,
        "model_version": model.version if model else None,
        "device": device,
    }
    if model is not None:  # the audit facts, only where the package records them (a few bytes per answer)
        for key, value in (
            ("model_alias", model.alias),
            ("data_revision", model.data_revision),
            ("git_commit", model.git_commit),
        ):
            if value is not None:
                meta[key] = value
    return meta


def rows_of_columns(
    cols: dict[str, np.ndarray], model: ModelId | None = None, device: str | None = None
) -> list[dict[str, Any]]:
    """The per-patch list of :func:`prediction_columns`' arrays (values as :func:`patch_results` gives)."""
    lists = {k: v.tolist() for k, v in cols.items()}
    meta = _meta(model, device)
    n = len(lists["probability"])
    return [{**{k: v[i] for k, v in lists.items()}, **meta} for i in range(n)]


def columnar_answer(
    cols: dict[str, np.ndarray], model: ModelId | None = None, device: str | None = None
) -> dict[str, Any]:
    """The columnar answer of :func:`prediction_columns`' arrays (see the module docstring)."""
    out: dict[str, Any] = {"format": COLUMNAR, "n": len(cols["probability"])}
    out.update({k: v.tolist() for k, v in cols.items()})
    out.update(_meta(model, device))
    return out


def patch_results(pred: Any, model: ModelId | None = None, device: str | None = None) -> list[dict[str, Any]]:
    """Response objects from an :class:`~naslung.ensemble.model.EnsemblePrediction` (``prob``, ``label``,
    ``votes``, ``member_probs``, optional ``raw_prob`` / ``uncertainty`` / ``refer``) plus the model id
    and the device."""
    return rows_of_columns(prediction_columns(pred), model, device)


def rows_from_answer(data: Any) -> list[dict[str, Any]]:
    """Per-patch dicts of a decoded JSON answer in either encoding (a list, a single unwrapped object, or
    the columnar object). Raises ValueError for a columnar object whose arrays disagree in length."""
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"answer is neither a list nor an object: {type(data).__name__}")
    if data.get("format") != COLUMNAR:
        return [data]
    n = int(data.get("n", len(data.get("probability", []))))
    arrays = {k: v for k, v in data.items() if isinstance(v, list)}
    bad = {k: len(v) for k, v in arrays.items() if len(v) != n}
    if bad or "probability" not in arrays:
        raise ValueError(f"columnar answer for {n} patches has arrays of other lengths: {bad or 'no probability'}")
    scalars = {k: v for k, v in data.items() if k not in arrays and k not in ("format", "n")}
    return [{**{k: v[i] for k, v in arrays.items()}, **scalars} for i in range(n)]


MAP_DTYPE = np.float16
"""dtype of the encoded explainability maps."""

_F16_MAX = float(np.finfo(np.float16).max)


def encode_map(arr: Any) -> str:
    """One (32, 32, 32) map, (z, y, x) -> base64 text of a float16 ``.npy`` (see the module docstring).

    Values beyond the float16 range are clipped to it (NaN stays NaN)."""
    a = np.asarray(arr, dtype=np.float32)
    p = PATCH_SIZE
    if a.shape != (p, p, p):
        raise ValueError(f"encode_map: expected a ({p}, {p}, {p}) map, got shape {a.shape}")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(np.clip(a, -_F16_MAX, _F16_MAX).astype(MAP_DTYPE)), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_map(s: str | bytes) -> np.ndarray:
    """Inverse of :func:`encode_map`: float32 array (32, 32, 32) in (z, y, x) order.

    Raises ``ValueError`` for text that is not a base64 ``.npy`` of a (32, 32, 32) array."""
    if not isinstance(s, (str, bytes)):
        raise ValueError(f"decode_map: expected base64 text, got {type(s).__name__}")
    try:
        raw = base64.b64decode(s, validate=True)
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except (binascii.Error, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"decode_map: not a base64-encoded .npy map: {exc}") from exc
    p = PATCH_SIZE
    if not isinstance(arr, np.ndarray) or arr.shape != (p, p, p):
        raise ValueError(f"decode_map: expected a ({p}, {p}, {p}) map, got {getattr(arr, 'shape', type(arr).__name__)}")
    return arr.astype(np.float32)


def max_explain_patches(max_bytes: int, patch_size: int = PATCH_SIZE) -> int:
    """Most patches one explanation request may hold: as many as a float32 payload at the limit."""
    return max(1, int(max_bytes) // (4 * patch_size**3))


def explain_results(
    ensemble: Any, X: np.ndarray, model: ModelId | None = None, device: str | None = None
) -> list[dict[str, Any]]:
    """Score X and explain it in one pass over the members: :func:`score_batch`'s objects plus ``cam``,
    ``attention`` and ``explain_target`` (the reported ``label``, i.e. the members' majority vote).

    ``ensemble`` needs a ``members`` list of models with ``forward_maps`` (``naslung.ensemble.model.Ensemble``);
    its ``prediction_from_member_probs`` (when it has one, e.g. with calibration) combines the member
    probabilities, else ``EnsemblePrediction.from_member_probs``.
    """
    from naslung.ensemble.model import EnsemblePrediction
    from naslung.explain.maps import explain

    maps = explain(ensemble, X, target="vote")
    combine = getattr(ensemble, "prediction_from_member_probs", None) or EnsemblePrediction.from_member_probs
    results = patch_results(combine(maps.member_probs), model, device)
    for i, r in enumerate(results):
        r["cam"] = encode_map(maps.cam[i])
        r["attention"] = encode_map(maps.attention[i]) if maps.attention is not None else None
        r["explain_target"] = int(maps.target[i])
    return results


def score_requests(
    ensemble: EnsembleLike,
    bodies: Sequence[bytes | bytearray | None],
    max_bytes: int,
    model: ModelId | None = None,
    explain: Sequence[bool] | None = None,
    columnar: Sequence[bool] | None = None,
    predict: Callable[[np.ndarray], Any] | None = None,
    device: str | None = None,
) -> list[tuple[int, Any]]:
    """Score several request bodies as ONE batch; return one ``(status, response)`` per body, in order.

    Bad bodies get ``(4xx, {"error": ..., "status": ...})`` and do not affect the others; the good ones
    are concatenated (plain and explanation requests separately) and sent through all members at once,
    then split back per request.

    ``predict``: patches (n, 1, 32, 32, 32) -> prediction for the plain requests (default
    ``ensemble.predict``; e.g. :meth:`naslung.ensemble.fused.FusedEnsemble.predict`). ``device``: named in
    every answer. ``columnar``: one flag per body (default: none); a flagged plain request is answered with
    the columnar object instead of the per-patch list (explanation requests always get the list).

    ``explain``: one flag per body (default: none). The patches of flagged requests go through
    :func:`naslung.explain.maps.explain` instead of the plain prediction (one pass over the members gives
    both the probabilities and the maps), and their patch results gain ``cam``, ``attention`` and
    ``explain_target`` (see the module docstring);
    unflagged requests are answered exactly as without maps. A flagged request with more than
    :func:`max_explain_patches` patches gets 413; when the map computation itself fails, the flagged
    requests get 500 and the others are still answered.
    """
    flags = [False] * len(bodies) if explain is None else [bool(f) for f in explain]
    wants_columns = [False] * len(bodies) if columnar is None else [bool(f) for f in columnar]
    if len(flags) != len(bodies) or len(wants_columns) != len(bodies):
        raise ValueError(
            f"score_requests: {len(flags)} explain and {len(wants_columns)} columnar flags for {len(bodies)} bodies"
        )
    run = predict or ensemble.predict
    limit = max_explain_patches(max_bytes)
    decoded: list[np.ndarray | PayloadError] = []
    for body, flag in zip(bodies, flags):
        try:
            x = decode_payload(body, max_bytes)
            if flag and len(x) > limit:
                raise PayloadError(
                    f"an explanation request may hold at most {limit} patches (got {len(x)}): the maps make the "
                    "answer large; send fewer patches per request",
                    413,
                )
            decoded.append(x)
        except PayloadError as err:
            decoded.append(err)
    out: list[tuple[int, Any]] = [
        (d.status, d.to_dict()) if isinstance(d, PayloadError) else (200, []) for d in decoded
    ]
    for explaining in (False, True):  # plain requests in one batch, explanation requests in another
        idx = [i for i, d in enumerate(decoded) if isinstance(d, np.ndarray) and flags[i] == explaining]
        if not idx:
            continue
        X = np.concatenate([decoded[i] for i in idx], axis=0)
        start = 0
        if not explaining:
            cols = prediction_columns(run(X))
            for i in idx:
                n = len(cast(np.ndarray, decoded[i]))  # idx holds only the decoded arrays
                part = {k: v[start : start + n] for k, v in cols.items()}
                answer = (
                    columnar_answer(part, model, device) if wants_columns[i] else rows_of_columns(part, model, device)
                )
                out[i] = (200, answer)
                start += n
            continue
        try:
            results = explain_results(ensemble, X, model, device)
        except Exception as exc:
            logger.exception("explainability maps failed for %d request(s)", len(idx))
            message = f"explainability maps failed: {type(exc).__name__}: {exc}"
            for i in idx:
                out[i] = (500, {"error": message, "status": 500})
            continue
        for i in idx:
            n = len(cast(np.ndarray, decoded[i]))
            out[i] = (200, results[start : start + n])
            start += n
    return out
