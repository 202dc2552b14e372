# ssmd developer entry points. `make run` and `make test` set up .venv/ on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test check lint format typecheck soak bench bench-quick clean

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

# The chaos suite for longer, with a random seed (not in CI): SSMD_CHAOS_SECONDS, SSMD_CHAOS_SEED
# and SSMD_CHAOS_FAULT_RATE override. The figures are printed at the end.
soak: setup
	SSMD_CHAOS_SECONDS=$${SSMD_CHAOS_SECONDS:-600} SSMD_CHAOS_SEED=$${SSMD_CHAOS_SEED:-$$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')} \
		$(BIN)/python -m pytest -s -q tests/test_chaos.py

# Performance (issue 7): ssmd against a ceiling loop and a naive pipeline, each in its own
# process against its own `ssmd exchange`, into a real nats-server and into files. The table
# goes to stdout, the JSON to $(BENCH_JSON). bench-quick: short windows, one rate (< 1 min),
# into var/bench/quick.json so it does not replace the last full run's figures.
BENCH_JSON ?= var/bench/latest.json

bench: setup
	$(BIN)/python -m ssmd.bench --json $(BENCH_JSON)

bench-quick: setup
	$(BIN)/python -m ssmd.bench --quick --json var/bench/quick.json

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
