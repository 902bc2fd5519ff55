# SyncFlow — the two commands a new user needs are `make run` and `make test`.

GO            ?= go
BIN           := bin/syncflow
# make db creates the database through ADMIN_URL; empty: the database postgres
# of DATABASE_URL's server.
ADMIN_URL     ?=

# One database and one NATS for every target: DATABASE_URL / NATS_URL when you
# give them (make run DATABASE_URL=...), else SYNCFLOW_DATABASE_URL /
# SYNCFLOW_NATS_URL from your shell, else the local defaults. What you give make
# wins over an exported SYNCFLOW_* (make db and syncflow run must not part ways).
given = $(filter environment command%line environment%override,$(origin $(1)))
ifneq ($(call given,DATABASE_URL),)
else ifdef SYNCFLOW_DATABASE_URL
DATABASE_URL := $(SYNCFLOW_DATABASE_URL)
else
DATABASE_URL := postgres://postgres@127.0.0.1:5432/syncflow?sslmode=disable
endif
ifneq ($(call given,NATS_URL),)
else ifdef SYNCFLOW_NATS_URL
NATS_URL := $(SYNCFLOW_NATS_URL)
else
NATS_URL := nats://127.0.0.1:4222
endif

# The URLs reach the commands through the environment, never on a command line
# that make echoes (or that ps shows).
export DATABASE_URL ADMIN_URL
export SYNCFLOW_DATABASE_URL := $(DATABASE_URL)
export SYNCFLOW_NATS_URL     := $(NATS_URL)

.PHONY: all build run db demo test fuzz vet bench microbench bench-rss bench-verify soak partition-scale ledger-size tools clean

all: build

# The version and commit, for `syncflow version` (Go stamps them itself only where
# it can read the repository).
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
COMMIT  := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/syncflow

## db: create the database (if missing) and the demo ScheduleHub target tables.
db:
	$(GO) run ./deploy/demodb

## demo: a simulated ERP, a backfill, messy realtime traffic, and a check that the
## target matches (see deploy/demo.sh).
demo: build
	$(GO) build -o bin/apismith-sim ./cmd/apismith-sim
	deploy/demo.sh

## run: migrate, create the demo target, apply streams and start the consumer. With
## no NATS at $(NATS_URL), an embedded JetStream server stores under data/nats.
run: build db
	$(BIN) run --migrate --apply-streams --embedded-nats-dir data/nats

## test: the whole suite against the local PostgreSQL and embedded NATS servers,
## then the race detector over the packages whose goroutines share state.
test: vet
	$(GO) test -count=1 -timeout 20m ./...
	$(GO) test -count=1 -race -timeout 10m ./internal/consumer ./internal/catalog ./internal/apply ./internal/deadletter ./internal/storetest
	$(GO) test -count=1 -race -timeout 10m -run 'TestCatalogVersionReadWhileReloading|TestHotReloadOfMappings|TestStoredCatalog|TestDroppedColumn' ./internal/service

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); echo 'gofmt needed'; exit 1)
	$(GO) vet ./...

## fuzz: run each fuzz target for a while (FUZZTIME, default 30s).
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./internal/event -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/event -run '^$$' -fuzz '^FuzzDecoderAgreesWithTheStandardLibrary$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/normalize -run '^$$' -fuzz FuzzNormalize -fuzztime $(FUZZTIME)
	$(GO) test ./internal/pipeline -run '^$$' -fuzz FuzzAppendRowJSON -fuzztime $(FUZZTIME)

## bench: SyncFlow against the naive consumer and the bulk-upsert ceiling (the best
## of several shapes), in one run (medians of BENCH_RUNS); the figures are
## appended, dated, to the history in docs/benchmarks.md.
BENCH_N    ?= 100000
BENCH_RUNS ?= 3
bench: build
	$(GO) build -o bin/syncflow-bench ./cmd/syncflow-bench
	bin/syncflow-bench -n $(BENCH_N) -runs $(BENCH_RUNS) -binary $(BIN) -history docs/benchmarks.md -commit $(VERSION)

## microbench: the per-event CPU of decode, normalize, map, row encoding, prepare
## and decide (Go benchmarks with -benchmem; compare two runs with benchstat).
microbench:
	$(GO) test -run '^$$' -bench . -benchmem -count 6 ./internal/pipeline

## bench-rss: peak memory of SyncFlow draining a backlog of one million events.
bench-rss: build
	$(GO) build -o bin/syncflow-bench ./cmd/syncflow-bench
	bin/syncflow-bench -n 1000000 -runs 1 -skip single,naive,ceiling,latency,backfill,memory,verify -binary $(BIN)

## bench-verify: only the verify figure (syncflow verify over 1,000,000 items of the
## simulator, 1,000 drifted: keys compared per second and peak RSS).
bench-verify: build
	$(GO) build -o bin/syncflow-bench ./cmd/syncflow-bench
	bin/syncflow-bench -n 1000 -runs $(BENCH_RUNS) -skip syncflow,single,naive,ceiling,latency,backfill,memory -binary $(BIN)

## soak: two replicas at 2,000 events/s (children first) for DURATION while one
## is killed every minute, PostgreSQL drops their connections every 3 minutes and
## NATS restarts once; the target must equal the model. (make test runs 2 minutes.)
DURATION ?= 30m
soak:
	SYNCFLOW_SOAK=$(DURATION) $(GO) test -count=1 -run '^TestSoak$$' -timeout 24h -v ./cmd/syncflow

## partition-scale: a year of history (PARTITION_ROWS batches and as many dead
## letters), pruned by the month, against one DELETE of a month.
PARTITION_ROWS ?= 6000000
partition-scale:
	$(GO) build -o bin/syncflow-bench ./cmd/syncflow-bench
	bin/syncflow-bench -partitions $(PARTITION_ROWS)

## ledger-size: the bytes per ledger row and index entry, on a million rows in a
## scratch database.
ledger-size:
	psql "$(or $(ADMIN_URL),postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable)" -q -f docs/ledger-size.sql

clean:
	rm -rf bin data

## tools: the nats CLI the tests use to check the stream definitions.
tools:
	@command -v nats >/dev/null || test -x "$$($(GO) env GOPATH)/bin/nats" \
		|| $(GO) install github.com/nats-io/natscli/nats@v0.5.0
