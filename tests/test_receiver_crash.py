"""SIGKILL the synchronous receiver at random moments; nothing acknowledged may be missing.

The primary acknowledges a commit under synchronous replication only after
the receiver reported the commit record flushed. So at every kill, every
commit acknowledged before it must already be in the directory, and after
any number of kills the directory must still be a gap-free run of segments,
each equal to the primary's file. pg_waldump on the primary's pg_wal gives
the exact position of each commit record (the oracle).
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from walstream import LSN
from walstream.wal.segment import parse_segment_name, segment_name

from .pgcluster import PgCluster

SEG = 1024 * 1024
APP = "ws_crash"
KILLS = 30


def _valid_end(directory: Path, primary_wal: Path) -> LSN:
    """End of the gap-free WAL in ``directory``, checking every byte against the primary."""
    names = {}
    for path in directory.iterdir():
        parsed = parse_segment_name(path.name, SEG)
        if parsed is not None:
            names[parsed.segno] = (path, parsed.partial)
    if not names:
        return LSN(0)
    segnos = sorted(names)
    assert segnos == list(range(segnos[0], segnos[-1] + 1)), f"gap in segments: {segnos}"
    end = LSN(0)
    for segno in segnos:
        path, partial = names[segno]
        ours = path.read_bytes()
        theirs = (primary_wal / segment_name(1, segno, SEG)).read_bytes()
        if partial and len(ours) < SEG:
            # Killed between creating the file and the end of its pre-padding,
            # as pg_receivewal can be: zeros only, and the restart pads it again
            # (test_short_partial_from_a_crash_during_padding_is_repaired).
            assert segno == segnos[-1], f"{path.name}: a short .partial before the last one"
            assert not any(ours), f"{path.name} is short and holds more than padding"
            return LSN(segno * SEG)
        assert len(ours) == SEG, f"{path.name} has {len(ours)} bytes"
        if not partial:
            assert ours == theirs, f"completed segment {path.name} differs from the primary's"
            end = LSN((segno + 1) * SEG)
            continue
        assert segno == segnos[-1], "a .partial segment before the last one"
        # Written WAL, then the zeros of pre-padding: where they stop matching
        # the primary is where the received WAL ends.
        same = 0
        for offset in range(0, SEG, 8192):
            if ours[offset : offset + 8192] != theirs[offset : offset + 8192]:
                block = ours[offset : offset + 8192]
                other = theirs[offset : offset + 8192]
                same = offset + next(i for i in range(8192) if block[i] != other[i])
                assert not any(block[same - offset :]), f"{path.name}: garbage after {same:#x}"
                assert not any(ours[offset + 8192 :]), f"{path.name}: data after a hole"
                break
        else:
            same = SEG
        end = LSN(segno * SEG + same)
    return end


def _commit_ends(cluster: PgCluster, start: LSN) -> dict[int, LSN]:
    """xid -> end of its commit record, from pg_waldump (the end is a lower bound when the
    record crosses a page: conservative for this test)."""
    out = subprocess.run(
        [
            str(cluster.program("pg_waldump")),
            "-p",
            str(cluster.datadir / "pg_wal"),
            "-r",
            "Transaction",
            "-s",
            str(start),
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    ends = {}
    pattern = re.compile(
        r"len \(rec/tot\):\s*\d+/\s*(\d+), tx:\s*(\d+), lsn: ([0-9A-F]+/[0-9A-F]+).*desc: COMMIT"
    )
    for line in out.splitlines():
        m = pattern.search(line)
        if m:
            ends[int(m.group(2))] = LSN(LSN.parse(m.group(3)) + int(m.group(1)))
    return ends


def test_sigkill_never_loses_an_acknowledged_commit(pg_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster: PgCluster = pg_factory(15, wal_segsize_mb=1)
    cluster.psql("CREATE TABLE crash(id int, pad text)")
    cluster.set_conf(synchronous_standby_names=APP)
    start = LSN.parse(cluster.current_lsn())
    directory = tmp_path / "wal"
    directory.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "walstream.receiver",
        "-d",
        cluster.conninfo("scram_user", "scrampass"),
        "-D",
        str(directory),
        "--synchronous",
        "--application-name",
        APP,
        "-s",
        "1",
    ]

    acked: list[tuple[float, int]] = []  # (monotonic time of the acknowledgement, xid)
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            extra = "SELECT pg_switch_wal();" if i % 40 == 0 else ""
            xid = cluster.psql(
                f"BEGIN; SELECT txid_current(); INSERT INTO crash SELECT {i}, repeat('c', 2000) "
                f"FROM generate_series(1, 20); COMMIT; {extra}"
            ).splitlines()[0]
            acked.append((time.monotonic(), int(xid)))

    rng = random.Random(20261123)
    kills: list[tuple[float, LSN]] = []
    loader = threading.Thread(target=load, daemon=True)
    try:
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        loader.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.05, 0.6))
            kill_time = time.monotonic()
            proc.kill()
            proc.wait(30)
            kills.append((kill_time, _valid_end(directory, cluster.datadir / "pg_wal")))
            proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        stop.set()
        loader.join(60)
        assert not loader.is_alive(), "the load is stuck: the receiver did not come back"
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()

    assert len(acked) > KILLS, "the load barely ran"
    ends = _commit_ends(cluster, LSN(start - start % SEG))
    checked = 0
    for kill_time, dir_end in kills:
        for ack_time, xid in acked:
            if ack_time < kill_time:
                assert xid in ends, f"commit of xid {xid} not found by pg_waldump"
                assert ends[xid] <= dir_end, (
                    f"xid {xid} was acknowledged before a SIGKILL but its commit record "
                    f"(ending {ends[xid]}) is not in the directory (which ends at {dir_end})"
                )
                checked += 1
    assert checked
    final_end = _valid_end(directory, cluster.datadir / "pg_wal")
    assert all(e <= final_end for e in ends.values())
