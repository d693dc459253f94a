"""Catch-up speed: walstream's receiver vs pg_receivewal on the same WAL backlog.

Run: ``python bench/catchup.py [--scale 80] [--rounds 3] [--modes default,no-sync] [--truncate]``

One throwaway PostgreSQL 15 primary; ``pgbench -i -s SCALE`` makes the
backlog (scale 80 is about 1 GiB of WAL). Each run streams the same range
into an empty directory (a zero-length ``.partial`` names the start segment,
which both tools resume from) and stops at the same endpos with ``-E -n``.

Fairness: after the backlog is made the server checkpoints and everything is
``sync``ed, and before every timed run the previous run's directory is gone
and dirty pages are written back (``sync``), so no run pays for another's
writeback. Rounds alternate which tool goes first; every mode uses the same
backlog; medians and their ratio are printed. The headline is the wall time a
user sees (start-up included); walstream's interpreter start-up alone
(``--version``, median of 5) is printed separately. walstream runs as an
installed package does, from compiled bytecode (see ``_installed_env``).
Figures vary between machines and runs: compare the ratio.

The physical limit: every round of every mode also times ``bench/discard.py``,
a consumer of the same range from the same walsender that reads the stream
into a reused buffer and drops it (why that is the fastest consumer to build
here: its docstring). Each tool's speed is printed as a fraction of that
limit beside the ratio to pg_receivewal. ``--truncate`` adds a second limit
row whose consumer does not even copy the bodies out of the kernel
(``discard.py --truncate``): the walsender and loopback alone.
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
from walstream.wal.segment import segment_name

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pgcluster import PgCluster

SEG = 16 * 1024 * 1024
TIME = "/usr/bin/time"
DISCARD = Path(__file__).with_name("discard.py")
MODES = {"default": [], "no-sync": ["--no-sync"], "synchronous": ["--synchronous"]}


def _installed_env(pycache: Path) -> dict[str, str]:
    """The environment of an installed walstream: bytecode compiled once, then reused.

    pip compiles a package's .pyc files at install time; a shell with
    PYTHONDONTWRITEBYTECODE set (as here) would make every run compile ~60 ms
    of source first, which no user of an installed walstream pays. The
    bytecode goes to a scratch PYTHONPYCACHEPREFIX, not into the work tree.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def _run(
    cmd: list[str], env: dict[str, str] | None = None
) -> tuple[float, float, float, bytes, int]:
    """Wall time, CPU time (user + system), peak RSS in MB, stderr and exit code of one child.

    Peak RSS comes from /usr/bin/time when there is one: a child forked from
    this Python process inherits its peak RSS in ``ru_maxrss`` (about 29 MB)
    across exec, which hid pg_receivewal's real figure (about 9 MB).
    """
    with tempfile.NamedTemporaryFile("r") as rss_file:
        timer = [TIME, "-f", "%M", "-o", rss_file.name] if os.path.exists(TIME) else []
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [*timer, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.monotonic() - t0
        peak = usage.ru_maxrss / 1024  # kB on Linux
        if timer:
            text = rss_file.read().strip().splitlines()
            if text and text[-1].isdigit():
                peak = int(text[-1]) / 1024
    cpu = usage.ru_utime + usage.ru_stime  # wait4 includes /usr/bin/time's waited-for child
    return elapsed, cpu, peak, err, os.waitstatus_to_exitcode(status)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=80, help="pgbench -i scale (default 80)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--modes",
        default="default,no-sync",
        help="comma-separated: default, no-sync, synchronous (default: default,no-sync)",
    )
    parser.add_argument("--no-sync", action="store_true", help="same as --modes no-sync")
    parser.add_argument(
        "--truncate",
        action="store_true",
        help="also time the limit without the copy out of the socket (discard.py --truncate)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="DIR",
        help="also time the receiver of another checkout (DIR, e.g. a git worktree of an "
        "older commit) as walstream_before",
    )
    args = parser.parse_args()
    modes = ["no-sync"] if args.no_sync else args.modes.split(",")
    for mode in modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}")

    walstream_cmd = [sys.executable, "-m", "walstream.receiver"]
    pycache = Path(tempfile.mkdtemp(prefix="walstream-bench-pycache-"))
    env = _installed_env(pycache)
    _run([*walstream_cmd, "--version"], env)  # compiles the bytecode, as an install would
    startup = []
    for _ in range(5):
        t, _, _, _, _ = _run([*walstream_cmd, "--version"], env)
        startup.append(t)

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
        cluster.psql("CHECKPOINT")
        os.sync()
        size = end - start
        print(f"backlog {size / 1e6:.0f} MB from {start} to {end}", flush=True)
        print(f"walstream start-up (--version, median of 5): {statistics.median(startup):.3f} s")
        tools = {
            "walstream": walstream_cmd,
            "pg_receivewal": [str(cluster.program("pg_receivewal"))],
            # Standard library only: -I -S skip site-packages and the environment (20-30 ms).
            "limit": [sys.executable, "-I", "-S", str(DISCARD)],
        }
        # -P keeps the working directory off sys.path: PYTHONPATH picks the other tree.
        envs = {"walstream_before": {**env, "PYTHONPATH": str(args.before)}} if args.before else {}
        if args.before:
            tools["walstream_before"] = [sys.executable, "-P", "-m", "walstream.receiver"]
        if args.truncate:
            tools["limit_truncate"] = [sys.executable, "-I", "-S", str(DISCARD), "--truncate"]
        for mode in modes:
            times: dict[str, list[float]] = {name: [] for name in tools}
            rss: dict[str, list[float]] = {name: [] for name in tools}
            cpus: dict[str, list[float]] = {name: [] for name in tools}
            for rnd in range(args.rounds):
                order = list(tools) if rnd % 2 == 0 else list(reversed(tools))
                for name in order:
                    directory = work / f"{name}-{rnd}"
                    directory.mkdir()
                    cmd = [*tools[name], "-d", cluster.conninfo("trust_user"), "-E", str(end)]
                    if name.startswith("limit"):
                        cmd += ["--start", str(start)]  # same range, nothing written: no mode
                    else:
                        (directory / (segment_name(1, start // SEG, SEG) + ".partial")).touch()
                        cmd += ["-D", str(directory), "-n", *MODES[mode]]
                    os.sync()
                    elapsed, cpu, peak, err, rc = _run(cmd, envs.get(name, env))
                    if rc != 0:
                        print(f"{name} failed: {err.decode(errors='replace')}", file=sys.stderr)
                        return 1
                    times[name].append(elapsed)
                    rss[name].append(peak)
                    cpus[name].append(cpu)
                    print(
                        f"{mode:<11} round {rnd}  {name:<14} {elapsed:6.2f} s"
                        f"  {size / elapsed / 1e6:6.0f} MB/s  CPU {cpu:5.2f} s"
                        f"  peak RSS {peak:5.1f} MB",
                        flush=True,
                    )
                    shutil.rmtree(directory)
            med = {name: statistics.median(times[name]) for name in tools}
            ours, theirs = med["walstream"], med["pg_receivewal"]
            ratios = _per_round(times["walstream"], times["pg_receivewal"])
            print(
                f"{mode}: median walstream {ours:.2f} s, pg_receivewal {theirs:.2f} s; "
                f"walstream speed = {theirs / ours:.2f}x pg_receivewal (per round: {ratios}); "
                f"median CPU walstream {statistics.median(cpus['walstream']):.2f} s, "
                f"pg_receivewal {statistics.median(cpus['pg_receivewal']):.2f} s"
            )
            if args.before:
                before = med["walstream_before"]
                per_round = _per_round(times["walstream"], times["walstream_before"])
                print(
                    f"{mode}: walstream_before {before:.2f} s; walstream speed = "
                    f"{before / ours:.2f}x walstream_before (per round: {per_round}); "
                    "median CPU walstream_before "
                    f"{statistics.median(cpus['walstream_before']):.2f} s"
                )
            for limit in (n for n in tools if n.startswith("limit")):
                per_round = _per_round(times["walstream"], times[limit])
                print(
                    f"{mode}: {limit} {med[limit]:.2f} s ({size / med[limit] / 1e6:.0f} MB/s, "
                    f"CPU {statistics.median(cpus[limit]):.2f} s); walstream at "
                    f"{med[limit] / ours:.2f} of it (per round: {per_round}), pg_receivewal at "
                    f"{med[limit] / theirs:.2f}"
                )
            print(
                f"{mode}: peak RSS walstream {max(rss['walstream']):.1f} MB, "
                f"pg_receivewal {max(rss['pg_receivewal']):.1f} MB",
                flush=True,
            )
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(pycache, ignore_errors=True)
    return 0


def _per_round(ours: list[float], other: list[float]) -> str:
    """other / ours for each round, as the summary lines print them."""
    return ", ".join(f"{t / o:.2f}" for o, t in zip(ours, other, strict=True))


if __name__ == "__main__":
    sys.exit(main())
