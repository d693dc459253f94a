# Shared by docker/walkthrough.sh and docker/test.sh (sourced, bash): the Docker
# engine, the base image, walstream's wheels, the image, and helpers to run SQL
# in the compose services and to fail with the failing service's logs.
# shellcheck shell=bash

WS_DOCKER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WS_REPO=$(dirname "$WS_DOCKER_DIR")
WS_IMAGE=local/walstream-postgres:15
WS_LOCAL_BASE=local/debian:bookworm
WS_SERVICES=(postgres202 postgres203 walstream relay postgres204)
# compose v1 names the project after the compose file's directory.
WS_PROJECT=${COMPOSE_PROJECT_NAME:-docker}
WS_DOCKERD_PID=
WS_RUN=
# The Docker 20.10 engine from Debian has no BuildKit builder to talk to.
export DOCKER_BUILDKIT=0

if [ -t 1 ]; then
  say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  say() { printf '\n== %s\n' "$*"; }
fi
note() { printf '   %s\n' "$*"; }
# Print a command the way a person would type it, then run it.
run() { printf '   $ %s\n' "$*"; "$@"; }
# The same for a command in a service's container, shown as compose's exec.
run_in() {
  local svc=$1; shift
  printf '   $ docker-compose -f docker/compose.yaml exec %s %s\n' "$svc" "$*"
  docker exec "$(ws_cid "$svc")" "$@" | sed 's/^/   /'
}
run_compose() { printf '   $ docker-compose -f docker/compose.yaml %s\n' "$*"; ws_compose "$@" 2>&1 | sed 's/^/   /'; }

ws_compose() {
  if command -v docker-compose >/dev/null; then
    docker-compose -f "$WS_DOCKER_DIR/compose.yaml" "$@"
  else
    docker compose -f "$WS_DOCKER_DIR/compose.yaml" "$@"
  fi
}

# The container of a compose service, by compose's labels (v1 and v2 name
# containers differently).
ws_cid() {
  docker ps -aq --filter "label=com.docker.compose.project=$WS_PROJECT" \
    --filter "label=com.docker.compose.service=$1" | head -n 1
}

ws_running() { [ "$(docker inspect -f '{{.State.Running}}' "$(ws_cid "$1")" 2>/dev/null)" = true ]; }

# One value (unaligned, tuples only) from SQL run as postgres in a service.
ws_sql() {
  local svc=$1; shift
  docker exec -i "$(ws_cid "$svc")" psql -X -q -A -t -v ON_ERROR_STOP=1 -U postgres -d postgres -c "$*"
}

# A table for the person watching.
ws_show() {
  local svc=$1; shift
  printf '%s=# %s\n' "$svc" "$*" | sed 's/^/   /'
  docker exec -i "$(ws_cid "$svc")" psql -X -q -P pager=off -v ON_ERROR_STOP=1 -U postgres -d postgres -c "$*" \
    | sed 's/^/   /'
}

ws_logs() {
  local svc
  for svc in "$@"; do
    printf '\n---- logs of %s ----\n' "$svc" >&2
    ws_compose logs --no-color --tail=200 "$svc" >&2 || true
  done
}

# Fail: the message, the logs of the services concerned, exit 1.
ws_fail() {
  local msg=$1; shift
  printf '\nFAILED: %s\n' "$msg" >&2
  ws_logs "${@:-${WS_SERVICES[@]}}"
  exit 1
}

# ws_expect SVC DESCRIPTION ACTUAL EXPECTED
ws_expect() {
  if [ "$3" != "$4" ]; then
    ws_fail "$2: expected '$4', got '$3'" "$1"
  fi
  note "ok: $2"
}

# ws_wait SVC SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds; fails at
# once when SVC's container is no longer running.
ws_wait() {
  local svc=$1 seconds=$2 desc=$3 deadline
  shift 3
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    ws_running "$svc" || ws_fail "$desc: $svc is not running" "$svc"
    [ "$SECONDS" -lt "$deadline" ] || ws_fail "$desc: not after ${seconds}s" "$svc"
    sleep 0.5
  done
}

# The engine: the running one if `docker info` answers; else, as root on a
# Debian machine, Debian's docker.io and docker-compose (installed once) and a
# dockerd of our own, stopped by its pid in ws_stop_engine.
ws_engine() {
  WS_RUN=$(mktemp -d "${TMPDIR:-/tmp}/walstream-docker.XXXXXX")
  local need=()
  command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
  if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || need+=(docker.io)
    command -v iptables >/dev/null || need+=(iptables)
  fi
  if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
      echo "missing: ${need[*]} (Debian: apt-get install ${need[*]})" >&2
      exit 1
    fi
    note "installing ${need[*]} (Debian packages)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
      >"$WS_RUN/apt.log" 2>&1 || { cat "$WS_RUN/apt.log" >&2; exit 1; }
  fi
  docker info >/dev/null 2>&1 && return 0
  [ "$(id -u)" -eq 0 ] || { echo "no Docker engine answers, and starting one needs root" >&2; exit 1; }
  dockerd >"$WS_RUN/dockerd.log" 2>&1 &
  WS_DOCKERD_PID=$!
  local _
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && { note "dockerd started (pid $WS_DOCKERD_PID)"; return 0; }
    kill -0 "$WS_DOCKERD_PID" 2>/dev/null || break
    sleep 0.5
  done
  tail -n 50 "$WS_RUN/dockerd.log" >&2
  echo "dockerd did not start" >&2
  exit 1
}

# Stop what ws_engine started, by pid (dockerd stops the containerd it started).
ws_stop_engine() {
  if [ -n "$WS_DOCKERD_PID" ] && kill -0 "$WS_DOCKERD_PID" 2>/dev/null; then
    kill -TERM "$WS_DOCKERD_PID"
    local _
    for _ in $(seq 60); do
      kill -0 "$WS_DOCKERD_PID" 2>/dev/null || break
      sleep 0.5
    done
    kill -0 "$WS_DOCKERD_PID" 2>/dev/null && kill -KILL "$WS_DOCKERD_PID"
    wait "$WS_DOCKERD_PID" 2>/dev/null || true
    note "dockerd (pid $WS_DOCKERD_PID) stopped"
  fi
  WS_DOCKERD_PID=
  [ -z "$WS_RUN" ] || rm -rf "$WS_RUN"
}

# The mirror debootstrap uses: the host's own apt source for Debian's main
# archive, read at run time (deb822 .sources files, then sources.list).
ws_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # One stanza per paragraph: the first binary source for suite bookworm.
    uri=$(awk 'BEGIN { RS = ""; FS = "\n" }
      { u = ""; deb = 0; suite = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { split($i, w, /[ \t]+/); u = w[2] }
          if ($i ~ /^Types:/ && $i ~ /[ \t]deb([ \t]|$)/) deb = 1
          if ($i ~ /^Suites:/ && $i ~ /[ \t]bookworm([ \t]|$)/) suite = 1
        }
        if (u != "" && deb && suite) { print u; exit } }' "$f")
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$(awk '$1 == "deb" && $0 ~ / bookworm / {for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {print $i; exit}}' "$f")
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
}

# The base image: $BASE if given; else debian:bookworm-slim when it is here or
# a registry gives it; else local/debian:bookworm, bootstrapped once from the
# host's Debian mirror (root and debootstrap needed).
ws_base() {
  if [ -n "${BASE:-}" ]; then echo "$BASE"; return; fi
  local img
  for img in debian:bookworm-slim "$WS_LOCAL_BASE"; do
    docker image inspect "$img" >/dev/null 2>&1 && { echo "$img"; return; }
  done
  if timeout 60 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
    echo debian:bookworm-slim; return
  fi
  [ "$(id -u)" -eq 0 ] || { echo "no registry: bootstrapping $WS_LOCAL_BASE needs root" >&2; return 1; }
  if ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  local mirror rootfs
  mirror=$(ws_mirror)
  rootfs=$(mktemp -d /var/tmp/walstream-rootfs.XXXXXX)
  local t=$SECONDS
  # No Debian source on the host: debootstrap's own default mirror.
  note "no registry: bootstrapping $WS_LOCAL_BASE from ${mirror:-the default mirror}" >&2
  # shellcheck disable=SC2086 # an empty $mirror is no argument
  if ! debootstrap --variant=minbase bookworm "$rootfs" $mirror >"$rootfs.log" 2>&1; then
    tail -n 30 "$rootfs.log" >&2; rm -rf "$rootfs" "$rootfs.log"; return 1
  fi
  # An https mirror seen through a TLS-intercepting proxy needs the host's CA
  # bundle for apt inside the build; it goes into this local image only.
  if [ "${mirror#https:}" != "$mirror" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$rootfs/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  fi
  tar -C "$rootfs" -c . | docker import - "$WS_LOCAL_BASE" >/dev/null
  rm -rf "$rootfs" "$rootfs.log"
  note "bootstrapped in $((SECONDS - t))s" >&2
  echo "$WS_LOCAL_BASE"
}

# walstream's wheel from the working tree (a copy of it, so a stale build/ in
# the checkout cannot leak removed modules into the wheel), with scramp's and
# its dependencies', into docker/wheels/ for the image to install offline.
ws_wheels() {
  local py=${PYTHON:-} src
  if [ -z "$py" ]; then
    if [ -x "$WS_REPO/.venv/bin/python" ]; then py=$WS_REPO/.venv/bin/python; else py=python3; fi
  fi
  if ! "$py" -m pip --version >/dev/null 2>&1; then
    "$py" -m venv "$WS_RUN/venv"
    py=$WS_RUN/venv/bin/python
  fi
  src=$WS_RUN/src
  mkdir -p "$src"
  # setup.py too: it declares the dependencies (scramp), which pyproject.toml
  # leaves dynamic; without it the wheel has none and nothing connects.
  tar -C "$WS_REPO" -c --exclude=__pycache__ pyproject.toml setup.py README.md walstream \
    | tar -C "$src" -x
  rm -rf "$WS_DOCKER_DIR/wheels"
  # A fixed date in the wheel: an unchanged tree gives the same bytes, and
  # Docker's layer cache keeps the install layer.
  SOURCE_DATE_EPOCH=315532800 "$py" -m pip wheel -q --disable-pip-version-check \
    -w "$WS_DOCKER_DIR/wheels" "$src" >"$WS_RUN/wheel.log" 2>&1 \
    || { cat "$WS_RUN/wheel.log" >&2; exit 1; }
  rm -rf "$src"
}

# The image every service runs (the apt layer is cached after the first build).
ws_build() {
  local base
  base=$(ws_base) || exit 1
  local before after t=$SECONDS
  ws_wheels
  note "wheels built in $((SECONDS - t))s"
  t=$SECONDS
  before=$(docker image inspect -f '{{.Id}}' "$WS_IMAGE" 2>/dev/null || true)
  note "building $WS_IMAGE from $base"
  if ! docker build --build-arg "BASE=$base" -t "$WS_IMAGE" "$WS_DOCKER_DIR" \
    >"$WS_RUN/build.log" 2>&1; then
    tail -n 40 "$WS_RUN/build.log" >&2
    echo "docker build failed" >&2
    exit 1
  fi
  after=$(docker image inspect -f '{{.Id}}' "$WS_IMAGE")
  if [ "$before" = "$after" ]; then
    note "unchanged (${after:7:12}), $((SECONDS - t))s"
  else
    note "new image ${after:7:12} in $((SECONDS - t))s"
  fi
}
