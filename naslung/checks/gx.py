"""Great Expectations 1.x adapter: run a list of expectations on a pandas frame, get plain results.

Only this module (and the suites built on it) imports ``great_expectations``. It uses an ephemeral
context (nothing written to disk, analytics off) and ``result_format="COMPLETE"`` so every failure
carries the frame's row indices — that is how a hospital CSV gets per-row errors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

logging.getLogger("great_expectations").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Failure:
    """One failed expectation: what was expected, on which column, which rows and values broke it."""

    check: str
    expectation: str
    column: str | None
    rows: list[int] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    observed: Any = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def describe(self, row_label: str = "row") -> str:
        where = f"column '{self.column}'" if self.column else "table"
        text = f"[{self.check}] {self.expectation} failed on {where}"
        bounds = {k: v for k, v in self.kwargs.items() if k not in ("column", "batch_id", "result_format")}
        if bounds:
            text += f" (expected {bounds})"
        if self.observed is not None:
            text += f"; observed {self.observed}"
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows[:10])
            more = f" and {len(self.rows) - 10} more" if len(self.rows) > 10 else ""
            vals = ", ".join(repr(v) for v in self.values[:10])
            text += f"; {row_label}s {shown}{more} (values {vals})"
        return text


@dataclass(frozen=True)
class CheckReport:
    """Outcome of one suite on one table."""

    check: str
    success: bool
    n_rows: int
    n_expectations: int
    failures: list[Failure]

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "success": self.success,
            "n_rows": self.n_rows,
            "n_expectations": self.n_expectations,
            "failures": [asdict(f) | {"message": f.describe()} for f in self.failures],
        }


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        try:
            return value.item()
        except (ValueError, AttributeError):
            return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


def run_expectations(check: str, frame: pd.DataFrame, expectations: Sequence[Any]) -> CheckReport:
    """Validate ``frame`` against ``expectations`` (``gx.expectations.*`` instances).

    Row indices in the failures are the frame's positional index (0-based); callers map them back to
    file rows. Column presence should be checked before type/value expectations: GX reports a
    missing column with an unhelpful message.
    """
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # older/newer layouts: progress bars are cosmetic
        pass
    source = context.data_sources.add_pandas(f"{check}_source")
    asset = source.add_dataframe_asset(f"{check}_asset")
    batch = asset.add_batch_definition_whole_dataframe(f"{check}_batch")
    suite = context.suites.add(gx.ExpectationSuite(name=f"{check}_suite"))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch, suite=suite, name=f"{check}_validation")
    )
    frame = frame.reset_index(drop=True)
    result = definition.run(batch_parameters={"dataframe": frame}, result_format="COMPLETE")
    failures: list[Failure] = []
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        res = item.result or {}
        exc = getattr(item, "exception_info", None) or {}
        observed = res.get("observed_value")
        if observed is None and exc.get("raised_exception"):
            observed = f"error: {exc.get('exception_message')}"
        failures.append(
            Failure(
                check=check,
                expectation=config.type,
                column=config.kwargs.get("column"),
                rows=[int(i) for i in (res.get("unexpected_index_list") or [])],
                values=_jsonable(list(res.get("unexpected_list") or [])),
                observed=_jsonable(observed),
                kwargs=_jsonable(dict(config.kwargs)),
            )
        )
    return CheckReport(
        check=check,
        success=bool(result.success),
        n_rows=len(frame),
        n_expectations=len(expectations),
        failures=failures,
    )


def missing_columns(frame: pd.DataFrame, required: Sequence[str]) -> list[str]:
    """Required columns absent from ``frame`` (check this before running value expectations)."""
    return [c for c in required if c not in frame.columns]
