"""Recovery targets against real PostgreSQL recoveries (15, 16, 18).

Per version, one primary with 1 MB segments writes WAL after a base backup:
commits, aborts, a prepared transaction committed later, one rolled back,
two restore points with the same name. The segments are copied to an
"archive" directory. For each target the base backup is restored with
``restore_command = 'cp <archive>/%f %p'``, the target and
``recovery_target_action = 'pause'``; once the server says it is paused,
its pg_last_wal_replay_lsn(), pg_last_xact_replay_timestamp() and its
"recovery stopping ..." log line are compared with what
:class:`~walstream.wal.replay.ReplayState` reports over the same WAL. Targets
the WAL never reaches, and one before the backup's consistent point, must
fail in walstream with the message the server dies with.

All recoveries of a version run in one module-scoped fixture, three at a
time (each is a small copy of the backup and a short replay).
"""

from __future__ import annotations

import concurrent.futures
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from walstream.errors import RecoveryTargetUnreachable
from walstream.lsn import LSN
from walstream.pgtypes import pg_usecs
from walstream.wal.decoder import WalDecoder
from walstream.wal.recovery import RecoveryTarget
from walstream.wal.replay import ReplayState
from walstream.wal.rmgr import XactRecord

from .conftest import require_version
from .pgcluster import VERSIONS, PgCluster, wait_until

SEG = 1 << 20
EPOCH_1970 = datetime(1970, 1, 1, tzinfo=UTC)
UNREACHABLE = "recovery ended before configured recovery target was reached"
BEFORE_CONSISTENT = "requested recovery stop point is before consistent recovery point"

# Each case: how to build its target from the workload (see _targets).
CASES = [
    "lsn_at_commit",
    "lsn_at_commit_excl",
    "lsn_mid_record",
    "lsn_mid_record_excl",
    "xid_commit",
    "xid_commit_excl",
    "xid_abort",
    "xid_abort_excl",
    "xid_commit_prepared",
    "xid_commit_prepared_excl",
    "xid_abort_prepared",
    "xid_full_form",
    "xid_octal_form",
    "time_at_commit",
    "time_at_commit_excl",
    "time_before_abort",
    "name_first_of_two",
    "immediate",
    "before_consistency",
    "beyond_end",
]
FAILING = {"before_consistency": BEFORE_CONSISTENT, "beyond_end": UNREACHABLE}


@dataclass
class Outcome:
    """What the real server reported (or the FATAL it ended with)."""

    replay_lsn: LSN | None = None
    xact_usecs: int | None = None  # pg_last_xact_replay_timestamp, µs since 1970
    stop_line: str | None = None  # the "recovery stopping ..." LOG message
    fatal: str | None = None


@dataclass
class Oracle:
    version: int
    archive: Path
    redo: LSN
    end: LSN
    targets: dict[str, RecoveryTarget]
    raw: dict[str, dict[str, str]] = field(default_factory=dict)  # setting text, as given
    outcomes: dict[str, Outcome] = field(default_factory=dict)


def _xact(primary: PgCluster, sql: str, end: str = "COMMIT") -> int:
    out = primary.psql(f"SELECT pg_sleep(0.002); BEGIN; {sql}; SELECT txid_current(); {end}")
    return int(out.splitlines()[-1])


def _records(archive: Path, redo: LSN, end: LSN) -> list[tuple[LSN, object]]:
    dec = WalDecoder(redo, SEG)
    out: list[tuple[LSN, object]] = []
    for path in sorted(archive.iterdir()):
        segno = int(path.name[8:16], 16) * (0x100000000 // SEG) + int(path.name[16:], 16)
        dec.feed(segno * SEG, path.read_bytes())
        out += [(rec.lsn, rec.payload() if rec.rmid <= 1 else None) for rec in dec.records()]
    assert dec.position <= end
    return out


def _raw_settings(xids: dict[str, int]) -> dict[str, dict[str, str]]:
    """Text forms PostgreSQL reads in its own way: a FullTransactionId (epoch 1), octal."""
    return {
        "xid_full_form": {"recovery_target_xid": str((1 << 32) + xids["c2"])},
        "xid_octal_form": {"recovery_target_xid": "0" + format(xids["c2"], "o")},
    }


def _targets(
    recs: list[tuple[LSN, object]], xids: dict[str, int], redo: LSN
) -> dict[str, RecoveryTarget]:
    ends = {p.xid: (lsn, p) for lsn, p in recs if isinstance(p, XactRecord) and p.kind != "PREPARE"}
    c1, c2 = ends[xids["c1"]], ends[xids["c2"]]
    a1 = ends[xids["a1"]]
    assert ends[xids["p1"]][1].kind == "COMMIT_PREPARED"
    assert ends[xids["p2"]][1].kind == "ABORT_PREPARED"
    assert a1[1].kind == "ABORT"
    mid = LSN(a1[0] + 8)  # inside the abort record: the next record is the first at or after
    t = RecoveryTarget
    return {
        "lsn_at_commit": t.at_lsn(c2[0]),
        "lsn_at_commit_excl": t.at_lsn(c2[0], inclusive=False),
        "lsn_mid_record": t.at_lsn(mid),
        "lsn_mid_record_excl": t.at_lsn(mid, inclusive=False),
        "xid_commit": t.at_xid(xids["c2"]),
        "xid_commit_excl": t.at_xid(xids["c2"], inclusive=False),
        "xid_abort": t.at_xid(xids["a1"]),
        "xid_abort_excl": t.at_xid(xids["a1"], inclusive=False),
        "xid_commit_prepared": t.at_xid(xids["p1"]),
        "xid_commit_prepared_excl": t.at_xid(xids["p1"], inclusive=False),
        "xid_abort_prepared": t.at_xid(xids["p2"]),
        **{case: t.from_settings(raw) for case, raw in _raw_settings(xids).items()},
        "time_at_commit": t.at_time(c2[1].xact_time),
        "time_at_commit_excl": t.at_time(c2[1].xact_time, inclusive=False),
        # The first transaction end after c1 is an abort: aborts count for time targets.
        "time_before_abort": t.at_time(c1[1].xact_time),
        "name_first_of_two": RecoveryTarget("name", "rp_dup", inclusive=False),
        "immediate": t.immediate(),
        "before_consistency": t.at_lsn(redo),
        "beyond_end": t.at_name("never_created"),
    }


def _conf_value(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _recover(primary: PgCluster, backup: Path, oracle: Oracle, case: str) -> Outcome:
    target = oracle.targets[case]
    given = target.settings() | oracle.raw.get(case, {})
    settings = {k: _conf_value(v) for k, v in given.items()}
    settings |= {
        "restore_command": _conf_value(f"cp {oracle.archive}/%f %p"),
        "timezone": "'UTC'",
        "log_timezone": "'UTC'",
    }
    c = PgCluster.from_backup(
        oracle.version, backup, primary.base, name=f"r_{case}", conf=settings, signal="recovery"
    )
    try:
        started = c.start(check=False)
        out = Outcome()
        if case in FAILING:
            wait_until(
                lambda: (
                    f"FATAL:  {FAILING[case]}" in c.log_path.read_text()
                    and not (c.datadir / "postmaster.pid").exists()
                ),
                what=f"the server to refuse {case}",
            )
            out.fatal = FAILING[case]
        else:
            assert started, c.log_tail()
            wait_until(
                lambda: c.psql("SELECT pg_get_wal_replay_pause_state()") == "paused",
                what=f"recovery to pause at {case}",
            )
            out.replay_lsn = LSN.parse(c.psql("SELECT pg_last_wal_replay_lsn()"))
            usecs = c.psql(
                "SELECT (extract(epoch FROM pg_last_xact_replay_timestamp()) * 1000000)::bigint"
            )
            out.xact_usecs = int(usecs) if usecs else None
        lines = [ln for ln in c.log_path.read_text().splitlines() if "recovery stopping" in ln]
        if lines:
            out.stop_line = lines[0].split("LOG:  ", 1)[1]
        return out
    finally:
        c.running = True  # stop whatever may still run, even after a failed pg_ctl -w
        c.destroy()


@pytest.fixture(scope="module", params=VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
def oracle(request: pytest.FixtureRequest) -> Iterator[Oracle]:
    version: int = request.param
    require_version(version)
    primary = PgCluster.create(
        version, wal_segsize_mb=1, conf={"timezone": "'UTC'", "log_timezone": "'UTC'"}
    )
    try:
        primary.psql("CREATE TABLE t(x int)")
        backup = primary.base_backup(primary.base / "backup", "-X", "none")
        label = (backup / "backup_label").read_text()
        m = re.search(r"START WAL LOCATION: (\S+)", label)
        assert m is not None, label
        redo = LSN.parse(m.group(1))
        xids = {
            "c1": _xact(primary, "INSERT INTO t VALUES (1)"),
            "a1": _xact(primary, "INSERT INTO t VALUES (2)", "ROLLBACK"),
            "p1": _xact(primary, "INSERT INTO t VALUES (3)", "PREPARE TRANSACTION 'p1'"),
        }
        primary.psql("SELECT pg_create_restore_point('rp_dup')")
        xids["c2"] = _xact(primary, "INSERT INTO t VALUES (4)")
        primary.psql("SELECT pg_create_restore_point('rp_dup')")
        primary.psql("SELECT pg_sleep(0.002)")
        primary.psql("COMMIT PREPARED 'p1'")
        xids["p2"] = _xact(primary, "INSERT INTO t VALUES (5)", "PREPARE TRANSACTION 'p2'")
        primary.psql("SELECT pg_sleep(0.002)")
        primary.psql("ROLLBACK PREPARED 'p2'")
        xids["c3"] = _xact(primary, "INSERT INTO t VALUES (6)")
        switch = LSN.parse(primary.psql("SELECT pg_switch_wal()"))
        end = LSN((switch - 1) // SEG * SEG + SEG)  # the switch segment is now complete
        primary.stop()
        archive = primary.base / "archive"
        archive.mkdir()
        per = 0x100000000 // SEG
        for segno in range(redo // SEG, end // SEG):
            name = f"{1:08X}{segno // per:08X}{segno % per:08X}"
            shutil.copy(primary.datadir / "pg_wal" / name, archive / name)
            (archive / name).chmod(0o644)  # restore_command runs as the service user
        oracle = Oracle(version, archive, redo, end, {})
        oracle.targets = _targets(_records(archive, redo, end), xids, redo)
        oracle.raw = _raw_settings(xids)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = {case: pool.submit(_recover, primary, backup, oracle, case) for case in CASES}
            oracle.outcomes = {case: f.result() for case, f in futures.items()}
        yield oracle
    finally:
        primary.destroy()


def _replay(oracle: Oracle, target: RecoveryTarget) -> ReplayState:
    state = ReplayState(oracle.redo, SEG, target=target, backup_start=oracle.redo)
    per = 0x100000000 // SEG
    for path in sorted(oracle.archive.iterdir()):
        segno = int(path.name[8:16], 16) * per + int(path.name[16:], 16)
        state.feed(segno * SEG, path.read_bytes())
        state.advance(oracle.end)
    return state


def _usecs_1970(when: datetime | None) -> int | None:
    return None if when is None else pg_usecs(when) - pg_usecs(EPOCH_1970)


@pytest.mark.parametrize("case", CASES)
def test_target_stops_where_postgresql_stops(oracle: Oracle, case: str) -> None:
    target = oracle.targets[case]
    real = oracle.outcomes[case]
    state = _replay(oracle, target)
    reached = state.target_reached
    if case in FAILING:
        assert real.fatal == FAILING[case]
        with pytest.raises(RecoveryTargetUnreachable) as err:
            state.finish()
        assert err.value.message == FAILING[case]
        if case == "beyond_end":
            assert reached is None
            assert real.stop_line is None
        else:
            assert reached is not None
            assert reached.message == real.stop_line
        return
    assert reached is not None, f"walstream never reached {target}"
    assert state.finish() is reached
    assert reached.message == real.stop_line
    assert state.replay_lsn == reached.replay_lsn == real.replay_lsn
    assert _usecs_1970(state.last_xact_time) == real.xact_usecs
    # Nothing after the stop is replayed, whatever more WAL is fed.
    assert state.advance(oracle.end + SEG) == real.replay_lsn


def test_the_cases_land_where_intended(oracle: Oracle) -> None:
    """Guard the workload: each case exercises the rule it is named after."""

    def stop(case: str) -> tuple[bool, int | None, bool | None]:
        r = _replay(oracle, oracle.targets[case]).target_reached
        assert r is not None
        return r.after, r.xid, r.commit

    def xid_of(case: str) -> int:
        return oracle.targets[case].xid

    assert stop("xid_commit_prepared_excl") == (False, xid_of("xid_commit_prepared"), True)
    assert stop("xid_abort") == (True, xid_of("xid_abort"), False)
    assert stop("time_before_abort")[0::2] == (False, False)  # stops before an abort
    at_commit = _replay(oracle, oracle.targets["lsn_at_commit"]).target_reached
    assert at_commit is not None
    assert at_commit.lsn == oracle.targets["lsn_at_commit"].lsn
    assert oracle.outcomes["lsn_at_commit"].xact_usecs != _usecs_1970(
        oracle.targets["time_at_commit"].time
    ), "an inclusive LSN stop on a commit does not report that commit's time"


TIMESTAMP_FORMS = [
    "2026-12-01 10:00:00+00",
    "2026-12-01 10:00:00.123+00",
    "2026-12-01 10:00:00.000001+00",
    "2026-12-01 10:00:00.9999999Z",
    "2026-12-01T11:00:00+01",
    "2026-12-01 11:30:00 +01:30",
    "2026-12-01 05:00:00-0500",
    "2026-12-01 05:00:00-05:00:30",
    "2026-12-01 10:00 UTC",
    "2026-12-01 10:00:00 GMT",
    "2026-06-01 11:00:00 Europe/Paris",
    "2026-12-01 11:00:00 Europe/Paris",
    "2026-12-01 10:00:00",
    "2026-12-01",
    "1999-12-31 23:59:59.5-15:59",
]
LSN_FORMS = ["0/16B3748", "16/0000000A", "FFFFFFFF/FFFFFFFF", "0/0", "0/", " 0/1", "0/123456789"]
BOOL_FORMS = ["on", "of", "off", "t", "tr", "yes", "y", "n", "1", "0", "o", "maybe"]


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def test_text_forms_agree_with_postgresql(pg_server: PgCluster) -> None:
    """What walstream accepts, the server's own input functions read the same way."""
    from walstream.errors import RecoveryTargetError
    from walstream.wal.recovery import parse_bool, parse_lsn, parse_timestamptz

    values = ", ".join(
        f"(extract(epoch FROM {_sql_text(t)}::timestamptz) * 1000000)::bigint"
        for t in TIMESTAMP_FORMS
    )
    out = pg_server.psql(f"SET timezone = 'UTC'; SELECT {values}").split("|")
    for text, usecs in zip(TIMESTAMP_FORMS, out, strict=True):
        assert _usecs_1970(parse_timestamptz(text)) == int(usecs), text
    for text in LSN_FORMS:
        try:
            real: str | None = pg_server.psql(f"SELECT {_sql_text(text)}::pg_lsn")
        except RuntimeError:
            real = None
        try:
            ours: str | None = str(parse_lsn(text))
        except RecoveryTargetError:
            ours = None
        assert ours == real, text
    for text in BOOL_FORMS:
        try:
            real_b: bool | None = pg_server.psql(f"SELECT {_sql_text(text)}::boolean") == "t"
        except RuntimeError:
            real_b = None
        try:
            ours_b: bool | None = parse_bool(text)
        except RecoveryTargetError:
            ours_b = None
        assert ours_b == real_b, text
