#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager and kubectl from the Go module proxy
# into a cache outside the repository, keyed by version, and only when something is missing
# or was built from a different version. Prints the bin directory on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
KV=$(cat "$here/KUBE_VERSION")
ETCD_V=$(sed -n 's|^[[:space:]]*go.etcd.io/etcd/server/v3 \(v[0-9.]*\).*|\1|p' "$here/etcd/go.mod" | head -n1)
MINOR=$(echo "$KV" | cut -d. -f2)
BIN=${MANDATE_CP_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/mandate/controlplane/v$KV-etcd$ETCD_V/bin}
mkdir -p "$BIN"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
log() { echo "controlplane: $*" >&2; }

# /version must report the real version: clients and Helm's kubeVersion checks parse it.
VER="-X k8s.io/component-base/version.gitVersion=v$KV -X k8s.io/component-base/version.gitMajor=1
 -X k8s.io/component-base/version.gitMinor=$MINOR -X k8s.io/component-base/version.gitTreeState=clean
 -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z
 -X k8s.io/client-go/pkg/version.gitVersion=v$KV -X k8s.io/client-go/pkg/version.gitMajor=1
 -X k8s.io/client-go/pkg/version.gitMinor=$MINOR -X k8s.io/client-go/pkg/version.gitTreeState=clean"

need_kube=0
for b in kube-apiserver kube-controller-manager kubectl; do
  [ -x "$BIN/$b" ] || need_kube=1
done
if [ "$need_kube" = 1 ]; then
  log "building Kubernetes v$KV (cold: about 20 minutes on 2 cores) into $BIN"
  start=$(date +%s)
  (cd "$here/kube" && go build -trimpath -ldflags "-s -w $VER" -o "$BIN.tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl)
  mv "$BIN.tmp/"* "$BIN/" && rmdir "$BIN.tmp"
  log "Kubernetes built in $(( $(date +%s) - start )) s"
fi
if [ ! -x "$BIN/etcd" ]; then
  log "building etcd $ETCD_V into $BIN"
  start=$(date +%s)
  (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$BIN/etcd.tmp" "$BIN/etcd"
  log "etcd built in $(( $(date +%s) - start )) s"
fi
echo "$BIN"
