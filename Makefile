# Mandate: the two commands a newcomer needs are `make run` and `make test`.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
CLUSTER := e2e/controlplane/cluster.sh
# Our own control plane's kubeconfig, unless the caller points at another cluster.
LOCAL_KUBECONFIG := $(CURDIR)/.cluster/kubeconfig

.PHONY: all build test lint fmt unit generate check-generated e2e bench run cluster-up cluster-down controlplane clean

all: build

build:
	$(CARGO) build --locked

## make test: format, lint, unit tests, drift check of generated files, then the
## end-to-end tests on the local control plane (started if needed, and stopped again
## if this run started it).
test: lint unit check-generated e2e

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

unit:
	$(CARGO) test --locked --lib --bins

## Regenerate crds/ and manifests/ from the code.
generate:
	$(CARGO) run --locked --quiet -- crds > crds/mandate.dev.yaml

## Fail when committed generated files differ from what the code generates.
check-generated:
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(CARGO) run --locked --quiet -- crds > $$tmp/crds.yaml; \
	if ! diff -u crds/mandate.dev.yaml $$tmp/crds.yaml; then \
	  echo "crds/ is out of date: run 'make generate' and commit the result" >&2; exit 1; fi

e2e:
	e2e/with-cluster.sh $(CARGO) test --locked --test e2e -- --test-threads=$${E2E_THREADS:-4}

## make bench: policy decision latency (no cluster), then issuance and revocation on
## the local control plane; results in target/bench/ (copied into docs/benchmarks.md
## by hand, with the machine noted).
bench:
	$(CARGO) bench --locked --bench policy
	e2e/with-cluster.sh $(CARGO) bench --locked --bench issuance

controlplane:
	e2e/controlplane/build.sh >/dev/null

cluster-up:
	$(CLUSTER) up

cluster-down:
	$(CLUSTER) down

## make run: control plane up (unless KUBECONFIG points elsewhere), CRDs installed,
## examples applied, and the operator in the foreground.
run:
	@if [ -z "$${KUBECONFIG:-}" ]; then $(CLUSTER) up; fi; \
	export KUBECONFIG=$${KUBECONFIG:-$(LOCAL_KUBECONFIG)}; \
	echo "using KUBECONFIG=$$KUBECONFIG"; \
	$(CARGO) build --locked; \
	exec hack/run.sh

clean:
	$(CARGO) clean
