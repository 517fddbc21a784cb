# Sluice: `make run` starts everything, `make test` runs the whole suite.
# Both create .venv on first use: torch==2.13.0 first (a local CPU build here; a plain
# `torch` would pull gigabytes of CUDA wheels), then the project with its dev extras.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sluice-installed
TORCH ?= torch==2.13.0
# apt-get as root, or through sudo where there is one.
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

.PHONY: install run test lint format bench clean-var

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	# TGI's client for the protocol tests; its huggingface-hub<1.0 pin is not a real need
	# (it imports nothing that moved), and honouring it would break transformers.
	$(BIN)/pip install --quiet --no-deps "text-generation==0.7.0"
	# The console's browser test: Debian's chromium and its driver (nothing downloads a browser);
	# promtool (Debian's prometheus) checks and unit-tests the shipped alert rules.
	{ command -v chromedriver && command -v promtool; } >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
		chromium chromium-driver prometheus >/dev/null; } || \
		echo "warning: could not install chromium, chromium-driver, prometheus; their tests will be skipped"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m config.run

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m bench

clean-var:
	rm -rf var
