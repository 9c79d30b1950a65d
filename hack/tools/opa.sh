#!/usr/bin/env bash
# Builds the Open Policy Agent server opa (pinned below) from the Go module proxy with
# `go install` into a cache outside the repository, once per version, and prints the
# binary's absolute path. Progress goes to stderr. A plain build is tried first and, if it
# fails (e.g. no C toolchain for cgo), one with CGO_ENABLED=0. The binary is built into a
# temporary directory and renamed into place only when complete, so an interrupted run
# leaves nothing that a later run mistakes for an install.
set -euo pipefail
MOD=github.com/open-policy-agent/opa
V=v1.22.3
DIR=${MANDATE_TOOLS_CACHE:-$HOME/.cache/mandate}/opa-$V
BIN=$DIR/opa

if [ ! -x "$BIN" ]; then
  echo "opa: building $MOD@$V into $DIR (cold: a few minutes)" >&2
  mkdir -p "$DIR"
  # Temporary directories of runs killed outright (SIGKILL, power loss) an hour or more ago.
  find "$DIR" -maxdepth 1 -name '.gobin.tmp.*' -mmin +60 -exec rm -rf {} + 2>/dev/null || true
  TMP=$(mktemp -d "$DIR/.gobin.tmp.XXXXXX")
  trap 'rm -rf "$TMP"' EXIT
  # Outside any module, so that a go.mod or go.work around the caller plays no part.
  build() {
    (cd "$TMP" && GOBIN="$TMP" GOTOOLCHAIN=local GOWORK=off "$@" \
      go install -trimpath -ldflags "-s -w" "$MOD@$V" </dev/null >&2)
  }
  if ! build env; then
    echo "opa: plain go install failed; retrying with CGO_ENABLED=0" >&2
    rm -f "$TMP/opa"
    build env CGO_ENABLED=0
  fi
  [ -x "$TMP/opa" ] || { echo "opa: go install left no binary in $TMP" >&2; exit 1; }
  if ! mv -T "$TMP/opa" "$BIN" 2>/dev/null || [ ! -x "$BIN" ]; then
    echo "opa: could not move the binary into $BIN" >&2; exit 1
  fi
  echo "opa: installed $BIN" >&2
fi
echo "$BIN"
