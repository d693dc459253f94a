#!/usr/bin/env python3
"""What the sender's DirectorySource costs: validating WAL, listing, refreshing, saving slots.

Run: ``.venv/bin/python bench/source.py --wal /tmp/walbench [--segments 10000]``

``--wal`` is a directory of completed 16 MB segments of one timeline (``bench/waldump.py
--keep DIR`` makes one: pgbench -i's large records, then pgbench's small ones). Printed:

* decode + verify throughput (``WalDecoder.scan_stats``) over the first and the last
  ``--sample`` segments: what validating completed segments would cost per GiB, which is
  why DirectorySource trusts them and decodes only the ``.partial`` being written;
* ``DirectorySource()`` on a directory of ``--segments`` segments (hard links of one
  real segment under successive names: every page header is read once), one full
  rescan, and ``refresh()`` while waiting for the next segment;
* ``refresh()`` while a ``.partial`` is written 128 kB at a time (real segments copied
  in as a receiver writes them, plain and gzip): mean per call and the share of
  each segment's WAL the decoder had to look at;
* ``SlotStore.save`` (two fsyncs).

Times are medians of ``--rounds`` rounds; on a shared machine compare with care.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from walstream.lsn import LSN
from walstream.sender.source import DirectorySource
from walstream.storage.compression import Compression, make_compressor
from walstream.storage.slots import SavedSlot, SlotStore
from walstream.wal.decoder import RecordStats, WalDecoder
from walstream.wal.segment import parse_segment_name, segment_name

SEG = 16 * 1024 * 1024
PIECE = 128 * 1024


def median_time(rounds: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def verify_rate(files: list[Path], rounds: int) -> float:
    """MB/s of decode + verify over ``files`` (read into memory first)."""
    data = [f.read_bytes() for f in files]
    first = parse_segment_name(files[0].name, SEG)
    assert first is not None

    def run() -> None:
        pos = first.segno * SEG
        dec = WalDecoder(pos, SEG)
        stats = RecordStats()
        for chunk in data:
            dec.feed(pos, chunk)
            pos += len(chunk)
            dec.scan_stats(stats)
        assert dec.outcome is None, dec.outcome

    return len(files) * SEG / 1e6 / median_time(rounds, run)


def listing(seed: Path, count: int, rounds: int, work: Path) -> None:
    big = work / "many"
    big.mkdir()
    for i in range(1, count + 1):
        os.link(seed, big / segment_name(1, i, SEG))
    opened = median_time(rounds, lambda: DirectorySource(big).close())
    source = DirectorySource(big)
    rescan = median_time(rounds, source._scan)
    n = 2000
    idle = median_time(rounds, lambda: [source.refresh() for _ in range(n)]) / n
    source.close()
    print(
        f"  {count} segments: DirectorySource() {opened * 1e3:.0f} ms, full rescan "
        f"{rescan * 1e3:.0f} ms, refresh() waiting for the next one {idle * 1e6:.0f} us"
    )


def following(files: list[Path], method: str, work: Path) -> None:
    """A receiver's writes, 128 kB at a time, with a refresh after each."""
    directory = work / f"follow-{method}"
    directory.mkdir()
    suffix = Compression(method).suffix
    (directory / files[0].name).write_bytes(files[0].read_bytes())
    source = DirectorySource(directory)
    calls, spent = 0, 0.0
    for f in files[1:]:
        data = f.read_bytes()
        partial = directory / (f.name + suffix + ".partial")
        compressor = make_compressor(Compression(method))
        with open(partial, "wb") as out:
            if compressor is None:
                out.write(bytes(SEG))
                out.seek(0)
            else:
                out.write(compressor.start())
            for i in range(0, SEG, PIECE):
                piece = data[i : i + PIECE]
                out.write(
                    piece if compressor is None else compressor.compress(piece) + compressor.flush()
                )
                out.flush()
                start = time.perf_counter()
                source.refresh()
                spent += time.perf_counter() - start
                calls += 1
            if compressor is not None:
                out.write(compressor.finish())
        partial.rename(directory / (f.name + suffix))
        source.refresh()
    end = source.end_of_wal()
    source.close()
    assert end == (parse_segment_name(files[-1].name, SEG).segno + 1) * SEG, LSN(end)  # type: ignore[union-attr]
    print(
        f"  {method}: {spent / calls * 1e3:.2f} ms a refresh ({calls} refreshes, "
        f"{len(files) - 1} segments written 128 kB at a time)"
    )


def slot_saves(work: Path, rounds: int) -> None:
    store = SlotStore(work)
    n = 200
    t = median_time(rounds, lambda: [store.save(SavedSlot("s", LSN(i * 8192))) for i in range(n)])
    print(f"  SlotStore.save: {t / n * 1e3:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wal", type=Path, required=True)
    parser.add_argument("--segments", type=int, default=10000)
    parser.add_argument("--sample", type=int, default=8, help="segments per verify sample")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # Without the last one: where the generator stopped, it is not full.
    files = sorted(p for p in args.wal.iterdir() if parse_segment_name(p.name, SEG))[:-1]
    print(f"load average {os.getloadavg()[0]:.2f}")
    print("decode + verify (what validating completed segments would cost):")
    for what, sample in (("first", files[: args.sample]), ("last", files[-args.sample :])):
        rate = verify_rate(sample, args.rounds)
        print(f"  {what} {len(sample)} segments: {rate:.0f} MB/s, {1024 / rate:.1f} s per GiB")
    with tempfile.TemporaryDirectory(dir=args.wal.parent) as tmp:
        work = Path(tmp)
        print("listing:")
        listing(files[-1], args.segments, args.rounds, work)
        print("following a .partial being written:")
        for method in ("none", "gzip"):
            following(files[-4:], method, work)
        print("slots:")
        slot_saves(work, args.rounds)


if __name__ == "__main__":
    main()
