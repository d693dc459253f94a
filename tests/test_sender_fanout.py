"""Fan-out through the sender's shell: what plain-TCP clients get from files is what the others get.

On plain TCP the shell sends WAL of completed segments with ``os.sendfile``
and, when a socket is full, the rest through the transport; over a Unix
socket (as over TLS) everything is read and written as bytes. Several
clients stream one directory at once here, one of them stopping until the
others have everything: each must receive the same messages, cut at the same
places, with the directory's bytes, and the stopped one must not hold the
others up. The WAL is the test writer's (tests/walbuild.py, checked against
pg_waldump elsewhere); what the clients say is raw protocol, as pg_receivewal
says it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.walbuild import WalWriter
from walstream.lsn import LSN
from walstream.protocol import messages as m
from walstream.sender import server as sender_server
from walstream.sender.server import SenderOptions, WalSender
from walstream.sender.source import DirectorySource
from walstream.sender.walsender import MAX_SEND_SIZE

SEG = 1024 * 1024
START = 0x1000000  # the first segment's LSN
SEGMENTS = 10  # more than a socket's buffers hold, so that a stopped client's fills


@pytest.fixture
def wal_dir(tmp_path: Path) -> Path:
    """Completed segments and a .partial, as a receiver leaves them."""
    w = WalWriter(16, seg_size=SEG, start=START)
    w.fill_to(START + (SEGMENTS - 1) * SEG + 300_000)
    directory = tmp_path / "wal"
    directory.mkdir()
    segments = w.segments()
    last = max(segments)
    for segno, data in segments.items():
        suffix = ".partial" if segno == last else ""
        (directory / (w.segment_name(segno) + suffix)).write_bytes(data)
    return directory


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(asked, sent) of every os.sendfile the shell makes (-1: the socket was full)."""
    calls: list[tuple[int, int]] = []
    real = os.sendfile

    def sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        try:
            sent = real(out_fd, in_fd, offset, count)
        except BlockingIOError:
            calls.append((count, -1))
            raise
        calls.append((count, sent))
        return sent

    monkeypatch.setattr(sender_server.os, "sendfile", sendfile)
    return calls


@contextlib.asynccontextmanager
async def serving(wal_dir: Path, sockets: Path) -> AsyncIterator[WalSender]:
    options = SenderOptions(directory=wal_dir, listen=(("127.0.0.1", 0),), unix_socket_dir=sockets)
    sender = WalSender(options)
    task = asyncio.ensure_future(sender.serve())
    try:
        while sender.unix_socket is None:
            await asyncio.sleep(0.01)
            assert not task.done(), task.exception()
        yield sender
    finally:
        sender.stop()
        await asyncio.wait_for(task, 30)


class Client:
    """A replication client speaking raw protocol: START_REPLICATION, then XLogData."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.messages: list[tuple[int, int, int]] = []  # dataStart, walEnd, length
        self.wal = bytearray()

    @classmethod
    async def connect(cls, sender: WalSender, *, unix: bool = False, small: bool = False) -> Client:
        if unix:
            assert sender.unix_socket is not None
            reader, writer = await asyncio.open_unix_connection(str(sender.unix_socket))
        else:
            sock = socket.socket()
            if small:  # a small receive buffer: the sender's socket fills soon
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, sender.addresses[0])
            reader, writer = await asyncio.open_connection(sock=sock, limit=4 * MAX_SEND_SIZE)
        return cls(reader, writer)

    async def message(self) -> tuple[bytes, bytes]:
        head = await self.reader.readexactly(5)
        kind, length = head[:1], struct.unpack("!i", head[1:])[0]
        return kind, await self.reader.readexactly(length - 4)

    async def start(self, lsn: int) -> None:
        self.writer.write(m.StartupMessage({"user": "rep", "replication": "true"}).encode())
        while (await self.message())[0] != b"Z":
            pass
        self.writer.write(m.Query(f"START_REPLICATION {LSN(lsn)} TIMELINE 1").encode())
        kind, _ = await self.message()
        assert kind == b"W"  # CopyBothResponse

    async def receive_until(self, end: int) -> None:
        while not self.messages or self.messages[-1][0] + self.messages[-1][2] < end:
            kind, body = await self.message()
            assert kind == b"d"
            if body[:1] == b"k":
                continue  # a keepalive
            assert body[:1] == b"w"
            start, wal_end, _ = struct.unpack_from("!QQq", body, 1)
            self.messages.append((start, wal_end, len(body) - 25))
            self.wal += body[25:]

    def close(self) -> None:
        self.writer.write(m.Terminate().encode())
        self.writer.close()


def _directory_wal(directory: Path, start: int, end: int) -> bytes:
    files = sorted(p for p in directory.iterdir() if p.name[:8] == "00000001")
    return b"".join(p.read_bytes() for p in files)[start - START : end - START]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_every_client_gets_the_same_messages_whether_sent_from_files_or_read(
    loop: str, wal_dir: Path, tmp_path: Path, sendfile_calls: list[tuple[int, int]]
) -> None:
    # The CLI runs on uvloop when it is installed, the library on any loop.
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    source = DirectorySource(wal_dir)
    end = int(source.end_of_wal())
    source.close()
    assert end > START + (SEGMENTS - 1) * SEG  # into the .partial, which is read, not sent
    expected = _directory_wal(wal_dir, START, end)
    sockets = tmp_path / "sock"
    sockets.mkdir()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_fan_out(wal_dir, sockets, end, expected, sendfile_calls))


async def _fan_out(
    wal_dir: Path, sockets: Path, end: int, expected: bytes, sendfile_calls: list[tuple[int, int]]
) -> None:
    async with serving(wal_dir, sockets) as sender:
        stopped = await Client.connect(sender, small=True)
        await stopped.start(START)  # and then reads nothing until the others have it all
        others = [await Client.connect(sender) for _ in range(2)]
        others.append(await Client.connect(sender, unix=True))
        for client in others:
            await client.start(START)
        await asyncio.gather(*(client.receive_until(end) for client in others))
        # The stopped client's socket filled: a sendfile came back short or refused.
        assert any(sent < asked for asked, sent in sendfile_calls)
        await stopped.receive_until(end)

        reference = others[-1].messages  # over the Unix socket: every byte read and written
        assert all(length <= MAX_SEND_SIZE for _, _, length in reference)
        for client in [stopped, *others]:
            assert client.messages == reference
            assert bytes(client.wal) == expected
            client.close()
