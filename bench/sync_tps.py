"""pgbench TPS with walstream or pg_receivewal as the synchronous standby.

Run: ``python bench/sync_tps.py [--rounds 3] [--seconds 10] [--alone]``

One throwaway PostgreSQL 15 primary with both receivers connected at once
(``--synchronous``, each with its own application_name); each round names one
of them in ``synchronous_standby_names`` (ALTER SYSTEM + reload, as in the
shared baselines), then runs ``pgbench -c CLIENTS -j 2 -T SECONDS`` with
synchronous_commit = on. Rounds alternate the order; medians and the ratio
are printed.

With both connected, the standby not being measured still fsyncs every batch
at the same moments as the measured one, and the later of the two fsyncs
queues behind the other: this penalises whichever tool answers later. With
``--alone`` only the measured receiver is connected (started fresh for each
run, same directory carried over), which measures each tool on its own.
``--floor`` (with ``--alone``) adds ``bench/sync_floor.py``: a blocking
pure-Python loop doing only recv, pwritev, fsync and the reply, a bound on
what any Python receiver can reach here.

``--pin`` puts the primary (postmaster and every process it forks) and
pgbench on CPU 0 and the receivers on CPU 1: a standby with a core of its
own, as on a machine of its own, where its CPU time is not taken from the
primary's backends. Without it all of them share both cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pgcluster import PgCluster


def _pin_primary(datadir: Path, cpus: set[int]) -> None:
    """Pin the running postmaster and its children; what it forks later inherits it."""
    postmaster = int((datadir / "postmaster.pid").read_text().split()[0])
    os.sched_setaffinity(postmaster, cpus)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == postmaster:
            os.sched_setaffinity(int(stat.parent.name), cpus)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--clients",
        type=int,
        default=8,
        help="pgbench clients (default 8, the issue's; fewer leave the two cores some idle time)",
    )
    parser.add_argument(
        "--alone",
        action="store_true",
        help="connect only the measured receiver in each run (default: both stay connected)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time bench/sync_floor.py, the least a Python standby must do (with --alone)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="primary and pgbench on CPU 0, the receivers on CPU 1 (a standby with its own core)",
    )
    args = parser.parse_args()
    if args.floor and not args.alone:
        parser.error("--floor goes with --alone (a third receiver would change the other runs)")
    if args.pin:
        os.sched_setaffinity(0, {0})  # pgbench, psql and (below) the primary inherit this
    cluster = PgCluster.create(15, conf={"max_wal_size": "'4GB'"})
    if args.pin:
        _pin_primary(cluster.datadir, {0})
    work = Path(tempfile.mkdtemp(prefix="walstream-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cluster.pgbench("-i", "-s", "10", "-q")
        conninfo = cluster.conninfo("trust_user")
        tools = {
            "walstream": [sys.executable, "-m", "walstream.receiver"],
            "pg_receivewal": [str(cluster.program("pg_receivewal"))],
        }
        if args.floor:
            tools["python_floor"] = [sys.executable, str(Path(__file__).with_name("sync_floor.py"))]
        started: dict[str, subprocess.Popen[bytes]] = {}

        def start(name: str) -> None:
            full = [*tools[name], "-d", f"{conninfo} application_name=bench_{name}"]
            proc = subprocess.Popen(
                [*full, "-D", str(work / name), "--synchronous"],
                stderr=subprocess.DEVNULL,
                preexec_fn=(lambda: os.sched_setaffinity(0, {1})) if args.pin else None,
            )
            procs.append(proc)
            started[name] = proc

        def wait_connected(count: int) -> None:
            deadline = time.monotonic() + 30
            while cluster.psql("SELECT count(*) FROM pg_stat_replication") != str(count):
                if time.monotonic() > deadline:
                    raise RuntimeError("receivers did not connect")
                time.sleep(0.1)

        for name in tools:
            (work / name).mkdir()
            if not args.alone:
                start(name)
        if not args.alone:
            wait_connected(len(tools))
        tps: dict[str, list[float]] = {name: [] for name in tools}
        for rnd in range(args.rounds):
            order = list(tools) if rnd % 2 == 0 else list(reversed(tools))
            for name in order:
                if args.alone:
                    start(name)
                    wait_connected(1)
                    deadline = time.monotonic() + 60
                    while cluster.psql("SELECT state FROM pg_stat_replication") != "streaming":
                        if time.monotonic() > deadline:  # resuming: caught up first
                            raise RuntimeError(f"{name} did not catch up")
                        time.sleep(0.1)
                cluster.set_conf(synchronous_standby_names=f"bench_{name}")
                time.sleep(0.5)
                state = cluster.psql(
                    "SELECT sync_state FROM pg_stat_replication "
                    f"WHERE application_name = 'bench_{name}'"
                )
                out = cluster.pgbench(
                    "-c", str(args.clients), "-j", "2", "-T", str(args.seconds), timeout=600
                )  # fmt: skip
                m = re.search(r"tps = ([0-9.]+)", out)
                assert m, out
                tps[name].append(float(m.group(1)))
                print(f"round {rnd}  {name:<14} {float(m.group(1)):8.0f} tps  (sync_state {state})")
                if args.alone:
                    proc = started.pop(name)
                    proc.terminate()
                    proc.wait(30)
                    wait_connected(0)
        ours, theirs = (statistics.median(tps[n]) for n in ("walstream", "pg_receivewal"))
        per_round = [o / t for o, t in zip(tps["walstream"], tps["pg_receivewal"], strict=True)]
        print(f"median: walstream {ours:.0f} tps, pg_receivewal {theirs:.0f} tps; "
              f"ratio {ours / theirs:.2f}x (per round: "
              f"{', '.join(f'{r:.2f}' for r in per_round)}; "
              f"median {statistics.median(per_round):.2f})")  # fmt: skip
        if args.floor:
            floor = statistics.median(tps["python_floor"])
            print(f"python_floor {floor:.0f} tps: {floor / theirs:.2f}x pg_receivewal")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
