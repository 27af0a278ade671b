"""The MLflow pyfunc models of NASLung, their signatures and input example (adapter: imports mlflow).

* :class:`NASLungPyfunc` — one NASLungNet or DnasNet (artifacts ``weights``: state dict .pt, ``spec``:
  JSON); ``predict`` returns the malignancy probability softmax(model(x))[:, 1] as float32 (n,).
  Logged by :func:`naslung.tracking.log_model` for every training run.
* :class:`EnsemblePyfunc` — the ensemble (artifact ``ensemble``: the ensemble directory of
  :mod:`naslung.ensemble.layout`, ``calibration.json`` included); ``predict`` returns a DataFrame with
  ``probability`` (calibrated mean member probability), ``raw_probability`` (the uncalibrated mean),
  ``uncertainty`` (std of the member probabilities), ``refer`` (uncertainty above the stored
  ``refer_spread``), ``label`` (majority vote), ``votes`` and one ``prob_<member>`` column per member.
  Registered by :func:`naslung.registry.register`.

Both take float32 patches (n, 1, 32, 32, 32) or (n, 32, 32, 32) in [0, 1], axes (z, y, x), 1 mm voxels
(:data:`naslung.card.PATCH_INPUT`); a named-tensor payload ``{"patch": array}`` is accepted too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec

from naslung.card import PATCH_INPUT
from naslung.ensemble.layout import ENSEMBLE_DIR

INPUT_SHAPE = PATCH_INPUT.shape
"""(-1, 1, 32, 32, 32): any batch of single-channel (z, y, x) patches."""


def _patches(model_input: Any, who: str, what: str) -> np.ndarray:
    """``model_input`` as float32 (n, 1, 32, 32, 32); raises ValueError naming ``who`` otherwise."""
    x = np.asarray(model_input, dtype=np.float32)
    if x.ndim == 4:
        x = x[:, None]
    if x.ndim != 5 or x.shape[1:] != tuple(INPUT_SHAPE[1:]):
        raise ValueError(f"{who}: expected (n, 1, 32, 32, 32) {what}, got {x.shape}")
    return x


def _input_schema() -> Schema:
    return Schema([TensorSpec(np.dtype(np.float32), INPUT_SHAPE)])


# --- one network -------------------------------------------------------------------------------------


class NASLungPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of one NASLungNet or DnasNet: artifacts ``weights`` (state dict .pt) and ``spec`` (JSON)."""

    def load_context(self, context: Any) -> None:
        from naslung.models.factory import build, spec_from_dict

        meta = json.loads(Path(context.artifacts["spec"]).read_text(encoding="utf-8"))
        self.spec = spec_from_dict(meta["spec"])  # ArchSpec or DNAS-derived DnasArch
        self.model = build(self.spec, margin_m=int(meta.get("margin_m", 4)))
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval()

    # np.ndarray is a hint MLflow does not infer a schema from: the explicit tensor signature governs input.
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        if isinstance(model_input, dict):  # a named-tensor payload: {"patch": array}
            (model_input,) = model_input.values()
        x = _patches(model_input, "NASLungPyfunc", "float32")
        with torch.no_grad():
            logits = self.model(torch.from_numpy(np.ascontiguousarray(x)))
            return torch.softmax(logits.float(), dim=1)[:, 1].numpy().astype(np.float32)


def model_signature() -> ModelSignature:
    """float32 (-1, 1, 32, 32, 32) -> float32 (-1,) malignancy probability."""
    return ModelSignature(inputs=_input_schema(), outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,))]))


# --- the ensemble ------------------------------------------------------------------------------------


class EnsemblePyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of :class:`~naslung.ensemble.model.Ensemble` (artifact ``ensemble`` = its directory).

    Runs on CUDA only when ``NASLUNG_DEVICE=cuda`` and CUDA is available, else on the CPU."""

    def load_context(self, context: Any) -> None:
        from naslung.ensemble.model import Ensemble

        device = "cuda" if torch.cuda.is_available() and os.environ.get("NASLUNG_DEVICE", "cpu") == "cuda" else "cpu"
        self.ensemble = Ensemble.load(context.artifacts[ENSEMBLE_DIR], device=device)

    # model_input is left without a type hint on purpose: the explicit tensor signature governs it.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        if isinstance(model_input, dict):  # a named tensor input arrives as {name: array}
            model_input = model_input.get("patch", next(iter(model_input.values())))
        pred = self.ensemble.predict(_patches(model_input, "EnsemblePyfunc", "float32 patches"))
        out = pd.DataFrame(
            {
                "probability": pred.prob.astype(np.float32),
                "raw_probability": pred.raw_prob.astype(np.float32),
                "uncertainty": pred.uncertainty.astype(np.float32),
                "refer": pred.refer.astype(bool),
                "label": pred.label.astype(np.int64),
                "votes": pred.votes.astype(np.int64),
            }
        )
        for j, name in enumerate(self.ensemble.member_names):
            out[f"prob_{name}"] = pred.member_probs[:, j].astype(np.float32)
        return out


def ensemble_signature(member_names: list[str]) -> ModelSignature:
    """float32 tensor (-1, 1, 32, 32, 32) -> probability (calibrated), raw_probability, uncertainty, refer,
    label, votes, prob_<member> columns."""
    cols = [
        ColSpec("float", "probability"),
        ColSpec("float", "raw_probability"),
        ColSpec("float", "uncertainty"),
        ColSpec("boolean", "refer"),
        ColSpec("long", "label"),
        ColSpec("long", "votes"),
    ]
    cols += [ColSpec("float", f"prob_{n}") for n in member_names]
    return ModelSignature(inputs=_input_schema(), outputs=Schema(cols))


def input_example() -> np.ndarray:
    """Two mid-grey patches (batch >= 2 so nothing freezes the batch size)."""
    return np.full((2, 1, 32, 32, 32), 0.5, dtype=np.float32)
