"""Fig. 5 analogue for one test fold: CAM / stage-2 attention panels of correctly and wrongly classified
nodules per class, and the map-mass figure — for a single model or an ensemble (mean member maps).

The test fold is scored once through :meth:`naslung.train.protocol.HeldOutTest.evaluate` (reporting, never
selection). Nodules are the store's 32^3 1 mm patches in (z, y, x) order; the nodule mask of the mass
figure is a centred sphere of the manifest diameter (mm).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from naslung.explain.maps import explain
from naslung.explain.render import mass_figure, panel_figure
from naslung.explain.sanity import masks_from_diameters, mass_report

PANEL_FILES = ("panel_cam.png", "panel_attention.png", "mass.png", "explain.json")
"""Files :func:`explain_test_fold` may write (``panel_attention.png`` only when every model has CBAM)."""


def explain_test_fold(
    models: Any,
    store: Any,
    n_folds: int,
    fold: int,
    seed: int,
    out_dir: str | Path,
    per_cell: int = 3,
    title: str = "",
) -> dict[str, Any]:
    """Score test fold ``fold`` of ``make_split(n_folds, fold, seed)`` once with ``models`` (a model, a list
    or an object with ``members``), write the panels, the mass figure and ``explain.json`` into ``out_dir``;
    return the summary (test metrics, map-mass figures, written file names)."""
    from naslung.train.protocol import held_out_test, make_split

    test = held_out_test(store, make_split(n_folds, fold, seed))  # only the test fold is read
    held: dict[str, Any] = {}

    def predict(X: np.ndarray) -> np.ndarray:
        held["X"], held["ex"] = X, explain(models, X)
        return held["ex"].prob

    result = test.evaluate(predict)
    ex, X = held["ex"], held["X"]
    diam = store.manifest.set_index("nodule_id").loc[list(result.ids), "diameter_mm"].to_numpy(float)
    masks = masks_from_diameters(diam)
    out = Path(out_dir)
    names = [str(i)[-8:] for i in result.ids]
    prefix = f"{title}: " if title else ""
    files = [
        panel_figure(
            out / "panel_cam.png",
            X,
            ex.cam,
            result.y,
            ex.prob,
            per_cell,
            "CAM",
            names,
            title=f"{prefix}CAM, test fold {fold}: correct / wrong per class (axial | coronal)",
        )
    ]
    reports = {"CAM": mass_report(ex.cam, masks)}
    if ex.attention is not None:
        files.append(
            panel_figure(
                out / "panel_attention.png",
                X,
                ex.attention,
                result.y,
                ex.prob,
                per_cell,
                "stage-2 attention",
                names,
                title=f"{prefix}stage-2 attention, test fold {fold} (axial | coronal)",
            )
        )
        reports["attention"] = mass_report(ex.attention, masks)
    files.append(mass_figure(out / "mass.png", reports, diam))
    summary = {
        "test_fold": fold,
        "n": len(result.y),
        "metrics": result.metrics,
        **{k: r.to_dict() for k, r in reports.items()},
        "files": [p.name for p in files] + ["explain.json"],
    }
    (out / "explain.json").write_text(json.dumps(summary, indent=1, default=float), encoding="utf-8")
    return summary
