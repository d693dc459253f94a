"""The receiver's per-batch decisions, without a server (walstream.receiver.policy)."""

from __future__ import annotations

import pytest

from walstream.errors import ProtocolViolation
from walstream.lsn import LSN
from walstream.protocol.replication import PrimaryKeepalive, XLogData
from walstream.receiver.policy import ReceivePolicy

SEG = 1 << 20
START = LSN(3 * SEG)


def wal(start: int, size: int, wal_end: int = 0) -> XLogData:
    return XLogData(LSN(start), LSN(wal_end or start + size), 0, bytes(size))


def keepalive(wal_end: int, reply: bool) -> PrimaryKeepalive:
    return PrimaryKeepalive(LSN(wal_end), 0, reply)


def policy(*, synchronous: bool = False, slot: bool = False, endpos: int | None = None,
           interval: float | None = 10.0) -> ReceivePolicy:  # fmt: skip
    p = ReceivePolicy(
        interval=interval,
        report_flush=synchronous or slot,
        synchronous=synchronous,
        endpos=None if endpos is None else LSN(endpos),
    )
    p.seg_size = SEG
    p.restart(START)
    return p


def test_a_batch_continues_the_stream_or_is_a_gap() -> None:
    p = policy()
    batch = p.take([wal(START, 100), wal(START + 100, 50)])
    assert (batch.start, batch.end, batch.reply, batch.done) == (START, START + 150, False, False)
    assert p.expected == START  # taking decides; only accepting moves the stream on
    assert p.take([wal(START, 100)]).end == START + 100  # so a declined batch can be taken again
    p.accept(batch.end)
    assert p.expected == START + 150
    with pytest.raises(
        ProtocolViolation, match=f"received WAL at {START + 100}, expected {START + 150}"
    ):
        p.take([wal(START + 100, 10)])
    with pytest.raises(ProtocolViolation, match="the stream has a gap"):
        p.take([wal(START + 150, 10), wal(START + 170, 10)])  # a hole inside one batch


def test_server_wal_end_and_reply_requests() -> None:
    p = policy()
    batch = p.take([wal(START, 10, wal_end=START + 900), keepalive(START + 500, True)])
    assert batch.reply
    assert p.server_wal_end == START + 900  # the highest seen, not the last
    assert not p.take([keepalive(START + 950, False)]).reply
    assert p.server_wal_end == START + 950


def test_flush_before_reply_only_when_flush_is_reported_and_something_is_unflushed() -> None:
    asks = [keepalive(START, True)]
    plain, slot, sync = policy(), policy(slot=True), policy(synchronous=True)
    assert not plain.flush_before_reply(plain.take(asks), unflushed=True)  # flush reported as 0
    assert slot.flush_before_reply(slot.take(asks), unflushed=True)
    assert not slot.flush_before_reply(slot.take(asks), unflushed=False)  # no disk for nothing
    assert not sync.flush_before_reply(sync.take([wal(START, 8)]), unflushed=True)  # no request


def test_endpos_cuts_the_batch_and_ends_the_stream() -> None:
    p = policy(endpos=START + 150)
    batch = p.take([wal(START, 100), wal(START + 100, 100), wal(START + 200, 100)])
    # The first message passing endpos is the last, cut at the next segment boundary
    # (which lies beyond it here), exactly as pg_receivewal.
    assert [c.data_end for c in batch.chunks] == [START + 100, START + 200]
    assert batch.done
    p = policy(endpos=START + 200)
    assert not p.take([wal(START, 200)]).done  # at endpos is not past it
    p = policy(endpos=SEG * 4 - 10)
    p.restart(LSN(SEG * 4 - 100))
    (cut,) = p.take([wal(SEG * 4 - 100, 300)]).chunks
    assert (cut.data_start, cut.data_end) == (SEG * 4 - 100, SEG * 4)


def test_positions_and_status_updates() -> None:
    p = policy(synchronous=True)
    assert p.deadline(5.0) == 5.0  # the first update goes out at once
    first = p.poll(5.0, 1000.0)
    assert first is not None
    assert (first.write, first.flush) == (START, 0)
    assert p.deadline(5.0) == 15.0  # then every interval ...
    batch = p.take([wal(START, 100)])
    p.accept(batch.end)
    p.written(batch.end, flushed=START + 100)
    assert p.deadline(6.0) == 6.0  # ... and at once after each flush, in synchronous mode
    update = p.poll(6.0, 1001.0)
    assert update is not None
    assert (update.write, update.flush) == (START + 100, START + 100)
    with pytest.raises(ValueError, match="ahead of write"):
        p.flushed(START + 200)  # never a flush past what was written


def test_a_reply_is_due_once_its_batch_is_handled() -> None:
    p = policy(slot=True)
    p.poll(0.0, 0.0)
    batch = p.take([keepalive(START, True)])
    assert p.deadline(1.0) == 10.0  # not before the service says it handled the batch
    p.replied(batch)
    assert p.deadline(1.0) == 1.0
    update = p.poll(1.0, 0.0)
    assert update is not None
    assert update.flush == 0  # nothing was flushed yet: never a position ahead of an fsync


def test_rewind_after_a_fork_reports_nothing_past_it() -> None:
    p = policy(synchronous=True)
    batch = p.take([wal(START, 1000, wal_end=START + 5000)])
    p.accept(batch.end)
    p.written(batch.end, batch.end)
    p.rewind(LSN(START + 400))
    assert (p.write, p.flush, p.server_wal_end) == (START + 400, START + 400, START + 400)
    assert p.deadline(0.0) == 0.0  # and says so at once


def test_synchronous_mode_reports_the_write_before_the_fsync_then_the_flush() -> None:
    """As PostgreSQL's walreceiver: remote_write commits are released an fsync earlier."""
    p = policy(synchronous=True)
    p.poll(0.0, 0.0)
    batch = p.take([wal(START, 100)])
    p.accept(batch.end)
    p.wrote(batch.end)
    assert p.deadline(1.0) == 1.0
    first = p.poll(1.0, 0.0)
    assert first is not None
    assert (first.write, first.flush) == (START + 100, 0)  # never a flush ahead of the fsync
    p.written(batch.end, flushed=batch.end)
    second = p.poll(1.0, 0.0)
    assert second is not None
    assert (second.write, second.flush) == (START + 100, START + 100)


def test_without_synchronous_a_write_waits_for_the_interval() -> None:
    p = policy(slot=True)
    p.poll(0.0, 0.0)
    p.wrote(START + 100)
    assert p.deadline(1.0) == 10.0


def test_the_lag_in_seconds_runs_from_when_the_servers_end_was_first_seen() -> None:
    p = policy(synchronous=True)
    p.take([wal(START, 100, wal_end=START + 500)], now=10.0)
    p.accept(START + 100)
    assert p.lag_seconds(12.5) == 2.5  # nothing stored yet
    p.written(START + 100, START + 100)
    assert p.lag_seconds(12.5) == 2.5  # WAL past it was known at 10.0
    p.take([wal(START + 100, 400, wal_end=START + 500)], now=13.0)  # the same end: no sample
    p.accept(START + 500)
    p.written(START + 500, START + 500)
    assert p.lag_seconds(14.0) == 0.0  # caught up
    p.take([keepalive(START + 900, False)], now=20.0)
    assert p.lag_seconds(21.0) == 1.0
    p.rewind(START + 500)  # a fork: what the old timeline said is forgotten
    assert p.lag_seconds(21.0) == 0.0


def test_without_sync_the_lag_is_of_what_is_written() -> None:
    p = ReceivePolicy(interval=10.0, report_flush=False, synchronous=False, stores_by_flush=False)
    p.seg_size = SEG
    p.restart(START)
    p.take([wal(START, 100, wal_end=START + 100)], now=5.0)
    p.accept(START + 100)
    p.written(START + 100, 0)  # nothing ever fsynced
    assert (p.stored, p.lag_seconds(9.0)) == (START + 100, 0.0)
