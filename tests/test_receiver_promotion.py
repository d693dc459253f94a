"""Following a promotion: the receiver and pg_receivewal stream from a standby that is promoted."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from walstream import LSN

from .pgcluster import PgCluster, wait_until

VERSIONS = [15, 16, 18]
SEG = 1024 * 1024


@pytest.mark.parametrize("version", VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
def test_cascading_source_promoted(pg_factory, tmp_path: Path, version: int) -> None:  # type: ignore[no-untyped-def]
    primary: PgCluster = pg_factory(version, wal_segsize_mb=1)
    primary.psql("CREATE TABLE t(x int, pad text)")
    standby = primary.make_standby()
    conninfo = standby.conninfo("scram_user", "scrampass")
    ours, theirs = tmp_path / "walstream", tmp_path / "pg_receivewal"
    ours.mkdir()
    theirs.mkdir()
    common = ["-d", conninfo, "-s", "1"]
    commands = [
        [sys.executable, "-m", "walstream.receiver", *common, "-D", str(ours)],
        [str(standby.program("pg_receivewal")), *common, "-D", str(theirs)],
    ]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for cmd in commands]
    try:
        wait_until(
            lambda: standby.psql("SELECT count(*) FROM pg_stat_replication") == "2",
            what="both receivers streaming from the standby",
        )
        for _ in range(3):
            primary.psql("INSERT INTO t SELECT g, repeat('p', 500) FROM generate_series(1, 2000) g")
        standby.wait_for_replay(LSN.parse(primary.current_lsn()))
        primary.stop()
        standby.promote()
        for _ in range(3):
            standby.psql("INSERT INTO t SELECT g, repeat('s', 500) FROM generate_series(1, 2000) g")
        standby.psql("SELECT pg_switch_wal()")
        standby.psql("INSERT INTO t VALUES (0, 'after switch')")
        target = LSN.parse(standby.current_lsn())
        target_seg = f"00000002{target // SEG >> 12:08X}{(target // SEG) & 0xFFF:08X}"

        def caught_up(d: Path) -> bool:
            return (d / f"{target_seg}.partial").exists() and (d / "00000002.history").exists()

        wait_until(
            lambda: caught_up(ours) and caught_up(theirs), what="both receivers on timeline 2"
        )
        time.sleep(1.5)  # let both receive what the server has: the .partial tails can then agree
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        codes = [proc.wait(30) for proc in procs]
    assert codes == [0, 0], [p.stderr.read() if p.stderr else "" for p in procs]

    a = {p.name: p.read_bytes() for p in ours.iterdir()}
    b = {p.name: p.read_bytes() for p in theirs.iterdir()}
    assert sorted(a) == sorted(b)
    assert a["00000002.history"] == (standby.datadir / "pg_wal" / "00000002.history").read_bytes()
    assert any(n.startswith("00000001") and n.endswith(".partial") for n in a), (
        "old timeline's last segment"
    )
    for name in a:
        if name.endswith(".partial"):
            continue
        assert a[name] == b[name], f"{name} differs from pg_receivewal's"
        on_server = standby.datadir / "pg_wal" / name
        if on_server.exists() and name.startswith("00000002") and not name.endswith(".history"):
            assert a[name] == on_server.read_bytes(), f"{name} differs from the server's"
