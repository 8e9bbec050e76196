# The two commands of the README. Each sets up what it needs by itself.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup system-deps test demo lint clean-demo

setup: system-deps $(STAMP)

system-deps:
	@bash scripts/install-system-deps.sh

# Re-installs when pyproject.toml changes; system packages come first so mpi4py finds OpenMPI.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

clean-demo:
	rm -rf demo
