"""Replication command text and result parsing, without a server."""

from __future__ import annotations

import pytest

from walstream import LSN, ProtocolViolation
from walstream.protocol import commands as c
from walstream.protocol.commands import QueryResult


def _result(columns: tuple[str, ...], *rows: tuple[bytes | None, ...]) -> QueryResult:
    return QueryResult(columns, tuple(rows), "TAG")


def test_command_text() -> None:
    assert c.start_replication(LSN(0x1_0000_0000)) == "START_REPLICATION PHYSICAL 1/0"
    assert (
        c.start_replication(LSN(0x16B374D848), timeline=3, slot='my"slot')
        == 'START_REPLICATION SLOT "my""slot" PHYSICAL 16/B374D848 TIMELINE 3'
    )
    assert c.create_replication_slot("s", server_version=150018) == (
        'CREATE_REPLICATION_SLOT "s" PHYSICAL'
    )
    assert c.create_replication_slot(
        "s", temporary=True, reserve_wal=True, server_version=150018
    ) == ('CREATE_REPLICATION_SLOT "s" TEMPORARY PHYSICAL (RESERVE_WAL)')
    assert c.create_replication_slot("s", reserve_wal=True, server_version=140010) == (
        'CREATE_REPLICATION_SLOT "s" PHYSICAL RESERVE_WAL'
    )
    assert c.drop_replication_slot("s", wait=True) == 'DROP_REPLICATION_SLOT "s" WAIT'
    assert c.read_replication_slot("s") == 'READ_REPLICATION_SLOT "s"'


def test_identify_system() -> None:
    result = _result(
        ("systemid", "timeline", "xlogpos", "dbname"),
        (b"7312345678901234567", b"2", b"0/3000148", None),
    )
    system = c.IdentifySystem.from_result(result)
    assert system == c.IdentifySystem(7312345678901234567, 2, LSN(0x3000148), None)


@pytest.mark.parametrize(
    "rows",
    [
        (),
        ((b"1", b"1", b"0/0", None), (b"1", b"1", b"0/0", None)),
        ((b"x", b"1", b"0/0", None),),
        ((b"1", b"1", b"nonsense", None),),
        ((None, b"1", b"0/0", None),),
    ],
)
def test_identify_system_rejects_bad_rows(rows: tuple[tuple[bytes | None, ...], ...]) -> None:
    with pytest.raises(ProtocolViolation):
        c.IdentifySystem.from_result(_result(("a", "b", "c", "d"), *rows))


def test_timeline_history_name_must_match() -> None:
    good = _result(("filename", "content"), (b"00000002.history", b"1\t0/3000000\tx\n"))
    assert c.TimelineHistory.from_result(good, 2).content == b"1\t0/3000000\tx\n"
    evil = _result(("filename", "content"), (b"../../etc/passwd", b""))
    with pytest.raises(ProtocolViolation, match=r"expected '00000002\.history'"):
        c.TimelineHistory.from_result(evil, 2)


def test_read_replication_slot() -> None:
    missing = _result(("slot_type", "restart_lsn", "restart_tli"), (None, None, None))
    assert c.SlotPosition.from_result(missing) is None
    found = _result(("slot_type", "restart_lsn", "restart_tli"), (b"physical", b"0/1000028", b"1"))
    assert c.SlotPosition.from_result(found) == c.SlotPosition("physical", LSN(0x1000028), 1)


def test_next_timeline() -> None:
    result = _result(("next_tli", "next_tli_startpos"), (b"2", b"0/30000A0"))
    assert c.NextTimeline.from_result(result) == c.NextTimeline(2, LSN(0x30000A0))
