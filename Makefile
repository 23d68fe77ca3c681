# TalkTuah: `make run` sets everything up and runs the gateway with the simulator;
# `make test` sets up and runs lint, types and the whole test suite.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
SIM_PORT ?= 8001
SIM_MODEL ?= demo-model

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

.PHONY: venv run test lint typecheck pytest pytest-prod clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
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

run: venv
	$(PY) manage.py migrate --no-input -v 0
	$(PY) manage.py demo_setup
	$(PY) manage.py run_demo --host $(HOST) --port $(PORT) --sim-port $(SIM_PORT) --model $(SIM_MODEL)

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
	  DATABASE_URL='$(TEST_DATABASE_URL)' REDIS_URL='$(TEST_REDIS_URL)' $(VENV)/bin/pytest --ignore=tests/proxy/test_simulator.py; \
	elif [ -n "$$CI" ]; then \
	  echo "PostgreSQL ($(TEST_DATABASE_URL)) or Redis ($(TEST_REDIS_URL)) is not reachable" >&2; exit 1; \
	else \
	  echo "SKIPPED the PostgreSQL + Redis lane: $(TEST_DATABASE_URL) or $(TEST_REDIS_URL) not reachable"; \
	fi

test: lint typecheck pytest pytest-prod

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
