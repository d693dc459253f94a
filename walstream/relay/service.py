"""The relay: a receiver and a sender in one process over one directory.

The second composition of roles (the standby, receiver + replayer, is the
first). The receiver streams from the primary as ``walstream receive``
does; the sender serves its directory as ``walstream send`` does, but only
what the receiver has made durable, told by the receiver itself (no reading
back of the ``.partial``, no polling: every flush wakes the sender).

What no PostgreSQL cascade can do, the relay does through the two roles'
hooks:

* synchronous replication through the cascade: with
  ``synchronous_standby_names``, what the relay reports upstream is its own
  durable position capped by what its synchronous standbys confirmed,
  chosen as a primary chooses them (:mod:`walstream.sender.syncrep`), so a
  commit on the primary waits for the standbys behind the relay;
* hot-standby feedback forwarded: the oldest xmin and catalog_xmin its
  clients report goes upstream in the relay's own feedback;
* retention: with a keep size, completed segments older than it, than
  every slot and than every connected client (and, with hooks, only once
  their hook succeeded) are removed after each segment completes.

Errors: :class:`RelayError` for options that cannot work together.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from walstream.errors import Error
from walstream.lsn import LSN
from walstream.receiver import ReceiverOptions, ReceiverStatus, WalReceiver
from walstream.sender.server import SenderOptions, WalSender
from walstream.sender.source import DirectorySource, SourceError
from walstream.sender.walsender import WalSenderStatus
from walstream.storage.retention import WalRetention
from walstream.wal.retention import RetentionPolicy

__all__ = ["RelayError", "RelayOptions", "RelayStatus", "WalRelay"]

log = logging.getLogger("walstream.relay")

_FIRST_WAL_POLL = 0.2  # seconds between looks for the receiver's first WAL


class RelayError(Error):
    """The relay's options cannot work together."""


@dataclass(frozen=True)
class RelayOptions:
    """The receiver's options, the sender's, and what joins them.

    The sender serves ``receiver.directory`` (its own ``directory`` and
    ``source`` are set by the relay). ``wal_keep_size`` in bytes (None: keep
    everything, as pg_receivewal does); ``on_segment_complete_ok``: with
    hooks configured, the relay removes a segment only once the hook said
    it succeeded (the CLI calls :meth:`WalRelay.hook_succeeded`).
    """

    receiver: ReceiverOptions
    sender: SenderOptions
    wal_keep_size: int | None = None
    hooks: bool = False

    def __post_init__(self) -> None:
        if not self.receiver.sync:
            raise RelayError(
                "a relay serves only WAL that is durable: it cannot run with --no-sync"
            )


@dataclass(frozen=True)
class RelayStatus:
    """Both hops: the relay's upstream position and its clients' rows."""

    upstream: ReceiverStatus
    clients: list[WalSenderStatus]


class WalRelay:
    """Receive from a primary; serve what is durable to standbys and receivers."""

    def __init__(self, options: RelayOptions) -> None:
        self.options = options
        directory = options.receiver.directory
        self._retention = (
            None
            if options.wal_keep_size is None
            else WalRetention(directory, RetentionPolicy(options.wal_keep_size, options.hooks))
        )
        self.receiver = WalReceiver(
            dataclasses.replace(
                options.receiver,
                # Only fsynced WAL is served: without an fsync per batch (what
                # --synchronous does) the segment being written would reach the
                # relay's standbys only once it completes, and never while the
                # primary is quiet (tests/test_relay_failures.py saw a standby
                # wait at its segment's start). PostgreSQL's walreceiver, which a
                # cascading walsender serves from, flushes whenever the stream
                # pauses and reports the flush upstream: so does the relay.
                synchronous=True,
                after_segment_complete=self._segment_completed,
            ),
            consumer=self._consumer,
        )
        self.sender: WalSender | None = None
        self._stop = asyncio.Event()
        self._seg_size = 0
        self._capped = options.sender.synchronous_standby_names.strip() != ""
        self._forwarded: tuple[int, int, int, int] | None = None
        # What the synchronous standbys confirmed, never going back (see _progress).
        self._cap = (LSN(0), LSN(0), LSN(0))

    # -- public API ---------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self.receiver.stop()
        if self.sender is not None:
            self.sender.stop()

    def status(self) -> RelayStatus:
        return RelayStatus(
            self.receiver.status(), [] if self.sender is None else self.sender.status()
        )

    @property
    def segments_removed(self) -> int:
        """Segment files retention removed so far (0 without --wal-keep-size)."""
        return 0 if self._retention is None else self._retention.removed

    def hook_succeeded(self, path: Path) -> None:
        """A segment's --on-segment-complete command succeeded: retention may remove it."""
        if self._retention is not None:
            self._retention.hook_succeeded(path)

    async def run(self) -> None:
        """Receive and serve until :meth:`stop`; raise the first fatal error of either side."""
        if self._capped:
            # Until a synchronous standby confirms anything, the primary hears
            # of nothing: a commit waits for the cascade.
            self.receiver.limit_reports(self._cap)
        receiving = asyncio.ensure_future(self.receiver.run())
        serving: asyncio.Future[None] | None = None
        try:
            source = await self._first_wal(receiving)
            if source is not None and not self._stop.is_set():
                sender = self.sender = WalSender(
                    dataclasses.replace(
                        self.options.sender,
                        directory=self.options.receiver.directory,
                        source=source,
                        poll_interval=1.0,  # the receiver's flushes wake it; this is a backstop
                    )
                )
                sender.on_progress = self._progress
                serving = asyncio.ensure_future(sender.serve())
                stopper = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait(
                    {receiving, serving, stopper}, return_when=asyncio.FIRST_COMPLETED
                )
                stopper.cancel()
            self.stop()
            for task in (receiving, serving):
                if task is not None:
                    await task  # the first error of either side is raised
        finally:
            self.stop()
            for task in (receiving, serving):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Error):
                        await task

    # -- joining the two roles -------------------------------------------------------------

    async def _first_wal(self, receiving: asyncio.Future[None]) -> DirectorySource | None:
        """The directory as the sender's source, once it holds WAL (at once if it already does)."""
        directory = self.options.receiver.directory
        announced = False
        while not self._stop.is_set() and not receiving.done():
            try:
                return DirectorySource(directory, durable=self._durable)
            except SourceError:
                if not announced:
                    log.info("waiting for WAL from the primary before serving it")
                    announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), _FIRST_WAL_POLL)
        if receiving.done():
            await receiving  # its error
        return None

    def _durable(self) -> int:
        """How far the receiver's WAL is durable: what the sender may serve."""
        return int(self.receiver.policy.flush)

    def _consumer(self, seg_size: int) -> _Wake:
        self._seg_size = seg_size
        return _Wake(self)

    def _flushed(self) -> None:
        """New WAL is durable: wake the sender (on the receiver's loop, the relay's)."""
        if self.sender is not None:
            self.sender.notify()

    def _progress(self) -> None:
        """A client's positions, feedback or state changed: what the relay says upstream follows."""
        sender = self.sender
        if sender is None:
            return
        if self._capped:
            confirmed = sender.synced_positions()
            if confirmed is not None:
                write, flush, apply = confirmed
                held = self._cap
                # Never backwards (a standby's positions only move on), so a
                # synchronous standby that leaves holds the relay where it was:
                # listed sync with its flush frozen, as a stuck standby would be.
                self._cap = (
                    LSN(max(held[0], write)),
                    LSN(max(held[1], flush)),
                    LSN(max(held[2], min(apply, self.receiver.policy.flush))),
                )
                self.receiver.limit_reports(self._cap)
        feedback = sender.oldest_feedback()
        if feedback != self._forwarded and (feedback is not None or self._forwarded is not None):
            self._forwarded = feedback
            self.receiver.send_feedback(feedback)

    def _segment_completed(self, path: Path, timeline: int, segno: int) -> None:
        """A segment is complete and durable: remove what retention lets go, right here.

        Called by the receiver's writer (its disk thread, or the loop for a
        small synchronous batch) before it writes anything more, so the
        directory never holds more than the keep size and the segment being
        written. Removed later, in a thread of their own, the next segment was
        already there before the oldest went (tests/test_relay_failures.py saw
        the keep size plus a segment more). It costs the writer about 0.5 ms
        per segment (a listing, an unlink, a directory fsync; measured with
        16 MB segments on this machine's disk).
        """
        retention, sender = self._retention, self.sender
        if retention is None:
            return
        slots, clients = sender.needed() if sender is not None else ([], [])
        retention.remove_old_segments(
            self._seg_size,
            newest=(segno + 1) * self._seg_size,
            timeline=timeline,
            slots=slots,
            clients=clients,
        )


class _Wake:
    """The receiver's consumer: each durable advance wakes the sender."""

    def __init__(self, relay: WalRelay) -> None:
        self._relay = relay
        self._durable = 0

    def offer(self, chunks: Iterable[tuple[int, bytes]], durable: int) -> None:
        if durable > self._durable:
            self._durable = durable
            self._relay._flushed()

    def rewind(self, fork: LSN) -> None:
        """The primary's history forked at ``fork``: what was confirmed past it counts no more."""
        self._durable = min(self._durable, fork)
        relay = self._relay
        relay._cap = (
            LSN(min(relay._cap[0], fork)),
            LSN(min(relay._cap[1], fork)),
            LSN(min(relay._cap[2], fork)),
        )
        if relay._capped:
            relay.receiver.limit_reports(relay._cap)

    def close(self) -> None:
        pass
