#!/usr/bin/env python3
"""WAL decode + verify throughput: walstream against ``pg_waldump --stats`` on the same WAL.

Run: ``.venv/bin/python bench/waldump.py --keep /tmp/walbench [--rounds 5] [--replay-pure]``

The WAL (about 1.1 GiB by default, 16 MB segments, PostgreSQL 15) is
generated once and reused with ``--keep DIR``; its mix is:

* ``pgbench -i -s 30`` (about 400 MB): mostly large records, Heap2
  MULTI_INSERT from the COPY (a few kB each) and the btree build's
  full-page images;
* then ``pgbench -c 4 -j 2`` transactions (the TPC-B-like default script)
  in 20 s runs until the total reaches ``--target-mb``, with a CHECKPOINT
  before every run, as a live system has every few minutes. This part is
  small records: per transaction three Heap UPDATE/HOT_UPDATE, a Heap
  INSERT, a Transaction COMMIT (50-80 bytes, one block and main data, or
  main data only), plus the full-page images of pages first touched after
  each checkpoint (mostly pgbench_accounts) and some Heap2 PRUNE, Standby
  RUNNING_XACTS, XLOG records.

Timed, in interleaved rounds (the order alternates, medians reported):

* ``pg_waldump --stats`` (the C baseline) over the whole range;
* ``decode+verify``: walstream's decoder over the same range as
  ``walstream waldump --stats`` reads it (every record decoded and its CRC
  checked, every page header and xlogreader check), through
  ``WalDecoder.scan_stats``, with no CLI around it, once with the compiled
  kernel and once on the pure-Python path (see ``walstream.wal.kernel``);
* ``walstream waldump --stats``: the CLI end to end as a user runs it, in a
  fresh interpreter (start-up, imports, reading the files, the statistics
  table), which is the apples-to-apples comparison with pg_waldump, compiled
  and pure (``WALSTREAM_PURE_PYTHON=1``). By default it scans long ranges in
  parallel parts (2 per CPU); the same with ``WALSTREAM_WALDUMP_JOBS=1`` (one
  process, like pg_waldump) is timed too;
* ``replay``: the startup role's replay (``ReplayState``: decode, verify,
  track transactions and checkpoints) in-process over the range, fed whole
  segments as the startup service reads them, and ``walstream startup``
  end to end over the whole directory (its JSON summary must name the same
  end), compiled; pure too with ``--replay-pure`` (slow: about 30 s a round);
* ``pure-Python floor`` (with ``--floor``): a lower bound for any
  pure-Python verifier, not a decoder: per record only the header unpack and
  the two ``crc32c`` calls of its CRC, walking the length chain inside pages,
  no other check (see ``python_floor``);
* with ``--before DIR``, the CLI of another checkout of walstream (e.g.
  ``git archive <commit> walstream | tar -x -C DIR``), for before/after:
  the pure path must be no slower than the checkout before the kernel.

The walstream measured is the checkout this script lives in (its root goes
first on ``sys.path`` and on the CLI's ``PYTHONPATH``), run from compiled
bytecode as an installed package is; the compiled rows need its kernel built
(``WALSTREAM_COMPILE=1 pip install -e .``, or ``WALSTREAM_COMPILE=1 python
setup.py build_ext --inplace``): the script checks which path each row runs
and stops if a compiled row would run pure.

Both statistics outputs are checked to be identical (pg_waldump's table
byte for byte) before anything is timed. Ratios are walstream's speed
relative to pg_waldump's (higher is better; 1.0x is parity). The same is
reported for the two parts of the WAL separately. The load of the machine
is printed: on a shared machine compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # measure this checkout, whatever the venv has installed

from tests.pgcluster import PgCluster, find_bindir  # noqa: E402
from walstream.lsn import LSN  # noqa: E402
from walstream.wal import kernel  # noqa: E402
from walstream.wal.crc import HAVE_C_CRC32C, crc32c  # noqa: E402
from walstream.wal.decoder import RecordStats, WalDecoder  # noqa: E402
from walstream.wal.replay import ReplayState  # noqa: E402
from walstream.wal.segment import segment_name  # noqa: E402

SEG = 16 * 1024 * 1024
VERSION = 15


def generate(dest: Path, scale: int, target: int) -> tuple[LSN, LSN, LSN]:
    """Make the WAL with a throwaway cluster; return (start, end of pgbench -i, end)."""
    cluster = PgCluster.create(
        VERSION,
        conf={
            "wal_keep_size": "'16GB'",
            "max_wal_size": "'16GB'",
            "checkpoint_timeout": "'1h'",
            "synchronous_commit": "off",
            "fsync": "off",  # the WAL's content is the same; generating it is faster
        },
    )
    try:
        start = LSN.parse(cluster.current_lsn())
        cluster.pgbench("-i", "-s", str(scale), "-q", timeout=3600)
        mid = LSN.parse(cluster.current_lsn())
        print(f"pgbench -i: {(mid - start) / 1e6:.0f} MB", flush=True)
        cluster.psql("CHECKPOINT")
        while LSN.parse(cluster.current_lsn()) - start < target:
            cluster.pgbench("-c", "4", "-j", "2", "-T", "20", "-n", timeout=600)
            print(f"  {(LSN.parse(cluster.current_lsn()) - start) / 1e6:.0f} MB", flush=True)
        end = LSN.parse(cluster.current_lsn())
        cluster.psql("CHECKPOINT")  # flush the last records into the files we copy
        for path in sorted((cluster.datadir / "pg_wal").iterdir()):
            if path.is_file():
                shutil.copy(path, dest / path.name)
        return start, mid, end
    finally:
        cluster.destroy()


@contextmanager
def scan_path(name: str) -> Iterator[None]:
    """Run in-process scans on the compiled kernel or the pure path (the choice made at import)."""
    compiled = kernel.FASTSCAN
    if name == "compiled" and compiled is None:
        raise SystemExit(f"no compiled kernel: {kernel.reason()}")
    kernel.FASTSCAN = compiled if name == "compiled" else None
    try:
        yield
    finally:
        kernel.FASTSCAN = compiled


def replay(waldir: Path, start: LSN, end: LSN) -> tuple[LSN, float]:
    """The startup role's replay over the segments from ``start``'s to ``end``, as it reads them."""
    began = time.perf_counter()
    pos = start - start % SEG
    state = ReplayState(pos, SEG)
    while pos < end and state.stopped is None:
        with open(waldir / segment_name(1, pos // SEG, SEG), "rb") as f:
            data = f.read(min(SEG, end - pos))
        state.feed(pos, data)
        pos += len(data)
        state.advance(pos)
    return state.replay_lsn, time.perf_counter() - began


def decode_verify(waldir: Path, start: LSN, end: LSN) -> tuple[int, float]:
    """The decoder alone, fed whole segments up to ``end``, as ``waldump --stats`` drives it."""
    began = time.perf_counter()
    dec = WalDecoder(start - start % 8192, SEG)
    stats = RecordStats()
    first = False
    pos = start - start % SEG
    while pos < end and dec.outcome is None:
        with open(waldir / segment_name(1, pos // SEG, SEG), "rb") as f:
            data = f.read(min(SEG, end - pos))
        dec.feed(pos, data)
        pos += len(data)
        if not first:
            for rec in dec.records():  # the records before ``start`` in its page
                if rec[0] >= start:
                    stats.add(rec)
                    first = True
                    break
        dec.scan_stats(stats)
    return stats.total, time.perf_counter() - began


_FLOOR_HEAD = struct.Struct("<I4xQ4xI")  # xl_tot_len, xl_prev, xl_crc
_PAGE_REM = struct.Struct("<2xH12xI")  # xlp_info, xlp_rem_len


def python_floor(waldir: Path, start: LSN, end: LSN) -> tuple[int, float]:
    """A lower bound for any pure-Python verifier: the least work per record, nothing else.

    Per record one ``struct`` unpack of its header and the two ``crc32c``
    calls of its CRC, walking the xl_tot_len chain inside each page; no
    page-header, xl_prev, length or block checks, no statistics, and records
    that cross a page are skipped (they would cost more). Whatever a full
    decoder adds comes on top of this.
    """
    began = time.perf_counter()
    head = _FLOOR_HEAD.unpack_from
    page_rem = _PAGE_REM.unpack_from
    crc = crc32c
    count = 0
    pos = start - start % SEG
    while pos < end:
        with open(waldir / segment_name(1, pos // SEG, SEG), "rb") as f:
            buf = f.read(min(SEG, end - pos))
        pos += len(buf)
        for page in range(0, len(buf) - 8191, 8192):
            info, rem = page_rem(buf, page)
            i = page + (40 if page == 0 else 24)
            if info & 1:  # XLP_FIRST_IS_CONTRECORD: the record continued from before
                i += (rem + 7) & ~7
            lim = page + 8192 - 24
            while i <= lim:
                tot_len, _prev, want = head(buf, i)
                e = i + tot_len
                if tot_len < 24 or e > page + 8192:
                    break
                if crc(buf[i : i + 20], crc(buf[i + 24 : e])) != want:
                    raise SystemExit(f"floor: bad CRC at {LSN(pos - len(buf) + i)}")
                count += 1
                i = (e + 7) & ~7
    return count, time.perf_counter() - began


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, float]:
    began = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return out, time.perf_counter() - began


def _table(stats_out: str) -> str:
    """The statistics table (pg_waldump prints its "first record is after" note on stdout)."""
    return "".join(ln for ln in stats_out.splitlines(True) if not ln.startswith("first record"))


def total_count(stats_out: str) -> int:
    return int(next(ln for ln in stats_out.splitlines() if ln.startswith("Total")).split()[1])


def _env(pycache: Path, path: str, **more: str) -> dict[str, str]:
    """A CLI run of the walstream at ``path`` from compiled bytecode, as an installed one runs.

    pip compiles a package's .pyc files at install time; a shell with
    PYTHONDONTWRITEBYTECODE set would make every run compile its imports
    first. The bytecode goes to a scratch PYTHONPYCACHEPREFIX.
    """
    skip = ("PYTHONDONTWRITEBYTECODE", "WALSTREAM_PURE_PYTHON", "WALSTREAM_WALDUMP_JOBS")
    env = {k: v for k, v in os.environ.items() if k not in skip}
    return {**env, "PYTHONPYCACHEPREFIX": str(pycache), "PYTHONPATH": path, **more}


def _cli(cmd: list[str], env: dict[str, str] | None) -> Callable[[], float]:
    return lambda: run_timed(cmd, env)[1]


def _in_process(
    path: str, f: Callable[[Path, LSN, LSN], tuple[object, float]], waldir: Path, a: LSN, b: LSN
) -> Callable[[], float]:
    def timed() -> float:
        with scan_path(path):
            return f(waldir, a, b)[1]

    return timed


def _implementation(env: dict[str, str]) -> str:
    code = "from walstream.wal import kernel; print(kernel.implementation())"
    return run_timed([sys.executable, "-P", "-c", code], env)[0].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=30, help="pgbench -i scale (default 30)")
    parser.add_argument(
        "--target-mb", type=int, default=1150, help="total WAL to generate (default 1150 MB)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--keep", type=Path, help="reuse or keep the WAL in this directory")
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument("--whole-only", action="store_true", help="skip the per-part figures")
    parser.add_argument("--before", type=Path, help="also time the CLI of the walstream in DIR")
    parser.add_argument("--floor", action="store_true", help="also time the pure-Python floor")
    parser.add_argument(
        "--replay-pure", action="store_true", help="also time replay on the pure path (slow)"
    )
    args = parser.parse_args()
    waldir = args.keep or Path(tempfile.mkdtemp(prefix="walbench-"))
    waldir.mkdir(parents=True, exist_ok=True)
    marker = waldir / "RANGE"
    if marker.exists():
        start, mid, end = (LSN.parse(x) for x in marker.read_text().split())
    else:
        start, mid, end = generate(waldir, args.scale, args.target_mb * 1_000_000)
        marker.write_text(f"{start} {mid} {end}\n")
    if args.generate_only:
        print(f"WAL in {waldir}: {start} {mid} {end}")
        return
    if not HAVE_C_CRC32C:
        print("warning: the crc32c package is not installed (pip install walstream[fast])")
    bindir = find_bindir(VERSION)
    assert bindir is not None, f"PostgreSQL {VERSION} not installed"
    pg_waldump = str(bindir / "pg_waldump")
    pycache = Path(tempfile.mkdtemp(prefix="walbench-pycache-"))
    cli = [sys.executable, "-P", "-m", "walstream.cli", "waldump", "--stats"]
    compiled_env = _env(pycache, str(ROOT))
    pure_env = _env(pycache, str(ROOT), WALSTREAM_PURE_PYTHON="1")
    envs = {
        "compiled": compiled_env,
        "  ... one process": {**compiled_env, "WALSTREAM_WALDUMP_JOBS": "1"},
        "pure": pure_env,
        "  ... one process ": {**pure_env, "WALSTREAM_WALDUMP_JOBS": "1"},
    }
    got = (_implementation(compiled_env), _implementation(pure_env))
    if got != ("compiled", "pure"):
        raise SystemExit(f"the CLI runs {got}, not compiled and pure: {kernel.reason()}")
    print(f"walstream from {ROOT}, kernel: {kernel.reason()}")
    replay_span = 0
    parts = [("all", start, end)]
    if not args.whole_only:
        parts += [("pgbench -i", start, mid), ("pgbench tx", mid, end)]
    try:
        for label, a, b in parts:
            mb = (b - a) / 1e6
            rng = ["-p", str(waldir), "-s", str(a), "-e", str(b)]
            c_cmd = [pg_waldump, "--stats", *rng]
            py_cmd = [*cli, *rng]
            c_out, _ = run_timed(c_cmd)
            n_rec = total_count(c_out)
            for env in envs.values():
                if _table(run_timed(py_cmd, env)[0]) != _table(c_out):
                    raise SystemExit(f"--stats outputs differ:\n{c_out}\n---\n{py_cmd}")
            for path in ("compiled", "pure"):
                with scan_path(path):
                    n_dec, _ = decode_verify(waldir, a, b)
                if n_dec != n_rec:
                    raise SystemExit(f"decode+verify counted {n_dec} records, pg_waldump {n_rec}")

            runs: dict[str, Callable[[], float]] = {
                "pg_waldump --stats": _cli(c_cmd, None),
                "decode+verify compiled": _in_process("compiled", decode_verify, waldir, a, b),
                "decode+verify pure": _in_process("pure", decode_verify, waldir, a, b),
            }
            for name, env in envs.items():
                runs[f"waldump --stats {name}" if not name.startswith(" ") else name] = _cli(
                    py_cmd, env
                )
            if label == "all":
                # Replay over the same segments (from the start's), and the startup
                # CLI over the whole directory, which must end where replay does.
                replayed, _ = replay(waldir, a, b)
                startup = [sys.executable, "-P", "-m", "walstream.startup", "-D", str(waldir)]
                summary = json.loads(run_timed([*startup, "--json"], compiled_env)[0])
                if LSN.parse(summary["replay_lsn"]) < replayed:
                    raise SystemExit(f"startup ended at {summary['replay_lsn']}, not {replayed}")
                first = min(p.name for p in waldir.iterdir() if len(p.name) == 24)
                replay_span = LSN.parse(summary["replay_lsn"]) - int(first[16:], 16) * SEG
                for path in ["compiled", "pure"] if args.replay_pure else ["compiled"]:
                    runs[f"replay {path}"] = _in_process(path, replay, waldir, a, b)
                    env = compiled_env if path == "compiled" else pure_env
                    runs[f"walstream startup {path}"] = _cli([*startup, "--json"], env)
            if args.floor:
                runs["pure-Python floor"] = _in_process("pure", python_floor, waldir, a, b)
            if args.before is not None:
                old = _env(pycache, str(args.before))
                if _table(run_timed(py_cmd, old)[0]) != _table(c_out):
                    raise SystemExit("--before: --stats outputs differ")
                runs["before (--before)"] = _cli(py_cmd, old)
                runs["  ... one process  "] = _cli(py_cmd, {**old, "WALSTREAM_WALDUMP_JOBS": "1"})
            times: dict[str, list[float]] = {name: [] for name in runs}
            load = os.getloadavg()[0]
            for rnd in range(args.rounds):
                order = list(runs) if rnd % 2 == 0 else list(reversed(runs))
                for name in order:
                    times[name].append(runs[name]())
            load = max(load, os.getloadavg()[0])
            med = {name: statistics.median(t) for name, t in times.items()}
            base = med["pg_waldump --stats"]
            print(
                f"{label}: {mb:.0f} MB, {n_rec} records ({mb * 1e6 / n_rec:.0f} B/record), "
                f"{args.rounds} rounds, {os.cpu_count()} CPUs, load average up to {load:.1f}"
            )
            for name, t in med.items():
                runs_text = " ".join(f"{x:.2f}" for x in times[name])
                if name.startswith(("replay", "walstream startup")):
                    # Their own ranges: from the first segment's start (the startup
                    # CLI: of the directory, to the end of its WAL).
                    span = (b - (a - a % SEG)) if name.startswith("replay") else replay_span
                    print(
                        f"  {name:30} median {t:6.2f} s  {span / 1e6 / t:6.0f} MB/s"
                        f"{'':36}[{runs_text}]"
                    )
                    continue
                print(
                    f"  {name:30} median {t:6.2f} s  {mb / t:6.0f} MB/s  "
                    f"{t / n_rec * 1e9:5.0f} ns/record  {base / t:5.2f}x  [{runs_text}]"
                )
            sys.stdout.flush()
    finally:
        shutil.rmtree(pycache, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(waldir)


if __name__ == "__main__":
    main()
