"""Stored-output regression test of the champion: fixed real patches, stored scores, a tolerance.

**The set.** ``registry.regression_patches``: an ``.npz`` of real CT patches (``images``: int16 HU,
(n, 32, 32, 32), axes (z, y, x), 1 mm voxels; ``kind`` / ``label`` / ``seriesuid`` / ``world_xyz`` per
row when present), by default the 82 LIDC patches of
``../shared/data/LIDC-patches-derived/lidc_0001-0003_patches_32cube_1mm.npz`` — a path relative to the
working folder (the repository root under DVC), read in place and never copied into the repository. All
its patches are scored, windowed with ``prepare.hu_window`` (:func:`naslung.data.patches.window_hu`,
as the scoring paths do). The set's identity is the sha256 of the HU array (:func:`load_patch_set`).

**The scores.** At ``naslung register`` the ensemble scores the set in process through the serving
path's code (:meth:`naslung.ensemble.model.Ensemble.predict` -> :func:`naslung.scoring.prediction_columns`,
CPU, float32, batches of :data:`BATCH`): per patch the calibrated ``probability`` and the raw member mean
``raw_probability``. They are logged as ``regression/scores.json`` (:data:`SCORES_FILE`) in the version's
register run, beside its model: that file is the version's stored output.

**The baseline** is the stored scores of the version holding the alias ``champion`` (MLflow users expect
the champion to be the reference: promotion makes a version's scores the baseline, ``naslung rollback``
makes the rolled-back-to champion's scores the baseline again, and nothing else moves it). The registered
model's tag ``naslung.regression.baseline`` names it (version, run, file) for a reader of the UI.

**The rule** (:func:`check`, recorded on the version as tags ``naslung.regression.*`` — ``status``,
``reason``, ``max_abs_delta``, ``mean_abs_delta``, ``baseline_version``, ``check`` (the whole
:class:`naslung.gate.RegressionCheck` as JSON) — in the model card and in ``registration.json``):

* no champion yet: ``baseline`` — the version's scores are the baseline candidate (they become the
  baseline if it is promoted);
* max |Δp| <= ``registry.regression_tolerance`` and mean |Δp| <= ``registry.regression_mean_tolerance``
  over the patches, for both kinds (probability units): ``passed``;
* beyond: ``failed`` — the promotion gate refuses the version (rule 8 of :mod:`naslung.gate`) — unless
  re-baselined explicitly (``naslung register --rebaseline WHY`` or ``naslung promote --rebaseline WHY``):
  ``rebaselined``, recording who (``NASLUNG_USER`` or the login name), when, why and against which
  champion; a re-baseline granted at registration holds only against that same champion;
* ``skipped`` (registration goes on, the gate passes the check saying why): the patch file is not there
  (``skipped: file not found``; e.g. a machine without ``../shared``), ``regression_patches`` is null,
  the champion has no stored scores (registered before this check or without the file) or stored scores of
  another patch set.

The gate (:func:`at_promotion`) compares the stored files of the challenger and of the champion *at the time
of the decision* (nothing is scored again), so a champion that changed since registration is what counts.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from naslung.card import TAG
from naslung.gate import RegressionCheck
from naslung.params import Params
from naslung.registry.store import CHAMPION, version_at

SCORES_FILE = "regression/scores.json"
"""Artifact path of a version's stored scores in its register run."""
FORMAT = "naslung-regression-scores/1"
KINDS: tuple[str, ...] = ("probability", "raw_probability")
"""Score columns compared (both probabilities in [0, 1])."""
BATCH = 32
"""Patches per forward call when scoring the set."""
PREFIX = TAG + "regression."
CHECK_TAG = PREFIX + "check"
"""Version tag: the latest :class:`~naslung.gate.RegressionCheck` of the version as JSON."""
SCORES_TAG = PREFIX + "scores"
"""Version tag: artifact path of the version's stored scores in its run (absent: none stored)."""
REBASELINE_TAG = PREFIX + "rebaseline"
"""Version tag: a re-baseline granted at registration (JSON: who, when, why, baseline_version)."""
BASELINE_TAG = PREFIX + "baseline"
"""Registered-model tag: the current baseline (the champion's stored scores), JSON."""


@dataclass(frozen=True)
class PatchSet:
    """The regression set as scored: windowed patches and what identifies them."""

    path: str
    """``registry.regression_patches`` as configured."""
    resolved: str
    sha256: str
    """sha256 of the int16 HU array (shape and bytes): the set's identity."""
    x: np.ndarray
    """float32 (n, 32, 32, 32) in [0, 1], (z, y, x)."""
    rows: list[dict[str, Any]]
    """Per patch: ``index`` and, when the file has them, ``kind``, ``label``, ``seriesuid``, ``world_xyz`` (mm)."""
    hu_window: tuple[float, float]

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def text(self) -> str:
        return f"{self.n} patches of {self.path} (all rows; HU sha256 {self.sha256[:12]})"


def load_patch_set(params: Params) -> tuple[PatchSet | None, str]:
    """The configured set, windowed with ``prepare.hu_window``; ``(None, why)`` when there is none to score
    (null setting, file not found). A file that is there but not a patch set raises ValueError naming it."""
    from naslung.data.patches import window_hu

    conf = params.registry.regression_patches
    if not conf:
        return None, "skipped: registry.regression_patches is null (regression check off)"
    path = Path(conf)
    if not path.is_file():
        return None, f"skipped: file not found: {conf} (resolved {path.resolve()}); registration goes on without it"
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z.files:
            raise ValueError(f"registry.regression_patches {conf}: no 'images' array (found {sorted(z.files)})")
        hu = np.ascontiguousarray(z["images"])
        meta = {k: z[k] for k in ("kind", "label", "seriesuid", "world_xyz") if k in z.files}
    size = int(params.prepare.patch_size)
    if hu.ndim != 4 or hu.shape[1:] != (size, size, size) or hu.shape[0] == 0:
        raise ValueError(
            f"registry.regression_patches {conf}: 'images' has shape {hu.shape}, expected (n, {size}, {size}, {size})"
        )
    if not np.issubdtype(hu.dtype, np.integer):
        raise ValueError(f"registry.regression_patches {conf}: 'images' must hold integer HU, got dtype {hu.dtype}")
    digest = hashlib.sha256(str(hu.shape).encode() + hu.astype("<i2").tobytes()).hexdigest()
    rows = []
    for i in range(hu.shape[0]):
        row: dict[str, Any] = {"index": i}
        for k, v in meta.items():
            row[k] = [float(c) for c in v[i]] if k == "world_xyz" else str(v[i])
        rows.append(row)
    window = (float(params.prepare.hu_window[0]), float(params.prepare.hu_window[1]))
    return PatchSet(str(conf), str(path.resolve()), digest, window_hu(hu, window), rows, window), ""


def score(ensemble: Any, patches: PatchSet) -> dict[str, list[float]]:
    """Per-patch ``probability`` and ``raw_probability`` of ``ensemble`` on the set, through the serving
    path's code (``Ensemble.predict`` -> :func:`naslung.scoring.prediction_columns`), :data:`BATCH` at a time."""
    from naslung.scoring import prediction_columns

    out: dict[str, list[float]] = {k: [] for k in KINDS}
    for start in range(0, patches.n, BATCH):
        cols = prediction_columns(ensemble.predict(patches.x[start : start + BATCH, None]))
        for k in KINDS:
            if k not in cols:
                raise ValueError(f"regression check: the ensemble's prediction has no '{k}' column")
            out[k] += [float(v) for v in cols[k]]
    return out


def scores_record(params: Params, patches: PatchSet, scores: dict[str, list[float]], seconds: float) -> dict[str, Any]:
    """The JSON stored as :data:`SCORES_FILE`: the set (file, sha256, rows), the scores, how they were made."""
    kinds: dict[str, int] = {}
    for r in patches.rows:
        kinds[r.get("kind", "?")] = kinds.get(r.get("kind", "?"), 0) + 1
    return {
        "format": FORMAT,
        "registered_model": params.registry.name,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "patches": {
            "path": patches.path,
            "sha256": patches.sha256,
            "n": patches.n,
            "subset": f"all rows 0-{patches.n - 1}",
            "kinds": kinds,
            "hu_window": list(patches.hu_window),
            "rows": patches.rows,
        },
        "scoring": f"Ensemble.predict -> naslung.scoring.prediction_columns, CPU float32, batches of {BATCH}",
        "seconds": round(seconds, 3),
        "scores": scores,
    }


def _deltas(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for k in KINDS:
        x, y = np.asarray(a["scores"][k], dtype=np.float64), np.asarray(b["scores"][k], dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"regression check: {x.size} and {y.size} '{k}' scores for one patch set")
        d = np.abs(x - y)
        out[k] = {"max": float(d.max()), "mean": float(d.mean()), "worst_index": int(d.argmax())}
    return out


def rebaseline_record(why: str, baseline_version: str | None) -> dict[str, Any]:
    """Who / when / why of an explicit re-baseline against ``baseline_version`` (the champion then)."""
    if not why or not why.strip():
        raise ValueError(
            "--rebaseline needs a reason (why the scores may move), e.g. --rebaseline 'retrained on v2 data'"
        )
    try:
        who = os.environ.get("NASLUNG_USER") or getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return {
        "who": who,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "why": why.strip(),
        "baseline_version": baseline_version,
    }


def check(
    params: Params,
    candidate: dict[str, Any] | None,
    skip_reason: str,
    baseline: dict[str, Any] | None,
    baseline_version: str | None,
    rebaseline: dict[str, Any] | None = None,
) -> RegressionCheck:
    """The rule of the module doc: ``candidate`` / ``baseline`` are :func:`scores_record` dicts (None: none);
    ``baseline_version`` the champion's version (None: no champion); ``rebaseline`` an accepted move."""
    reg = params.registry
    tol, mean_tol = float(reg.regression_tolerance), float(reg.regression_mean_tolerance)
    what = "" if candidate is None else _text(candidate)

    def result(status: str, reason: str, **kw: Any) -> RegressionCheck:
        return RegressionCheck(status, reason, what, tol, mean_tol, rebaseline=rebaseline, **kw)

    if candidate is None:
        return result("skipped", skip_reason or "skipped: the version has no stored regression scores")
    if baseline_version is None:
        return result(
            "baseline",
            "no champion yet: these scores are the baseline candidate (they become the baseline when this version "
            "is promoted)",
        )
    if baseline is None:
        return result(
            "skipped",
            f"skipped: champion v{baseline_version} has no stored regression scores (registered before the check or "
            "without the patch file): nothing to compare; promoting this version makes its scores the baseline",
        )
    if baseline["patches"]["sha256"] != candidate["patches"]["sha256"]:
        return result(
            "skipped",
            f"skipped: champion v{baseline_version}'s stored scores are of another patch set ({_text(baseline)}): "
            "nothing to compare; promoting this version makes its scores the baseline",
        )
    deltas = _deltas(candidate, baseline)
    worst = max(d["max"] for d in deltas.values())
    mean = max(d["mean"] for d in deltas.values())
    within = worst <= tol and mean <= mean_tol
    kw = {"baseline_version": baseline_version, "max_abs_delta": worst, "mean_abs_delta": mean, "deltas": deltas}
    if within:
        return result("passed", f"scores within the tolerances of champion v{baseline_version}'s stored scores", **kw)
    moved = (
        f"scores moved beyond the tolerances of champion v{baseline_version}'s stored scores (max |dp| {worst:.4f} "
        f"vs {tol:g}, mean |dp| {mean:.4f} vs {mean_tol:g})"
    )
    if rebaseline is not None and rebaseline.get("baseline_version") == baseline_version:
        by = f"re-baselined by {rebaseline['who']} at {rebaseline['when']}: {rebaseline['why']}"
        return result("rebaselined", f"{moved}; {by}", **kw)
    return result(
        "failed",
        f"{moved}: the gate refuses this version unless re-baselined (`naslung promote --rebaseline WHY`)",
        **kw,
    )


def _text(record: dict[str, Any]) -> str:
    p = record["patches"]
    return f"{p['n']} patches of {p['path']} (all rows; HU sha256 {str(p['sha256'])[:12]})"


def read_scores(client: MlflowClient, mv: Any) -> dict[str, Any] | None:
    """The stored scores of model version ``mv`` (its run's :data:`SCORES_FILE`), or None when it has none."""
    path = (mv.tags or {}).get(SCORES_TAG)
    if not path or not mv.run_id:
        return None
    with tempfile.TemporaryDirectory(prefix="naslung-regression-") as tmp:
        try:
            local = client.download_artifacts(mv.run_id, path, tmp)
        except (MlflowException, OSError):
            return None
        data = json.loads(Path(local).read_text(encoding="utf-8"))
    return data if data.get("format") == FORMAT else None


def at_registration(
    params: Params, ensemble: Any, rebaseline: str | None = None
) -> tuple[dict[str, Any] | None, RegressionCheck]:
    """Score the set with ``ensemble`` and check the scores against the current champion's stored ones
    (MLflow configured by the caller). Returns (the :func:`scores_record` to store, or None, the check)."""
    patches, why = load_patch_set(params)
    record = None
    if patches is not None:
        t0 = time.perf_counter()
        scores = score(ensemble, patches)
        record = scores_record(params, patches, scores, time.perf_counter() - t0)
    client = MlflowClient()
    champ = version_at(client, params.registry.name, CHAMPION)
    champ_v = None if champ is None else str(champ.version)
    grant = rebaseline_record(rebaseline, champ_v) if rebaseline is not None else None
    baseline = read_scores(client, champ) if champ is not None else None
    result = check(params, record, why, baseline, champ_v, grant)
    print(f"regression {params.registry.name}: {result.text()}")
    return record, result


def at_promotion(
    client: MlflowClient, params: Params, mv: Any, champ: Any | None, rebaseline: str | None
) -> RegressionCheck:
    """The check the gate uses: ``mv``'s stored scores against the *current* champion's (nothing is scored).
    ``rebaseline`` (``naslung promote --rebaseline WHY``) accepts moved scores now; without it a re-baseline
    granted at registration holds when it was granted against this same champion."""
    champ_v = None if champ is None else str(champ.version)
    if rebaseline is not None:
        grant: dict[str, Any] | None = rebaseline_record(rebaseline, champ_v)
    else:
        raw = (mv.tags or {}).get(REBASELINE_TAG)
        grant = json.loads(raw) if raw else None
    candidate = read_scores(client, mv)
    why = ""
    if candidate is None:
        prior = (mv.tags or {}).get(CHECK_TAG)
        why = json.loads(prior).get("reason", "") if prior else "skipped: registered before the regression check"
    baseline = read_scores(client, champ) if champ is not None else None
    return check(params, candidate, why, baseline, champ_v, grant)


def version_tags(result: RegressionCheck, stage: str) -> dict[str, str]:
    """Version tags ``naslung.regression.*`` of a check made at ``stage`` (``register`` / ``promote``)."""
    tags = {
        PREFIX + "status": result.status,
        PREFIX + "reason": result.reason,
        PREFIX + "checked_at": f"{stage} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}",
        PREFIX + "baseline_version": result.baseline_version or "",
        PREFIX + "max_abs_delta": "" if result.max_abs_delta is None else f"{result.max_abs_delta:.6g}",
        PREFIX + "mean_abs_delta": "" if result.mean_abs_delta is None else f"{result.mean_abs_delta:.6g}",
        CHECK_TAG: json.dumps(result.to_dict(), default=float),
    }
    if result.rebaseline is not None:
        tags[PREFIX + "rebaselined_by"] = json.dumps(dict(result.rebaseline))
    return {k: v[:5000] for k, v in tags.items()}


def tag_registration(
    client: MlflowClient, name: str, version: str, record: dict[str, Any] | None, result: RegressionCheck
) -> None:
    """Tag a freshly registered version: the check, where its scores are, a granted re-baseline."""
    tags = version_tags(result, "register")
    if record is not None:
        tags[SCORES_TAG] = SCORES_FILE
    if result.rebaseline is not None:
        tags[REBASELINE_TAG] = json.dumps(dict(result.rebaseline))
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)


def mark_baseline(client: MlflowClient, name: str, mv: Any, why: str) -> None:
    """Record on the registered model that ``mv`` (now champion) holds the baseline scores (or none)."""
    has = bool((mv.tags or {}).get(SCORES_TAG))
    value = {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "scores": SCORES_FILE if has else None,
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "why": why,
    }
    client.set_registered_model_tag(name, BASELINE_TAG, json.dumps(value))
