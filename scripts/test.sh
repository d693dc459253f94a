#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine, then run it.
# Idempotent: a second run only re-runs the checks. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/lib/postgresql/15/bin/postgres ] || [ ! -x /usr/lib/postgresql/15/bin/pg_receivewal ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "== installing PostgreSQL 15 (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-client-15 libpq5 >/dev/null
  else
    echo "PostgreSQL 15 is missing: sudo apt-get install postgresql-15 postgresql-client-15 libpq5" >&2
    exit 1
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "walstream needs Python 3.11+"'
  "$PYTHON" -m venv .venv
fi
# The compiled WAL-scan kernel (walstream/wal/fastscan.py, built by setup.py with mypyc)
# needs a C compiler and the interpreter's headers.
if ! command -v cc >/dev/null || ! .venv/bin/python -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "== installing a C compiler and Python headers (for the compiled kernel)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends gcc libc6-dev python3-dev >/dev/null
  else
    echo "a C compiler and Python headers are missing: sudo apt-get install gcc python3-dev" >&2
    exit 1
  fi
fi
echo "== installing walstream with its test, dev and optional extras, kernel compiled"
WALSTREAM_COMPILE=1 .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'

export WALSTREAM_REQUIRE_ALL_PG=1
# The decoder tests run on both the compiled and the pure path: neither may be skipped.
export WALSTREAM_REQUIRE_KERNEL=1
echo "== ruff"
.venv/bin/ruff check walstream tests bench
echo "== mypy --strict"
.venv/bin/mypy walstream
echo "== pytest (real PostgreSQL 15, 16, 18)"
# Two workers: most of a test's time is waiting on servers (a serial run used
# 9 CPU minutes in 14 min 45 s here, two workers took 7 min 47 s on 2 cores).
# Pass -n 0 to run serially.
exec .venv/bin/python -m pytest -n "${WALSTREAM_TEST_WORKERS:-2}" "$@"
