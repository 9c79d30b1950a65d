#!/usr/bin/env bash
# Regenerates kube/go.mod for one Kubernetes version: k8s.io/kubernetes publishes its
# go.mod with every staging module required at v0.0.0 and replaced by a local path, and
# replace directives of a dependency are ignored, so the wrapper must map each staging
# module to its published v0.<minor>.<patch>. The list comes from upstream's own go.mod,
# so new staging modules (1.36 added cri-streaming and streaming) are picked up.
# Usage: e2e/controlplane/gen-kube-mod.sh 1.36.3
set -euo pipefail
KV=${1:?usage: gen-kube-mod.sh <kubernetes version, e.g. 1.36.3>}
KV=${KV#v}
SV=v0.${KV#1.}
cd "$(dirname "$0")/kube"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
upstream=$(cd "$tmp" && go mod download -json "k8s.io/kubernetes@v$KV" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
cat > go.mod <<MOD
module mandate.dev/e2e/controlplane/kube

go 1.26.0
MOD
rm -f go.sum
for m in $(sed -n 's|^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*|\1|p' "$upstream"); do
  go mod edit -replace="$m=$m@$SV"
done
go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@v$KV" \
  "k8s.io/kubernetes/cmd/kube-controller-manager@v$KV" \
  "k8s.io/kubernetes/cmd/kubectl@v$KV"
go mod tidy
echo "$KV" > ../KUBE_VERSION
