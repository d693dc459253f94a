"""The walreceiver role: stream WAL from a primary into a pg_receivewal-style directory.

:class:`WalReceiver` is the embeddable service; its command line
(``python -m walstream.receiver``, ``walstream receive``) is
:mod:`walstream.cli.receive`. A consumer of the WAL it makes durable (the
startup role's replayer, in :mod:`walstream.standby`) plugs in as a
:class:`WalConsumer`, so this role imports no other.

How the pieces fit: the connection delivers XLogData in batches (everything
one socket read completed); each batch is written by the disk layer
(:mod:`walstream.storage.directory`, which owns pre-padding, fsync, rename and
compression) in a dedicated worker thread, so the event loop stays free to
send status updates while the disk is slow; in synchronous mode the batch is
fsynced before the status update that reports it goes out, and small batches
(where a commit waits on the round trip) are written in place, since the
thread hand-off cost measurable TPS. Disk calls never overlap: the loop
awaits each before the next, which is the disk layer's threading contract.
The status policy (:mod:`walstream.protocol.standby`) decides when updates go
out and never lets a flush position run ahead of an fsync.

Errors: :class:`ReceiverError` for the receiver's own fatal conditions
(directory, options, server identity); the client's, storage's and the
server's errors pass through (all :class:`walstream.errors.Error`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from walstream.client import ReplicationConnection, ReplicationStream, StreamEvent, connect
from walstream.errors import (
    ConnectError,
    Error,
    ProtocolViolation,
    ServerError,
)
from walstream.lsn import LSN
from walstream.protocol.replication import XLogData
from walstream.receiver.policy import ReceivePolicy
from walstream.storage.compression import Compression
from walstream.storage.directory import DirectoryMismatch, WalDirectory
from walstream.storage.latency import LatencyHistogram
from walstream.wal.segment import parse_history, parse_size_setting, segment_start

__all__ = ["ReceiverError", "ReceiverOptions", "ReceiverStatus", "WalConsumer", "WalReceiver"]

log = logging.getLogger("walstream.receiver")

_INLINE_SYNC_BYTES: Final = 256 * 1024

_RATE_STEP: Final = 0.1  # seconds between the rate's samples
_RATE_WINDOW: Final = 2.0  # seconds the rate is measured over

# Server errors that no retry can cure: authentication and authorization,
# missing slots, WAL the server no longer has. Anything else (connection
# lost, server restarting, too many senders) is worth another attempt.
_FATAL_SQLSTATES: Final = frozenset({"28P01", "28000", "42501", "42704", "58P01", "0A000"})


class ReceiverError(Error):
    """A fatal condition of the receiver itself (directory, options, server identity)."""


@dataclass(frozen=True)
class ReceiverOptions:
    """What to receive, from where, and how durably.

    ``conninfo`` and ``connect_params`` are passed to
    :func:`walstream.connect`; the CLI maps ``-d/-h/-p/-U`` onto them.
    """

    directory: Path
    conninfo: str = ""
    connect_params: dict[str, str] = field(default_factory=dict)
    slot: str | None = None
    synchronous: bool = False
    sync: bool = True
    status_interval: float = 10.0
    endpos: LSN | None = None
    loop: bool = True
    compression: Compression = field(default_factory=lambda: Compression.parse("none"))
    retry_interval: float = 5.0
    on_segment_complete: Callable[[Path], None] | None = None
    # Called with (path, timeline, segno) once a completed segment is renamed
    # (and durable, unless sync is off), by whoever wrote it (the disk
    # thread; the event loop for a small --synchronous batch) before anything
    # more is written: work that must stay in order with the writes (the
    # relay's retention). The stream waits while it runs; it must not raise.
    after_segment_complete: Callable[[Path, int, int], None] | None = None

    def __post_init__(self) -> None:
        if self.synchronous and not self.sync:
            raise ReceiverError("cannot use --synchronous together with --no-sync")
        if self.status_interval < 0:  # an update would always be due: a busy loop
            raise ReceiverError(f"status interval must be 0 or more, not {self.status_interval}")


@dataclass(frozen=True)
class ReceiverStatus:
    """A snapshot for monitoring: positions, timeline, throughput and lag."""

    state: str  # connecting, streaming, waiting, stopped
    host: str | None
    timeline: int | None
    write: LSN
    flush: LSN
    apply: LSN
    server_wal_end: LSN
    bytes_per_second: float  # over the last 2 s; 0 when nothing arrived in them
    segments_completed: int
    synced: bool = True  # False with sync off (--no-sync): nothing is made durable
    # How long WAL past what is stored has existed, as first seen here (a
    # lower bound: the one-way network delay is not in it); 0 when caught up.
    lag_seconds: float = 0.0
    bytes_received: int = 0  # WAL bytes received since start (a segment resent counts again)
    errors: int = 0  # connection, protocol and server errors, retried or fatal

    @property
    def lag_bytes(self) -> int:
        """How far what is stored trails the server's end of WAL.

        The durable position; with sync off, where flush never moves, the
        written one.
        """
        return max(0, self.server_wal_end - (self.flush if self.synced else self.write))


class WalConsumer(Protocol):
    """Something that reads the WAL as it arrives: the startup role's replayer, in a standby.

    ``offer`` gets each batch as it is received (``(start, bytes)`` pieces)
    and how far WAL is durable (what it may act on), and must never block:
    it runs on the receiving path. ``rewind`` says the server's history
    forked at ``fork``, before WAL already offered: what comes next is the
    new timeline's. ``close`` ends it with the receiver.
    """

    def offer(self, chunks: Iterable[tuple[int, bytes]], durable: int) -> None: ...

    def rewind(self, fork: LSN) -> None: ...

    def close(self) -> None: ...


class WalReceiver:
    """Receive WAL into a directory until stopped, endpos is reached, or a fatal error.

    ``consumer``, if given, is called with the segment size once the server
    has said it, and what it returns is offered every batch (see
    :class:`WalConsumer`); it reports back with :meth:`report_applied`.
    """

    def __init__(
        self,
        options: ReceiverOptions,
        *,
        consumer: Callable[[int], WalConsumer] | None = None,
    ) -> None:
        self.options = options
        self._new_consumer = consumer
        # The per-batch decisions and the one copy of the positions (sans-IO).
        self.policy = ReceivePolicy(
            interval=options.status_interval or None,
            report_flush=options.sync and (options.synchronous or options.slot is not None),
            synchronous=options.synchronous,
            endpos=options.endpos,
            stores_by_flush=options.sync,
        )
        # Each fsync of the directory, timed by the disk layer (for monitoring).
        self.fsync_latency = LatencyHistogram()
        self._bytes_received = 0
        self._errors = 0
        self._state = "connecting"
        self._host: str | None = None
        self._timeline: int | None = None
        self._segments_completed = 0
        # (monotonic time, write position) every _RATE_STEP while WAL arrives:
        # the snapshot's rate is taken over the last _RATE_WINDOW of them.
        # Bounded, so the streaming loop never has to trim it.
        self._rate_samples: collections.deque[tuple[float, int]] = collections.deque(
            maxlen=round(_RATE_WINDOW / _RATE_STEP) + 1
        )
        self._stop = asyncio.Event()
        self._stream: ReplicationStream | None = None
        self._directory: WalDirectory | None = None
        # One thread for all disk work keeps writes, fsyncs and renames in order.
        self._disk = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="walstream-disk")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None  # the status policy's deadline
        self._feedback: tuple[int, int, int, int] | None = None  # forwarded (the relay)
        self._feedback_sent: float | None = None
        self._systemid: int | None = None
        self._consumer: WalConsumer | None = None
        # As pg_receivewal, only a first connection that fails is fatal in
        # itself: what fails after one succeeded (a slot still active, a
        # replica behind our position) is retried unless --no-loop.
        self._connected = False

    # -- public API ---------------------------------------------------------

    def status(self) -> ReceiverStatus:
        now = time.monotonic()
        return ReceiverStatus(
            state=self._state,
            host=self._host,
            timeline=self._timeline,
            write=self.policy.write,
            flush=self.policy.flush,
            apply=self.policy.apply,
            server_wal_end=self.policy.server_wal_end,
            bytes_per_second=self._rate(now),
            segments_completed=self._segments_completed,
            synced=self.options.sync,
            lag_seconds=self.policy.lag_seconds(now),
            bytes_received=self._bytes_received,
            errors=self._errors,
        )

    def stop(self) -> None:
        """Ask for a clean stop: what was received is flushed, nothing is lost."""
        self._stop.set()
        if self._stream is not None:
            self._stream.interrupt()

    @property
    def connected(self) -> bool:
        """A connection succeeded since start: later failures are retried (pg_receivewal's rule)."""
        return self._connected

    def limit_reports(self, cap: tuple[LSN, LSN, LSN] | None) -> None:
        """Report at most ``cap`` (write, flush; apply as given) upstream; None lifts it.

        The relay's synchronous replication through a cascade: what it reports
        is its own durable position capped by what its synchronous standbys
        confirmed. Call on the receiver's event loop.
        """
        self.policy.status.limit(cap)
        self._send_due_status()

    def send_feedback(self, feedback: tuple[int, int, int, int] | None) -> None:
        """Hot-standby feedback upstream (xmin, epoch, catalog_xmin, epoch); None clears it.

        Sent now and again with every periodic status update, as a standby's
        walreceiver does with hot_standby_feedback. Call on the receiver's event loop.
        """
        self._feedback = feedback or (0, 0, 0, 0)
        self._feedback_sent = None
        self._send_feedback(self._loop.time() if self._loop else 0.0)

    def _send_feedback(self, now: float) -> None:
        """The feedback, if set, at most once per status interval unless it changed."""
        stream = self._stream
        if self._feedback is None or stream is None or stream.server_ended:
            return
        interval = self.options.status_interval or 10.0
        if self._feedback_sent is not None and now < self._feedback_sent + interval:
            return
        try:
            stream.send_feedback(*self._feedback)
            self._feedback_sent = now
        except Error as e:
            log.debug("hot standby feedback not sent: %s", e)

    def report_applied(self, position: int) -> None:
        """The consumer's replay position, sent as 'apply' in status updates."""
        self.policy.applied(position)
        self._send_due_status()

    async def run(self) -> None:
        """Stream until endpos or :meth:`stop`; raise on a fatal error.

        Connection losses are retried with backoff (unless ``loop`` is off),
        over every host of a multi-host conninfo.
        """
        self._loop = asyncio.get_running_loop()
        if self.options.slot is not None and not self.options.sync:
            # pg_receivewal reports unsynced positions as flushed here; walstream
            # never claims a flush without an fsync (bounded runs with -E still
            # make sense, so this is a warning, not a refusal).
            log.warning(
                'without fsync no flush position is reported: replication slot "%s" will '
                "not advance, and the server keeps WAL for it",
                self.options.slot,
            )
        delay = 0.5
        try:
            while not self._stop.is_set():
                received = self.policy.write
                try:
                    done = await self._session_or_stop()
                    delay = 0.5
                    if done:
                        return
                except (ConnectError, ProtocolViolation, ServerError) as e:
                    self._errors += 1
                    if isinstance(e, ServerError) and e.sqlstate in _FATAL_SQLSTATES:
                        raise
                    if not self._connected or not self.options.loop:
                        raise
                    if self.policy.write > received:
                        delay = 0.5  # a new outage, not the last one's backoff
                    self._state = "waiting"
                    log.warning("%s; retrying in %.1f s", e, delay)
                await self._sleep(delay)
                delay = min(delay * 2, self.options.retry_interval)
        finally:
            self._state = "stopped"
            await self._close_directory()
            self._disk.shutdown(wait=True)
            if self._consumer is not None:
                self._consumer.close()

    # -- one connection -----------------------------------------------------

    async def _session_or_stop(self) -> bool:
        """Run a session; a stop request cancels it unless it is streaming.

        While streaming, the copy loop itself stops cleanly (flush, CopyDone);
        before that (connecting, a hanging host) there is nothing to save.
        """
        session = asyncio.ensure_future(self._session())
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({session, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not session.done() and self._state != "streaming":
                session.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await session
                return True
            return await session
        finally:
            stopper.cancel()

    async def _connect(self) -> ReplicationConnection:
        params: dict[str, Any] = dict(self.options.connect_params)
        params.setdefault("replication", "true")
        params.setdefault("fallback_application_name", "walstream")
        return await connect(self.options.conninfo, **params)

    async def _session(self) -> bool:
        """One connection's worth of streaming; True when the job is done."""
        self._state = "connecting"
        conn = await self._connect()
        self._connected = True
        self._host = f"{conn.host.host}:{conn.host.port}"
        log.info(
            "connected to %s (PostgreSQL %s)",
            self._host,
            conn.server_parameters.get("server_version", "?").split()[0],
        )
        try:
            done = await self._stream_from(conn)
        except BaseException:
            # Keep the original error; a second failure while closing (the
            # same full disk, say) is logged, not raised over it.
            try:
                await self._close_directory()
            except Error as e:
                log.warning("while closing after an error: %s", e)
            conn.abort()
            raise
        await self._close_directory()
        await conn.close()
        return done

    async def _stream_from(self, conn: ReplicationConnection) -> bool:
        mode = await conn.show("data_directory_mode")
        system = await conn.identify_system()
        if self._systemid is None:
            self._systemid = system.systemid
        elif system.systemid != self._systemid:
            raise DirectoryMismatch(
                f"server {self._host} is database system {system.systemid}, but the WAL "
                f"received so far is from system {self._systemid}: refusing to mix them"
            )
        seg_size = parse_size_setting(await conn.show("wal_segment_size"))
        directory = self._open_directory(seg_size, system.systemid, mode)
        if self._new_consumer is not None and self._consumer is None:
            self._consumer = self._new_consumer(seg_size)
        start, timeline = await self._start_position(
            conn, directory, system.xlogpos, system.timeline
        )
        log.info("starting log streaming at %s (timeline %d)", start, timeline)
        while True:
            endpos = self.options.endpos
            if endpos is not None and start > endpos:
                # As pg_receivewal: checked before every START_REPLICATION, so a
                # start already past endpos (a completed segment, a server ahead
                # of it) receives nothing.
                log.info("end position %s reached before %s", endpos, start)
                return True
            await self._ensure_history(conn, directory, timeline)
            self._timeline = timeline
            try:
                stream = await conn.start_replication(
                    start, timeline=timeline, slot=self.options.slot
                )
            except ServerError as e:
                fork = await self._fork_point(conn, e, timeline)
                if fork is None:
                    raise
                switchpoint, timeline = fork
                start = LSN(segment_start(switchpoint, seg_size))
                log.warning(
                    "%s; it left our timeline at %s: continuing on timeline %d at %s",
                    e.message,
                    switchpoint,
                    timeline,
                    start,
                )
                await self._close_directory(keep=True)
                self._rewind(directory, switchpoint)
                continue
            if stream.server_ended:
                # Resuming at a segment start that is the switch point itself:
                # the server answers with the next timeline and no COPY at all
                # (pg_receivewal fails here and retries forever).
                log.info(
                    "timeline %d ends exactly at the start position %s; no WAL to receive on it",
                    timeline,
                    start,
                )
            outcome = await self._copy(stream, directory)
            if outcome == "done":
                return True
            next_tl = await stream.end()
            if next_tl is None:
                if outcome == "stopped":
                    return True
                raise ConnectError("replication stream ended by the server")
            if next_tl.timeline <= timeline or next_tl.start > self.policy.write:
                raise ProtocolViolation(
                    f"server reported unexpected next timeline {next_tl.timeline} at "
                    f"{next_tl.start}, following timeline {timeline} which ended at "
                    f"{self.policy.write}"
                )
            log.info("switched to timeline %d at %s", next_tl.timeline, next_tl.start)
            await self._close_directory(keep=True)  # the old timeline's segment stays .partial
            if next_tl.start < self.policy.write:
                # A failover's fork inside the segment we resumed in: the server
                # accepted the start and ended our timeline before our position.
                self._rewind(directory, next_tl.start)
            timeline = next_tl.timeline
            start = LSN(segment_start(next_tl.start, seg_size))

    def _rewind(self, directory: WalDirectory, fork: LSN) -> None:
        """The server's history left ours at ``fork``, before what we had received.

        WAL past the fork is not this server's (it stays in the old
        timeline's files): reporting it would release synchronous commits
        and advance a slot over WAL we never had, and a reconnect would
        resume past a gap. The consumer hears of it too.
        """
        directory.rewind(fork)
        self.policy.rewind(fork)
        if self._consumer is not None:
            self._consumer.rewind(fork)

    def _open_directory(
        self, seg_size: int, systemid: int, data_directory_mode: str
    ) -> WalDirectory:
        if self._directory is not None:
            return self._directory
        group = int(data_directory_mode, 8) & 0o040 if data_directory_mode.isdigit() else 0
        self._directory = WalDirectory(
            self.options.directory,
            seg_size,
            compression=self.options.compression,
            sync=self.options.sync,
            file_mode=0o640 if group else 0o600,
            system_identifier=systemid,
            on_segment_complete=self._segment_completed,
            synchronous=self.options.synchronous,
            fsync_latency=self.fsync_latency,
        )
        return self._directory

    async def _start_position(
        self, conn: ReplicationConnection, directory: WalDirectory, xlogpos: LSN, timeline: int
    ) -> tuple[LSN, int]:
        """pg_receivewal's order: the directory, then the slot, then the server's position."""
        seg_size = directory.seg_size
        if self.policy.write:
            # Reconnecting: continue from the segment holding what we last received.
            return LSN(segment_start(self.policy.write, seg_size)), self._timeline or timeline
        found: tuple[LSN, int] | None = await self._in_disk_thread(directory.find_start)
        if found is not None:
            return found
        if self.options.slot is not None and conn.server_version >= 150000:
            slot = await conn.read_replication_slot(self.options.slot)
            if slot is None:
                raise ReceiverError(f'replication slot "{self.options.slot}" does not exist')
            if slot.restart_lsn is not None and slot.restart_tli is not None:
                return LSN(segment_start(slot.restart_lsn, seg_size)), slot.restart_tli
        return LSN(segment_start(xlogpos, seg_size)), timeline

    async def _ensure_history(
        self, conn: ReplicationConnection, directory: WalDirectory, timeline: int
    ) -> None:
        if timeline > 1 and not directory.has_history(timeline):
            history = await conn.timeline_history(timeline)
            await self._in_disk_thread(directory.write_history, timeline, history.content)

    async def _fork_point(
        self, conn: ReplicationConnection, error: ServerError, timeline: int
    ) -> tuple[LSN, int] | None:
        """Where our timeline left the server's history, and the timeline that followed it.

        pg_receivewal stops for good with "requested starting point ... is not
        in this server's history" after a failover that lost WAL we had
        received; the server's history says where its timeline forked from
        ours, and streaming that segment again on the new timeline loses
        nothing (our extra WAL stays in the old timeline's files).
        """
        if error.sqlstate != "XX000" or "is not in this server's history" not in error.message:
            return None
        server = await conn.identify_system()
        if server.timeline <= timeline:
            return None
        history = parse_history((await conn.timeline_history(server.timeline)).content)
        for i, entry in enumerate(history):
            if entry.parent_tli == timeline:
                following = history[i + 1].parent_tli if i + 1 < len(history) else server.timeline
                return entry.switchpoint, following
        return None

    # -- streaming ----------------------------------------------------------

    async def _copy(self, stream: ReplicationStream, directory: WalDirectory) -> str:
        """Receive until the server ends the timeline ("ended"), endpos ("done") or stop."""
        self._stream = stream
        self._feedback_sent = None  # a new stream hears the feedback at once
        self._state = "streaming"
        policy = self.policy
        policy.restart(stream.start)
        policy.seg_size = directory.seg_size
        endpos = self.options.endpos
        timeline = self._timeline or 1

        def inline(events: list[StreamEvent]) -> bool:
            # What one turn of the loop below does, when it needs no await:
            # a small batch, written and fsynced in place (see _write_now).
            if self._stop.is_set():
                return False
            batch = policy.take(events, time.monotonic())
            if not batch.chunks and policy.flush_before_reply(batch, self._unflushed(directory)):
                return False  # answered after a flush: the loop below
            # (With WAL in the batch, _write_now fsyncs everything before the reply.)
            if batch.chunks and not self._write_now(directory, batch.chunks, timeline):
                return False
            policy.replied(batch)
            self._send_due_status()
            return True

        if self.options.synchronous and endpos is None:
            stream.handle_inline(inline)
        try:
            self._send_due_status()
            while True:
                # stop() interrupts this read: awaiting it directly saves the
                # event-loop turns of a task and asyncio.wait per batch, which
                # every synchronous commit waited for (measured).
                events = [] if self._stop.is_set() else await stream.read()
                if not events:
                    if not self._stop.is_set():
                        if stream.server_ended:
                            return "ended"
                        continue
                    await self._flush(directory)
                    await stream.end()
                    return "stopped"
                batch = policy.take(events, time.monotonic())
                if batch.chunks:
                    await self._write(directory, batch.chunks, timeline)
                if policy.flush_before_reply(batch, self._unflushed(directory)):
                    await self._flush(directory)  # pg_receivewal fsyncs before answering
                policy.replied(batch)
                self._send_due_status()
                if batch.done:
                    await self._flush(directory)
                    await stream.end()
                    log.info("end position %s reached", endpos)
                    return "done"
        finally:
            stream.handle_inline(None)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._stream = None

    def _write_now(self, directory: WalDirectory, chunks: list[XLogData], timeline: int) -> bool:
        """Write a batch in place if that needs no disk thread; False (nothing done) if it does.

        Synchronous: a batch up to _INLINE_SYNC_BYTES is written and fsynced
        here. A commit waits on this round trip, and a thread hand-off per
        batch cost measurable TPS; pg_receivewal blocks the same way.
        Otherwise: a batch that is only a copy into the page cache (no fsync,
        padding or rename), as pg_receivewal does; a thread hand-off per batch
        cost more than the write itself (measured in catch-up).
        """
        start = chunks[0].data_start
        end = chunks[-1].data_end
        synchronous = self.options.synchronous
        if synchronous:
            if end - start > _INLINE_SYNC_BYTES:
                return False
        elif not directory.fits(start, end - start, timeline):
            return False
        self._accept(chunks)
        directory.write_chunks(start, [ev.data for ev in chunks], timeline)
        if not synchronous:
            self._written(directory, end, None)
            return True
        # A reply once written and another once fsynced, as PostgreSQL's
        # walreceiver: remote_write commits need not wait for the fsync.
        self._wrote(end)
        self._written(directory, end, directory.sync())
        return True

    async def _write(self, directory: WalDirectory, chunks: list[XLogData], timeline: int) -> None:
        if self._write_now(directory, chunks, timeline):
            return
        self._accept(chunks)
        start = chunks[0].data_start
        pieces = [ev.data for ev in chunks]
        synchronous = self.options.synchronous

        loop = asyncio.get_running_loop()
        end = chunks[-1].data_end

        def write_batch() -> LSN | None:
            # The batch is contiguous (checked): one system call for it.
            directory.write_chunks(start, pieces, timeline)
            if not synchronous:
                return None
            loop.call_soon_threadsafe(self._wrote, end)  # replied while we fsync
            return directory.sync()

        self._written(directory, chunks[-1].data_end, await self._in_disk_thread(write_batch))

    def _accept(self, chunks: list[XLogData]) -> None:
        """The batch is being written: the stream moves on, and the consumer sees it now.

        A consumer (the startup role) decodes while the batch is written and
        fsynced; it acts on the records once they are durable (the offer in _written).
        """
        end = chunks[-1].data_end
        self.policy.accept(end)
        self._bytes_received += end - chunks[0].data_start  # contiguous: checked by take()
        self._offer(chunks)

    def _wrote(self, end: LSN) -> None:
        """Written, not yet durable: synchronous mode says so at once (write moves, flush not)."""
        self.policy.wrote(end)
        self._send_due_status()

    def _written(self, directory: WalDirectory, end: LSN, flushed: LSN | None) -> None:
        self.policy.written(end, directory.flushed if flushed is None else flushed)
        # The status update first: in synchronous mode a commit waits for it.
        self._send_due_status()
        self._update_rate(end)
        self._offer([])

    def _offer(self, chunks: list[XLogData]) -> None:
        """Hand new WAL to the consumer; it acts only on what is durable.

        Without a consumer this costs one comparison per batch: nothing is built.
        """
        if self._consumer is not None:
            durable = self.policy.flush if self.options.sync else self.policy.write
            self._consumer.offer(((ev.data_start, ev.data) for ev in chunks), durable)

    def _unflushed(self, directory: WalDirectory) -> bool:
        return self.options.sync and directory.flushed < directory.written

    async def _flush(self, directory: WalDirectory) -> None:
        # Nothing written since the last fsync (every batch in synchronous
        # mode): no disk-thread hop and no second fsync for a keepalive's reply.
        if self._unflushed(directory):
            self.policy.flushed(await self._in_disk_thread(directory.sync))
            self._offer([])

    def _update_rate(self, end: LSN) -> None:
        now = time.monotonic()
        samples = self._rate_samples
        if not samples or now - samples[-1][0] >= _RATE_STEP:
            samples.append((now, end))

    def _rate(self, now: float) -> float:
        """Bytes per second received over the last _RATE_WINDOW (0 when nothing came).

        Reads a copy of the samples, so a monitoring thread may call it too.
        """
        recent = [s for s in list(self._rate_samples) if now - s[0] <= _RATE_WINDOW]
        if not recent or now - recent[0][0] < _RATE_STEP:
            return 0.0
        then, mark = recent[0]
        return max(0, self.policy.write - mark) / (now - then)

    def _send_due_status(self) -> None:
        """Send the status update due now, if any, and arm the timer for the next one."""
        stream = self._stream
        loop = self._loop
        if stream is None or stream.server_ended or loop is None:
            return
        now = loop.time()
        update = self.policy.poll(now, time.time())
        if update is not None:
            try:
                stream.send_update(update)
            except Error as e:
                log.debug("status update not sent: %s", e)
            self._send_feedback(now)
        # One timer, armed from the policy's deadline (aioquic's get_timer): it
        # sends periodic updates even while the streaming loop waits for the
        # disk. Re-armed only when the deadline comes earlier, so the batch
        # path of a synchronous standby (a new deadline on every commit) costs
        # one comparison; a timer that fires early just re-arms.
        deadline = self.policy.deadline(now)
        timer = self._timer
        if deadline is not None and (timer is None or deadline < timer.when()):
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._send_due_status()

    # -- helpers ------------------------------------------------------------

    async def _in_disk_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._disk, fn, *args)

    async def _close_directory(self, *, keep: bool = False) -> None:
        directory = self._directory
        if directory is None:
            return
        await self._in_disk_thread(directory.close)
        # A batch that failed part-way (a full disk) may have written, even
        # completed a segment, before the policy heard of it: it was received.
        self.policy.written(directory.written, directory.flushed)
        if not keep:
            self._directory = None

    def _segment_completed(self, path: Path, timeline: int, segno: int) -> None:
        # Called by the writer (see after_segment_complete) once the rename is durable.
        self._segments_completed += 1
        if self._directory is not None:  # pg_receivewal -v's line
            end = LSN((segno + 1) * self._directory.seg_size)
            log.info("finished segment at %s (timeline %d)", end, timeline)
        if self.options.after_segment_complete is not None:
            self.options.after_segment_complete(path, timeline, segno)
        hook = self.options.on_segment_complete
        if hook is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(hook, path)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
