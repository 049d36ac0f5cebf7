# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.m3-installed

.PHONY: setup demo test test-fast lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0          # the CPU wheel first; a loose pin pulls CUDA
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup                                          ## the whole pipeline on the demo profile
	$(BIN)/m3 run --profile demo

test: setup                                          ## every test, end-to-end ones included
	$(BIN)/pytest -ra

test-fast: setup                                     ## skip the slow end-to-end tests
	$(BIN)/pytest -ra -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf .m3 .pytest_cache .ruff_cache
