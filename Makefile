# eventfn — every task a developer or CI needs. `make up` and `make test` are the two
# commands a fresh machine needs; both install what is missing first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
NPMSTAMP := node_modules/.installed
# Headless Chromium for the browser tests (tests/browser), from Debian's packages.
CHROMIUM := /usr/bin/chromium
SUDO    := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: up test lint gen bench install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# STPyV8 writes its ICU data file on first import; do it once, not in racing workers.
	$(BIN)/python -c "import STPyV8"
	touch $@

$(NPMSTAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(STAMP) $(NPMSTAMP)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

## Start the whole platform on embedded PostgreSQL + NATS (state in .eventfn/).
up: install
	$(BIN)/eventfn up

## Run linters and the whole test suite against real PostgreSQL and NATS (and Chromium).
test: install $(CHROMIUM)
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check services tests bench
	$(BIN)/ruff format --check services tests bench
	npx --no-install buf lint
	npx --no-install pyright

## Regenerate gen/ from protos/ (a test fails when gen/ is stale).
gen: install
	$(BIN)/python -m services.devtools.genprotos

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node_modules
