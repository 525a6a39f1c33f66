# Single entry point. Every target creates or reuses .venv by itself (scripts/bootstrap.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup run test test-all lint format bench pyfiles cluster-start cluster-stop clean

setup:
	@bash scripts/bootstrap.sh

run: setup  ## the main job end to end on embedded defaults
	$(VENV)/bin/cvr demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint  ## lint + the default (fast) test suite
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: lint  ## everything, including slow and cluster tests
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(VENV)/bin/cvr bench

pyfiles: setup  ## zip of the cvr package for spark-submit --py-files
	bash scripts/package_pyfiles.sh

clean:
	rm -rf data runs .pytest_cache .ruff_cache
