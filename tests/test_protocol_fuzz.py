"""Property tests: hostile and broken byte streams against both state machines.

A *script* is a valid conversation: steps that ask one machine for the bytes
of a message and feed them to the other. Every test runs a valid prefix of a
script to reach some state, then does something nasty, and checks:

* nothing escapes but walstream's own errors (:class:`walstream.errors.Error`);
* how the bytes are split into reads changes nothing: the same events, or the
  same failure at the same step (events of a read that raises are lost, so a
  failed run's events are compared as a prefix of the byte-at-a-time run's);
* the receive buffer never holds more than one maximal message.
"""

from __future__ import annotations

import base64
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walstream.errors import Error, ProtocolViolation
from walstream.lsn import LSN
from walstream.protocol import messages as m
from walstream.protocol.auth import Authenticator
from walstream.protocol.client import ClientConnection, ClientState
from walstream.protocol.replication import (
    HotStandbyFeedback,
    StandbyStatusUpdate,
    XLogData,
)
from walstream.protocol.server import ServerConnection, ServerState

MAX_MESSAGE = 2048  # small, so random length words often exceed it
MAX_STARTUP = 1000

PARAMS = {"user": "rep", "database": "replication", "replication": "true"}
MD5 = b"md5db553f6eefcecf29ae790fb02f820b64"

# A step: which machine sends ("c" client, "s" server) and how. A step that
# returns None closes the sender's side: the receiver sees end of stream.
Step = tuple[str, Callable[[Any], bytes | None]]


def _startup_burst(s: ServerConnection) -> bytes:
    return (
        s.authentication_ok()
        + s.parameter_status("server_version", "15.18")
        + s.parameter_status("integer_datetimes", "on")
        + s.backend_key_data(77, b"\0\0\0\1")
        + s.ready_for_query()
    )


def _identify(s: ServerConnection) -> bytes:
    return (
        s.row_description(["systemid", m.FieldDescription("timeline", type_oid=20), "xlogpos"])
        + s.data_row(["7711506486921884499", "1", "0/3000000"])
        + s.command_complete("IDENTIFY_SYSTEM")
        + s.ready_for_query()
    )


def _wal(s: ServerConnection, start: int, count: int) -> bytes:
    return b"".join(
        s.xlog_data(
            XLogData(LSN(start + i * 64), LSN(start + count * 64), i, bytes([i % 256]) * 64)
        )
        for i in range(count)
    ) + s.keepalive(start + count * 64, 1000, reply_requested=True)


def _status(c: ClientConnection) -> bytes:
    return c.copy_data(
        StandbyStatusUpdate(LSN(0x3000100), LSN(0x3000100), LSN(0), 5, True).encode()
    ) + c.copy_data(HotStandbyFeedback(5, 700).encode())


def _finish_streaming(s: ServerConnection) -> bytes:
    return (
        s.command_complete("START_STREAMING")
        + s.command_complete("START_REPLICATION")
        + s.ready_for_query()
    )


def _close_server(s: ServerConnection) -> None:
    s.close()


START = "START_REPLICATION 0/3000000 TIMELINE 1"

# md5, a query, streaming that the client ends, Terminate.
SCRIPT_CLIENT_ENDS: list[Step] = [
    ("c", lambda c: c.ssl_request()),
    ("s", lambda s: s.encryption_response(False)),
    ("c", lambda c: c.startup(PARAMS)),
    ("s", lambda s: s.authentication_request(m.AuthenticationMD5Password(b"\1\2\3\4"))),
    ("c", lambda c: c.authentication_response(m.PasswordMessage(MD5))),
    ("s", _startup_burst),
    ("c", lambda c: c.query("IDENTIFY_SYSTEM")),
    ("s", _identify),
    ("c", lambda c: c.query(START)),
    ("s", lambda s: s.copy_both_response() + _wal(s, 0x3000000, 6)),
    ("c", _status),
    ("s", lambda s: _wal(s, 0x3000180, 2)),
    ("c", lambda c: c.copy_done()),
    ("s", lambda s: s.copy_done() + _finish_streaming(s)),
    ("c", lambda c: c.terminate()),
]

# SSL accepted, a SCRAM-shaped exchange, an ERROR, end of timeline, a FATAL.
SCRIPT_TIMELINE: list[Step] = [
    ("c", lambda c: c.ssl_request()),
    ("s", lambda s: s.encryption_response(True)),
    ("c", lambda c: c.startup({**PARAMS, "application_name": "walreceiver"})),
    ("s", lambda s: s.authentication_request(m.AuthenticationSASL(("SCRAM-SHA-256",)))),
    (
        "c",
        lambda c: c.authentication_response(
            m.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=clientnonce")
        ),
    ),
    (
        "s",
        lambda s: s.authentication_request(
            m.AuthenticationSASLContinue(b"r=clientnonceserver,s=c2FsdHNhbHRzYWx0,i=4096")
        ),
    ),
    (
        "c",
        lambda c: c.authentication_response(
            m.SASLResponse(b"c=biws,r=clientnonceserver,p=cHJvb2Y=")
        ),
    ),
    (
        "s",
        lambda s: (
            s.authentication_request(m.AuthenticationSASLFinal(b"v=c2lnbmF0dXJl"))
            + _startup_burst(s)
        ),
    ),
    ("c", lambda c: c.query("SHOW nope")),
    (
        "s",
        lambda s: s.error(m.error_fields("ERROR", "42704", "unrecognized")) + s.ready_for_query(),
    ),
    ("c", lambda c: c.query(START)),
    ("s", lambda s: s.copy_both_response() + _wal(s, 0x3000000, 3) + s.copy_done()),
    ("c", _status),
    ("c", lambda c: c.copy_done()),
    (
        "s",
        lambda s: (
            s.row_description(["next_tli", "next_tli_startpos"])
            + s.data_row(["2", "0/30000C0"])
            + _finish_streaming(s)
        ),
    ),
    ("c", lambda c: c.query("START_REPLICATION 0/3000000 TIMELINE 2")),
    (
        "s",
        lambda s: (
            s.copy_both_response()
            + s.error(m.error_fields("ERROR", "58P01", "requested WAL segment has been removed"))
            + s.ready_for_query()
        ),
    ),
    ("s", lambda s: s.error(m.error_fields("FATAL", "57P01", "terminating connection"))),
]

# GSS refused, cleartext password, notices, shutdown ending COPY without CopyDone.
SCRIPT_SHUTDOWN: list[Step] = [
    ("c", lambda c: c.gssenc_request()),
    ("s", lambda s: s.encryption_response(False)),
    ("c", lambda c: c.startup(PARAMS)),
    (
        "s",
        lambda s: (
            s.negotiate_protocol_version(0, ["_pq_.x"])
            + s.notice(m.error_fields("NOTICE", "00000", "hello"))
            + s.authentication_request(m.AuthenticationCleartextPassword())
        ),
    ),
    ("c", lambda c: c.authentication_response(m.PasswordMessage(b"secret"))),
    ("s", _startup_burst),
    ("c", lambda c: c.query(START)),
    (
        "s",
        lambda s: (
            s.copy_both_response()
            + s.notice(m.error_fields("WARNING", "01000", "careful"))
            + _wal(s, 0x3000000, 4)
        ),
    ),
    ("c", _status),
    ("s", lambda s: _wal(s, 0x3000100, 1) + s.command_complete("COPY 0")),
    ("s", _close_server),
]

# Authentication refused.
SCRIPT_REFUSED: list[Step] = [
    ("c", lambda c: c.startup(PARAMS)),
    ("s", lambda s: s.authentication_request(m.AuthenticationMD5Password(b"abcd"))),
    ("c", lambda c: c.authentication_response(m.PasswordMessage(b"md5wrong"))),
    ("s", lambda s: s.error(m.error_fields("FATAL", "28P01", "password authentication failed"))),
]

# A cancel connection (the client machine does not model it; the bytes are raw).
SCRIPT_CANCEL: list[Step] = [
    ("c", lambda _c: m.CancelRequest(77, b"\0\0\0\1").encode()),
]

NEGOTIATING = [SCRIPT_CLIENT_ENDS, SCRIPT_TIMELINE, SCRIPT_SHUTDOWN]  # open with SSL/GSS
SCRIPTS = [SCRIPT_CLIENT_ENDS, SCRIPT_TIMELINE, SCRIPT_SHUTDOWN, SCRIPT_REFUSED, SCRIPT_CANCEL]

# ---------------------------------------------------------------------------
# Running scripts
# ---------------------------------------------------------------------------

Splitter = Callable[[bytes], Iterator[bytes]]


def whole(data: bytes) -> Iterator[bytes]:
    yield data


def bytewise(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


def sized(sizes: list[int]) -> Splitter:
    def split(data: bytes) -> Iterator[bytes]:
        pos, i = 0, 0
        while pos < len(data):
            n = sizes[i % len(sizes)]
            yield data[pos : pos + n]
            pos += n
            i += 1

    return split


def buffer_bound(machine: ClientConnection | ServerConnection) -> int:
    """The most a machine may keep buffered between reads: one incomplete message."""
    if isinstance(machine, ServerConnection):
        return max(machine.max_message_size, machine.max_startup_size + 4)
    return machine.max_message_size


def feed(
    machine: ClientConnection | ServerConnection, data: bytes, split: Splitter
) -> list[object]:
    events: list[object] = []
    for chunk in split(data):
        events += machine.receive_data(chunk)
        assert len(machine._buf) <= buffer_bound(machine)
    return events


@dataclass
class Outcome:
    logs: dict[str, list[object]] = field(default_factory=lambda: {"c": [], "s": []})
    error: type[Error] | None = None
    failed_step: int | None = None
    client: ClientConnection = field(default_factory=ClientConnection)
    server: ServerConnection = field(default_factory=ServerConnection)


Mutation = Callable[[int, bytes], bytes]


def run(
    script: list[Step],
    *,
    split: Splitter = whole,
    mutate: Mutation | None = None,
    steps: int | None = None,
    truncate: tuple[int, int] | None = None,
) -> Outcome:
    """Run a script (or its first ``steps``); stop at the first walstream error.

    ``mutate(i, data)`` rewrites the bytes of step ``i`` in transit;
    ``truncate=(i, n)`` delivers only ``n`` bytes of step ``i`` and then end
    of stream. Any exception other than walstream's propagates and fails.
    """
    out = Outcome(
        client=ClientConnection(max_message_size=MAX_MESSAGE),
        server=ServerConnection(max_message_size=MAX_MESSAGE, max_startup_size=MAX_STARTUP),
    )
    machines: dict[str, ClientConnection | ServerConnection] = {"c": out.client, "s": out.server}
    for i, (side, send) in enumerate(script[:steps]):
        other = "s" if side == "c" else "c"
        receiver = machines[other]
        try:
            data = send(machines[side])
            if data is None:
                out.logs[other] += receiver.receive_eof()
                continue
            if mutate is not None:
                data = mutate(i, data)
            if truncate is not None and truncate[0] == i:
                out.logs[other] += feed(receiver, data[: truncate[1]], split)
                out.logs[other] += receiver.receive_eof()
                return out
            out.logs[other] += feed(receiver, data, split)
        except Error as e:
            out.error, out.failed_step = type(e), i
            return out
    return out


def assert_same_outcome(a: Outcome, b: Outcome, finest: Outcome) -> None:
    """``a`` and ``b`` ran the same bytes split differently; ``finest`` byte by byte."""
    failures = {(o.error, o.failed_step) for o in (a, b, finest)}
    assert len(failures) == 1, failures
    if a.error is None:
        assert a.logs == b.logs == finest.logs
        assert a.client.state is b.client.state
        assert a.server.state is b.server.state
    else:
        for side in "cs":
            for o in (a, b):
                assert o.logs[side] == finest.logs[side][: len(o.logs[side])]


# ---------------------------------------------------------------------------
# Sanity: the scripts are valid conversations
# ---------------------------------------------------------------------------


def test_scripts_run_cleanly() -> None:
    for script in SCRIPTS:
        out = run(script)
        assert out.error is None
        assert run(script, split=bytewise).logs == out.logs
    assert run(SCRIPT_CLIENT_ENDS).server.state is ServerState.CLOSED
    assert run(SCRIPT_TIMELINE).client.state is ClientState.CLOSED
    assert run(SCRIPT_SHUTDOWN).client.state is ClientState.CLOSED
    assert run(SCRIPT_CANCEL).server.state is ServerState.CLOSED


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

scripts = st.sampled_from(SCRIPTS)
chunk_sizes = st.lists(st.integers(1, 80), min_size=1, max_size=8)


@st.composite
def prefixes(draw: st.DrawFn) -> tuple[list[Step], int]:
    """A script and how many of its steps to run first."""
    script = draw(scripts)
    return script, draw(st.integers(0, len(script)))


def _frame(mtype: int, body: bytes) -> bytes:
    return bytes([mtype]) + (len(body) + 4).to_bytes(4, "big") + body


# Messages that look plausible: real type bytes, streaming payload kinds,
# small bodies; plus occasional nonsense length words and raw noise.
plausible_frames = st.one_of(
    st.builds(
        _frame,
        st.sampled_from(b"RSKZTDCIENAvWHGdcfpQXPBF\x00\xff"),
        st.binary(max_size=40),
    ),
    st.builds(
        lambda kind, body: _frame(ord("d"), kind + body),
        st.sampled_from([b"w", b"k", b"r", b"h", b""]),
        st.binary(min_size=0, max_size=40),
    ),
    st.builds(
        lambda mtype, length: bytes([mtype]) + length.to_bytes(4, "big", signed=True),
        st.sampled_from(b"dQCZ"),
        st.sampled_from([-1, 0, 3, MAX_MESSAGE + 1, 0x7FFFFFFF, -(2**31)]),
    ),
    st.binary(min_size=1, max_size=16),
)
hostile_streams = st.one_of(
    st.binary(max_size=300),
    st.lists(plausible_frames, max_size=12).map(b"".join),
)

FAST = settings(max_examples=150, deadline=None)


# ---------------------------------------------------------------------------
# (a) random bytes, in every reachable state
# ---------------------------------------------------------------------------


@FAST
@given(prefixes(), st.sampled_from("cs"), hostile_streams, chunk_sizes, st.booleans())
def test_random_bytes_in_every_state(
    prefix: tuple[list[Step], int], target: str, noise: bytes, sizes: list[int], eof: bool
) -> None:
    script, steps = prefix
    outcomes = []
    for split in (whole, sized(sizes), bytewise):
        out = run(script, steps=steps)
        machine = out.client if target == "c" else out.server
        events: list[object] = []
        error: type[Error] | None = None
        try:
            events += feed(machine, noise, split)
            if eof:
                events += machine.receive_eof()
        except Error as e:
            error = type(e)
        outcomes.append((error, events))
    (e_whole, ev_whole), (e_sized, ev_sized), (e_byte, ev_byte) = outcomes
    assert e_whole == e_sized == e_byte
    if e_whole is None:
        assert ev_whole == ev_sized == ev_byte
    else:
        assert ev_sized == ev_byte[: len(ev_sized)]
        assert ev_whole == ev_byte[: len(ev_whole)]


@FAST
@given(scripts, st.data(), hostile_streams, chunk_sizes)
def test_random_bytes_pipelined_after_a_step(
    script: list[Step], data: st.DataObject, noise: bytes, sizes: list[int]
) -> None:
    """Noise in the same read as a valid message must act as in a later read.

    This is where CVE-2021-23222 lives: bytes right behind an encryption
    answer or request must fail the same way however the reads fall.
    """
    step = data.draw(st.integers(0, len(script) - 1))

    def append(i: int, chunk: bytes) -> bytes:
        return chunk + noise if i == step else chunk

    outcomes = [
        run(script, steps=step + 1, mutate=append, split=split)
        for split in (whole, sized(sizes), bytewise)
    ]
    assert_same_outcome(*outcomes)
    if noise and step < 2 and any(script is s for s in NEGOTIATING):
        # Behind an encryption request or its answer, nothing at all is allowed.
        assert outcomes[0].error is ProtocolViolation
        assert outcomes[0].failed_step == step


# ---------------------------------------------------------------------------
# (b) valid conversations truncated at random points
# ---------------------------------------------------------------------------


@FAST
@given(scripts, st.data(), chunk_sizes)
def test_truncated_conversations(script: list[Step], data: st.DataObject, sizes: list[int]) -> None:
    step = data.draw(st.integers(0, len(script) - 1))
    cut = data.draw(st.integers(0, 4096))
    outcomes = [run(script, split=s, truncate=(step, cut)) for s in (whole, sized(sizes))]
    finest = run(script, split=bytewise, truncate=(step, cut))
    assert_same_outcome(*outcomes, finest)
    # Whatever happened, the side that saw the end of the stream is closed.
    receiver = finest.server if script[step][0] == "c" else finest.client
    assert finest.error is not None or receiver.state in (ClientState.CLOSED, ServerState.CLOSED)


# ---------------------------------------------------------------------------
# (c) valid conversations with bytes flipped, inserted or deleted
# ---------------------------------------------------------------------------


@st.composite
def mutations(draw: st.DrawFn, script: list[Step]) -> Mutation:
    step = draw(st.integers(0, len(script) - 1))
    edits = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["flip", "insert", "delete"]),
                st.integers(0, 10_000),  # position, modulo the length
                st.integers(0, 255),
            ),
            min_size=1,
            max_size=4,
        )
    )

    def mutate(i: int, data: bytes) -> bytes:
        if i != step:
            return data
        buf = bytearray(data)
        for kind, pos, value in edits:
            if kind == "insert":
                buf.insert(pos % (len(buf) + 1), value)
            elif buf:
                p = pos % len(buf)
                if kind == "flip":
                    buf[p] ^= value or 0x80
                else:
                    del buf[p]
        return bytes(buf)

    return mutate


@FAST
@given(scripts, st.data(), chunk_sizes)
def test_mutated_conversations(script: list[Step], data: st.DataObject, sizes: list[int]) -> None:
    mutate = data.draw(mutations(script))
    a = run(script, mutate=mutate)
    b = run(script, mutate=mutate, split=sized(sizes))
    finest = run(script, mutate=mutate, split=bytewise)
    assert_same_outcome(a, b, finest)


# ---------------------------------------------------------------------------
# (d) valid conversations in random chunk sizes
# ---------------------------------------------------------------------------


@FAST
@given(scripts, chunk_sizes)
def test_chunked_equals_whole(script: list[Step], sizes: list[int]) -> None:
    a = run(script)
    b = run(script, split=sized(sizes))
    assert a.error is None
    assert b.error is None
    assert a.logs == b.logs
    assert a.client.state is b.client.state
    assert a.server.state is b.server.state


# ---------------------------------------------------------------------------
# Bounded memory
# ---------------------------------------------------------------------------


def _session(target: str) -> ClientConnection | ServerConnection:
    out = run(SCRIPT_CLIENT_ENDS, steps=6)
    return out.client if target == "c" else out.server


def test_absurd_length_word_is_rejected_immediately() -> None:
    for target, header in [("c", b"D\x7f\xff\xff\xff"), ("s", b"Q\x7f\xff\xff\xff")]:
        machine = _session(target)
        with pytest.raises(ProtocolViolation, match="invalid message length 2147483647"):
            machine.receive_data(header)
        assert len(machine._buf) == 0
    with pytest.raises(ProtocolViolation, match="invalid length of startup packet"):
        ServerConnection().receive_data(b"\x7f\xff\xff\xff")


@settings(max_examples=50, deadline=None)
@given(st.sampled_from("cs"), st.integers(5, MAX_MESSAGE), chunk_sizes)
def test_buffer_holds_at_most_one_message(target: str, length: int, sizes: list[int]) -> None:
    """A peer dribbling one maximal message never makes the buffer grow past it."""
    machine = _session(target)
    body = b"x" * (length - 4)
    header = (b"D" if target == "c" else b"Q") + length.to_bytes(4, "big")
    # Incomplete: everything but the last byte stays buffered, and no more.
    feed(machine, (header + body)[:-1], sized(sizes))
    assert len(machine._buf) == length  # type byte + length - 1


def test_flood_uses_bounded_memory() -> None:
    """A megabyte of data claiming to be one huge message costs no megabytes."""
    machine = _session("s")
    assert isinstance(machine, ServerConnection)
    chunk = b"Q" + b"\x00\x00\xff\xff" + bytes(65531)  # 64 KiB claims 65535 bytes
    tracemalloc.start()
    try:
        for _ in range(16):
            try:
                machine.receive_data(chunk)
            except ProtocolViolation:
                break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 65536
    assert machine.state is ServerState.CLOSED


# ---------------------------------------------------------------------------
# SCRAM answers from a hostile server
# ---------------------------------------------------------------------------

_SALT = base64.b64encode(bytes(16)).decode()
scram_attrs = st.lists(
    st.one_of(
        st.sampled_from(
            ["r=%n", "r=%nserver", "s=" + _SALT, "i=4096", "e=invalid-proof", "v=AAAA"]
        ),
        st.text(max_size=12),
    ),
    max_size=5,
).map(",".join)


@settings(max_examples=60, deadline=None)
@given(scram_attrs, scram_attrs, st.binary(max_size=20))
def test_authenticator_survives_hostile_scram(first: str, final: str, noise: bytes) -> None:
    auth = Authenticator("rep", "secret")
    initial = auth.respond(m.AuthenticationSASL(("SCRAM-SHA-256",)))
    assert isinstance(initial, m.SASLInitialResponse)
    assert initial.data is not None
    nonce = initial.data.decode().split("r=", 1)[1]
    try:
        auth.respond(m.AuthenticationSASLContinue(first.replace("%n", nonce).encode() + noise))
        auth.respond(m.AuthenticationSASLFinal(final.encode() + noise))
        auth.authentication_ok()
    except Error:
        pass
