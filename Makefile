# productwatch — every command a developer or CI needs. The quick start is
# `make run` and `make test`; both install what they need by themselves.

SHELL        := /bin/bash
GO           ?= go
BIN          := $(CURDIR)/bin
STATICCHECK  := $(BIN)/staticcheck
STATICCHECK_VERSION := v0.8.2
NATS_CLI     := $(BIN)/nats
# The nats CLI the README's examples use; bridge/natscli_test.go pins the same.
NATS_CLI_VERSION := v0.5.0
FUZZTIME     ?= 30s
BENCHTIME    ?= 5000x
# Extra flags for the load generator (`make bench BENCH_FLAGS='-scenarios S1,S2 -profile S2'`).
BENCH_FLAGS  ?=
export GOFLAGS := -buildvcs=false

.PHONY: all build run migrate test test-short lint fmt fuzz bench bench-go clean tools nats-cli
.PHONY: cluster cluster-down cluster-scale cluster-status cluster-cookbook cluster-tools test-chaos

# make cluster-scale GATEWAYS=n
GATEWAYS     ?=
NATS_SERVER  := $(BIN)/nats-server
CLUSTER      := $(BIN)/cluster

all: lint test

## build: compile both programs into ./bin
build:
	$(GO) build -o $(BIN)/bridge ./bridge
	$(GO) build -o $(BIN)/gateway ./gateway
	$(GO) build -o $(BIN)/devrun ./deploy/devrun
	$(GO) build -o $(CLUSTER) ./deploy/cluster

## run: the whole system on this machine (PostgreSQL found or started, NATS embedded in the bridge);
## installs the pinned nats CLI into bin/ first when it is missing, for the banner's nats line
run: build
	@$(MAKE) --no-print-directory nats-cli || echo "make run: could not install the nats CLI (the banner says how); starting anyway"
	$(BIN)/devrun -bin $(BIN)

## migrate: apply the migrations to the database `make run` uses, then exit
migrate:
	$(GO) run ./deploy/devrun -migrate

## test: lint, then every test with the race detector against real PostgreSQL and NATS.
## It runs `make tools` first, which may run apt-get for chromium and nghttp2-client when they are missing.
## Each test process starts a private PostgreSQL cluster of its own (initdb/pg_ctl), unless
## TEST_PG is set to empty (`make test TEST_PG=`: DATABASE_URL, else 127.0.0.1:5432); see the README's Tests.
TEST_PG      ?= private
test:
	@echo "make test: lint, then make tools (staticcheck and the nats CLI into bin/, and, when missing,"
	@echo "  Debian's chromium and nghttp2-client through apt-get), then go test -race over every package,"
	@echo "  each package on a private PostgreSQL cluster (PRODUCTWATCH_TEST_PG=$(TEST_PG))."
	@$(MAKE) --no-print-directory lint tools
	PRODUCTWATCH_TEST_PG=$(TEST_PG) $(GO) test -race -count=1 -timeout 12m ./...

## test-short: the tests without lint, for a quick loop
test-short:
	$(GO) test -count=1 ./...

$(STATICCHECK):
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

## tools: install what the targets and tests use, into bin/ and from Debian:
##   staticcheck (make lint), the nats CLI (bridge/natscli_test.go, the README's examples;
##   reinstalled when bin/nats is another version), and, when missing, Debian's chromium
##   (the browser tests) and nghttp2-client (the server push test) with apt-get, which
##   waits up to 10 minutes for another apt/dpkg to release its lock
tools: $(STATICCHECK) nats-cli
	@missing=""; command -v nghttp >/dev/null || missing="$$missing nghttp2-client"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "make tools: installing$$missing with apt-get (chromium: the browser tests; nghttp2-client: the server push test)"; \
		apt-get -o DPkg::Lock::Timeout=600 update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $$missing; \
	fi

## nats-cli: the pinned nats CLI in bin/ (installed when missing or another version)
nats-cli:
	@if [ "$$($(NATS_CLI) --version 2>/dev/null)" != "$(NATS_CLI_VERSION)" ]; then \
		echo "installing the nats CLI $(NATS_CLI_VERSION) into bin/: GOBIN=$(BIN) $(GO) install github.com/nats-io/natscli/nats@$(NATS_CLI_VERSION)"; \
		GOBIN=$(BIN) $(GO) install github.com/nats-io/natscli/nats@$(NATS_CLI_VERSION); \
	fi

## lint: gofmt, go vet and staticcheck must all be silent
lint: $(STATICCHECK)
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

## fuzz: run every fuzz target for FUZZTIME each (new interesting inputs land in testdata/fuzz)
fuzz:
	$(GO) test ./pkg/product -run '^$$' -fuzz '^FuzzParsePrice$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/product -run '^$$' -fuzz '^FuzzDecodeInput$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/protocol -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/pgserver -run '^$$' -fuzz '^FuzzWithDatabase$$' -fuzztime $(FUZZTIME)
	$(GO) test ./deploy/loadgen -run '^$$' -fuzz '^FuzzParseEvent$$' -fuzztime $(FUZZTIME)

## bench: the load generator's scenarios S1-S6 against a fresh system each (deploy/loadgen);
## writes bench-results/<commit>.json, .md and .png; see BENCHMARKS.md
bench: build
	$(GO) build -o $(BIN)/loadgen ./deploy/loadgen
	$(BIN)/loadgen -build=false -bin $(BIN) $(BENCH_FLAGS)

## bench-go: the Go micro-benchmarks (BenchmarkPgbenchUpdate runs pgbench beside the PUT path)
bench-go: tools
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./...

## cluster-tools: nats-server at go.mod's version into bin/, and Debian's haproxy when missing
cluster-tools:
	@want=$$($(GO) list -m -f '{{.Version}}' github.com/nats-io/nats-server/v2); \
	if [ "$$($(NATS_SERVER) --version 2>/dev/null)" != "nats-server: $$want" ]; then \
		echo "GOBIN=$(BIN) $(GO) install github.com/nats-io/nats-server/v2@$$want"; \
		GOBIN=$(BIN) $(GO) install github.com/nats-io/nats-server/v2@$$want; \
	fi
	@if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then \
		echo "apt-get install haproxy"; \
		apt-get -o DPkg::Lock::Timeout=600 update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq haproxy; \
	fi

## cluster: the multi-replica topology as processes on this machine: 3 NATS nodes, 2 bridges,
## 3 gateways behind haproxy on https://127.0.0.1:9443 (deploy/cluster/README.md)
cluster: build cluster-tools
	$(CLUSTER) up

## cluster-down: stop everything make cluster started (by PID, from any shell)
cluster-down:
	$(GO) build -o $(CLUSTER) ./deploy/cluster
	$(CLUSTER) down

## cluster-scale: GATEWAYS=n gateways behind haproxy (drains the ones it stops)
cluster-scale:
	$(GO) build -o $(CLUSTER) ./deploy/cluster
	$(CLUSTER) scale $(if $(GATEWAYS),-gateways $(GATEWAYS))

cluster-status:
	$(GO) build -o $(CLUSTER) ./deploy/cluster
	$(CLUSTER) status

## cluster-cookbook: run the nats CLI cookbook's commands against the running make cluster
cluster-cookbook: tools
	$(GO) build -o $(CLUSTER) ./deploy/cluster
	$(CLUSTER) cookbook

## test-chaos: kill and restart parts of a real cluster under load; each test starts its own
test-chaos: build cluster-tools tools
	$(GO) test -tags chaos -count=1 -timeout 25m -v -run 'Chaos|Cookbook' ./deploy/cluster/

clean:
	rm -rf $(BIN)
