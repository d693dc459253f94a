"""pgbench TPS with walstream or pg_receivewal as the synchronous standby.

Run: ``python bench/sync_tps.py [--rounds 3] [--seconds 10]``

One throwaway PostgreSQL 15 primary with both receivers connected at once
(``--synchronous``, each with its own application_name); each round names one
of them in ``synchronous_standby_names`` (ALTER SYSTEM + reload, as in the
shared baselines), then runs ``pgbench -c 8 -j 2 -T SECONDS`` with
synchronous_commit = on. Rounds alternate the order; medians and the ratio
are printed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from walstream.embedded import PgCluster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    cluster = PgCluster.create(15, conf={"max_wal_size": "'4GB'"})
    work = Path(tempfile.mkdtemp(prefix="walstream-bench-"))
    procs: list[subprocess.Popen[str]] = []
    try:
        cluster.pgbench("-i", "-s", "10", "-q")
        conninfo = cluster.conninfo("trust_user")
        tools = {
            "walstream": [sys.executable, "-m", "walstream.receiver"],
            "pg_receivewal": [str(cluster.program("pg_receivewal"))],
        }
        for name, cmd in tools.items():
            (work / name).mkdir()
            full = [*cmd, "-d", f"{conninfo} application_name=bench_{name}", "-D", str(work / name)]
            procs.append(subprocess.Popen([*full, "--synchronous"], stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 30
        while cluster.psql("SELECT count(*) FROM pg_stat_replication") != "2":
            if time.monotonic() > deadline:
                print("receivers did not connect", file=sys.stderr)
                return 1
            time.sleep(0.1)
        tps: dict[str, list[float]] = {name: [] for name in tools}
        for rnd in range(args.rounds):
            order = list(tools) if rnd % 2 == 0 else list(reversed(tools))
            for name in order:
                cluster.set_conf(synchronous_standby_names=f"bench_{name}")
                time.sleep(0.5)
                state = cluster.psql(
                    "SELECT sync_state FROM pg_stat_replication "
                    f"WHERE application_name = 'bench_{name}'"
                )
                out = cluster.pgbench("-c", "8", "-j", "2", "-T", str(args.seconds), timeout=600)
                m = re.search(r"tps = ([0-9.]+)", out)
                assert m, out
                tps[name].append(float(m.group(1)))
                print(f"round {rnd}  {name:<14} {float(m.group(1)):8.0f} tps  (sync_state {state})")
        ours, theirs = (statistics.median(tps[n]) for n in tools)
        print(f"median: walstream {ours:.0f} tps, pg_receivewal {theirs:.0f} tps; "
              f"ratio {ours / theirs:.2f}x")  # fmt: skip
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
