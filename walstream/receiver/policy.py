"""The receiver's per-batch decisions, without I/O: what to write, when to flush, what to report.

Everything a walreceiver decides about the events one socket read
delivered, as a state machine that takes events and times and returns
decisions (aioquic's shape): the asyncio service writes, fsyncs and sends
what it is told, in the transport's read callback for a small synchronous
batch (the fast path a commit waits on) or in its read loop otherwise, and
both paths make the same decisions here:

* the stream must continue where it left off: a gap is the server's
  protocol violation, named with both positions;
* the server's end of WAL (for lag) and whether a keepalive asked for a reply;
* with an end position, pg_receivewal's stop rule: the first message that
  passes it is the last written, cut at the next segment boundary;
* a reply that reports a flush position waits for an fsync of what was
  written before it (pg_receivewal fsyncs before answering);
* the positions themselves, kept once, in the :class:`StatusPolicy` that
  also says when the next status update is due: :meth:`ReceivePolicy.deadline`
  arms the service's one timer, :meth:`ReceivePolicy.poll` says what to send;
* the lag in seconds (:class:`WalEndClock`): when the server's end of WAL
  first passed each position, so how long what is not yet stored has existed.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Final

from walstream.errors import ProtocolViolation
from walstream.lsn import LSN
from walstream.protocol.replication import PrimaryKeepalive, StandbyStatusUpdate, XLogData
from walstream.protocol.standby import StatusPolicy

__all__ = ["Batch", "ReceivePolicy", "WalEndClock", "through_endpos"]


def through_endpos(chunks: list[XLogData], endpos: LSN, seg_size: int) -> list[XLogData]:
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


_CLOCK_STEP: Final = 0.005  # seconds: a sample at most this often; the lag's resolution
_CLOCK_SAMPLES: Final = 2048  # 10 s of samples at full rate, about 200 kB at most


class WalEndClock:
    """When the server's end of WAL was first seen past each position: the lag in seconds.

    The receiver's counterpart of the walsender's LagTracker: each time a
    message says the server's WAL reaches further, ``(wal_end, now)`` is
    remembered; the lag of a stored position is how long ago the first end
    beyond it was seen, 0 once nothing newer is known. Times are the
    receiver's own clock at receipt (no clock skew with the server; the
    network's one-way delay is not counted, so it is a lower bound).

    Samples are at least ``step`` apart: the newest one (the tail) stays open
    for a step, its end moving forward and its time kept, so a lag is
    overestimated by at most ``step``, never underestimated. When ``size``
    closed samples are not yet stored, the tail stays open the same way
    (coarser, still never under).

    On the synchronous fast path (a batch per commit, every few hundred
    microseconds) a new end within the step is one attribute store, which
    :meth:`ReceivePolicy.take` does itself: measured with
    bench/monitor_overhead.py, the receipt time and this cost 0.06 us a
    batch, where calling :meth:`seen` each time cost 0.3 us.
    """

    __slots__ = ("_samples", "next_time", "size", "step", "tail_end", "tail_time")

    def __init__(self, *, step: float = _CLOCK_STEP, size: int = _CLOCK_SAMPLES) -> None:
        self.step = step
        self.size = size
        self._samples: collections.deque[tuple[int, float]] = collections.deque()  # closed
        self.tail_end = 0
        self.tail_time = 0.0
        self.next_time = -math.inf  # until then, a new end only moves tail_end

    def seen(self, wal_end: int, now: float, stored: int) -> None:
        """A message said the server's WAL reaches ``wal_end`` (further than before)."""
        if now < self.next_time:
            self.tail_end = wal_end
            return
        samples = self._samples
        while samples and samples[0][0] <= stored:  # stored already: no lag to measure
            samples.popleft()
        if self.tail_end > stored:
            if len(samples) >= self.size:
                self.tail_end = wal_end  # full: the tail stays open, keeping its time
                return
            samples.append((self.tail_end, self.tail_time))
        self.tail_end, self.tail_time = wal_end, now
        self.next_time = now + self.step

    def lag(self, stored: int, wal_end: int, now: float) -> float:
        """Seconds since WAL past ``stored`` was first known to exist (0 when caught up)."""
        if stored >= wal_end:
            return 0.0
        for end, seen in list(self._samples):  # a copy: a monitoring thread may ask
            if end > stored:
                return max(0.0, now - seen)
        if self.tail_end > stored:
            return max(0.0, now - self.tail_time)
        return 0.0

    def forget(self) -> None:
        """The server's history forked: ends seen on the old timeline mean nothing now."""
        self._samples.clear()
        self.tail_end = 0
        self.next_time = -math.inf


@dataclass(slots=True)
class Batch:
    """What one read's events ask of the service."""

    chunks: list[XLogData]  # contiguous WAL to write, in order (cut at endpos)
    reply: bool  # a keepalive asked for a reply
    done: bool  # endpos is passed: flush, end the stream, stop

    @property
    def start(self) -> LSN:
        return self.chunks[0].data_start

    @property
    def end(self) -> LSN:
        return self.chunks[-1].data_end


class ReceivePolicy:
    """One receiver's decisions across its streams; positions live in :attr:`status`."""

    def __init__(
        self,
        *,
        interval: float | None,
        report_flush: bool,
        synchronous: bool,
        endpos: LSN | None = None,
        stores_by_flush: bool = True,
    ) -> None:
        self.status = StatusPolicy(
            interval=interval,
            report_flush=report_flush,
            report_on_flush=synchronous,
            report_on_write=synchronous,
        )
        self.endpos = endpos
        self.seg_size = 0  # known once the server said it; needed for the endpos cut
        self.expected = LSN(0)  # where the next XLogData of the current stream must start
        self.server_wal_end = LSN(0)
        # What "stored" means for the lag: flushed, or written when nothing is
        # ever fsynced (--no-sync).
        self.stores_by_flush = stores_by_flush
        self.wal_end_clock = WalEndClock()

    # -- positions (the one source of truth) ---------------------------------

    @property
    def write(self) -> LSN:
        return self.status.write

    @property
    def flush(self) -> LSN:
        return self.status.flush

    @property
    def apply(self) -> LSN:
        return self.status.apply

    @property
    def stored(self) -> LSN:
        """What is stored for good: flushed, or written when sync is off."""
        return self.status.flush if self.stores_by_flush else self.status.write

    def lag_seconds(self, now: float) -> float:
        """How long WAL the server has and we have not stored has existed (see WalEndClock)."""
        return self.wal_end_clock.lag(self.stored, self.server_wal_end, now)

    def restart(self, start: LSN) -> None:
        """A new START_REPLICATION at ``start``: the first update is due at once."""
        self.expected = start
        self.status.restart(start)

    def rewind(self, fork: LSN) -> None:
        """The server's history left ours at ``fork``: nothing past it is reported."""
        self.status.rewind(fork)
        self.server_wal_end = LSN(min(self.server_wal_end, fork))
        self.wal_end_clock.forget()

    # -- a batch ----------------------------------------------------------------

    def take(self, events: list[XLogData | PrimaryKeepalive], now: float | None = None) -> Batch:
        """Decide about one read's events; ProtocolViolation if the WAL has a gap.

        Taking a batch changes nothing but the server's end of WAL (and, with
        ``now``, the monotonic time it was received, when it moved: the lag
        in seconds), so a batch the fast path declines can be taken again by
        the read loop; :meth:`accept` moves the stream on once the service
        writes it.
        """
        chunks: list[XLogData] = []
        reply = False
        wal_end = self.server_wal_end
        for ev in events:
            if ev.wal_end > wal_end:
                wal_end = ev.wal_end
            if type(ev) is XLogData:
                chunks.append(ev)
            elif isinstance(ev, PrimaryKeepalive) and ev.reply_requested:
                reply = True
        if wal_end > self.server_wal_end:
            self.server_wal_end = wal_end
            if now is not None:
                clock = self.wal_end_clock
                if now < clock.next_time:  # WalEndClock.seen's first step, inlined
                    clock.tail_end = wal_end
                else:
                    clock.seen(wal_end, now, self.stored)
        endpos = self.endpos
        if endpos is not None and chunks:
            chunks = through_endpos(chunks, endpos, self.seg_size)
        expected = self.expected
        for ev in chunks:
            if ev.data_start != expected:
                raise ProtocolViolation(
                    f"received WAL at {ev.data_start}, expected {expected}: the stream has a gap"
                )
            expected = ev.data_end
        # As pg_receivewal: done once the received position is past endpos.
        return Batch(chunks, reply, endpos is not None and expected > endpos)

    def accept(self, end: LSN) -> None:
        """The service is writing a taken batch's WAL, up to ``end``: the stream continues there."""
        self.expected = end

    def flush_before_reply(self, batch: Batch, unflushed: bool) -> bool:
        """Whether answering this batch's reply request needs an fsync first.

        pg_receivewal fsyncs before it answers when it reports a flush
        position; when nothing is unflushed (every batch in synchronous mode)
        the answer needs no disk at all.
        """
        return batch.reply and self.status.report_flush and unflushed

    def written(self, end: int, flushed: int) -> None:
        """The service wrote up to ``end``; ``flushed`` is what is durable now."""
        self.status.received(end)
        self.status.flushed(flushed)

    def wrote(self, end: int) -> None:
        """Written up to ``end``, not yet fsynced: in synchronous mode, reported at once."""
        self.status.received(end)

    def flushed(self, position: int) -> None:
        """An fsync made WAL durable up to ``position`` (never past what was written)."""
        self.status.flushed(position)

    def applied(self, position: int) -> None:
        """A consumer replayed up to ``position``: reported as apply, at once."""
        self.status.applied(position)

    def replied(self, batch: Batch) -> None:
        """The batch's WAL is handled: its reply request (if any) is due now."""
        if batch.reply:
            self.status.reply_requested()

    # -- status updates and the one timer --------------------------------------

    def deadline(self, now: float) -> float | None:
        """When :meth:`poll` must next be called (aioquic's get_timer)."""
        return self.status.deadline(now)

    def poll(self, now: float, wall_clock: float) -> StandbyStatusUpdate | None:
        """The status update due at ``now``, if any (aioquic's handle_timer)."""
        return self.status.poll(now, wall_clock)
