"""The walreceiver role: stream WAL from a primary into a pg_receivewal-style directory.

:class:`WalReceiver` is the embeddable service; :func:`main` is the
``pg_receivewal``-compatible command line (``python -m walstream.receiver`` or
``walstream receive``).

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
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import getpass
import logging
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from walstream.connection import ReplicationConnection, ReplicationStream, StreamEvent, connect
from walstream.errors import (
    AuthenticationError,
    ConnectError,
    Error,
    ProtocolViolation,
    ServerError,
)
from walstream.lsn import LSN
from walstream.protocol.replication import XLogData
from walstream.protocol.standby import StatusPolicy
from walstream.recovery_options import add_target_arguments, target_from_arguments
from walstream.storage.compression import Compression
from walstream.storage.directory import DirectoryMismatch, WalDirectory, check_directory
from walstream.wal.recovery import RecoveryTarget, TargetReached
from walstream.wal.segment import parse_history, parse_size_setting, segment_start

if TYPE_CHECKING:
    from walstream.startup import Replayer

__all__ = ["ReceiverOptions", "ReceiverStatus", "WalReceiver", "main"]

log = logging.getLogger("walstream.receiver")

PROGNAME: Final = "walstream receive"
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
    replay: bool = False  # run the startup role in-process and report its apply position
    # Where in-process replay stops (needs replay); its action: pause keeps
    # receiving with apply held at the target, promote and shutdown stop the receiver.
    replay_target: RecoveryTarget | None = None

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

    @property
    def lag_bytes(self) -> int:
        """How far what is stored trails the server's end of WAL.

        The durable position; with sync off, where flush never moves, the
        written one.
        """
        return max(0, self.server_wal_end - (self.flush if self.synced else self.write))


def _through_endpos(chunks: list[XLogData], endpos: LSN, seg_size: int) -> list[XLogData]:
    """What pg_receivewal writes of a batch with an end position: nothing past its stop rule.

    It checks after every message, and at every segment boundary inside
    one, whether it is past endpos: the first message that passes it is the
    last written, cut at the first segment boundary after endpos (the rest
    of that message is ignored). A batch holds up to 64 messages, so
    checking only after the batch wrote megabytes more.
    """
    for i, ev in enumerate(chunks):
        if ev.data_end > endpos:
            cut = (max(ev.data_start, endpos) // seg_size + 1) * seg_size
            if cut < ev.data_end:
                ev = XLogData(
                    ev.data_start, ev.wal_end, ev.send_time, ev.data[: cut - ev.data_start]
                )
            return [*chunks[:i], ev]
    return chunks


class WalReceiver:
    """Receive WAL into a directory until stopped, endpos is reached, or a fatal error."""

    def __init__(self, options: ReceiverOptions) -> None:
        self.options = options
        self.policy = StatusPolicy(
            interval=options.status_interval or None,
            report_flush=options.sync and (options.synchronous or options.slot is not None),
            report_on_flush=options.synchronous,
        )
        self._state = "connecting"
        self._host: str | None = None
        self._timeline: int | None = None
        self._server_wal_end = LSN(0)
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
        self._expected = LSN(0)  # where the next XLogData of the current stream must start
        self._systemid: int | None = None
        self._replayer: Replayer | None = None
        # As pg_receivewal, only a first connection that fails is fatal in
        # itself: what fails after one succeeded (a slot still active, a
        # replica behind our position) is retried unless --no-loop.
        self._connected = False

    # -- public API ---------------------------------------------------------

    def status(self) -> ReceiverStatus:
        return ReceiverStatus(
            state=self._state,
            host=self._host,
            timeline=self._timeline,
            write=self.policy.write,
            flush=self.policy.flush,
            apply=self.policy.apply,
            server_wal_end=self._server_wal_end,
            bytes_per_second=self._rate(time.monotonic()),
            segments_completed=self._segments_completed,
            synced=self.options.sync,
        )

    def stop(self) -> None:
        """Ask for a clean stop: what was received is flushed, nothing is lost."""
        self._stop.set()
        if self._stream is not None:
            self._stream.interrupt()

    def _target_reached(self, reached: TargetReached) -> None:
        action = reached.target.action
        log.warning("%s", reached.message)
        if action == "pause":
            log.warning("replay paused at the recovery target; still receiving WAL")
        else:
            log.warning("recovery target action %s: stopping the receiver", action)
            self.stop()

    def report_applied(self, position: int) -> None:
        """The startup role's replay position, sent as 'apply' in status updates."""
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
            if self._replayer is not None:
                self._replayer.close()

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
        if self.options.replay and self._replayer is None:
            self._replayer = self._new_replayer(seg_size)
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

    def _new_replayer(self, seg_size: int) -> Replayer:
        # Imported here: the decoder is only needed with --replay, and the
        # receiver's start-up is part of every run's cost.
        from walstream.startup import Replayer

        return Replayer(
            seg_size,
            self.report_applied,
            target=self.options.replay_target,
            on_target=self._target_reached,
        )

    def _rewind(self, directory: WalDirectory, fork: LSN) -> None:
        """The server's history left ours at ``fork``, before what we had received.

        WAL past the fork is not this server's (it stays in the old
        timeline's files): reporting it would release synchronous commits
        and advance a slot over WAL we never had, and a reconnect would
        resume past a gap. In-process replay starts afresh with the new
        timeline's stream, as it does when the receiver starts.
        """
        directory.rewind(fork)
        self.policy.rewind(fork)
        self._server_wal_end = LSN(min(self._server_wal_end, fork))
        old = self._replayer
        if old is None or (old.state is not None and old.state.target_reached is not None):
            return  # no replay, or it is over (at its target)
        old.close()
        self._replayer = self._new_replayer(directory.seg_size)
        replayed = old.replay_lsn
        if replayed > fork:
            log.warning(
                "replay had reached %s on the old timeline, past the fork at %s: "
                "replay tracking starts again on the new timeline",
                replayed,
                fork,
            )

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
        self._state = "streaming"
        self.policy.restart(stream.start)
        self._expected = stream.start
        ticker = asyncio.create_task(self._status_ticker())
        endpos = self.options.endpos
        timeline = self._timeline or 1

        def inline(events: list[StreamEvent]) -> bool:
            # What one turn of the loop below does, when it needs no await:
            # a small batch, written and fsynced in place (see _write_now).
            if self._stop.is_set():
                return False
            chunks, reply = self._take(events)
            if reply and self.policy.report_flush and not chunks and self._unflushed(directory):
                return False  # answered after a flush: the loop below
            # (With WAL in the batch, _write_now fsyncs everything before the reply.)
            if chunks and not self._write_now(directory, chunks, timeline):
                return False
            if reply:
                self.policy.reply_requested()
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
                chunks, reply = self._take(events)
                if endpos is not None:
                    chunks = _through_endpos(chunks, endpos, directory.seg_size)
                if chunks:
                    await self._write(directory, chunks, timeline)
                if reply:
                    # pg_receivewal fsyncs before answering when it reports flush.
                    if self.policy.report_flush:
                        await self._flush(directory)
                    self.policy.reply_requested()
                self._send_due_status()
                if endpos is not None and self.policy.write > endpos:  # as pg_receivewal: past it
                    await self._flush(directory)
                    await stream.end()
                    log.info("end position %s reached", endpos)
                    return "done"
        finally:
            stream.handle_inline(None)
            ticker.cancel()
            self._stream = None

    def _take(self, events: list[StreamEvent]) -> tuple[list[XLogData], bool]:
        """The batch's WAL, and whether a keepalive asked for a reply."""
        chunks: list[XLogData] = []
        reply = False
        for ev in events:
            if ev.wal_end > self._server_wal_end:
                self._server_wal_end = ev.wal_end
            if isinstance(ev, XLogData):
                chunks.append(ev)
            elif ev.reply_requested:
                reply = True
        return chunks, reply

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
        self._written(directory, end, directory.sync() if synchronous else None)
        return True

    async def _write(self, directory: WalDirectory, chunks: list[XLogData], timeline: int) -> None:
        if self._write_now(directory, chunks, timeline):
            return
        self._accept(chunks)
        start = chunks[0].data_start
        pieces = [ev.data for ev in chunks]
        synchronous = self.options.synchronous

        def write_batch() -> LSN | None:
            # The batch is contiguous (checked): one system call for it.
            directory.write_chunks(start, pieces, timeline)
            return directory.sync() if synchronous else None

        self._written(directory, chunks[-1].data_end, await self._in_disk_thread(write_batch))

    def _accept(self, chunks: list[XLogData]) -> None:
        """Check that the batch continues the stream; the startup role starts decoding it."""
        for ev in chunks:
            if ev.data_start != self._expected:
                raise ProtocolViolation(
                    f"received WAL at {ev.data_start}, expected {self._expected}: "
                    "the stream has a gap"
                )
            self._expected = ev.data_end
        # The startup role decodes while the batch is written and fsynced; it
        # applies the records once they are durable (the offer in _written).
        self._offer_replay(chunks)

    def _written(self, directory: WalDirectory, end: LSN, flushed: LSN | None) -> None:
        self.policy.received(end)
        self.policy.flushed(directory.flushed if flushed is None else flushed)
        # The status update first: in synchronous mode a commit waits for it.
        self._send_due_status()
        self._update_rate(end)
        self._offer_replay([])

    def _offer_replay(self, chunks: list[XLogData]) -> None:
        """Hand new WAL to the startup role; it replays only what is durable.

        Without --replay this costs one comparison per batch: nothing is built.
        """
        if self._replayer is not None:
            durable = self.policy.flush if self.options.sync else self.policy.write
            self._replayer.offer(((ev.data_start, ev.data) for ev in chunks), durable)

    def _unflushed(self, directory: WalDirectory) -> bool:
        return self.options.sync and directory.flushed < directory.written

    async def _flush(self, directory: WalDirectory) -> None:
        # Nothing written since the last fsync (every batch in synchronous
        # mode): no disk-thread hop and no second fsync for a keepalive's reply.
        if self._unflushed(directory):
            self.policy.flushed(await self._in_disk_thread(directory.sync))
            self._offer_replay([])

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
        stream = self._stream
        if stream is None or stream.server_ended:
            return
        update = self.policy.poll(time.monotonic(), time.time())
        if update is not None:
            try:
                stream.send_update(update)
            except Error as e:
                log.debug("status update not sent: %s", e)

    async def _status_ticker(self) -> None:
        """Send periodic updates even while the main loop waits for the disk."""
        while True:
            deadline = self.policy.deadline(time.monotonic())
            delay = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            await asyncio.sleep(min(delay, 1.0))
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
        self.policy.received(directory.written)
        self.policy.flushed(directory.flushed)
        if not keep:
            self._directory = None

    def _segment_completed(self, path: Path, timeline: int, segno: int) -> None:
        # Called in the disk thread once the rename is durable.
        self._segments_completed += 1
        if self._directory is not None:  # pg_receivewal -v's line
            end = LSN((segno + 1) * self._directory.seg_size)
            log.info("finished segment at %s (timeline %d)", end, timeline)
        hook = self.options.on_segment_complete
        if hook is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(hook, path)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

_DESCRIPTION = """\
walstream receive streams write-ahead log from a PostgreSQL server into a
directory, as pg_receivewal does (same options, files and exit codes), and can
be a synchronous standby. It resumes from what the directory holds, follows
timeline switches and, with several hosts in the connection string, failovers.
"""


class _Parser(argparse.ArgumentParser):
    """pg_receivewal's usage errors: one line, a hint, exit status 1 (argparse's is 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f'{PROGNAME}: error: {message}\n{PROGNAME}: hint: Try "{PROGNAME} --help" '
                     "for more information.\n")  # fmt: skip


def _status_interval(text: str) -> int:
    """-s as pg_receivewal parses it: whole seconds, 0 (no periodic updates) to INT_MAX/1000."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'invalid value "{text}"') from None
    if not 0 <= value <= 2147483:
        raise argparse.ArgumentTypeError("must be in range 0..2147483")
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROGNAME,
        description=_DESCRIPTION,
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 after --endpos, SIGINT or SIGTERM (clean stop); 1 on a fatal error.",
    )
    o = p.add_argument_group("Options")
    o.add_argument(
        "-D", "--directory", metavar="DIR", help="receive write-ahead log files into this directory"
    )
    o.add_argument("-E", "--endpos", metavar="LSN", help="exit after receiving the specified LSN")
    o.add_argument(
        "--if-not-exists",
        action="store_true",
        help="do not error if slot already exists when creating a slot",
    )
    o.add_argument("-n", "--no-loop", action="store_true", help="do not loop on connection lost")
    o.add_argument(
        "--no-sync",
        action="store_true",
        help="do not wait for changes to be written safely to disk",
    )
    o.add_argument(
        "-s",
        "--status-interval",
        metavar="SECS",
        type=_status_interval,
        default=10,
        help="time between status packets sent to server (default: 10; 0: none but replies)",
    )
    o.add_argument("-S", "--slot", metavar="SLOTNAME", help="replication slot to use")
    o.add_argument(
        "--synchronous", action="store_true", help="flush write-ahead log immediately after writing"
    )
    o.add_argument("-v", "--verbose", action="count", default=0, help="output verbose messages")
    o.add_argument(
        "-V", "--version", action="store_true", help="output version information, then exit"
    )
    o.add_argument(
        "-Z",
        "--compress",
        metavar="METHOD[:DETAIL]",
        default="none",
        help="compress as specified: gzip[:1-9], lz4[:1-12], zstd[:1-22], none, or a gzip level",
    )
    o.add_argument("-?", "--help", action="help", help="show this help, then exit")
    c = p.add_argument_group("Connection options")
    c.add_argument(
        "-d",
        "--dbname",
        metavar="CONNSTR",
        default="",
        help="connection string or postgresql:// URI (several hosts: failover)",
    )
    c.add_argument(
        "-h", "--host", metavar="HOSTNAME", help="database server host or socket directory"
    )
    c.add_argument("-p", "--port", metavar="PORT", help="database server port number")
    c.add_argument("-U", "--username", metavar="NAME", help="connect as specified database user")
    c.add_argument("-w", "--no-password", action="store_true", help="never prompt for password")
    c.add_argument("-W", "--password", action="store_true", help="force password prompt")
    c.add_argument(
        "--primary", metavar="HOST[:PORT]", help="the primary to stream from (shorthand for -h/-p)"
    )
    c.add_argument(
        "--application-name",
        metavar="NAME",
        help="application_name, as named in synchronous_standby_names",
    )
    a = p.add_argument_group("Optional actions")
    a.add_argument(
        "--create-slot",
        action="store_true",
        help="create a new replication slot (for the slot's name see --slot), then exit",
    )
    a.add_argument(
        "--drop-slot",
        action="store_true",
        help="drop the replication slot (for the slot's name see --slot), then exit",
    )
    a.add_argument(
        "--on-segment-complete",
        metavar="CMD",
        help="run CMD after each completed segment is durable (%%p: path, %%f: file "
        "name, %%%%: a percent sign); running commands are waited for at exit",
    )
    a.add_argument(
        "--replay",
        action="store_true",
        help="decode and verify received WAL in-process and report its replay (apply) "
        "position, so synchronous_commit = remote_apply works. Only flushed WAL is "
        "replayed, as on a standby: with --synchronous that is every batch, otherwise "
        "each completed segment",
    )
    add_target_arguments(p)
    return p


def _connect_params(args: argparse.Namespace) -> dict[str, str]:
    params: dict[str, str] = {}
    if args.primary:
        host, sep, port = args.primary.rpartition(":")
        if sep and port.isdigit() and not host.endswith("]"):
            params["host"], params["port"] = host.strip("[]"), port
        else:
            params["host"] = args.primary.strip("[]")
    if args.host:
        params["host"] = args.host
    if args.port:
        params["port"] = args.port
    if args.username:
        params["user"] = args.username
    if args.application_name:
        params["application_name"] = args.application_name
    return params


_hook_tasks: set[asyncio.Future[None]] = set()  # keeps running hook commands referenced


def _segment_hook(command: str) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        # One pass, as archive_command's: %p and %f (shell-quoted), %% a percent sign.
        values = {"%p": shlex.quote(str(path)), "%f": shlex.quote(path.name), "%%": "%"}
        cmd = re.sub("%[pf%]", lambda m: values[m.group()], command)

        async def spawn() -> None:
            proc = await asyncio.create_subprocess_shell(cmd)
            rc = await proc.wait()
            if rc != 0:
                log.warning("--on-segment-complete command failed with exit code %d: %s", rc, cmd)

        task = asyncio.ensure_future(spawn())
        _hook_tasks.add(task)
        task.add_done_callback(_hook_tasks.discard)

    return run


async def _wait_for_hooks() -> None:
    """Let running --on-segment-complete commands finish, so their failures are logged.

    Hooks are not run again on restart (an upload would be missed), so they
    are waited for; a command that hangs must not keep the receiver from
    ever exiting, so a signal during the wait ends it.
    """
    if not _hook_tasks:
        return
    running = len(_hook_tasks)
    waiting = asyncio.gather(*_hook_tasks, return_exceptions=True)
    gave_up = asyncio.Event()

    def give_up() -> None:
        gave_up.set()
        waiting.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, give_up)
    log.info(
        "waiting for %d --on-segment-complete command(s) to finish "
        "(SIGINT or SIGTERM: exit without waiting)",
        running,
    )
    try:
        await waiting
    except asyncio.CancelledError:
        if not gave_up.is_set():
            raise  # this task itself was cancelled
        log.warning("exiting with --on-segment-complete command(s) still running")


async def _slot_action(args: argparse.Namespace, params: dict[str, str]) -> None:
    conn = await connect(
        args.dbname, replication="true", fallback_application_name="walstream", **params
    )
    async with conn:
        if args.create_slot:
            log.info('creating replication slot "%s"', args.slot)
            try:
                await conn.create_replication_slot(args.slot)
            except ServerError as e:
                if not (args.if_not_exists and e.sqlstate == "42710"):
                    raise
                log.info('replication slot "%s" already exists', args.slot)
        else:
            log.info('dropping replication slot "%s"', args.slot)
            await conn.drop_replication_slot(args.slot)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # SIGINT before streaming's own handlers are installed (a slot action,
        # the password prompt): end as the default handler would, without a
        # traceback. While streaming, SIGINT is a clean stop (exit 0).
        return 128 + signal.SIGINT


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        from walstream import __version__

        print(f"{PROGNAME} (walstream) {__version__}")
        return 0
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose
        else logging.WARNING,
        format=f"{PROGNAME}: %(message)s",
    )
    params = _connect_params(args)
    if args.password:
        params["password"] = _ask_password()
    # As pg_receivewal: without -W or -w, ask once when the server wants a password.
    may_ask = not (args.password or args.no_password)

    def fail(message: str) -> int:
        print(f"{PROGNAME}: error: {message}", file=sys.stderr)
        return 1

    if (args.create_slot or args.drop_slot) and not args.slot:
        return fail("replication slot needed with action --create-slot or --drop-slot")
    if args.create_slot and args.drop_slot:
        return fail("cannot use --create-slot together with --drop-slot")
    if args.synchronous and args.no_sync:
        return fail("cannot use --synchronous together with --no-sync")
    try:
        target = target_from_arguments(args)
    except ValueError as e:
        return fail(str(e))
    if target.is_set and not args.replay:
        return fail("a recovery target needs --replay")
    try:
        if args.create_slot or args.drop_slot:
            try:
                asyncio.run(_slot_action(args, params))
            except AuthenticationError as e:
                if not (may_ask and _needs_password(e)):
                    raise
                params["password"] = _ask_password()
                may_ask = False
                asyncio.run(_slot_action(args, params))
            return 0  # as pg_receivewal: the action, then exit
        if not args.directory:
            return fail("no target directory specified")
        directory = Path(args.directory)
        check_directory(directory)
        options = ReceiverOptions(
            directory=directory,
            conninfo=args.dbname,
            connect_params=params,
            slot=args.slot,
            synchronous=args.synchronous,
            sync=not args.no_sync,
            status_interval=args.status_interval,
            endpos=LSN.parse(args.endpos) if args.endpos else None,
            loop=not args.no_loop,
            replay=args.replay,
            replay_target=target if target.is_set else None,
            compression=Compression.parse(args.compress),
            on_segment_complete=_segment_hook(args.on_segment_complete)
            if args.on_segment_complete
            else None,
        )
    except (ValueError, Error) as e:
        return fail(str(e))
    rc = _run_loop(_run_cli(options, may_ask=may_ask))
    if rc is None:  # the first connection needs a password: nothing was received yet
        options = dataclasses.replace(
            options, connect_params={**options.connect_params, "password": _ask_password()}
        )
        rc = _run_loop(_run_cli(options, may_ask=False))
    assert rc is not None
    return rc


def _run_loop(main: Coroutine[Any, Any, int | None]) -> int | None:
    """Run the CLI's event loop: uvloop's when the ``fast`` extra installed it.

    uvloop's loop, transports and selector are C: they took a tenth of the
    receiver's CPU time per synchronous commit off (measured), and that CPU
    is shared with the primary's backends on the same machine.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _ask_password() -> str:
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        # No terminal (a pipe, a service): like libpq's simple_prompt, read a
        # line from stdin, without getpass's warnings about echoing.
        sys.stderr.write("Password: ")
        sys.stderr.flush()
        return sys.stdin.readline().rstrip("\n")  # "" at end of input: libpq's empty answer
    try:
        return getpass.getpass("Password: ")
    except EOFError:  # nothing typed before end of input
        return ""


def _needs_password(e: BaseException) -> bool:
    """libpq's PQconnectionNeedsPassword: the server asked for one and we had none."""
    return isinstance(e, AuthenticationError) and "no password supplied" in str(e)


def _keep_heap() -> None:
    """Stop glibc from handing freed heap back to the kernel after every read.

    Each read's WAL messages (128 kB each) are freed once written; with
    glibc's default thresholds the top of the heap was trimmed and faulted in
    again on the next read, about 100,000 page faults per GiB streamed
    (measured). The heap stays bounded by the read-ahead limit either way.
    """
    if sys.platform != "linux" or not hasattr(os, "confstr"):
        return
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-1, 64 * 1024 * 1024)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD (setting one fixes both)
    except (OSError, ValueError, AttributeError):
        pass


async def _run_cli(options: ReceiverOptions, *, may_ask: bool = False) -> int | None:
    """The exit code; None when the first connection wants a password we may ask for."""
    _keep_heap()
    receiver = WalReceiver(options)
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        log.warning("received interrupt signal, exiting")  # pg_receivewal's words
        receiver.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted)
    try:
        try:
            await receiver.run()
        finally:
            await _wait_for_hooks()
    except (Error, OSError) as e:
        if may_ask and not receiver._connected and _needs_password(e):
            return None
        print(f"{PROGNAME}: error: {e}", file=sys.stderr)
        if not options.loop and receiver._connected:
            # pg_receivewal -n ends every lost session with this line.
            print(f"{PROGNAME}: error: disconnected", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
