"""The model card as data: one :class:`ModelCard`, built once at registration, from which the markdown
card, the model version's lineage tags and the TorchServe package's ``model_info.json`` are all derived.

Like MONAI's ``metadata.json`` it records the intended use, the input format (shape, dtype, value range,
spacing, axis order), the data and code versions, the members, and the evaluation metrics with their
folds. Plain library code: no MLflow; :mod:`naslung.registry` gathers the facts that need the outside
world (git commit, DVC url, validation verdict, search run) and passes them to :meth:`ModelCard.build`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from naslung.metrics import METRIC_NAMES
from naslung.params import Params, PrepareParams

TAG = "naslung."
"""Prefix of every NASLung tag on a model version."""
CARD_FILE = "model_card.json"
CARD_MARKDOWN = "model_card.md"

INTENDED_USE = (
    "Decision support for radiologists: a malignancy score for a pulmonary nodule already found on CT "
    "(32 mm cube around its centre). Not a diagnosis, not a detector, not validated for clinical use."
)
REGRESSION_RULE = (
    "At registration the ensemble scores a fixed set of real CT patches (registry.regression_patches, read in "
    "place, windowed with prepare.hu_window) in process through the serving path's code; the calibrated and raw "
    "mean probability per patch are stored as regression/scores.json in the version's run. They are compared with "
    "the stored scores of the version holding the alias champion (the baseline): max |dp| <= "
    "registry.regression_tolerance and mean |dp| <= registry.regression_mean_tolerance (probability units), else "
    "the check fails and the promotion gate refuses the version unless re-baselined explicitly (`naslung register "
    "--rebaseline WHY` or `naslung promote --rebaseline WHY`, recorded: who, when, why, against which champion). "
    "No champion yet: the scores are the baseline candidate. Promoting a version makes its scores the baseline "
    "(rollback: the restored champion's). A missing patch file, a champion without stored scores or with scores "
    "of another patch set: skipped, recorded, not refused."
)
"""The stored-output regression rule, as the model card and the decision record state it."""

KNOWN_LIMITS = (
    "Trained on the embedded synthetic dataset unless the patch store was built from real LUNA16/LIDC "
    "data; metrics on synthetic data say nothing about clinical performance.",
    "Labels are the mean of up to four LIDC readers' malignancy ratings (indeterminate nodules "
    "excluded), not pathology.",
    "Small test folds: read the bootstrap 95 % intervals and the paired tests against the baselines, not the "
    "point figures; a spread (sample std over folds) is shown only where several test folds measured one.",
)


@dataclass(frozen=True)
class InputFormat:
    """What the model takes: a batch of patches cut around nodule centres."""

    shape: tuple[int, ...]
    """(n, channel, z, y, x); -1 = any batch size."""
    dtype: str
    value_range: tuple[float, float]
    spacing_mm: tuple[float, float, float]
    """Voxel spacing (z, y, x) in mm."""
    axis_order: str
    hu_window: tuple[float, float]
    """HU range mapped linearly onto ``value_range`` (clipped)."""

    @classmethod
    def of(cls, prepare: PrepareParams) -> InputFormat:
        p, s = int(prepare.patch_size), float(prepare.spacing_mm)
        return cls(
            shape=(-1, 1, p, p, p),
            dtype="float32",
            value_range=(0.0, 1.0),
            spacing_mm=(s, s, s),
            axis_order="(n, channel, z, y, x)",
            hu_window=(float(prepare.hu_window[0]), float(prepare.hu_window[1])),
        )


PATCH_INPUT = InputFormat.of(PrepareParams())
"""The input of every NASLung network: float32 (-1, 1, 32, 32, 32) in [0, 1], 1 mm, (z, y, x)."""


@dataclass(frozen=True)
class DataFacts:
    """The data version the members were trained and evaluated on."""

    store: str
    """The patch store folder (``paths.artifacts``)."""
    hash: str
    origin: str
    """Where the md5s come from: ``dvc.lock`` or ``file``."""
    manifest_md5: str
    patches_md5: str
    dvc_url: str | None
    validation: str
    """``passed`` | ``failed``: the data validation verdict about this data."""
    validation_reason: str


@dataclass(frozen=True)
class CodeFacts:
    git_commit: str | None
    params_hash: str
    member_params_hash: str
    search_run_id: str | None
    """MLflow run id(s) of the search that chose the members (JSON list for several); None for explicit specs."""


@dataclass(frozen=True)
class MemberFacts:
    """One member of the deployed ensemble (trained for the deploy fold)."""

    name: str
    spec: dict[str, Any]
    ref: str
    """Short readable spec (reference string)."""
    n_params: int
    run_id: str | None
    latency_ms_per_nodule: dict[str, float] = field(default_factory=dict)
    """Batch size -> ms per nodule."""
    latency_detail: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Batch size -> how it was measured (threads, device, 1-min load average; ``reused``: the search's)."""


@dataclass(frozen=True)
class Evaluation:
    """Test-fold metrics (each member trained without its test fold); fold ids are strings in the dicts."""

    folds: list[int]
    ensemble_per_fold: dict[str, dict[str, float]]
    ensemble_mean_std: dict[str, dict[str, float]]
    member_mean_std: dict[str, dict[str, dict[str, float]]]
    diameter_baseline: Any = None
    """Legacy: the all-data diameter baseline of ``prepare`` (shown only when ``comparison`` is absent)."""
    selection_leak_folds: list[int] = field(default_factory=list)
    search_fold: int | None = None
    comparison: dict[str, Any] | None = None
    """``metrics_detail.json``'s ``comparison``: the ensemble and both baselines on the same test folds, pooled
    and per fold, with bootstrap intervals and paired tests (:func:`naslung.baselines.compare_with_baselines`)."""
    selection_provenance: dict[str, Any] = field(default_factory=dict)
    """Where the member architectures came from (``SelectionProvenance.as_dict`` of the evaluation)."""
    provenance_unknown_folds: list[int] = field(default_factory=list)
    """Evaluated folds whose independence from the architecture choice is unknown."""


def _spec_text(spec: Any) -> str:
    """Short readable form of a member spec (reference string; ``dnas[...]`` for DNAS-derived members)."""
    from naslung.models.factory import spec_from_dict

    try:
        return spec_from_dict(spec).ref_string() if isinstance(spec, dict) else str(spec)
    except (KeyError, TypeError, ValueError):
        return json.dumps(spec)


@dataclass(frozen=True)
class ModelCard:
    name: str
    intended_use: str
    input: InputFormat
    data: DataFacts
    code: CodeFacts
    deploy_fold: int
    members: list[MemberFacts]
    evaluation: Evaluation
    known_limits: list[str]
    calibration: dict[str, Any] | None = None
    """Calibration of the ensemble probability (``calibration_report.json`` of :mod:`naslung.calibration`:
    calibrator, figures on the validation rows it was fitted on and, reported only, on the deploy test fold)."""
    regression: dict[str, Any] | None = None
    """The stored-output regression check made at registration (:meth:`naslung.gate.RegressionCheck.to_dict`;
    the rule: :data:`REGRESSION_RULE`)."""

    @classmethod
    def build(
        cls,
        params: Params,
        index: Mapping[str, Any],
        metrics: Mapping[str, Any],
        *,
        validation: tuple[bool, str],
        search_run_id: str | None,
        git_commit: str | None,
        dvc_url: str | None,
    ) -> ModelCard:
        """The card of the ensemble indexed by ``index`` (``training.json``) and evaluated in ``metrics``
        (``metrics.json``); ``validation`` is (passed, reason) about the index's data."""
        data = index["data"]
        deploy = [m for m in index["members"] if m["fold"] == index["deploy_fold"]]
        ens = metrics["ensemble"]
        leak = [int(f) for f in metrics.get("selection_leak_folds") or []]
        unknown = [int(f) for f in metrics.get("provenance_unknown_folds") or []]
        prov = dict(metrics.get("selection_provenance") or {})
        limits = list(KNOWN_LIMITS) + _provenance_limits(prov, leak, unknown, params.search.fold)
        return cls(
            name=params.registry.name,
            intended_use=INTENDED_USE,
            input=InputFormat.of(params.prepare),
            data=DataFacts(
                store=str(params.paths.artifacts),
                hash=data["hash"],
                origin=data["origin"],
                manifest_md5=data["md5"]["manifest"],
                patches_md5=data["md5"]["patches"],
                dvc_url=dvc_url,
                validation="passed" if validation[0] else "failed",
                validation_reason=validation[1],
            ),
            code=CodeFacts(
                git_commit=git_commit,
                params_hash=params.section_hash(),
                member_params_hash=index["member_params_hash"],
                search_run_id=search_run_id,
            ),
            deploy_fold=int(index["deploy_fold"]),
            members=[
                MemberFacts(
                    name=m["name"],
                    spec=m["spec"],
                    ref=_spec_text(m["spec"]),
                    n_params=int(m["n_params"]),
                    run_id=m["run_id"],
                    latency_ms_per_nodule=dict(m.get("latency_ms_per_nodule") or {}),
                    latency_detail=dict(m.get("latency_detail") or {}),
                )
                for m in deploy
            ],
            evaluation=Evaluation(
                folds=[int(f) for f in metrics["folds"]],
                ensemble_per_fold=dict(ens["per_fold"]),
                ensemble_mean_std=dict(ens["mean_std"]),
                member_mean_std={n: m["mean_std"] for n, m in metrics["members"].items()},
                diameter_baseline=metrics.get("diameter_baseline"),
                selection_leak_folds=leak,
                search_fold=int(prov["search_fold"]) if prov.get("search_fold") is not None else None,
                comparison=metrics.get("comparison"),
                selection_provenance=prov,
                provenance_unknown_folds=unknown,
            ),
            known_limits=limits,
        )

    # --- headline figures ---------------------------------------------------------------------------

    @property
    def f1_mean(self) -> float:
        return float(self.evaluation.ensemble_mean_std["f1"]["mean"])

    @property
    def f1_per_fold(self) -> dict[str, float]:
        return {f: m["f1"] for f, m in self.evaluation.ensemble_per_fold.items()}

    # --- derived forms ------------------------------------------------------------------------------

    def to_tags(self) -> dict[str, str]:
        """The version's lineage tags ``naslung.*`` (strings, at most 5000 characters each)."""
        d, c, e = self.data, self.code, self.evaluation
        tags = {
            "data.hash": d.hash,
            "data.origin": d.origin,
            "data.manifest_md5": d.manifest_md5,
            "data.patches_md5": d.patches_md5,
            "data.dvc_url": d.dvc_url or "",
            "git_commit": c.git_commit or "",
            "params_hash": c.params_hash,
            "member_params_hash": c.member_params_hash,
            "search_run_id": c.search_run_id or "",
            "member_run_ids": json.dumps({m.name: m.run_id for m in self.members}),
            "members": json.dumps([m.name for m in self.members]),
            "deploy_fold": str(self.deploy_fold),
            "eval_folds": json.dumps(e.folds),
            "f1_mean": f"{self.f1_mean:.6f}",
            "f1_per_fold": json.dumps(self.f1_per_fold),
            "auc_mean": f"{e.ensemble_mean_std['auc']['mean']:.6f}",
            "validation": d.validation,
            "validation_reason": d.validation_reason,
        }
        return {TAG + k: str(v)[:5000] for k, v in tags.items()}

    def to_model_info(self) -> dict[str, Any]:
        """The card's part of the TorchServe package's ``model_info.json`` (the packager adds version,
        alias, run id and serving limits)."""
        return {
            "intended_use": self.intended_use,
            "input": asdict(self.input),
            "members": [m.name for m in self.members],
            "deploy_fold": self.deploy_fold,
            "eval_folds": self.evaluation.folds,
            "f1_mean": self.f1_mean,
            "f1_per_fold": self.f1_per_fold,
            "auc_mean": float(self.evaluation.ensemble_mean_std["auc"]["mean"]),
            "data_hash": self.data.hash,
            "validation": self.data.validation,
            "git_commit": self.code.git_commit,
            "params_hash": self.code.params_hash,
        }

    def reproduce_text(self) -> str:
        return (
            f"`git checkout {self.code.git_commit or '<commit>'} && dvc pull && dvc repro` (or: `naslung prepare && "
            f"naslung validate && naslung ensemble train && naslung evaluate && naslung register && naslung "
            f"promote`). Data: patch store md5s {self.data.manifest_md5} / {self.data.patches_md5}; params hash "
            f"{self.code.params_hash}; members chosen by search run "
            f"{self.code.search_run_id or '(explicit ensemble.specs)'}."
        )

    def description(self, run_id: str) -> str:
        """The registered version's description (at most 4900 characters)."""
        names = [m.name for m in self.members]
        text = (
            f"NASLung ensemble of {len(names)} members ({', '.join(names)}), test-fold mean F1 "
            f"{self.f1_mean:.6f} over folds {self.evaluation.folds}. Registered by run {run_id}; member "
            f"training runs: {json.dumps({m.name: m.run_id for m in self.members})}. Model card: artifact "
            f"`{CARD_MARKDOWN}` of that run.\n\nReproduce: {self.reproduce_text()}"
        )
        return text[:4900]

    def to_markdown(self) -> str:
        """The human-readable model card (sections: input, data, architecture, metrics, baselines,
        provenance, calibration, regression check, known limits, reproduce)."""
        d, c, i = self.data, self.code, self.input
        lines = [
            f"# Model card: {self.name}",
            "",
            "## Intended use",
            self.intended_use,
            "",
            "## Input",
            f"- {i.dtype} patches of shape {list(i.shape)} (axes {i.axis_order}), values in "
            f"[{i.value_range[0]:g}, {i.value_range[1]:g}] (HU window {list(i.hu_window)} clipped and scaled), "
            f"voxel spacing {list(i.spacing_mm)} mm",
            "",
            "## Data",
            f"- patch store `{d.store}` (manifest md5 `{d.manifest_md5}`, patches md5 `{d.patches_md5}`, "
            f"origin {d.origin})",
            f"- data validation: {d.validation} ({d.validation_reason})",
            f"- git commit `{c.git_commit or ''}`, params hash `{c.params_hash}`",
            "",
            f"## Architecture: {len(self.members)} members, majority vote (mean probability as score)",
            "| member | spec | params | latency ms/nodule |",
            "|---|---|---|---|",
        ]
        for m in self.members:
            lat = ", ".join(
                f"b{b}: {v:.2f}{' (search)' if m.latency_detail.get(b, {}).get('reused') else ''}"
                for b, v in m.latency_ms_per_nodule.items()
            )
            lines.append(f"| {m.name} | `{m.ref}` | {m.n_params} | {lat} |")
        lines += self._latency_lines()
        lines += self._metrics_lines()
        lines += self._baseline_lines()
        lines += self._provenance_lines()
        if self.calibration:  # --- calibration section (naslung.calibration) ---
            cal, figs = self.calibration.get("calibrator", {}), self.calibration.get("figures", {})
            lines += [
                "",
                f"## Calibration: {cal.get('method')} (T = {float(cal.get('temperature', 1.0)):.3f}), refer when the "
                f"member spread (std) > {cal.get('refer_spread')}",
                "| rows | probability | n | Brier | ECE | slope | intercept |",
                "|---|---|---|---|---|---|---|",
            ]
            for split, kinds in figs.items():
                where = self.calibration.get("data", {}).get(split, {})
                for kind, f in kinds.items():
                    lines.append(
                        f"| {split} folds {where.get('folds')} | {kind} | {int(f['n'])} | {f['brier']:.3f} | "
                        f"{f['ece']:.3f} | {f['slope']:.2f} | {f['intercept']:.2f} |"
                    )
            lines.append("Fitted on the validation rows (in-sample there); the test-fold rows are reported only.")
        lines += self._regression_lines()
        lines += ["", "## Known limits", *(f"- {t}" for t in self.known_limits), "", "## Reproduce"]
        lines.append(self.reproduce_text())
        return "\n".join(lines) + "\n"

    # --- markdown sections ----------------------------------------------------------------------------

    def _metrics_lines(self) -> list[str]:
        """Members and ensemble: mean ± sample std over the test folds (bare values for one fold), then the
        ensemble per fold."""
        from naslung.ensemble.evaluation import table_markdown

        e = self.evaluation
        table = {
            "folds": e.folds,
            "members": {n: {"mean_std": ms} for n, ms in e.member_mean_std.items()},
            "ensemble": {"mean_std": e.ensemble_mean_std},
        }
        spread = "mean ± sample std over the folds" if len(e.folds) > 1 else "one fold: no spread measured"
        lines = [
            "",
            f"## Metrics (test folds {e.folds}, each member trained without its test fold)",
            f"Per model: {spread}.",
            "",
            table_markdown(table),
            "",
            "Ensemble per fold:",
            "",
            "| fold | " + " | ".join(METRIC_NAMES) + " |",
            "|---|" + "---|" * len(METRIC_NAMES),
        ]
        for f, fm in e.ensemble_per_fold.items():
            lines.append(f"| {f} | " + " | ".join(f"{fm[n]:.3f}" for n in METRIC_NAMES) + " |")
        return lines

    def _regression_lines(self) -> list[str]:
        """The stored-output regression check at registration: result (deltas in probability units) and rule."""
        r = self.regression
        if not r:
            return []
        lines = ["", f"## Regression check (stored outputs): {r.get('status')}", f"- {r.get('reason')}"]
        if r.get("patches"):
            lines.append(f"- set: {r['patches']}")
        if r.get("max_abs_delta") is not None:
            lines.append(
                f"- vs champion v{r.get('baseline_version')}: max |dp| {float(r['max_abs_delta']):.2e} (tolerance "
                f"{float(r['max_tolerance']):g}), mean |dp| {float(r['mean_abs_delta']):.2e} (tolerance "
                f"{float(r['mean_tolerance']):g})"
            )
        reb = r.get("rebaseline")
        if reb:
            lines.append(f"- re-baselined by {reb.get('who')} at {reb.get('when')}: {reb.get('why')}")
        lines.append(f"- rule: {REGRESSION_RULE}")
        return lines

    def _latency_lines(self) -> list[str]:
        """How the latencies above were measured: batch, threads, device and machine load (ms per nodule)."""
        details = [d for m in self.members for d in m.latency_detail.values()]
        if not details:
            return []
        threads = sorted({int(d["threads"]) for d in details if "threads" in d})
        devices = sorted({str(d["device"]) for d in details if "device" in d})
        loads = [float(d["load_1min_before"]) for d in details if isinstance(d.get("load_1min_before"), (int, float))]
        reused = sum(bool(d.get("reused")) for d in details)
        text = (
            f"Latency: median of {details[0].get('repeats', '?')} warmed calls, ms per nodule at batch bN, on "
            f"{', '.join(devices)} with {', '.join(map(str, threads))} torch thread(s)"
        )
        if loads:
            text += f"; 1-min load average {min(loads):.1f}-{max(loads):.1f} when measured (shared machine if > 0.5)"
        if reused:
            text += f"; {reused} figure(s) marked (search) are the search's own measurement, as in its Pareto plot"
        return ["", text + "."]

    def _baseline_lines(self) -> list[str]:
        """The ensemble beside the diameter-only and voxel-statistics baselines on the same test folds."""
        from naslung.ensemble.evaluation import comparison_markdown, per_fold_markdown

        e = self.evaluation
        if not e.comparison:
            if not e.diameter_baseline:
                return []
            return [
                "",
                "Diameter-only baseline on all prepared data (not the test folds; no same-fold baselines were "
                f"evaluated): `{json.dumps(e.diameter_baseline, default=float)[:400]}`",
            ]
        comp = e.comparison
        rep = comp["pooled"]
        level = int(round(100 * float(comp.get("level", 0.95))))
        lines = [
            "",
            f"## Baselines on the same test folds {e.folds}",
            f"Pooled over the test folds (n={rep['n']}, {rep['n_malignant']} malignant); {level} % stratified "
            f"bootstrap intervals ({comp.get('n_boot')} resamples); tests: exact McNemar on right/wrong decisions "
            "(accuracy), paired bootstrap (AUC difference ensemble - baseline). Each baseline of test fold k is "
            "fitted on the other folds only: `diameter` = best diameter threshold (decision) and a logistic "
            "regression on the diameter (score); `voxel_stats` = logistic regression on 12 voxel statistics "
            "around the nodule centre.",
            "",
            comparison_markdown(comp),
        ]
        if len(comp.get("per_fold", {})) > 1:
            lines += ["", "Per test fold (accuracy / AUC, 95 % intervals; p: McNemar / paired bootstrap):", ""]
            lines.append(per_fold_markdown(comp))
        return lines

    def _provenance_lines(self) -> list[str]:
        """Where the member architectures came from, and the test folds that makes optimistic."""
        e, p = self.evaluation, self.evaluation.selection_provenance
        lines = ["", "## Provenance of the architectures"]
        if p:
            lines.append(f"- origin: {p.get('origin')} ({p.get('reason')})")
            if p.get("search_id"):
                lines.append(f"- search: {p['search_id']} (held out test fold {p.get('search_fold')})")
        elif self.code.search_run_id:
            lines.append(f"- chosen by search run {self.code.search_run_id}")
        if e.selection_leak_folds:
            lines.append(
                f"- selection leak: test folds {e.selection_leak_folds} were training/validation data of the search "
                "that chose the architectures: their figures are optimistic"
            )
        if e.provenance_unknown_folds:
            lines.append(
                f"- provenance unknown: test folds {e.provenance_unknown_folds} may have informed the choice of the "
                "architectures (set ensemble.specs_origin)"
            )
        if not e.selection_leak_folds and not e.provenance_unknown_folds:
            lines.append(f"- no evaluated test fold {e.folds} was seen by the choice of the architectures")
        return lines

    # --- JSON ---------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """Inverse of :meth:`to_dict` (e.g. of a logged ``model_card.json``)."""
        inp = data["input"]
        return cls(
            name=data["name"],
            intended_use=data["intended_use"],
            input=InputFormat(
                shape=tuple(inp["shape"]),
                dtype=inp["dtype"],
                value_range=(float(inp["value_range"][0]), float(inp["value_range"][1])),
                spacing_mm=(float(inp["spacing_mm"][0]), float(inp["spacing_mm"][1]), float(inp["spacing_mm"][2])),
                axis_order=inp["axis_order"],
                hu_window=(float(inp["hu_window"][0]), float(inp["hu_window"][1])),
            ),
            data=DataFacts(**_known(DataFacts, data["data"])),
            code=CodeFacts(**_known(CodeFacts, data["code"])),
            deploy_fold=int(data["deploy_fold"]),
            members=[MemberFacts(**_known(MemberFacts, m)) for m in data["members"]],
            evaluation=Evaluation(**_known(Evaluation, data["evaluation"])),
            known_limits=list(data["known_limits"]),
            calibration=data.get("calibration"),
            regression=data.get("regression"),
        )


def _provenance_limits(prov: Mapping[str, Any], leak: list[int], unknown: list[int], search_fold: int) -> list[str]:
    """Known-limit sentences of the selection provenance (leak folds, folds of unknown provenance)."""
    out = []
    if leak:
        held = prov.get("search_fold", search_fold)
        out.append(
            f"Test folds {leak} were training/validation data of the architecture search (it held out fold "
            f"{held} only): their figures are optimistic."
        )
    if unknown:
        out.append(
            f"Test folds {unknown}: {prov.get('reason') or 'provenance of the explicit ensemble.specs unknown'}; "
            "their figures may be optimistic."
        )
    return out


def _known(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}
