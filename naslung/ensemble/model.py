"""The deployable ensemble: k trained networks combined by majority vote.

Members may be NASLung nets (:class:`~naslung.models.spec.ArchSpec`) and DNAS-derived MBConv nets
(:class:`~naslung.models.mbconv.DnasArch`) in any mix; :mod:`naslung.models.factory` builds either kind.

Inputs are patches X of shape (n, 1, 32, 32, 32) or (n, 32, 32, 32), float32 in [0, 1], numpy order
(z, y, x), 1 mm isotropic voxels. Each member gives the malignancy probability
``softmax(model(x))[:, 1]``; a member votes malignant when its probability is >= 0.5 and the ensemble
says malignant when more than ``floor(k / 2)`` members vote malignant (the paper's rule). The mean member
probability is the ensemble's raw continuous score (ROC / AUC, ranking); its calibrated form
(:class:`naslung.calibration.Calibrator`, fitted on the members' validation predictions) is the reported
probability, and the standard deviation of the member probabilities is the ensemble's uncertainty (a nodule
is flagged ``refer`` when it exceeds the calibrator's ``refer_spread``).

On disk (:meth:`Ensemble.save`): the ensemble directory of :mod:`naslung.ensemble.layout` (``members.json``,
one ``member_<i>.pt`` state dict per member and ``calibration.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from naslung.calibration import Calibrator, identity
from naslung.ensemble import layout
from naslung.models.factory import AnySpec, build

MEMBERS_FILE = layout.MEMBERS_FILE


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
    """(n,) float32 calibrated malignancy probability (the calibrator applied to ``raw_prob``)."""
    label: np.ndarray
    """(n,) int64: 1 (malignant) when more than floor(k/2) members vote malignant."""
    votes: np.ndarray
    """(n,) int64: number of members voting malignant (probability >= 0.5)."""
    member_probs: np.ndarray
    """(n, k) float32 per-member probabilities, columns in member order."""
    raw_prob: np.ndarray
    """(n,) float32 mean member malignancy probability (uncalibrated)."""
    uncertainty: np.ndarray
    """(n,) float32 standard deviation (ddof 0) of the member probabilities, in [0, 0.5]."""
    refer: np.ndarray
    """(n,) bool: ``uncertainty`` > the calibrator's ``refer_spread`` (members disagree: refer to a reader)."""

    @classmethod
    def from_member_probs(cls, member_probs: Any, calibrator: Calibrator | None = None) -> EnsemblePrediction:
        """Mean, calibrated mean, spread, refer flag, majority vote and votes of member probabilities (n, k)
        — the one place they are formed. ``calibrator`` None: the identity (``prob == raw_prob``)."""
        cal = calibrator if calibrator is not None else identity()
        members = np.asarray(member_probs, dtype=np.float32)
        votes, label = majority_label(members)
        raw = members.mean(axis=1).astype(np.float32)
        spread = members.astype(np.float64).std(axis=1).astype(np.float32)
        return cls(
            prob=cal.apply(raw).astype(np.float32),
            label=label,
            votes=votes,
            member_probs=members,
            raw_prob=raw,
            uncertainty=spread,
            refer=cal.refer(spread),
        )


class Ensemble:
    """k networks (NASLungNet / DnasNet) on one device, predicting by majority vote (see the module docstring)."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        specs: Sequence[AnySpec],
        member_names: Sequence[str],
        margin_m: int = 4,
        device: str = "cpu",
        calibrator: Calibrator | None = None,
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
        self.calibrator = calibrator if calibrator is not None else identity()
        """Applied to the mean probability by :meth:`predict` / :meth:`combine` (identity by default)."""

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
        return self.combine(torch.stack(probs, dim=1).cpu().numpy())

    def combine(self, member_probs: Any) -> EnsemblePrediction:
        """The prediction of member probabilities (n, k) already computed (e.g. by an explanation pass),
        with this ensemble's calibrator."""
        return EnsemblePrediction.from_member_probs(member_probs, self.calibrator)

    def prediction_from_member_probs(self, member_probs: Any) -> EnsemblePrediction:
        """:meth:`combine` under the name the scoring paths look for (``naslung.scoring``,
        :class:`naslung.ensemble.fused.FusedEnsemble`)."""
        return self.combine(member_probs)

    def with_calibrator(self, calibrator: Calibrator) -> Ensemble:
        """Set the calibrator (in place); returns self."""
        self.calibrator = calibrator
        return self

    def to(self, device: str) -> Ensemble:
        """Move every member to ``device`` (in place); returns self."""
        self.device = device
        self.members = [m.to(device) for m in self.members]
        return self

    def save(self, directory: str | Path) -> Path:
        """Write the ensemble directory (``members.json`` + ``member_<i>.pt`` + ``calibration.json``,
        :mod:`naslung.ensemble.layout`)."""
        d = layout.save_ensemble_dir(directory, self.members, self.specs, self.member_names, self.margin_m)
        layout.write_calibration(d, self.calibrator.to_dict())
        return d

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> Ensemble:
        """Read an ensemble written by :meth:`save` (weights loaded with ``weights_only=True``); a directory
        without ``calibration.json`` gets the identity calibrator."""
        margin, entries = layout.load_ensemble_dir(directory)
        members = []
        for _name, spec, state in entries:
            model = build(spec, margin_m=margin)
            model.load_state_dict(state)
            members.append(model)
        cal = layout.read_calibration(directory)
        return cls(
            members,
            [e[1] for e in entries],
            [e[0] for e in entries],
            margin_m=margin,
            device=device,
            calibrator=Calibrator.from_dict(cal) if cal is not None else None,
        )
