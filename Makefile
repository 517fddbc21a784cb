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

.PHONY: install system-packages native run dev test lint format bench clean-var

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	# TGI's client for the protocol tests; its huggingface-hub<1.0 pin is not a real need
	# (it imports nothing that moved), and honouring it would break transformers.
	$(BIN)/pip install --quiet --no-deps "text-generation==0.7.0"
	touch $(STAMP)

# Debian packages the suite needs (README, "System packages"): chromium and chromium-driver for
# the console's browser tests, prometheus for promtool (it checks the shipped alert rules).
# Looked for on every `make install`/`make test` (instant) and installed when one is missing; no
# stamp, so a failed install is tried again next time. apt waits for a dpkg lock another process
# holds. Under CI=true a failed install fails the run (the tests would fail on the missing tool
# anyway; this says why first); elsewhere it warns and those tests skip, naming the tool.
SYSTEM_TOOLS := chromium chromedriver promtool
SYSTEM_PACKAGES := chromium chromium-driver prometheus
system-packages:
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	[ -z "$$missing" ] && exit 0; \
	echo "installing $(SYSTEM_PACKAGES) (missing:$$missing)"; \
	$(SUDO) apt-get -o DPkg::Lock::Timeout=300 update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
		--no-install-recommends $(SYSTEM_PACKAGES) >/dev/null && exit 0; \
	if [ "$${CI:-}" = true ]; then echo "error: could not install $(SYSTEM_PACKAGES) (CI=true)" >&2; exit 1; fi; \
	echo "warning: could not install $(SYSTEM_PACKAGES); the tests that need$$missing will skip (make tries again next time)" >&2

# The native attention kernel (inference/backends/native): compiled into the var dir for this
# host's vector ISA, again only when its source, torch or Python changed (a few seconds to see
# that it is there). A failed build warns and the workers use torch's batched GEMMs.
native: $(STAMP)
	$(BIN)/python -m config.native

install: $(STAMP) system-packages native

# Production-shaped: DEBUG off, collected static files (config/settings/local.py).
run: $(STAMP) native
	$(BIN)/python -m config.run

# The same, with Django's DEBUG on: debug pages in the admin and console, static files unhashed.
dev: $(STAMP) native
	SLUICE_DEBUG=1 $(BIN)/python -m config.run

test: $(STAMP) system-packages native
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) native
	$(BIN)/python -m bench

clean-var:
	rm -rf var
