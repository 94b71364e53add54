# meterray: `make demo` and `make test` are the two commands; both go through `make install`.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install services-up services-down migrate demo lint test bench-modbus clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/system-deps.sh serve_apps/cabinet/package-lock.json
	bash scripts/system-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# The web cabinet's browser libraries (uPlot), served by the cabinet from serve_apps/cabinet/node_modules
	npm ci --prefix serve_apps/cabinet --no-audit --no-fund --loglevel=error
	touch $@

services-up: install
	$(VENV)/bin/meterray services up

services-down:
	bash scripts/services.sh down

migrate: services-up
	$(VENV)/bin/meterray migrate

demo: migrate
	$(VENV)/bin/meterray demo --meters 50 --interval 5

# Layers (import-linter), lint (ruff) and types (mypy) first: they take seconds, the suite minutes.
lint: install
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint migrate
	$(PY) -m pytest -q

bench-modbus: migrate
	$(VENV)/bin/meterray bench modbus --meters 500 --interval 1 --seconds 60

clean: services-down
	rm -rf var $(VENV)
