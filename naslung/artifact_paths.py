"""Every artifact path of the pipeline, as a function of :class:`naslung.params.Params`.

The file names are spelt here once; ``dvc.yaml`` spells the same paths through ``${...}`` templating
from ``params.yaml`` (``tests/unit/test_params.py`` checks that the two agree). Folders come from the params:

* ``paths.artifacts`` (:class:`ArtifactsDir`): the patch store written by ``prepare`` (``patches.npy``
  (N, P, P, P) float32, ``manifest.csv``, ``rejects.csv``, ``prepare_metrics.json``), ``validation.json``
  (``validate``), ``metrics.json`` (the headline figures), ``metrics_detail.json`` (everything) and
  ``plots/`` (``evaluate``), ``registration.json`` (``register``);
* ``search.out_dir`` and ``dnas.out_dir`` (:class:`SearchDir`): ``front.json``, ``selected.json``,
  ``summary.json``, ``pareto.png``;
* ``ensemble.out_dir`` (:class:`EnsembleDir`): ``training.json`` (index) and ``model/`` (the deployable
  ensemble; the member cache layout is :mod:`naslung.ensemble.layout`'s).

Paths are relative to the working folder exactly as the params give them (no resolving), so they print
and compare the way ``dvc.yaml`` and ``dvc.lock`` spell them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from naslung.params import Params

PATCHES_FILE = "patches.npy"
MANIFEST_FILE = "manifest.csv"
REJECTS_FILE = "rejects.csv"
PREPARE_METRICS_FILE = "prepare_metrics.json"
VALIDATION_FILE = "validation.json"
METRICS_FILE = "metrics.json"
METRICS_DETAIL_FILE = "metrics_detail.json"
REGISTRATION_FILE = "registration.json"
PLOTS_DIR = "plots"

FRONT_FILE = "front.json"
SELECTED_FILE = "selected.json"
SUMMARY_FILE = "summary.json"
PARETO_FILE = "pareto.png"

ENSEMBLE_INDEX_FILE = "training.json"
ENSEMBLE_MODEL_DIR = "model"

STORE_FILES: dict[str, str] = {"manifest": MANIFEST_FILE, "patches": PATCHES_FILE}
"""The patch store's files whose bytes identify a data version (see :func:`naslung.lineage.data_identity`)."""


@dataclass(frozen=True)
class ArtifactsDir:
    """``paths.artifacts``: the patch store and the per-stage metrics next to it."""

    root: Path

    @property
    def patches(self) -> Path:
        """``patches.npy``: (N, P, P, P) float32 in [0, 1], numpy order (z, y, x)."""
        return self.root / PATCHES_FILE

    @property
    def manifest(self) -> Path:
        """``manifest.csv``: one row per nodule, ``patch_index`` -> row of ``patches.npy``."""
        return self.root / MANIFEST_FILE

    @property
    def rejects(self) -> Path:
        """``rejects.csv``: every annotation row not cut, with its reason."""
        return self.root / REJECTS_FILE

    @property
    def prepare_metrics(self) -> Path:
        """``prepare_metrics.json``: counts per class/fold, rejects by reason, diameter-only baseline."""
        return self.root / PREPARE_METRICS_FILE

    @property
    def validation(self) -> Path:
        """``validation.json``: the data-validation verdict and the md5s of the data it is about."""
        return self.root / VALIDATION_FILE

    @property
    def metrics(self) -> Path:
        """``metrics.json``: the ensemble evaluation's headline (<= 30 flat numbers, ``dvc metrics show/diff``)."""
        return self.root / METRICS_FILE

    @property
    def metrics_detail(self) -> Path:
        """``metrics_detail.json``: the whole ensemble evaluation (per fold, per member, baselines, intervals,
        paired tests, provenance); what the registry and the model card read."""
        return self.root / METRICS_DETAIL_FILE

    @property
    def plots(self) -> Path:
        """``plots/``: the evaluation's PNG figures."""
        return self.root / PLOTS_DIR

    @property
    def registration(self) -> Path:
        """``registration.json``: the registered model version and the promotion gate's decision."""
        return self.root / REGISTRATION_FILE


@dataclass(frozen=True)
class SearchDir:
    """Output folder of a search (``search.out_dir``, or ``dnas.out_dir`` for ``naslung dnas``)."""

    root: Path

    @property
    def front(self) -> Path:
        """``front.json``: the Pareto front (accuracy vs latency) of the trained models."""
        return self.root / FRONT_FILE

    @property
    def selected(self) -> Path:
        """``selected.json``: the member specs chosen for the ensemble."""
        return self.root / SELECTED_FILE

    @property
    def summary(self) -> Path:
        """``summary.json``: counts, timings and the MLflow parent run of the search."""
        return self.root / SUMMARY_FILE

    @property
    def pareto(self) -> Path:
        """``pareto.png``: the front plot."""
        return self.root / PARETO_FILE


@dataclass(frozen=True)
class EnsembleDir:
    """``ensemble.out_dir``: member cache, training index and the deployable ensemble."""

    root: Path

    @property
    def index(self) -> Path:
        """``training.json``: the trained members and the deployable ensemble."""
        return self.root / ENSEMBLE_INDEX_FILE

    @property
    def model(self) -> Path:
        """``model/``: the deployable ensemble directory (members of ``ensemble.deploy_fold``)."""
        return self.root / ENSEMBLE_MODEL_DIR


@dataclass(frozen=True)
class ArtifactPaths:
    """All artifact folders of one configuration (``ArtifactPaths.from_params(params).artifacts.manifest``)."""

    artifacts: ArtifactsDir
    search: SearchDir
    dnas: SearchDir
    ensemble: EnsembleDir

    @classmethod
    def from_params(
        cls, params: Params, *, artifacts: str | Path | None = None, search: str | Path | None = None
    ) -> ArtifactPaths:
        """Paths of ``params``; ``artifacts`` / ``search`` replace ``paths.artifacts`` / ``search.out_dir``
        (the commands' ``--artifacts`` / ``--out-dir``)."""
        return cls(
            artifacts=ArtifactsDir(Path(artifacts or params.paths.artifacts)),
            search=SearchDir(Path(search or params.search.out_dir)),
            dnas=SearchDir(Path(params.dnas.out_dir)),
            ensemble=EnsembleDir(Path(params.ensemble.out_dir)),
        )
