# Two commands do all the set-up on a fresh machine:
#   make demo   -> creates .venv/, installs moescale, runs the demo
#   make test   -> installs the test extras, runs the test suite except the slow
#                  end-to-end tests (< 3 min on 2 cores); `make test-all` runs everything,
#                  `make test-slow` only the slow ones (CI, .ci/run, runs test then test-slow)
# Both install every extra (`.[all]`, `.[test]`); torch is installed first, pinned, so pip
# never resolves an unpinned torch. A planner-only install is `pip install moescale`
# (core: spec, laws, fit, report text; no torch), see pyproject.toml for the extras.
# TORCH pins the CPU wheel available on the project's machines; elsewhere use
# e.g. `make demo TORCH="torch>=2.6"` to keep whatever torch you already have.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: install install-test demo demo-quick test test-slow test-all lint bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[all]"

install-test: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"

demo: install
	$(BIN)/moescale demo

demo-quick: install
	$(BIN)/moescale demo --quick

test: install-test
	$(BIN)/ruff check moescale tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow" tests

test-slow: install-test
	$(BIN)/python -m pytest -q -m slow tests

test-all: install-test
	$(BIN)/ruff check moescale tests benchmarks
	$(BIN)/python -m pytest -q tests

lint: install-test
	$(BIN)/ruff check moescale tests benchmarks

bench: install
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done
