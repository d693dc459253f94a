"""Failover across the hosts of a multi-host connection string, with no gap."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

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
