#!/usr/bin/env bash
# `make run`: the operator in the foreground against $KUBECONFIG, with its admission
# webhook on loopback (the local control plane calls https://127.0.0.1:9443), and the
# examples applied once the webhook records requesters (grants created before it
# would be refused: its failurePolicy is Fail).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
kubectl=$(cat .cluster/bin 2>/dev/null || true); kubectl=${kubectl:+$kubectl/}kubectl
port=${MANDATE_WEBHOOK_PORT:-9443}
"$kubectl" apply --server-side -f crds/
"$kubectl" wait --for condition=Established --timeout=60s -f crds/
# The operator's own namespace (CA Secret, CRL) must exist before it starts.
"$kubectl" apply --server-side -f examples/00-mandate-system.yaml
target/debug/mandate run --webhook-listen="127.0.0.1:$port" --webhook-url="https://127.0.0.1:$port" \
  --metrics-listen=127.0.0.1:8080 "$@" &
op=$!
# The webhook configurations fail closed: left behind, they would refuse every grant
# in the cluster until the operator is back. A local run removes them when it stops.
cleanup() {
  kill $op 2>/dev/null || true
  "$kubectl" delete --ignore-not-found mutatingwebhookconfiguration mandate >/dev/null || true
  "$kubectl" delete --ignore-not-found validatingwebhookconfiguration mandate >/dev/null || true
}
trap cleanup INT TERM EXIT
probe='{"apiVersion":"mandate.dev/v1alpha1","kind":"ToolGrant","metadata":{"name":"webhook-probe","namespace":"default"},
 "spec":{"identityRef":{"name":"probe"},"taskRef":{"apiVersion":"v1","kind":"Pod","name":"probe"},
 "tools":[{"name":"probe","actions":["read"]}],"purpose":"webhook readiness probe"}}'
for _ in $(seq 1 300); do
  kill -0 $op 2>/dev/null || { echo "the operator exited" >&2; exit 1; }
  if echo "$probe" | "$kubectl" create --dry-run=server -o jsonpath='{.spec.requester.username}' -f - 2>/dev/null | grep -q .; then
    break
  fi
  sleep 0.2
done
"$kubectl" apply --server-side -f examples/
echo "examples applied; the operator runs in the foreground (Ctrl-C stops it)"
wait $op
