# One place for setting up and running the project. `make demo` and `make test` are the README's
# two commands; both set up whatever is missing first (a virtualenv, Apache Kafka's jars).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck unit kafka-jars ops-tools clean

setup: $(STAMP) kafka-jars

# The service and, beside it, the development kit (devkit/: the emulator, the local broker, chaos, ...).
$(STAMP): pyproject.toml devkit/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]' -e ./devkit
	touch $(STAMP)

kafka-jars: $(STAMP)
	$(BIN)/python -c "from devkit.localkafka import ensure_jars, default_version; ensure_jars(default_version())"

# helm (built from the Go module proxy), promtool (Debian's prometheus), hadolint, kubernetes-validate
ops-tools: $(STAMP)
	bash scripts/ops-tools.sh

demo: setup
	$(BIN)/amili-registrar demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

test: setup ops-tools lint typecheck
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .kafka .mypy_cache .ruff_cache .pytest_cache
