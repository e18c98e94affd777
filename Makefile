# The two commands a developer needs: `make run` and `make test`. Every target that needs the
# Python environment creates it first (a venv in .venv, installed from pyproject.toml).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test lint proto bench e2e-kind venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Run the sidecar locally against an embedded PostgreSQL it starts itself (REST and the web console
# /ui/ on :8080, gRPC on :9090; EVENTSTORE_SERVER_PORT / EVENTSTORE_SERVER_GRPC_PORT move them). Once
# ready it prints the addresses and the database DSN and schema for the library.
# auth.mode none is development only; the sidecar logs a loud warning and reports it on /readyz.
# Readable log lines with an access log (a line per request); deployments default to JSON.
run: $(STAMP)
	EVENTSTORE_AUTH_MODE=$${EVENTSTORE_AUTH_MODE:-none} EVENTSTORE_APP_LOG_FORMAT=$${EVENTSTORE_APP_LOG_FORMAT:-text} $(BIN)/k1s0-eventstore serve $(ARGS)

## Run the test suite (starts its own PostgreSQL and Kafka-protocol broker).
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## ruff, mypy, buf lint, buf breaking against main, and the generated-code staleness check.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	cd proto && $(abspath $(BIN))/buf lint
	@if git rev-parse --verify -q main >/dev/null && git cat-file -e main:proto/buf.yaml 2>/dev/null; then \
		echo "buf breaking against main"; \
		cd proto && $(abspath $(BIN))/buf breaking --against '../.git#branch=main,subdir=proto'; \
	else echo "buf breaking: no main branch with proto/ to compare against; skipped"; fi
	$(PY) proto/generate.py --check

## Regenerate the Python gRPC stubs from proto/.
proto: $(STAMP)
	$(PY) proto/generate.py

## Benchmarks against the raw PostgreSQL limit and a peer (BENCH_QUICK=1 for a short run): writes
# benchmarks/results.json and docs/benchmarks.md. Needs Debian's wrk (REST load) and Go with grpc-go
# (golang-go, golang-google-grpc-dev: the compiled gRPC load generator, built offline by the harness
# into benchmarks/.build): installed here when running as root with apt-get, otherwise it stops and
# says how. The fleet group's peers (Message DB, Emmett) come from the npm registry: the harness runs
# `npm ci` on benchmarks/node/package-lock.json into benchmarks/.build/node (Node.js and npm from apt
# where absent). BENCH_ARGS="--only grpc" runs some cases only; BENCH_ARGS="--only fleet --baseline-rev
# main~3" runs the fleet group with this tree's sidecar and main~3's side by side.
BENCH_DEBS := wrk golang-go golang-google-grpc-dev
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@if ! command -v wrk >/dev/null 2>&1 || ! command -v go >/dev/null 2>&1 || \
			[ ! -f /usr/share/gocode/src/google.golang.org/grpc/clientconn.go ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "make bench: installing Debian's $(BENCH_DEBS) (the REST and gRPC load generators)"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BENCH_DEBS) \
				>/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -qq --no-install-recommends $(BENCH_DEBS); }; \
		else \
			echo "make bench: the load generators' Debian packages are missing:" \
				"sudo apt-get install -y --no-install-recommends $(BENCH_DEBS)" >&2; \
			exit 2; \
		fi; \
	fi
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "make bench: installing Debian's nodejs and npm (the fleet group's npm peers)"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm \
				>/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -qq --no-install-recommends nodejs npm; }; \
		else \
			echo "make bench: Node.js and npm are missing: sudo apt-get install -y nodejs npm" >&2; \
			exit 2; \
		fi; \
	fi
	$(PY) -m benchmarks $(BENCH_ARGS)

## End-to-end on a kind cluster (needs kind and a Docker engine; says so and exits 0 where absent).
e2e-kind:
	@bash tests/e2e/kind.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
