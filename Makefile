# cpimgw: two commands do everything on a fresh Debian 12 machine (README "Quickstart").
#   make demo   installs what is missing and plays the demo
#   make test   installs what is missing and runs lint, types and the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bootstrap lint typecheck unit bench fuzz clean

bootstrap:
	./scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m gateway.demo

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: bootstrap
	$(VENV)/bin/mypy

unit: bootstrap
	$(PY) -m pytest -m "not e2e"

test: bootstrap lint typecheck
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest

bench: bootstrap
	$(PY) -m benchmarks

fuzz: bootstrap
	$(PY) -m tests.fuzz --seconds $${FUZZ_SECONDS:-300}

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist
