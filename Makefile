# Set-up and entry points. `make demo` and `make test` each install everything they need
# on a fresh Debian machine (virtualenv in .venv, the local CPU build of torch 2.13.0,
# the Debian Fashion-MNIST package when the data is missing).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PIN := torch==2.13.0
FMNIST_DIR := /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.installed

.PHONY: setup data demo test lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST is missing: install the Debian package dataset-fashion-mnist" \
	       "(sudo apt-get install dataset-fashion-mnist) or pass --data-dir to a folder of IDX files."; \
	  exit 2; \
	fi

demo: setup data
	$(VENV)/bin/spikebridge demo --out demo_runs

test: setup
	$(PY) -m pytest -q -n 2 -m "not slow and not gpu and not peer"
	$(VENV)/bin/ruff check spikebridge tests benchmarks
	$(VENV)/bin/ruff format --check spikebridge tests benchmarks

lint:
	$(VENV)/bin/ruff check spikebridge tests benchmarks
	$(VENV)/bin/ruff format --check spikebridge tests benchmarks

format:
	$(VENV)/bin/ruff format spikebridge tests benchmarks
	$(VENV)/bin/ruff check --fix spikebridge tests benchmarks

bench: setup
	$(PY) benchmarks/step_time.py

clean:
	rm -rf $(VENV) demo_runs .pytest_cache .ruff_cache
