"""Either tool resumes a directory the other wrote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from walstream import LSN
from walstream.wal.segment import parse_segment_name

from .pgcluster import PgCluster

SEG = 1024 * 1024


def _more_wal(cluster: PgCluster) -> LSN:
    for _ in range(3):
        cluster.psql("INSERT INTO t SELECT g, repeat('i', 500) FROM generate_series(1, 1500) g")
        cluster.psql("SELECT pg_switch_wal()")
    end = LSN.parse(cluster.current_lsn())
    cluster.psql("INSERT INTO t VALUES (0, 'past endpos')")
    return end


def _check(cluster: PgCluster, directory: Path, endpos: LSN) -> None:
    segs = sorted(
        (n.segno, p) for p in directory.iterdir() if (n := parse_segment_name(p.name, SEG))
    )
    segnos = [s for s, _ in segs]
    assert segnos == list(range(segnos[0], segnos[-1] + 1)), f"gap: {segnos}"
    assert segnos[-1] >= endpos // SEG
    for _, path in segs:
        if ".partial" not in path.name:
            assert path.read_bytes() == (cluster.datadir / "pg_wal" / path.name).read_bytes()


@pytest.mark.parametrize("first", ["pg_receivewal", "walstream"])
def test_each_tool_resumes_the_others_directory(pg_factory, tmp_path: Path, first: str) -> None:  # type: ignore[no-untyped-def]
    cluster: PgCluster = pg_factory(15, wal_segsize_mb=1)
    cluster.psql("SELECT pg_create_physical_replication_slot('inter', true)")
    cluster.psql("CREATE TABLE t(x int, pad text)")
    tools = {
        "walstream": [sys.executable, "-m", "walstream.receiver"],
        "pg_receivewal": [str(cluster.program("pg_receivewal"))],
    }
    second = "walstream" if first == "pg_receivewal" else "pg_receivewal"
    common = ["-d", cluster.conninfo("trust_user"), "-D", str(tmp_path), "-S", "inter", "-n"]
    for tool in (first, second):
        endpos = _more_wal(cluster)
        done = subprocess.run(
            [*tools[tool], *common, "-E", str(endpos)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"{tool}: {done.stderr}"
        _check(cluster, tmp_path, endpos)
