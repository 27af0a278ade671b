"""The promotion gate as a pure function: plain figures of two model versions in, a decision out.

:func:`decide` knows nothing of MLflow: :mod:`naslung.registry` reads the figures off the version tags,
calls it, moves the aliases and records the decision (:func:`decision_record`). The rule:

1. a version that already is the champion is not promoted again;
2. with ``require_validation`` the challenger's data validation must have passed;
3. the challenger must carry per-fold F1 figures;
4. no champion: promote;
5. otherwise compare the mean F1 over the test folds both were evaluated on: promote when
   ``challenger >= champion - f1_tolerance`` (no common fold: refuse). When the two were evaluated on
   other data (different data hashes) the reason says so: the same fold ids then hold other test sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GateSettings:
    """``registry.f1_tolerance`` and ``registry.require_validation``."""

    f1_tolerance: float
    require_validation: bool = True


@dataclass(frozen=True)
class VersionFigures:
    """What the gate knows about one registered version (all from its lineage tags)."""

    name: str
    """Registered model name."""
    version: str
    validation: str | None = None
    """``"passed"`` / ``"failed"``; None when nothing was recorded."""
    validation_reason: str | None = None
    f1_per_fold: Mapping[str, float] = field(default_factory=dict)
    """Ensemble F1 per test fold (fold id as a string)."""
    data_hash: str | None = None
    """Identity of the data the version was evaluated on."""


@dataclass(frozen=True)
class GateDecision:
    """The verdict on ``name`` version ``version``; F1 figures are means over the compared folds."""

    name: str
    version: str
    promoted: bool
    reason: str
    challenger_f1: float | None = None
    champion_version: str | None = None
    champion_f1: float | None = None
    tolerance: float = 0.0

    @property
    def verdict(self) -> str:
        return "promoted" if self.promoted else "refused"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(challenger: VersionFigures, champion: VersionFigures | None, settings: GateSettings) -> GateDecision:
    """Gate ``challenger`` against the current ``champion`` (None when there is none); see the module doc."""
    name, v, tol = challenger.name, challenger.version, float(settings.f1_tolerance)
    if champion is not None and champion.version == v:
        return GateDecision(name, v, False, f"version {v} already is the champion", tolerance=tol)
    if settings.require_validation and challenger.validation != "passed":
        why = challenger.validation_reason
        if why is None:
            why = "no validation result recorded on the version"
        return GateDecision(name, v, False, f"data validation did not pass: {why}", tolerance=tol)
    mine = {str(k): float(x) for k, x in challenger.f1_per_fold.items()}
    if not mine:
        return GateDecision(name, v, False, "version carries no per-fold F1 (naslung.f1_per_fold)", tolerance=tol)
    if champion is None:
        f1 = float(np.mean(list(mine.values())))
        return GateDecision(name, v, True, f"no champion yet; validation passed, mean F1 {f1:.4f}", f1, None, None, tol)
    theirs = {str(k): float(x) for k, x in champion.f1_per_fold.items()}
    common = sorted(set(mine) & set(theirs))
    if not common:
        reason = f"no test fold in common with champion v{champion.version} ({sorted(mine)} vs {sorted(theirs)})"
        return GateDecision(name, v, False, reason, None, champion.version, None, tol)
    f1 = float(np.mean([mine[f] for f in common]))
    cf1 = float(np.mean([theirs[f] for f in common]))
    ok = f1 >= cf1 - tol
    reason = (
        f"mean F1 {f1:.4f} {'>=' if ok else '<'} champion v{champion.version} {cf1:.4f} - tolerance {tol} "
        f"on folds {common}"
    )
    if challenger.data_hash != champion.data_hash:
        reason += (
            f" (evaluated on other data: champion data {champion.data_hash}, challenger data {challenger.data_hash})"
        )
    return GateDecision(name, v, ok, reason, f1, champion.version, cf1, tol)


def decision_record(
    decision: GateDecision,
    challenger: VersionFigures,
    champion: VersionFigures | None,
    settings: GateSettings,
    time: str,
) -> dict[str, Any]:
    """The JSON-able record of one gate decision: verdict, reason, the figures it saw and the settings."""
    return {
        "time": time,
        "verdict": decision.verdict,
        **decision.as_dict(),
        "settings": asdict(settings),
        "challenger": {**asdict(challenger), "f1_per_fold": dict(challenger.f1_per_fold)},
        "champion": None if champion is None else {**asdict(champion), "f1_per_fold": dict(champion.f1_per_fold)},
    }
