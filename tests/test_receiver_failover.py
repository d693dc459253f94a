"""Failover across the hosts of a multi-host connection string, with no gap."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from walstream import LSN
from walstream.wal.segment import parse_segment_name

from .pgcluster import PgCluster, wait_until

SEG = 1024 * 1024


def test_two_host_failover_continues_on_the_new_timeline(pg_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    primary: PgCluster = pg_factory(15, wal_segsize_mb=1)
    primary.psql("CREATE TABLE t(x int, pad text)")
    standby = primary.make_standby()
    conninfo = (
        f"host=127.0.0.1,127.0.0.1 port={primary.port},{standby.port} user=scram_user "
        "password=scrampass target_session_attrs=primary connect_timeout=5"
    )
    cmd = [sys.executable, "-m", "walstream.receiver", "-d", conninfo, "-D", str(tmp_path), "-v"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(
            lambda: primary.psql("SELECT count(*) FROM pg_stat_replication") == "2",
            what="the receiver streaming from the primary",
        )
        for _ in range(4):
            primary.psql("INSERT INTO t SELECT g, repeat('p', 500) FROM generate_series(1, 2000) g")
        standby.wait_for_replay(LSN.parse(primary.current_lsn()))
        primary.stop("fast")
        standby.promote()
        for _ in range(4):
            standby.psql("INSERT INTO t SELECT g, repeat('s', 500) FROM generate_series(1, 2000) g")
        standby.psql("SELECT pg_switch_wal()")
        wait_until(
            lambda: any(
                p.name.startswith("00000002") and not p.name.endswith((".partial", ".history"))
                for p in tmp_path.iterdir()
            ),
            what="a completed segment of timeline 2",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "switched to timeline 2" in err

    history = (tmp_path / "00000002.history").read_bytes()
    assert history == (standby.datadir / "pg_wal" / "00000002.history").read_bytes()
    switch = LSN.parse(history.decode().split("\t")[1])

    by_segno: dict[int, list[tuple[int, Path, bool]]] = {}
    for path in tmp_path.iterdir():
        n = parse_segment_name(path.name, SEG)
        if n is not None:
            by_segno.setdefault(n.segno, []).append((n.timeline, path, n.partial))
    segnos = sorted(by_segno)
    assert segnos == list(range(segnos[0], segnos[-1] + 1)), f"gap: {segnos}"
    for segno in segnos:
        for tli, path, partial in by_segno[segno]:
            if partial:
                continue
            server = primary if tli == 1 else standby
            expected = (server.datadir / "pg_wal" / path.name).read_bytes()
            assert path.read_bytes() == expected, f"{path.name} differs from the server's"
    # The segment holding the switch point exists on timeline 2, complete or in progress.
    assert any(tli == 2 for tli, _, _ in by_segno[switch // SEG])


_FILL = "INSERT INTO t SELECT g, repeat(md5(g::text), 16) FROM generate_series(1, 2000) g"


def _segments(directory: Path) -> dict[int, list[int]]:
    """Completed segment numbers per timeline."""
    found: dict[int, list[int]] = {}
    for path in directory.iterdir():
        n = parse_segment_name(path.name, SEG)
        if n is not None and not n.partial:
            found.setdefault(n.timeline, []).append(n.segno)
    return {tli: sorted(segnos) for tli, segnos in found.items()}


@pytest.mark.parametrize("fork_in", ["an earlier segment", "the resumed segment"])
def test_failover_to_a_standby_that_lagged_behind_the_receiver(  # type: ignore[no-untyped-def]
    pg_factory, tmp_path: Path, fork_in: str
) -> None:
    """The new primary's history forks before what we received: nothing past the fork is claimed.

    Reporting the old primary's positions to the new one would acknowledge
    synchronous commits the receiver never saw, and a reconnect would resume
    past a gap on the new timeline. With the fork in an earlier segment the
    new primary refuses our start position; in the segment we resume in, it
    accepts it and ends timeline 1 before our position. In-process replay
    (``--replay``) starts again on the new timeline.
    """
    primary: PgCluster = pg_factory(15, wal_segsize_mb=1)
    primary.psql("CREATE TABLE t(x int, pad text)")
    standby = primary.make_standby()
    conninfo = (
        f"host=127.0.0.1,127.0.0.1 port={primary.port},{standby.port} user=scram_user "
        "password=scrampass target_session_attrs=primary connect_timeout=5 application_name=rv"
    )
    # Periodic updates only every 60 s: a synchronous commit below that waits
    # for one instead of the update after each flush would time out.
    cmd = [sys.executable, "-m", "walstream.receiver", "-d", conninfo, "-D", str(tmp_path),
           "--synchronous", "--replay", "-s", "60", "-v"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    connected = "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'rv'"
    positions = (
        "SELECT write_lsn <= pg_current_wal_lsn() AND flush_lsn <= pg_current_wal_lsn() "
        "FROM pg_stat_replication WHERE application_name = 'rv'"
    )
    try:
        wait_until(lambda: primary.psql(connected) == "1", what="the receiver on the primary")
        if fork_in == "the resumed segment":
            primary.psql("SELECT pg_switch_wal()")  # the fork at the start of a fresh segment
        standby.wait_for_replay(LSN.parse(primary.current_lsn()))
        standby.stop("fast")  # it lags from here on
        for _ in range(3 if fork_in == "an earlier segment" else 0):
            primary.psql(_FILL)
        primary.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 200) g")
        old_end = LSN.parse(primary.current_lsn())
        wait_until(
            lambda: primary.psql(
                f"SELECT flush_lsn >= '{old_end}' FROM pg_stat_replication "
                "WHERE application_name = 'rv'"
            ) == "t",
            what="the receiver flushing the old primary's WAL",
        )  # fmt: skip
        primary.stop("immediate")
        standby.start()
        standby.promote()
        history = (standby.datadir / "pg_wal" / "00000002.history").read_text()
        fork = LSN.parse(history.split("\t")[1])
        assert fork < old_end
        assert (fork // SEG < old_end // SEG) == (fork_in == "an earlier segment")
        wait_until(
            lambda: standby.psql(
                "SELECT flush_lsn IS NOT NULL FROM pg_stat_replication "
                "WHERE application_name = 'rv'"
            ) == "t",
            what="the receiver's first update to the new primary",
        )  # fmt: skip
        assert standby.psql(positions) == "t", "positions past the new primary's WAL"

        standby.set_conf(synchronous_standby_names="rv")
        wait_until(
            lambda: standby.psql(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'rv'"
            ) == "sync",
            what="the receiver as the new primary's synchronous standby",
        )  # fmt: skip
        standby.psql("INSERT INTO t VALUES (1, 'acknowledged after its flush')")  # 60 s: no hang
        assert standby.psql(positions) == "t"
        standby.psql("ALTER SYSTEM RESET synchronous_standby_names")
        standby.reload()

        # A reconnect while timeline 2 is still behind the old primary's end.
        standby.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_replication")
        for _ in range(6):
            standby.psql(_FILL)
        standby.psql("SELECT pg_switch_wal()")
        end2 = LSN.parse(standby.current_lsn())
        last = (end2 - 1) // SEG
        wait_until(
            lambda: last in _segments(tmp_path).get(2, []), what="timeline 2 streamed to its end"
        )
        wait_until(
            lambda: standby.psql(
                f"SELECT replay_lsn >= '{LSN(last * SEG)}' FROM pg_stat_replication "
                "WHERE application_name = 'rv'"
            ) == "t",
            what="in-process replay following timeline 2",
        )  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "received interrupt signal, exiting" in err
    if fork_in == "an earlier segment":
        assert "continuing on timeline 2" in err
    assert "replay tracking starts again on the new timeline" in err
    assert "replay stops" not in err
    assert "replay tracking stopped" not in err

    def name(tli: int, segno: int) -> str:
        return f"{tli:08X}{segno >> 8:08X}{segno & 0xFF:08X}"

    segments = _segments(tmp_path)
    # The old primary's WAL past the fork is still here, as it wrote it.
    tl1 = segments.get(1, [])  # none if the receiver started in the segment of the fork
    assert tl1 == list(range(tl1[0] if tl1 else old_end // SEG, old_end // SEG))
    for segno in tl1:
        assert (tmp_path / name(1, segno)).read_bytes() == (
            primary.datadir / "pg_wal" / name(1, segno)
        ).read_bytes()
    tail = old_end % SEG
    ours = (tmp_path / f"{name(1, old_end // SEG)}.partial").read_bytes()
    theirs = (primary.datadir / "pg_wal" / name(1, old_end // SEG)).read_bytes()
    assert ours[:tail] == theirs[:tail]
    # Timeline 2 from the fork's segment to its end, with no gap, as the new primary has it.
    assert segments[2] == list(range(fork // SEG, last + 1)), "gap on timeline 2"
    for segno in segments[2]:
        assert (tmp_path / name(2, segno)).read_bytes() == (
            standby.datadir / "pg_wal" / name(2, segno)
        ).read_bytes()
    # No second copy of a segment the old timeline already has complete.
    assert not any(
        (tmp_path / (p.name.removesuffix(".partial"))).exists()
        for p in tmp_path.glob("00000001*.partial")
    )
