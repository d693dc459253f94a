"""The walsender's side of the result codec: byte-identical to real 15, 16 and 18 walsenders.

Each real server's answer is captured frame by frame (tests/rawwire.py); the
values it carries (system identifier, positions) are read back with the
client's parsers, re-encoded with the sender's encoders, and the bytes must
be the server's. Round trips without a server check that whatever the
encoders produce, the client side reads back the same values.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from walstream import LSN
from walstream.protocol import messages as m
from walstream.protocol.commands import (
    IdentifySystem,
    NextTimeline,
    QueryResult,
    ReplicationSlot,
    ResultSet,
    SlotPosition,
    TimelineHistory,
    command_complete,
    data_directory_mode_text,
    read_replication_slot_result,
    show_result,
    start_replication_end,
    timeline_history_fields,
    timeline_history_missing,
    wal_segment_size_text,
)
from walstream.protocol.repl_gram import ReplicationCommandError

from .pgcluster import PgCluster, wait_until
from .rawwire import Frame, RawSession

VERSIONS = (150000, 160000, 170000, 180000)


def _result_frames(frames: list[Frame]) -> list[Frame]:
    """The frames of a result: everything before ReadyForQuery."""
    assert frames[-1].type == b"Z"
    return frames[:-1]


def _raw(frames: list[Frame]) -> bytes:
    return b"".join(f.raw for f in _result_frames(frames))


def _query_result(frames: list[Frame]) -> QueryResult:
    """What walstream's client makes of a result (as ReplicationConnection collects it)."""
    columns: tuple[str, ...] = ()
    rows: list[tuple[bytes | None, ...]] = []
    tag = ""
    for frame in _result_frames(frames):
        msg = frame.decode()
        if isinstance(msg, m.RowDescription):
            columns = msg.names
        elif isinstance(msg, m.DataRow):
            rows.append(msg.values)
        elif isinstance(msg, m.CommandComplete):
            tag = msg.tag
    return QueryResult(columns, tuple(rows), tag)


def _error(frames: list[Frame]) -> tuple[str, str]:
    (msg,) = [f.decode() for f in frames if f.type == b"E"]
    assert isinstance(msg, m.ErrorResponse)
    return msg.sqlstate, msg.message


@pytest.fixture
def session(pg_server: PgCluster) -> Iterator[RawSession]:
    with RawSession(pg_server) as s:
        yield s


def test_identify_system(session: RawSession, pg_server: PgCluster) -> None:
    frames = session.query("IDENTIFY_SYSTEM")
    system = IdentifySystem.from_result(_query_result(frames))
    assert system.systemid == int(
        pg_server.psql("SELECT system_identifier FROM pg_control_system()")
    )
    assert system.to_result(server_version=session.server_version).encode() == _raw(frames)
    # The timeline column: int4 on 15, int8 from 16.
    description = frames[0].decode()
    assert isinstance(description, m.RowDescription)
    expected_type = 20 if pg_server.version >= 16 else 23
    assert description.fields[1].type_oid == expected_type


def test_show(session: RawSession, pg_server: PgCluster) -> None:
    segment_size = int(
        pg_server.psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
    )
    mode = os.stat(pg_server.datadir).st_mode
    settings = {
        "wal_segment_size": wal_segment_size_text(segment_size),
        "data_directory_mode": data_directory_mode_text(mode),
        "DateStyle": pg_server.psql("SHOW DateStyle"),
        "server_version": session.parameters["server_version"],
    }
    for requested in ("wal_segment_size", "data_directory_mode", '"DATESTYLE"', "server_version"):
        frames = session.query(f"SHOW {requested}")
        assert show_result(requested.strip('"'), settings).encode() == _raw(frames), requested
    frames = session.query("SHOW no_such.setting")
    with pytest.raises(ReplicationCommandError) as info:
        show_result("no_such.setting", settings)
    assert (info.value.sqlstate, info.value.message) == _error(frames)


def test_slot_results(session: RawSession, pg_server: PgCluster) -> None:
    version = session.server_version
    frames = session.query("CREATE_REPLICATION_SLOT enc_t TEMPORARY PHYSICAL (RESERVE_WAL)")
    slot = ReplicationSlot.from_result(_query_result(frames))
    assert slot == ReplicationSlot("enc_t", LSN(0), None, None)
    assert slot.to_result().encode() == _raw(frames)

    frames = session.query("READ_REPLICATION_SLOT enc_t")
    position = SlotPosition.from_result(_query_result(frames))
    assert position is not None
    restart_lsn = pg_server.psql(
        "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'enc_t'"
    )
    assert position == SlotPosition("physical", LSN.parse(restart_lsn), 1)
    assert position.to_result().encode() == _raw(frames)

    frames = session.query("READ_REPLICATION_SLOT enc_missing")
    assert read_replication_slot_result(None).encode() == _raw(frames)

    name = f"enc_p{version}"
    frames = session.query(f"CREATE_REPLICATION_SLOT {name} PHYSICAL")
    assert ReplicationSlot(name, LSN(0), None, None).to_result().encode() == _raw(frames)
    frames = session.query(f"READ_REPLICATION_SLOT {name}")
    no_wal = SlotPosition("physical", None, None)
    assert SlotPosition.from_result(_query_result(frames)) == no_wal
    assert no_wal.to_result().encode() == _raw(frames)
    frames = session.query(f"DROP_REPLICATION_SLOT {name}")
    assert command_complete("DROP_REPLICATION_SLOT").encode() == _raw(frames)


def test_missing_timeline_history(session: RawSession) -> None:
    frames = session.query("TIMELINE_HISTORY 2")
    # The RowDescription goes out before the file is opened (typmod 0 on 15, -1 after).
    assert (
        frames[0].raw == m.RowDescription(timeline_history_fields(session.server_version)).encode()
    )
    missing = timeline_history_missing(2)
    assert (missing.sqlstate, missing.message) == _error(frames)


@pytest.mark.parametrize("version", [15, 16, 18])
def test_timeline_results(version: int, pg_factory: Callable[..., PgCluster]) -> None:
    """A promoted standby: its history file, and the end of the old timeline."""
    primary = pg_factory(version)
    standby = primary.make_standby()
    primary.psql("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
    standby.wait_for_replay(primary.current_lsn())
    standby.promote()
    wait_until(lambda: standby.psql("SELECT pg_is_in_recovery()") == "f", what="promotion")
    content = (standby.datadir / "pg_wal" / "00000002.history").read_bytes()
    switch = LSN.parse(content.split(b"\t")[1].decode())
    segment_size = 16 << 20

    with RawSession(standby) as session:
        server_version = session.server_version
        frames = session.query("IDENTIFY_SYSTEM")
        system = IdentifySystem.from_result(_query_result(frames))
        assert system.timeline == 2
        assert system.to_result(server_version=server_version).encode() == _raw(frames)

        frames = session.query("TIMELINE_HISTORY 2")
        history = TimelineHistory.for_timeline(2, content)
        assert TimelineHistory.from_result(_query_result(frames), 2) == history
        assert history.to_result(server_version=server_version).encode() == _raw(frames)

        end = b"".join(r.encode() for r in start_replication_end(NextTimeline(2, switch)))
        # Exactly at the switch point: no COPY, only the result and the tags.
        frames = session.query(f"START_REPLICATION {switch} TIMELINE 1")
        assert _raw(frames) == end
        # Before it: the old timeline streams up to the switch, then the same.
        start = LSN(switch - switch % segment_size)
        frames = session.query(f"START_REPLICATION {start} TIMELINE 1")
        assert [f.type for f in frames[:2]] == [b"W", b"c"]
        assert _raw(frames[2:]) == end
        # On the current timeline the client ends the stream: only the tags.
        frames = session.query(f"START_REPLICATION {system.xlogpos}", follow_copy=False)
        assert [f.type for f in frames[:2]] == [b"W", b"c"]
        assert _raw(frames[2:]) == b"".join(r.encode() for r in start_replication_end(None))


def test_value_texts() -> None:
    assert wal_segment_size_text(16 << 20) == "16MB"
    assert wal_segment_size_text(1 << 20) == "1MB"
    assert wal_segment_size_text(1 << 30) == "1GB"
    assert data_directory_mode_text(0o40700) == "0700"
    assert data_directory_mode_text(0o750) == "0750"


def test_show_with_one_megabyte_segments(pg_factory: Callable[..., PgCluster]) -> None:
    cluster = pg_factory(15, wal_segsize_mb=1)
    with RawSession(cluster) as session:
        frames = session.query("SHOW wal_segment_size")
    settings = {"wal_segment_size": wal_segment_size_text(1 << 20)}
    assert show_result("wal_segment_size", settings).encode() == _raw(frames)


# -- round trips, without a server ---------------------------------------------


def _decode(result: ResultSet) -> QueryResult:
    """Frame by frame, as a client reads it."""
    data = result.encode()
    columns: tuple[str, ...] = ()
    rows = []
    tag = ""
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        msg = m.decode_backend(data[pos], data[pos + 5 : pos + 1 + length])
        pos += 1 + length
        if isinstance(msg, m.RowDescription):
            columns = msg.names
        elif isinstance(msg, m.DataRow):
            rows.append(msg.values)
        elif isinstance(msg, m.CommandComplete):
            tag = msg.tag
    assert result.to_query_result() == QueryResult(columns, tuple(rows), tag)
    return QueryResult(columns, tuple(rows), tag)


lsns = st.integers(0, 2**64 - 1).map(LSN)
timelines = st.integers(1, 2**32 - 1)
names = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=63)


@given(st.integers(0, 2**64 - 1), timelines, lsns, st.none() | names, st.sampled_from(VERSIONS))
def test_identify_system_round_trip(
    systemid: int, timeline: int, xlogpos: LSN, dbname: str | None, version: int
) -> None:
    system = IdentifySystem(systemid, timeline, xlogpos, dbname)
    result = _decode(system.to_result(server_version=version))
    assert IdentifySystem.from_result(result) == system
    assert result.command_tag == "IDENTIFY_SYSTEM"


@given(timelines, st.binary(max_size=300), st.sampled_from(VERSIONS))
def test_timeline_history_round_trip(timeline: int, content: bytes, version: int) -> None:
    history = TimelineHistory.for_timeline(timeline, content)
    result = _decode(history.to_result(server_version=version))
    assert TimelineHistory.from_result(result, timeline) == history


@given(names, st.none() | lsns, st.none() | names, st.none() | names)
def test_create_replication_slot_round_trip(
    name: str, point: LSN | None, snapshot: str | None, plugin: str | None
) -> None:
    slot = ReplicationSlot(name, point, snapshot, plugin)
    assert ReplicationSlot.from_result(_decode(slot.to_result())) == slot


@given(
    st.none()
    | st.builds(SlotPosition, st.just("physical"), st.none() | lsns, st.none() | timelines)
)
def test_read_replication_slot_round_trip(position: SlotPosition | None) -> None:
    assert SlotPosition.from_result(_decode(read_replication_slot_result(position))) == position


@given(timelines, lsns)
def test_next_timeline_round_trip(timeline: int, start: LSN) -> None:
    following = NextTimeline(timeline, start)
    first, last = start_replication_end(following)
    assert NextTimeline.from_result(_decode(first)) == following
    assert (first.tag, last.tag, last.fields) == ("START_STREAMING", "START_REPLICATION", None)


@given(names, st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=40))
def test_show_round_trip(name: str, value: str) -> None:
    shouted = "".join(c.upper() if c.isascii() else c for c in name)  # GUC names fold ASCII only
    result = _decode(show_result(shouted, {name: value}))
    assert result.columns == (name,)
    assert result.rows == [(value,)]
    assert result.command_tag == "SHOW"
