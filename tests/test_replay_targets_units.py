"""Recovery target parsing and stopping-rule edge cases, without a server.

The WAL here is built with tests/walbuild.py (its layout is checked against
pg_waldump elsewhere), so that edge cases a server cannot be asked for on
demand are exact: several commits with the same timestamp, a PREPARE that
carries the target xid, a restore point whose time is past a time target,
a BACKUP_END of another backup, bytes that are not WAL right after the
target. The stopping rules themselves are checked against real recoveries
in test_recovery_targets.py.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from walstream.errors import RecoveryTargetError, RecoveryTargetUnreachable
from walstream.lsn import LSN
from walstream.pgtypes import pg_usecs
from walstream.wal.recovery import (
    RecoveryTarget,
    TargetReached,
    format_timestamptz,
    parse_bool,
    parse_lsn,
    parse_name,
    parse_timeline,
    parse_timestamptz,
    parse_xid,
)
from walstream.wal.replay import ReplayState

from .walbuild import WalWriter, noop, record

SEG = 1 << 20
T0 = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)
START = 0x1000000


def _us(seconds: float) -> int:
    return pg_usecs(T0) + round(seconds * 1_000_000)


def commit(xid: int, t: int) -> bytes:
    return record(1, 0x00, xid=xid, main_data=struct.pack("<q", t))


def abort(xid: int, t: int) -> bytes:
    return record(1, 0x20, xid=xid, main_data=struct.pack("<q", t))


def commit_prepared(xid: int, t: int, *, abort: bool = False) -> bytes:
    # xl_xid is 0: the prepared transaction's id is in the TWOPHASE payload.
    main = struct.pack("<qII", t, 0x10, xid)
    return record(1, (0x40 if abort else 0x30) | 0x80, xid=0, main_data=main)


def prepare(xid: int, t: int, gid: bytes = b"g1") -> bytes:
    fixed = struct.pack(
        "<IIIIqIiiiiiib1xHQq", 0x57F94534, 0, xid, 5, t, 10, 0, 0, 0, 0, 0, 0, 0, len(gid) + 1, 0, 0
    )
    fixed += b"\0" * (-len(fixed) % 8)
    body = gid + b"\0"
    return record(1, 0x10, xid=xid, main_data=fixed + body + b"\0" * (-len(body) % 8))


def restore_point(name: bytes, t: int) -> bytes:
    return record(0, 0x70, main_data=struct.pack("<q", t) + name.ljust(64, b"\0"))


def backup_end(start: int) -> bytes:
    return record(0, 0x50, main_data=struct.pack("<Q", start))


class Wal:
    """Synthetic WAL: records by label, their start and end LSNs."""

    def __init__(self, *items: tuple[str, bytes]) -> None:
        w = WalWriter(16, seg_size=SEG, start=START)
        self.lsn: dict[str, LSN] = {}
        self.end: dict[str, LSN] = {}
        w.add(noop(64))
        for label, rec in items:
            self.lsn[label] = LSN(w.add(rec))
            self.end[label] = LSN(w.pos)
        self.writer = w
        self.data = b"".join(w.segments()[segno] for segno in sorted(w.segments()))
        self.last = LSN(w.pos)

    def replay(
        self,
        target: RecoveryTarget | None,
        *,
        chunk: int | None = None,
        backup_start: int | None = None,
        durable: int | None = None,
    ) -> ReplayState:
        state = ReplayState(START, SEG, target=target, backup_start=backup_start)
        step = chunk or len(self.data)
        for i in range(0, len(self.data), step):
            state.feed(START + i, self.data[i : i + step])
            state.advance(self.last if durable is None else durable)
        return state


WORKLOAD = Wal(
    ("c1", commit(100, _us(1))),
    ("prep", prepare(101, _us(2))),
    ("a1", abort(102, _us(3))),
    ("rp1", restore_point(b"rp", _us(4))),
    ("c2", commit(103, _us(5))),
    ("c3", commit(104, _us(5))),  # same commit time as c2
    ("rp2", restore_point(b"rp", _us(6))),
    ("cp", commit_prepared(101, _us(7))),
    ("c4", commit(105, _us(8))),
)


def _time(state: ReplayState) -> int | None:
    return None if state.last_xact_time is None else pg_usecs(state.last_xact_time)


# -- stopping rules -----------------------------------------------------------------------


def test_without_a_target_everything_is_replayed() -> None:
    state = WORKLOAD.replay(None)
    assert state.replay_lsn == WORKLOAD.last
    assert state.target_reached is None
    assert state.finish() is None
    assert _time(state) == _us(8)
    unset = WORKLOAD.replay(RecoveryTarget.from_settings(timeline="2"))
    assert unset.target is None
    assert unset.replay_lsn == WORKLOAD.last


@pytest.mark.parametrize("label", ["c2", "a1", "rp1"])
def test_lsn_at_a_record_start(label: str) -> None:
    lsn = WORKLOAD.lsn[label]
    incl = WORKLOAD.replay(RecoveryTarget.at_lsn(lsn)).target_reached
    excl = WORKLOAD.replay(RecoveryTarget.at_lsn(lsn, inclusive=False)).target_reached
    assert incl is not None
    assert excl is not None
    assert (incl.after, incl.lsn, incl.replay_lsn) == (True, lsn, WORKLOAD.end[label])
    assert (excl.after, excl.lsn, excl.replay_lsn) == (False, lsn, lsn)
    assert incl.message == f'recovery stopping after WAL location (LSN) "{lsn}"'
    assert excl.message == f'recovery stopping before WAL location (LSN) "{lsn}"'
    assert excl.reason == f"before LSN {lsn}\n"


def test_lsn_inside_a_record_stops_at_the_next_one() -> None:
    inside = WORKLOAD.lsn["c2"] + 8
    incl = WORKLOAD.replay(RecoveryTarget.at_lsn(inside)).target_reached
    excl = WORKLOAD.replay(RecoveryTarget.at_lsn(inside, inclusive=False)).target_reached
    assert incl is not None
    assert excl is not None
    assert incl.lsn == excl.lsn == WORKLOAD.lsn["c3"]
    assert incl.replay_lsn == WORKLOAD.end["c3"]
    assert excl.replay_lsn == WORKLOAD.end["c2"]


def test_inclusive_lsn_on_a_commit_keeps_the_previous_transaction_time() -> None:
    """recoveryStopsAfter returns at the LSN check before it updates the last xact time."""
    state = WORKLOAD.replay(RecoveryTarget.at_lsn(WORKLOAD.lsn["c2"]))
    assert state.replay_lsn == WORKLOAD.end["c2"]
    assert state.xacts[103] == "COMMIT"  # the commit itself was replayed
    assert _time(state) == _us(3)  # but the time is still a1's
    later = WORKLOAD.replay(RecoveryTarget.at_lsn(WORKLOAD.lsn["rp2"]))
    assert _time(later) == _us(5)


def test_xid_prepare_does_not_count_commit_prepared_does() -> None:
    incl = WORKLOAD.replay(RecoveryTarget.at_xid(101))
    excl = WORKLOAD.replay(RecoveryTarget.at_xid(101, inclusive=False))
    assert incl.target_reached is not None
    assert excl.target_reached is not None
    assert incl.target_reached.lsn == excl.target_reached.lsn == WORKLOAD.lsn["cp"]
    assert incl.replay_lsn == WORKLOAD.end["cp"]
    assert excl.replay_lsn == WORKLOAD.end["rp2"]
    assert _time(incl) == _us(7)
    assert _time(excl) == _us(5)
    assert incl.target_reached.message == (
        "recovery stopping after commit of transaction 101, time 2026-12-01 10:00:07+00"
    )
    assert incl.target_reached.reason == "after transaction 101"


def test_xid_of_an_abort() -> None:
    r = WORKLOAD.replay(RecoveryTarget.at_xid(102, inclusive=False)).target_reached
    assert r is not None
    assert (r.after, r.commit, r.lsn, r.replay_lsn) == (
        False,
        False,
        WORKLOAD.lsn["a1"],
        WORKLOAD.end["prep"],
    )
    assert r.message.startswith("recovery stopping before abort of transaction 102, time ")


def test_abort_prepared_counts_for_xid() -> None:
    wal = Wal(("p", prepare(7, _us(1))), ("ap", commit_prepared(7, _us(2), abort=True)))
    r = wal.replay(RecoveryTarget.at_xid(7)).target_reached
    assert r is not None
    assert (r.lsn, r.after, r.commit) == (wal.lsn["ap"], True, False)


def test_time_equal_commit_times() -> None:
    """Inclusive stops after the last commit at that time, exclusive before the first."""
    at5 = T0 + timedelta(seconds=5)
    incl = WORKLOAD.replay(RecoveryTarget.at_time(at5))
    excl = WORKLOAD.replay(RecoveryTarget.at_time(at5, inclusive=False))
    assert incl.target_reached is not None
    assert excl.target_reached is not None
    # rp2 (time 6 > 5) is a restore point: it never stops a time target.
    assert incl.target_reached.lsn == WORKLOAD.lsn["cp"]
    assert incl.replay_lsn == WORKLOAD.end["rp2"]
    assert excl.target_reached.lsn == WORKLOAD.lsn["c2"]
    assert excl.replay_lsn == WORKLOAD.end["rp1"]
    assert not incl.target_reached.after
    assert not excl.target_reached.after
    assert incl.target_reached.reason == "before 2026-12-01 10:00:07+00\n"


def test_time_counts_aborts_but_not_prepares() -> None:
    r = WORKLOAD.replay(RecoveryTarget.at_time(T0 + timedelta(seconds=1.5))).target_reached
    assert r is not None
    assert (r.lsn, r.commit, r.xid) == (WORKLOAD.lsn["a1"], False, 102)


def test_name_stops_at_the_first_and_ignores_inclusive() -> None:
    for target in (RecoveryTarget.at_name("rp"), RecoveryTarget("name", "rp", inclusive=False)):
        state = WORKLOAD.replay(target)
        r = state.target_reached
        assert r is not None
        assert (r.lsn, r.after, r.replay_lsn) == (WORKLOAD.lsn["rp1"], True, WORKLOAD.end["rp1"])
        assert r.message == 'recovery stopping at restore point "rp", time 2026-12-01 10:00:04+00'
        assert r.reason == 'at restore point "rp"'
    assert WORKLOAD.replay(RecoveryTarget.at_name("r")).target_reached is None


def test_name_compares_the_stored_bytes() -> None:
    wal = Wal(("a", restore_point("café".encode(), _us(1))), ("b", restore_point(b"caf", _us(2))))
    r = wal.replay(RecoveryTarget.at_name("café")).target_reached
    assert r is not None
    assert r.lsn == wal.lsn["a"]
    assert r.name == "café"


def test_immediate_stops_after_this_backups_end() -> None:
    wal = Wal(
        ("other", backup_end(0x500000)),  # another backup's end: not ours
        ("c", commit(5, _us(1))),
        ("end", backup_end(START)),
        ("c2", commit(6, _us(2))),
    )
    state = wal.replay(RecoveryTarget.immediate(), backup_start=START)
    r = state.finish()
    assert r is not None
    assert (r.lsn, r.after, state.replay_lsn) == (wal.lsn["end"], True, wal.end["end"])
    assert r.message == "recovery stopping after reaching consistency"
    assert r.reason == "reached consistency"


def test_a_stop_before_consistency_is_refused() -> None:
    wal = Wal(("c", commit(5, _us(1))), ("end", backup_end(START)), ("c2", commit(6, _us(2))))
    early = wal.replay(RecoveryTarget.at_xid(5), backup_start=START)
    assert early.target_reached is not None
    assert not early.target_reached.consistent
    with pytest.raises(RecoveryTargetUnreachable, match="before consistent recovery point"):
        early.finish()
    late = wal.replay(RecoveryTarget.at_xid(6), backup_start=START)
    assert late.finish() is late.target_reached


def test_wal_ending_before_the_target() -> None:
    state = WORKLOAD.replay(RecoveryTarget.at_xid(999))
    assert state.replay_lsn == WORKLOAD.last
    with pytest.raises(RecoveryTargetUnreachable) as err:
        state.finish()
    assert str(err.value) == "recovery ended before configured recovery target was reached"
    assert err.value.lsn == WORKLOAD.last


@pytest.mark.parametrize("chunk", [8192, 1000, 24])
def test_chunks_and_durability_do_not_change_the_stop(chunk: int) -> None:
    whole = WORKLOAD.replay(RecoveryTarget.at_xid(104)).target_reached
    pieces = WORKLOAD.replay(RecoveryTarget.at_xid(104), chunk=chunk).target_reached
    assert whole == pieces


def test_nothing_past_durable_is_checked_or_replayed() -> None:
    target = RecoveryTarget.at_xid(104)
    state = ReplayState(START, SEG, target=target)
    state.feed(START, WORKLOAD.data)
    assert state.advance(WORKLOAD.end["c3"] - 1) == WORKLOAD.end["c2"]
    assert state.target_reached is None
    assert state.advance(WORKLOAD.end["c3"]) == WORKLOAD.end["c3"]
    assert state.target_reached is not None
    # Replay is over: more WAL and a later durable position change nothing.
    state.feed(START + len(WORKLOAD.data), b"\0" * 8192)
    assert state.advance(WORKLOAD.last + SEG) == WORKLOAD.end["c3"]


def test_wal_after_the_target_is_never_decoded() -> None:
    wal = Wal(("c", commit(5, _us(1))), ("c2", commit(6, _us(2))))
    cut = wal.end["c"] - START
    torn = bytearray(wal.data)
    torn[cut : cut + 64] = b"\xff" * 64  # garbage where the next record should be
    state = ReplayState(START, SEG, target=RecoveryTarget.at_xid(5))
    state.feed(START, bytes(torn))
    state.advance(wal.last)
    assert state.target_reached is not None
    assert state.stopped is None
    untargeted = ReplayState(START, SEG)
    untargeted.feed(START, bytes(torn))
    untargeted.advance(wal.last)
    assert untargeted.stopped is not None


# -- text forms ---------------------------------------------------------------------------


def test_parse_lsn() -> None:
    assert parse_lsn("0/16B3748") == LSN(0x16B3748)
    assert parse_lsn("16/0000000A") == LSN((0x16 << 32) | 10)
    for bad in ("", " 0/1", "0/1 ", "0/", "/1", "0/123456789", "g/1", "0x0/1", "0-1"):
        with pytest.raises(RecoveryTargetError, match='"recovery_target_lsn"'):
            parse_lsn(bad)


def test_parse_xid() -> None:
    assert parse_xid("123") == 123
    assert parse_xid("0x1F") == 31
    assert parse_xid("010") == 8  # strtoul base 0: octal, as PostgreSQL reads it
    assert parse_xid("0") == 0
    assert parse_xid(str((3 << 32) | 745)) == 745  # a FullTransactionId: epoch dropped
    for bad in ("", "abc", "12abc", "-1", "+1", "1.5", "08", str(1 << 64)):
        with pytest.raises(RecoveryTargetError, match='"recovery_target_xid"'):
            parse_xid(bad)


def test_parse_bool() -> None:
    for yes in ("on", "ON", "true", "t", "tr", "yes", "y", "1"):
        assert parse_bool(yes) is True
    for no in ("off", "of", "false", "f", "no", "n", "0"):
        assert parse_bool(no) is False
    for bad in ("", "o", "maybe", "2", "onn"):
        with pytest.raises(RecoveryTargetError, match="requires a Boolean value"):
            parse_bool(bad)


def test_parse_timeline() -> None:
    assert parse_timeline("latest") == "latest"
    assert parse_timeline("current") == "current"
    assert parse_timeline("3") == 3
    assert parse_timeline("0x10") == 16
    for bad in ("Latest", "0", "-1", "x", str(1 << 32)):
        with pytest.raises(RecoveryTargetError):
            parse_timeline(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01 10:00:00+00", T0),
        ("2026-12-01 10:00:00.123+00", T0 + timedelta(microseconds=123000)),
        ("2026-12-01 10:00:00.1234565+00", T0 + timedelta(microseconds=123456)),  # half even
        ("2026-12-01 10:00:00.9999999Z", T0 + timedelta(seconds=1)),
        ("2026-12-01T11:00:00+01", T0),
        ("2026-12-01 11:30:00 +01:30", T0),
        ("2026-12-01 05:00:00-0500", T0),
        ("2026-12-01 10:00 UTC", T0),
        ("2026-12-01 11:00:00 Europe/Paris", T0),
        ("2026-12-01 10:00:00", T0),  # no zone: the default (UTC)
        ("2026-12-01", T0 - timedelta(hours=10)),
    ],
)
def test_parse_timestamptz(text: str, expected: datetime) -> None:
    assert parse_timestamptz(text) == expected


def test_parse_timestamptz_default_zone_and_errors() -> None:
    paris = ZoneInfo("Europe/Paris")
    assert parse_timestamptz("2026-12-01 11:00:00", paris) == T0
    assert parse_timestamptz("2026-12-01 10:00:00+00", paris) == T0
    for bad in (
        "now",
        "today",
        "infinity",
        "2026-13-01 00:00:00",
        "2026-02-30",
        "2026-12-01 10:00:00 CET",
        "2026-12-01 10:00:00 Mars/Base",
        "2026-12-01 10:00:00+16",
        "12/01/2026",
        "",
    ):
        with pytest.raises(RecoveryTargetError, match='"recovery_target_time"'):
            parse_timestamptz(bad)


def test_format_timestamptz() -> None:
    assert format_timestamptz(T0) == "2026-12-01 10:00:00+00"
    assert format_timestamptz(T0 + timedelta(microseconds=120)) == "2026-12-01 10:00:00.00012+00"
    plus2 = timezone(timedelta(hours=2))
    assert format_timestamptz(datetime(2026, 12, 1, 12, tzinfo=plus2)) == "2026-12-01 10:00:00+00"


def test_parse_name_counts_bytes() -> None:
    assert parse_name("x" * 63) == "x" * 63
    assert parse_name("é" * 31) == "é" * 31  # 62 bytes
    for bad in ("x" * 64, "é" * 32, ""):
        with pytest.raises(RecoveryTargetError, match='"recovery_target_name"'):
            parse_name(bad)
    with pytest.raises(RecoveryTargetError, match=r"too long \(maximum 63 characters\)"):
        parse_name("y" * 64)


def test_from_settings() -> None:
    t = RecoveryTarget.from_settings(
        {"recovery_target_xid": "745", "recovery_target_inclusive": "off"},
        recovery_target_action="Promote",
        recovery_target_timeline="2",
    )
    assert (t.kind, t.value, t.inclusive, t.action, t.timeline) == ("xid", 745, False, "promote", 2)
    # The CLI's short names, None and "" for unset flags.
    t = RecoveryTarget.from_settings(
        lsn="0/3000060", xid=None, time="", name=None, inclusive="on", action="pause"
    )
    assert (t.kind, t.lsn, t.inclusive) == ("lsn", LSN(0x3000060), True)
    t = RecoveryTarget.from_settings(time="2026-12-01 11:00:00", timezone=ZoneInfo("Europe/Paris"))
    assert t.time == T0
    assert RecoveryTarget.from_settings(target="immediate").kind == "immediate"
    unset = RecoveryTarget.from_settings(timeline="current")
    assert (unset.kind, unset.is_set, unset.timeline) == ("unset", False, "current")


def test_from_settings_errors() -> None:
    with pytest.raises(RecoveryTargetError, match="multiple recovery targets specified") as err:
        RecoveryTarget.from_settings(lsn="0/1", name="rp")
    assert err.value.detail is not None
    assert err.value.detail.startswith("At most one of recovery_target,")
    with pytest.raises(ValueError, match='The only allowed value is "immediate"'):
        RecoveryTarget.from_settings(target="latest")
    with pytest.raises(RecoveryTargetError, match="unrecognized configuration parameter"):
        RecoveryTarget.from_settings(recovery_target_lns="0/1")
    with pytest.raises(RecoveryTargetError, match="recovery_target_action"):
        RecoveryTarget.from_settings(xid="1", action="stop")
    with pytest.raises(RecoveryTargetError, match="requires a Boolean value"):
        RecoveryTarget.from_settings(xid="1", inclusive="perhaps")


@pytest.mark.parametrize(
    "target",
    [
        RecoveryTarget.at_lsn("0/3000060", inclusive=False),
        RecoveryTarget.at_xid(745),
        RecoveryTarget.at_time(T0 + timedelta(microseconds=5)),
        RecoveryTarget.at_name("before upgrade"),
        RecoveryTarget("immediate", action="shutdown", timeline=3),
    ],
)
def test_settings_round_trip(target: RecoveryTarget) -> None:
    assert RecoveryTarget.from_settings(target.settings()) == target


def test_target_values_are_checked() -> None:
    with pytest.raises(ValueError, match="kind 'time'"):
        RecoveryTarget("time", datetime(2026, 12, 1))  # naive: ambiguous
    with pytest.raises(ValueError, match="kind 'xid'"):
        RecoveryTarget("xid", 1 << 32)
    with pytest.raises(ValueError, match="kind 'name'"):
        RecoveryTarget("name", "x" * 64)
    with pytest.raises(AttributeError):
        _ = RecoveryTarget.at_xid(1).lsn
    assert isinstance(RecoveryTarget("lsn", 5).value, LSN)


def test_out_of_range_times_print_as_infinity() -> None:
    r = TargetReached(
        target=RecoveryTarget.at_xid(1),
        after=True,
        lsn=LSN(8),
        end_lsn=LSN(40),
        replay_lsn=LSN(40),
        xid=1,
        time=None,
        time_raw=2**63 - 1,
        commit=True,
    )
    assert r.message == "recovery stopping after commit of transaction 1, time infinity"


def test_a_stop_before_the_first_record_reports_where_redo_began() -> None:
    first = LSN(START + 40)  # after the long page header: the filler record
    state = WORKLOAD.replay(RecoveryTarget.at_lsn(0, inclusive=False))
    assert state.target_reached is not None
    assert state.replay_lsn == state.target_reached.replay_lsn == first
    immediate = WORKLOAD.replay(RecoveryTarget.immediate())  # consistent from the start
    assert immediate.target_reached is not None
    assert not immediate.target_reached.after
    assert immediate.replay_lsn == first
