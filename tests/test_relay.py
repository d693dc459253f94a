"""`walstream relay` between a real primary and real hot standbys.

primary -> relay -> standby(s), on 15, 16 and 18: rows reach the standby
behind the relay; the primary lists the relay and the relay its standbys;
synchronous replication through the cascade (FIRST and ANY); hot-standby
feedback forwarded to the primary. Failover, crashes and retention are in
tests/test_relay_failures.py.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from .pgcluster import VERSIONS, PgCluster, wait_until
from .support.sender import RelayProcess, standby_behind

IDS = [f"pg{v}" for v in VERSIONS]


def _commit_in_background(primary: PgCluster, sql: str) -> subprocess.Popen[str]:
    psql = primary.program("psql")
    return subprocess.Popen(
        [str(psql), "-h", str(primary.socket_dir), "-p", str(primary.port), "-U", "postgres",
         "-XAtqc", sql, "postgres"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _waits_for_sync_rep(primary: PgCluster, proc: subprocess.Popen[str]) -> None:
    """The commit is waiting for synchronous replication (and has not returned)."""
    wait_until(
        lambda: primary.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
        ) == "1",
        what="a commit waiting for synchronous replication",
    )  # fmt: skip
    assert proc.poll() is None


def _relay(primary: PgCluster, tmp_path: Path, *args: str) -> RelayProcess:
    directory = tmp_path / "relay"
    directory.mkdir()
    return RelayProcess(
        directory, primary.conninfo("trust_user", application_name="relay"), "--synchronous", *args
    )


@pytest.mark.parametrize("version", VERSIONS, ids=IDS)
def test_rows_reach_a_standby_behind_the_relay_and_each_hop_lists_the_next(
    pg_factory, tmp_path: Path, version: int
) -> None:  # type: ignore[no-untyped-def]
    primary: PgCluster = pg_factory(version, wal_segsize_mb=1)
    primary.psql("CREATE TABLE t(x int)")
    with _relay(primary, tmp_path) as relay:
        standby = standby_behind(primary, relay, "behind")
        for i in range(3):
            primary.psql(f"INSERT INTO t SELECT g FROM generate_series(1, {1000 * (i + 1)}) g")
            primary.psql("SELECT pg_switch_wal()")
            want = primary.psql("SELECT count(*) FROM t")
            wait_until(lambda: standby.psql("SELECT count(*) FROM t") == want, what=f"round {i}")  # noqa: B023
        end = primary.current_lsn()
        row = primary.psql(
            "SELECT state, flush_lsn >= pg_current_wal_flush_lsn() FROM pg_stat_replication "
            "WHERE application_name = 'relay'"
        )
        wait_until(
            lambda: primary.psql(
                "SELECT flush_lsn >= pg_current_wal_flush_lsn() FROM pg_stat_replication "
                "WHERE application_name = 'relay'"
            ) == "t",
            what="the relay's flush on the primary",
        )  # fmt: skip
        assert row.startswith("streaming|")
        wait_until(
            lambda: any(
                c["application_name"] == "behind"
                and c["state"] == "streaming"
                and c["replay_lsn"] is not None
                and _lsn(c["replay_lsn"]) >= _lsn(end)
                for c in relay.status()["clients"]
            ),
            what="the standby's row in the relay's status, replayed to the end",
        )
        assert relay.status()["upstream"]["state"] == "streaming"


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return int(high, 16) << 32 | int(low, 16)


@pytest.mark.parametrize("version", VERSIONS, ids=IDS)
def test_a_commit_waits_for_the_standby_behind_the_cascade(
    pg_factory, tmp_path: Path, version: int
) -> None:  # type: ignore[no-untyped-def]
    primary: PgCluster = pg_factory(version, wal_segsize_mb=1)
    primary.psql("CREATE TABLE t(x int)")
    primary.set_conf(synchronous_standby_names="relay")
    with _relay(primary, tmp_path, "--synchronous-standby-names", "s1") as relay:
        standby = standby_behind(primary, relay, "s1")
        primary.psql("INSERT INTO t VALUES (1)")  # returns: s1 confirmed it through the relay
        wait_until(
            lambda: [c["sync_state"] for c in relay.status()["clients"]] == ["sync"],
            what="s1 listed as sync by the relay",
        )
        assert primary.psql(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'relay'"
        ) == "sync"  # fmt: skip
        standby.stop()
        commit = _commit_in_background(primary, "INSERT INTO t VALUES (2)")
        _waits_for_sync_rep(primary, commit)
        time.sleep(2)  # the relay has it durably; it is s1 the commit waits for
        assert commit.poll() is None
        standby.start()
        assert commit.wait(60) == 0, commit.stderr.read() if commit.stderr else ""
        wait_until(lambda: standby.psql("SELECT count(*) FROM t") == "2", what="row 2 on s1")


@pytest.mark.parametrize("version", VERSIONS, ids=IDS)
def test_any_1_of_two_standbys_does_not_wait_for_either_one(
    pg_factory, tmp_path: Path, version: int
) -> None:  # type: ignore[no-untyped-def]
    primary: PgCluster = pg_factory(version, wal_segsize_mb=1)
    primary.psql("CREATE TABLE t(x int)")
    primary.set_conf(synchronous_standby_names="relay")
    with _relay(primary, tmp_path, "--synchronous-standby-names", "ANY 1 (s1, s2)") as relay:
        s1 = standby_behind(primary, relay, "s1")
        s2 = standby_behind(primary, relay, "s2")
        primary.psql("INSERT INTO t VALUES (1)")
        wait_until(
            lambda: (
                sorted(c["sync_state"] for c in relay.status()["clients"]) == ["quorum", "quorum"]
            ),
            what="both standbys listed as quorum by the relay",
        )
        s1.stop()
        primary.psql("INSERT INTO t VALUES (2)")  # s2 alone is enough
        s1.start()
        s2.stop()
        primary.psql("INSERT INTO t VALUES (3)")  # and s1 alone
        wait_until(lambda: s1.psql("SELECT count(*) FROM t") == "3", what="rows on s1")
        s1.stop()
        commit = _commit_in_background(primary, "INSERT INTO t VALUES (4)")
        _waits_for_sync_rep(primary, commit)  # neither: it waits
        s2.start()
        assert commit.wait(60) == 0


@pytest.mark.parametrize("version", VERSIONS, ids=IDS)
def test_hot_standby_feedback_reaches_the_primary_through_the_relay(
    pg_factory, tmp_path: Path, version: int
) -> None:  # type: ignore[no-untyped-def]
    primary: PgCluster = pg_factory(version, wal_segsize_mb=1)
    primary.psql("CREATE TABLE t(x int)")
    with _relay(primary, tmp_path) as relay:
        standby = standby_behind(primary, relay, "fb", hot_standby_feedback="on")
        primary.psql("INSERT INTO t VALUES (1)")
        wait_until(lambda: standby.psql("SELECT count(*) FROM t") == "1", what="row 1")
        psql = standby.program("psql")
        reader = subprocess.Popen(
            [str(psql), "-h", str(standby.socket_dir), "-p", str(standby.port), "-U", "postgres",
             "-XAtq", "postgres"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert reader.stdin is not None
        assert reader.stdout is not None
        try:
            reader.stdin.write(
                "BEGIN ISOLATION LEVEL REPEATABLE READ;\n"
                "SELECT txid_snapshot_xmin(txid_current_snapshot());\n"
            )
            reader.stdin.flush()
            snapshot_xmin = int(reader.stdout.readline())

            def relay_xmin() -> int | None:
                value = primary.psql(
                    "SELECT backend_xmin FROM pg_stat_replication WHERE application_name = 'relay'"
                )
                return int(value) if value else None

            wait_until(lambda: relay_xmin() is not None, what="the relay's xmin on the primary")
            for i in range(50):
                primary.psql(f"INSERT INTO t VALUES ({i})")  # each a new transaction id
            time.sleep(2)  # feedback goes out once per status interval
            held = relay_xmin()
            assert held is not None
            assert held <= snapshot_xmin & 0xFFFFFFFF
            reader.stdin.write("COMMIT;\n")
            reader.stdin.flush()
            wait_until(
                lambda: (relay_xmin() or 0) > snapshot_xmin & 0xFFFFFFFF,
                what="the relay's xmin advancing once the transaction ended",
            )
        finally:
            reader.stdin.close()
            reader.wait(30)
