#!/usr/bin/env bash
# Starts or stops a real, local Kubernetes control plane: etcd, kube-apiserver and
# kube-controller-manager on loopback. Nothing runs Pods; tests play the kubelet.
#
#   cluster.sh up     build binaries if missing, start, wait until ready (harmless if up)
#   cluster.sh down   stop exactly the processes `up` started (by PID) and remove state
#   cluster.sh status exit 0 when the control plane answers
#
# State lives in $MANDATE_CLUSTER_DIR (default: <repo>/.cluster, git-ignored); the admin
# kubeconfig is $MANDATE_CLUSTER_DIR/kubeconfig.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
D=${MANDATE_CLUSTER_DIR:-$repo/.cluster}
ETCD_PORT=${MANDATE_ETCD_PORT:-23790}
ETCD_PEER_PORT=${MANDATE_ETCD_PEER_PORT:-23800}
APISERVER_PORT=${MANDATE_APISERVER_PORT:-16443}
KCM_PORT=${MANDATE_KCM_PORT:-20257}
COMPONENTS="etcd kube-apiserver kube-controller-manager"

log() { echo "cluster: $*" >&2; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds. Polling is
# the readiness check here (there is nothing to watch before the API server is up).
wait_for() {
  local timeout=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timed out after ${timeout}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

alive() { [ -f "$D/$1.pid" ] && kill -0 "$(cat "$D/$1.pid")" 2>/dev/null; }

api_ready() {
  curl -fsS --max-time 2 --cacert "$D/pki/ca.crt" --cert "$D/pki/admin.crt" --key "$D/pki/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null
}

start() { # name, args...
  local name=$1; shift
  # A session of its own, so Ctrl-C on `make run` stops the operator, not the cluster.
  setsid "$@" >"$D/$name.log" 2>&1 </dev/null &
  echo $! >"$D/$name.pid"
}

pki() {
  local P=$D/pki
  [ -f "$P/done" ] && return 0
  mkdir -p "$P"
  (
    cd "$P"
    # ECDSA keeps generation fast; the service-account key must be RSA or ECDSA, both work.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -keyout ca.key -out ca.crt -subj "/CN=mandate-e2e-ca" 2>/dev/null
    issue() { # name subject extensions
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    }
    issue apiserver "/CN=kube-apiserver" \
      "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
    issue admin "/O=system:masters/CN=mandate-e2e-admin" "extendedKeyUsage=clientAuth"
    openssl ecparam -name prime256v1 -genkey -noout -out sa.key.tmp
    openssl pkcs8 -topk8 -nocrypt -in sa.key.tmp -out sa.key && rm sa.key.tmp
    openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null
    touch done
  )
}

kubeconfig() {
  local P=$D/pki
  cat >"$D/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: mandate-e2e
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$P/ca.crt")
users:
- name: mandate-e2e-admin
  user:
    client-certificate-data: $(base64 -w0 <"$P/admin.crt")
    client-key-data: $(base64 -w0 <"$P/admin.key")
contexts:
- name: mandate-e2e
  context: {cluster: mandate-e2e, user: mandate-e2e-admin}
current-context: mandate-e2e
KC
}

# Marks a control plane being stopped: `down` can take over 30 s (the API server's
# shutdown with 10,000 grants' objects), and a run started meanwhile must not take
# the dying control plane for a live one.
stopping() { [ -e "$D/stopping" ]; }

up() {
  if stopping && ! wait_for 120 "the previous control plane to stop" bash -c "[ ! -e '$D/stopping' ]"; then
    # A `down` that was itself killed leaves its mark behind: stale once nothing runs.
    if alive etcd || alive kube-apiserver || alive kube-controller-manager; then exit 1; fi
    log "removing the mark of an interrupted stop"
    rm -f "$D/stopping"
  fi
  if alive etcd && alive kube-apiserver && alive kube-controller-manager && api_ready; then
    log "already up (kubeconfig: $D/kubeconfig)"
    return 0
  fi
  for c in $COMPONENTS; do
    if alive "$c"; then
      log "$c is running but the control plane is not ready; stopping what is left and starting afresh"
      down
      break
    fi
  done
  local bin
  bin=$("$here/build.sh")
  mkdir -p "$D"
  local t0; t0=$(date +%s%N)
  pki
  kubeconfig
  rm -rf "$D/etcd"
  start etcd "$bin/etcd" --name=mandate-e2e --data-dir="$D/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="mandate-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync=true --quota-backend-bytes=4294967296 --log-level=warn
  wait_for 60 "etcd /health" curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"

  local P=$D/pki
  start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
    --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" --cert-dir="$D/certs" \
    --client-ca-file="$P/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --authorization-mode=RBAC \
    --allow-privileged=true \
    --disable-admission-plugins=ServiceAccount \
    --endpoint-reconciler-type=none \
    --max-requests-inflight=1000 --max-mutating-requests-inflight=500
  wait_for 120 "kube-apiserver /readyz" api_ready

  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$D/kubeconfig" \
    --authentication-kubeconfig="$D/kubeconfig" --authorization-kubeconfig="$D/kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --leader-elect=false \
    --controllers=garbage-collector-controller,namespace-controller,job-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,ttl-after-finished-controller \
    --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
    --use-service-account-credentials=false \
    --kube-api-qps=200 --kube-api-burst=400 \
    --concurrent-gc-syncs=20 --concurrent-job-syncs=20
  wait_for 90 "kube-controller-manager /healthz" curl -fsSk --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz"
  local K="$bin/kubectl --kubeconfig=$D/kubeconfig"
  # The service-account controller acting proves the controller-manager talks to the API.
  wait_for 90 "default ServiceAccount" $K -n default get serviceaccount default
  echo "$bin" >"$D/bin"
  log "up in $(( ($(date +%s%N) - t0) / 1000000 )) ms; KUBECONFIG=$D/kubeconfig"
}

down() {
  local stopped=0
  [ -d "$D" ] && touch "$D/stopping"
  for c in kube-controller-manager kube-apiserver etcd; do
    if [ -f "$D/$c.pid" ]; then
      local pid; pid=$(cat "$D/$c.pid")
      if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        # Wait for the process to exit so ports are free for the next `up`.
        wait_for 30 "$c (pid $pid) to exit" bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
        stopped=$((stopped + 1))
      fi
      rm -f "$D/$c.pid"
    fi
  done
  rm -rf "$D"
  log "down ($stopped processes stopped)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) ! stopping && alive kube-apiserver && api_ready ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
