#!/usr/bin/env python3
"""Decode throughput of walstream's WAL decoder against pg_waldump --stats on the same WAL.

Generates WAL once with a real PostgreSQL (pgbench -i, then pgbench
transactions; 16 MB segments), then times on each part:

* ``pg_waldump --stats`` (the C baseline),
* the decoder alone (iterate ``WalDecoder.records()`` over whole segments),
* the decoder with the pure-Python CRC-32C instead of the ``crc32c`` package.

Usage: .venv/bin/python scripts/bench_waldump.py [--scale N] [--seconds S] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import walstream.wal.decoder as decoder_module  # noqa: E402
from walstream.embedded import PgCluster  # noqa: E402
from walstream.lsn import LSN  # noqa: E402
from walstream.wal.crc import crc32c, crc32c_python  # noqa: E402
from walstream.wal.segment import segment_name  # noqa: E402

SEG = 16 * 1024 * 1024


def generate(dest: Path, scale: int, seconds: int) -> tuple[LSN, LSN, LSN]:
    cluster = PgCluster.create(
        15,
        conf={
            "wal_keep_size": "'8GB'",
            "max_wal_size": "'8GB'",
            "checkpoint_timeout": "'1h'",
            "synchronous_commit": "off",
        },
    )
    try:

        def pgbench(*args: str) -> None:
            cluster.pgbench(*args, timeout=3600)

        start = LSN.parse(cluster.current_lsn())
        pgbench("-i", "-s", str(scale), "-q")
        mid = LSN.parse(cluster.current_lsn())
        pgbench("-c", "2", "-j", "2", "-T", str(seconds), "-n")
        end = LSN.parse(cluster.current_lsn())
        cluster.psql("CHECKPOINT")
        for path in sorted((cluster.datadir / "pg_wal").iterdir()):
            if path.is_file():
                shutil.copy(path, dest / path.name)
        return start, mid, end
    finally:
        cluster.destroy()


def decode(waldir: Path, start: LSN, end: LSN, *, python_crc: bool) -> tuple[int, float]:
    decoder_module.crc32c = crc32c_python if python_crc else crc32c  # type: ignore[assignment]
    dec = decoder_module.WalDecoder(start - start % 8192, SEG)
    count = 0
    pos = start - start % SEG
    began = time.perf_counter()
    while pos < end:
        data = (waldir / segment_name(1, pos // SEG, SEG)).read_bytes()
        dec.feed(pos, data)
        pos += SEG
        for rec in dec.records():
            if rec[0] >= end:
                pos = end
                break
            if rec[0] >= start:
                count += 1
    elapsed = time.perf_counter() - began
    decoder_module.crc32c = crc32c  # type: ignore[assignment]
    return count, elapsed


def waldump_stats(bindir: Path, waldir: Path, start: LSN, end: LSN) -> tuple[int, float]:
    began = time.perf_counter()
    out = subprocess.run(
        [str(bindir / "pg_waldump"), "--stats", "-p", str(waldir), "-s", str(start), "-e",
         str(end)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    elapsed = time.perf_counter() - began
    total = next(line for line in out.splitlines() if line.startswith("Total"))
    return int(total.split()[1]), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=40)
    parser.add_argument("--keep", type=Path, help="reuse or keep the WAL in this directory")
    parser.add_argument("--python-crc", action="store_true", help="also time the pure-Python CRC")
    args = parser.parse_args()
    waldir = args.keep or Path(tempfile.mkdtemp(prefix="walbench-"))
    waldir.mkdir(parents=True, exist_ok=True)
    marker = waldir / "RANGE"
    if marker.exists():
        start, mid, end = (LSN.parse(x) for x in marker.read_text().split())
    else:
        start, mid, end = generate(waldir, args.scale, args.seconds)
        marker.write_text(f"{start} {mid} {end}\n")
    bindir = Path("/usr/lib/postgresql/15/bin")
    for label, a, b in (("pgbench -i", start, mid), ("pgbench tx", mid, end), ("all", start, end)):
        mb = (b - a) / 1e6
        n_pg, t_pg = min(waldump_stats(bindir, waldir, a, b) for _ in range(3))
        n, t = min(decode(waldir, a, b, python_crc=False) for _ in range(2))
        line = (
            f"{label:11} {mb:7.1f} MB {n:9} records | pg_waldump --stats {t_pg:6.2f} s "
            f"{mb / t_pg:7.0f} MB/s | walstream {t:6.2f} s {mb / t:6.1f} MB/s "
            f"{t / n * 1e6:5.2f} us/record = {t_pg / t:.3f}x"
        )
        if args.python_crc:
            _, t_py = decode(waldir, a, b, python_crc=True)
            line += f" | pure-Python CRC {t_py:6.2f} s {mb / t_py:5.1f} MB/s"
        assert abs(n - n_pg) <= 2, (n, n_pg)  # the -e boundary counts by record end
        print(line)
    if not args.keep:
        shutil.rmtree(waldir)


if __name__ == "__main__":
    main()
