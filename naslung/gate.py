"""The promotion gate as a pure function: plain figures of two model versions in, a decision out.

:func:`decide` knows nothing of MLflow: :mod:`naslung.registry` reads the figures off the version tags,
calls it, moves the aliases and records the decision (:func:`decision_record`). Every figure the gate
uses is measured on **validation** rows: the pooled validation folds of the deploy fold's split, on which
the members chose their checkpoints and the calibrator was fitted, never on a test fold. Test-fold figures
travel along in :attr:`VersionFigures.reported` and in the record, and are never used to decide.

The rule:

1. a version that already is the champion is not promoted again;
2. with ``require_validation`` the challenger's data validation must have passed;
3. the challenger must carry validation figures (:class:`ValidationFigures`);
4. floors: validation AUC (of the ensemble's mean probability) >= ``min_auc``, sensitivity >=
   ``min_sensitivity`` and specificity >= ``min_specificity`` (of the majority vote): an all-malignant
   model fails specificity, an all-benign one sensitivity;
5. the vote's accuracy must exceed the constant predictor's (majority-class share of the same rows);
6. the AUC must be >= each baseline's AUC (``diameter``, ``voxel_stats``, fitted on the split's training
   folds, scored on the same validation rows) + ``baseline_margin``; a missing baseline refuses;
7. with a champion evaluated on the *same* validation rows (same :attr:`DataRef.hash`): AUC >= champion
   AUC - ``auc_tolerance``. Otherwise the comparison with the champion is skipped and the reason says why
   (other validation data, or a champion without validation figures); 4-6 still apply;
8. the stored-output regression check (:class:`RegressionCheck`, when the version carries one): the
   challenger's scores on a fixed set of real patches must stay within the tolerances of the champion's
   stored scores — max |Δp| <= ``max_tolerance`` and mean |Δp| <= ``mean_tolerance`` (probabilities in
   [0, 1], calibrated and raw mean alike). ``failed`` refuses; ``rebaselined`` (an explicit, recorded
   acceptance: who / when / why) passes; ``baseline`` (no champion yet: the version's scores are the
   baseline candidate) and ``skipped`` (no patch file, no stored champion scores, another patch set) pass
   with the reason saying so. A check made against another version than the current champion refuses.

Promoted exactly when every check passed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

BASELINES: tuple[str, ...] = ("diameter", "voxel_stats")
"""Baselines the challenger must beat (keys of :func:`naslung.baselines.baseline_predictions`)."""


@dataclass(frozen=True)
class GateSettings:
    """The ``registry.*`` gate parameters."""

    auc_tolerance: float
    min_auc: float = 0.75
    min_sensitivity: float = 0.6
    min_specificity: float = 0.6
    baseline_margin: float = 0.0
    require_validation: bool = True
    baselines: tuple[str, ...] = BASELINES

    @classmethod
    def of(cls, registry: Any) -> GateSettings:
        """From :class:`naslung.params.RegistryParams`."""
        return cls(
            auc_tolerance=float(registry.auc_tolerance),
            min_auc=float(registry.min_auc),
            min_sensitivity=float(registry.min_sensitivity),
            min_specificity=float(registry.min_specificity),
            baseline_margin=float(registry.baseline_margin),
            require_validation=bool(registry.require_validation),
        )


@dataclass(frozen=True)
class DataRef:
    """The rows a figure was measured on."""

    role: str
    """``validation`` (used by the gate) | ``test`` (reported only)."""
    folds: tuple[int, ...]
    n: int
    n_malignant: int
    hash: str
    """Identity of the rows (ids + labels, :func:`naslung.ensemble.training.rows_identity`)."""
    train_folds: tuple[int, ...] = ()
    """Folds the members (and the baselines) were fitted on."""
    test_fold: int | None = None
    """The split's test fold (never part of these rows)."""

    def text(self) -> str:
        return f"{self.role} folds {list(self.folds)}, n={self.n} ({self.n_malignant} malignant), rows {self.hash}"


@dataclass(frozen=True)
class BaselineFigures:
    """A baseline scored on the same validation rows."""

    auc: float
    accuracy: float


@dataclass(frozen=True)
class ValidationFigures:
    """The challenger's figures on its validation rows (ensemble mean probability for AUC, majority vote
    for sensitivity / specificity / accuracy), with 95 % bootstrap intervals."""

    data: DataRef
    auc: float
    sensitivity: float
    specificity: float
    accuracy: float
    constant_accuracy: float
    """Accuracy of the constant predictor: share of the majority class among the rows."""
    baselines: Mapping[str, BaselineFigures] = field(default_factory=dict)
    auc_interval: tuple[float, float] | None = None
    accuracy_interval: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["baselines"] = {k: asdict(v) for k, v in self.baselines.items()}
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationFigures:
        """Inverse of :meth:`to_dict` (the version tag ``naslung.val.figures``)."""
        ref = dict(data["data"])

        def interval(v: Any) -> tuple[float, float] | None:
            return None if v is None else (float(v[0]), float(v[1]))

        return cls(
            data=DataRef(
                role=str(ref.get("role", "validation")),
                folds=tuple(int(f) for f in ref.get("folds", ())),
                n=int(ref["n"]),
                n_malignant=int(ref.get("n_malignant", 0)),
                hash=str(ref["hash"]),
                train_folds=tuple(int(f) for f in ref.get("train_folds", ())),
                test_fold=None if ref.get("test_fold") is None else int(ref["test_fold"]),
            ),
            auc=float(data["auc"]),
            sensitivity=float(data["sensitivity"]),
            specificity=float(data["specificity"]),
            accuracy=float(data["accuracy"]),
            constant_accuracy=float(data["constant_accuracy"]),
            baselines={
                str(k): BaselineFigures(float(v["auc"]), float(v["accuracy"]))
                for k, v in (data.get("baselines") or {}).items()
            },
            auc_interval=interval(data.get("auc_interval")),
            accuracy_interval=interval(data.get("accuracy_interval")),
        )


REGRESSION_STATUSES: tuple[str, ...] = ("passed", "failed", "rebaselined", "baseline", "skipped")
"""Outcomes of the stored-output regression check (see rule 8 of the module doc)."""


@dataclass(frozen=True)
class RegressionCheck:
    """The stored-output regression check of one version against the champion's stored scores.

    Scores are probabilities in [0, 1] per patch (calibrated ``probability`` and raw member mean
    ``raw_probability``); deltas are absolute differences of the same patch, over both kinds."""

    status: str
    """One of :data:`REGRESSION_STATUSES`."""
    reason: str
    patches: str
    """What was scored (file, sha256, number of patches); ``""`` when nothing was."""
    max_tolerance: float
    """Largest allowed max |Δp| (probability units)."""
    mean_tolerance: float
    """Largest allowed mean |Δp| (probability units)."""
    baseline_version: str | None = None
    """The champion version whose stored scores were compared (None: nothing compared)."""
    max_abs_delta: float | None = None
    """max over patches and both kinds of |p_version - p_baseline|; None when nothing was compared."""
    mean_abs_delta: float | None = None
    """The larger of the two kinds' mean |Δp| over patches; None when nothing was compared."""
    deltas: Mapping[str, Any] = field(default_factory=dict)
    """Per kind (``probability``, ``raw_probability``): ``max``, ``mean``, ``worst_index`` (row of the set)."""
    rebaseline: Mapping[str, Any] | None = None
    """The explicit acceptance of moved scores: ``who``, ``when``, ``why``, ``baseline_version``."""

    def __post_init__(self) -> None:
        if self.status not in REGRESSION_STATUSES:
            raise ValueError(f"RegressionCheck: status {self.status!r} is not one of {REGRESSION_STATUSES}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["deltas"] = dict(self.deltas)
        d["rebaseline"] = None if self.rebaseline is None else dict(self.rebaseline)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegressionCheck:
        """Inverse of :meth:`to_dict` (the version tag ``naslung.regression.check``)."""

        def opt(v: Any) -> float | None:
            return None if v is None else float(v)

        return cls(
            status=str(data["status"]),
            reason=str(data.get("reason", "")),
            patches=str(data.get("patches", "")),
            max_tolerance=float(data["max_tolerance"]),
            mean_tolerance=float(data["mean_tolerance"]),
            baseline_version=None if data.get("baseline_version") is None else str(data["baseline_version"]),
            max_abs_delta=opt(data.get("max_abs_delta")),
            mean_abs_delta=opt(data.get("mean_abs_delta")),
            deltas=dict(data.get("deltas") or {}),
            rebaseline=None if data.get("rebaseline") is None else dict(data["rebaseline"]),
        )

    def text(self) -> str:
        """One line: status, deltas against which version, on what."""
        if self.max_abs_delta is None:
            return f"regression check {self.status}: {self.reason}"
        return (
            f"regression check {self.status} vs champion v{self.baseline_version}: max |dp| "
            f"{self.max_abs_delta:.2e} (tolerance {self.max_tolerance:g}), mean |dp| {self.mean_abs_delta:.2e} "
            f"(tolerance {self.mean_tolerance:g}) on {self.patches}"
            + (f"; {self.reason}" if self.status == "rebaselined" else "")
        )


def regression_checks(reg: RegressionCheck, champion_version: str | None) -> tuple[list[Check], str | None]:
    """Rule 8: the gate's checks of a regression result (``passed`` / ``failed``: max and mean |Δp| against
    their tolerances) and, for the other outcomes, the note the reason carries instead."""
    if reg.baseline_version is not None and reg.baseline_version != champion_version:
        stale = (
            f"regression check made against v{reg.baseline_version}, not the current champion v{champion_version} "
            "(gate it again with `naslung promote`)"
        )
        return [Check(stale, math.nan, "<=", reg.max_tolerance, False, reg.patches)], None
    if reg.status in ("passed", "failed") and reg.max_abs_delta is not None and reg.mean_abs_delta is not None:
        where = reg.patches
        b = reg.baseline_version
        return [
            _check(f"regression max |dp| vs champion v{b}", reg.max_abs_delta, "<=", reg.max_tolerance, where),
            _check(f"regression mean |dp| vs champion v{b}", reg.mean_abs_delta, "<=", reg.mean_tolerance, where),
        ], None
    if reg.status == "failed":  # failed without deltas (e.g. unreadable scores): refuse, naming why
        return [Check("regression check", math.nan, "<=", reg.max_tolerance, False, reg.reason)], None
    return [], reg.text()


@dataclass(frozen=True)
class VersionFigures:
    """What the gate knows about one registered version (all from its tags)."""

    name: str
    """Registered model name."""
    version: str
    validation: str | None = None
    """Data validation: ``"passed"`` / ``"failed"``; None when nothing was recorded."""
    validation_reason: str | None = None
    val: ValidationFigures | None = None
    """Figures on the validation rows (what the gate uses); None for a version registered without them."""
    data_hash: str | None = None
    """Identity of the patch store the version was trained on."""
    reported: Mapping[str, Any] = field(default_factory=dict)
    """Test-fold figures (e.g. ``f1_per_fold``, ``auc_mean``): recorded with the decision, never used."""
    regression: RegressionCheck | None = None
    """The stored-output regression check against the current champion (rule 8); None: none was made."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "validation": self.validation,
            "validation_reason": self.validation_reason,
            "data_hash": self.data_hash,
            "val": None if self.val is None else self.val.to_dict(),
            "reported_only": dict(self.reported),
            "regression": None if self.regression is None else self.regression.to_dict(),
        }


@dataclass(frozen=True)
class Check:
    """One comparison of the rule: ``value op threshold`` on ``data``."""

    name: str
    value: float
    op: str
    """``>=``, ``>`` or ``<=``."""
    threshold: float
    passed: bool
    data: str
    """Where ``value`` (and a figure-based threshold) comes from (:meth:`DataRef.text`)."""

    def text(self) -> str:
        return f"{self.name} {self.value:.4f} {self.op if self.passed else 'not ' + self.op} {self.threshold:.4f}"


def _check(name: str, value: float, op: str, threshold: float, data: str) -> Check:
    v, t = float(value), float(threshold)
    ok = math.isfinite(v) and math.isfinite(t) and (v >= t if op == ">=" else v <= t if op == "<=" else v > t)
    return Check(name, v, op, t, bool(ok), data)


@dataclass(frozen=True)
class GateDecision:
    """The verdict on ``name`` version ``version``; AUC figures are validation AUCs."""

    name: str
    version: str
    promoted: bool
    reason: str
    challenger_auc: float | None = None
    champion_version: str | None = None
    champion_auc: float | None = None
    tolerance: float = 0.0
    compared_with_champion: bool = False
    checks: tuple[Check, ...] = ()
    """Rules 4-7, each measured on the validation rows."""
    regression_checks: tuple[Check, ...] = ()
    """Rule 8, measured on the regression patch set (max and mean |Δp| against the champion's stored scores)."""

    @property
    def verdict(self) -> str:
        return "promoted" if self.promoted else "refused"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = [asdict(c) for c in self.checks]
        d["regression_checks"] = [asdict(c) for c in self.regression_checks]
        return d


def checks_of(val: ValidationFigures, settings: GateSettings) -> list[Check]:
    """Floors, the constant predictor and the baselines (rules 4-6) on the challenger's validation rows."""
    where = val.data.text()
    out = [
        _check("validation AUC", val.auc, ">=", settings.min_auc, where),
        _check("validation sensitivity", val.sensitivity, ">=", settings.min_sensitivity, where),
        _check("validation specificity", val.specificity, ">=", settings.min_specificity, where),
        _check("validation accuracy vs constant predictor", val.accuracy, ">", val.constant_accuracy, where),
    ]
    for name in settings.baselines:
        base = val.baselines.get(name)
        if base is None:
            out.append(
                Check(f"validation AUC vs {name} baseline", val.auc, ">=", math.nan, False, where + " (no figure)")
            )
            continue
        out.append(
            _check(
                f"validation AUC vs {name} baseline + {settings.baseline_margin:g}",
                val.auc,
                ">=",
                base.auc + settings.baseline_margin,
                where,
            )
        )
    return out


def decide(challenger: VersionFigures, champion: VersionFigures | None, settings: GateSettings) -> GateDecision:
    """Gate ``challenger`` against the current ``champion`` (None when there is none); see the module doc."""
    name, v, tol = challenger.name, challenger.version, float(settings.auc_tolerance)
    if champion is not None and champion.version == v:
        return GateDecision(name, v, False, f"version {v} already is the champion", tolerance=tol)
    if settings.require_validation and challenger.validation != "passed":
        why = challenger.validation_reason
        if why is None:
            why = "no validation result recorded on the version"
        return GateDecision(name, v, False, f"data validation did not pass: {why}", tolerance=tol)
    val = challenger.val
    if val is None:
        return GateDecision(
            name,
            v,
            False,
            "version carries no validation figures (naslung.val.figures); register it again",
            tolerance=tol,
        )
    checks = checks_of(val, settings)
    champ_v = champion.version if champion is not None else None
    champ_auc: float | None = None
    compared = False
    note = "no champion yet"
    if champion is not None:
        cval = champion.val
        if cval is None:
            note = f"champion v{champion.version} carries no validation figures: comparison with the champion skipped"
        elif cval.data.hash != val.data.hash:
            note = (
                f"champion v{champion.version} was evaluated on other validation data ({cval.data.text()}; "
                f"challenger {val.data.text()}): comparison with the champion skipped"
            )
            champ_auc = cval.auc
        else:
            compared, champ_auc = True, cval.auc
            checks.append(
                _check(
                    f"validation AUC vs champion v{champion.version} - {tol:g}",
                    val.auc,
                    ">=",
                    cval.auc - tol,
                    val.data.text(),
                )
            )
    reg_note: str | None = None
    reg_checks: list[Check] = []
    if challenger.regression is not None:
        reg_checks, reg_note = regression_checks(challenger.regression, champ_v)
    failed = [c for c in checks + reg_checks if not c.passed]
    ok = not failed
    if ok:
        passed = "; ".join(c.text() for c in checks + reg_checks)
        reason = f"{note}; " + (f"{reg_note}; " if reg_note else "") + "passed: " + passed
    else:
        reason = "failed: " + "; ".join(c.text() for c in failed)
        if not compared and champion is not None:
            reason += f" ({note})"
        if reg_note:
            reason += f" ({reg_note})"
    reason += f" [on {val.data.text()}]"
    return GateDecision(
        name, v, ok, reason, val.auc, champ_v, champ_auc, tol, compared, tuple(checks), tuple(reg_checks)
    )


def decision_record(
    decision: GateDecision,
    challenger: VersionFigures,
    champion: VersionFigures | None,
    settings: GateSettings,
    time: str,
) -> dict[str, Any]:
    """The JSON-able record of one gate decision: verdict, reason, every check with the data it was measured
    on, the figures of both versions (validation used; test folds reported only) and the settings."""
    return {
        "time": time,
        "verdict": decision.verdict,
        **decision.as_dict(),
        "settings": {**asdict(settings), "baselines": list(settings.baselines)},
        "used": "validation rows only (pooled validation folds of the deploy fold's split); test folds reported only",
        "challenger": challenger.to_dict(),
        "champion": None if champion is None else champion.to_dict(),
    }


def constant_accuracy(y: Sequence[int] | Any) -> float:
    """Accuracy of the constant (majority-class) predictor on labels ``y``."""
    import numpy as np

    yy = np.asarray(y, dtype=np.int64).ravel()
    if yy.size == 0:
        return math.nan
    share = float(yy.mean())
    return max(share, 1.0 - share)


def validation_figures(
    y: Any,
    raw_prob: Any,
    label: Any,
    data: DataRef,
    baselines: Mapping[str, tuple[Any, Any]] | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> ValidationFigures:
    """The gate's figures of an ensemble on its validation rows.

    ``y`` (n,) labels, ``raw_prob`` (n,) mean member probability (AUC; calibration is fitted on these
    rows, so it is not used here), ``label`` (n,) majority vote (sensitivity, specificity, accuracy);
    ``baselines`` ``{name: (score (n,), decision (n,))}`` on the same rows. Intervals: stratified bootstrap
    95 % (:func:`naslung.stats.bootstrap_ci`).
    """
    import numpy as np

    from naslung import stats
    from naslung.metrics import binary_metrics

    yy = np.asarray(y, dtype=np.int64).ravel()
    p = np.asarray(raw_prob, dtype=np.float64).ravel()
    lab = np.asarray(label, dtype=np.float64).ravel()
    if not (yy.shape == p.shape == lab.shape) or yy.size != data.n:
        raise ValueError(f"validation_figures: {yy.size} labels, {p.size} scores, {lab.size} votes, data n={data.n}")
    vote = binary_metrics(yy, lab)
    auc = stats.auc(yy, p)
    both = np.unique(yy).size == 2
    auc_ci = stats.bootstrap_ci(yy, p, stats.auc, n_boot=n_boot, seed=seed) if both else None
    acc_ci = stats.bootstrap_ci(yy, lab, stats.accuracy, n_boot=n_boot, seed=seed)
    base = {}
    for name, (score, decision) in (baselines or {}).items():
        s, d = np.asarray(score, dtype=np.float64).ravel(), np.asarray(decision, dtype=np.int64).ravel()
        if s.shape != yy.shape or d.shape != yy.shape:
            raise ValueError(f"validation_figures: baseline {name} has {s.size} rows, the ensemble {yy.size}")
        base[str(name)] = BaselineFigures(stats.auc(yy, s), float((d == yy).mean()))
    return ValidationFigures(
        data=data,
        auc=float(auc),
        sensitivity=float(vote["sensitivity"]),
        specificity=float(vote["specificity"]),
        accuracy=float(vote["accuracy"]),
        constant_accuracy=constant_accuracy(yy),
        baselines=base,
        auc_interval=None if auc_ci is None else (auc_ci.low, auc_ci.high),
        accuracy_interval=(acc_ci.low, acc_ci.high),
    )
