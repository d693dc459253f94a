"""The sender as real clients meet it: ``python -m walstream.sender`` in a subprocess.

Shared by tests/test_sender_access.py and tests/test_sender_hostile.py:

* :func:`fill_directory`: a WAL directory written by a real walstream receiver
  (``python -m walstream.receiver -E LSN -n``) from a real primary;
* :class:`SenderProcess`: the sender's command line, its bound port read from
  its log, its memory read from /proc, SIGTERM and the exit status;
* :class:`Raw`: a blocking socket that speaks just enough of the protocol to
  misbehave precisely (and to ask a real server the same things), returning
  the messages exactly as they came, decoded but never judged.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from walstream.protocol import messages as m

from .pgcluster import PgCluster, wait_until

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 30.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def fill_directory(cluster: PgCluster, directory: Path, *, sql: str = "") -> str:
    """``cluster``'s WAL up to now (after ``sql``), written to ``directory`` by a receiver.

    The receiver is walstream's own (``python -m walstream.receiver -E LSN -n``).

    Returns the end position asked for. The receiver ends at the first WAL
    past it, so a little more WAL is made once it is connected.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if sql:
        cluster.psql(sql)
    lsn = cluster.current_lsn()
    proc = subprocess.Popen(
        [sys.executable, "-m", "walstream.receiver", "-d", cluster.conninfo("postgres"),
         "-D", str(directory), "-E", lsn, "-n", "-v"],
        stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if "starting log streaming" in line:
            break
    cluster.psql("SELECT pg_switch_wal()")  # WAL past the end position, so the receiver stops
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return lsn


class SenderProcess:
    """``python -m walstream.sender -D DIR --listen 127.0.0.1:0 -v ARGS`` until :meth:`stop`."""

    def __init__(self, directory: Path, *args: str, log_path: Path) -> None:
        self.log_path = log_path
        self._log: IO[str] = open(log_path, "w")  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "walstream.sender", "-D", str(directory),
             "--listen", "127.0.0.1:0", "-v", *args],
            stdout=subprocess.DEVNULL, stderr=self._log, env=_env(),
        )  # fmt: skip
        self.port = 0

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the sender exited ({self.proc.returncode}):\n{self.log()}")
            found = re.search(r"serving WAL .* on 127\.0\.0\.1:(\d+)", self.log())
            if found:
                self.port = int(found[1])
            return bool(found)

        try:
            wait_until(listening, what="the sender to listen")
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def rss_anon(self) -> int:
        """Anonymous resident memory, bytes: what buffering costs (files read stay page cache)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no RssAnon in /proc/PID/status")

    def stop(self) -> int:
        """SIGTERM; the exit status (the sender ends its clients' streams first)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# ---------------------------------------------------------------------------
# A raw client
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Closed:
    """The server closed the connection (end of stream, or a reset)."""

    reset: bool = False


Message = m.BackendMessage | Closed


class Raw:
    """One blocking connection, frames out as given and messages in as decoded."""

    def __init__(self, address: tuple[str, int] | str, *, timeout: float = TIMEOUT) -> None:
        if isinstance(address, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self._buf = bytearray()
        self.closed = False

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return False
        self._buf += data
        return True

    def read(self) -> Message:
        """The next message, or :class:`Closed` at the end of the stream."""
        while True:
            if len(self._buf) >= 5:
                (length,) = struct.unpack_from("!i", self._buf, 1)
                if len(self._buf) >= 1 + length:
                    kind, body = self._buf[0], bytes(self._buf[5 : 1 + length])
                    del self._buf[: 1 + length]
                    return m.decode_backend(kind, body)
            if self.closed or not self._fill():
                return Closed()

    def read_byte(self) -> bytes:
        """One unframed byte (the answer to SSLRequest or GSSENCRequest), b"" at the end."""
        if not self._buf and not self._fill():
            return b""
        byte = bytes(self._buf[:1])
        del self._buf[:1]
        return byte

    def until(self, *kinds: type) -> list[Message]:
        """Messages up to one of ``kinds``, an ErrorResponse or the end (included)."""
        out: list[Message] = []
        while True:
            msg = self.read()
            out.append(msg)
            if isinstance(msg, (*kinds, m.ErrorResponse, Closed)):
                return out

    def rest(self) -> list[Message]:
        """Everything up to the end of the stream."""
        out: list[Message] = []
        while not isinstance(msg := self.read(), Closed):
            out.append(msg)
        return [*out, msg]

    def startup(self, user: str, **params: str) -> list[Message]:
        """A physical replication StartupMessage; the answers up to the first request or verdict."""
        fields = {"user": user, "database": "replication", "replication": "true", **params}
        self.send(m.StartupMessage(fields).encode())
        return self.until(m.ReadyForQuery, *AUTH_REQUESTS)

    def login(self, user: str = "trust_user") -> None:
        """Trust authentication through to ReadyForQuery."""
        answers = self.startup(user)
        assert isinstance(answers[-1], m.ReadyForQuery), answers

    def query(self, sql: str) -> list[Message]:
        """A simple Query; the messages up to ReadyForQuery, CopyBothResponse or the end."""
        self.send(frame(b"Q", sql.encode() + b"\0"))
        out: list[Message] = []
        while True:
            msg = self.read()
            out.append(msg)
            if isinstance(msg, m.ReadyForQuery | m.CopyBothResponse | Closed):
                return out


AUTH_REQUESTS: tuple[type, ...] = (
    m.AuthenticationCleartextPassword,
    m.AuthenticationMD5Password,
    m.AuthenticationSASL,
)


def frame(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", 4 + len(body)) + body


def errors(messages: Sequence[Message]) -> list[tuple[str, str, str]]:
    """(severity, SQLSTATE, message) of each ErrorResponse."""
    return [
        (msg.fields.get("V", msg.fields.get("S", "")), msg.sqlstate, msg.message)
        for msg in messages
        if isinstance(msg, m.ErrorResponse)
    ]


def lsn_free(text: str) -> str:
    """Text with every LSN and segment file name replaced, to compare two servers' words."""
    text = re.sub(r"\b[0-9A-F]{24}\b", "SEGMENT", text)
    return re.sub(r"\b[0-9A-F]{1,8}/[0-9A-F]{1,8}\b", "X/X", text)
