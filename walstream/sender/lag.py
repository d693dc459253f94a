"""PostgreSQL's replication lag tracker, sans-IO: pg_stat_replication's lag columns.

A walsender cannot ask a standby how long ago it received a position; it
remembers instead when it saw each position of its own WAL end go by, and
when a standby reports a position it looks up that moment. This module is
walsender.c's LagTracker with the same rules, so that walstream's status
rows show the write_lag, flush_lag and replay_lag a PostgreSQL primary would
show for the same traffic (checked against real 15, 16 and 18 primaries in
tests/test_sender_lag_oracle.py):

* :meth:`LagTracker.record` is LagTrackerWrite: the sender calls it each
  time it looks at how far it may send, with that WAL end and the time. A
  position equal to the previous one is no sample (so an idle loop adds
  none). The ring holds 8192 samples; when the slowest of the three read
  heads would be overrun, the newest sample is overwritten instead, which
  lowers the sampling rate rather than losing old samples.
* :meth:`LagTracker.read` is LagTrackerRead: each of write, flush and apply
  has its own read head, which consumes every sample at or below the
  reported position; the lag is ``now`` minus the newest consumed sample's
  time. With no sample crossed it interpolates between the last consumed
  sample and the next one (a stuck standby then shows a growing lag), or,
  with nothing consumed since the tracker last ran empty, takes the next
  sample's time. No new information is ``None`` (PostgreSQL's -1).
* :meth:`LagTracker.reply` is the lag part of ProcessStandbyReplyMessage:
  ``None`` from a read keeps the column's previous value, except that a
  standby reporting apply equal to everything sent in two consecutive
  replies (the second comes from its idle status interval) sets every
  column to what this read gave, normally NULL: stale lags are forgotten.

Times are PostgreSQL timestamps (int64 microseconds since 2000-01-01, the
unit of the protocol's clocks), lags are microseconds; both are arguments,
never read from a clock. One tracker serves one connection for its whole
life, across START_REPLICATION commands, as PostgreSQL keeps its tracker and
its "fully applied last time" flag per walsender process.
"""

from __future__ import annotations

from array import array
from typing import Final

__all__ = ["APPLY", "FLUSH", "LAG_TRACKER_BUFFER_SIZE", "WRITE", "LagTracker"]

LAG_TRACKER_BUFFER_SIZE: Final = 8192

# The read heads, numbered as PostgreSQL's SYNC_REP_WAIT_WRITE/FLUSH/APPLY.
WRITE: Final = 0
FLUSH: Final = 1
APPLY: Final = 2


class LagTracker:
    """One walsender connection's (WAL end, time) samples and the lag columns they give.

    ``write_lag``, ``flush_lag`` and ``replay_lag`` are pg_stat_replication's
    columns in microseconds, ``None`` where PostgreSQL shows NULL.
    """

    __slots__ = (
        "_fully_applied_last_time",
        "_last_lsn",
        "_last_read_lsn",
        "_last_read_time",
        "_lsns",
        "_read_heads",
        "_size",
        "_times",
        "_write_head",
        "lags",
    )

    def __init__(self, size: int = LAG_TRACKER_BUFFER_SIZE) -> None:
        if size < 2:
            raise ValueError("a lag tracker needs room for at least two samples")
        self._size = size
        # Flat 64-bit arrays: 128 kB a connection whatever the samples hold
        # (a list would also keep an int object per sample).
        self._lsns = array("Q", bytes(8 * size))
        self._times = array("q", bytes(8 * size))
        self._write_head = 0
        self._read_heads = [0, 0, 0]
        # The last sample each head consumed; a time of 0 means "none since
        # the tracker last ran empty" (PostgreSQL's last_read[head]).
        self._last_read_lsn = [0, 0, 0]
        self._last_read_time = [0, 0, 0]
        self._last_lsn = 0
        self._fully_applied_last_time = False
        # The values PostgreSQL keeps per head (walsnd->writeLag, ...): -1
        # before any measurement; any negative value is shown as NULL.
        self.lags = [-1, -1, -1]

    def record(self, lsn: int, time: int) -> None:
        """Note that the WAL end was ``lsn`` at ``time`` (LagTrackerWrite).

        Called with the position the sender may send up to (not the end of
        the message it sends: a later report of any position past this one
        tells when it was reached), each time it looks at it.
        """
        if lsn == self._last_lsn:
            return
        self._last_lsn = lsn
        size = self._size
        new_write_head = (self._write_head + 1) % size
        if new_write_head in self._read_heads:
            # Full: overwrite the newest sample rather than an unread old one.
            new_write_head = self._write_head
            self._write_head = (self._write_head - 1) % size
        self._lsns[self._write_head] = lsn
        self._times[self._write_head] = time
        self._write_head = new_write_head

    def read(self, head: int, lsn: int, now: int) -> int | None:
        """The lag of position ``lsn`` on ``head`` at ``now``, or None: no new information.

        Consumes the samples at or below ``lsn`` (LagTrackerRead). PostgreSQL
        says "no information" with -1, so a lag that computes to exactly -1
        (a clock 1 us behind a sample) is None too; other negative lags are
        returned, and shown as NULL once stored.
        """
        lsns = self._lsns
        times = self._times
        size = self._size
        write_head = self._write_head
        read_head = self._read_heads[head]
        time = 0
        while read_head != write_head and lsns[read_head] <= lsn:
            time = times[read_head]
            self._last_read_lsn[head] = lsns[read_head]
            self._last_read_time[head] = time
            read_head = (read_head + 1) % size
        self._read_heads[head] = read_head
        if read_head == write_head:
            # Everything sent has been processed: an old sample must not be
            # the start of an interpolation when the next burst of WAL comes.
            self._last_read_time[head] = 0

        if time > now:
            return None  # the clock went backwards
        if time == 0:
            if read_head == write_head:
                return None  # no future sample to interpolate towards
            prev_time = self._last_read_time[head]
            next_lsn = lsns[read_head]
            next_time = times[read_head]
            if prev_time != 0:
                prev_lsn = self._last_read_lsn[head]
                if lsn < prev_lsn:
                    return None  # reported positions went back (a timeline change)
                if prev_time > next_time:
                    return None  # the clock went backwards
                # PostgreSQL computes this in double precision and truncates.
                # (next_lsn > lsn >= prev_lsn here: next was not consumed.)
                fraction = float(lsn - prev_lsn) / float(next_lsn - prev_lsn)
                time = int(float(prev_time) + (next_time - prev_time) * fraction)
            else:
                # Only a future sample: the lag it would have if reached now.
                time = next_time
        lag = now - time
        return None if lag == -1 else lag

    def reply(self, write: int, flush: int, apply: int, *, sent: int, now: int) -> None:
        """Apply a standby status update received at ``now``; ``sent`` is the end of WAL sent.

        ``sent`` is the sender's sent position when it handles the reply
        (PostgreSQL's sentPtr), not the WAL end given to :meth:`record`.
        """
        write_lag = self.read(WRITE, write, now)
        flush_lag = self.read(FLUSH, flush, now)
        apply_lag = self.read(APPLY, apply, now)
        clear = False
        if apply == sent:
            clear = self._fully_applied_last_time
            self._fully_applied_last_time = True
        else:
            self._fully_applied_last_time = False
        lags = self.lags
        if write_lag is not None or clear:
            lags[WRITE] = -1 if write_lag is None else write_lag
        if flush_lag is not None or clear:
            lags[FLUSH] = -1 if flush_lag is None else flush_lag
        if apply_lag is not None or clear:
            lags[APPLY] = -1 if apply_lag is None else apply_lag

    @property
    def write_lag(self) -> int | None:
        return self._column(WRITE)

    @property
    def flush_lag(self) -> int | None:
        return self._column(FLUSH)

    @property
    def replay_lag(self) -> int | None:
        return self._column(APPLY)

    def _column(self, head: int) -> int | None:
        lag = self.lags[head]
        return None if lag < 0 else lag
