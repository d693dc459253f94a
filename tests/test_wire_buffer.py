"""The asyncio shell's buffered reads hand the state machine exactly what a plain feed would.

``_Wire`` reads into its own buffer and passes only whole messages on (so the
state machine parses in place); messages larger than the buffer, messages
split anywhere, and an end of stream in the middle of a message must all come
out as if the bytes had been fed to the state machine directly.
"""

from __future__ import annotations

import random

import pytest

from walstream.connection import _READ_SIZE, _Wire
from walstream.errors import ProtocolViolation
from walstream.lsn import LSN
from walstream.protocol.client import ClientConnection, ConnectionClosed
from walstream.protocol.replication import XLogData
from walstream.protocol.server import ServerConnection

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
