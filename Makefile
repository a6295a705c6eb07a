# mrhub — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
LOCK_ARGS   ?= # e.g. --upgrade-package aiohttp (make lock keeps every other pin)

.PHONY: help setup system-deps lock run shell check test suite unit heavy screenshots lint format types clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

DEBIAN_NEEDS := java:openjdk-17-jre-headless mvn:maven promtool:prometheus curl:curl \
                /usr/sbin/Orthanc:orthanc /usr/share/orthanc/plugins/libOrthancDicomWeb.so:orthanc-dicomweb \
                /usr/bin/chromium:chromium /usr/share/fonts/truetype/wqy/wqy-microhei.ttc:fonts-wqy-microhei

system-deps: ## from Debian when missing: Java 17 + Maven (Kafka), prometheus (promtool), Orthanc + DICOMweb, curl (the quickstart test), chromium and a Chinese font (the console's browser tests and screenshots)
	@missing=""; for need in $(DEBIAN_NEEDS); do \
	  probe=$${need%%:*}; pkg=$${need#*:}; \
	  if [ "$${probe#/}" != "$$probe" ]; then test -e "$$probe" || missing="$$missing $$pkg"; \
	  else command -v "$$probe" >/dev/null || missing="$$missing $$pkg"; fi; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing from Debian:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null || { \
	  echo "mrhub needs Python 3.11 (found: $$($(PYTHON) --version 2>&1))"; exit 1; }

LOCK         := requirements/lock.txt
RUNTIME_LOCK := requirements/runtime.txt
# the resolution both lock files are made for: the Python of the image, Linux wheels
UV_COMPILE   := $(BIN)/uv pip compile pyproject.toml --python-version 3.11 --python-platform linux \
                --generate-hashes --quiet --custom-compile-command 'make lock'

# exactly the versions (and hashes) of the lock (runtime + dev + tools: `mrhub bench`,
# `mrhub simulate`), then mrhub itself without resolving again
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	@touch $(STAMP)

setup: system-deps $(STAMP) ## venv, Python packages and the Kafka jars (idempotent)
	@$(BIN)/mrhub broker fetch

lock: $(STAMP) ## regenerate requirements/lock.txt (runtime + dev + tools) and runtime.txt (the image: runtime only) from pyproject.toml
	$(UV_COMPILE) --extra dev --extra tools $(LOCK_ARGS) -o $(LOCK)
	$(UV_COMPILE) -c $(LOCK) -o $(RUNTIME_LOCK)
	@echo "then: make setup, the compat tests (tests/unit/test_faust_compat.py, test_aiohttp_fix.py, test_lock.py) and decision 0006"

run: setup ## start Kafka (unless MRHUB_KAFKA__BOOTSTRAP_SERVERS is set) and every service
	$(BIN)/mrhub up

check: setup lint types ## what CI (.ci/run) runs: lint, types, then every test (starts and stops its own Kafka)
	$(BIN)/pytest $(PYTEST_ARGS)

test: check ## the same as check

shell: setup ## a subshell with the venv activated: `mrhub …` without .venv/bin/ (exit to leave)
	@echo "mrhub is on PATH in this shell ($(VENV) activated); exit (or Ctrl-D) leaves it"
	@bash --rcfile <(echo '[ -f ~/.bashrc ] && . ~/.bashrc; . "$(CURDIR)/$(BIN)/activate"') -i

suite: setup ## the tests only, without lint and types
	$(BIN)/pytest $(PYTEST_ARGS)

screenshots: setup ## the console's screenshots in docs/console (the browser tests, saving each page)
	MRHUB_SCREENSHOTS=docs/console $(BIN)/pytest tests/console $(PYTEST_ARGS)

heavy: setup ## the heavy cluster tests make check leaves out: rolling restarts, workers added and removed (three brokers; ~15 min)
	$(BIN)/pytest -m heavy tests/faults $(PYTEST_ARGS)

unit: setup ## unit tests only (no broker, no network)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: setup ## ruff lint and format check
	$(BIN)/ruff check services mrhub_tools tests
	$(BIN)/ruff format --check services mrhub_tools tests

format: setup ## apply ruff's formatting and fixes
	$(BIN)/ruff format services mrhub_tools tests
	$(BIN)/ruff check --fix services mrhub_tools tests

types: setup ## mypy (strict on services/ and mrhub_tools/)
	$(BIN)/mypy

clean: ## remove the venv and caches (not the Kafka jars in ~/.cache/mrhub)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
