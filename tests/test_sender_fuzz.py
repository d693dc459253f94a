"""Hostile bytes against the walsender session: it answers or hangs up, never crashes or hoards.

Hypothesis feeds the session (the sender's whole protocol logic, sans-IO)
random bytes, mutated and re-chunked real conversations, and absurd length
words, at every stage: before the startup packet, during authentication,
between commands and while streaming. Whatever comes in, the session must
only raise nothing, say nothing after it closed, keep its output bounded by
what it streams, and never leave a slot acquired by a dead connection.
"""

from __future__ import annotations

import itertools
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walstream.protocol.client import ClientConnection
from walstream.protocol.replication import StandbyStatusUpdate
from walstream.sender.walsender import MAX_SEND_SIZE

from .test_sender_session import SEG, MemorySource, Pipe, core

PARAMS = {"user": "rep", "database": "replication", "replication": "true"}


def _conversation() -> list[bytes]:
    """What a client sends in a whole session: startup, commands, a stream and its end."""
    client = ClientConnection()
    out = [client.startup(PARAMS)]
    out += [
        b"Q" + struct.pack("!i", 4 + len(sql) + 1) + sql + b"\0"
        for sql in (
            b"IDENTIFY_SYSTEM",
            b"SHOW wal_segment_size",
            b'CREATE_REPLICATION_SLOT "f" TEMPORARY PHYSICAL (RESERVE_WAL)',
            b"START_REPLICATION SLOT f 0/200000 TIMELINE 1",
        )
    ]
    status = StandbyStatusUpdate(0x300000, 0x280000, 0, 0, True).encode()  # type: ignore[arg-type]
    out.append(b"d" + struct.pack("!i", 4 + len(status)) + status)
    out.append(b"c\x00\x00\x00\x04")  # CopyDone
    out.append(b"X\x00\x00\x00\x04")  # Terminate
    return out


CONVERSATION = _conversation()


def _check(pipe: Pipe, chunks: list[bytes]) -> None:
    session = pipe.session
    shared = session.core
    for chunk in chunks:
        session.receive_data(chunk, pipe.now)
        out = session.data_to_send()
        # At most what a stream may queue before the shell writes, plus the answers.
        assert len(out) <= 5 * MAX_SEND_SIZE + 64 * 1024
        session.wal_available(pipe.now)
        session.data_to_send()
        if session.closing:
            assert session.data_to_send() == b""
    pipe.now += 1000.0
    session.timer(pipe.now)
    session.receive_eof(pipe.now)
    assert session.closing
    assert session.pid not in shared.sessions
    assert all(slot.active_pid != session.pid for slot in shared.slots)


def _rechunk(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), st.integers(0, len(CONVERSATION)))
def test_random_bytes_at_any_stage(noise: bytes, stage: int) -> None:
    pipe = Pipe(core(MemorySource(3 * SEG)))
    _check(pipe, [*CONVERSATION[:stage], noise])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    st.lists(st.integers(0, 10_000), max_size=10),
)
def test_mutated_and_rechunked_conversations(
    mutations: list[tuple[int, int]], cuts: list[int]
) -> None:
    data = bytearray(b"".join(CONVERSATION))
    for at, value in mutations:
        data[at % len(data)] = value
    pipe = Pipe(core(MemorySource(3 * SEG)))
    _check(pipe, _rechunk(bytes(data), cuts))


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, len(CONVERSATION) - 2), st.integers(-(2**31), 2**31 - 1), st.binary(max_size=1)
)
def test_absurd_length_words_are_refused_before_any_buffering(
    stage: int, length: int, kind: bytes
) -> None:
    pipe = Pipe(core(MemorySource(3 * SEG)))
    prefix = CONVERSATION[:stage]
    header = (kind or b"Q") + struct.pack("!i", length) if stage else struct.pack("!i", length)
    _check(pipe, [*prefix, header, b"x" * 4096])
    assert len(pipe.session.conn._buf) <= 4096 + 5
