"""The schema of ``params.yaml``: frozen pydantic dataclasses, parsed once and passed around.

Every consumer (``dvc.yaml`` stages through the CLI, the Prefect flows, the tests) goes through
:func:`load_params`, so one file drives the whole platform.

* **One source of defaults.** The defaults below are the values of the committed ``params.yaml``;
  ``tests/unit/test_params.py`` fails when the two drift apart (a key missing from the file, another value, or
  another type). Experiments change values with overrides, not by editing the schema.
* **Validation.** Unknown keys are an error (``extra="forbid"``, so a typo never silently falls back to
  a default); enum-like strings are ``Literal`` types (the one place their choices are spelt: import the
  aliases below); counts that must be positive are constrained. A bad file or override raises
  :class:`ParamsError`, one line naming the key and what is wrong.
* **Overrides.** ``load_params(path, overrides=...)`` and :meth:`Params.with_overrides` take dotted keys
  (``{"search.budget": 3}``); the CLI's repeatable ``--set section.key=value`` (the ``dvc exp run -S``
  idiom) is parsed by :func:`parse_set` (values are YAML; text fields take the text as given).
* **Units** are part of every field's description (the docstring under it, also the JSON-schema
  ``description``): mm, voxels, HU, ms, MiB, epochs ...

Sections are real (pydantic) dataclasses: attribute access, ``dataclasses.replace`` (validated like
construction), ``dataclasses.fields`` and :func:`to_dict` all work as on plain frozen dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import field, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import ConfigDict, Field, StringConstraints, ValidationError
from pydantic.dataclasses import dataclass

DEFAULT_PARAMS = Path("params.yaml")

_CONFIG = ConfigDict(extra="forbid", use_attribute_docstrings=True)
"""Every section: unknown keys refused, the docstring under a field is its description."""

# --- value types (the one place each choice is spelt) -----------------------------------------------------

FoldRule = Literal["auto", "hash", "subset"]
Head = Literal["linear", "asoftmax"]
LrSchedule = Literal["constant", "cosine"]
SelectBy = Literal["auc", "f1", "loss"]
SearchStrategy = Literal["pop", "dnas"]
Runner = Literal["local", "dask"]
LatencySource = Literal["measured", "flops"]
ServeDevice = Literal["auto", "cpu"]
MixedOps = Literal["all", "sampled"]
Block = Literal["paper", "reference"]
SearchObjective = Literal["auc", "balanced_accuracy"]
SelectionFill = Literal["neighbours", "none"]
Calibration = Literal["temperature", "isotonic", "none"]
SpecsOrigin = Literal["unknown", "external", "search"]
WireFormat = Literal["uint8", "float32"]
MemoryFormat = Literal["auto", "channels_last", "contiguous"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Fraction = Annotated[float, Field(ge=0, le=1)]
"""A number in [0, 1] (a share, a probability)."""
TrainDevice = Annotated[str, StringConstraints(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]
"""``auto`` | ``cpu`` | ``cuda`` | ``cuda:<index>`` (see :func:`naslung.train.loop.resolve_device`)."""
Count = Annotated[int, Field(ge=1)]
"""An integer >= 1 (epochs, folds, sizes, workers ...)."""
Port = Annotated[int, Field(ge=1, le=65535)]

SEARCH_STRATEGIES: tuple[str, ...] = get_args(SearchStrategy)
HEADS: tuple[str, ...] = get_args(Head)
FOLD_RULES: tuple[str, ...] = get_args(FoldRule)


class ParamsError(ValueError):
    """A params file or override that does not fit the schema; the message is one line naming the key."""


# --- sections ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, config=_CONFIG)
class PathsParams:
    """Where inputs and outputs live (relative to the working folder, the repository root under DVC)."""

    raw: str = "data/luna16"
    """Raw-data folder: LUNA16 layout ``subset0..9/<uid>.mhd`` (or DICOM series); tracked by data.dvc."""
    annotations: str = "data/luna16/annotations_with_malignancy.csv"
    """Annotation table (CSV: world coordinates in mm, diameter in mm, per-reader malignancy scores)."""
    artifacts: str = "artifacts"
    """Stage outputs: patch store, manifests, metrics, plots (names: :mod:`naslung.artifact_paths`)."""
    mlflow_uri: str = "sqlite:///mlflow/mlflow.db"
    """MLflow tracking/registry URI; ``MLFLOW_TRACKING_URI`` wins (see :attr:`Params.mlflow_uri`)."""
    mlflow_artifacts: str = "mlflow/artifacts"
    """Folder of the MLflow artifact store for the embedded sqlite store."""


@dataclass(frozen=True, config=_CONFIG)
class SynthParams:
    """Embedded synthetic dataset (``naslung data synth``); see :mod:`naslung.data.synth`."""

    n_scans: Count = 30
    """Number of scans; ~8 MB and ~13 nodules each. Scale up for a bigger dataset."""
    nodules_per_scan: tuple[int, int] = (8, 18)
    """Inclusive range (lo, hi) of nodules per scan."""
    seed: int = 20211
    """Seed of the generator (same seed -> byte-identical files)."""
    workers: Count = 2
    """Processes rendering scans in parallel (the output does not depend on it)."""
    crop_margin_mm: Annotated[float, Field(ge=20.0)] | None = None
    """None: each scan keeps its whole field of view. A number (mm, >= 20): each scan is cut to the
    bounding box of its nodule centres +- this margin (origin moved, so world coordinates stay valid; like
    the real crops in ../shared/data), which makes rendering and the files much smaller; the nodule table
    does not change, and a patch lies in the same voxels with and without the crop when the margin
    covers it (>= ~30 mm for 32 mm patches). See :mod:`naslung.data.synth`."""


@dataclass(frozen=True, config=_CONFIG)
class PrepareParams:
    """Patch extraction (``naslung prepare``); see :mod:`naslung.data.prepare`."""

    patch_size: Count = 32
    """Voxels per side of the cubic output patch."""
    spacing_mm: Annotated[float, Field(gt=0)] = 1.0
    """Isotropic output spacing in mm."""
    hu_window: tuple[float, float] = (-1200.0, 600.0)
    """HU range (lo, hi) mapped linearly onto [0, 1] (clipped)."""
    fill_hu: float = -1024.0
    """HU used for points outside the scan (air)."""
    margin_voxels: Annotated[int, Field(ge=0)] = 4
    """Extra voxels around the patch in the crop read before resampling."""
    n_folds: Count = 10
    """Cross-validation folds (series-level)."""
    fold_rule: FoldRule = "auto"
    """auto: LUNA16 subsetK folder = fold K, else a hash of the series uid | hash: always the hash |
    subset: always the folder (an error outside subsetK folders)."""


@dataclass(frozen=True, config=_CONFIG)
class ValidateParams:
    """Bounds of the data-validation suites (``naslung validate``); see :mod:`naslung.validation`."""

    diameter_mm: tuple[float, float] = (2.0, 40.0)
    """Allowed nodule diameter range (lo, hi) in mm of the annotation table."""
    class_fraction: tuple[float, float] = (0.15, 0.85)
    """Allowed malignant fraction (lo, hi) of the manifest, overall (0..1)."""


@dataclass(frozen=True, config=_CONFIG)
class ModelParams:
    """The default architecture and the A-Softmax head (SphereFace lambda annealing)."""

    spec: str = "[4, 4, [4, 4], [4, 8], [8, 8]]"
    """Architecture spec: bare list or reference string (paper Model-1 by default)."""
    cbam: bool = True
    """CBAM attention in the residual blocks (for bare-list specs)."""
    head: Head = "asoftmax"
    """Classifier head (for bare-list specs): linear | asoftmax."""
    margin_m: Count = 4
    """A-Softmax angular margin m (integer multiple of the angle)."""
    block: Block = "paper"
    """Residual-block variant: paper (the paper's equations: stride-2 first block per stage, identity or
    1x1x1 projection shortcut, ReLU after the sum) | reference (the reference code's ``ConvRes``: a separate
    3x3x3 stride-2 conv before each stage, always a 1x1x1 shortcut, no ReLU after the sum, softmax CBAM)."""
    lambda_base: float = 1000.0
    """SphereFace lambda annealing over the planned run: lambda = max(min, base * (1 + gamma * step) ** -power),
    gamma chosen so that lambda reaches ``lambda_min`` at ``lambda_floor_at`` of the planned optimiser steps."""
    lambda_floor_at: Annotated[float, Field(gt=0, le=1)] = 0.5
    """Fraction of the run's planned optimiser steps (epochs x steps per epoch) at which lambda reaches its
    floor; the margin term's weight 1 / (1 + lambda) is then 1 / (1 + lambda_min) for the rest of the run."""
    lambda_power: float = 1.0
    """Annealing power."""
    lambda_min: Annotated[float, Field(gt=0)] = 5.0
    """Floor of the annealed lambda (margin weight 1 / (1 + 5) = 0.17 of the target logit)."""


@dataclass(frozen=True, config=_CONFIG)
class TrainParams:
    """One training run (``naslung train``, ensemble members, search candidates' optimiser settings)."""

    epochs: Count = 30
    """Maximum training epochs (early stopping: ``patience``)."""
    batch_size: Count = 8
    """Patches per optimiser step (8: ~25 steps an epoch on the embedded default's ~200 training nodules)."""
    lr: Annotated[float, Field(gt=0)] = 1e-3
    """Adam learning rate. The paper's 2e-4 (at batch 32) did not learn within the search's 10 epochs here
    (validation AUC 0.49-0.64, loss at ln 2); 1e-3 at batch 8 did (0.75-0.82), chosen on test fold 0's
    validation folds, never on folds 1-5 (README, "Training settings")."""
    betas: tuple[float, float] = (0.5, 0.999)
    """Adam (beta1, beta2)."""
    weight_decay: float = 0.0
    """Adam weight decay (L2)."""
    pad: Annotated[int, Field(ge=0)] = 2
    """Augmentation: voxels of padding per side before the random crop back to the patch size."""
    flips: bool = True
    """Augmentation: random flips on each of the 3 axes."""
    permute_axes: bool = False
    """Random order of the three spatial axes per sample (with ``flips``: all 48 symmetries of the cube)."""
    lr_schedule: LrSchedule = "constant"
    """constant (the paper) | cosine: lr decays from ``lr`` to 0 over the maximum epochs (per epoch)."""
    patience: int = 10
    """Early stopping: epochs without a better validation score."""
    select_by: SelectBy = "auc"
    """Validation criterion of model selection / early stopping: auc | f1 | loss."""
    test_folds: tuple[int, ...] = (1, 2, 3, 4, 5)
    """Test folds of ``naslung cv``."""
    val_folds: Count = 2
    """Validation folds (patient-level, seeded) carved out of the non-test folds of a training run or
    ensemble member: early stopping, checkpoint selection, calibration and the promotion gate use them."""
    num_threads: int = 2
    """torch intra-op threads."""
    device: TrainDevice = "auto"
    """auto | cpu | cuda | cuda:<index>."""
    precision: Precision = "fp32"
    """fp32 | bf16 | fp16 | auto: autocast of the forward (A-Softmax head and loss in fp32; fp16 with a
    GradScaler); auto = bf16 on a CUDA device that supports it, else fp32 (CPU results unchanged)."""
    eval_batch_size: Annotated[int, Field(ge=0)] = 0
    """Validation batch size inside ``fit``; 0 = auto: max(batch_size, 64) on CPU (as before), 256 on CUDA."""
    memory_format: MemoryFormat = "auto"
    """Layout of weights and batches while training: channels_last (``torch.channels_last_3d``) |
    contiguous (NCDHW) | auto = channels_last on CPU (oneDNN's 3D convolutions: 1.17-1.30x faster per epoch
    on 2 cores), contiguous on CUDA. Changes only the rounding; the fitted model is returned contiguous."""
    concurrent: Count = 1
    """Ensemble members trained at a time (``fit_many``, lockstep, one CUDA stream each); 1 = one by one.
    Each member's result is the same as trained alone."""
    experiment: str = "naslung-train"
    """MLflow experiment of training runs (train, cv, features)."""


@dataclass(frozen=True, config=_CONFIG)
class LatencyParams:
    """Latency measurement (ms per nodule, warmed, median of repeated calls); see :mod:`naslung.latency`."""

    batch_sizes: tuple[int, ...] = (1, 32)
    """Batch sizes (nodules per call) measured."""
    warmup: Annotated[int, Field(ge=0)] = 5
    """Untimed calls before timing."""
    repeats: Count = 30
    """Timed calls per measurement; the figure is their median (ms per nodule)."""
    trials: Count = 5
    """Repeated measurements for the repeatability figure (``naslung latency``)."""


@dataclass(frozen=True, config=_CONFIG)
class SearchParams:
    """Architecture search (``naslung search``)."""

    strategy: SearchStrategy = "pop"
    """pop: Partial Order Pruning over NASLung nets (:mod:`naslung.search.pop`); dnas: differentiable search
    over MBConv nets (``dnas`` section, :mod:`naslung.search.dnas_run`). Both write the same outputs into
    ``out_dir``."""
    epochs: Count = 10
    """Fixed training epochs per candidate (no early stopping: the final weights are scored, so no epoch is
    chosen on the nodules that score it)."""
    budget: Count = 6
    """Trained candidates at most (embedded default sized for 2 CPU cores)."""
    patience: int = 4
    """Stop when the Pareto set is unchanged for this many iterations."""
    batch_size: Count = 1
    """Candidates per iteration (>1 with the Dask runner)."""
    runner: Runner = "local"
    """Prefect task runner: local (threads in this process) | dask."""
    dask_address: str | None = None
    """Existing Dask scheduler (e.g. ``tcp://host:8786``); None: a LocalCluster of ``dask_workers``."""
    widths: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
    """Channel widths a block may take."""
    stem: tuple[int, int] = (4, 4)
    """Stem widths (channels of its two convolutions)."""
    monotone: bool = True
    """Widths never decrease along the network."""
    depth_rule: bool = True
    """Paper eq. 5: later stages at least as deep as earlier ones."""
    k_select: Count = 9
    """Architectures selected from the front for the ensemble."""
    fold: int = 1
    """Test fold held out (the search never sees it); the validation folds are carved out of the rest."""
    val_folds: Count = 3
    """Validation folds (patient-level, seeded, pooled) on which candidates are scored: large enough that
    the candidates' score intervals can separate them."""
    objective: SearchObjective = "auc"
    """Candidate score on the pooled validation folds: auc | balanced_accuracy (never plain accuracy, which
    a constant prediction scores high on unbalanced folds)."""
    latency_tolerance: Annotated[float, Field(ge=0)] = 0.1
    """Relative latency tolerance of pruning: one candidate is faster than another only when its latency
    is lower by more than this fraction (measured latencies spread by tens of % under load)."""
    fill: SelectionFill = "neighbours"
    """When the front and its layers hold fewer than ``k_select`` architectures: neighbours (fill with
    one-step neighbours of the front members in the search space, nearest latency first) | none."""
    min_blocks: Count = 3
    """Fewest residual blocks in stages 3-5 together (paper: 3)."""
    max_blocks: Count = 9
    """Most residual blocks in stages 3-5 together (paper: 9)."""
    latency_source: LatencySource = "measured"
    """measured: warmed wall-clock ms per nodule (naslung.latency); flops: multiply-adds per nodule in
    millions, a deterministic proxy (used by tests, never mixed with measured values)."""
    dask_workers: Count = 2
    """Workers of the LocalCluster started when runner=dask and no dask_address is given."""
    out_dir: str = "search"
    """Folder for front.json, selected.json, pareto.png and summary.json."""
    experiment: str = "naslung-search"
    """MLflow experiment holding the search parent runs."""


@dataclass(frozen=True, config=_CONFIG)
class ServeParams:
    """TorchServe serving and CSV batch scoring (``naslung serve`` / ``naslung score``)."""

    host: str = "127.0.0.1"
    """Address every TorchServe endpoint binds to (loopback only)."""
    inference_port: Port = 8080
    """TCP port of the inference API."""
    management_port: Port = 8081
    """TCP port of the management API."""
    metrics_port: Port = 8082
    """TCP port of the metrics API."""
    batch_size: Count = 8
    """TorchServe server-side batch: concurrent requests grouped into one handler call."""
    max_batch_delay_ms: Annotated[int, Field(ge=0)] = 50
    """How long TorchServe waits (ms) to fill a server-side batch."""
    workers: Count = 1
    """Python workers per model."""
    torch_threads: int = 2
    """torch intra-op threads in each worker."""
    max_payload_mb: Annotated[float, Field(gt=0)] = 16.0
    """Largest accepted request body (MiB); one float32 32^3 patch is 128 KiB."""
    request_patches: Count = 32
    """Patches per request sent by the CSV scorer."""
    concurrency: Count = 4
    """Concurrent requests in flight from the CSV scorer."""
    response_timeout_s: Count = 120
    """TorchServe response timeout (s)."""
    device: ServeDevice = "auto"
    """auto (GPU when TorchServe assigns one) | cpu."""
    wire: WireFormat = "uint8"
    """Patch encoding the CSV scorer sends: uint8 (32 KiB per 32^3 patch, [0, 1] quantised to 1/255) | float32."""
    precision: Precision = "auto"
    """Ensemble forward precision: auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 | fp16."""
    buckets: tuple[int, ...] = (1, 8, 32, 128, 512, 1024)
    """Fixed batch sizes the GPU forward is captured for (a batch is padded up to the next bucket)."""
    jvm_heap: str = "512m"
    """Java heap of the TorchServe frontend (``-Xmx`` value)."""
    score_cron: str = "*/15 * * * *"
    """Cron schedule of the ``score_folder`` Prefect deployment."""
    inbox: str = "inbox"
    """Folder the ``score_folder`` flow picks CSVs from."""
    outbox: str = "outbox"
    """Folder it writes results to."""
    scoring_experiment: str = "naslung-scoring"
    """MLflow experiment of the scoring runs (``naslung score`` / ``score_folder``; one run per CSV, linked
    to the model version that scored it; ``naslung score --no-log`` skips it)."""


@dataclass(frozen=True, config=_CONFIG)
class EnsembleParams:
    """Ensemble training and evaluation (``naslung ensemble train`` / ``naslung evaluate``)."""

    members: str | tuple[str, ...] = "search/selected.json"
    """Selection file(s) written by the search: one path or a list of paths (e.g. the POP selection
    ``search/selected.json`` and the DNAS selection ``search/dnas/selected.json``), their members
    concatenated; each a JSON list of member specs (dicts, ``{"kind": "dnas", ...}`` dicts or spec strings)."""
    specs: tuple[str | dict[str, Any], ...] = ()
    """Explicit member specs (spec strings or DNAS arch dicts ``{"kind": "dnas", "space": .., "ops": ..}``);
    when non-empty they replace ``members``."""
    cbam: bool = True
    """CBAM flag for bare-list specs (reference strings carry their own prefix)."""
    head: Head = "asoftmax"
    """Head for bare-list specs: linear | asoftmax."""
    epochs: Count = 10
    """Training epochs per member (the best validation epoch by ``train.select_by`` is kept; early stopping with
    ``train.patience``). 10, the search's candidate length: 9 members of the embedded default's selection
    (60-530 M multiply-adds per nodule) then train in ~13 min on 2 CPU cores, so ``make main`` fits 30 min."""
    folds: tuple[int, ...] = (1,)
    """Test folds of the evaluation; every spec is trained once per fold (test fold held out).
    Paper: (1, 2, 3, 4, 5)."""
    deploy_fold: int = 1
    """The registered ensemble consists of the members trained for this test fold."""
    calibration: Calibration = "temperature"
    """Calibration of the ensemble's mean probability, fitted on the members' validation predictions and
    stored with the registered ensemble: temperature (scaling of the logit) | isotonic | none."""
    refer_spread: Fraction = 0.2
    """Uncertainty threshold: a nodule is flagged ``refer`` when the standard deviation of its members'
    malignancy probabilities exceeds this."""
    specs_origin: SpecsOrigin = "unknown"
    """Where explicit ``specs`` came from: unknown | external (chosen without this data, e.g. the paper's
    models) | search (a search on this data that held out ``specs_search_fold``). Leak flags follow it."""
    specs_search_fold: int | None = None
    """With ``specs_origin: search``: the test fold that search held out."""
    specs_search_id: str | None = None
    """With ``specs_origin: search``: the search id (``summary.json``), for the record."""
    sizes: tuple[int, ...] = (1, 3, 5, 7, 9)
    """Ensemble-size curve: members per random subset."""
    size_repeats: Count = 20
    """Random subsets drawn per size."""
    out_dir: str = "artifacts/ensemble"
    """Member cache, deployable ensemble (``model/``) and ``training.json`` index."""
    experiment: str = "naslung-ensemble"
    """MLflow experiment of the evaluation / registration runs."""


@dataclass(frozen=True, config=_CONFIG)
class RegistryParams:
    """MLflow Model Registry: name, promotion gate, scheduled retraining."""

    name: str = "naslung-ensemble"
    """MLflow registered model name."""
    auc_tolerance: Annotated[float, Field(ge=0)] = 0.02
    """Gate: challenger validation AUC must be >= champion validation AUC - tolerance (same validation data)."""
    min_auc: Fraction = 0.75
    """Gate floor: validation AUC of the challenger's ensemble probability."""
    min_sensitivity: Fraction = 0.6
    """Gate floor: validation sensitivity of the ensemble vote (refuses an all-benign model)."""
    min_specificity: Fraction = 0.6
    """Gate floor: validation specificity of the ensemble vote (refuses an all-malignant model)."""
    baseline_margin: float = 0.0
    """Gate: challenger validation AUC must be >= each baseline's (diameter-only, voxel statistics) AUC on
    the same validation data + this margin, and its accuracy above the constant (majority-class) predictor."""
    require_validation: bool = True
    """Gate: ``artifacts/validation.json`` must report success."""
    regression_patches: str | None = "../shared/data/LIDC-patches-derived/lidc_0001-0003_patches_32cube_1mm.npz"
    """Stored-output regression check (:mod:`naslung.registry.regression`): ``.npz`` of real patches
    (``images``: int16 HU (n, 32, 32, 32), (z, y, x), 1 mm voxels), windowed with ``prepare.hu_window``;
    a path relative to the working folder (the repository root under DVC), read in place, never copied
    into the repository. All its patches are scored. A missing file is recorded as ``skipped`` and
    registration goes on; null: no check."""
    regression_tolerance: Annotated[float, Field(ge=0)] = 0.005
    """Regression check: largest allowed max |Δp| over the patches (probability units, calibrated and raw
    mean probability) between a registered version and the champion's stored scores."""
    regression_mean_tolerance: Annotated[float, Field(ge=0)] = 0.001
    """Regression check: largest allowed mean |Δp| over the patches (probability units)."""
    cron: str = "0 3 * * 0"
    """Cron schedule of the served ``retrain`` deployment."""
    rerun_search: bool = False
    """``retrain`` flow: re-run the search (``search.strategy``) before training the members."""
    deployment: str = "retrain"
    """Name of the served Prefect deployment of ``retrain``."""


@dataclass(frozen=True, config=_CONFIG)
class DnasParams:
    """Differentiable architecture search (``naslung dnas``, or ``naslung search`` with ``search.strategy: dnas``);
    see :mod:`naslung.search.dnas` and :mod:`naslung.search.dnas_run`."""

    epochs: Count = 8
    """Supernet search epochs (τ anneals over them)."""
    warmup_epochs: Annotated[int, Field(ge=0)] = 2
    """Leading epochs that train the supernet weights only (α fixed, uniform sampling)."""
    batch_size: Count = 16
    """Patches per supernet step."""
    w_lr: Annotated[float, Field(gt=0)] = 0.001
    """Adam learning rate of the supernet weights."""
    alpha_lr: Annotated[float, Field(gt=0)] = 0.003
    """Adam learning rate of the architecture logits α."""
    alpha_weight_decay: float = 0.001
    """Adam weight decay of α."""
    tau_max: Annotated[float, Field(gt=0)] = 5.0
    """Gumbel-softmax temperature at the first epoch (exponential annealing)."""
    tau_min: Annotated[float, Field(gt=0)] = 0.2
    """Temperature at the last epoch."""
    mixed: MixedOps = "all"
    """all: every op runs, first-order gradient for each op (proven on a toy task) | sampled: GDAS, cheaper."""
    alpha_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.3
    """Fraction of the training-fold rows (stratified) held out for the α updates; the protocol's validation
    fold scores the retrained derived models (never the test fold)."""
    stem: Count = 8
    """Stem width (channels; 3x3x3 stride-2 conv, 32^3 -> 16^3 voxels)."""
    layers: tuple[tuple[int, int], ...] = ((8, 1), (16, 2), (16, 1), (32, 2), (32, 1))
    """Searchable layers (width in channels, stride): 16^3 -> 8^3 -> 4^3 voxels."""
    head_channels: Count = 32
    """Channels of the 1x1x1 conv before global pooling."""
    kernels: tuple[int, ...] = (3, 5, 7)
    """Depthwise kernel sizes (voxels per side)."""
    expansions: tuple[int, ...] = (3, 4, 6)
    """MBConv expansion ratios."""
    skip: bool = True
    """Skip op in shape-preserving layers."""
    derive_k: Count = 2
    """Most probable architectures derived from α and retrained from scratch (the first is argmax α)."""
    retrain_epochs: Count = 10
    """Epochs of each derived model's retraining (early stopping: train.patience)."""
    out_dir: str = "search/dnas"
    """Output folder of ``naslung dnas`` (front.json, selected.json, pareto.png, summary.json, dnas.json with
    α and history). ``naslung search`` with ``search.strategy: dnas`` writes into ``search.out_dir`` instead."""
    experiment: str = "naslung-search"
    """MLflow experiment: the same as POP, so both strategies' runs sit side by side."""


@dataclass(frozen=True, config=_CONFIG)
class Params:
    """The whole of ``params.yaml``: the seed and one section per area."""

    seed: int = 20211
    """Seed of every split, sampler and training run."""
    paths: PathsParams = field(default_factory=PathsParams)
    """Input and output locations."""
    synth: SynthParams = field(default_factory=SynthParams)
    """Synthetic dataset."""
    prepare: PrepareParams = field(default_factory=PrepareParams)
    """Patch extraction."""
    validate: ValidateParams = field(default_factory=ValidateParams)
    """Data-validation bounds."""
    model: ModelParams = field(default_factory=ModelParams)
    """Default architecture and head."""
    train: TrainParams = field(default_factory=TrainParams)
    """Training runs."""
    latency: LatencyParams = field(default_factory=LatencyParams)
    """Latency measurement."""
    search: SearchParams = field(default_factory=SearchParams)
    """Architecture search."""
    serve: ServeParams = field(default_factory=ServeParams)
    """Serving and CSV scoring."""
    ensemble: EnsembleParams = field(default_factory=EnsembleParams)
    """Ensemble training and evaluation."""
    registry: RegistryParams = field(default_factory=RegistryParams)
    """Model registry and retraining."""
    dnas: DnasParams = field(default_factory=DnasParams)
    """Differentiable search."""

    @property
    def mlflow_uri(self) -> str:
        """Tracking URI: ``MLFLOW_TRACKING_URI`` wins over ``paths.mlflow_uri``."""
        return os.environ.get("MLFLOW_TRACKING_URI") or self.paths.mlflow_uri

    def section_hash(self, *sections: str) -> str:
        """Short stable hash of the named sections (all when none given), for lineage and caching."""
        data = to_dict(self)
        if sections:
            data = {s: data[s] for s in sections}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def replace(self, **changes: Any) -> Params:
        """Copy with whole sections or top-level values replaced (``p.replace(train=...)``), validated."""
        return dataclasses.replace(self, **changes)

    def with_overrides(self, overrides: Mapping[str, Any], *, drop_none: bool = False) -> Params:
        """Copy with dotted keys set (``{"search.budget": 3, "seed": 7}``), validated by the schema.

        ``drop_none``: leave keys whose value is None unchanged (for optional CLI flags: None = not given).
        """
        return apply_overrides(self, overrides, drop_none=drop_none)


# --- parsing, overrides, errors ---------------------------------------------------------------------------


def _schema_fields(cls: Any) -> dict[str, Any]:
    """``{name: FieldInfo}`` of a section (pydantic's resolved annotations and descriptions)."""
    return dict(cls.__pydantic_fields__)


def schema_keys() -> list[str]:
    """Every leaf key of the schema, dotted (``seed``, ``paths.raw``, ... ``dnas.experiment``)."""
    keys = []
    for name, info in _schema_fields(Params).items():
        if is_dataclass(info.annotation):
            keys += [f"{name}.{sub}" for sub in _schema_fields(info.annotation)]
        else:
            keys.append(name)
    return keys


def _unknown(key: str) -> ParamsError:
    sections = [k for k, info in _schema_fields(Params).items() if is_dataclass(info.annotation)]
    near = difflib.get_close_matches(key, schema_keys() + sections, n=1, cutoff=0.6)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    return ParamsError(f"params: unknown key '{key}'{hint}")


def field_annotation(key: str) -> Any:
    """The schema type of a dotted leaf key; :class:`ParamsError` naming the key when there is none."""
    cls: Any = Params
    parts = key.split(".")
    for i, part in enumerate(parts):
        info = _schema_fields(cls).get(part)
        if info is None:
            raise _unknown(key)
        tp = info.annotation
        if i < len(parts) - 1:
            if not is_dataclass(tp):
                raise _unknown(key)
            cls = tp
    if is_dataclass(tp):
        raise ParamsError(f"params: '{key}' is a section; set its keys ({key}.KEY=VALUE)")
    return tp


def _is_text(tp: Any) -> bool:
    """True for ``str`` and ``str | None`` fields (free text: spec strings, paths, cron expressions)."""
    return tp is str or (set(get_args(tp)) == {str, type(None)})


def parse_value(key: str, text: str) -> Any:
    """Value of ``--set key=text``: YAML (``3``, ``0.5``, ``true``, ``null``, ``[1, 2]``); for a text
    field the text itself when it is not a YAML string (``model.spec=[4, 4, [4], [8], [8]]``,
    ``serve.score_cron=*/15 * * * *``), so spec strings and cron expressions need no quoting."""
    tp = field_annotation(key)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        if not _is_text(tp):
            raise ParamsError(f"params: '{key}': value {text!r} is not valid YAML") from None
        return text
    if _is_text(tp) and not isinstance(value, str) and not (value is None and type(None) in get_args(tp)):
        return text
    return value


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """``["search.budget=3", "train.betas=[0.5, 0.9]"]`` -> ``{"search.budget": 3, "train.betas": [0.5, 0.9]}``.

    Keys are checked against the schema (an unknown key is a :class:`ParamsError` naming it); a later item
    wins over an earlier one with the same key.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParamsError(f"params: --set {item!r}: expected SECTION.KEY=VALUE")
        out[key] = parse_value(key, text)
    return out


def _merge(data: dict[str, Any], overrides: Mapping[str, Any], drop_none: bool = False) -> dict[str, Any]:
    """``data`` (a raw params mapping, not modified) with the dotted ``overrides`` set."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for key, value in overrides.items():
        if value is None and drop_none:
            continue
        field_annotation(key)  # unknown key -> error naming it
        head, _, leaf = key.rpartition(".")
        if not head:
            merged[leaf] = value
            continue
        section = merged.get(head)
        if section is None:
            section = merged[head] = {}
        elif not isinstance(section, dict):
            raise ParamsError(f"params: '{head}' must be a mapping, got {section!r}")
        section[leaf] = value
    return merged


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "top level"


def _one_line(exc: ValidationError, source: str) -> ParamsError:
    """One line naming each offending key and what is wrong with it."""
    parts = []
    for err in exc.errors():
        where = _where(tuple(err["loc"]))
        if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            unknown = _unknown(where)
            parts.append(str(unknown).removeprefix("params: "))
            continue
        parts.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return ParamsError(f"{source}: " + "; ".join(parts))


def _parse(data: Any, source: str) -> Params:
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return Params(**data)
    except ValidationError as exc:
        raise _one_line(exc, source) from None
    except TypeError as exc:  # a non-string key (``1: x``) never reaches pydantic's own checks
        raise ParamsError(f"{source}: {exc}") from None


def parse_params(data: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None) -> Params:
    """Build :class:`Params` from an already-parsed mapping (missing keys take the defaults), with dotted
    ``overrides`` applied on top."""
    raw = dict(data or {})
    return _parse(_merge(raw, overrides) if overrides else raw, "params")


def apply_overrides(params: Params, overrides: Mapping[str, Any], *, drop_none: bool = False) -> Params:
    """``params`` with the dotted keys of ``overrides`` set (see :meth:`Params.with_overrides`)."""
    given = {k: v for k, v in overrides.items() if v is not None or not drop_none}
    if not given:
        return params
    return _parse(_merge(to_dict(params), given), "params")


def load_params(
    path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | Iterable[str] | None = None
) -> Params:
    """Read ``params.yaml`` (``NASLUNG_PARAMS`` or ./params.yaml by default) into :class:`Params`.

    ``overrides``: dotted keys with values (``{"search.budget": 3}``) or ``--set`` items
    (``["search.budget=3"]``, parsed by :func:`parse_set`); applied in order on top of the file.
    """
    p = Path(path or os.environ.get("NASLUNG_PARAMS") or DEFAULT_PARAMS)
    if not p.exists():
        raise FileNotFoundError(f"params file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{p}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    if overrides:
        changes = dict(overrides) if isinstance(overrides, Mapping) else parse_set(overrides)
        if not isinstance(data, dict):
            raise ParamsError(f"{p}: expected a mapping of sections, got {type(data).__name__}")
        data = _merge(data, changes)
    return _parse(data, str(p))


def to_dict(obj: Any) -> Any:
    """Plain-data (JSON/YAML-safe) form of a params object: sections as dicts, tuples as lists."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj
