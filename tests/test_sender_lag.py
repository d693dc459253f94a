"""The lag tracker's rules, one by one (walsender.c's LagTrackerWrite/LagTrackerRead).

test_sender_lag_oracle.py checks the same tracker against real primaries.
Times are PostgreSQL microseconds; small numbers keep the arithmetic legible.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from walstream.sender.lag import APPLY, FLUSH, WRITE, LagTracker


def test_columns_start_null() -> None:
    t = LagTracker()
    assert (t.write_lag, t.flush_lag, t.replay_lag) == (None, None, None)


def test_crossing_samples_gives_now_minus_the_newest_crossed() -> None:
    t = LagTracker()
    t.record(100, 1_000)
    t.record(200, 2_000)
    t.record(300, 3_000)
    assert t.read(WRITE, 250, 5_000) == 5_000 - 2_000
    assert t.read(WRITE, 300, 6_000) == 6_000 - 3_000  # "at or below" includes equal


def test_a_repeated_position_is_no_sample() -> None:
    t = LagTracker()
    t.record(100, 1_000)
    t.record(100, 1_500)  # an idle loop: the WAL end did not move
    assert t.read(WRITE, 100, 2_000) == 1_000
    t.record(200, 3_000)
    t.record(100, 3_500)  # it moved (back, as at a timeline switch): a sample
    assert t.read(FLUSH, 100, 4_000) == 4_000 - 1_000  # crosses 100@1000, stops at 200
    assert t.read(FLUSH, 200, 4_000) == 4_000 - 3_500  # crosses 200@3000, then 100@3500


def test_first_position_zero_is_no_sample() -> None:
    t = LagTracker()
    t.record(0, 1_000)  # equal to the initial "last" position
    assert t.read(WRITE, 0, 2_000) is None


def test_interpolates_between_the_last_crossed_and_the_next_sample() -> None:
    t = LagTracker()
    t.record(1_000, 10_000)
    t.record(2_000, 20_000)
    assert t.read(APPLY, 1_000, 11_000) == 1_000  # crosses the first sample
    # Between samples, nothing crossed: a quarter of the way, a quarter of the time.
    assert t.read(APPLY, 1_250, 30_000) == 30_000 - 12_500
    # A stuck position shows a growing lag.
    assert t.read(APPLY, 1_250, 40_000) == 40_000 - 12_500


def test_interpolation_truncates_like_a_c_cast() -> None:
    t = LagTracker()
    t.record(0x1000, 1)
    t.record(0x1003, 2)
    t.read(WRITE, 0x1000, 10)
    # 1 + 1 * (1/3) = 1.33 -> 1; 1 + 1 * (2/3) = 1.67 -> 1
    assert t.read(WRITE, 0x1001, 10) == 9
    assert t.read(WRITE, 0x1002, 10) == 9


def test_only_a_future_sample_gives_its_time() -> None:
    t = LagTracker()
    t.record(1_000, 10_000)
    # Nothing consumed yet: the lag the next sample would have if reached now.
    assert t.read(WRITE, 500, 15_000) == 5_000
    assert t.read(WRITE, 0, 16_000) == 6_000


def test_an_emptied_tracker_does_not_interpolate_from_stale_samples() -> None:
    t = LagTracker()
    t.record(1_000, 10_000)
    assert t.read(WRITE, 1_000, 11_000) == 1_000  # everything consumed: empty
    t.record(2_000, 50_000)  # a new burst after idleness
    # Interpolating from 1_000@10_000 would give 30_000; the rule takes the next sample.
    assert t.read(WRITE, 1_500, 60_000) == 60_000 - 50_000


def test_no_future_sample_is_no_information() -> None:
    t = LagTracker()
    assert t.read(WRITE, 100, 1_000) is None
    t.record(100, 1_000)
    t.read(WRITE, 100, 2_000)
    assert t.read(WRITE, 100, 3_000) is None  # nothing new, nothing ahead


def test_a_clock_that_went_backwards_is_no_information() -> None:
    t = LagTracker()
    t.record(100, 5_000)
    assert t.read(WRITE, 100, 4_000) is None  # the sample is "in the future"
    t2 = LagTracker()
    t2.record(100, 5_000)
    t2.record(200, 4_000)
    t2.read(FLUSH, 100, 6_000)
    assert t2.read(FLUSH, 150, 6_000) is None  # prev.time > next.time


def test_a_position_behind_the_last_crossed_sample_is_no_information() -> None:
    t = LagTracker()
    t.record(100, 1_000)
    t.record(200, 2_000)
    t.record(300, 3_000)
    t.read(WRITE, 200, 5_000)
    assert t.read(WRITE, 150, 5_000) is None  # went back (a timeline change)


def test_heads_are_independent() -> None:
    t = LagTracker()
    t.record(100, 1_000)
    t.record(200, 2_000)
    assert t.read(WRITE, 200, 3_000) == 1_000
    assert t.read(FLUSH, 100, 3_000) == 2_000
    assert t.read(APPLY, 50, 3_000) == 2_000  # only a future sample yet


def test_a_full_ring_overwrites_its_newest_sample() -> None:
    t = LagTracker(size=4)
    for i in range(1, 8):  # room for 3: the 4th..7th each replace the newest
        t.record(i * 100, i * 1_000)
    assert t.read(WRITE, 250, 10_000) == 10_000 - 2_000
    # 300..600 were overwritten: 699 lies between 200@2000 and 700@7000.
    assert t.read(WRITE, 699, 10_000) == 10_000 - int(2_000 + 5_000 * (499 / 500))
    assert t.read(WRITE, 700, 10_000) == 10_000 - 7_000


def test_the_slowest_head_holds_the_space() -> None:
    t = LagTracker(size=4)
    for i in range(1, 4):
        t.record(i * 100, i * 1_000)
    t.read(WRITE, 300, 5_000)
    t.read(FLUSH, 300, 5_000)
    t.record(400, 4_000)  # APPLY has read nothing: still full, 300 is overwritten
    assert t.read(APPLY, 350, 5_000) == 5_000 - 2_000  # 100 and 200 crossed
    t.record(500, 5_000)  # now there is room
    assert t.read(APPLY, 500, 6_000) == 1_000


def test_reply_keeps_a_column_when_a_read_says_nothing() -> None:
    t = LagTracker()
    t.record(100, 1_000)
    t.record(200, 2_000)
    t.reply(200, 100, 0, sent=200, now=3_000)
    assert (t.write_lag, t.flush_lag, t.replay_lag) == (1_000, 2_000, 2_000)
    t.reply(200, 100, 0, sent=200, now=4_000)
    assert t.write_lag == 1_000  # nothing crossed, nothing ahead: kept
    assert t.flush_lag == 4_000 - 1_000  # interpolated at fraction 0: growing
    assert t.replay_lag == 4_000 - 1_000  # the future sample's time: growing


def test_two_fully_applied_replies_in_a_row_clear_the_columns() -> None:
    t = LagTracker()
    t.record(100, 1_000)
    t.reply(100, 100, 100, sent=100, now=3_000)
    assert (t.write_lag, t.flush_lag, t.replay_lag) == (2_000, 2_000, 2_000)
    t.reply(100, 100, 100, sent=100, now=13_000)  # the standby's idle status interval
    assert (t.write_lag, t.flush_lag, t.replay_lag) == (None, None, None)


def test_clearing_keeps_what_this_reply_measured() -> None:
    t = LagTracker()
    t.record(100, 1_000)
    t.reply(100, 100, 100, sent=100, now=2_000)
    # The second fully applied reply also crosses a sample that the sender
    # recorded but has not sent yet (sent is what it had sent).
    t.record(150, 2_500)
    t.reply(150, 100, 100, sent=100, now=3_000)
    assert t.write_lag == 500
    assert (t.flush_lag, t.replay_lag) == (500, 500)  # the future sample's time


def test_negative_lags_are_kept_but_shown_as_null() -> None:
    t = LagTracker()
    t.record(100, 5_000)  # a sample "after" the reply: the clock went back
    t.reply(0, 0, 0, sent=100, now=3_000)  # the future-sample rule: -2000
    assert t.lags == [-2_000, -2_000, -2_000]
    assert (t.write_lag, t.flush_lag, t.replay_lag) == (None, None, None)
    t.reply(100, 100, 0, sent=100, now=4_000)  # crossing a sample from the future
    assert t.lags == [-2_000, -2_000, -1_000]
    t.reply(100, 100, 100, sent=100, now=6_000)
    assert (t.write_lag, t.flush_lag, t.replay_lag) == (None, None, 1_000)


def test_a_lag_of_exactly_minus_one_is_no_information() -> None:
    t = LagTracker()
    t.record(100, 5_001)
    assert t.read(WRITE, 50, 5_000) is None  # PostgreSQL's -1 sentinel
    assert t.read(FLUSH, 50, 4_999) == -2


def test_fully_applied_must_be_consecutive() -> None:
    t = LagTracker()
    t.record(100, 1_000)
    t.reply(100, 100, 100, sent=100, now=3_000)  # fully applied
    t.reply(100, 100, 100, sent=200, now=4_000)  # more was sent: not fully applied
    t.reply(100, 100, 100, sent=100, now=5_000)  # fully applied again, but only once
    assert t.replay_lag == 2_000
    t.reply(100, 100, 100, sent=100, now=6_000)
    assert t.replay_lag is None


def test_clearing_cannot_hide_wal_not_yet_sent() -> None:
    # Samples are the WAL end, which can be ahead of what was sent: a
    # standby that applied all it was sent still gets a lag from them.
    t = LagTracker()
    t.record(100, 1_000)
    t.record(200, 2_000)
    t.reply(100, 100, 100, sent=100, now=3_000)
    t.reply(100, 100, 100, sent=100, now=4_000)
    assert t.replay_lag == 4_000 - 1_000  # interpolated at fraction 0, not cleared


def test_apply_ahead_of_sent_is_not_fully_applied() -> None:
    t = LagTracker()
    t.record(100, 1_000)
    t.reply(100, 100, 100, sent=100, now=2_000)
    t.reply(200, 200, 200, sent=100, now=3_000)
    assert t.replay_lag == 1_000


@given(
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 1 << 40)), min_size=0, max_size=40),
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1 << 20)), max_size=40),
)
def test_small_ring_behaves_like_big_ring_until_full(
    samples: list[tuple[int, int]], reads: list[tuple[int, int]]
) -> None:
    # With fewer samples than slots, the ring size must not matter.
    big, small = LagTracker(), LagTracker(size=64)
    for lsn, time in samples:
        big.record(lsn, time)
        small.record(lsn, time)
    for head, lsn in reads:
        assert big.read(head, lsn, 1 << 41) == small.read(head, lsn, 1 << 41)
