"""The promotion gate as a pure function (no MLflow): every branch of the rule, its texts and its record."""

from __future__ import annotations

import json

import pytest

from naslung.gate import GateSettings, VersionFigures, decide, decision_record

NAME = "naslung-ensemble"
STRICT = GateSettings(f1_tolerance=0.02, require_validation=True)


def figures(version: str, f1: dict[str, float] | None = None, validation: str | None = "passed", data: str = "d1"):
    return VersionFigures(
        NAME, version, validation, f"reason of v{version}", {"1": 0.8} if f1 is None else f1, data_hash=data
    )


def test_no_champion_promotes_with_the_known_text() -> None:
    d = decide(figures("1"), None, STRICT)
    assert d.promoted and d.verdict == "promoted"
    assert d.reason == "no champion yet; validation passed, mean F1 0.8000"
    assert f"gate {d.name} v{d.version}: {d.verdict.upper()} - {d.reason}" == (
        "gate naslung-ensemble v1: PROMOTED - no champion yet; validation passed, mean F1 0.8000"
    )
    assert (d.challenger_f1, d.champion_version, d.champion_f1, d.tolerance) == (0.8, None, None, 0.02)


def test_validation_must_pass_only_when_required() -> None:
    failed = figures("2", validation="failed")
    d = decide(failed, None, STRICT)
    assert not d.promoted and d.reason == "data validation did not pass: reason of v2" and d.challenger_f1 is None
    unknown = VersionFigures(NAME, "3", f1_per_fold={"1": 0.9})
    assert decide(unknown, None, STRICT).reason == (
        "data validation did not pass: no validation result recorded on the version"
    )
    assert decide(failed, None, GateSettings(0.02, require_validation=False)).promoted


def test_refusals_before_any_comparison() -> None:
    champ = figures("4")
    assert decide(champ, champ, STRICT).reason == "version 4 already is the champion"
    d = decide(figures("5", f1={}), champ, STRICT)
    assert not d.promoted and d.reason == "version carries no per-fold F1 (naslung.f1_per_fold)"
    d = decide(figures("6", f1={"2": 0.9}), figures("4", f1={"1": 0.1}), STRICT)
    assert not d.promoted and d.champion_version == "4" and d.challenger_f1 is None
    assert d.reason == "no test fold in common with champion v4 (['2'] vs ['1'])"


@pytest.mark.parametrize(
    ("mine", "promoted", "sign"),
    [(0.79, True, ">="), (0.78, True, ">="), (0.7799, False, "<"), (0.9, True, ">=")],
)
def test_mean_f1_over_common_folds_within_tolerance(mine: float, promoted: bool, sign: str) -> None:
    champion = figures("1", f1={"1": 0.8, "2": 0.8, "9": 0.0})  # fold 9 is not compared
    challenger = figures("2", f1={"1": mine, "2": mine, "3": 0.0})  # nor fold 3
    d = decide(challenger, champion, STRICT)
    assert d.promoted is promoted
    assert d.challenger_f1 == pytest.approx(mine) and d.champion_f1 == pytest.approx(0.8)
    assert d.reason == f"mean F1 {mine:.4f} {sign} champion v1 0.8000 - tolerance 0.02 on folds ['1', '2']"


def test_other_data_is_said_not_hidden() -> None:
    d = decide(figures("2", data="new"), figures("1", data="old"), STRICT)
    assert d.promoted and d.reason.endswith(" (evaluated on other data: champion data old, challenger data new)")


def test_decision_record_holds_verdict_figures_and_settings() -> None:
    challenger, champion = figures("2", f1={"1": 0.5}), figures("1")
    d = decide(challenger, champion, STRICT)
    record = json.loads(json.dumps(decision_record(d, challenger, champion, STRICT, "2025-01-01T00:00:00+0000")))
    assert record["verdict"] == "refused" and record["promoted"] is False and record["reason"] == d.reason
    assert record["settings"] == {"f1_tolerance": 0.02, "require_validation": True}
    assert record["challenger"]["f1_per_fold"] == {"1": 0.5} and record["champion"]["version"] == "1"
    assert decision_record(d, challenger, None, STRICT, "t")["champion"] is None
