# sovkeys: two commands do everything on a fresh Debian machine.
#   make run    installs what is missing, builds, starts `sovkeys standalone`
#   make test   installs what is missing, vets and runs the whole test suite
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO      ?= go
DATA    ?= $(CURDIR)/.data
LISTEN  ?= 127.0.0.1:8443
NATS    ?= 127.0.0.1:4222
METRICS ?= 127.0.0.1:9464
BIN     := $(CURDIR)/bin/sovkeys

.PHONY: run test build deps vet fuzz bench loadtest clean images compose-up compose-down compose-test

deps:
	@missing=""; \
	command -v softhsm2-util >/dev/null 2>&1 || missing="$$missing softhsm2"; \
	PATH="$$PATH:/usr/sbin:/sbin"; command -v cryptsetup >/dev/null 2>&1 || missing="$$missing cryptsetup"; \
	command -v sgdisk >/dev/null 2>&1 || missing="$$missing gdisk"; \
	command -v mkfs.fat >/dev/null 2>&1 || missing="$$missing dosfstools"; command -v mcopy >/dev/null 2>&1 || missing="$$missing mtools"; \
	for t in curl jq openssl; do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	[ -e /usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so ] || [ "$$(uname -m)" != x86_64 ] || missing="$$missing opencryptoki"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing (apt)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v $(GO) >/dev/null || { echo "Go 1.26+ is required (https://go.dev/dl)"; exit 1; }

build: deps
	$(GO) build -o $(BIN) ./cmd/sovkeys
	CGO_ENABLED=0 $(GO) build -o $(CURDIR)/bin/sk-agent ./cmd/sk-agent

run: build
	@echo "data dir: $(DATA)   (make run DATA=... LISTEN=... NATS=... METRICS=... to change)"
	$(BIN) standalone --data $(DATA) --listen $(LISTEN) --nats-listen $(NATS) --metrics-listen $(METRICS) --dev-unseal-file $(CURDIR)/.unseal-shares

.PHONY: versitygw
# S3 server for the tests (real versitygw on loopback); built once, then cached.
versitygw:
	@GO="$(GO)" ./scripts/install-versitygw.sh

.PHONY: jaeger
# Trace store for the end-to-end trace test (real Jaeger on loopback); built
# once (about 7 min on 2 cores), then cached.
jaeger:
	@GO="$(GO)" ./scripts/install-jaeger.sh

# Container images for deploy/compose, built without any registry
# (docs/observability.md, "Images"). BASE_IMAGE=debian:bookworm-slim to use
# an upstream base instead.
images: deps
	@GO="$(GO)" ./scripts/build-images.sh

# The local compose cluster (deploy/compose, docs/observability.md "Compose"):
# images when missing, credentials from `sovkeys cluster init`, 3 NATS nodes,
# 2 gateways (https://127.0.0.1:8443 and :8444), authn, audit, 2 keyworkers,
# unsealed. PROFILE=traces adds Jaeger (local image); PROFILE=metrics adds
# Prometheus with the alerting rules (local image of Debian's package; prints
# its URL); PROFILE=grafana adds Jaeger, Prometheus and Grafana (upstream).
# VOLUMES=1 on compose-down also drops the data.
compose-up: deps
	@GO="$(GO)" ./scripts/compose.sh up $(if $(PROFILE),--profile $(PROFILE))

compose-down:
	@./scripts/compose.sh down $(if $(VOLUMES),--volumes)

# The compose cluster on real containers, end to end, then torn down (also
# the last step of `make test`; skipped with a message without a Docker engine).
compose-test: deps
	@GO="$(GO)" ./scripts/compose-test.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

# The cluster fault suite runs after the rest, alone: it starts three
# nats-server processes and six services, and would otherwise share the two
# cores with the other packages' multi-process tests. The compose test comes
# last, alone too (containers; skipped when no Docker engine answers).
test: deps vm-deps versitygw jaeger nats-server vet
	$(GO) test -count=1 -timeout 15m $$($(GO) list ./... | grep -v -e /test/cluster -e /test/vm$$)
	$(GO) test -count=1 -timeout 20m ./test/cluster
	$(GO) test -count=1 -timeout 40m ./test/vm
	@GO="$(GO)" ./scripts/compose-test.sh

.PHONY: rules
# The alerting rules alone (also checked by `make test`, through
# shared/infra/metrics TestAlertRules*): parse, then the promtool unit tests.
rules: deps
	promtool check rules deploy/prometheus/rules/*.yml
	promtool test rules deploy/prometheus/tests/*.test.yml

.PHONY: nats-server cluster-test
# nats-server of the version pinned in go.mod, for the cluster tests; built once, then cached.
nats-server:
	@GO="$(GO)" ./scripts/install-nats-server.sh >/dev/null

# Fault injection on a real 3-node cluster with the services as separate
# processes (also part of `make test`); prints the figures of
# docs/BENCHMARKS.md "Cluster faults". REPORT=FILE writes the table there,
# CHART=FILE.png the latency of every request with the faults marked,
# RATES=100,300 the node faults at each of these loads (default 100 req/s),
# LOGDIR=DIR every process's log (services at info: the gateways' "slow
# answer" lines with each request's hop times).
cluster-test: deps nats-server
	SOVKEYS_CLUSTER_REPORT=$(REPORT) SOVKEYS_CLUSTER_CHART=$(CHART) SOVKEYS_CLUSTER_RATES=$(RATES) SOVKEYS_CLUSTER_LOGDIR=$(LOGDIR) $(GO) test -count=1 -v -timeout 25m -run Cluster ./test/cluster

# Short fuzzing of every parser (not part of `make test`).
fuzz: deps
	$(GO) test ./shared/api/xks -run '^$$' -fuzz FuzzParseEncrypt -fuzztime 30s
	$(GO) test ./shared/api/xks -run '^$$' -fuzz FuzzParseDecrypt -fuzztime 30s
	$(GO) test ./shared/api/xks -run '^$$' -fuzz FuzzParsePath -fuzztime 30s
	$(GO) test ./services/authn -run '^$$' -fuzz FuzzParseAuthorization -fuzztime 30s
	$(GO) test ./services/authn -run '^$$' -fuzz FuzzVerify -fuzztime 30s
	$(GO) test ./shared/api/vs -run '^$$' -fuzz FuzzParseRequests -fuzztime 30s
	$(GO) test ./shared/api/vs -run '^$$' -fuzz FuzzParseAWSIdentity -fuzztime 30s
	$(GO) test ./shared -run '^$$' -fuzz FuzzUnmarshalAuditBatch -fuzztime 30s

bench: deps
	$(GO) test ./services/keyworker -run '^$$' -bench . -benchtime 3s

clean:
	rm -rf bin

.PHONY: vm-deps vm-test
# What the VM boot test needs: qemu-system-x86 and busybox-static (apt), and
# Debian's kernel package fetched with `apt-get download` (not installed).
# Where that cannot be had, the VM test skips saying why.
vm-deps:
	@./scripts/vm-deps.sh || echo "vm-deps: could not fetch everything; test/vm will skip (docs/agent.md, \"VM test\")"

# Boots QEMU VMs (TCG) whose init plays an instance's boot: sk-agent unlocks
# and mounts its LUKS2 volume through a real sovkeys standalone
# (docs/agent.md, "VM test"). VM_LOGS=DIR keeps the consoles.
vm-test: deps vm-deps
	SOVKEYS_VM_LOGDIR=$(VM_LOGS) $(GO) test -count=1 -v -timeout 40m ./test/vm/...
