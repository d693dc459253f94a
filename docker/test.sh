#!/usr/bin/env bash
# docker/ for real, in CI: the walkthrough's scenario (docker/scenario.sh) with
# its checks, on a bare Debian machine as root. Sets up what is missing, once:
# Debian's docker.io, docker-compose, debootstrap and iptables, a dockerd of its
# own (stopped by pid at the end), the base image (bootstrapped from the
# host's own Debian mirror when no registry answers), the image (rebuilt from
# this working tree every run; the apt layer stays cached). Exits non-zero at
# the first failure, with the failing service's logs.
set -Eeuo pipefail
WS_DIR=$(cd "$(dirname "$0")" && pwd)
. "$WS_DIR/lib.sh"
. "$WS_DIR/scenario.sh"

started=$SECONDS
up=false
on_error() {
  local rc=$? line=$1 cmd=$2
  trap - ERR
  printf '\nFAILED (exit %s) at docker/%s line %s: %s\n' "$rc" "${BASH_SOURCE[1]##*/}" "$line" "$cmd" >&2
  $up && ws_logs "${WS_SERVICES[@]}"
  exit 1
}
trap 'on_error "$LINENO" "$BASH_COMMAND"' ERR
finish() {
  local rc=$?
  if $up; then ws_compose down -v --remove-orphans >/dev/null 2>&1 || true; fi
  ws_stop_engine
  printf '\ndocker/test.sh: %s in %ss\n' "$([ "$rc" -eq 0 ] && echo passed || echo FAILED)" "$((SECONDS - started))"
}
trap finish EXIT

say "Docker engine"
t=$SECONDS
ws_engine
note "$((SECONDS - t))s"
say "Image $WS_IMAGE (base image, walstream's wheels, docker build)"
t=$SECONDS
ws_build
note "$((SECONDS - t))s"
up=true
ws_compose down -v --remove-orphans >/dev/null 2>&1
t=$SECONDS
ws_scenario
say "Scenario passed in $((SECONDS - t))s"
