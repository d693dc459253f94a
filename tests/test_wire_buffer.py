"""The asyncio shell's buffered reads hand the state machine exactly what a plain feed would.

Also the inline path of a replication stream: batches offered to a handler
in the read callback while the reader waits, declined batches reaching the
read in order, and a handler's error raised by the pending read.

``_Wire`` reads into its own buffer and passes only whole messages on (so the
state machine parses in place); messages larger than the buffer, messages
split anywhere, and an end of stream in the middle of a message must all come
out as if the bytes had been fed to the state machine directly.
"""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import cast

import pytest

from walstream.client.connection import ReplicationConnection, ReplicationStream, StreamEvent
from walstream.client.wire import READ_SIZE as _READ_SIZE
from walstream.client.wire import Wire as _Wire
from walstream.errors import ProtocolViolation
from walstream.lsn import LSN
from walstream.protocol.client import ClientConnection, ConnectionClosed
from walstream.protocol.replication import PrimaryKeepalive, XLogData
from walstream.protocol.server import ServerConnection
from walstream.storage.directory import DiskError

PARAMS = {"user": "rep", "database": "replication", "replication": "true"}


def _conversation() -> tuple[ClientConnection, ClientConnection, bytes]:
    """Two clients in the same state (streaming) and what the server sends next."""
    clients = [ClientConnection(), ClientConnection()]
    server = ServerConnection()
    for c in clients:
        server_in = c.startup(PARAMS)
    server.receive_data(server_in)
    burst = server.authentication_ok() + server.backend_key_data(1, b"\0\0\0\1")
    burst += server.ready_for_query()
    for c in clients:
        c.receive_data(burst)
        query = c.query("START_REPLICATION 0/3000000 TIMELINE 1")
    server.receive_data(query)
    lsn = 0x3000000
    out = server.copy_both_response()
    rng = random.Random(7)
    for size in [8192, 131072, 131072, 17, 3 * _READ_SIZE + 5, 131072, 1, 65536] * 3:
        out += server.xlog_data(XLogData(LSN(lsn), LSN(lsn), 0, rng.randbytes(size)))
        lsn += size
        if size == 17:
            out += server.keepalive(lsn, 5, reply_requested=True)
    return clients[0], clients[1], out


def _read(wire: _Wire, data: bytes, rng: random.Random) -> None:
    """What a transport does: read a random amount into the protocol's buffer."""
    pos = 0
    while pos < len(data):
        buf = wire.get_buffer(-1)
        assert len(buf) > 0
        n = min(len(buf), len(data) - pos, rng.choice([1, 5, 6, 100, 70000, 300000, 10**7]))
        buf[:n] = data[pos : pos + n]
        wire.buffer_updated(n)
        pos += n


@pytest.mark.parametrize("seed", range(4))
def test_buffered_reads_equal_a_plain_feed(seed: int) -> None:
    direct, buffered, stream = _conversation()
    expected = direct.receive_data(stream)
    wire = _Wire(buffered)
    _read(wire, stream, random.Random(seed))
    assert wire.failure is None
    assert list(wire.events) == expected
    assert sum(isinstance(e, XLogData) for e in expected) == 24


def test_end_of_stream_inside_a_message_is_a_violation() -> None:
    _, buffered, stream = _conversation()
    wire = _Wire(buffered)
    _read(wire, stream[:-1000], random.Random(1))
    wire.eof_received()
    assert isinstance(wire.failure, ProtocolViolation)
    assert "in the middle of a message" in str(wire.failure)


def test_end_of_stream_between_messages_closes() -> None:
    _, buffered, stream = _conversation()
    wire = _Wire(buffered)
    _read(wire, stream, random.Random(2))
    wire.eof_received()
    assert wire.failure is None
    assert isinstance(wire.events[-1], ConnectionClosed)


def _streaming_wire() -> tuple[_Wire, ServerConnection]:
    client, server = ClientConnection(), ServerConnection()
    server.receive_data(client.startup(PARAMS))
    ready = server.authentication_ok() + server.backend_key_data(1, b"\0\0\0\1")
    client.receive_data(ready + server.ready_for_query())
    server.receive_data(client.query("START_REPLICATION 0/3000000 TIMELINE 1"))
    client.receive_data(server.copy_both_response())
    return _Wire(client), server


def _feed(wire: _Wire, data: bytes) -> None:
    buf = wire.get_buffer(-1)
    buf[: len(data)] = data
    wire.buffer_updated(len(data))


def _wal(server: ServerConnection, lsn: int, size: int = 100) -> bytes:
    return server.xlog_data(XLogData(LSN(lsn), LSN(lsn + size), 0, bytes(size)))


async def test_inline_handler_takes_batches_only_while_the_reader_waits() -> None:
    wire, server = _streaming_wire()
    stream = ReplicationStream(cast(ReplicationConnection, SimpleNamespace(wire=wire)), LSN(0))
    taken: list[list[StreamEvent]] = []
    answer = True

    def handler(batch: list[StreamEvent]) -> bool:
        taken.append(batch)
        return answer

    stream.handle_inline(handler)
    _feed(wire, _wal(server, 0x3000000))  # nobody waits: queued, not offered
    assert taken == []
    assert len(wire.events) == 1
    assert len(await stream.read()) == 1

    reader = asyncio.ensure_future(stream.read())
    await asyncio.sleep(0)  # the read now waits in next_batch
    _feed(wire, _wal(server, 0x3000064) + server.keepalive(0x3000100, 5, reply_requested=False))
    assert [type(e) for e in taken[0]] == [XLogData, PrimaryKeepalive]
    assert not wire.events
    assert not reader.done()

    answer = False  # declined: the same batch reaches the read, in order
    _feed(wire, _wal(server, 0x3000100))
    assert [e.data_start for e in await reader] == [0x3000100]

    reader = asyncio.ensure_future(stream.read())
    await asyncio.sleep(0)
    _feed(
        wire, server.notice({"S": "WARNING", "C": "01000", "M": "just saying"})
    )  # not streaming events
    assert len(taken) == 2
    await asyncio.sleep(0)
    assert not reader.done()  # a notice alone is logged by read(), which goes on waiting
    stream.handle_inline(None)
    _feed(wire, _wal(server, 0x3000164))
    assert len(taken) == 2
    assert len(await reader) == 1


async def test_inline_handler_error_is_raised_by_the_pending_read() -> None:
    wire, server = _streaming_wire()
    stream = ReplicationStream(cast(ReplicationConnection, SimpleNamespace(wire=wire)), LSN(0))

    def handler(batch: list[StreamEvent]) -> bool:
        raise DiskError("could not fsync file: No space left on device")

    stream.handle_inline(handler)
    reader = asyncio.ensure_future(stream.read())
    await asyncio.sleep(0)
    _feed(wire, _wal(server, 0x3000000))
    # More WAL before the reader runs: it must not be handed on after the
    # batch that failed (found by the disk-full test: a write with no file).
    _feed(wire, _wal(server, 0x3000064))
    assert not wire.events
    with pytest.raises(DiskError, match="No space left"):
        await reader


async def test_inline_handler_is_not_offered_to_other_waits() -> None:
    """Only a pending read(): end() collecting the command's result takes events one by one."""
    wire, server = _streaming_wire()
    stream = ReplicationStream(cast(ReplicationConnection, SimpleNamespace(wire=wire)), LSN(0))
    taken: list[list[StreamEvent]] = []
    stream.handle_inline(lambda batch: taken.append(batch) is None)
    waiting = asyncio.ensure_future(wire.next_event())
    await asyncio.sleep(0)
    _feed(wire, _wal(server, 0x3000000))
    assert taken == []
    assert isinstance(await waiting, XLogData)
