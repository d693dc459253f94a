"""Catch-up speed: walstream's receiver vs pg_receivewal on the same WAL backlog.

Run: ``python bench/catchup.py [--scale 45] [--rounds 3] [--no-sync]``

One throwaway PostgreSQL 15 primary; ``pgbench -i -s SCALE`` makes the
backlog (scale 45 is about 600 MB of WAL). Each run streams the same range
into an empty directory (a zero-length ``.partial`` names the start segment,
which both tools resume from) and stops at the same endpos with ``-E -n``.
Rounds alternate which tool goes first; the medians and their ratio are
printed. Figures vary between machines and runs: compare the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from walstream import LSN
from walstream.embedded import PgCluster
from walstream.wal.segment import segment_name

SEG = 16 * 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=45, help="pgbench -i scale (default 45)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--no-sync", action="store_true", help="pass --no-sync to both tools")
    args = parser.parse_args()

    cluster = PgCluster.create(
        15, conf={"max_wal_size": "'8GB'", "wal_keep_size": "'8GB'", "checkpoint_timeout": "'1h'"}
    )
    work = Path(tempfile.mkdtemp(prefix="walstream-bench-"))
    try:
        first = LSN.parse(cluster.current_lsn())
        start = LSN(first - first % SEG)
        cluster.pgbench("-i", "-s", str(args.scale), "-q", timeout=1800)
        end = LSN.parse(cluster.current_lsn())
        cluster.psql("INSERT INTO pgbench_history VALUES (1, 1, 1, 1, now(), 'past endpos')")
        size = end - start
        mode = "--no-sync" if args.no_sync else "default fsync rules"
        print(f"backlog {size / 1e6:.0f} MB from {start} to {end}, {mode}", flush=True)
        tools = {
            "walstream": [sys.executable, "-m", "walstream.receiver"],
            "pg_receivewal": [str(cluster.program("pg_receivewal"))],
        }
        times: dict[str, list[float]] = {name: [] for name in tools}
        rss: dict[str, list[float]] = {name: [] for name in tools}
        for rnd in range(args.rounds):
            order = list(tools) if rnd % 2 == 0 else list(reversed(tools))
            for name in order:
                directory = work / f"{name}-{rnd}"
                directory.mkdir()
                (directory / (segment_name(1, start // SEG, SEG) + ".partial")).touch()
                cmd = [*tools[name], "-d", cluster.conninfo("trust_user"), "-D", str(directory)]
                cmd += ["-n", "-E", str(end)] + (["--no-sync"] if args.no_sync else [])
                t0 = time.monotonic()
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                assert proc.stderr is not None
                err = proc.stderr.read()
                # wait4 reports this child's own peak RSS (ru_maxrss, in kB on Linux).
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                elapsed = time.monotonic() - t0
                if proc.returncode != 0:
                    print(f"{name} failed: {err.decode(errors='replace')}", file=sys.stderr)
                    return 1
                times[name].append(elapsed)
                rss[name].append(usage.ru_maxrss / 1024)
                print(
                    f"round {rnd}  {name:<14} {elapsed:6.2f} s  {size / elapsed / 1e6:6.0f} MB/s"
                    f"  peak RSS {usage.ru_maxrss / 1024:5.1f} MB"
                )
                shutil.rmtree(directory)
        ours, theirs = (statistics.median(times[n]) for n in tools)
        print(
            f"median: walstream {ours:.2f} s, pg_receivewal {theirs:.2f} s; "
            f"walstream speed = {theirs / ours:.2f}x pg_receivewal"
        )
        print(
            f"peak RSS: walstream {max(rss['walstream']):.1f} MB, "
            f"pg_receivewal {max(rss['pg_receivewal']):.1f} MB"
        )
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
