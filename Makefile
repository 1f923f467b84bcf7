# The two README commands: `make quickstart` and `make test`. Both create the virtualenv when missing.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: quickstart test lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,demo,export,dense]"
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/mambaout quickstart

lint: $(STAMP)
	$(BIN)/ruff check .

# the browser test drives Debian's chromium (playwright's executable_path): nothing is downloaded at test time
CHROMIUM = /usr/bin/chromium
$(CHROMIUM):
	apt-get update && apt-get install -y chromium

# two workers on the two cores (conftest gives each one thread): 6.5 min instead of ~20
test: lint $(CHROMIUM)
	$(BIN)/python -m pytest -q -n 2

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache

# on a machine with one NVIDIA GPU: scan accuracy, training steps, nccl DDP and throughput in one table (< 8 min)
.PHONY: gpu-check
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py
