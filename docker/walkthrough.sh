#!/usr/bin/env bash
# The streaming replication tutorial, with walstream in it, for a person to
# watch: a primary (postgres202), a hot standby made with pg_basebackup
# (postgres203) and walstream's receiver, asynchronous, then synchronous with
# FIRST 1 (postgres203, walstream); standbys stopped one by one until a commit
# waits; walstream's files and `walstream waldump --stats` over them. Then the
# cascade: `walstream relay` streaming from postgres202 and postgres204 (made
# with pg_basebackup from postgres202) streaming from the relay; with
# synchronous_standby_names = 'relay', stopping postgres204 makes a commit on
# postgres202 wait until it is back: synchronous replication through a cascade.
#
#   bash docker/walkthrough.sh           everything, then removes the topology
#   bash docker/walkthrough.sh --keep    leaves it running to explore
#
# Needs a Docker engine (as root on Debian, it installs docker.io and starts
# one). BASE=debian:bookworm-slim or any Debian bookworm image picks the base;
# with no registry, a local one is bootstrapped from the host's Debian mirror.
set -Eeuo pipefail
WS_DIR=$(cd "$(dirname "$0")" && pwd)
. "$WS_DIR/lib.sh"
. "$WS_DIR/scenario.sh"

keep=false
case "${1:-}" in
--keep) keep=true ;;
"") ;;
*) echo "usage: bash docker/walkthrough.sh [--keep]" >&2; exit 2 ;;
esac

finish() {
  if $keep && [ -n "$(ws_cid postgres202 2>/dev/null)" ]; then
    say "Left running"
    note "docker-compose -f docker/compose.yaml ps        (or exec postgres202 psql -U postgres)"
    note "docker-compose -f docker/compose.yaml down -v   removes it"
    if [ -n "$WS_DOCKERD_PID" ]; then
      note "the dockerd started for this walkthrough still runs: kill $WS_DOCKERD_PID stops it (log: $WS_RUN/dockerd.log)"
      WS_DOCKERD_PID='' WS_RUN=''
    fi
  else
    ws_compose down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  ws_stop_engine
}
trap finish EXIT

say "Prepare: a Docker engine, the base image, walstream's wheels from this checkout, the image"
ws_engine
ws_build
ws_compose down -v --remove-orphans >/dev/null 2>&1
ws_scenario
say "Done: every step showed what it said"
