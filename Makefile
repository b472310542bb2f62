# Two set-up commands: `make demo` and `make test`. Both bootstrap .venv on a machine that has
# only Python >= 3.11; torch is installed only when it is missing.
#   make demo: ssmkit with its runtime and plotting dependencies only (no test tools, no peers)
#   make test: adds the dev extra (pytest, ruff, numba, statsmodels, transformers, mambapy, ...)
# Choose the torch build with TORCH (the requirement) and TORCH_INDEX (a package index), e.g.
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu     # the CPU build, ~200 MB
#   make demo TORCH="torch>=2.2"                                     # any recent torch
PYTHON      ?= python3
VENV        ?= .venv
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
PY          := $(VENV)/bin/python
RUNTIME     := $(VENV)/.ssmkit-runtime
DEV         := $(VENV)/.ssmkit-dev

.PHONY: demo test test-fast lint bench clean venv

venv: $(RUNTIME)

$(RUNTIME): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet \
		$(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[plot]"
	touch $(RUNTIME)

$(DEV): $(RUNTIME)
	$(PY) -m pip install --quiet -e ".[dev,plot]"
	touch $(DEV)

demo: $(RUNTIME)
	$(VENV)/bin/ssmkit train

test: $(DEV) lint
	$(PY) -m pytest -n 2 -q

test-fast: $(DEV)
	$(PY) -m pytest -n 2 -q -m "not slow"

lint: $(DEV)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

bench: $(DEV)
	$(VENV)/bin/ssmkit bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
