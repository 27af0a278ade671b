"""Reading the patch store written by ``prepare``: ``patches.npy`` (N, 32, 32, 32) float32 in [0, 1],
numpy order (z, y, x), memory-mapped; ``manifest.csv`` with row ``patch_index`` -> patch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from naslung.artifact_paths import PATCHES_FILE, ArtifactsDir
from naslung.data.prepare import MANIFEST_COLUMNS
from naslung.errors import UserError


class StoreError(UserError, RuntimeError):
    """The patch store is missing or inconsistent; the message names the file."""


@dataclass
class PatchStore:
    """A prepared dataset: ``manifest`` (one row per nodule) and ``patches`` (memmap, (N, P, P, P))."""

    root: Path
    manifest: pd.DataFrame
    patches: np.ndarray

    @classmethod
    def open(cls, artifacts_dir: str | Path) -> PatchStore:
        """Open ``manifest.csv`` + ``patches.npy`` in ``artifacts_dir`` (patches memory-mapped, read-only)."""
        root = Path(artifacts_dir)
        files = ArtifactsDir(root)
        mpath, ppath = files.manifest, files.patches
        for f in (mpath, ppath):
            if not f.is_file():
                raise StoreError(f"{f}: not found (run `naslung prepare` first)")
        manifest = pd.read_csv(
            mpath,
            dtype={"nodule_id": str, "seriesuid": str, "reader_scores": str},
            keep_default_na=False,
            na_values={"mean_score": [""], "diameter_mm": [""]},
        )
        missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
        if missing:
            raise StoreError(f"{mpath}: missing column(s) {missing}")
        patches = np.load(ppath, mmap_mode="r")
        if patches.ndim != 4 or patches.dtype != np.float32:
            raise StoreError(f"{ppath}: expected float32 (N, P, P, P), got {patches.dtype} {patches.shape}")
        idx = manifest["patch_index"].to_numpy()
        if len(manifest) != patches.shape[0] or (len(idx) and (idx.min() < 0 or idx.max() >= patches.shape[0])):
            raise StoreError(
                f"{root}: manifest has {len(manifest)} rows / patch_index range does not match "
                f"{patches.shape[0]} patches in {PATCHES_FILE}"
            )
        return cls(root, manifest, patches)

    def __len__(self) -> int:
        return len(self.manifest)

    def select(self, folds: Sequence[int]) -> pd.DataFrame:
        """Manifest rows in the given folds (in manifest order)."""
        return self.manifest[self.manifest["fold"].isin([int(f) for f in folds])]

    def arrays(self, folds: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(X, y, ids) for the given folds: X (n, 1, P, P, P) float32 (a copy), y (n,) int64, ids (n,) str."""
        rows = self.select(folds)
        idx = rows["patch_index"].to_numpy(np.int64)
        X = np.ascontiguousarray(self.patches[idx], dtype=np.float32)
        return X[:, None], rows["label"].to_numpy(np.int64), rows["nodule_id"].to_numpy(str)
