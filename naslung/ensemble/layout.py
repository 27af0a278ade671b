"""The on-disk layouts of NASLung models: the one place their file names and formats live.

Three layouts, each written and read only through this module:

1. **member folder** (the training cache, :mod:`naslung.ensemble.training`):
   ``<ensemble.out_dir>/members/<spec_id>-fold<k>-<key>/`` with ``weights.pt`` (CPU state dict) and
   ``member.json`` (record, fold split, validation- and test-fold predictions; written last, so its
   presence marks the member as finished).
2. **ensemble directory** (:meth:`naslung.ensemble.model.Ensemble.save` / ``load``): ``members.json``
   (``margin_m`` and per member its name, spec — a DNAS spec carries ``"kind": "dnas"`` —, spec id,
   reference string and weights file), one ``member_<i>.pt`` CPU state dict per member and
   ``calibration.json`` (the :class:`naslung.calibration.Calibrator` of the ensemble's mean probability and
   the ``refer`` threshold; an older directory without it reads as uncalibrated). The same
   directory is the deployable ``<ensemble.out_dir>/model``, the registered pyfunc model's artifact
   :data:`ENSEMBLE_DIR` (``artifacts/ensemble/`` of a downloaded MLflow model) and ``ensemble/`` inside
   the TorchServe ``.mar``.
3. **serving package** (the ``.mar``'s extra files, :func:`stage_package` / :func:`read_package`): the
   ensemble directory as ``ensemble/`` plus ``model_info.json`` (registered name, version, alias, run id
   and the model card's facts); the archiver adds the handler and ``model-config.yaml``.

Every state dict is saved from CPU tensors and read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from naslung.artifact_paths import ENSEMBLE_INDEX_FILE, ENSEMBLE_MODEL_DIR
from naslung.models.factory import AnySpec, spec_from_dict

INDEX_FILE = ENSEMBLE_INDEX_FILE
"""``<ensemble.out_dir>/training.json``: index of the trained members and the deployable ensemble."""
MODEL_DIR = ENSEMBLE_MODEL_DIR
"""``<ensemble.out_dir>/model``: the deployable ensemble directory (members of ``ensemble.deploy_fold``)."""
MEMBERS_SUBDIR = "members"
MEMBER_FILE = "member.json"
WEIGHTS_FILE = "weights.pt"
MEMBERS_FILE = "members.json"
CALIBRATION_FILE = "calibration.json"
"""Calibrator of an ensemble directory (:meth:`naslung.calibration.Calibrator.to_dict`)."""
ENSEMBLE_DIR = "ensemble"
"""Name of the ensemble directory inside a registered model (its pyfunc artifact) and inside a .mar."""
MODEL_INFO_FILE = "model_info.json"
MODEL_CONFIG_FILE = "model-config.yaml"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder (never a half-written file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def save_state(model: nn.Module, path: Path) -> None:
    """Save ``model``'s state dict as CPU tensors."""
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict written by :func:`save_state` (``weights_only=True``, onto the CPU)."""
    state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    return state


# --- 1. member folder --------------------------------------------------------------------------------


def member_dir(out_dir: str | Path, spec_id: str, fold: int, key: str) -> Path:
    """``<out_dir>/members/<spec_id>-fold<fold>-<key>``: the cache folder of one trained member."""
    return Path(out_dir) / MEMBERS_SUBDIR / f"{spec_id}-fold{fold}-{key}"


def write_member(mdir: Path, model: nn.Module, payload: Mapping[str, Any]) -> None:
    """Write ``weights.pt`` and then ``member.json`` (the marker of a finished member) into ``mdir``."""
    mdir.mkdir(parents=True, exist_ok=True)
    save_state(model, mdir / WEIGHTS_FILE)
    write_atomic(mdir / MEMBER_FILE, json.dumps(payload, indent=1, default=float))


def read_member(mdir: Path) -> dict[str, Any] | None:
    """The ``member.json`` payload of a finished member folder; None when it is absent or incomplete."""
    meta, weights = mdir / MEMBER_FILE, mdir / WEIGHTS_FILE
    if not (meta.is_file() and weights.is_file()):
        return None
    payload: dict[str, Any] = json.loads(meta.read_text(encoding="utf-8"))
    return payload


# --- 2. ensemble directory ---------------------------------------------------------------------------


def is_ensemble_dir(path: str | Path) -> bool:
    return (Path(path) / MEMBERS_FILE).is_file()


def save_ensemble_dir(
    directory: str | Path,
    models: Sequence[nn.Module],
    specs: Sequence[AnySpec],
    names: Sequence[str],
    margin_m: int,
) -> Path:
    """Write ``members.json`` and ``member_<i>.pt`` (CPU state dicts) into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {
        "margin_m": int(margin_m),
        "members": [
            {"name": n, "spec": s.to_dict(), "spec_id": s.spec_id, "ref": s.ref_string(), "weights": f"member_{i}.pt"}
            for i, (n, s) in enumerate(zip(names, specs))
        ],
    }
    for i, m in enumerate(models):
        save_state(m, d / f"member_{i}.pt")
    (d / MEMBERS_FILE).write_text(encoding="utf-8", data=json.dumps(meta, indent=1) + "\n")
    return d


def load_ensemble_dir(directory: str | Path) -> tuple[int, list[tuple[str, AnySpec, dict[str, torch.Tensor]]]]:
    """``(margin_m, [(name, spec, state dict), ...])`` of an ensemble directory, in member order."""
    d = Path(directory)
    meta_path = d / MEMBERS_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"Ensemble.load: {meta_path} not found (not an ensemble directory)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    members = []
    for i, entry in enumerate(meta.get("members", [])):
        try:
            spec = spec_from_dict(entry["spec"])
            weights = d / entry.get("weights", f"member_{i}.pt")
            name = str(entry["name"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"Ensemble.load: {meta_path} member {i} is malformed: {exc}") from exc
        members.append((name, spec, load_state(weights)))
    return int(meta.get("margin_m", 4)), members


def write_calibration(directory: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``calibration.json`` (the calibrator as a dict) into an ensemble directory."""
    path = Path(directory) / CALIBRATION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(dict(payload), indent=1, default=float) + "\n")
    return path


def read_calibration(directory: str | Path) -> dict[str, Any] | None:
    """The ``calibration.json`` payload of an ensemble directory, or None when it has none."""
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return None
    payload: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return payload


# --- 3. serving package ------------------------------------------------------------------------------


def stage_package(dest: Path, ensemble_dir: str | Path, info: Mapping[str, Any]) -> Path:
    """Lay out the serving package in ``dest``: ``ensemble/`` (a copy of ``ensemble_dir``) and
    ``model_info.json``; returns ``dest``."""
    if not is_ensemble_dir(ensemble_dir):
        raise FileNotFoundError(f"{ensemble_dir}: not an ensemble directory (no {MEMBERS_FILE})")
    shutil.copytree(ensemble_dir, dest / ENSEMBLE_DIR)
    write_model_info(dest / MODEL_INFO_FILE, info)
    return dest


def write_model_info(path: Path, info: Mapping[str, Any]) -> None:
    path.write_text(encoding="utf-8", data=json.dumps(info, indent=2) + "\n")


def read_package(model_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """(ensemble directory, model info) of an unpacked serving package (the .mar's model dir)."""
    d = Path(model_dir)
    info: dict[str, Any] = json.loads((d / MODEL_INFO_FILE).read_text(encoding="utf-8"))
    return d / ENSEMBLE_DIR, info
