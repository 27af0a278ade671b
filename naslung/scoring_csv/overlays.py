"""CAM overlay PNGs of scored rows (``naslung score --explain``).

One PNG per ok row, ``<png_dir>/row<n>_<nodule_id or n>.png`` (n = 1-based input row; the id reduced to
``[A-Za-z0-9._-]``, at most 80 characters): axial / coronal / sagittal views of the (32, 32, 32) patch,
(z, y, x), 1 mm voxels, with the ensemble's CAM for ``explain_target`` and P(malignant) in the title.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from naslung.scoring import decode_map
from naslung.scoring_csv.rows import RowResult


def png_name(row: RowResult) -> str:
    """File name of the row's overlay."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", row.nodule_id).strip("._")[:80] or str(row.row + 1)
    return f"row{row.row + 1}_{safe}.png"


def write_overlay(png_dir: Path, row: RowResult, patch: np.ndarray, answer: Mapping[str, Any]) -> str:
    """Write the row's overlay into ``png_dir``; returns its path relative to ``png_dir``'s parent
    (the results CSV's folder). Raises ValueError when the answer holds no CAM (or an unreadable one)."""
    from naslung.explain.render import save_overlay

    cam = answer.get("cam")
    if cam is None:
        raise ValueError("the answer holds no CAM (was the request sent to the explanations endpoint?)")
    heat = decode_map(cam)
    target = int(answer.get("explain_target", answer["label"]))
    ident = row.nodule_id
    path = png_dir / png_name(row)
    save_overlay(
        path,
        patch,
        heat,
        prob=float(answer["probability"]),
        name=f"nodule {ident}" if ident else f"row {row.row + 1}",
        label=f"CAM, class {target} ({'malignant' if target == 1 else 'benign'})",
    )
    return f"{png_dir.name}/{path.name}"
