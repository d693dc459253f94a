"""A byte-level replication session with a real server, for capturing its exact answers.

walstream's client decodes what it reads; tests that compare bytes need the
frames as the server sent them. This helper speaks just enough of the
protocol (trust authentication over the Unix socket, as the superuser) to send
a Query and return every frame up to ReadyForQuery, untouched. Blocking
sockets with a timeout, so Hypothesis tests can drive it without an event loop.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from walstream.protocol import messages as m

from .pgcluster import PgCluster

TIMEOUT = 60.0


@dataclass(frozen=True)
class Frame:
    type: bytes  # one byte
    raw: bytes  # the whole frame: type byte, length word, body

    @property
    def body(self) -> bytes:
        return self.raw[5:]

    def decode(self) -> m.BackendMessage:
        return m.decode_backend(self.type[0], self.body)


class RawSession:
    """One physical replication connection (replication=true) to ``cluster``."""

    def __init__(self, cluster: PgCluster) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(str(cluster.socket_dir / f".s.PGSQL.{cluster.port}"))
        self.parameters: dict[str, str] = {}
        startup = {"user": "postgres", "database": "replication", "replication": "true"}
        self.sock.sendall(m.StartupMessage(startup).encode())
        for frame in self._until_ready():
            msg = frame.decode()
            if isinstance(msg, m.ErrorResponse):
                raise msg.to_exception()
            if isinstance(msg, m.ParameterStatus):
                self.parameters[msg.name] = msg.value

    @property
    def server_version(self) -> int:
        major, _, minor = self.parameters["server_version"].split()[0].partition(".")
        return int(major) * 10000 + int(minor or 0)

    def _read_exactly(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("server closed the connection")
            data += chunk
        return bytes(data)

    def read_frame(self) -> Frame:
        header = self._read_exactly(5)
        (length,) = struct.unpack("!i", header[1:])
        return Frame(header[:1], header + self._read_exactly(length - 4))

    def _until_ready(self) -> list[Frame]:
        frames = []
        while True:
            frame = self.read_frame()
            frames.append(frame)
            if frame.type == b"Z":
                return frames

    def query(self, sql: str, *, follow_copy: bool = True) -> list[Frame]:
        """Send a simple Query; return the server's frames up to and including ReadyForQuery.

        CopyData frames are left out. A COPY the server starts is ended by us:
        CopyBoth (START_REPLICATION) is read until the server's CopyDone when
        ``follow_copy`` (the end of an old timeline), or answered with our
        CopyDone at once; CopyIn (UPLOAD_MANIFEST) gets a CopyFail.
        """
        self.sock.sendall(m.Query(sql).encode())
        frames = []
        while True:
            frame = self.read_frame()
            if frame.type == b"d":
                continue  # WAL, keepalives, backup data: not what these tests compare
            frames.append(frame)
            if frame.type == b"Z":
                return frames
            if frame.type == b"W" and not follow_copy:
                self.sock.sendall(m.CopyDone().encode())
            elif frame.type == b"c":
                if follow_copy:
                    self.sock.sendall(m.CopyDone().encode())
            elif frame.type == b"G":
                self.sock.sendall(m.CopyFail("walstream test").encode())

    def close(self) -> None:
        try:
            self.sock.sendall(m.Terminate().encode())
        finally:
            self.sock.close()

    def __enter__(self) -> RawSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
