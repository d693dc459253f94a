"""Fan-out: N pg_receivewal clients catch up one backlog from `walstream send` and the primary.

Run: ``python bench/fanout.py [--scale 80] [--rounds 6] [--clients 1,4,8]``

One throwaway PostgreSQL 15 primary (autovacuum off, so that no backend but
the walsenders ends during a run); ``pgbench -i -s SCALE`` makes the backlog
(scale 80 is about 1 GiB of WAL). walstream's receiver copies it from the
primary into a directory first, and ``walstream send -D`` that directory is
what walstream serves. In each run N pg_receivewal (15) processes start at
once, each into an empty directory of its own (a zero-length ``.partial``
names the start segment, which pg_receivewal resumes from), with
``--no-sync -n -E END``, and the run's wall time is from their start to the
last one's exit. Both senders serve the same bytes from the page cache (every
file is read once before the rounds).

The clients write to tmpfs (``/dev/shm``) when it has room for all of them,
and ``--no-sync`` anyway: at N = 8 that is 8 GiB written per run, which on
this machine's disk would make writeback the bottleneck, not the sender.
Their directories are removed after each run; a run is checked first: each
client's first, middle and last completed segments must equal the primary's.

What is measured of each sender, besides the wall time:

* CPU seconds (user + system) per GiB sent (N times the backlog). walstream:
  the ``walstream send`` process's ``/proc/PID/stat`` before the clients
  start and after they end (its start-up is not counted). The primary: its
  walsenders are children of the postmaster, which adds their times to its
  own ``cutime``/``cstime`` when it reaps them; the delta across the run,
  once every walsender is gone, is theirs (autovacuum is off, and nothing
  else connects).
* Peak RSS: ``VmHWM`` of the walstream process; for the primary, the
  largest ``VmHWM`` of one walsender (sampled every 50 ms while they run; it
  counts the shared memory each touched). walstream's one process serves
  all N clients; the primary runs N walsenders.
* The clients' CPU time (all N, from ``wait4``), the machine's idle share
  during the run, and the time ``walstream send`` spent runnable but waiting
  for a core (``/proc/PID/schedstat``). On two cores the clients are most of
  the work (writing 2 GiB per GiB received: pg_receivewal pads each segment
  with zeros first), so the wall time follows everyone's CPU time; and where
  the kernel's loopback TCP work is charged (sender or receiver) depends on
  how the sender writes, so compare the sums too.

The sender runs in a session of its own (``setsid``), as the postmaster
does and as a service would: with the kernel's autogroup scheduling
(``/proc/sys/kernel/sched_autogroup_enabled``) a process in the bench's own
session would share one group's CPU with the N clients, while the primary's
walsenders have their postmaster's group (measured: 8-22 s of the sender
waiting for a core per N = 8 run instead of 2-4 s).

Rounds interleave the two senders (which goes first alternates) and every N
in each round; medians and the ratio primary / walstream (> 1: walstream
faster) are printed. walstream runs as an installed package does: from
compiled bytecode (see ``_installed_env``), on uvloop when installed.

``--keep-wal DIR`` keeps walstream's copy of the backlog (and its start and
end in ``DIR/backlog.json``); ``--wal DIR`` reuses one, with no primary: only
walstream's rows (for measuring a change to the sender quickly).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pgcluster import PgCluster, find_bindir
from walstream import LSN
from walstream.wal.segment import segment_name

SEG = 16 * 1024 * 1024
GIB = 1024**3
TICK = os.sysconf("SC_CLK_TCK")
TOOLS = ("walstream", "primary")


def _installed_env(pycache: Path) -> dict[str, str]:
    """An installed walstream's environment: bytecode compiled once, then reused (catchup.py).

    The walstream measured is this checkout's, wherever the bench is run from.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _cpu(pid: int) -> tuple[float, float]:
    """(utime + stime, cutime + cstime) of ``pid`` in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3): utime is field 14, cstime field 17.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / TICK, (cutime + cstime) / TICK


def _hwm(pid: int) -> float:
    """VmHWM of ``pid`` in MB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def _children(parent: int) -> set[int]:
    """The processes whose parent is ``parent``, ended ones not yet reaped included."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == parent:
                    found.add(int(entry))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return found


def _walsenders(postmaster: int) -> list[int]:
    """The postmaster's children that are walsenders."""
    found = []
    for pid in _children(postmaster):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"postgres: walsender"):
                    found.append(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


@dataclass
class _Sampler:
    """Peak VmHWM of some processes, sampled every 50 ms in a thread while a run goes on."""

    pids: list[int]
    postmaster: int | None = None  # also look for new walsenders of this postmaster
    peak: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def _sample(self) -> None:
        if self.postmaster is not None:
            self.pids = list({*self.pids, *_walsenders(self.postmaster)})
        for pid in self.pids:
            self.peak = max(self.peak, _hwm(pid))

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.postmaster is None:
            self._sample()  # walstream's process is still there: its final peak
        return self.peak


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"walstream send exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError("walstream send does not listen")
        time.sleep(0.05)


@dataclass
class Backlog:
    start: LSN
    end: LSN
    wal: Path  # walstream's copy
    pg_wal: Path | None  # the primary's, to check the clients' segments against

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class Result:
    wall: float
    cpu: float
    rss: float
    clients_cpu: float = 0.0  # the pg_receivewal processes' user + system time, all of them
    idle: float = 0.0  # the machine's idle share during the run (both cores)
    waited: float = 0.0  # walstream: seconds runnable but waiting for a core (schedstat)


def _idle() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    return values[3] + values[4], sum(values[:8])


def _waited(pid: int) -> float:
    """Seconds ``pid`` has spent runnable on a run queue, waiting for a core."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


class Bench:
    def __init__(self, args: argparse.Namespace, backlog: Backlog, env: dict[str, str],
                 cluster: PgCluster | None, target: Path) -> None:  # fmt: skip
        self.args = args
        self.backlog = backlog
        self.env = env
        self.cluster = cluster
        self.target = target
        bindir = find_bindir(15)
        assert bindir is not None
        self.pg_receivewal = str(bindir / "pg_receivewal")
        self.sender_cmd = [sys.executable, "-m", "walstream.sender"]

    def run(self, tool: str, n: int, rnd: int) -> Result:
        if tool == "walstream":
            return self._walstream(n, rnd)
        return self._primary(n, rnd)

    def _clients(self, conninfo: str, n: int, rnd: int) -> tuple[float, float, float, list[Path]]:
        """Start ``n`` pg_receivewal at once: the wall time until the last one ends, their CPU
        time, the machine's idle share meanwhile."""
        b = self.backlog
        dirs = []
        for i in range(n):
            d = self.target / f"r{rnd}-c{i}"
            d.mkdir()
            (d / (segment_name(1, b.start // SEG, SEG) + ".partial")).touch()
            dirs.append(d)
        cmd = [self.pg_receivewal, "-d", conninfo, "-n", "--no-sync", "-E", str(b.end)]
        idle0, total0 = _idle()
        t0 = time.monotonic()
        procs = [
            subprocess.Popen(
                [*cmd, "-D", str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            for d in dirs
        ]
        errors = []
        cpu = 0.0
        for p in procs:
            assert p.stderr is not None
            err = p.stderr.read()
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            cpu += usage.ru_utime + usage.ru_stime
            if p.returncode != 0:
                errors.append(err.decode(errors="replace").strip())
        wall = time.monotonic() - t0
        idle1, total1 = _idle()
        if errors:
            raise RuntimeError("pg_receivewal failed: " + "; ".join(errors))
        return wall, cpu, (idle1 - idle0) / max(1, total1 - total0), dirs

    def _check(self, dirs: list[Path]) -> None:
        """Each client's first, middle and last completed segments are the primary's."""
        b = self.backlog
        first, last = b.start // SEG, b.end // SEG - 1
        for d in dirs:
            for segno in sorted({first, (first + last) // 2, last}):
                name = segment_name(1, segno, SEG)
                ref = (b.pg_wal or b.wal) / name
                if not filecmp.cmp(d / name, ref, shallow=False):
                    raise RuntimeError(f"{d / name} differs from {ref}")
        for d in dirs:
            shutil.rmtree(d)

    def _walstream(self, n: int, rnd: int) -> Result:
        port = _free_port()
        sender = subprocess.Popen(
            [*self.sender_cmd, "-D", str(self.backlog.wal), "--listen", f"127.0.0.1:{port}",
             "--max-wal-senders", str(max(10, n + 2))],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,  # a service of its own, as the postmaster is (autogroup)
        )  # fmt: skip
        try:
            _wait_listening(port, sender)
            sampler = _Sampler([sender.pid])
            sampler.start()
            cpu0, _ = _cpu(sender.pid)
            waited0 = _waited(sender.pid)
            wall, clients, idle, dirs = self._clients(
                f"host=127.0.0.1 port={port} user=trust_user", n, rnd
            )
            cpu1, _ = _cpu(sender.pid)
            waited = _waited(sender.pid) - waited0
            rss = sampler.stop()
        finally:
            sender.send_signal(signal.SIGTERM)
            _, err = sender.communicate(timeout=60)
        if sender.returncode != 0:
            raise RuntimeError(f"walstream send: {err.decode(errors='replace')}")
        self._check(dirs)
        return Result(wall, cpu1 - cpu0, rss, clients, idle, waited)

    def _primary(self, n: int, rnd: int) -> Result:
        cluster = self.cluster
        assert cluster is not None
        postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
        before = _children(postmaster)  # its own processes (checkpointer, walwriter, ...)
        sampler = _Sampler([], postmaster)
        sampler.start()
        _, child0 = _cpu(postmaster)
        wall, clients, idle, dirs = self._clients(cluster.conninfo("trust_user"), n, rnd)
        rss = sampler.stop()
        deadline = time.monotonic() + 30
        # Until each walsender is reaped (an ending one has no cmdline, then is a
        # zombie): only then are its times in the postmaster's cutime.
        while _children(postmaster) - before:
            if time.monotonic() > deadline:
                raise TimeoutError("the primary's walsenders do not end")
            time.sleep(0.01)
        _, child1 = _cpu(postmaster)
        self._check(dirs)
        return Result(wall, child1 - child0, rss, clients, idle)


def _make_backlog(cluster: PgCluster, scale: int, wal: Path, env: dict[str, str]) -> Backlog:
    first = LSN.parse(cluster.current_lsn())
    start = LSN(first - first % SEG)
    cluster.pgbench("-i", "-s", str(scale), "-q", timeout=1800)
    end = LSN.parse(cluster.current_lsn())
    # WAL past the clients' endpos, so that both senders have it.
    cluster.psql("INSERT INTO pgbench_history VALUES (1, 1, 1, 1, now(), 'past endpos')")
    cluster.psql("CHECKPOINT")
    beyond = LSN.parse(cluster.current_lsn())
    wal.mkdir(parents=True, exist_ok=True)
    (wal / (segment_name(1, start // SEG, SEG) + ".partial")).touch()
    subprocess.run(
        [sys.executable, "-m", "walstream.receiver", "-d", cluster.conninfo("trust_user"),
         "-D", str(wal), "-n", "-E", str(beyond)],
        env=env, check=True,
    )  # fmt: skip
    (wal / "backlog.json").write_text(json.dumps({"start": str(start), "end": str(end)}))
    return Backlog(start, end, wal, cluster.datadir / "pg_wal")


def _warm(*dirs: Path) -> None:
    """Read every file once, so that both senders serve from the page cache."""
    for d in dirs:
        for f in sorted(d.iterdir()):
            if f.is_file():
                with open(f, "rb") as fh:
                    while fh.read(1 << 20):
                        pass


def _target(args: argparse.Namespace, backlog: Backlog, n: int) -> Path:
    if args.target is not None:
        base = Path(args.target)
    else:
        shm = Path("/dev/shm")
        need = n * (backlog.size + 2 * SEG) + 2 * GIB  # and some room for everyone else
        base = shm if shm.is_dir() and shutil.disk_usage(shm).free > need else Path("/tmp")
    return Path(tempfile.mkdtemp(prefix="walstream-fanout-", dir=base))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=80, help="pgbench -i scale (default 80)")
    parser.add_argument(
        "--rounds", type=int, default=6, help="interleaved rounds, an even number (default 6)"
    )
    parser.add_argument("--clients", default="1,4,8", help="values of N (default 1,4,8)")
    parser.add_argument("--target", help="where the clients write (default /dev/shm if room)")
    parser.add_argument("--keep-wal", metavar="DIR", help="keep walstream's copy of the backlog")
    parser.add_argument("--wal", metavar="DIR", help="reuse a kept backlog: walstream alone")
    args = parser.parse_args()
    ns = [int(x) for x in args.clients.split(",")]

    pycache = Path(tempfile.mkdtemp(prefix="walstream-bench-pycache-"))
    env = _installed_env(pycache)
    # Compiles the bytecode, as an install would.
    subprocess.run(
        [sys.executable, "-m", "walstream.sender", "--version"],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    cluster = None
    scratch = None
    tools: tuple[str, ...] = TOOLS
    try:
        if args.wal is not None:
            wal = Path(args.wal)
            meta = json.loads((wal / "backlog.json").read_text())
            backlog = Backlog(LSN.parse(meta["start"]), LSN.parse(meta["end"]), wal, None)
            tools = ("walstream",)
        else:
            cluster = PgCluster.create(15, conf={
                "max_wal_size": "'8GB'", "wal_keep_size": "'8GB'", "checkpoint_timeout": "'1h'",
                "autovacuum": "off", "max_wal_senders": str(max(ns) + 4),
            })  # fmt: skip
            if args.keep_wal is not None:
                wal = Path(args.keep_wal)
            else:
                wal = scratch = Path(tempfile.mkdtemp(prefix="walstream-fanout-wal-"))
            backlog = _make_backlog(cluster, args.scale, wal, env)
        _warm(backlog.wal, *([backlog.pg_wal] if backlog.pg_wal else []))
        target = _target(args, backlog, max(ns))
        print(
            f"backlog {backlog.size / 1e6:.0f} MB ({backlog.size / GIB:.2f} GiB) from "
            f"{backlog.start} to {backlog.end}; clients write to {target} with --no-sync",
            flush=True,
        )
        bench = Bench(args, backlog, env, cluster, target)
        results: dict[tuple[str, int], list[Result]] = {(t, n): [] for t in tools for n in ns}
        # Which runs went first in their round: on this machine the position
        # alone moved an N = 8 run by 25-35% (2026-12-04), so with an odd
        # number of rounds the medians favour whoever went second more often.
        went_first: dict[tuple[str, int], list[bool]] = {(t, n): [] for t in tools for n in ns}
        try:
            for rnd in range(args.rounds):
                for n in ns:
                    order = tools if (rnd + ns.index(n)) % 2 == 0 else tuple(reversed(tools))
                    for tool in order:
                        os.sync()
                        r = bench.run(tool, n, rnd)
                        results[tool, n].append(r)
                        went_first[tool, n].append(tool == order[0])
                        gib = n * backlog.size / GIB
                        print(
                            f"round {rnd}  N={n}  {tool:<9} {r.wall:6.2f} s  "
                            f"{gib / r.wall * GIB / 1e6:6.0f} MB/s sent  CPU {r.cpu:5.2f} s "
                            f"({r.cpu / gib:.2f} s/GiB)  peak RSS {r.rss:5.1f} MB  "
                            f"clients' CPU {r.clients_cpu:5.2f} s  idle {r.idle:4.0%}"
                            + (f"  sender waited {r.waited:.2f} s" if tool == "walstream" else ""),
                            flush=True,
                        )
        finally:
            shutil.rmtree(target, ignore_errors=True)
        print()
        for n in ns:
            gib = n * backlog.size / GIB
            line = [f"N={n}:"]
            for tool in tools:
                rs = results[tool, n]
                total = statistics.median(r.cpu + r.clients_cpu for r in rs) / gib
                line.append(
                    f"{tool} {statistics.median(r.wall for r in rs):.2f} s, "
                    f"{statistics.median(r.cpu for r in rs) / gib:.2f} CPU s/GiB "
                    f"(with the clients' {total:.2f}), "
                    f"peak RSS {max(r.rss for r in rs):.1f} MB;"
                )
            if "primary" in tools:
                ours = statistics.median(r.wall for r in results["walstream", n])
                theirs = statistics.median(r.wall for r in results["primary", n])
                per_round = ", ".join(
                    f"{p.wall / w.wall:.2f}"
                    for w, p in zip(results["walstream", n], results["primary", n], strict=True)
                )
                line.append(f"walstream speed {theirs / ours:.2f}x the primary (per round: "
                            f"{per_round})")  # fmt: skip
                line[-1] += _position_matched(results, went_first, n)
            print(" ".join(line), flush=True)
    finally:
        if cluster is not None:
            cluster.destroy()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(pycache, ignore_errors=True)
    return 0


def _position_matched(
    results: dict[tuple[str, int], list[Result]],
    went_first: dict[tuple[str, int], list[bool]],
    n: int,
) -> str:
    """walstream against the primary, each run compared with the other's in the same position."""
    parts = []
    for label, first in (("first", True), ("second", False)):
        walls = {
            tool: [r.wall for r, f in zip(results[tool, n], went_first[tool, n], strict=True)
                   if f is first]
            for tool in ("walstream", "primary")
        }  # fmt: skip
        if all(walls.values()):
            ours, theirs = (statistics.median(walls[t]) for t in ("walstream", "primary"))
            parts.append(f"{label} {theirs / ours:.2f}x")
    return "; position-matched: " + ", ".join(parts) if parts else ""


if __name__ == "__main__":
    sys.exit(main())
