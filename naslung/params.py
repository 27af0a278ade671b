"""Typed view of ``params.yaml``: parsed once, passed around as frozen dataclasses.

Every consumer (``dvc.yaml`` stages through the CLI, the Prefect flows, the tests) goes through
:func:`load_params`, so one file drives the whole platform. Unknown keys are an error, so a typo in
``params.yaml`` never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, cast, get_type_hints

import yaml

DEFAULT_PARAMS = Path("params.yaml")


@dataclass(frozen=True)
class PathsParams:
    raw: str = "data/luna16"
    annotations: str = "data/luna16/annotations_with_malignancy.csv"
    artifacts: str = "artifacts"
    mlflow_uri: str = "sqlite:///mlflow/mlflow.db"
    mlflow_artifacts: str = "mlflow/artifacts"


@dataclass(frozen=True)
class SynthParams:
    """Embedded synthetic dataset (``naslung data synth``); see :mod:`naslung.data.synth`."""

    n_scans: int = 30
    """Number of scans; ~8 MB and ~13 nodules each. Scale up for a bigger dataset."""
    nodules_per_scan: tuple[int, int] = (8, 18)
    """Inclusive range of nodules per scan."""
    seed: int = 20211
    workers: int = 2
    """Processes rendering scans in parallel (the output does not depend on it)."""


@dataclass(frozen=True)
class PrepareParams:
    patch_size: int = 32
    """Voxels per side of the cubic output patch."""
    spacing_mm: float = 1.0
    """Isotropic output spacing in mm."""
    hu_window: tuple[float, float] = (-1200.0, 600.0)
    """HU range mapped linearly onto [0, 1] (clipped)."""
    fill_hu: float = -1024.0
    """HU used for points outside the scan (air)."""
    margin_voxels: int = 4
    n_folds: int = 10
    fold_rule: str = "auto"


@dataclass(frozen=True)
class ValidateParams:
    diameter_mm: tuple[float, float] = (2.0, 40.0)
    class_fraction: tuple[float, float] = (0.15, 0.85)


@dataclass(frozen=True)
class ModelParams:
    spec: str = "[4, 4, [4, 4], [4, 8], [8, 8]]"
    cbam: bool = True
    head: str = "asoftmax"
    margin_m: int = 4
    lambda_base: float = 1000.0
    lambda_gamma: float = 0.12
    lambda_power: float = 1.0
    lambda_min: float = 5.0


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    pad: int = 2
    flips: bool = True
    permute_axes: bool = False
    """Random order of the three spatial axes per sample (with ``flips``: all 48 symmetries of the cube)."""
    lr_schedule: str = "constant"
    """constant (the paper) | cosine: lr decays from ``lr`` to 0 over the maximum epochs (per epoch)."""
    patience: int = 10
    select_by: str = "auc"
    """Validation criterion of model selection / early stopping: auc | f1 | loss."""
    test_folds: tuple[int, ...] = (1, 2, 3, 4, 5)
    num_threads: int = 2
    device: str = "auto"
    experiment: str = "naslung-train"
    """MLflow experiment of training runs (train, cv, features)."""


@dataclass(frozen=True)
class LatencyParams:
    batch_sizes: tuple[int, ...] = (1, 32)
    warmup: int = 5
    repeats: int = 30
    trials: int = 5
    """Repeated measurements for the repeatability figure (``naslung latency``)."""


SEARCH_STRATEGIES = ("pop", "dnas")


@dataclass(frozen=True)
class SearchParams:
    strategy: str = "pop"
    """pop: Partial Order Pruning over NASLung nets (:mod:`naslung.search.pop`); dnas: differentiable search
    over MBConv nets (``dnas`` section, :mod:`naslung.search.dnas_run`). Both write the same outputs into
    ``out_dir``."""
    epochs: int = 10
    budget: int = 12
    patience: int = 6
    batch_size: int = 1
    runner: str = "local"
    dask_address: str | None = None
    widths: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
    stem: tuple[int, int] = (4, 4)
    monotone: bool = True
    depth_rule: bool = True
    k_select: int = 9
    fold: int = 1
    min_blocks: int = 3
    """Fewest residual blocks in stages 3-5 together (paper: 3)."""
    max_blocks: int = 9
    """Most residual blocks in stages 3-5 together (paper: 9)."""
    latency_source: str = "measured"
    """measured: warmed wall-clock ms per nodule (naslung.latency); flops: multiply-adds per nodule in
    millions, a deterministic proxy (used by tests, never mixed with measured values)."""
    dask_workers: int = 2
    """Workers of the LocalCluster started when runner=dask and no dask_address is given."""
    out_dir: str = "search"
    """Folder for front.json, selected.json, pareto.png and summary.json."""
    experiment: str = "naslung-search"
    """MLflow experiment holding the search parent runs."""


@dataclass(frozen=True)
class ServeParams:
    """TorchServe serving and CSV batch scoring (``naslung serve`` / ``naslung score``)."""

    host: str = "127.0.0.1"
    """Address every TorchServe endpoint binds to (loopback only)."""
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    batch_size: int = 8
    """TorchServe server-side batch: concurrent requests grouped into one handler call."""
    max_batch_delay_ms: int = 50
    """How long TorchServe waits (ms) to fill a server-side batch."""
    workers: int = 1
    """Python workers per model."""
    torch_threads: int = 2
    """torch intra-op threads in each worker."""
    max_payload_mb: float = 16.0
    """Largest accepted request body (MiB); one float32 32^3 patch is 128 KiB."""
    request_patches: int = 32
    """Patches per request sent by the CSV scorer."""
    concurrency: int = 4
    """Concurrent requests in flight from the CSV scorer."""
    response_timeout_s: int = 120
    device: str = "auto"
    """auto (GPU when TorchServe assigns one) | cpu."""
    jvm_heap: str = "512m"
    score_cron: str = "*/15 * * * *"
    """Cron schedule of the ``score_folder`` Prefect deployment."""
    inbox: str = "inbox"
    outbox: str = "outbox"


@dataclass(frozen=True)
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
    head: str = "asoftmax"
    """Head for bare-list specs: linear | asoftmax."""
    epochs: int = 30
    """Training epochs per member (early stopping on validation F1 with ``train.patience``)."""
    folds: tuple[int, ...] = (1, 2, 3, 4, 5)
    """Test folds of the evaluation; every spec is trained once per fold (test fold held out)."""
    deploy_fold: int = 1
    """The registered ensemble consists of the members trained for this test fold."""
    sizes: tuple[int, ...] = (1, 3, 5, 7, 9)
    """Ensemble-size curve: members per random subset."""
    size_repeats: int = 20
    """Random subsets drawn per size."""
    out_dir: str = "artifacts/ensemble"
    """Member cache, deployable ensemble (``model/``) and ``training.json`` index."""
    experiment: str = "naslung-ensemble"
    """MLflow experiment of the evaluation / registration runs."""


@dataclass(frozen=True)
class RegistryParams:
    """MLflow Model Registry: name, promotion gate, scheduled retraining."""

    name: str = "naslung-ensemble"
    f1_tolerance: float = 0.02
    """Gate: challenger mean F1 must be >= champion mean F1 - tolerance (same folds)."""
    require_validation: bool = True
    """Gate: ``artifacts/validation.json`` must report success."""
    cron: str = "0 3 * * 0"
    """Cron schedule of the served ``retrain`` deployment."""
    rerun_search: bool = False
    """``retrain`` flow: re-run the search (``search.strategy``) before training the members."""
    deployment: str = "retrain"
    """Name of the served Prefect deployment of ``retrain``."""


@dataclass(frozen=True)
class DnasParams:
    """Differentiable architecture search (``naslung dnas``, or ``naslung search`` with ``search.strategy: dnas``);
    see :mod:`naslung.search.dnas` and :mod:`naslung.search.dnas_run`."""

    epochs: int = 8
    """Supernet search epochs (τ anneals over them)."""
    warmup_epochs: int = 2
    """Leading epochs that train the supernet weights only (α fixed, uniform sampling)."""
    batch_size: int = 16
    w_lr: float = 0.001
    """Adam learning rate of the supernet weights."""
    alpha_lr: float = 0.003
    """Adam learning rate of the architecture logits α."""
    alpha_weight_decay: float = 0.001
    tau_max: float = 5.0
    """Gumbel-softmax temperature at the first epoch (exponential annealing)."""
    tau_min: float = 0.2
    """Temperature at the last epoch."""
    mixed: str = "all"
    """all: every op runs, first-order gradient for each op (proven on a toy task) | sampled: GDAS, cheaper."""
    alpha_fraction: float = 0.3
    """Fraction of the training-fold rows (stratified) held out for the α updates; the protocol's validation
    fold scores the retrained derived models (never the test fold)."""
    stem: int = 8
    """Stem width (3x3x3 stride-2 conv, 32^3 -> 16^3)."""
    layers: tuple[tuple[int, int], ...] = ((8, 1), (16, 2), (16, 1), (32, 2), (32, 1))
    """Searchable layers (width, stride): 16^3 -> 8^3 -> 4^3."""
    head_channels: int = 32
    kernels: tuple[int, ...] = (3, 5, 7)
    expansions: tuple[int, ...] = (3, 4, 6)
    skip: bool = True
    derive_k: int = 2
    """Most probable architectures derived from α and retrained from scratch (the first is argmax α)."""
    retrain_epochs: int = 10
    """Epochs of each derived model's retraining (early stopping: train.patience)."""
    out_dir: str = "search/dnas"
    """Output folder of ``naslung dnas`` (front.json, selected.json, pareto.png, summary.json, dnas.json with
    α and history). ``naslung search`` with ``search.strategy: dnas`` writes into ``search.out_dir`` instead."""
    experiment: str = "naslung-search"
    """MLflow experiment: the same as POP, so both strategies' runs sit side by side."""


@dataclass(frozen=True)
class Params:
    seed: int = 20211
    paths: PathsParams = field(default_factory=PathsParams)
    synth: SynthParams = field(default_factory=SynthParams)
    prepare: PrepareParams = field(default_factory=PrepareParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    latency: LatencyParams = field(default_factory=LatencyParams)
    search: SearchParams = field(default_factory=SearchParams)
    serve: ServeParams = field(default_factory=ServeParams)
    ensemble: EnsembleParams = field(default_factory=EnsembleParams)
    registry: RegistryParams = field(default_factory=RegistryParams)
    dnas: DnasParams = field(default_factory=DnasParams)

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
        """Copy with whole sections or top-level values replaced (``p.replace(train=...)``)."""
        return dataclasses.replace(self, **changes)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"params: '{where}' must be a mapping, got {value!r}")
        return _build(cast(type, tp), value, where)  # tp is a type hint: a dataclass class
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        # e.g. ``str | tuple[str, ...]``: a YAML list becomes the tuple member, anything else stays as it is
        if isinstance(value, (list, tuple)):
            for arg in typing.get_args(tp):
                if typing.get_origin(arg) is tuple:
                    return _coerce(arg, value, where)
        return value
    origin = getattr(tp, "__origin__", None)
    if origin is tuple:
        args: tuple[Any, ...] = getattr(tp, "__args__", ())
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
            return tuple(_coerce(args[0], v, where) for v in value)
        if args and len(args) == len(value):  # tuple[X, Y]
            return tuple(_coerce(a, v, where) for a, v in zip(args, value))
        return tuple(value)
    return value


def _build(cls: type, data: dict[str, Any], where: str = "") -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"params: unknown key(s) {unknown} in section '{where or 'top level'}'")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}".strip(".")) for k, v in data.items()}
    return cls(**kwargs)


def parse_params(data: dict[str, Any] | None) -> Params:
    """Build :class:`Params` from an already-parsed mapping (missing keys take the defaults)."""
    return _build(Params, data or {})


def load_params(path: str | os.PathLike[str] | None = None) -> Params:
    """Read ``params.yaml`` (``NASLUNG_PARAMS`` or ./params.yaml by default) into :class:`Params`."""
    p = Path(path or os.environ.get("NASLUNG_PARAMS") or DEFAULT_PARAMS)
    if not p.exists():
        raise FileNotFoundError(f"params file not found: {p}")
    return parse_params(yaml.safe_load(p.read_text(encoding="utf-8")) or {})


def to_dict(obj: Any) -> Any:
    """Plain-data (JSON/YAML-safe) form of a params object."""
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj
