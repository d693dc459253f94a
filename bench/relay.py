"""pgbench TPS with ``walstream relay`` as the synchronous standby, and the relay hop's lag.

Run: ``python bench/relay.py [--rounds 3] [--seconds 10] [--clients 8] [--probes 200]``

One throwaway PostgreSQL primary (15 by default, ``--pg-version``), two real
hot standbys made with pg_basebackup from it, and one relay directory. Three
configurations, each measured with only its own processes running (started
for the run, stopped after it; slots on the primary keep the WAL they have
not taken yet, and each catches up before the run):

* ``standby``: a real PostgreSQL standby streaming from the primary, named
  in the primary's synchronous_standby_names;
* ``relay_async``: ``walstream relay --synchronous`` named there instead,
  with the other standby streaming from the relay, asynchronous behind it
  (the relay confirms its own fsync);
* ``relay_sync``: the same relay with ``--synchronous-standby-names`` naming
  the standby behind it: a commit waits until that standby, behind the
  relay, has flushed it (synchronous replication through the cascade).

Each round runs ``pgbench -c CLIENTS -j 2 -T SECONDS`` (synchronous_commit =
on) once per configuration, the order alternating from round to round;
medians and the ratio of each to ``standby`` are printed, with the per-round
ratios.

Then the end-to-end lag: with the primary asynchronous (nothing waits), the
direct standby and the relay with its standby behind it running at once,
each probe commits one row on the primary and polls both standbys over
open sessions until the row is visible there; the time from the commit's
return to the first poll that sees it. Probes run first on an idle primary,
then under ``pgbench -c CLIENTS -R RATE`` (a fixed rate, so that neither
path falls behind for good). A poll is one query round trip (a fraction of
a millisecond here): that is the resolution.

Timings are reported, never asserted. On a shared 2-core machine every
process here competes for the same cores as the primary's backends: read
the ratios from one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import walstream
from tests.pgcluster import PgCluster
from walstream.client import ReplicationConnection

CONFIGS = ("standby", "relay_async", "relay_sync")
DIRECT = "bench_standby"  # the real standby's application_name (and slot) on the primary
RELAY = "bench_relay"  # the relay's
BEHIND = "bench_behind"  # the standby behind the relay, on the relay
_CATCH_UP = 300.0  # seconds a configuration gets to catch up before its run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Callable[[], bool], what: str, timeout: float = _CATCH_UP) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _replication(primary: PgCluster, app: str, column: str) -> str:
    """One column of the primary's pg_stat_replication row for ``app`` ("" if none)."""
    return primary.psql(
        f"SELECT {column} FROM pg_stat_replication WHERE application_name = '{app}'"
    )


def _replayed(standby: PgCluster, lsn: str) -> bool:
    try:
        return standby.psql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") == "t"
    except RuntimeError:
        return False  # still starting


class Relay:
    """``python -m walstream.relay`` from the primary into one directory, restarted per run."""

    def __init__(self, primary: PgCluster, directory: Path) -> None:
        self.primary = primary
        self.directory = directory
        self.port = _free_port()
        self.http = _free_port()
        self.log = directory.parent / "relay.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, sync_names: str = "") -> None:
        conninfo = self.primary.conninfo("trust_user", application_name=RELAY)
        cmd = [sys.executable, "-m", "walstream.relay", "-d", conninfo, "-D", str(self.directory),
               "-S", RELAY, "--synchronous", "--listen", f"127.0.0.1:{self.port}",
               "--http", f"127.0.0.1:{self.http}"]  # fmt: skip
        if sync_names:
            cmd += ["--synchronous-standby-names", sync_names]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the relay exited:\n{self.log.read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return True
            return False

        _wait(listening, "the relay to listen", 60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=trust_user application_name={BEHIND}"

    def client_sync_state(self) -> str:
        """The standby behind the relay, as the relay lists it (its /status)."""
        url = f"http://127.0.0.1:{self.http}/status"
        with urllib.request.urlopen(url, timeout=10) as r:
            clients = json.load(r)["clients"]
        return ",".join(c["sync_state"] for c in clients if c["application_name"] == BEHIND) or "-"


class Bench:
    def __init__(self, primary: PgCluster, work: Path) -> None:
        self.primary = primary
        self.work = work
        self.relay = Relay(primary, work / "relay")
        self.direct: PgCluster | None = None
        self.behind: PgCluster | None = None

    def setup(self, scale: int) -> None:
        primary = self.primary
        primary.pgbench("-i", "-s", str(scale), "-q")
        primary.psql("CREATE TABLE lag_probe(id int PRIMARY KEY)")
        for slot in (DIRECT, RELAY):  # the WAL a stopped configuration has not taken yet stays
            primary.psql(f"SELECT pg_create_physical_replication_slot('{slot}', true)")
        (self.work / "relay").mkdir()
        # The relay first: the standby behind it starts from a backup taken
        # after the relay's first WAL, which the relay then has.
        self.relay.start()
        self.direct = primary.backup_standby(
            "direct",
            primary.conninfo("trust_user", application_name=DIRECT),
            primary_slot_name=f"'{DIRECT}'",
        )
        self.behind = primary.backup_standby("behind", self.relay.conninfo())
        primary.standbys += [self.direct, self.behind]  # destroyed with the primary
        self.relay.stop()

    @contextlib.contextmanager
    def running(self, config: str) -> Iterator[None]:
        """What ``config`` needs, started and caught up with the primary; stopped after."""
        assert self.direct is not None
        assert self.behind is not None
        primary = self.primary
        try:
            if config == "standby":
                self.direct.start()
            else:
                self.relay.start(sync_names=BEHIND if config == "relay_sync" else "")
                self.behind.start()
            target = primary.current_lsn()
            standby = self.direct if config == "standby" else self.behind
            _wait(lambda: _replayed(standby, target), f"{config} to catch up to {target}")
            app = DIRECT if config == "standby" else RELAY
            _wait(lambda: _replication(primary, app, "state") == "streaming", f"{app} streaming")
            yield
        finally:
            self.direct.stop()
            self.behind.stop()
            self.relay.stop()

    def tps(self, config: str, clients: int, seconds: int) -> tuple[float, str]:
        primary = self.primary
        app = DIRECT if config == "standby" else RELAY
        primary.set_conf(synchronous_standby_names=app)
        _wait(lambda: _replication(primary, app, "sync_state") == "sync", f"{app} sync", 60)
        state = _replication(primary, app, "sync_state")
        if config != "standby":
            state += f"; behind the relay: {self.relay.client_sync_state()}"
        out = primary.pgbench("-c", str(clients), "-j", "2", "-T", str(seconds), timeout=600)
        m = re.search(r"tps = ([0-9.]+)", out)
        assert m, out
        primary.set_conf(synchronous_standby_names="")
        return float(m.group(1)), state


async def _session(cluster: PgCluster) -> ReplicationConnection:
    return await walstream.connect(
        cluster.conninfo("postgres"), dbname="postgres", replication="false"
    )


async def _probe(
    primary: ReplicationConnection,
    standbys: dict[str, ReplicationConnection],
    probe_id: int,
) -> dict[str, float]:
    """Commit one row; seconds until each standby sees it."""
    await primary.execute(f"INSERT INTO lag_probe VALUES ({probe_id})")
    committed = time.perf_counter()
    seen: dict[str, float] = {}
    query = f"SELECT count(*) FROM lag_probe WHERE id = {probe_id}"
    # Each poll takes one query round trip: whichever is asked first gains
    # that much, so the order alternates from probe to probe.
    order = list(standbys.items())
    if probe_id % 2:
        order.reverse()
    while len(seen) < len(standbys):
        for name, conn in order:
            if name in seen:
                continue
            (row,) = (await conn.execute(query)).rows
            if row[0] == "1":
                seen[name] = time.perf_counter() - committed
        if time.perf_counter() - committed > 60:
            raise RuntimeError(f"probe {probe_id} not visible after 60 s: seen {seen}")
    return seen


async def _lags(bench: Bench, probes: int, first_id: int) -> dict[str, list[float]]:
    assert bench.direct is not None
    assert bench.behind is not None
    primary = await _session(bench.primary)
    standbys = {"direct": await _session(bench.direct), "via relay": await _session(bench.behind)}
    lags: dict[str, list[float]] = {name: [] for name in standbys}
    try:
        for i in range(probes):
            for name, lag in (await _probe(primary, standbys, first_id + i)).items():
                lags[name].append(lag)
            await asyncio.sleep(0.02)
    finally:
        for conn in (primary, *standbys.values()):
            await conn.close()
    return lags


def _summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (f"median {statistics.median(ordered) * 1000:6.2f} ms, p95 {p95 * 1000:6.2f} ms, "
            f"max {ordered[-1] * 1000:6.2f} ms")  # fmt: skip


def _report_lags(title: str, lags: dict[str, list[float]]) -> None:
    print(f"{title}:")
    for name, values in lags.items():
        print(f"  {name:<10} {_summary(values)}  ({len(values)} probes)")
    direct, relay = (statistics.median(lags[n]) for n in ("direct", "via relay"))
    print(f"  via relay - direct: {(relay - direct) * 1000:+.2f} ms at the median "
          f"({relay / direct:.2f}x)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--probes", type=int, default=200, help="lag probes per phase")
    parser.add_argument("--rate", type=int, default=500,
                        help="pgbench -R in the loaded lag probes (default 500 tps)")  # fmt: skip
    parser.add_argument("--pg-version", type=int, default=15)
    parser.add_argument("--no-tps", action="store_true", help="only the lag probes")
    parser.add_argument("--no-lag", action="store_true", help="only the TPS rounds")
    args = parser.parse_args()
    primary = PgCluster.create(
        args.pg_version, conf={"max_wal_size": "'4GB'", "wal_keep_size": "'0'"}
    )
    work = Path(tempfile.mkdtemp(prefix="walstream-bench-relay-"))
    work.chmod(0o755)
    bench = Bench(primary, work)
    try:
        bench.setup(args.scale)
        if not args.no_tps:
            tps: dict[str, list[float]] = {c: [] for c in CONFIGS}
            for rnd in range(args.rounds):
                order = CONFIGS if rnd % 2 == 0 else tuple(reversed(CONFIGS))
                for config in order:
                    with bench.running(config):
                        value, state = bench.tps(config, args.clients, args.seconds)
                    tps[config].append(value)
                    print(f"round {rnd}  {config:<12} {value:8.0f} tps  (sync_state {state})",
                          flush=True)  # fmt: skip
            base = statistics.median(tps["standby"])
            print(f"pgbench -c {args.clients} -j 2 -T {args.seconds}, synchronous_commit = on, "
                  f"{args.rounds} rounds, medians:")  # fmt: skip
            for config in CONFIGS:
                median = statistics.median(tps[config])
                per_round = [v / s for v, s in zip(tps[config], tps["standby"], strict=True)]
                print(f"  {config:<12} {median:8.0f} tps  {median / base:.2f}x standby "
                      f"(per round: {', '.join(f'{r:.2f}' for r in per_round)}; "
                      f"median {statistics.median(per_round):.2f})")  # fmt: skip
        if not args.no_lag:
            assert bench.direct is not None
            assert bench.behind is not None
            # Both paths at once, the primary asynchronous: nothing waits for either.
            bench.direct.start()
            bench.relay.start(sync_names="")
            bench.behind.start()
            try:
                target = primary.current_lsn()
                for standby in (bench.direct, bench.behind):
                    _wait(lambda s=standby: _replayed(s, target), "the standbys to catch up")
                idle = asyncio.run(_lags(bench, args.probes, 1))
                _report_lags("end-to-end lag, commit on the primary to visible, idle", idle)
                load = subprocess.Popen(
                    [str(primary.program("pgbench")), "-h", str(primary.socket_dir), "-p",
                     str(primary.port), "-U", "postgres", "-c", str(args.clients), "-j", "2",
                     "-R", str(args.rate), "-T", "3600", "postgres"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    time.sleep(2)  # the load settles
                    loaded = asyncio.run(_lags(bench, args.probes, 1 + args.probes))
                finally:
                    load.terminate()
                    load.wait(30)
                _report_lags(
                    f"under pgbench -c {args.clients} -R {args.rate} (asynchronous)", loaded
                )
            finally:
                bench.direct.stop()
                bench.behind.stop()
                bench.relay.stop()
    finally:
        bench.relay.stop()
        primary.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
