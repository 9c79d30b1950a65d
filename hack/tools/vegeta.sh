#!/usr/bin/env bash
# Builds the HTTP load generator vegeta (pinned below) from the Go module proxy with
# `go install` into a cache outside the repository, once per version, and prints the
# binary's absolute path. Progress goes to stderr. The binary is built into a temporary
# directory and renamed into place only when complete, so an interrupted run leaves
# nothing that a later run mistakes for an install.
set -euo pipefail
MOD=github.com/tsenart/vegeta/v12
V=v12.13.0
DIR=${MANDATE_TOOLS_CACHE:-$HOME/.cache/mandate}/vegeta-$V
BIN=$DIR/vegeta

if [ ! -x "$BIN" ]; then
  echo "vegeta: building $MOD@$V into $DIR (cold: a minute or so)" >&2
  mkdir -p "$DIR"
  # Temporary directories of runs killed outright (SIGKILL, power loss) an hour or more ago.
  find "$DIR" -maxdepth 1 -name '.gobin.tmp.*' -mmin +60 -exec rm -rf {} + 2>/dev/null || true
  TMP=$(mktemp -d "$DIR/.gobin.tmp.XXXXXX")
  trap 'rm -rf "$TMP"' EXIT
  # Outside any module, so that a go.mod or go.work around the caller plays no part.
  (cd "$TMP" && GOBIN="$TMP" GOTOOLCHAIN=local GOWORK=off \
    go install -trimpath -ldflags "-s -w -X main.Version=$V" "$MOD@$V" </dev/null >&2)
  [ -x "$TMP/vegeta" ] || { echo "vegeta: go install left no binary in $TMP" >&2; exit 1; }
  if ! mv -T "$TMP/vegeta" "$BIN" 2>/dev/null || [ ! -x "$BIN" ]; then
    echo "vegeta: could not move the binary into $BIN" >&2; exit 1
  fi
  echo "vegeta: installed $BIN" >&2
fi
echo "$BIN"
