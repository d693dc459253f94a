"""The walsender session without a socket: walstream's own client against it, in memory.

The client side is the core's conversations (protocol/generators.py) on a
ClientConnection, exactly what ``walstream.connect`` runs; the server side
is a WalSenderSession over an in-memory WAL source. What real PostgreSQL
clients (a standby, pg_receivewal, psql) make of the sender is tested
against the running sender elsewhere (tests/test_sender_*.py with servers).
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any, TypeVar

import pytest

from walstream.errors import ServerError
from walstream.lsn import LSN
from walstream.protocol import commands, generators
from walstream.protocol import messages as m
from walstream.protocol.auth import Authenticator
from walstream.protocol.client import ClientConnection, ClientEvent
from walstream.protocol.commands import IdentifySystem, NextTimeline, SlotPosition
from walstream.protocol.generators import RECEIVE, Conversation
from walstream.protocol.replication import PrimaryKeepalive, StandbyStatusUpdate, XLogData
from walstream.sender.hba import parse_hba
from walstream.sender.passwords import make_scram_verifier
from walstream.sender.source import SegmentRemoved
from walstream.sender.walsender import (
    MAX_SEND_SIZE,
    ReplicationSlots,
    SenderCore,
    SenderSettings,
    WalSenderSession,
)
from walstream.wal.segment import HistoryEntry, parse_history, segment_name

T = TypeVar("T")
SEG = 1 << 20
SYSID = 7300000000000000001
START = LSN(2 * SEG)  # the oldest WAL there is
SWITCH = LSN(3 * SEG + 300_000)  # timeline 1 ends here; timeline 2 follows


class MemorySource:
    """WAL in memory: timeline 1 up to SWITCH, then timeline 2 (or only timeline 1)."""

    seg_size = SEG
    system_identifier = SYSID

    def __init__(self, end: int, *, promoted: bool = False, version: int = 160000) -> None:
        self.server_version = version
        self.end = LSN(end)
        self.promoted = promoted
        rng = random.Random(5)
        self.wal = rng.randbytes(5 * SEG - START)  # room for the end to move

    def refresh(self) -> bool:
        return False

    def timeline(self) -> int:
        return 2 if self.promoted else 1

    def end_of_wal(self) -> LSN:
        return self.end

    def history(self, timeline: int) -> list[HistoryEntry]:
        if timeline == 1:
            return []
        if timeline == 2 and self.promoted:
            return parse_history(self.history_file(2)[1])
        raise FileNotFoundError(timeline)

    def history_file(self, timeline: int) -> tuple[str, bytes]:
        if timeline == 2 and self.promoted:
            return "00000002.history", f"1\t{SWITCH}\tno recovery target specified\n".encode()
        raise FileNotFoundError(timeline)

    def read(self, timeline: int, start: LSN, size: int) -> bytes:
        if start < START:
            raise SegmentRemoved(segment_name(timeline, start // SEG, SEG))
        assert start // SEG == (start + size - 1) // SEG, "a read crosses a segment"
        return self.wal[start - START : min(start + size, self.end) - START]


class Pipe:
    """Client bytes into the session, the session's bytes into the client: no socket."""

    def __init__(self, core: SenderCore, *, address: Any = "127.0.0.1") -> None:
        import ipaddress

        self.now = 100.0
        addr = None if address is None else ipaddress.ip_address(address)
        self.session = WalSenderSession(core, address=addr, port=5555, now=self.now,
                                        wall_clock=1_700_000_000.0)  # fmt: skip
        self.client = ClientConnection()
        self.events: deque[ClientEvent] = deque()

    def pump(self) -> None:
        data = self.session.data_to_send()
        if data:
            self.events.extend(self.client.receive_data(data))

    def send(self, data: bytes) -> None:
        self.session.receive_data(data, self.now)
        self.pump()

    def run(self, conversation: Conversation[T]) -> T:
        answer: Any = None
        while True:
            try:
                need = conversation.send(answer)
            except StopIteration as stop:
                value: T = stop.value
                return value
            if isinstance(need, bytes):
                self.send(need)
                answer = None
            else:
                assert need is RECEIVE
                self.pump()
                assert self.events, "the session said nothing more"
                answer = self.events.popleft()

    def login(self, user: str = "rep", password: str | None = None, **extra: str) -> None:
        params = {"user": user, "database": "replication", "replication": "true", **extra}
        self.run(generators.startup(
            self.client, params, lambda cert: Authenticator(user, password),
            use_tls=False, tls_required=False, where="test",
        ))  # fmt: skip

    def query(self, sql: str) -> list[commands.QueryResult]:
        return self.run(generators.simple_query(self.client, sql))

    def take(self) -> list[ClientEvent]:
        self.pump()
        out = list(self.events)
        self.events.clear()
        return out


def core(source: MemorySource | None = None, *, hba: str = "host replication all all trust\n",
         **settings: Any) -> SenderCore:  # fmt: skip
    verifier = make_scram_verifier("secret")
    return SenderCore(
        source or MemorySource(4 * SEG + 5000),
        SenderSettings(hba=parse_hba(hba, "pg_hba.conf"), verifiers={"rep": verifier}, **settings),
        ReplicationSlots(),
    )


def test_startup_says_what_a_walsender_of_the_wals_version_says() -> None:
    for version, extra in ((150000, set()), (160000, {"scram_iterations"}),
                           (180000, {"scram_iterations", "search_path"})):  # fmt: skip
        pipe = Pipe(core(MemorySource(3 * SEG, version=version)))
        pipe.login(application_name="s1")
        params = pipe.client.parameters
        assert params["server_version"].startswith(f"{version // 10000}.0 (walstream")
        assert params["application_name"] == "s1"
        assert params["session_authorization"] == "rep"
        assert params["integer_datetimes"] == "on"  # pg_receivewal refuses a server without it
        assert extra <= set(params)
        assert pipe.client.backend_pid == pipe.session.pid


def test_identify_system_show_and_errors() -> None:
    pipe = Pipe(core())
    pipe.login()
    system = IdentifySystem.from_result(pipe.query("IDENTIFY_SYSTEM")[-1])
    assert (system.systemid, system.timeline, system.xlogpos) == (SYSID, 1, 4 * SEG + 5000)
    assert pipe.query("SHOW wal_segment_size")[-1].rows == [("1MB",)]
    assert pipe.query("SHOW data_directory_mode")[-1].rows == [("0700",)]
    for sql, sqlstate, words in [
        ("SHOW bogus", "42704", 'unrecognized configuration parameter "bogus"'),
        ("SELECT 1", "0A000", "cannot execute SQL commands in WAL sender for physical replication"),
        ("IDENTIFY_SYSTEM x", "42601", "syntax error"),
        ("TIMELINE_HISTORY 2", "58P01", 'could not open file "pg_wal/00000002.history"'),
        ("BASE_BACKUP", "0A000", "BASE_BACKUP is not supported by walstream"),
        ("CREATE_REPLICATION_SLOT l LOGICAL pgoutput", "55000", "logical decoding requires"),
    ]:
        with pytest.raises(ServerError) as e:
            pipe.query(sql)
        assert (e.value.sqlstate, words in e.value.message) == (sqlstate, True), e.value
    assert pipe.query("IDENTIFY_SYSTEM")  # the connection goes on after each ERROR


def _stream(pipe: Pipe, sql: str) -> list[ClientEvent]:
    assert pipe.run(generators.start_replication(pipe.client, sql)) is None  # COPY began
    return offer(pipe)


def offer(pipe: Pipe) -> list[ClientEvent]:
    """What the shell does: offer WAL while the session has more and the client keeps up."""
    events = pipe.take()
    while pipe.session.more_to_send:
        pipe.session.wal_available(pipe.now)
        events += pipe.take()
    return events


def test_streaming_cuts_xlogdata_as_walsender_does_and_sends_what_is_there() -> None:
    source = MemorySource(3 * SEG + 5000)
    pipe = Pipe(core(source))
    pipe.login()
    sent = [e for e in _stream(pipe, "START_REPLICATION 0/200000 TIMELINE 1")
            if isinstance(e, XLogData)]  # fmt: skip
    data = b"".join(e.data for e in sent)
    assert data == source.wal[: 3 * SEG + 5000 - START]
    assert sent[0].data_start == START
    for e in sent:
        assert len(e.data) <= MAX_SEND_SIZE
        assert e.data_end % 8192 == 0 or e.data_end in (3 * SEG + 5000, 3 * SEG)
        assert e.data_start // SEG == (e.data_end - 1) // SEG  # never across a segment
        assert e.wal_end == 3 * SEG + 5000
    source.end = LSN(3 * SEG + 9000)  # more WAL: sent when the shell says so
    pipe.session.wal_available(pipe.now)
    (more,) = [e for e in offer(pipe) if isinstance(e, XLogData)]
    assert (more.data_start, more.data_end) == (3 * SEG + 5000, 3 * SEG + 9000)
    row = pipe.session.status(0)
    assert (row.state, row.sent_lsn, row.write_lsn) == ("streaming", 3 * SEG + 9000, None)


def test_replies_keepalives_and_wal_sender_timeout() -> None:
    pipe = Pipe(core(wal_sender_timeout=10.0))
    pipe.login()
    _stream(pipe, "START_REPLICATION 0/200000 TIMELINE 1")
    session = pipe.session
    assert session.deadline() == pipe.now + 5.0  # a ping at half the timeout
    pipe.now += 5.0
    session.timer(pipe.now)
    (ping,) = pipe.take()
    assert isinstance(ping, PrimaryKeepalive)
    assert ping.reply_requested
    assert session.deadline() == pipe.now + 5.0  # then the timeout itself
    reply = StandbyStatusUpdate(LSN(3 * SEG), LSN(3 * SEG), LSN(0), 0, True)
    pipe.send(pipe.client.copy_data(reply.encode()))
    (answer,) = pipe.take()  # a reply requested is answered at once
    assert isinstance(answer, PrimaryKeepalive)
    assert not answer.reply_requested
    row = session.status(0)
    assert (row.write_lsn, row.flush_lsn, row.replay_lsn) == (3 * SEG, 3 * SEG, 0)
    assert session.deadline() == pipe.now + 5.0  # the reply reset the clock
    pipe.now += 10.0
    session.timer(pipe.now)
    assert session.closing  # dropped without a message, as walsender.c does
    assert session.close_reason == "terminating walsender process due to replication timeout"


def test_a_terminate_not_yet_handled_when_the_sender_stops() -> None:
    # The wire decodes as bytes arrive; the shell handles the events later. A
    # sender stopping in between has nothing more to say to that client.
    pipe = Pipe(core())
    pipe.login()
    _stream(pipe, "START_REPLICATION 0/200000 TIMELINE 1")
    events = pipe.session.conn.receive_data(m.Terminate().encode())
    pipe.session.shutdown(pipe.now)
    assert pipe.session.data_to_send() == b""
    pipe.session.handle(events, pipe.now)
    assert pipe.session.closing


def _refused_start(pipe: Pipe, sql: str) -> ServerError:
    """START_REPLICATION that enters COPY and is then refused (an ERROR ends the COPY)."""
    assert pipe.run(generators.start_replication(pipe.client, sql)) is None
    with pytest.raises(ServerError) as e:
        pipe.run(generators.query_results(pipe.client, sql))
    return e.value


def test_start_ahead_of_the_end_and_before_the_oldest_segment() -> None:
    pipe = Pipe(core())
    pipe.login()
    error = _refused_start(pipe, "START_REPLICATION 1/0 TIMELINE 1")
    assert (error.sqlstate, error.message) == (
        "XX000",
        "requested starting point 1/0 is ahead of the WAL flush position of this server "
        f"{LSN(4 * SEG + 5000)}",
    )
    error = _refused_start(pipe, "START_REPLICATION 0/100000")
    assert (error.sqlstate, error.message) == (
        "58P01",
        "requested WAL segment 000000010000000000000001 has already been removed",
    )


def test_a_historic_timeline_ends_at_its_switch_point_with_the_next_timelines_row() -> None:
    pipe = Pipe(core(MemorySource(4 * SEG, promoted=True)))
    pipe.login()
    name = pipe.query("TIMELINE_HISTORY 2")[-1].rows[0][0]
    assert name == "00000002.history"
    events = _stream(pipe, "START_REPLICATION 0/300000 TIMELINE 1")
    wal = [e for e in events if isinstance(e, XLogData)]
    assert wal[-1].data_end == SWITCH
    assert isinstance(events[-1], m.CopyDone)  # the end of timeline 1
    pipe.send(pipe.client.copy_done())
    results = pipe.run(generators.query_results(pipe.client, "START_REPLICATION"))
    assert NextTimeline.from_result(results[0]) == NextTimeline(2, SWITCH)
    # Exactly at the switch point: no COPY at all, only the answer.
    answer = pipe.run(
        generators.start_replication(pipe.client, f"START_REPLICATION {SWITCH} TIMELINE 1")
    )
    assert answer is not None
    assert NextTimeline.from_result(answer[0]) == NextTimeline(2, SWITCH)
    with pytest.raises(ServerError) as e:
        pipe.run(generators.start_replication(pipe.client, "START_REPLICATION 0/400000 TIMELINE 1"))
    assert e.value.message.startswith("requested starting point 0/400000 on timeline 1 is not in")
    assert e.value.detail == f"This server's history forked from timeline 1 at {SWITCH}."
    with pytest.raises(ServerError, match="requested timeline 3 is not in this server's history"):
        pipe.run(generators.start_replication(pipe.client, "START_REPLICATION 0/400000 TIMELINE 3"))


def test_slots() -> None:
    shared = core()
    first, second = Pipe(shared), Pipe(shared)
    first.login()
    second.login()
    first.query('CREATE_REPLICATION_SLOT "s1" PHYSICAL')
    with pytest.raises(ServerError, match='replication slot "s1" already exists'):
        second.query("CREATE_REPLICATION_SLOT s1 PHYSICAL")
    read = second.query("READ_REPLICATION_SLOT s1")[-1]
    assert SlotPosition.from_result(read) == SlotPosition("physical", None, None)
    assert SlotPosition.from_result(second.query("READ_REPLICATION_SLOT nope")[-1]) is None
    _stream(first, "START_REPLICATION SLOT s1 0/200000 TIMELINE 1")
    update = StandbyStatusUpdate(LSN(3 * SEG), LSN(2 * SEG + 8192), LSN(0), 0, False)
    first.send(first.client.copy_data(update.encode()))
    position = SlotPosition.from_result(second.query("READ_REPLICATION_SLOT s1")[-1])
    assert position == SlotPosition("physical", LSN(2 * SEG + 8192), 1)
    with pytest.raises(ServerError) as e:
        second.query("DROP_REPLICATION_SLOT s1")
    assert (e.value.sqlstate, e.value.message) == (
        "55006",
        f'replication slot "s1" is active for PID {first.session.pid}',
    )
    second.query("CREATE_REPLICATION_SLOT tmp TEMPORARY PHYSICAL (RESERVE_WAL)")
    assert SlotPosition.from_result(first_read := second.query("READ_REPLICATION_SLOT tmp")[-1])
    assert first_read.rows[0][1] == str(LSN(4 * SEG))  # reserved from the current segment
    second.session.receive_eof(second.now)  # a temporary slot goes with its connection
    assert shared.slots.get("tmp") is None
    first.send(first.client.copy_done())
    first.run(generators.query_results(first.client, "START_REPLICATION"))
    first.query("DROP_REPLICATION_SLOT s1")
    assert shared.slots.get("s1") is None


def test_refusals_before_and_during_authentication() -> None:
    shared = core(hba="host replication bad all reject\nhost replication all all scram-sha-256\n",
                  max_wal_senders=1)  # fmt: skip
    with pytest.raises(ServerError) as e:
        Pipe(shared).login("bad")
    assert (e.value.sqlstate, e.value.message) == (
        "28000",
        'pg_hba.conf rejects replication connection for host "127.0.0.1", user "bad", '
        "no encryption",
    )
    with pytest.raises(ServerError) as e:
        Pipe(shared).login("rep", "wrong")
    assert (e.value.sqlstate, e.value.message) == (
        "28P01",
        'password authentication failed for user "rep"',
    )
    first = Pipe(shared)
    first.login("rep", "secret")
    with pytest.raises(ServerError) as e:
        Pipe(shared).login("rep", "secret")  # checked before authentication
    assert (e.value.sqlstate, e.value.message) == (
        "53300",
        "number of requested standby connections exceeds max_wal_senders (currently 1)",
    )
    pipe = Pipe(shared)
    with pytest.raises(ServerError) as e:
        pipe.run(generators.startup(
            pipe.client, {"user": "rep", "database": "postgres"},
            lambda cert: Authenticator("rep", "secret"),
            use_tls=False, tls_required=False, where="test",
        ))  # fmt: skip
    assert e.value.sqlstate == "28000"
    assert e.value.message == (
        'no pg_hba.conf entry for host "127.0.0.1", user "rep", database "postgres", no encryption'
    )


@pytest.mark.parametrize(("version", "name"), [(150000, "max_wal_senders"),
                                               (160000, "max_wal_senders"),
                                               (180000, '"max_wal_senders"')])  # fmt: skip
def test_too_many_walsenders_in_the_words_of_the_wals_version(version: int, name: str) -> None:
    # Measured against real servers in tests/test_sender_hostile.py.
    shared = core(MemorySource(3 * SEG, version=version), max_wal_senders=1)
    Pipe(shared).login()
    with pytest.raises(ServerError) as e:
        Pipe(shared).login()
    assert (e.value.sqlstate, e.value.message) == (
        "53300",
        f"number of requested standby connections exceeds {name} (currently 1)",
    )


def test_a_length_word_out_of_range_is_not_answered() -> None:
    # PostgreSQL only logs it (pq_getmessage's COMMERROR) and the connection ends.
    pipe = Pipe(core())
    pipe.login()
    pipe.session.receive_data(b"Q\x40\x00\x00\x00", pipe.now)
    assert pipe.session.closing
    assert pipe.session.data_to_send() == b""


def test_a_protocol_violation_is_answered_then_dropped() -> None:
    pipe = Pipe(core())
    pipe.login()
    pipe.session.receive_data(b"B\x00\x00\x00\x04", pipe.now)  # an extended-query Bind
    assert pipe.session.closing
    (error,) = pipe.take()
    assert isinstance(error, m.ErrorResponse)
    assert (error.sqlstate, error.message) == (
        "08P01",
        "extended query protocol not supported in a replication connection",
    )


def test_a_promotion_upstream_ends_the_stream_at_the_switch_point() -> None:
    """As a cascading walsender: the timeline being sent becomes historic under the stream."""
    source = MemorySource(SWITCH - 1000)
    pipe = Pipe(core(source))
    pipe.login()
    sent = [e for e in _stream(pipe, "START_REPLICATION 0/300000 TIMELINE 1")
            if isinstance(e, XLogData)]  # fmt: skip
    assert sent[-1].data_end == SWITCH - 1000
    source.promoted, source.end = True, LSN(4 * SEG)  # timeline 2 appears, forked at SWITCH
    pipe.session.wal_available(pipe.now)
    events = offer(pipe)
    assert [e.data_end for e in events if isinstance(e, XLogData)] == [SWITCH]
    assert isinstance(events[-1], m.CopyDone)
    pipe.send(pipe.client.copy_done())
    results = pipe.run(generators.query_results(pipe.client, "START_REPLICATION"))
    assert NextTimeline.from_result(results[0]) == NextTimeline(2, SWITCH)
    wal = [e for e in _stream(pipe, f"START_REPLICATION {LSN(SWITCH - SWITCH % SEG)} TIMELINE 2")
           if isinstance(e, XLogData)]  # fmt: skip
    assert wal[-1].data_end == 4 * SEG  # and timeline 2 is served from there


def test_a_command_pipelined_before_terminate_still_takes_effect() -> None:
    """As PostgreSQL reads it: the command runs, the answer has nobody to go to."""
    shared = core()
    pipe = Pipe(shared)
    pipe.login()
    sql = b"CREATE_REPLICATION_SLOT kept PHYSICAL"
    query = b"Q" + (4 + len(sql) + 1).to_bytes(4, "big") + sql + b"\0"
    pipe.session.receive_data(query + pipe.client.terminate(), pipe.now)
    assert pipe.session.closing
    slot = shared.slots.get("kept")
    assert slot is not None
    assert slot.active_pid is None
