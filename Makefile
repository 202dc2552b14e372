# ssmd developer entry points. `make run` and `make test` set up .venv/ on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test check lint format typecheck clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/ssmd-connector --env local

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff format --check ssmd tests
	$(BIN)/ruff check ssmd tests

format: setup
	$(BIN)/ruff format ssmd tests
	$(BIN)/ruff check --fix ssmd tests

typecheck: setup
	$(BIN)/mypy ssmd

check: lint typecheck test

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
