"""Fig. 5 analogue for one test fold: CAM / stage-2 attention panels of correctly and wrongly classified
nodules per class, and the map-mass figure — for a single model or an ensemble (mean member maps) — with
two controls that a reader needs to judge them.

The test fold is scored once through :meth:`naslung.train.protocol.HeldOutTest.evaluate` (reporting, never
selection). Nodules are the store's 32^3 1 mm patches in (z, y, x) order; the nodule mask of the mass
figure is a centred sphere of the manifest diameter (mm).

Map-mass ratios (``mass / share``, :mod:`naslung.explain.sanity`; 1 = a uniform map) are given for

* ``trained``: the model(s) explained (top-level ``CAM`` / ``attention`` of ``explain.json``);
* ``untrained``: the same architectures re-initialised (:func:`naslung.explain.maps.reinitialised`,
  member ``i`` under torch seed ``control_seed + i``), explained for the same class per nodule as the
  trained model, on the same patches;
* ``centred_reference``: one fixed map for every nodule, an isotropic Gaussian of ``reference_sigma_mm``
  (default 4 mm) centred on the patch centre (:func:`naslung.explain.sanity.centred_reference`). It uses
  neither the image nor the diameter: it is what "looks at the patch centre" earns, since every patch is
  centred on its nodule.

The attention figures (all three rows) are taken on the padding-free interior: the outer
:func:`~naslung.explain.maps.attention_rim` voxel layers (3 for NASLungNet) are left out of the min-max
scaling and of both sums, because the stage-2 attention there reflects the convolutions' zero padding (see
:mod:`naslung.explain.maps`); the panels grey that rim out. CAM figures use the whole patch.

``explain.json`` keys: ``test_fold``, ``n``, ``metrics``, ``CAM`` and ``attention`` (the trained model's
:meth:`~naslung.explain.sanity.MassReport.to_dict`), ``mass_ratio`` (kind -> ``{"trained", "untrained",
"centred_reference"}`` ratio of means), ``controls`` (``untrained``: ``seed``, ``definition``, per kind the
report; ``centred_reference``: ``sigma_mm``, ``definition``, per kind the report), ``attention_rim_vox``,
``panel_p`` (what the panels' numbers mean) and ``files``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from naslung.explain.maps import attention_rim, explain, reinitialised
from naslung.explain.render import mass_figure, panel_figure
from naslung.explain.sanity import (
    REFERENCE_SIGMA_MM,
    MassReport,
    centred_reference,
    interior_mask,
    masks_from_diameters,
    mass_report,
)

PANEL_FILES = ("panel_cam.png", "panel_attention.png", "mass.png", "explain.json")
"""Files :func:`explain_test_fold` may write (``panel_attention.png`` only when every model has CBAM)."""

CONTROL_KEYS = ("trained", "untrained", "centred_reference")
"""Keys of ``explain.json``'s ``mass_ratio`` per map kind."""


def control_maps(
    models: Any, X: np.ndarray, target: np.ndarray, seed: int, sigma_mm: float = REFERENCE_SIGMA_MM
) -> tuple[Any, np.ndarray]:
    """The two controls of the maps of ``models`` on patches ``X (n, 1, S, S, S)``: the
    :class:`~naslung.explain.maps.Explanation` of the re-initialised architectures for the classes
    ``target (n,)``, and the centred reference map ``(S, S, S)``."""
    untrained = explain(reinitialised(models, seed), X, target=target.tolist())
    return untrained, centred_reference(int(np.asarray(X).shape[-1]), sigma_mm)


def _caption(
    ratios: dict[str, dict[str, float]], kind: str, seed: int, sigma_mm: float, n_members: int, rim: int
) -> str:
    r = ratios[kind]
    this = "ensemble" if n_members > 1 else "model"
    who = f"mean of the {n_members} members' probabilities of malignancy" if n_members > 1 else "the model's"
    lines = [
        f"P(malignant): {who}"
        + ("; vote k/M: k of the M members give P >= 0.5." if n_members > 1 else " probability of malignancy.")
        + " Rows: true class; correct when P(malignant) is on the true class's side of 0.5.",
        f"Map mass inside the nodule / its volume share (1 = uniform map): this {this} {r['trained']:.2f}, "
        f"untrained control (same architectures re-initialised, seed {seed}) {r['untrained']:.2f}, "
        f"centred reference (Gaussian, sigma {sigma_mm:g} mm, at the patch centre) {r['centred_reference']:.2f}.",
    ]
    if rim:
        lines.append(
            f"Outer {rim} voxel layers (outside the dashed box) not coloured and left out of the ratios: "
            "there the attention reflects the convolutions' zero padding."
        )
    return "\n".join(lines)


def explain_test_fold(
    models: Any,
    store: Any,
    n_folds: int,
    fold: int,
    seed: int,
    out_dir: str | Path,
    per_cell: int = 3,
    title: str = "",
    control_seed: int | None = None,
    reference_sigma_mm: float = REFERENCE_SIGMA_MM,
) -> dict[str, Any]:
    """Score test fold ``fold`` of ``make_split(n_folds, fold, seed)`` once with ``models`` (a model, a list
    or an object with ``members``), write the panels, the mass figure and ``explain.json`` (keys in the module
    docstring) into ``out_dir``; return that summary. The untrained control is seeded with ``control_seed``
    (default ``seed``); the centred reference has standard deviation ``reference_sigma_mm`` (mm)."""
    from naslung.train.protocol import held_out_test, make_split

    test = held_out_test(store, make_split(n_folds, fold, seed))  # only the test fold is read
    held: dict[str, Any] = {}

    def predict(X: np.ndarray) -> np.ndarray:
        held["X"], held["ex"] = X, explain(models, X)
        return held["ex"].prob

    result = test.evaluate(predict)
    ex, X = held["ex"], held["X"]
    cseed = seed if control_seed is None else int(control_seed)
    untrained, reference = control_maps(models, X, ex.target, cseed, reference_sigma_mm)
    diam = store.manifest.set_index("nodule_id").loc[list(result.ids), "diameter_mm"].to_numpy(float)
    masks = masks_from_diameters(diam, size=int(X.shape[-1]))
    rim = attention_rim(models) if ex.attention is not None else 0
    interior = interior_mask(int(X.shape[-1]), rim)

    reports: dict[str, dict[str, MassReport]] = {
        "CAM": {
            "trained": mass_report(ex.cam, masks),
            "untrained": mass_report(untrained.cam, masks),
            "centred_reference": mass_report(reference, masks),
        }
    }
    if ex.attention is not None and untrained.attention is not None:
        reports["attention"] = {
            "trained": mass_report(ex.attention, masks, interior),
            "untrained": mass_report(untrained.attention, masks, interior),
            "centred_reference": mass_report(reference, masks, interior),
        }
    ratios = {k: {c: r.ratio_of_means for c, r in v.items()} for k, v in reports.items()}

    out = Path(out_dir)
    names = [str(i)[-8:] for i in result.ids]
    prefix = f"{title}: " if title else ""
    n_members = int(ex.member_probs.shape[1])
    votes = (ex.member_probs >= 0.5).sum(axis=1)
    common = {"names": names, "votes": votes, "n_members": n_members}
    files = [
        panel_figure(
            out / "panel_cam.png",
            X,
            ex.cam,
            result.y,
            ex.prob,
            per_cell,
            "CAM",
            title=f"{prefix}CAM, test fold {fold}: correct / wrong per class (axial | coronal)",
            caption=_caption(ratios, "CAM", cseed, reference_sigma_mm, n_members, 0),
            **common,
        )
    ]
    if "attention" in reports:
        files.append(
            panel_figure(
                out / "panel_attention.png",
                X,
                ex.attention,
                result.y,
                ex.prob,
                per_cell,
                "stage-2 attention",
                title=f"{prefix}stage-2 attention, test fold {fold} (axial | coronal)",
                rim=rim,
                caption=_caption(ratios, "attention", cseed, reference_sigma_mm, n_members, rim),
                **common,
            )
        )
    files.append(
        mass_figure(
            out / "mass.png",
            {k: v["trained"] for k, v in reports.items()},
            diam,
            controls={
                f"untrained (re-initialised, seed {cseed})": {k: v["untrained"] for k, v in reports.items()},
                f"centred reference (Gaussian, sigma {reference_sigma_mm:g} mm)": {
                    k: v["centred_reference"] for k, v in reports.items()
                },
            },
            notes={"attention": f"interior (outer {rim} voxel layers left out: zero padding)"} if rim else None,
            name=f"this {'ensemble' if n_members > 1 else 'model'}",
        )
    )
    summary = {
        "test_fold": fold,
        "n": len(result.y),
        "metrics": result.metrics,
        **{k: v["trained"].to_dict() for k, v in reports.items()},
        "mass_ratio": ratios,
        "controls": {
            "untrained": {
                "definition": "the same architectures re-initialised (reset_parameters of every module, "
                "BatchNorm statistics reset), member i under torch seed seed + i; maps for the same class "
                "per nodule as the trained model",
                "seed": cseed,
                **{k: v["untrained"].to_dict() for k, v in reports.items()},
            },
            "centred_reference": {
                "definition": "one map for every nodule: exp(-r^2 / (2 sigma^2)), r = distance (mm) to the "
                "patch centre; uses neither the image nor the diameter",
                "sigma_mm": float(reference_sigma_mm),
                **{k: v["centred_reference"].to_dict() for k, v in reports.items()},
            },
        },
        "attention_rim_vox": rim,
        "panel_p": "P(malignant): mean member probability of malignancy; vote k/M: members with P >= 0.5",
        "files": [p.name for p in files] + ["explain.json"],
    }
    (out / "explain.json").write_text(json.dumps(summary, indent=1, default=float), encoding="utf-8")
    return summary
