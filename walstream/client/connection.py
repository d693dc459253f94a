"""A replication connection after startup: commands, and the START_REPLICATION stream.

:class:`ReplicationConnection` runs the core's conversations
(:mod:`walstream.protocol.generators`) over the asyncio :class:`~walstream.client.wire.Wire`;
:class:`ReplicationStream` is the COPY of START_REPLICATION, read a batch per
socket read, with status updates and hot-standby feedback going out. Opening
a connection (hosts, TLS, authentication) is :mod:`walstream.client.connect`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Final, TypeVar, cast

from walstream.client.conninfo import ConnectParams, HostSpec
from walstream.client.wire import Wire
from walstream.errors import ConnectError, LocalProtocolError, ProtocolViolation, ServerError
from walstream.lsn import LSN
from walstream.pgtypes import pg_time_from_unix
from walstream.protocol import commands, generators
from walstream.protocol import messages as m
from walstream.protocol.client import ClientConnection, ClientEvent
from walstream.protocol.commands import (
    IdentifySystem,
    NextTimeline,
    QueryResult,
    ReplicationSlot,
    SlotPosition,
    TimelineHistory,
)
from walstream.protocol.generators import RECEIVE, START_TLS, Conversation
from walstream.protocol.replication import (
    HotStandbyFeedback,
    PrimaryKeepalive,
    StandbyStatusUpdate,
    XLogData,
)

__all__ = ["ReplicationConnection", "ReplicationStream", "StreamEvent", "drive"]

log = logging.getLogger("walstream.connection")

StreamEvent = XLogData | PrimaryKeepalive
T = TypeVar("T")


async def drive(
    wire: Wire[ClientEvent],
    conversation: Conversation[T],
    start_tls: Callable[[], Awaitable[bytes]] | None = None,
) -> T:
    """Run a conversation of the core over ``wire``: what it yields, done; its result, returned."""
    answer: ClientEvent | bytes | None = None
    try:
        while True:
            need = conversation.send(answer)
            if isinstance(need, bytes):
                wire.send(need)
                answer = None
            elif need is RECEIVE:
                answer = await wire.next_event()
            else:
                assert need is START_TLS
                assert start_tls is not None
                answer = await start_tls()
    except StopIteration as stop:
        return cast(T, stop.value)


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
        wire: Wire[ClientEvent],
        host: HostSpec,
        params: ConnectParams,
        *,
        tls: bool,
        auth_method: str | None,
    ) -> None:
        self.wire = wire
        self._machine = cast(ClientConnection, wire.machine)
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
    def machine(self) -> ClientConnection:
        """The sans-IO state machine under this connection."""
        return self._machine

    @property
    def backend_pid(self) -> int | None:
        return self._machine.backend_pid

    @property
    def closed(self) -> bool:
        return self.wire.closed or self._machine.closed

    # -- lifecycle ----------------------------------------------------------

    async def close(self) -> None:
        """Send Terminate and close; safe to call twice."""
        if self.wire.is_closing:
            return
        await self.wire.close(b"" if self._machine.closed else self._machine.terminate())

    def abort(self) -> None:
        self.wire.abort()

    async def __aenter__(self) -> ReplicationConnection:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- simple queries -----------------------------------------------------

    async def _run(self, conversation: Conversation[T]) -> T:
        """Drive one of the core's conversations; one at a time per connection."""
        if self._busy:
            raise LocalProtocolError("another command is in progress on this connection")
        self._busy = True
        try:
            return await drive(self.wire, conversation)
        finally:
            self._busy = False

    async def _query(self, sql: str) -> list[QueryResult]:
        return await self._run(generators.simple_query(self._machine, sql, _log_notice))

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
        sql = commands.start_replication(start, timeline=timeline, slot=slot)
        results = await self._run(generators.start_replication(self._machine, sql, _log_notice))
        if results is None:
            self._busy = True  # the stream holds the connection until end()
            return ReplicationStream(self, start)
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
        self._machine = cast(ClientConnection, conn.wire.machine)
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
        wire = self.conn.wire
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
                    wire.unread(batch[i:])
                    break
            if out:
                return out

    def interrupt(self) -> None:
        """Make a pending :meth:`read` return an empty list now; the stream goes on.

        Lets a consumer await :meth:`read` directly (no task and no
        ``asyncio.wait`` per read, which cost event-loop turns on every
        synchronous commit) and still stop promptly.
        """
        self.conn.wire.interrupt()

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
            self.conn.wire.set_inline(None)
            return

        def inline(batch: list[ClientEvent]) -> bool:
            for ev in batch:
                if type(ev) is not XLogData and type(ev) is not PrimaryKeepalive:
                    return False
            return handler(cast(list[StreamEvent], batch))

        self.conn.wire.set_inline(inline)

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
        machine = self._machine
        if not machine.in_copy:
            raise LocalProtocolError("the replication stream has ended")
        self.conn.wire.send(machine.copy_data(payload))

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
        machine = self._machine
        if not self._finished and machine.in_copy and not machine.client_copy_done:
            self.conn.wire.send(machine.copy_done())
        await self._finish()
        return self.next_timeline

    async def _finish(self) -> None:
        """Collect the result after COPY (WAL still in flight is discarded)."""
        if not self._finished:
            self._finished = True
            try:
                results = await drive(
                    self.conn.wire,
                    generators.query_results(self._machine, "START_REPLICATION", None, _log_notice),
                )
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
