"""The startup role in the receiver's process: a real replay position for the primary."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from walstream import LSN
from walstream.wal.replay import ReplayState
from walstream.wal.segment import parse_segment_name

from .pgcluster import PgCluster, wait_until

VERSIONS = [15, 16, 18]


def _row(cluster: PgCluster, app: str) -> list[str]:
    out = cluster.psql(
        "SELECT sync_state, flush_lsn, replay_lsn FROM pg_stat_replication "
        f"WHERE application_name = '{app}'"
    )
    return out.split("|") if out else []


@pytest.mark.parametrize("version", VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
def test_remote_apply_completes_with_replay(pg_factory, tmp_path: Path, version: int) -> None:  # type: ignore[no-untyped-def]
    app = "ws_apply"
    cluster: PgCluster = pg_factory(version, wal_segsize_mb=1)
    cluster.psql("CREATE TABLE t(x int)")
    cluster.set_conf(synchronous_standby_names=app, synchronous_commit="remote_apply")
    cmd = [sys.executable, "-m", "walstream.receiver", "-d", cluster.conninfo("trust_user"),
           "-D", str(tmp_path), "--synchronous", "--replay", "--application-name", app]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _row(cluster, app)[:1] == ["sync"])
        for i in range(20):
            cluster.psql(f"INSERT INTO t VALUES ({i})")  # each waits for our apply
        commit_end = LSN.parse(cluster.psql("SELECT pg_current_wal_insert_lsn()"))
        sync, flush, replay = _row(cluster, app)
        assert sync == "sync"
        assert replay, "replay_lsn is NULL: no apply position reported"
        assert LSN.parse(replay) <= LSN.parse(flush)
        # The last commit's record ends before the insert position we read after it.
        assert LSN.parse(replay) <= commit_end
        assert LSN.parse(replay) > LSN(0)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_remote_apply_blocks_without_replay(pg_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """As with pg_receivewal: no apply position, so remote_apply never completes."""
    app = "ws_noapply"
    cluster: PgCluster = pg_factory(15, wal_segsize_mb=1)
    cluster.psql("CREATE TABLE t(x int)")
    cluster.set_conf(synchronous_standby_names=app, synchronous_commit="remote_apply")
    cmd = [sys.executable, "-m", "walstream.receiver", "-d", cluster.conninfo("trust_user"),
           "-D", str(tmp_path), "--synchronous", "--application-name", app]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    done = threading.Event()
    try:
        wait_until(lambda: _row(cluster, app)[:1] == ["sync"])
        waiter = threading.Thread(
            target=lambda: (cluster.psql("INSERT INTO t VALUES (1)"), done.set()), daemon=True
        )
        waiter.start()
        assert not done.wait(2)
    finally:
        cluster.set_conf(synchronous_commit="on", synchronous_standby_names="")
        proc.terminate()
        proc.communicate(timeout=30)
    assert done.wait(30)


def test_replay_state_reaches_the_end_of_received_wal(pg_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Fed a whole directory, replay ends where pg_waldump's last record ends."""
    cluster: PgCluster = pg_factory(15, wal_segsize_mb=1)
    cluster.psql("CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 20000)")
    cluster.psql("SELECT pg_switch_wal()")
    end = LSN.parse(cluster.psql("SELECT pg_current_wal_insert_lsn()"))
    wal = cluster.datadir / "pg_wal"
    segs = sorted(
        (p for p in wal.iterdir() if (n := parse_segment_name(p.name, 1 << 20)) and not n.partial),
        key=lambda p: p.name,
    )
    first = parse_segment_name(segs[0].name, 1 << 20)
    assert first is not None
    state = ReplayState(first.segno << 20, 1 << 20)
    for path in segs:
        n = parse_segment_name(path.name, 1 << 20)
        assert n is not None
        state.feed(n.segno << 20, path.read_bytes())
    replayed = state.advance(end)
    waldump = [str(cluster.program("pg_waldump")), "-p", str(wal)]
    waldump += ["-s", str(LSN(first.segno << 20)), "-e", str(end)]
    dump = subprocess.run(waldump, capture_output=True, text=True, check=False).stdout.splitlines()
    last = [line for line in dump if line.startswith("rmgr:")][-1]
    lsn = LSN.parse(last.split("lsn: ")[1].split(",")[0])
    assert replayed > lsn
    assert replayed <= end
    assert state.stopped is None or state.stopped.lsn >= lsn
    assert "COMMIT" in state.xacts.values()


def test_receiver_replay_stops_at_a_target_where_a_real_standby_does(
    pg_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """--replay with a target: apply stays at the stop point a paused real standby reports,
    while WAL keeps being received; with action shutdown the receiver exits 0 by itself."""
    app = "ws_target"
    cluster: PgCluster = pg_factory(15, wal_segsize_mb=1)
    cluster.psql("CREATE TABLE t(x int)")
    standby = cluster.make_standby(recovery_target_name="'rp'", recovery_target_action="'pause'")
    # --synchronous: replay covers flushed WAL, and only then is it flushed every batch.
    base = [sys.executable, "-m", "walstream.receiver", "-d", cluster.conninfo("trust_user"),
            "--replay", "--synchronous", "--recovery-target-name", "rp"]  # fmt: skip
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pausing = subprocess.Popen(
        [*base, "-D", str(tmp_path / "a"), "--application-name", app],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stopping = subprocess.Popen(
        [*base, "-D", str(tmp_path / "b"), "--recovery-target-action", "shutdown"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: bool(_row(cluster, app)), what="the receiver to connect")
        cluster.psql("INSERT INTO t SELECT generate_series(1, 1000)")
        cluster.psql("SELECT pg_create_restore_point('rp')")
        cluster.psql("INSERT INTO t SELECT generate_series(1, 5000)")
        end = LSN.parse(cluster.psql("SELECT pg_current_wal_insert_lsn()"))
        wait_until(
            lambda: standby.psql("SELECT pg_get_wal_replay_pause_state()") == "paused",
            what="the standby to pause at the restore point",
        )
        oracle = LSN.parse(standby.psql("SELECT pg_last_wal_replay_lsn()"))
        wait_until(lambda: LSN.parse(_row(cluster, app)[1] or "0/0") >= end, what="flush")
        _, flush, replay = _row(cluster, app)
        assert LSN.parse(replay) == oracle
        assert LSN.parse(flush) > oracle  # still receiving past the target
        _, err = stopping.communicate(timeout=60)
        assert stopping.returncode == 0, err
        assert 'recovery stopping at restore point "rp"' in err
    finally:
        for proc in (pausing, stopping):
            if proc.poll() is None:
                proc.terminate()
                proc.communicate(timeout=30)
    assert pausing.returncode == 0


def test_a_target_without_replay_is_refused(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "walstream.receiver", "-D", str(tmp_path),
           "--recovery-target-lsn", "0/1000000"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "a recovery target needs --replay" in done.stderr
