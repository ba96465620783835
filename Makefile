# Two entry points (README quick start): `make run` and `make test`.
# Both create .venv on first use and install the package with the constraints file, so a fresh
# machine needs nothing else.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: run test lint install bench-cpu bench-gpu crosscheck

$(BIN)/grokbasin: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(BIN)/grokbasin

run: install
	$(BIN)/grokbasin run $(ARGS)

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Benchmarks (not part of CI; results go to BENCHMARKS.md by hand). devinterp via the bench extra.
bench-cpu: install
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/bench_llc_cpu.py --ablation --scaling --micro

crosscheck: install
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/crosscheck_devinterp.py

bench-gpu: install
	$(BIN)/python benchmarks/bench_llc_gpu.py
