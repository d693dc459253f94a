"""Real WAL for the decoder tests: one mixed workload per PostgreSQL version.

The decoder is only as good as the WAL it was checked against, so this drives
a real server through everything the decoder must understand: pgbench's bulk
load and transactions, DDL on every index access method, COPY, savepoints
(enough of them for XACT_ASSIGNMENT), two-phase commit and rollback, restore
points, a logical message larger than a page, full-page images under each
wal_compression method the build has, segment switches, a crash that loses
the tail of a record crossing a segment boundary (so the server writes an
OVERWRITE_CONTRECORD), and a promotion to timeline 2 (END_OF_RECOVERY).

The segments are copied out with the facts the tests check against (LSNs of
restore points, transaction ids of the prepared transactions, ...).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from walstream.lsn import LSN

from .pgcluster import PgCluster

SEG_SIZE = 1024 * 1024


@dataclass
class WalSample:
    """WAL copied out of a cluster, and what the workload knows about it."""

    version: int
    bindir: Path
    waldir: Path
    first_segment: str  # the oldest timeline-1 segment file kept by the server
    switch_segment: str  # the timeline-2 copy of the segment holding the switch point
    switchpoint: LSN  # first LSN of timeline 2
    compressions: list[str]  # wal_compression methods the build accepted
    facts: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0

    def waldump(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run this version's pg_waldump on the copied WAL."""
        return subprocess.run(
            [str(self.bindir / "pg_waldump"), "-p", str(self.waldir), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )


def _pgbench(cluster: PgCluster, *args: str) -> None:
    cluster.pgbench(*args)


def _fill_segment_then_big_record(cluster: PgCluster) -> tuple[str, str]:
    """Leave less than two pages in the current segment, then write a record crossing it.

    Returns the names of the segment the record starts in and the one it ends in.
    """
    cluster.psql("CREATE TABLE filler (a int, b text)")
    cluster.psql(
        """DO $$
        DECLARE remain int;
        BEGIN
          LOOP
            INSERT INTO filler SELECT g, 'f' FROM generate_series(1, 10) g;
            remain := 1048576 - (pg_current_wal_insert_lsn() - '0/0') % 1048576;
            EXIT WHEN remain < 16384;
          END LOOP;
        END $$"""
    )
    init = cluster.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")
    cluster.psql("SELECT pg_logical_emit_message(true, 'crash', repeat('xyzxz', 20000))")
    end = cluster.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")
    return init, end


def generate(version: int, dest: Path) -> WalSample:
    """Run the workload on a fresh 1 MB-segment cluster and copy its WAL to ``dest``."""
    started = time.monotonic()
    cluster = PgCluster.create(
        version,
        wal_segsize_mb=1,
        conf={
            "max_prepared_transactions": "10",
            "wal_keep_size": "'1GB'",
            "max_wal_size": "'1GB'",
            "min_wal_size": "'32MB'",
            "checkpoint_timeout": "'1h'",
            "autovacuum": "off",
        },
    )
    facts: dict[str, object] = {}
    try:
        q = cluster.psql
        _pgbench(cluster, "-i", "-s", "1", "-q")
        _pgbench(cluster, "-t", "50", "-c", "2", "-n")

        # DDL on every index access method, a sequence, a truncation, a drop.
        q(
            "CREATE TABLE docs (id serial PRIMARY KEY, body text, tags text[], pt point,"
            " r int4range, n int)"
        )
        q(
            "INSERT INTO docs (body, tags, pt, r, n) SELECT md5(g::text), ARRAY[g::text, 'x'],"
            " point(g, g), int4range(g, g + 10), g FROM generate_series(1, 2000) g"
        )
        q("CREATE INDEX docs_gin ON docs USING gin (tags)")
        q("CREATE INDEX docs_gist ON docs USING gist (pt)")
        q("CREATE INDEX docs_hash ON docs USING hash (body)")
        q("CREATE INDEX docs_brin ON docs USING brin (n)")
        q("CREATE INDEX docs_spgist ON docs USING spgist (r)")
        q(
            "INSERT INTO docs (body, tags, pt, r, n) SELECT md5(g::text), ARRAY['y'], point(g, 0),"
            " int4range(g, g + 1), g FROM generate_series(2001, 2500) g"
        )
        q("CREATE SEQUENCE s; SELECT nextval('s') FROM generate_series(1, 40)")
        q("CREATE TABLE copied (a int, b text)")
        q("COPY copied (a) FROM PROGRAM 'seq 1 3000'")
        q("CREATE TABLE gone (a int); INSERT INTO gone VALUES (1); TRUNCATE gone; DROP TABLE gone")
        q("DELETE FROM docs WHERE id % 7 = 0")
        q("VACUUM FREEZE docs")
        q("ANALYZE docs")

        # Savepoints: rolled back and released subtransactions, and more than
        # 64 of them in one transaction, which makes the server log an
        # XACT_ASSIGNMENT record.
        q(
            "BEGIN; INSERT INTO copied VALUES (1, 'a'); SAVEPOINT a;"
            " INSERT INTO copied VALUES (2, 'b'); ROLLBACK TO a; SAVEPOINT b;"
            " INSERT INTO copied VALUES (3, 'c'); RELEASE b; COMMIT"
        )
        q(
            """DO $$ BEGIN
              FOR i IN 1..70 LOOP
                BEGIN INSERT INTO copied VALUES (i, 'sub'); EXCEPTION WHEN others THEN NULL; END;
              END LOOP; END $$"""
        )
        q("BEGIN; INSERT INTO copied VALUES (0, 'aborted'); ROLLBACK")

        # Two-phase commit, both outcomes.
        q("BEGIN; INSERT INTO copied VALUES (10, 'p1'); PREPARE TRANSACTION 'walstream_p1'")
        facts["prepared_xid_committed"] = int(
            q("SELECT transaction FROM pg_prepared_xacts WHERE gid = 'walstream_p1'")
        )
        q("COMMIT PREPARED 'walstream_p1'")
        q("BEGIN; INSERT INTO copied VALUES (11, 'p2'); PREPARE TRANSACTION 'walstream_p2'")
        facts["prepared_xid_aborted"] = int(
            q("SELECT transaction FROM pg_prepared_xacts WHERE gid = 'walstream_p2'")
        )
        q("ROLLBACK PREPARED 'walstream_p2'")

        facts["restore_point"] = LSN.parse(q("SELECT pg_create_restore_point('walstream_rp')"))
        facts["message"] = LSN.parse(
            q("SELECT pg_logical_emit_message(false, 'p', repeat('x', 20000))")
        )
        q("SELECT pg_logical_emit_message(true, 't', 'transactional')")

        # Full-page images with each compression the build supports: the
        # first change of a page after a checkpoint logs its image.
        compressions = []
        for method in ("off", "pglz", "lz4", "zstd"):
            try:
                q(f"SET wal_compression = '{method}'")
            except RuntimeError:
                continue
            compressions.append(method)
            q(
                f"CHECKPOINT; SET wal_compression = '{method}';"
                " UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 2000 = 0"
            )
        q("SELECT pg_switch_wal()")
        q("INSERT INTO copied VALUES (99, 'after switch')")
        q("SELECT pg_switch_wal()")

        # A crash that loses the tail of a record crossing into the next
        # segment: on restart the server overwrites it (OVERWRITE_CONTRECORD).
        init, end = _fill_segment_then_big_record(cluster)
        facts["crash_segments"] = (init, end)
        cluster.stop("immediate")
        os.unlink(cluster.datadir / "pg_wal" / end)
        cluster.start()
        q("INSERT INTO copied VALUES (100, 'after crash')")
        _pgbench(cluster, "-t", "20", "-c", "1", "-n")

        # Promotion: timeline 2 begins with END_OF_RECOVERY.
        cluster.stop("fast")
        (cluster.datadir / "standby.signal").touch()
        cluster.start()
        cluster.promote()
        for _ in range(200):
            if q("SELECT pg_is_in_recovery()") == "f":
                break
            time.sleep(0.05)
        q("INSERT INTO copied VALUES (200, 'timeline 2')")
        q("SELECT pg_switch_wal()")
        q("INSERT INTO copied VALUES (201, 'timeline 2 again')")
        cluster.stop("fast")

        history = (cluster.datadir / "pg_wal" / "00000002.history").read_text()
        switchpoint = LSN.parse(history.split("\t")[1])
        dest.mkdir(parents=True, exist_ok=True)
        names = []
        for path in sorted((cluster.datadir / "pg_wal").iterdir()):
            if path.is_file():
                shutil.copy(path, dest / path.name)
                names.append(path.name)
        segno = switchpoint // SEG_SIZE
        return WalSample(
            version=version,
            bindir=cluster.bindir,
            waldir=dest,
            first_segment=min(n for n in names if n.startswith("00000001") and len(n) == 24),
            switch_segment=f"00000002{segno // 4096:08X}{segno % 4096:08X}",
            switchpoint=switchpoint,
            compressions=compressions,
            facts=facts,
            seconds=time.monotonic() - started,
        )
    finally:
        cluster.destroy()
