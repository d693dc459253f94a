"""When a standby reports its positions, and which positions it may report.

PostgreSQL's primary learns a standby's progress only from standby status
updates ('r'): they release synchronous commits, advance a physical slot's
restart_lsn, feed pg_stat_replication's lag columns, and keep
wal_sender_timeout from firing. This module decides, without a clock of its
own (``now`` is always an argument, in seconds of any monotonic clock), when
the next update is due and what it says:

* the first update at once after START_REPLICATION;
* then every ``interval`` seconds (``None``: never periodically);
* at once when a keepalive asks for a reply;
* at once after a write and again after its flush, in synchronous mode (as
  PostgreSQL's walreceiver does: a primary waiting with
  ``synchronous_commit = remote_write`` is released an fsync earlier);
* at once when the replay position moves (so remote_apply waits end promptly).

The flush position is reported only when it is meaningful: never ahead of an
fsync, and as 0 (invalid) when the caller does not sync, exactly so that a
primary never believes WAL is durable when it is not.
"""

from __future__ import annotations

from dataclasses import dataclass

from walstream.lsn import INVALID_LSN, LSN
from walstream.pgtypes import pg_time_from_unix
from walstream.protocol.replication import StandbyStatusUpdate

__all__ = ["StatusPolicy"]


@dataclass
class StatusPolicy:
    """Positions and timing of standby status updates for one stream."""

    interval: float | None = 10.0
    report_flush: bool = True  # False: --no-sync, or no slot and not synchronous
    report_on_flush: bool = False  # synchronous mode: report each flush at once
    report_on_write: bool = False  # ... and each write, before its fsync
    write: LSN = INVALID_LSN
    flush: LSN = INVALID_LSN
    apply: LSN = INVALID_LSN
    # What a composition allows to be reported (the relay: what its synchronous
    # standbys confirmed): each position reported is at most this one.
    cap: tuple[LSN, LSN, LSN] | None = None
    _due: bool = True  # the first update goes out at once
    _next: float | None = None

    def received(self, end: int) -> None:
        if end > self.write:
            self.write = LSN(end)
            if self.report_on_write:
                self._due = True

    def flushed(self, position: int) -> None:
        if position > self.flush:
            if position > self.write:
                raise ValueError(f"flush {LSN(position)} ahead of write {self.write}")
            self.flush = LSN(position)
            if self.report_on_flush and self.report_flush:
                self._due = True

    def applied(self, position: int) -> None:
        if position > self.apply:
            self.apply = LSN(position)
            self._due = True

    def reply_requested(self) -> None:
        self._due = True

    def limit(self, cap: tuple[LSN, LSN, LSN] | None) -> None:
        """Report at most ``cap``'s write and flush, and its apply; None: the positions as they are.

        For a composition that answers for others: a relay reports what its
        synchronous standbys confirmed (it replays nothing itself, so apply
        is theirs). A new cap is reported at once, so a primary waiting on it
        is released (or held) without waiting for the interval.
        """
        if cap != self.cap:
            self.cap = cap
            self._due = True

    def deadline(self, now: float) -> float | None:
        """When :meth:`poll` must next be called (``now`` if already due)."""
        if self._due:
            return now
        return self._next

    def poll(self, now: float, wall_clock: float) -> StandbyStatusUpdate | None:
        """The update to send now, if one is due; ``wall_clock`` is Unix time for sendTime."""
        if not self._due and (self._next is None or now < self._next):
            return None
        self._due = False
        self._next = None if not self.interval else now + self.interval
        write, flush, apply = self.write, self.flush, self.apply
        cap = self.cap
        if cap is not None:
            write, flush, apply = LSN(min(write, cap[0])), LSN(min(flush, cap[1])), cap[2]
        if not self.report_flush:
            flush = INVALID_LSN
        return StandbyStatusUpdate(write, flush, apply, pg_time_from_unix(wall_clock), False)

    def rewind(self, position: int) -> None:
        """Positions past ``position`` come back to it: WAL there is no longer the stream's.

        After a failover to a server whose history forked before what we had
        received, only WAL up to the fork is its WAL too.
        """
        self.write, self.flush, self.apply = (
            LSN(min(p, position)) for p in (self.write, self.flush, self.apply)
        )
        self._due = True

    def restart(self, start: int) -> None:
        """A new START_REPLICATION: positions carry over, the first update is due at once."""
        self.received(start)
        self._due = True
        self._next = None
