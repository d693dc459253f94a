"""How long the disk's durability calls take: a fixed-bucket histogram fed by the writer.

:class:`LatencyHistogram` counts durations into the buckets of a Prometheus
histogram (``le`` upper bounds, and +Inf); :mod:`.directory` feeds it one
observation per ``fsync(2)`` when it is given one. It is built for that
path: an observation is one ``bisect`` and two additions, no lock, no
allocation; with the two clock reads around the fsync, 0.22 us (measured
with bench/monitor_overhead.py), against fsyncs of 0.1 to 0.3 ms on the
development machine.

Threading contract: one thread at a time observes (the receiver's disk
thread, or its event loop for a small synchronous batch: its disk calls never
overlap), any thread may take a :meth:`~LatencyHistogram.snapshot`. A snapshot's buckets
and count always agree with one another (the count is their sum); its sum
may miss an observation being made at that moment.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["FSYNC_BUCKETS", "HistogramSnapshot", "LatencyHistogram"]

# Upper bounds in seconds: from a battery-backed or tmpfs fsync (tens of
# microseconds) through a laptop SSD (about 0.3 ms here) to a saturated or
# network disk (seconds), which is when an operator looks at this.
FSYNC_BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass(frozen=True)
class HistogramSnapshot:
    """A histogram at one moment, cumulative as Prometheus exposes it.

    ``buckets`` pairs each upper bound with the number of observations at or
    below it; the last pair is ``(inf, count)``.
    """

    buckets: tuple[tuple[float, int], ...]
    sum: float

    @property
    def count(self) -> int:
        return self.buckets[-1][1] if self.buckets else 0


class LatencyHistogram:
    """Durations counted by bucket (Prometheus ``le`` semantics), plus their sum."""

    __slots__ = ("_counts", "_sum", "bounds")

    def __init__(self, bounds: Sequence[float] = FSYNC_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("histogram bounds must be distinct and increasing")
        self.bounds = tuple(float(b) for b in bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf's own
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: a duration equal to a bound belongs to that bound's bucket (le).
        self._counts[bisect_left(self.bounds, seconds)] += 1
        self._sum += seconds

    def snapshot(self) -> HistogramSnapshot:
        counts = list(self._counts)  # one copy: buckets and count agree
        total = 0
        buckets: list[tuple[float, int]] = []
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            total += n
            buckets.append((bound, total))
        return HistogramSnapshot(tuple(buckets), self._sum)
