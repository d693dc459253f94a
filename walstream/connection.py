"""Replication connections over asyncio: the thin shell around the sans-IO core.

``_Wire`` is an ``asyncio.BufferedProtocol`` that feeds every read into the
:class:`~walstream.protocol.client.ClientConnection` state machine and queues
the events it returns; it pauses reading when the consumer falls behind, so a
slow disk throttles the server through TCP instead of growing memory.
:func:`connect` follows libpq: hosts in order, every address of each, sslmode
fallbacks, ``target_session_attrs``, ``connect_timeout`` per address.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, cast

from walstream import pgpass
from walstream.conninfo import ConnectParams, HostSpec, resolve
from walstream.errors import (
    AuthenticationError,
    ConnectError,
    Error,
    LocalProtocolError,
    ProtocolViolation,
    ServerError,
)
from walstream.lsn import LSN
from walstream.pgtypes import pg_time_from_unix
from walstream.protocol import commands
from walstream.protocol import messages as m
from walstream.protocol.auth import Authenticator
from walstream.protocol.client import (
    ClientConnection,
    ClientEvent,
    ClientState,
    ConnectionClosed,
    EncryptionResponse,
)
from walstream.protocol.commands import (
    IdentifySystem,
    NextTimeline,
    QueryResult,
    ReplicationSlot,
    SlotPosition,
    TimelineHistory,
)
from walstream.protocol.replication import (
    HotStandbyFeedback,
    PrimaryKeepalive,
    StandbyStatusUpdate,
    XLogData,
)
from walstream.tls import TlsPolicy, check_host_name, make_context

__all__ = ["ReplicationConnection", "ReplicationStream", "StreamEvent", "connect"]

log = logging.getLogger("walstream.connection")

StreamEvent = XLogData | PrimaryKeepalive

# Machine states whose input is framed messages (5-byte headers) and nothing else.
_FRAMED_STATES: Final = frozenset(
    {
        ClientState.AUTHENTICATING,
        ClientState.STARTUP,
        ClientState.IDLE,
        ClientState.QUERY,
        ClientState.COPY_BOTH,
        ClientState.COPY_OUT,
    }
)

# Queue depth (in messages) at which reading pauses: 64 XLogData messages are
# 8 MiB, enough to keep a disk busy without letting memory follow the backlog.
_HIGH_WATER: Final = 64
_LOW_WATER: Final = 16


# Bytes per socket read: a walsender's catch-up messages are 128 kB, so one
# read completes several and the event loop runs once per several messages.
_READ_SIZE: Final = 256 * 1024
_MIN_ROOM: Final = 64 * 1024  # compact the buffer when less than this is left to read into
_MSG_HEADER: Final = struct.Struct("!xi")  # type byte, length (which counts itself)


class _Wire(asyncio.BufferedProtocol):
    """Bytes from the transport into the state machine; events into a queue.

    A buffered protocol: the transport reads straight into our buffer, and
    the state machine is handed whole messages only, which it parses in
    place (no copy per read and no new bytes object per read; measured in
    catch-up). An unfinished message moves to the front for the next read.
    """

    def __init__(self, machine: ClientConnection) -> None:
        self.machine = machine
        self.transport: asyncio.Transport | None = None
        self.events: deque[ClientEvent] = deque()
        self.failure: BaseException | None = None
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._interrupted = False
        self._paused = False
        # A consumer's handler for batches that arrive while it waits in
        # next_batch (see ReplicationStream.handle_inline).
        self.inline: Callable[[list[ClientEvent]], bool] | None = None
        self._batch_pending = False  # a next_batch is waiting (not next_event)
        self._rbuf = bytearray(_READ_SIZE)
        self._rview = memoryview(self._rbuf)
        # _rbuf[_start:_end] holds the start of a message not yet complete;
        # the transport reads into _rbuf[_end:].
        self._start = self._end = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        # Kept: asyncio.get_running_loop() costs a getpid() system call each time.
        self._loop = asyncio.get_running_loop()

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self._rbuf) - self._end < _MIN_ROOM:
            self._compact()
        return self._rview[self._end :]

    def _compact(self) -> None:
        """Move the unfinished message to the front (or into a larger buffer)."""
        start, end = self._start, self._end
        rest = end - start
        need = _MSG_HEADER.unpack_from(self._rbuf, start)[0] + 1 if rest >= 5 else 0
        size = max(_READ_SIZE, need + _MIN_ROOM)
        if size != len(self._rbuf):  # a message larger than the buffer, or back to normal
            grown = bytearray(size)
            grown[:rest] = self._rview[start:end]
            self._rbuf, self._rview = grown, memoryview(grown)
        elif rest <= start:  # no overlap: a plain copy
            self._rbuf[:rest] = self._rview[start:end]
        else:
            self._rbuf[:rest] = self._rview[start:end].tobytes()
        self._start, self._end = 0, rest

    def buffer_updated(self, nbytes: int) -> None:
        start = self._start
        end = self._end = self._end + nbytes
        cut = start
        if self.machine.state in _FRAMED_STATES:
            # Hand over whole messages only; malformed lengths go through at
            # once, for the state machine to reject.
            rbuf = self._rbuf
            limit = self.machine.max_message_size
            while end - cut >= 5:
                (length,) = _MSG_HEADER.unpack_from(rbuf, cut)
                if length < 4 or length > limit:
                    cut = end
                    break
                if cut + 1 + length > end:
                    break
                cut += 1 + length
        else:
            cut = end
        if cut == end:
            self._start = self._end = 0
        else:
            self._start = cut
        if cut > start:
            self.data_received(self._rview[start:cut])

    def data_received(self, data: bytes | memoryview) -> None:
        if self.failure is not None:
            return  # the connection failed (and was aborted): what follows is moot
        try:
            events = self.machine.receive_data(data)
        except Error as e:
            self._abort(e)
            return
        if events:
            waiter = self._waiter
            if (
                self.inline is not None
                and self._batch_pending
                and waiter is not None
                and not waiter.done()
            ):
                # The consumer is idle in next_batch, so nothing it has not seen
                # comes before these events: it may take them right here.
                try:
                    if self.inline(events):
                        return
                except Exception as e:  # the consumer's own error: its next_batch raises it
                    # Nothing after it may be handled (it would skip what failed),
                    # so the connection ends here, as on a protocol violation.
                    self._abort(e)
                    return
            self.events.extend(events)
            self._wake()
            if len(self.events) >= _HIGH_WATER and not self._paused and self.transport:
                self._paused = True
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self._end > self._start:  # an unfinished message: the state machine judges it
            rest = self._rview[self._start : self._end].tobytes()
            self._start = self._end = 0
            self.data_received(rest)
        try:
            self.events.extend(self.machine.receive_eof())
        except Error as e:
            self._fail(e)
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.machine.state.value != "closed" and self.failure is None:
            detail = f": {exc}" if exc else ""
            self.failure = ConnectError(f"server closed the connection unexpectedly{detail}")
        self._wake()

    def _abort(self, exc: BaseException) -> None:
        """Fail the connection and drop it: nothing more may be read from it."""
        self._fail(exc)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _resume_if_drained(self) -> None:
        if self._paused and len(self.events) <= _LOW_WATER and self.transport:
            self._paused = False
            self.transport.resume_reading()

    def interrupt(self) -> None:
        """Make a pending (or the next) :meth:`next_batch` return early, with no events."""
        self._interrupted = True
        self._wake()

    async def _wait(self, *, interruptible: bool = False) -> bool:
        """Wait for an event; False if :meth:`interrupt` came first."""
        while not self.events:
            if self.failure is not None:
                raise self.failure
            if self.closed:
                raise ConnectError("server closed the connection unexpectedly")
            if interruptible and self._interrupted:
                self._interrupted = False
                return False
            self._waiter = (self._loop or asyncio.get_running_loop()).create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return True

    async def next_event(self) -> ClientEvent:
        await self._wait()
        ev = self.events.popleft()
        self._resume_if_drained()
        return ev

    async def next_batch(self) -> list[ClientEvent]:
        """Every queued event at once: one wake-up per read, not per message.

        At least one event, unless :meth:`interrupt` was called.
        """
        self._batch_pending = True
        try:
            if not await self._wait(interruptible=True):
                return []
        finally:
            self._batch_pending = False
        batch = list(self.events)
        self.events.clear()
        self._resume_if_drained()
        return batch

    def send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectError("connection is closed")
        self.transport.write(data)


def _log_notice(notice: m.NoticeResponse) -> None:
    log.info("server %s: %s", notice.severity or "NOTICE", notice.message)


_VERSION_RE: Final = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def _version_num(text: str) -> int:
    """``server_version`` ("15.18 (Debian ...)", "18.6", "16beta1") as 150018 style."""
    match = _VERSION_RE.match(text)
    if match is None:
        return 0
    major, minor, patch = (int(g) if g else 0 for g in match.groups())
    if major < 10:  # 9.6.24 style
        return major * 10000 + minor * 100 + patch
    return major * 10000 + minor


class ReplicationConnection:
    """A connection to a walsender (or any PostgreSQL backend) after startup."""

    def __init__(
        self,
        wire: _Wire,
        host: HostSpec,
        params: ConnectParams,
        *,
        tls: bool,
        auth_method: str | None,
    ) -> None:
        self._wire = wire
        self._machine = wire.machine
        self.host = host
        self.params = params
        self.tls_in_use = tls
        self.auth_method = auth_method  # None when the server trusted us without asking
        self._busy = False

    # -- properties ---------------------------------------------------------

    @property
    def server_parameters(self) -> dict[str, str]:
        """ParameterStatus values the server reported (live: updated as they change)."""
        return self._machine.parameters

    @property
    def server_version(self) -> int:
        """The server's version in PG_VERSION_NUM form (150018 for 15.18)."""
        return _version_num(self.server_parameters.get("server_version", ""))

    @property
    def backend_pid(self) -> int | None:
        return self._machine.backend_pid

    @property
    def closed(self) -> bool:
        return self._wire.closed or self._machine.state.value == "closed"

    # -- lifecycle ----------------------------------------------------------

    async def close(self) -> None:
        """Send Terminate and close; safe to call twice."""
        transport = self._wire.transport
        if transport is None or transport.is_closing():
            return
        if self._machine.state.value != "closed":
            transport.write(self._machine.terminate())
        transport.close()
        # Let the transport finish (TLS close_notify, socket close) before returning.
        for _ in range(100):
            if self._wire.closed:
                break
            await asyncio.sleep(0.001)

    def abort(self) -> None:
        if self._wire.transport is not None:
            self._wire.transport.abort()

    async def __aenter__(self) -> ReplicationConnection:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- simple queries -----------------------------------------------------

    async def _query(self, sql: str) -> list[QueryResult]:
        if self._busy:
            raise LocalProtocolError("another command is in progress on this connection")
        self._busy = True
        try:
            self._wire.send(self._machine.query(sql))
            return await self._collect_results(sql)
        finally:
            self._busy = False

    async def _collect_results(
        self, sql: str, first: ClientEvent | None = None
    ) -> list[QueryResult]:
        """Read result sets up to ReadyForQuery; raise the server's error if any."""
        results: list[QueryResult] = []
        columns: tuple[str, ...] = ()
        rows: list[tuple[bytes | None, ...]] = []
        error: m.ErrorResponse | None = None
        ev = first
        while True:
            if ev is None:
                ev = await self._wire.next_event()
            if isinstance(ev, m.RowDescription):
                columns, rows = ev.names, []
            elif isinstance(ev, m.DataRow):
                rows.append(ev.values)
            elif isinstance(ev, m.CommandComplete):
                results.append(QueryResult(columns, tuple(rows), ev.tag))
                columns, rows = (), []
            elif isinstance(ev, m.EmptyQueryResponse):
                results.append(QueryResult((), (), ""))
            elif isinstance(ev, m.ErrorResponse):
                error = ev
                if self._machine.state.value == "closed":
                    break
            elif isinstance(ev, m.ReadyForQuery):
                break
            elif isinstance(ev, m.NoticeResponse):
                _log_notice(ev)
            elif isinstance(ev, m.CopyBothResponse | m.CopyOutResponse):
                raise LocalProtocolError(f"{sql!r} started a COPY; use start_replication()")
            elif isinstance(ev, XLogData | PrimaryKeepalive | m.CopyData | m.CopyDone):
                pass  # WAL still in flight when a stream ended: discarded
            elif isinstance(ev, ConnectionClosed):
                raise ConnectError("server closed the connection unexpectedly")
            ev = None
        if error is not None:
            raise error.to_exception()
        return results

    async def execute(self, sql: str) -> QueryResult:
        """Run one command with the simple query protocol; return its last result set."""
        results = await self._query(sql)
        return results[-1] if results else QueryResult((), (), "")

    # -- replication commands ----------------------------------------------

    async def identify_system(self) -> IdentifySystem:
        return IdentifySystem.from_result(await self.execute("IDENTIFY_SYSTEM"))

    async def show(self, name: str) -> str:
        result = await self.execute(f"SHOW {name}")
        value = result.single_row("SHOW", 1)[0]
        if value is None:
            raise ProtocolViolation(f"SHOW {name} returned NULL")
        return value.decode()

    async def timeline_history(self, timeline: int) -> TimelineHistory:
        result = await self.execute(f"TIMELINE_HISTORY {timeline}")
        return TimelineHistory.from_result(result, timeline)

    async def create_replication_slot(
        self, name: str, *, temporary: bool = False, reserve_wal: bool = False
    ) -> ReplicationSlot:
        sql = commands.create_replication_slot(
            name, temporary=temporary, reserve_wal=reserve_wal, server_version=self.server_version
        )
        return ReplicationSlot.from_result(await self.execute(sql))

    async def read_replication_slot(self, name: str) -> SlotPosition | None:
        """The slot's restart position (PostgreSQL 15+), or None if there is no such slot."""
        return SlotPosition.from_result(await self.execute(commands.read_replication_slot(name)))

    async def drop_replication_slot(self, name: str, *, wait: bool = False) -> None:
        await self.execute(commands.drop_replication_slot(name, wait=wait))

    async def start_replication(
        self, start: LSN, *, timeline: int | None = None, slot: str | None = None
    ) -> ReplicationStream:
        """Send START_REPLICATION and return the stream once the server has answered.

        A server asked to start exactly at the end of ``timeline`` answers
        without entering COPY; the returned stream is then already ended and
        its :attr:`ReplicationStream.next_timeline` says where to continue.
        """
        if self._busy:
            raise LocalProtocolError("another command is in progress on this connection")
        sql = commands.start_replication(start, timeline=timeline, slot=slot)
        self._busy = True
        try:
            self._wire.send(self._machine.query(sql))
            while True:
                ev = await self._wire.next_event()
                if isinstance(ev, m.NoticeResponse):
                    _log_notice(ev)
                    continue
                break
            if isinstance(ev, m.CopyBothResponse):
                return ReplicationStream(self, start)
            results = await self._collect_results(sql, ev)
        except BaseException:
            self._busy = False
            raise
        self._busy = False
        stream = ReplicationStream(self, start, ended=True)
        stream.next_timeline = _next_timeline(results)
        return stream

    def _release(self) -> None:
        self._busy = False


def _next_timeline(results: list[QueryResult]) -> NextTimeline | None:
    for r in results:
        if r.raw_rows and len(r.columns) >= 2:
            return NextTimeline.from_result(r)
    return None


class ReplicationStream:
    """The COPY of START_REPLICATION: XLogData and keepalives in, status updates out.

    Read with ``async for event in stream`` or, to handle everything that
    arrived in one read at once, ``await stream.read()``. The stream ends when
    the server ends its timeline (then :attr:`next_timeline` is set) or when
    :meth:`end` is called; either way call :meth:`end` to return the
    connection to idle.
    """

    def __init__(self, conn: ReplicationConnection, start: LSN, *, ended: bool = False) -> None:
        self.conn = conn
        self.start = start
        self.next_timeline: NextTimeline | None = None
        self.server_ended = ended  # the server has ended COPY (or never entered it)
        self._aborted = False  # ended by an error or CommandComplete, not CopyDone
        self._finished = ended  # result collected, connection idle again
        self._error: BaseException | None = None

    async def read(self) -> list[StreamEvent]:
        """Every streaming event available now (waits for at least one).

        Returns an empty list once the server has ended the stream, and
        raises the server's error if it ended the stream with one. Also
        returns an empty list, with :attr:`server_ended` still False, after
        :meth:`interrupt`.
        """
        wire = self.conn._wire
        while True:
            if self.server_ended:
                if self._aborted:
                    await self._finish()
                return []
            batch = await wire.next_batch()
            if not batch:
                return []  # interrupted
            out: list[StreamEvent] = []
            for i, ev in enumerate(batch):
                if isinstance(ev, XLogData | PrimaryKeepalive):
                    out.append(ev)
                elif isinstance(ev, m.CopyDone):
                    self.server_ended = True  # end of timeline: end() answers it
                elif isinstance(ev, m.NoticeResponse):
                    _log_notice(ev)
                elif not isinstance(ev, m.ParameterStatus | m.NotificationResponse):
                    # ErrorResponse, CommandComplete, or the connection closing:
                    # COPY is over without our CopyDone; the rest is the result.
                    self.server_ended = self._aborted = True
                    wire.events.extendleft(reversed(batch[i:]))
                    break
            if out:
                return out

    def interrupt(self) -> None:
        """Make a pending :meth:`read` return an empty list now; the stream goes on.

        Lets a consumer await :meth:`read` directly (no task and no
        ``asyncio.wait`` per read, which cost event-loop turns on every
        synchronous commit) and still stop promptly.
        """
        self.conn._wire.interrupt()

    def handle_inline(self, handler: Callable[[list[StreamEvent]], bool] | None) -> None:
        """Offer batches to ``handler`` in the transport's read callback itself.

        While a :meth:`read` is pending (not :meth:`end`), a batch of only XLogData and
        keepalives goes to ``handler`` first; if it returns True the batch is
        consumed and the read goes on waiting. Anything else, or False, takes
        the normal path to :meth:`read`, in order. An exception from
        ``handler`` is raised by the pending :meth:`read`.

        For a synchronous standby: a small batch written, fsynced and
        answered in the callback saves the event-loop turn and task wake-up
        between the bytes arriving and the fsync, on every commit's round
        trip (measured in pgbench TPS). ``None`` removes the handler.
        """
        if handler is None:
            self.conn._wire.inline = None
            return

        def inline(batch: list[ClientEvent]) -> bool:
            for ev in batch:
                if type(ev) is not XLogData and type(ev) is not PrimaryKeepalive:
                    return False
            return handler(cast(list[StreamEvent], batch))

        self.conn._wire.inline = inline

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[StreamEvent]:
        while True:
            events = await self.read()
            if not events:
                return
            for ev in events:
                yield ev

    def _send(self, payload: bytes) -> None:
        machine = self.conn._machine
        if not machine.in_copy:
            raise LocalProtocolError("the replication stream has ended")
        self.conn._wire.send(machine.copy_data(payload))

    def send_status(
        self,
        write: int,
        flush: int,
        apply: int,
        *,
        reply_requested: bool = False,
        now: float | None = None,
    ) -> None:
        """Send a standby status update ('r') with the standby's positions."""
        t = pg_time_from_unix(time.time() if now is None else now)
        self.send_update(
            StandbyStatusUpdate(LSN(write), LSN(flush), LSN(apply), t, reply_requested)
        )

    def send_update(self, update: StandbyStatusUpdate) -> None:
        """Send a status update built already (e.g. by a StatusPolicy)."""
        self._send(update.encode())

    def send_feedback(
        self,
        xmin: int = 0,
        xmin_epoch: int = 0,
        catalog_xmin: int = 0,
        catalog_xmin_epoch: int = 0,
        *,
        now: float | None = None,
    ) -> None:
        """Send hot standby feedback ('h'); all zeros clears it on the primary."""
        t = pg_time_from_unix(time.time() if now is None else now)
        self._send(
            HotStandbyFeedback(t, xmin, xmin_epoch, catalog_xmin, catalog_xmin_epoch).encode()
        )

    async def end(self) -> NextTimeline | None:
        """Finish COPY (sending our CopyDone if due) and read the command's result.

        Returns where the next timeline starts if the server ended the stream
        at a timeline switch; None if we ended it or the server had no more.
        Raises the server's error if the stream ended with one.
        """
        machine = self.conn._machine
        if not self._finished and machine.in_copy and not machine.client_copy_done:
            self.conn._wire.send(machine.copy_done())
        await self._finish()
        return self.next_timeline

    async def _finish(self) -> None:
        """Collect the result after COPY (WAL still in flight is discarded)."""
        if not self._finished:
            self._finished = True
            try:
                results = await self.conn._collect_results("START_REPLICATION")
                self.next_timeline = _next_timeline(results)
            except ServerError as e:
                self._error = e
            except ConnectError as e:
                # A walsender shutting down ends COPY with CommandComplete and closes.
                if not self.conn.closed or not self._aborted:
                    self._error = e
            finally:
                self.conn._release()
        if self._error is not None:
            raise self._error


# ---------------------------------------------------------------------------
# Connection establishment
# ---------------------------------------------------------------------------


@dataclass
class _Attempt:
    host: HostSpec
    address: Any  # a sockaddr tuple for TCP, a path for Unix sockets
    family: int


def _describe(host: HostSpec, address: Any) -> str:
    if host.is_unix_socket:
        return f'connection to server on socket "{host.socket_path()}" failed'
    ip = address[0] if isinstance(address, tuple) else str(address)
    name = host.host
    if host.hostaddr or name == ip:
        return f'connection to server at "{ip}", port {host.port} failed'
    return f'connection to server at "{name}" ({ip}), port {host.port} failed'


async def _addresses(host: HostSpec) -> list[_Attempt]:
    if host.is_unix_socket:
        return [_Attempt(host, host.socket_path(), socket.AF_UNIX)]
    target = host.hostaddr or host.host
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target, host.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConnectError(
            f'could not translate host name "{target}" to address: {e.strerror}'
        ) from e
    seen: list[_Attempt] = []
    for family, _, _, _, addr in infos:
        if not any(a.address == addr for a in seen):
            seen.append(_Attempt(host, addr, family))
    return seen


def _tls_policy(p: ConnectParams) -> TlsPolicy:
    return TlsPolicy(
        sslmode=p.sslmode,
        sslrootcert=p.sslrootcert,
        sslcert=p.sslcert,
        sslkey=p.sslkey,
        sslcrl=p.sslcrl,
        sslpassword=p.sslpassword,
        sslsni=p.sslsni,
        min_protocol=p.ssl_min_protocol_version or "TLSv1.2",
        max_protocol=p.ssl_max_protocol_version,
    )


async def _open(attempt: _Attempt, machine: ClientConnection) -> _Wire:
    loop = asyncio.get_running_loop()
    wire = _Wire(machine)
    if attempt.family == socket.AF_UNIX:
        await loop.create_unix_connection(lambda: wire, attempt.address)
    else:
        sock = socket.socket(attempt.family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, attempt.address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.create_connection(lambda: wire, sock=sock)
        except BaseException:
            sock.close()
            raise
    return wire


async def _startup(
    attempt: _Attempt, params: ConnectParams, use_tls: bool, policy: TlsPolicy
) -> ReplicationConnection:
    """One connection attempt to one address: TLS, startup, authentication."""
    machine = ClientConnection()
    wire = await _open(attempt, machine)
    try:
        tls_object: ssl.SSLObject | None = None
        if use_tls:
            wire.send(machine.ssl_request())
            answer = await wire.next_event()
            if isinstance(answer, m.ErrorResponse):
                raise answer.to_exception(_describe(attempt.host, attempt.address))
            assert isinstance(answer, EncryptionResponse)
            if answer.accepted:
                tls_object = await _start_tls(wire, attempt.host, policy)
            elif policy.required:
                raise ConnectError("server does not support SSL, but SSL was required")
        wire.send(machine.startup(params.startup_parameters()))
        password = params.password
        if password is None and params.user and params.dbname:
            password = pgpass.lookup_password(
                params.passfile,
                attempt.host.host,
                attempt.host.port,
                params.dbname,
                params.user,
                replication=params.physical_replication,
            )
            from_file = password is not None
        else:
            from_file = False
        auth = Authenticator(
            params.user, password, channel_binding=params.channel_binding, tls=tls_object
        )
        while True:
            ev = await wire.next_event()
            if isinstance(ev, m.AuthenticationOk):
                auth.authentication_ok()
            elif isinstance(
                ev,
                m.AuthenticationCleartextPassword
                | m.AuthenticationMD5Password
                | m.AuthenticationSASL
                | m.AuthenticationSASLContinue
                | m.AuthenticationSASLFinal
                | m.AuthenticationUnsupported,
            ):
                try:
                    reply = auth.respond(ev)
                except AuthenticationError as e:
                    # libpq names the server in front of its own errors too.
                    raise AuthenticationError(
                        f"{_describe(attempt.host, attempt.address)}: {e}"
                    ) from None
                if reply is not None:
                    wire.send(machine.authentication_response(reply))
            elif isinstance(ev, m.ErrorResponse):
                err = ev.to_exception(_describe(attempt.host, attempt.address))
                if from_file and err.sqlstate == "28P01":
                    err.note = f'password retrieved from file "{params.passfile}"'
                raise err
            elif isinstance(ev, m.NegotiateProtocolVersion):
                log.debug("server negotiated protocol 3.%d", ev.newest_minor)
            elif isinstance(ev, m.NoticeResponse):
                _log_notice(ev)
            elif isinstance(ev, m.ReadyForQuery):
                break
            elif isinstance(ev, ConnectionClosed):
                raise ConnectError("server closed the connection unexpectedly")
        if params.channel_binding == "require" and auth.method is None:
            # trust: the server never asked; libpq refuses this under require.
            raise AuthenticationError(
                "channel binding required, but server authenticated client without channel binding"
            )
        return ReplicationConnection(
            wire, attempt.host, params, tls=tls_object is not None, auth_method=auth.method
        )
    except BaseException:
        if wire.transport is not None:
            wire.transport.abort()
        raise


async def _start_tls(wire: _Wire, host: HostSpec, policy: TlsPolicy) -> ssl.SSLObject:
    ctx, check_name = make_context(policy)
    name = host.host
    sni: str | None = None
    if policy.sslsni and not _is_ip(name):
        sni = name
    loop = asyncio.get_running_loop()
    assert wire.transport is not None
    try:
        transport = await loop.start_tls(wire.transport, wire, ctx, server_hostname=sni)
    except ssl.SSLCertVerificationError as e:
        detail = f": {e.verify_message}" if e.verify_message else ""
        raise ConnectError(f"SSL error: certificate verify failed{detail}") from e
    except (ssl.SSLError, OSError) as e:
        raise ConnectError(f"SSL error: {e}") from e
    if transport is None:
        raise ConnectError("SSL handshake failed: connection closed")
    wire.transport = transport
    obj = transport.get_extra_info("ssl_object")
    assert isinstance(obj, ssl.SSLObject)
    if check_name:
        cert = obj.getpeercert()
        if not cert:
            raise ConnectError("server did not present a certificate")
        check_host_name(dict(cert), host.hostaddr if _is_ip(name) and host.hostaddr else name)
    return obj


def _is_ip(name: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name)
    except OSError:
        return False
    return True


_CANNOT_CONNECT_NOW: Final = "57P03"

_SESSION_CHECKS: Final[dict[str, tuple[Callable[[dict[str, str]], bool], str]]] = {
    # As libpq: a hot standby is read-only whatever default_transaction_read_only says.
    "read-write": (
        lambda p: (
            p.get("default_transaction_read_only") == "off" and p.get("in_hot_standby") != "on"
        ),
        "session is read-only",
    ),
    "read-only": (
        lambda p: p.get("default_transaction_read_only") == "on" or p.get("in_hot_standby") == "on",
        "session is not read-only",
    ),
    "primary": (lambda p: p.get("in_hot_standby") == "off", "server is in hot standby mode"),
    "standby": (lambda p: p.get("in_hot_standby") == "on", "server is not in hot standby mode"),
}


def _session_mismatch(attrs: str, parameters: dict[str, str]) -> str | None:
    check = _SESSION_CHECKS.get(attrs)
    if check is None:
        return None
    ok, message = check
    return None if ok(parameters) else message


async def connect(conninfo: str = "", **params: str | int | None) -> ReplicationConnection:
    """Open a physical replication connection, the way libpq would.

    ``conninfo`` is a keyword/value string or a ``postgresql://`` URI; keyword
    arguments override it; PG* environment variables and ``.pgpass`` apply as
    in libpq. ``replication`` defaults to ``true`` (a physical walsender) and
    ``fallback_application_name`` to ``walstream``.
    """
    given: dict[str, Any] = dict(params)  # Any: keys are libpq keywords, not resolve()'s own
    resolved = resolve(conninfo, **given)
    defaults: dict[str, Any] = {}
    if resolved.replication is None:
        defaults["replication"] = "true"
    if resolved.application_name is None:
        defaults["fallback_application_name"] = "walstream"
    if defaults:
        resolved = resolve(conninfo, **{**defaults, **given})
    return await connect_params(resolved)


async def connect_params(params: ConnectParams) -> ReplicationConnection:
    """:func:`connect` for parameters already resolved."""
    policy = _tls_policy(params)
    hosts = list(params.hosts)
    if params.load_balance_hosts == "random":
        random.shuffle(hosts)
    errors: list[str] = []
    attrs = params.target_session_attrs
    passes = ["standby", "any"] if attrs == "prefer-standby" else [attrs]
    refusal: ServerError | None = None
    for wanted in passes:
        for host in hosts:
            try:
                attempts = await _addresses(host)
            except ConnectError as e:
                errors.append(str(e))
                continue
            for attempt in attempts:
                try:
                    conn = await _connect_address(attempt, params, policy)
                except ServerError as e:
                    if e.sqlstate != _CANNOT_CONNECT_NOW:
                        raise
                    # As libpq: a server starting up or shutting down sends the
                    # client on to the next host (its other addresses would
                    # say the same).
                    errors.append(str(e))  # it names the server already
                    refusal = e
                    break
                except (OSError, TimeoutError) as e:
                    if isinstance(e, ConnectError):
                        errors.append(f"{_describe(host, attempt.address)}: {e}")
                    else:
                        errors.append(_os_error_text(host, attempt.address, e))
                    continue
                mismatch = _session_mismatch(wanted, conn.server_parameters)
                if mismatch is None:
                    return conn
                errors.append(f"{_describe(host, attempt.address)}: {mismatch}")
                await conn.close()
                break  # another address of the same server would say the same
    if refusal is not None and len(errors) == 1:
        raise refusal  # the only failure: keep its SQLSTATE
    raise ConnectError("\n".join(errors) if errors else "no host to connect to")


def _os_error_text(host: HostSpec, address: Any, e: BaseException) -> str:
    head = _describe(host, address)
    if isinstance(e, TimeoutError):
        return f"{head}: timeout expired"
    # asyncio words refusals as "Connect call failed (...)"; libpq prints strerror.
    errno = getattr(e, "errno", None)
    reason = os.strerror(errno) if errno else getattr(e, "strerror", None) or str(e)
    text = f"{head}: {reason}"
    if isinstance(e, ConnectionRefusedError | FileNotFoundError):
        if host.is_unix_socket:
            text += "\n\tIs the server running locally and accepting connections on that socket?"
        else:
            text += "\n\tIs the server running on that host and accepting TCP/IP connections?"
    return text


async def _connect_address(
    attempt: _Attempt, params: ConnectParams, policy: TlsPolicy
) -> ReplicationConnection:
    """Connect to one address, applying the sslmode fallbacks libpq applies.

    ``prefer`` retries without TLS, and ``allow`` with TLS, when the server
    rejects the first attempt during startup (e.g. a hostssl/hostnossl line).
    """
    unix = attempt.family == socket.AF_UNIX
    mode = policy.sslmode
    if unix or mode == "disable":
        order = [False]
    elif mode == "allow":
        order = [False, True]
    elif mode == "prefer":
        order = [True, False]
    else:
        order = [True]
    timeout = params.connect_timeout
    for i, use_tls in enumerate(order):
        try:
            async with asyncio.timeout(timeout):
                return await _startup(attempt, params, use_tls, policy)
        except ServerError as e:
            if i + 1 < len(order) and e.sqlstate.startswith("28"):
                log.debug("retrying %s TLS after: %s", "with" if order[i + 1] else "without", e)
                continue
            raise
    raise AssertionError("unreachable")
