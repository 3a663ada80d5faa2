# Conveniences for developers; the README's two commands don't need make.
VENV := .venv

$(VENV)/.stamp: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -U pip
	$(VENV)/bin/python -m pip install -q -e '.[test,dev,fast]'
	touch $@

venv: $(VENV)/.stamp

run: $(VENV)/.stamp
	$(VENV)/bin/sluice demo

test:
	bash .ci/run

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check relay admin tests bench
	$(VENV)/bin/ruff format --check relay admin tests bench
	$(VENV)/bin/mypy

.PHONY: venv run test lint
