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
echo "== installing walstream with its test, dev and optional extras"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'

export WALSTREAM_REQUIRE_ALL_PG=1
echo "== ruff"
.venv/bin/ruff check walstream tests
echo "== mypy --strict"
.venv/bin/mypy walstream
echo "== pytest (real PostgreSQL 15, 16, 18)"
exec .venv/bin/python -m pytest "$@"
