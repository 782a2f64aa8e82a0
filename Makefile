# eventfn — every task a developer or CI needs. `make up` and `make test` are the two
# commands a fresh machine needs; both install what is missing first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
NPMSTAMP := node_modules/.installed
# Headless Chromium for the browser tests (tests/browser), from Debian's packages.
CHROMIUM := /usr/bin/chromium
# Go, its protoc plugins and the Go packages generated Go clients build against, from Debian's
# packages (tests/client builds the Go client with them; see clients/README.md).
GO_PLUGIN := /usr/bin/protoc-gen-go-grpc
GO_DEBS := golang-go protoc-gen-go protoc-gen-go-grpc golang-google-protobuf-dev \
	golang-google-grpc-dev golang-google-genproto-dev golang-github-golang-protobuf-1-5-dev
SUDO    := $(if $(filter 0,$(shell id -u)),,sudo)
# `ip netns` for the multi-host test (tests/netns), from Debian's iproute2.
IPROUTE := /usr/sbin/ip

.PHONY: up test lint gen docs bench install clean release-protos

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

$(IPROUTE):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2

$(GO_PLUGIN):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(GO_DEBS)

## Start the whole platform on embedded PostgreSQL + NATS (state in .eventfn/).
up: install
	$(BIN)/eventfn up

## Run linters and the whole test suite against real PostgreSQL and NATS (and Chromium); the
## deployment files are checked too (tests/deploy, tests/test_compose.py, tests/netns).
## Two pytest processes, each with its own servers: the suite mostly waits on them (one
## process kept 2 cores ≈ 40 % busy), so two take ≈ 30 % less time.
TEST_PROCESSES ?= 2
test: install $(CHROMIUM) $(IPROUTE) $(GO_PLUGIN)
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest -q -n $(TEST_PROCESSES)

lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check services tests bench
	$(BIN)/ruff format --check services tests bench
	npx --no-install buf lint
	npx --no-install buf breaking --against protos-released
	npx --no-install pyright
	$(BIN)/hadolint Dockerfile

## Regenerate gen/ from protos/ (a test fails when gen/ is stale).
gen: install
	$(BIN)/python -m services.devtools.genprotos

## Regenerate README.md's table of every service's variables (a test fails when it is stale).
docs: install
	$(BIN)/python -m tests.deploy.settings_table --write

## Record the current protos as the released API that `buf breaking` checks against.
release-protos:
	rm -rf protos-released/protos protos-released/third_party protos-released/buf.yaml
	cp -r protos third_party buf.yaml protos-released/

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node_modules
