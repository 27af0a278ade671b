"""Promotion and rollback: the aliases ``champion`` / ``challenger`` / ``previous`` and the gate's record.

:func:`promote` reads the figures of challenger and champion off their tags, lets the pure gate
:func:`naslung.gate.decide` decide on their validation figures, moves the aliases (``champion`` ->
challenger, old champion -> ``previous``) and records the decision: tags ``naslung.gate.*`` on the
version, a JSON record ``gate/decision-v<version>-<time ns>.json`` in the version's run (every check with
the data it was measured on) and a printed line.

The stored-output regression check (rule 8 of :mod:`naslung.gate`; :mod:`naslung.registry.regression`) is
made again at each decision from the stored scores of the challenger and of the *current* champion (nothing
is scored), written to the version's ``naslung.regression.*`` tags and into the decision record. Promotion
makes the promoted version's scores the baseline and rollback the restored champion's (registered-model tag
``naslung.regression.baseline``).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

from mlflow import MlflowClient

from naslung import gate
from naslung.card import REGRESSION_RULE, TAG
from naslung.gate import GateDecision
from naslung.params import Params
from naslung.registry import regression
from naslung.registry.store import CHALLENGER, CHAMPION, PREVIOUS, configure, version_at
from naslung.registry.versions import VAL_FIGURES_TAG


def _figures(name: str, mv: Any) -> gate.VersionFigures:
    """What the gate needs of a model version, read off its tags: the validation figures
    (``naslung.val.figures``, written by :func:`naslung.registry.versions.register`), the data-validation
    verdict and, reported only, the test-fold figures of the model card (``naslung.f1_per_fold``,
    ``naslung.auc_mean``)."""
    raw_val = mv.tags.get(VAL_FIGURES_TAG)
    raw_f1 = mv.tags.get(TAG + "f1_per_fold")
    reported: dict[str, Any] = {"eval_folds": json.loads(mv.tags.get(TAG + "eval_folds") or "[]")}
    if raw_f1:
        reported["f1_per_fold"] = json.loads(raw_f1)
    if mv.tags.get(TAG + "auc_mean"):
        reported["auc_mean"] = float(mv.tags[TAG + "auc_mean"])
    return gate.VersionFigures(
        name=name,
        version=str(mv.version),
        validation=mv.tags.get(TAG + "validation"),
        validation_reason=mv.tags.get(TAG + "validation_reason"),
        val=gate.ValidationFigures.from_dict(json.loads(raw_val)) if raw_val else None,
        data_hash=mv.tags.get(TAG + "data.hash"),
        reported=reported,
    )


def _record(
    client: MlflowClient,
    d: GateDecision,
    run_id: str | None,
    challenger: gate.VersionFigures,
    champion: gate.VersionFigures | None,
    settings: gate.GateSettings,
) -> GateDecision:
    """Tag the decision on the version and the registered model, log its JSON record, print it."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    verdict = d.verdict
    client.set_model_version_tag(d.name, d.version, TAG + "gate.decision", verdict)
    client.set_model_version_tag(d.name, d.version, TAG + "gate.reason", d.reason[:5000])
    client.set_model_version_tag(d.name, d.version, TAG + "gate.time", stamp)
    if run_id:
        path = f"gate/decision-v{d.version}-{time.time_ns()}.json"  # one record per decision, never overwritten
        record = gate.decision_record(d, challenger, champion, settings, stamp)
        if challenger.regression is not None:
            record["regression_rule"] = REGRESSION_RULE
        client.log_dict(run_id, record, path)
        client.set_model_version_tag(d.name, d.version, TAG + "gate.record", path)
    client.set_registered_model_tag(d.name, TAG + "last_decision", f"{stamp} v{d.version} {verdict}: {d.reason}"[:5000])
    print(f"gate {d.name} v{d.version}: {verdict.upper()} - {d.reason}")
    return d


def promote(params: Params, version: str | int | None = None, rebaseline: str | None = None) -> GateDecision:
    """Gate the ``challenger`` (or ``version``) and promote it to ``champion`` when it passes.

    The rule is :func:`naslung.gate.decide` on validation figures only (never a test fold): data validation
    passed (when ``registry.require_validation``); validation AUC / sensitivity / specificity at least
    ``registry.min_auc`` / ``min_sensitivity`` / ``min_specificity``; accuracy above the constant
    predictor's; AUC at least each baseline's + ``registry.baseline_margin``; and, when the champion was
    evaluated on the same validation rows, AUC >= champion AUC - ``registry.auc_tolerance``. On promotion
    the old champion keeps the alias ``previous``. The stored-output regression check: the version's stored
    scores on ``registry.regression_patches`` within ``registry.regression_tolerance`` (max |Δp|) and
    ``registry.regression_mean_tolerance`` (mean |Δp|) of the current champion's, unless re-baselined:
    ``rebaseline`` (a reason) accepts moved scores now and is recorded (who, when, why) in the tags and the
    decision record; a re-baseline granted by ``naslung register --rebaseline`` holds against the same
    champion. A promoted version's scores become the baseline.
    """
    configure(params)
    client = MlflowClient()
    name = params.registry.name
    mv = client.get_model_version(name, str(version)) if version is not None else version_at(client, name, CHALLENGER)
    if mv is None:
        raise ValueError(f"promote: {name} has no version with alias '{CHALLENGER}' (run `naslung register` first)")
    champ = version_at(client, name, CHAMPION)
    settings = gate.GateSettings.of(params.registry)
    challenger = _figures(name, mv)
    champion = _figures(name, champ) if champ is not None else None
    if champ is None or str(champ.version) != str(mv.version):
        reg = regression.at_promotion(client, params, mv, champ, rebaseline)
        challenger = replace(challenger, regression=reg)
        for k, v in regression.version_tags(reg, "promote").items():
            client.set_model_version_tag(name, str(mv.version), k, v)
    d = gate.decide(challenger, champion, settings)
    if d.promoted:
        if champ is not None:
            client.set_registered_model_alias(name, PREVIOUS, str(champ.version))
        client.set_registered_model_alias(name, CHAMPION, d.version)
        ch = version_at(client, name, CHALLENGER)
        if ch is not None and str(ch.version) == d.version:
            client.delete_registered_model_alias(name, CHALLENGER)
        regression.mark_baseline(client, name, client.get_model_version(name, d.version), f"promoted v{d.version}")
    return _record(client, d, mv.run_id, challenger, champion, settings)


def rollback(params: Params) -> dict[str, str]:
    """Make the ``previous`` version champion again; the demoted champion becomes ``previous``."""
    configure(params)
    client = MlflowClient()
    name = params.registry.name
    prev, champ = version_at(client, name, PREVIOUS), version_at(client, name, CHAMPION)
    if prev is None:
        raise ValueError(f"rollback: {name} has no '{PREVIOUS}' version to roll back to")
    client.set_registered_model_alias(name, CHAMPION, str(prev.version))
    if champ is not None:
        client.set_registered_model_alias(name, PREVIOUS, str(champ.version))
    regression.mark_baseline(client, name, prev, f"rolled back to v{prev.version}")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    old = str(champ.version) if champ is not None else "none"
    msg = f"rollback: champion v{old} -> v{prev.version}"
    client.set_model_version_tag(name, str(prev.version), TAG + "gate.decision", "rolled back to")
    client.set_model_version_tag(name, str(prev.version), TAG + "gate.reason", f"{stamp} {msg}")
    if champ is not None:
        client.set_model_version_tag(name, old, TAG + "gate.decision", "rolled back from")
        client.set_model_version_tag(name, old, TAG + "gate.reason", f"{stamp} {msg}")
    client.set_registered_model_tag(name, TAG + "last_decision", f"{stamp} {msg}")
    print(f"{name}: {msg}")
    return {"name": name, "champion": str(prev.version), "previous": old}


def aliases(params: Params) -> dict[str, str]:
    """Current alias -> version map of ``registry.name``."""
    configure(params)
    rm = MlflowClient().get_registered_model(params.registry.name)
    return {a: str(v) for a, v in (rm.aliases or {}).items()}
