"""Replay lag under a sustained write load: walstream's startup role beside a real standby.

Run: ``python bench/replay_lag.py [--seconds 60] [--clients 8] [--scale 20]``

One throwaway PostgreSQL 15 primary streams, at the same time, to a real
PostgreSQL standby (pg_basebackup, hot standby) and to
``python -m walstream.receiver --synchronous --replay`` (fsync per batch, as
a standby's walreceiver flushes, so replay can follow each batch; neither is
named in synchronous_standby_names, so the load does not wait for them).
While ``pgbench -c CLIENTS -j 2 -T SECONDS`` runs, the primary's
pg_stat_replication is sampled every 0.5 s for both: the replay lag in bytes
(the primary's current WAL position minus replay_lsn) and the replay_lag
interval the walsender computes. The script prints median, 95th percentile
and maximum of each, the ratio walstream / real standby, and the maximum in
each third of the run: a lag that keeps up stays flat from third to third,
one that falls behind grows.

A real standby redoes pages; walstream decodes, CRC-verifies and tracks
every record without page redo (see the WAL-format notes), so this measures
whether the startup role keeps up with the stream, not equal work.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from walstream.lsn import LSN

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pgcluster import PgCluster

APPS = ("walstream", "standby")


Sample = tuple[int, float | None, float | None]


def _sample(cluster: PgCluster) -> dict[str, Sample]:
    """Per application: (bytes not yet replayed, replay_lag, flush_lag; seconds or None)."""
    out = cluster.psql(
        "SELECT application_name, pg_current_wal_lsn() - replay_lsn, "
        "extract(epoch FROM replay_lag), extract(epoch FROM flush_lag) "
        "FROM pg_stat_replication WHERE replay_lsn IS NOT NULL"
    )
    rows: dict[str, Sample] = {}
    for line in out.splitlines():
        app, lag_bytes, replay, flush = line.split("|")
        rows[app] = (
            int(float(lag_bytes)),
            float(replay) if replay else None,
            float(flush) if flush else None,
        )
    return rows


def _stats(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return statistics.median(ordered), p95, ordered[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--scale", type=int, default=20)
    args = parser.parse_args()
    cluster = PgCluster.create(15, conf={"max_wal_size": "'4GB'", "wal_keep_size": "'4GB'"})
    work = Path(tempfile.mkdtemp(prefix="walstream-bench-"))
    receiver: subprocess.Popen[str] | None = None
    try:
        cluster.pgbench("-i", "-s", str(args.scale), "-q")
        cluster.make_standby(cluster_name="standby")
        receiver = subprocess.Popen(
            [sys.executable, "-m", "walstream.receiver", "-D", str(work), "--synchronous",
             "--replay", "-d", f"{cluster.conninfo('trust_user')} application_name=walstream"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while set(_sample(cluster)) != set(APPS):
            if time.monotonic() > deadline:
                print("the standby and walstream did not both report replay", file=sys.stderr)
                return 1
            time.sleep(0.1)
        samples: list[dict[str, Sample]] = []
        load = threading.Thread(
            target=cluster.pgbench,
            args=("-c", str(args.clients), "-j", "2", "-T", str(args.seconds), "-n"),
            kwargs={"timeout": args.seconds + 120},
        )
        start_lsn = LSN.parse(cluster.current_lsn())
        load.start()
        while load.is_alive():
            samples.append(_sample(cluster))
            time.sleep(0.5)
        load.join()
        wal = LSN.parse(cluster.current_lsn()) - start_lsn
        print(f"{len(samples)} samples over {args.seconds} s; {wal / 2**20:.0f} MB of WAL "
              f"({wal / 2**20 / args.seconds:.1f} MB/s)")  # fmt: skip
        medians: dict[str, tuple[float, float]] = {}
        for app in APPS:
            lag_b = [float(s[app][0]) for s in samples if app in s]
            lag_t = [t for s in samples if app in s and (t := s[app][1]) is not None]
            lag_f = [t for s in samples if app in s and (t := s[app][2]) is not None]
            b_med, b_p95, b_max = _stats(lag_b)
            thirds = [lag_b[i * len(lag_b) // 3 : (i + 1) * len(lag_b) // 3] for i in range(3)]
            line = (f"{app:<10} replay lag bytes: median {b_med / 1024:8.1f} kB  "
                    f"p95 {b_p95 / 1024:8.1f} kB  max {b_max / 1024:8.1f} kB; max per third "
                    + " / ".join(f"{max(t) / 1024:.0f}" for t in thirds if t) + " kB")  # fmt: skip
            t_med = 0.0
            if lag_t:
                t_med, t_p95, t_max = _stats(lag_t)
                line += (f"\n{'':<10} replay_lag: median {t_med * 1000:7.1f} ms  "
                         f"p95 {t_p95 * 1000:7.1f} ms  max {t_max * 1000:7.1f} ms")  # fmt: skip
            if lag_f:
                f_med, f_p95, _ = _stats(lag_f)
                line += (f"\n{'':<10} flush_lag:  median {f_med * 1000:7.1f} ms  "
                         f"p95 {f_p95 * 1000:7.1f} ms  (for comparison)")  # fmt: skip
            medians[app] = (b_med, t_med)
            print(line)
        ours, theirs = medians["walstream"], medians["standby"]
        if theirs[0] and theirs[1]:
            ratio_b, ratio_t = ours[0] / theirs[0], ours[1] / theirs[1]
            print(f"ratio walstream / real standby (median, lower is better): "
                  f"bytes {ratio_b:.2f}x, replay_lag {ratio_t:.2f}x")  # fmt: skip
    finally:
        if receiver is not None:
            receiver.terminate()
            _, err = receiver.communicate(timeout=30)
            if receiver.returncode:
                print(err, file=sys.stderr)
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
