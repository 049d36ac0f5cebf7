# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.m3-installed

.PHONY: setup browser demo test test-fast lint format lock clean serve pools ui

$(STAMP): pyproject.toml constraints.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile torch==2.13.0          # the CPU wheel first; a loose pin pulls CUDA
	$(BIN)/pip install --quiet cython "setuptools>=75" -c constraints.txt  # to rebuild the .pyx scanners in place (`make setup`)
	$(BIN)/pip install --quiet --no-compile -e ".[test]" -c constraints.txt   # known-good versions: no backtracking
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true  # as pip would, on every core (a few files are for newer Pythons)
	touch $(STAMP)

setup: $(STAMP)                                      ## the venv, and the compiled scanners rebuilt when a .pyx changed
	@$(BIN)/python setup.py -q build_ext --inplace > /dev/null

demo: setup                                          ## the whole pipeline on the demo data, from multilingual-e5-small
	$(BIN)/m3 run --profile me5-cpu

browser:                                             ## Debian chromium for the browser tests (Playwright never downloads one)
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    echo "installing Debian chromium (apt-get) for the browser tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null; \
	  else \
	    echo "m3: the browser tests need /usr/bin/chromium: run 'sudo apt-get install -y chromium', then make test again" >&2; \
	    exit 2; \
	  fi; \
	fi

test: setup browser                                  ## every test, end-to-end ones included
	$(BIN)/pytest -ra

test-fast: setup browser                                     ## skip the slow end-to-end tests
	$(BIN)/pytest -ra -m "not slow"

serve: setup                                         ## local Prefect server (SQLite) + process worker, deployments applied
	BIN=$(BIN) bash deploy/serve.sh

pools: setup                                         ## work pools on $$PREFECT_API_URL: cpu (process), gpu (Kubernetes), gpu-docker
	$(BIN)/prefect --no-prompt work-pool create cpu --type process --overwrite
	$(BIN)/prefect --no-prompt work-pool create gpu --type kubernetes --base-job-template deploy/gpu-kubernetes.json --overwrite
	$(BIN)/prefect --no-prompt work-pool create gpu-docker --type docker --base-job-template deploy/gpu-docker.json --overwrite

ui: setup                                            ## the lineage page over the store (M3_STORE or ./.m3/store)
	$(BIN)/m3 ui

lint: setup                                          ## ruff, and mypy on the library code (m3/, model/, tasks/)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy m3 model tasks

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lock: setup                                          ## refresh constraints.txt from the working venv
	$(BIN)/pip freeze --exclude-editable | grep -v '^-e' | grep -vi '^m3-pipeline' > constraints.txt

clean:
	rm -rf .m3 .pytest_cache .ruff_cache
