#!/usr/bin/env bash
# Builds Helm (the version pinned in hack/tools/helm/go.mod) from the Go module proxy
# into a cache outside the repository, once per version, and prints the binary's path.
# The chart's rendering into manifests/ and its lint run through it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
V=$(sed -n 's|^[[:space:]]*helm.sh/helm/v3 \(v[0-9.]*\).*|\1|p' "$here/helm/go.mod" | head -n1)
BIN=${XDG_CACHE_HOME:-$HOME/.cache}/mandate/tools/helm-$V
if [ ! -x "$BIN/helm" ]; then
  echo "helm: building $V into $BIN (cold: a few minutes)" >&2
  mkdir -p "$BIN"
  (cd "$here/helm" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod \
    go build -trimpath -ldflags "-s -w" -o "$BIN/helm.tmp" helm.sh/helm/v3/cmd/helm)
  mv "$BIN/helm.tmp" "$BIN/helm"
fi
echo "$BIN/helm"
