"""What the monitor's bookkeeping costs a synchronous standby per commit.

A synchronous commit's round trip in the receiver is one small batch: the
policy takes it (now with a receipt time, for the lag in seconds), the
directory writes and fsyncs it (now timed into the fsync histogram). This
times each addition alone, in interleaved rounds, and the whole write+fsync
of a commit-sized batch with and without the histogram, on the disk of
``--dir``. Nothing here runs in the test suite; no timing is asserted.

    python bench/monitor_overhead.py [--dir /tmp] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from walstream.lsn import LSN
from walstream.protocol.replication import XLogData
from walstream.receiver.policy import ReceivePolicy
from walstream.storage.directory import WalDirectory
from walstream.storage.latency import LatencyHistogram

SEG = 16 << 20
RECORD = bytes(200)  # about one pgbench transaction's commit batch


def _best_ns(run: Callable[[int], float], reps: int = 200, n: int = 1000) -> float:
    """The fastest of ``reps`` runs of ``n`` iterations, per iteration: noise only adds."""
    return min(run(n) for _ in range(reps)) / n * 1e9


def take_ns(with_time: bool) -> float:
    def run(n: int) -> float:
        policy = ReceivePolicy(interval=10.0, report_flush=True, synchronous=True)
        policy.seg_size = SEG
        policy.restart(LSN(SEG))
        batches = [[XLogData(LSN(SEG + i * 200), LSN(SEG + i * 200 + 200), 0, RECORD)]
                   for i in range(n)]  # fmt: skip
        monotonic = time.monotonic
        started = time.perf_counter()
        if with_time:
            for batch in batches:
                policy.take(batch, monotonic())
                policy.accept(batch[0].data_end)
        else:
            for batch in batches:
                policy.take(batch)
                policy.accept(batch[0].data_end)
        return time.perf_counter() - started

    return _best_ns(run)


def observe_ns() -> float:
    h = LatencyHistogram()
    perf_counter = time.perf_counter

    def run(n: int) -> float:
        started = perf_counter()
        for _ in range(n):
            t = perf_counter()
            h.observe(perf_counter() - t)
        return perf_counter() - started

    return _best_ns(run)


def commit_us(directory: Path, histogram: bool, n: int) -> float:
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        d = WalDirectory(
            tmp, SEG, synchronous=True, fsync_latency=LatencyHistogram() if histogram else None
        )
        pos = SEG
        d.write_chunks(pos, [RECORD], 1)  # opens and pads the segment
        d.sync()
        pos += len(RECORD)
        times = []
        for _ in range(n):
            started = time.perf_counter()
            d.write_chunks(pos, [RECORD], 1)
            d.sync()
            times.append(time.perf_counter() - started)
            pos += len(RECORD)
        d.close()
    return statistics.median(times) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--commits", type=int, default=2000)
    args = p.parse_args()
    rows: dict[str, list[float]] = {k: [] for k in (
        "take, no time (ns)", "take + receipt time (ns)", "fsync timing + observe (ns)",
        "write+fsync, no histogram (us)", "write+fsync, histogram (us)",
    )}  # fmt: skip
    for _ in range(args.rounds):
        rows["take, no time (ns)"].append(take_ns(False))
        rows["take + receipt time (ns)"].append(take_ns(True))
        rows["fsync timing + observe (ns)"].append(observe_ns())
        rows["write+fsync, no histogram (us)"].append(commit_us(args.dir, False, args.commits))
        rows["write+fsync, histogram (us)"].append(commit_us(args.dir, True, args.commits))
    print(f"{args.rounds} interleaved rounds (disk: {args.dir}); ns rows: the fastest round "
          "(each the fastest of 200 runs), us rows: the median round")  # fmt: skip
    for name, values in rows.items():
        shown = min(values) if name.endswith("(ns)") else statistics.median(values)
        print(f"  {name:<34} {shown:10.1f}   "
              f"(rounds: {', '.join(f'{v:.1f}' for v in values)})")  # fmt: skip
    added = min(rows["take + receipt time (ns)"]) - min(rows["take, no time (ns)"])
    print(f"  per commit added: {added + min(rows['fsync timing + observe (ns)']):.0f}"
          " ns (take's receipt time + one timed fsync)")  # fmt: skip


if __name__ == "__main__":
    main()
