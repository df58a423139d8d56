# Two entry points for a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make serve` needs the package and its runtime dependencies only, not the test toolchain.
RUNTIME_STAMP := $(VENV)/.installed-runtime
# Options for `make serve`, e.g. SERVE_ARGS="--config runlease.toml".
SERVE_ARGS ?=

.PHONY: serve test lint typecheck unit bench bench-quick bench-cli clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(RUNTIME_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUNTIME_STAMP)

serve: $(RUNTIME_STAMP)
	$(BIN)/runlease serve $(SERVE_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck unit

# Benchmarks: the optional `bench` extra (matplotlib, greenstalk, rich), beanstalkd when it
# can be installed, then the claim-contention run (results in bench/results/).
bench: $(STAMP)
	$(BIN)/python -c "import matplotlib, greenstalk, rich" 2>/dev/null || $(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.install_peers
	$(BIN)/python -m bench.contention

bench-quick: $(STAMP)
	$(BIN)/python -c "import matplotlib, greenstalk, rich" 2>/dev/null || $(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.install_peers
	$(BIN)/python -m bench.contention --quick

# How long one `runlease` command takes against `python -c pass` (no extra needed).
bench-cli: $(STAMP)
	$(BIN)/python -m bench.cli_startup

clean:
	rm -rf $(VENV)
