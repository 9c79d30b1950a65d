#!/usr/bin/env bash
# Prints the path of h2load (nghttp2's HTTP/2 load generator, C), installing Debian's
# nghttp2-client package if it is missing. The authorization benchmark drives Mandate
# and OPA with it: a Go generator needs most of a core of its own at the rates measured,
# on a machine whose two cores the service under test shares. Progress goes to stderr.
set -euo pipefail
if ! command -v h2load >/dev/null 2>&1; then
  echo "h2load: installing Debian's nghttp2-client" >&2
  SUDO=
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nghttp2-client >&2
fi
command -v h2load
