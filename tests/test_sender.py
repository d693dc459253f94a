"""`walstream send` serving real peers: pg_receivewal, a PostgreSQL standby, promotions, slots.

The WAL directory is filled by walstream's own receiver from a real primary
(sometimes while the sender serves it); the peers are PostgreSQL's programs
of the same version, and what they end up with is compared with the
primary's own pg_wal byte for byte.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import walstream
from walstream import LSN
from walstream.protocol.commands import SlotPosition
from walstream.wal.segment import parse_segment_name

from .pgcluster import VERSIONS, PgCluster, wait_until
from .support.sender import SenderProcess, receive, seed, standby_behind

SEG = 1024 * 1024
IDS = [f"pg{v}" for v in VERSIONS]


def _wal(cluster: PgCluster, rounds: int = 3) -> str:
    """Some segments of real WAL; the first segment's name."""
    cluster.psql("CREATE TABLE IF NOT EXISTS t(x int, pad text)")
    first = cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    for _ in range(rounds):
        cluster.psql("INSERT INTO t SELECT g, repeat('s', 300) FROM generate_series(1, 2500) g")
        cluster.psql("SELECT pg_switch_wal()")
    return first


def _completed_equal(directory: Path, cluster: PgCluster) -> list[str]:
    """The completed segments of ``directory``, each checked equal to the primary's file."""
    names = sorted(p.name for p in directory.iterdir() if parse_segment_name(p.name, SEG))
    done = [n for n in names if not n.endswith(".partial")]
    for name in done:
        assert (directory / name).read_bytes() == (cluster.datadir / "pg_wal" / name).read_bytes()
    return done


def _pg_receivewal(cluster: PgCluster, sender: SenderProcess, directory: Path, *args: str
                   ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [str(cluster.program("pg_receivewal")), "-d", sender.conninfo(), "-D", str(directory),
         "-n", "-v", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def _read_slot(sender: SenderProcess, name: str) -> SlotPosition | None:
    async with await walstream.connect(sender.conninfo()) as conn:
        return await conn.read_replication_slot(name)


@pytest.mark.parametrize("version", VERSIONS, ids=IDS)
def test_pg_receivewal_copies_the_primarys_segments_with_and_without_a_slot(
    pg_factory, tmp_path: Path, version: int
) -> None:  # type: ignore[no-untyped-def]
    cluster: PgCluster = pg_factory(version, wal_segsize_mb=1)
    first = _wal(cluster)
    end = LSN.parse(cluster.current_lsn())
    served = tmp_path / "served"
    seed(served, first)
    receive(cluster, served, end)
    last_complete = LSN(end - end % SEG)
    with SenderProcess(served) as sender:
        plain = tmp_path / "plain"
        seed(plain, first)
        done = _pg_receivewal(cluster, sender, plain, "-E", str(LSN(last_complete - 1)))
        assert done.returncode == 0, done.stderr + sender.log_text()
        assert _completed_equal(plain, cluster) == _completed_equal(served, cluster)

        created = _pg_receivewal(cluster, sender, tmp_path, "--create-slot", "-S", "pgrw")
        assert created.returncode == 0, created.stderr
        assert asyncio.run(_read_slot(sender, "pgrw")) == SlotPosition("physical", None, None)
        slotted = tmp_path / "slotted"
        seed(slotted, first)
        done = _pg_receivewal(
            cluster, sender, slotted, "-S", "pgrw", "-E", str(LSN(last_complete - 1))
        )
        assert done.returncode == 0, done.stderr + sender.log_text()
        assert _completed_equal(slotted, cluster)
        kept = asyncio.run(_read_slot(sender, "pgrw"))
        # The slot follows the flush pg_receivewal reported, as on the primary itself:
        # the same run against it leaves its slot at the same position.
        cluster.psql("SELECT pg_create_physical_replication_slot('pgrw')")
        on_primary = tmp_path / "on_primary"
        seed(on_primary, first)
        done = subprocess.run(
            [str(cluster.program("pg_receivewal")), "-d", cluster.conninfo("trust_user"),
             "-D", str(on_primary), "-n", "-S", "pgrw", "-E", str(LSN(last_complete - 1))],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        restart = cluster.psql(
            "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name='pgrw'"
        )
        assert kept == SlotPosition("physical", LSN.parse(restart), 1)
        # A clean stop saves the slot's progress, as PostgreSQL's shutdown
        # checkpoint does (leaving the block SIGKILLs it, and a crash may lose
        # the last second of progress, as one after a checkpoint does).
        assert sender.stop() == 0, sender.log_text()
    with SenderProcess(served, port=sender.port):  # a restart keeps the slot
        assert asyncio.run(_read_slot(sender, "pgrw")) == kept
        dropped = _pg_receivewal(cluster, sender, tmp_path, "--drop-slot", "-S", "pgrw")
        assert dropped.returncode == 0, dropped.stderr
        assert asyncio.run(_read_slot(sender, "pgrw")) is None


@pytest.mark.parametrize("version", VERSIONS, ids=IDS)
def test_a_standby_streams_from_walstream_while_a_receiver_fills_it(
    pg_factory, tmp_path: Path, version: int
) -> None:  # type: ignore[no-untyped-def]
    primary: PgCluster = pg_factory(version, wal_segsize_mb=1)
    primary.psql("CREATE TABLE t(x int, pad text)")
    served = tmp_path / "served"
    served.mkdir()
    receiver = subprocess.Popen(
        [sys.executable, "-m", "walstream.receiver", "-d", primary.conninfo("trust_user"),
         "-D", str(served), "--synchronous"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: any(served.iterdir()), what="the receiver's first segment")
        with SenderProcess(served) as sender:
            standby = standby_behind(primary, sender, "downstream")
            for round_ in range(3):
                primary.psql(f"INSERT INTO t SELECT g, 'r{round_}' FROM generate_series(1, 2000) g")
                primary.psql("SELECT pg_switch_wal()")
                primary.psql(f"INSERT INTO t VALUES ({round_}, 'after the switch')")
                want = primary.psql("SELECT count(*) FROM t")
                wait_until(
                    lambda: standby.psql("SELECT count(*) FROM t") == want,  # noqa: B023
                    what=f"round {round_} on the standby",
                )
                if round_ == 1:
                    standby.restart()  # it comes back and goes on streaming
            row = standby.psql("SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver")
            assert row == f"streaming|127.0.0.1|{sender.port}"
    finally:
        receiver.terminate()
        receiver.wait(30)


@pytest.mark.parametrize("version", VERSIONS, ids=IDS)
def test_a_promotion_upstream_reaches_a_standby_and_pg_receivewal_through_walstream(
    pg_factory, tmp_path: Path, version: int
) -> None:  # type: ignore[no-untyped-def]
    primary: PgCluster = pg_factory(version, wal_segsize_mb=1)
    primary.psql("CREATE TABLE t(x int, pad text)")
    upstream = primary.make_standby("upstream")  # what walstream receives from, promoted later
    served = tmp_path / "served"
    served.mkdir()
    receiver = subprocess.Popen(
        [sys.executable, "-m", "walstream.receiver", "-d", upstream.conninfo("trust_user"),
         "-D", str(served), "--synchronous"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: any(served.iterdir()), what="the receiver's first segment")
        with SenderProcess(served) as sender:
            standby = standby_behind(primary, sender, "downstream")
            pg_rw_dir = tmp_path / "pgrw"
            seed(pg_rw_dir, sorted(p.name for p in served.iterdir())[0].removesuffix(".partial"))
            pg_rw = subprocess.Popen(
                [str(primary.program("pg_receivewal")), "-d", sender.conninfo(), "-D",
                 str(pg_rw_dir), "-v"],
                stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                primary.psql("INSERT INTO t VALUES (1, 'before')")
                lsn = primary.current_lsn()
                upstream.wait_for_replay(lsn)
                wait_until(lambda: standby.psql("SELECT count(*) FROM t") == "1", what="row 1")
                primary.stop()
                upstream.promote()
                upstream.psql("INSERT INTO t VALUES (2, 'after the promotion')")
                upstream.psql("SELECT pg_switch_wal()")
                wait_until(lambda: (served / "00000002.history").exists(), what="timeline 2")
                wait_until(
                    lambda: standby.psql("SELECT count(*) FROM t") == "2",
                    what="the row written after the promotion, on the standby",
                )
                assert standby.psql("SELECT received_tli FROM pg_stat_wal_receiver") == "2"
                wait_until(
                    lambda: (
                        (pg_rw_dir / "00000002.history").exists()
                        and any(p.name.startswith("00000002") for p in pg_rw_dir.iterdir())
                    ),
                    what="pg_receivewal on timeline 2",
                )
            finally:
                pg_rw.terminate()
                pg_rw.wait(30)
    finally:
        receiver.terminate()
        receiver.wait(30)


def test_sigterm_ends_the_streams_cleanly_and_exits_0(pg_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster: PgCluster = pg_factory(15, wal_segsize_mb=1)
    first = _wal(cluster, rounds=2)
    served = tmp_path / "served"
    seed(served, first)
    receive(cluster, served, LSN.parse(cluster.current_lsn()))
    sender = SenderProcess(served).start()
    target = tmp_path / "pgrw"
    seed(target, first)
    client = subprocess.Popen(
        [str(cluster.program("pg_receivewal")), "-d", sender.conninfo(), "-D", str(target),
         "-n", "-v"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: "stream" in sender.log_text(), what="the stream to start")
        time.sleep(0.5)
        assert sender.stop(signal.SIGTERM) == 0, sender.log_text()
        _, err = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
    _completed_equal(target, cluster)
    # pg_receivewal says what it says when a primary shuts down under it (-n: no retry).
    direct = tmp_path / "direct"
    seed(direct, first)
    client = subprocess.Popen(
        [str(cluster.program("pg_receivewal")), "-d", cluster.conninfo("trust_user"),
         "-D", str(direct), "-n", "-v"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    cluster.stop("fast")
    _, primary_err = client.communicate(timeout=30)

    def errors(text: str) -> list[str]:
        return [line for line in text.splitlines() if "error:" in line]

    assert errors(err) == errors(primary_err), (err, primary_err)
    assert errors(err) == [
        "pg_receivewal: error: replication stream was terminated before stop point",
        "pg_receivewal: error: disconnected",
    ]
