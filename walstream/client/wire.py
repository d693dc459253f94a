"""The asyncio wire: bytes from a transport into a sans-IO state machine, its events into a queue.

Generic over the machine: the client's :class:`~walstream.protocol.client.ClientConnection`
and the server's :class:`~walstream.protocol.server.ServerConnection` both
take bytes (``receive_data``/``receive_eof``) and return events, and say
when their input is framed messages (``framed``) and how large one may be
(``max_message_size``). The replication client and the sender's server
shell run on this one class.

A buffered protocol: the transport reads straight into our buffer, and the
machine is handed whole messages only, which it parses in place (no copy
per read and no new bytes object per read; measured in catch-up). An
unfinished message moves to the front for the next read. Reading pauses
when the consumer falls behind (``high_water`` queued events), so a slow
disk throttles the peer through TCP instead of growing memory.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final, Generic, Protocol, TypeVar, cast

from walstream.errors import ConnectError, Error, ProtocolViolation
from walstream.protocol.messages import message_end

__all__ = ["HIGH_WATER", "LOW_WATER", "READ_SIZE", "SansIOMachine", "Wire"]

E = TypeVar("E")

# Queue depth (in events) at which reading pauses: 64 XLogData messages are
# 8 MiB, enough to keep a disk busy without letting memory follow the backlog.
HIGH_WATER: Final = 64
LOW_WATER: Final = 16

# Bytes per socket read: a walsender's catch-up messages are 128 kB, so one
# read completes several and the event loop runs once per several messages.
READ_SIZE: Final = 256 * 1024
_MIN_ROOM: Final = 64 * 1024  # compact the buffer when less than this is left to read into
_MSG_HEADER: Final = struct.Struct("!xi")  # type byte, length (which counts itself)


class SansIOMachine(Protocol[E]):
    """What the wire needs of a protocol state machine."""

    @property
    def max_message_size(self) -> int: ...

    @property
    def framed(self) -> bool: ...  # input is framed messages now (may be cut between them)

    @property
    def closed(self) -> bool: ...

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[E]: ...

    def receive_eof(self) -> list[E]: ...


class Wire(asyncio.BufferedProtocol, Generic[E]):
    """One connection's transport, fed into ``machine``; events wait in a queue for a consumer.

    ``peer`` names the other side in the error a lost connection raises
    ("server closed the connection unexpectedly", as libpq words it).
    """

    def __init__(
        self,
        machine: SansIOMachine[E],
        *,
        peer: str = "server",
        high_water: int = HIGH_WATER,
        abort_on_error: bool = True,
    ) -> None:
        self.machine = machine
        self.peer = peer
        # A client drops a server that breaks the protocol at once; a server
        # first tells the client why (the consumer sends the FATAL, then closes).
        self._abort_on_error = abort_on_error
        self.write_paused = False  # the transport's buffer is above its high-water mark
        self.on_drained: Callable[[], None] | None = None
        self.transport: asyncio.Transport | None = None
        self.events: deque[E] = deque()
        self.failure: BaseException | None = None
        self.closed = False  # the transport is gone
        self._high_water = high_water
        self._low_water = min(LOW_WATER, high_water // 4)
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._interrupted = False
        self._paused = False
        # A consumer's handler for batches that arrive while it waits in
        # next_batch (see set_inline).
        self._inline: Callable[[list[E]], bool] | None = None
        self._batch_pending = False  # a next_batch is waiting (not next_event)
        self._rbuf = bytearray(READ_SIZE)
        self._rview = memoryview(self._rbuf)
        # _rbuf[_start:_end] holds the start of a message not yet complete;
        # the transport reads into _rbuf[_end:].
        self._start = self._end = 0

    # -- the transport's side ---------------------------------------------------

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
        size = max(READ_SIZE, need + _MIN_ROOM)
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
        machine = self.machine
        if machine.framed:
            # Hand over whole messages only; a malformed length goes through
            # at once, for the state machine to reject.
            rbuf = self._rbuf
            limit = machine.max_message_size
            try:
                while (stop := message_end(rbuf, cut, end, limit)) >= 0:
                    cut = stop
            except ProtocolViolation:
                cut = end
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
            if self._abort_on_error:
                self._abort(e)
            else:
                self._fail(e)
            return
        if events:
            waiter = self._waiter
            if (
                self._inline is not None
                and self._batch_pending
                and waiter is not None
                and not waiter.done()
            ):
                # The consumer is idle in next_batch, so nothing it has not seen
                # comes before these events: it may take them right here.
                try:
                    if self._inline(events):
                        return
                except Exception as e:  # the consumer's own error: its next_batch raises it
                    # Nothing after it may be handled (it would skip what failed),
                    # so the connection ends here, as on a protocol violation.
                    self._abort(e)
                    return
            self.events.extend(events)
            self._wake()
            if len(self.events) >= self._high_water and not self._paused and self.transport:
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
        if not self.machine.closed and self.failure is None:
            detail = f": {exc}" if exc else ""
            self.failure = ConnectError(f"{self.peer} closed the connection unexpectedly{detail}")
        self._wake()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.on_drained is not None:
            self.on_drained()

    # -- the consumer's side -----------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectError("connection is closed")
        self.transport.write(data)

    async def next_event(self) -> E:
        await self._wait()
        ev = self.events.popleft()
        self._resume_if_drained()
        return ev

    async def next_batch(self) -> list[E]:
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

    def unread(self, events: Iterable[E]) -> None:
        """Put events back at the front of the queue, in order (the next reader takes them)."""
        self.events.extendleft(reversed(list(events)))

    def interrupt(self) -> None:
        """Make a pending (or the next) :meth:`next_batch` return early, with no events."""
        self._interrupted = True
        self._wake()

    def set_inline(self, handler: Callable[[list[E]], bool] | None) -> None:
        """Offer each new batch to ``handler`` in the read callback while a next_batch waits.

        True from the handler consumes the batch; False queues it for the
        waiting reader, in order. An exception from it fails the wire: the
        pending next_batch raises it and nothing after it is handled.
        """
        self._inline = handler

    @property
    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    async def close(self, last: bytes = b"") -> None:
        """Send ``last`` (a Terminate, say), close, and let the transport finish; safe twice."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if last:
            transport.write(last)
        transport.close()
        # Let the transport finish (TLS close_notify, socket close) before returning.
        for _ in range(100):
            if self.closed:
                break
            await asyncio.sleep(0.001)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        """Read nothing more until the transport changes (a TLS handshake takes over reading)."""
        if self.transport is not None:
            self.transport.pause_reading()

    async def start_tls(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> ssl.SSLObject:
        """Run a TLS handshake on this connection; what is read afterwards is decrypted."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            self.transport,
            self,
            context,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        if transport is None:
            raise ConnectError("SSL handshake failed: connection closed")
        self.transport = transport
        obj = transport.get_extra_info("ssl_object")
        assert isinstance(obj, ssl.SSLObject)
        return obj

    # -- helpers -----------------------------------------------------------------

    def _abort(self, exc: BaseException) -> None:
        """Fail the connection and drop it: nothing more may be read from it."""
        self._fail(exc)
        self.abort()

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _resume_if_drained(self) -> None:
        if self._paused and len(self.events) <= self._low_water and self.transport:
            self._paused = False
            self.transport.resume_reading()

    async def _wait(self, *, interruptible: bool = False) -> bool:
        """Wait for an event; False if :meth:`interrupt` came first."""
        while not self.events:
            if self.failure is not None:
                raise self.failure
            if self.closed:
                raise ConnectError(f"{self.peer} closed the connection unexpectedly")
            if interruptible and self._interrupted:
                self._interrupted = False
                return False
            self._waiter = (self._loop or asyncio.get_running_loop()).create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return True
