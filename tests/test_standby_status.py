"""The standby status policy: when updates go out and what they claim."""

from __future__ import annotations

import pytest

from walstream import LSN
from walstream.protocol.standby import StatusPolicy


def test_first_update_is_immediate_then_periodic() -> None:
    p = StatusPolicy(interval=10.0)
    assert p.deadline(100.0) == 100.0
    first = p.poll(100.0, 0.0)
    assert first is not None
    assert p.poll(105.0, 0.0) is None
    assert p.deadline(105.0) == 110.0
    assert p.poll(110.0, 0.0) is not None


def test_no_periodic_updates_with_zero_interval() -> None:
    p = StatusPolicy(interval=0)
    assert p.poll(0.0, 0.0) is not None
    assert p.deadline(1e9) is None
    p.reply_requested()
    assert p.poll(5.0, 0.0) is not None


def test_flush_is_never_ahead_of_write_and_hidden_without_sync() -> None:
    p = StatusPolicy(report_flush=False)
    p.received(0x2000)
    p.flushed(0x1000)
    update = p.poll(0.0, 0.0)
    assert update is not None
    assert (update.write, update.flush) == (LSN(0x2000), LSN(0))
    with pytest.raises(ValueError, match="ahead of write"):
        p.flushed(0x3000)


def test_synchronous_mode_reports_each_flush_at_once() -> None:
    p = StatusPolicy(report_on_flush=True)
    p.poll(0.0, 0.0)
    p.received(0x5000)
    assert p.poll(1.0, 0.0) is None  # receiving alone is not a reason
    p.flushed(0x5000)
    update = p.poll(1.0, 0.0)
    assert update is not None
    assert update.flush == LSN(0x5000)


def test_replay_progress_is_reported_promptly() -> None:
    p = StatusPolicy()
    p.poll(0.0, 0.0)
    p.received(0x100)
    p.applied(0x80)
    update = p.poll(0.5, 0.0)
    assert update is not None
    assert update.apply == LSN(0x80)


def test_rewind_brings_positions_past_a_fork_back_and_reports_at_once() -> None:
    p = StatusPolicy(interval=10.0, report_on_flush=True)
    p.received(0xB00000)
    p.flushed(0xA00000)
    p.applied(0x900000)
    p.poll(0.0, 0.0)
    p.rewind(0x950000)
    assert (p.write, p.flush, p.apply) == (0x950000, 0x950000, 0x900000)
    update = p.poll(1.0, 0.0)
    assert update is not None
    assert (update.write, update.flush) == (0x950000, 0x950000)
    p.received(0x960000)
    p.flushed(0x960000)  # the next flush on the new timeline is reported at once again
    assert p.poll(2.0, 0.0) is not None


def test_a_cap_limits_what_is_reported_and_is_reported_at_once() -> None:
    """The relay: its own positions, capped by what its synchronous standbys confirmed."""
    policy = StatusPolicy(interval=10.0, report_flush=True)
    policy.received(LSN(0x5000))
    policy.flushed(LSN(0x4000))
    policy.poll(0.0, 0.0)
    policy.limit((LSN(0x3000), LSN(0x2000), LSN(0x1000)))
    assert policy.deadline(1.0) == 1.0
    update = policy.poll(1.0, 0.0)
    assert update is not None
    assert (update.write, update.flush, update.apply) == (0x3000, 0x2000, 0x1000)
    policy.limit((LSN(0x9000), LSN(0x9000), LSN(0x8000)))  # never past our own positions
    update = policy.poll(2.0, 0.0)
    assert update is not None
    assert (update.write, update.flush, update.apply) == (0x5000, 0x4000, 0x8000)
    policy.limit(None)
    update = policy.poll(3.0, 0.0)
    assert update is not None
    assert (update.write, update.flush, update.apply) == (0x5000, 0x4000, 0)
