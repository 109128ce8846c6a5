# One-command workflows. `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
# Python 3.11+; 3.11 first because that is what the pinned torch wheel is built for here.
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3; do command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' && { command -v $$p; break; }; done)
VENV ?= .venv
PY := $(VENV)/bin/python
REQUIREMENTS ?= requirements/dev.txt
STAMP := $(VENV)/.installed-$(shell cat requirements/*.txt | cksum | cut -d' ' -f1)
WORKER_PROCESSES ?= auto
WORKER_THREADS ?= auto
# Comma-separated GPU queues for `make worker` (default: every queue in GPU_QUEUES).
QUEUES ?=
comma := ,

.PHONY: setup run serve worker test lint bench clean

$(STAMP): requirements/*.txt
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@set -o pipefail; $(PY) -m pip install -q -r $(REQUIREMENTS) 2>&1 | { grep -v 'neither a file nor a directory' || true; }
	@if [ "$(REQUIREMENTS)" != requirements/base.txt ]; then set -o pipefail; $(PY) -m pip install -q --no-deps -r requirements/worker-nodeps.txt 2>&1 | { grep -v 'neither a file nor a directory' || true; }; fi
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)
	@$(PY) manage.py migrate -v0
	@$(PY) manage.py platform_setup

run: setup
	@$(PY) manage.py serve

worker: setup
	@$(PY) manage.py runworker --processes $(WORKER_PROCESSES) --threads $(WORKER_THREADS) \
		$(if $(QUEUES),--queues $(subst $(comma), ,$(QUEUES)) default,)

test: setup
	@$(PY) -m pytest $(PYTEST_ARGS)

# Lint and formatting check (ruff, configured in pyproject.toml); changes nothing.
lint: $(STAMP)
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

bench: setup
	@$(PY) manage.py bench $(BENCH_ARGS)

clean:
	rm -rf var/test-*.sqlite3 .pytest_cache
