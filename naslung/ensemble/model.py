"""The deployable ensemble: k trained networks combined by majority vote.

Members may be NASLung nets (:class:`~naslung.models.spec.ArchSpec`) and DNAS-derived MBConv nets
(:class:`~naslung.models.mbconv.DnasArch`) in any mix; :mod:`naslung.models.factory` builds either kind.

Inputs are patches X of shape (n, 1, 32, 32, 32) or (n, 32, 32, 32), float32 in [0, 1], numpy order
(z, y, x), 1 mm isotropic voxels. Each member gives the malignancy probability
``softmax(model(x))[:, 1]``; a member votes malignant when its probability is >= 0.5 and the ensemble
says malignant when more than ``floor(k / 2)`` members vote malignant (the paper's rule). The mean member
probability is the ensemble's continuous score (ROC / AUC, ranking).

On disk (:meth:`Ensemble.save`): ``members.json`` (specs — a DNAS spec carries ``"kind": "dnas"`` —,
member names, margin_m) and one ``member_<i>.pt`` state dict per member, readable with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from naslung.models.factory import AnySpec, build, spec_from_dict

MEMBERS_FILE = "members.json"


def majority_label(member_probs: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Votes and labels from member probabilities (n, k): ``(votes (n,), label (n,))``.

    A member votes malignant when its probability is >= ``threshold``; the label is 1 when
    ``votes > floor(k / 2)``.
    """
    p = np.asarray(member_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError(f"majority_label: expected member probabilities (n, k) with k >= 1, got {p.shape}")
    votes = (p >= threshold).sum(axis=1).astype(np.int64)
    label = (votes > p.shape[1] // 2).astype(np.int64)
    return votes, label


@dataclass(frozen=True)
class EnsemblePrediction:
    """Ensemble output for n patches and k members."""

    prob: np.ndarray
    """(n,) float32 mean member malignancy probability."""
    label: np.ndarray
    """(n,) int64: 1 (malignant) when more than floor(k/2) members vote malignant."""
    votes: np.ndarray
    """(n,) int64: number of members voting malignant (probability >= 0.5)."""
    member_probs: np.ndarray
    """(n, k) float32 per-member probabilities, columns in member order."""

    @classmethod
    def from_member_probs(cls, member_probs: Any) -> EnsemblePrediction:
        """Mean, majority vote and votes of member probabilities (n, k) — the one place they are formed."""
        members = np.asarray(member_probs, dtype=np.float32)
        votes, label = majority_label(members)
        return cls(members.mean(axis=1).astype(np.float32), label, votes, members)


class Ensemble:
    """k networks (NASLungNet / DnasNet) on one device, predicting by majority vote (see the module docstring)."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        specs: Sequence[AnySpec],
        member_names: Sequence[str],
        margin_m: int = 4,
        device: str = "cpu",
    ) -> None:
        if not (len(members) == len(specs) == len(member_names)):
            raise ValueError(
                f"Ensemble: {len(members)} members, {len(specs)} specs and {len(member_names)} names must match"
            )
        if not members:
            raise ValueError("Ensemble: needs at least one member")
        if len(set(member_names)) != len(member_names):
            raise ValueError(f"Ensemble: member names must be unique, got {list(member_names)}")
        self.device = device
        self.members = [m.to(device).eval() for m in members]
        self.specs = list(specs)
        self.member_names = list(member_names)
        self.margin_m = int(margin_m)

    def __len__(self) -> int:
        return len(self.members)

    @staticmethod
    def _as_batch(X: Any) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(X, dtype=np.float32) if not isinstance(X, torch.Tensor) else X).float()
        if x.ndim == 4:
            x = x.unsqueeze(1)
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(
                f"Ensemble.predict: expected patches (n, 1, D, H, W) or (n, D, H, W), got {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError("Ensemble.predict: empty batch")
        return x

    @torch.no_grad()
    def predict(self, X: Any) -> EnsemblePrediction:
        """Predict a batch X (n, 1, 32, 32, 32) or (n, 32, 32, 32) float32 in [0, 1].

        Every member runs once on the whole batch, on the ensemble's device.
        """
        x = self._as_batch(X).to(self.device)
        probs = [torch.softmax(m(x).float(), dim=1)[:, 1] for m in self.members]
        return EnsemblePrediction.from_member_probs(torch.stack(probs, dim=1).cpu().numpy())

    def to(self, device: str) -> Ensemble:
        """Move every member to ``device`` (in place); returns self."""
        self.device = device
        self.members = [m.to(device) for m in self.members]
        return self

    def save(self, directory: str | Path) -> Path:
        """Write ``members.json`` and ``member_<i>.pt`` (CPU state dicts) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {
            "margin_m": self.margin_m,
            "members": [
                {
                    "name": n,
                    "spec": s.to_dict(),
                    "spec_id": s.spec_id,
                    "ref": s.ref_string(),
                    "weights": f"member_{i}.pt",
                }
                for i, (n, s) in enumerate(zip(self.member_names, self.specs))
            ],
        }
        for i, m in enumerate(self.members):
            torch.save({k: v.detach().cpu() for k, v in m.state_dict().items()}, d / f"member_{i}.pt")
        (d / MEMBERS_FILE).write_text(encoding="utf-8", data=json.dumps(meta, indent=1) + "\n")
        return d

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> Ensemble:
        """Read an ensemble written by :meth:`save` (weights loaded with ``weights_only=True``)."""
        d = Path(directory)
        meta_path = d / MEMBERS_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"Ensemble.load: {meta_path} not found (not an ensemble directory)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        margin = int(meta.get("margin_m", 4))
        members, specs, names = [], [], []
        for i, entry in enumerate(meta.get("members", [])):
            try:
                spec = spec_from_dict(entry["spec"])
                weights = d / entry.get("weights", f"member_{i}.pt")
                name = str(entry["name"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"Ensemble.load: {meta_path} member {i} is malformed: {exc}") from exc
            model = build(spec, margin_m=margin)
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            members.append(model)
            specs.append(spec)
            names.append(name)
        return cls(members, specs, names, margin_m=margin, device=device)
