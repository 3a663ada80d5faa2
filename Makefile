# The two commands the README opens with: `make run` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[test,dev,fast]'
	touch $@

venv: $(VENV)/.stamp

# Quick start: a catch-all upstream on 127.0.0.1:2526, Sluice on 127.0.0.1:2525,
# admin on 127.0.0.1:8025, spool in ./var/. Mail you send is printed by the sink.
run: $(VENV)/.stamp
	$(VENV)/bin/sluice demo

test: $(VENV)/.stamp
	bash .ci/install-system-deps
	$(PY) -m pytest

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check relay admin tests bench
	$(VENV)/bin/ruff format --check relay admin tests bench
	$(VENV)/bin/mypy

.PHONY: venv run test lint
