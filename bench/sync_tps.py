"""pgbench TPS with walstream, pg_receivewal or a real standby as the synchronous standby.

Run: ``python bench/sync_tps.py [--rounds 3] [--seconds 10] [--modes on,remote_write,remote_apply]
[--tools ...] [--alone [--floor]] [--clients N] [--pin]``

One throwaway PostgreSQL 15 primary streams, all at once, to
``python -m walstream.receiver --synchronous`` (``walstream``), to
``pg_receivewal --synchronous`` (``pg_receivewal``), to a real PostgreSQL 15
standby (``standby``: pg_basebackup of the primary, streaming from it, hot
standby) and to ``python -m walstream.receiver --synchronous --replay``
(``walstream_replay``), each with its own application_name. Each round sets
synchronous_commit to each mode in turn (ALTER SYSTEM + reload, as in the
shared baselines) and, for each tool that can satisfy that mode, names it in
``synchronous_standby_names`` and runs ``pgbench -c CLIENTS -j 2 -T SECONDS``.
Rounds alternate the order of the modes and of the tools; medians and ratios
are printed per mode.

Who has a row where:

* ``on`` and ``remote_write``: walstream, pg_receivewal and the standby.
  PostgreSQL's walreceiver replies after its write and again after its
  flush, and so does walstream in --synchronous mode; pg_receivewal replies
  only after its fsync, so remote_write releases its commits no earlier
  than ``on`` does.
* ``remote_apply``: walstream_replay and the standby. pg_receivewal never
  reports an apply position, so a commit waiting for it waits forever: the
  bench shows that once, after the rounds (a commit left waiting for a few
  seconds, then cancelled), instead of timing it.

With all of them connected, the standbys not being measured still receive
and fsync the same WAL at the same moments as the measured one, on the same
two cores: this penalises every row alike, and whichever tool answers later
most. With ``--alone`` only the measured one is connected (a receiver
started fresh for each run, same directory carried over; the standby
stopped and started), which measures each on its own. ``--floor`` (with
``--alone``) adds ``bench/sync_floor.py`` to the ``on`` and ``remote_write``
rows: a blocking pure-Python loop doing only recv, pwritev, fsync and the
reply, a bound on what any Python receiver can reach here.

``--pin`` puts the primary (postmaster and every process it forks) and
pgbench on CPU 0 and the receivers and the standby on CPU 1: a standby with
a core of its own, as on a machine of its own, where its CPU time is not
taken from the primary's backends. Without it all of them share both cores.

``--tools`` picks who takes part (``--modes on --tools walstream,pg_receivewal``
is this bench before the standby rows). Every receiver keeps all the WAL it
receives: about 6 MB/s of pgbench at -c 8, for each receiver connected.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pgcluster import PgCluster
from walstream.wal import kernel

MODES = ("on", "remote_write", "remote_apply")
TOOLS = ("walstream", "pg_receivewal", "standby", "walstream_replay")
# The modes each tool has a row in: pg_receivewal cannot satisfy remote_apply, and the
# receiver without --replay reports no apply position either.
ROWS = {
    "walstream": ("on", "remote_write"),
    "pg_receivewal": ("on", "remote_write"),
    "standby": MODES,
    "walstream_replay": ("remote_apply",),
    "python_floor": ("on", "remote_write"),
    "walstream_before": ("on", "remote_write"),
}
# The ratios printed per mode, where both tools have rows: (measured, against).
PAIRS = (
    ("walstream", "pg_receivewal"),
    ("walstream", "standby"),
    ("standby", "pg_receivewal"),
    ("walstream_replay", "standby"),
    ("python_floor", "pg_receivewal"),
    ("walstream", "walstream_before"),
    ("walstream_before", "pg_receivewal"),
)
# How long the remote_apply demonstration leaves a commit waiting for pg_receivewal.
APPLY_PROBE_SECONDS = 3.0


def _pin_cluster(datadir: Path, cpus: set[int]) -> None:
    """Pin a running postmaster and its children; what it forks later inherits it."""
    postmaster = int((datadir / "postmaster.pid").read_text().split()[0])
    os.sched_setaffinity(postmaster, cpus)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == postmaster:
                os.sched_setaffinity(int(stat.parent.name), cpus)
        except OSError:
            continue  # gone meanwhile


class Bench:
    """The primary, the participants, and starting and stopping them."""

    def __init__(self, args: argparse.Namespace, cluster: PgCluster, work: Path) -> None:
        self.args = args
        self.cluster = cluster
        self.work = work
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.standby: PgCluster | None = None
        conninfo = cluster.conninfo("trust_user")
        receiver = [sys.executable, "-m", "walstream.receiver"]
        commands = {
            "walstream": receiver,
            "pg_receivewal": [str(cluster.program("pg_receivewal"))],
            "walstream_replay": [*receiver, "--replay"],
            "python_floor": [sys.executable, str(Path(__file__).with_name("sync_floor.py"))],
            # Another checkout's receiver (--before): -P keeps the working directory off
            # sys.path, so PYTHONPATH picks the tree, not this one or the installed one.
            "walstream_before": [sys.executable, "-P", "-m", "walstream.receiver"],
        }
        self.envs: dict[str, dict[str, str]] = {}
        if args.before:
            self.envs["walstream_before"] = {**os.environ, "PYTHONPATH": str(args.before)}
        self.commands = {
            name: [*cmd, "-d", f"{conninfo} application_name=bench_{name}",
                   "-D", str(work / name), "--synchronous"]
            for name, cmd in commands.items()
        }  # fmt: skip

    def make_standby(self) -> None:
        """pg_basebackup of the primary, streaming from it as ``bench_standby``."""
        self.standby = self.cluster.make_standby("standby", cluster_name="bench_standby")
        self._pin_standby()

    def _pin_standby(self) -> None:
        if self.args.pin and self.standby is not None:
            _pin_cluster(self.standby.datadir, {1})

    def start(self, name: str) -> None:
        if name == "standby":
            assert self.standby is not None
            self.standby.start()
            self._pin_standby()
            return
        (self.work / name).mkdir(exist_ok=True)
        self.procs[name] = subprocess.Popen(
            self.commands[name],
            stderr=subprocess.DEVNULL,
            env=self.envs.get(name),
            preexec_fn=(lambda: os.sched_setaffinity(0, {1})) if self.args.pin else None,
        )

    def stop(self, name: str) -> None:
        if name == "standby":
            assert self.standby is not None
            self.standby.stop()
            return
        proc = self.procs.pop(name)
        proc.terminate()
        proc.wait(30)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def wait_until(self, what: str, done: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out: {what}")
            time.sleep(0.1)

    def connected(self) -> dict[str, str]:
        """application_name (without bench_) -> state, from pg_stat_replication."""
        rows = self.cluster.psql("SELECT application_name, state FROM pg_stat_replication")
        return {
            app.removeprefix("bench_"): state
            for app, state in (line.split("|") for line in rows.splitlines())
        }

    def wait_streaming(self, names: list[str]) -> None:
        """Until exactly ``names`` are connected, each caught up ('streaming')."""

        def streaming() -> bool:
            now = self.connected()
            return set(now) == set(names) and all(s == "streaming" for s in now.values())

        self.wait_until(f"{', '.join(names) or 'nobody'} streaming", streaming)

    def run(self, mode: str, name: str) -> tuple[float, str]:
        """One pgbench run with ``name`` as the synchronous standby: (tps, its sync_state)."""
        self.cluster.set_conf(synchronous_commit=mode, synchronous_standby_names=f"bench_{name}")
        time.sleep(0.5)  # the walsenders re-read synchronous_standby_names
        state = self.cluster.psql(
            f"SELECT sync_state FROM pg_stat_replication WHERE application_name = 'bench_{name}'"
        )
        out = self.cluster.pgbench(
            "-c", str(self.args.clients), "-j", "2", "-T", str(self.args.seconds), timeout=600
        )  # fmt: skip
        m = re.search(r"tps = ([0-9.]+)", out)
        assert m, out
        return float(m.group(1)), state

    def apply_probe(self, name: str) -> str:
        """What a remote_apply commit does with ``name`` as the synchronous standby.

        A commit is left waiting for APPLY_PROBE_SECONDS, then cancelled with
        pg_cancel_backend, as an operator would; the commit is already durable
        locally, and the backend's warning says so.
        """
        self.cluster.set_conf(
            synchronous_commit="remote_apply", synchronous_standby_names=f"bench_{name}"
        )
        time.sleep(0.5)
        replay = self.cluster.psql(
            "SELECT coalesce(replay_lsn::text, 'NULL') FROM pg_stat_replication "
            f"WHERE application_name = 'bench_{name}'"
        )
        psql = subprocess.Popen(
            [str(self.cluster.program("psql")), "-h", str(self.cluster.socket_dir),
             "-p", str(self.cluster.port), "-U", "postgres", "-XAtq", "-c",
             "INSERT INTO pgbench_history VALUES (1, 1, 1, 1, now(), 'remote_apply probe')",
             "postgres"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            out, err = psql.communicate(timeout=APPLY_PROBE_SECONDS)
            return f"the commit returned within {APPLY_PROBE_SECONDS:.0f} s (!): {out}{err}"
        except subprocess.TimeoutExpired:
            pass
        waiting = self.cluster.psql(
            "SELECT string_agg(pid || ' ' || wait_event, ', ') FROM pg_stat_activity "
            "WHERE wait_event = 'SyncRep'"
        )
        self.cluster.psql(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
        )
        _, err = psql.communicate(timeout=30)
        warning = err.strip().splitlines()[0] if err.strip() else "(no message)"
        return (
            f"cannot satisfy remote_apply: its replay_lsn is {replay}; a commit waited "
            f"{APPLY_PROBE_SECONDS:.0f} s (backend {waiting}) until cancelled: {warning}"
        )


def _summary(mode: str, tps: dict[str, list[float]]) -> None:
    med = {name: statistics.median(values) for name, values in tps.items() if values}
    print(f"{mode}: median " + ", ".join(f"{name} {v:.0f} tps" for name, v in med.items()))
    for ours, theirs in PAIRS:
        if ours in med and theirs in med:
            per_round = [o / t for o, t in zip(tps[ours], tps[theirs], strict=True)]
            print(
                f"{mode}: {ours} / {theirs} = {med[ours] / med[theirs]:.2f}x "
                f"(per round: {', '.join(f'{r:.2f}' for r in per_round)}; "
                f"median {statistics.median(per_round):.2f})"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--clients",
        type=int,
        default=8,
        help="pgbench clients (default 8, the issue's; fewer leave the two cores some idle time)",
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"synchronous_commit settings to time, comma-separated (default {','.join(MODES)})",
    )
    parser.add_argument(
        "--tools",
        default=",".join(TOOLS),
        help=f"who takes part, comma-separated (default {','.join(TOOLS)})",
    )
    parser.add_argument(
        "--alone",
        action="store_true",
        help="connect only the measured one in each run (default: all stay connected)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time bench/sync_floor.py, the least a Python standby must do (with --alone)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="primary and pgbench on CPU 0, the receivers and the standby on CPU 1",
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="DIR",
        help="also time the receiver of another checkout (DIR, e.g. a git worktree of an "
        "older commit) as walstream_before, with the same flags",
    )
    args = parser.parse_args()
    if args.floor and not args.alone:
        parser.error("--floor goes with --alone (a third receiver would change the other runs)")
    modes = args.modes.split(",")
    tools = args.tools.split(",")
    for mode in modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}")
    for tool in tools:
        if tool not in TOOLS:
            parser.error(f"unknown tool {tool!r}")
    if args.floor:
        tools.append("python_floor")
    if args.before:
        tools.append("walstream_before")
    # Who is connected: whoever has a row in a mode timed; pg_receivewal also for the
    # remote_apply demonstration.
    rows = {mode: [t for t in tools if mode in ROWS[t]] for mode in modes}
    members = [t for t in tools if any(t in r for r in rows.values())]
    probe = "remote_apply" in modes and "pg_receivewal" in tools
    if probe and "pg_receivewal" not in members:
        members.append("pg_receivewal")

    if args.pin:
        os.sched_setaffinity(0, {0})  # pgbench, psql and (below) the primary inherit this
    # wal_keep_size: with --alone the standby is stopped between its runs and resumes.
    cluster = PgCluster.create(15, conf={"max_wal_size": "'4GB'", "wal_keep_size": "'4GB'"})
    if args.pin:
        _pin_cluster(cluster.datadir, {0})
    work = Path(tempfile.mkdtemp(prefix="walstream-bench-"))
    bench = Bench(args, cluster, work)
    print(f"load average {os.getloadavg()[0]:.2f}; WAL-scan kernel: {kernel.implementation()}")
    try:
        cluster.pgbench("-i", "-s", "10", "-q")
        if "standby" in members:
            bench.make_standby()
        for name in members:
            if name == "standby":
                if args.alone:
                    bench.stop("standby")
            elif not args.alone:
                bench.start(name)
        bench.wait_streaming([] if args.alone else members)
        tps: dict[str, dict[str, list[float]]] = {m: {t: [] for t in rows[m]} for m in modes}
        for rnd in range(args.rounds):
            for mode in modes if rnd % 2 == 0 else list(reversed(modes)):
                order = rows[mode] if rnd % 2 == 0 else list(reversed(rows[mode]))
                for name in order:
                    if args.alone:
                        bench.start(name)
                        bench.wait_streaming([name])  # resuming: caught up first
                    value, state = bench.run(mode, name)
                    tps[mode][name].append(value)
                    line = f"round {rnd}  {mode:<12} {name:<16} {value:8.0f} tps"
                    print(f"{line}  (sync_state {state})", flush=True)
                    if args.alone:
                        bench.stop(name)
                        bench.wait_streaming([])
        for mode in modes:
            _summary(mode, tps[mode])
        if probe:
            if args.alone:
                bench.start("pg_receivewal")
                bench.wait_streaming(["pg_receivewal"])
            print(f"remote_apply: pg_receivewal {bench.apply_probe('pg_receivewal')}")
        print(f"load average {os.getloadavg()[0]:.2f}")
    finally:
        bench.stop_all()
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
