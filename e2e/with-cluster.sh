#!/usr/bin/env bash
# Runs a command against the local control plane: uses it when it is already up,
# otherwise starts it and stops it again afterwards (whatever the command's result).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cluster=$here/controlplane/cluster.sh
D=${MANDATE_CLUSTER_DIR:-$repo/.cluster}
started=0
if ! "$cluster" status; then
  "$cluster" up
  started=1
fi
cleanup() {
  local rc=$?
  if [ "$rc" != 0 ] && [ -d "$D" ]; then
    for f in "$D"/*.log; do echo "---- tail of $f" >&2; tail -n 20 "$f" >&2 || true; done
  fi
  if [ "$started" = 1 ]; then "$cluster" down; fi
  exit "$rc"
}
trap cleanup EXIT
export KUBECONFIG=$D/kubeconfig
export MANDATE_KUBECTL="$(cat "$D/bin")/kubectl"
"$@"
