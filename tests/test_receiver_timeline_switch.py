"""Resuming exactly at a timeline's switch point.

A receiver resumes at a segment start, so START_REPLICATION names the switch
point itself only when the switch point is a segment boundary: a standby
promoted right after the primary's pg_switch_wal. The server then skips COPY
and answers with the next timeline only. pg_receivewal cannot handle that
answer (it wants COPY and fails with 'could not send replication command
"START_REPLICATION": ' and an empty reason, forever), so its directory is
taken from the same promotion followed live, where it does not meet that path.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from walstream import LSN
from walstream.wal.segment import parse_segment_name

from .pgcluster import PgCluster, wait_until

SEG = 1024 * 1024
VERSIONS = [15, 18]  # the oldest and newest supported servers; the path is the same in 16


def _name(tli: int, segno: int) -> str:
    return f"{tli:08X}{segno >> 12:08X}{segno & 0xFFF:08X}"


def _ours(*args: str) -> list[str]:
    return [sys.executable, "-m", "walstream.receiver", *args]


@contextlib.contextmanager
def _receivers(cmds: list[list[str]]) -> Iterator[list[subprocess.Popen[str]]]:
    procs = [subprocess.Popen(c, stderr=subprocess.PIPE, text=True) for c in cmds]
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)


def _stop(procs: list[subprocess.Popen[str]]) -> list[str]:
    for p in procs:
        p.send_signal(signal.SIGINT)
    errs = [p.communicate(timeout=30)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), errs
    return errs


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir()}


@pytest.mark.parametrize("version", VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
def test_resume_exactly_at_a_segment_aligned_switch_point(  # type: ignore[no-untyped-def]
    pg_factory, tmp_path: Path, version: int
) -> None:
    primary: PgCluster = pg_factory(version, wal_segsize_mb=1)
    primary.psql("CREATE TABLE t(x int, pad text)")
    standby = primary.make_standby()
    # The standby stops replaying before the first record past the next segment
    # boundary and promotes: the last record it replayed is the primary's
    # pg_switch_wal, which ends exactly at that boundary, so timeline 2 starts there.
    boundary = (LSN.parse(primary.current_lsn()) // SEG + 1) * SEG
    segno = boundary // SEG
    standby.set_conf(
        recovery_target_lsn=str(LSN(boundary)),
        recovery_target_inclusive="off",
        recovery_target_action="promote",
    )
    standby.restart()

    dirs = {k: tmp_path / k for k in ("resumed", "resumed_ref", "live", "live_ref")}
    for d in dirs.values():
        d.mkdir()
    on_primary = primary.conninfo("scram_user", "scrampass")
    on_standby = standby.conninfo("scram_user", "scrampass")
    receivewal = str(primary.program("pg_receivewal"))
    # Two receivers follow the promotion live through the cascading standby ...
    live = [
        _ours("-d", on_standby, "-D", str(dirs["live"]), "-s", "1", "-v"),
        [receivewal, "-d", on_standby, "-D", str(dirs["live_ref"]), "-s", "1"],
    ]
    # ... and two stream the old primary, stop, and resume on the promoted server.
    resumed = [
        _ours("-d", on_primary, "-D", str(dirs["resumed"]), "-s", "1"),
        [receivewal, "-d", on_primary, "-D", str(dirs["resumed_ref"]), "-s", "1"],
    ]
    with _receivers(live) as live_procs:
        with _receivers(resumed) as first_procs:
            wait_until(
                lambda: (
                    primary.psql("SELECT count(*) FROM pg_stat_replication") == "3"
                    and standby.psql("SELECT count(*) FROM pg_stat_replication") == "2"
                ),
                what="four receivers streaming",
            )
            primary.psql("INSERT INTO t SELECT g, repeat('p', 300) FROM generate_series(1, 500) g")
            assert LSN.parse(primary.psql("SELECT pg_switch_wal()")) < boundary
            # WAL past the boundary: the standby stops before it; the old primary
            # goes on, so the resumed directories end in a timeline-1 .partial.
            primary.psql("INSERT INTO t VALUES (1, 'timeline 1 only')")
            wait_until(
                lambda: all(
                    (dirs[k] / f"{_name(1, segno)}.partial").exists()
                    for k in ("resumed", "resumed_ref")
                ),
                what="the resumed receivers past the boundary on timeline 1",
            )
            _stop(first_procs)
        wait_until(lambda: standby.psql("SELECT pg_is_in_recovery()") == "f", what="promotion")
        history = (standby.datadir / "pg_wal" / "00000002.history").read_bytes()
        switch = LSN.parse(history.decode().split("\t")[1])
        assert switch == boundary, f"the switch point {switch} is not the segment start {boundary}"

        standby.psql("INSERT INTO t SELECT g, repeat('s', 300) FROM generate_series(1, 500) g")
        standby.psql("SELECT pg_switch_wal()")
        standby.psql("INSERT INTO t VALUES (2, 'timeline 2')")
        endpos = LSN.parse(standby.current_lsn())
        standby.psql("INSERT INTO t VALUES (3, 'past endpos')")

        # Resume: the directory says segment `segno` of timeline 1, which is the switch point.
        common = ["-d", on_standby, "-n", "-E", str(endpos), "-v"]
        ours = subprocess.run(
            _ours(*common, "-v", "-D", str(dirs["resumed"])),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        ref = subprocess.run(
            [receivewal, *common, "-D", str(dirs["resumed_ref"])],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

        wait_until(
            lambda: all(
                (dirs[k] / _name(2, segno)).exists()
                and (dirs[k] / f"{_name(2, segno + 1)}.partial").exists()
                for k in ("live", "live_ref")
            ),
            what="the live receivers on timeline 2",
        )
        live_errs = _stop(live_procs)

    # The server really skipped COPY: pg_receivewal fails on exactly that answer ...
    assert ref.returncode == 1, ref.stderr
    assert f"starting log streaming at {LSN(boundary)} (timeline 1)" in ref.stderr
    assert 'could not send replication command "START_REPLICATION": \n' in ref.stderr
    # ... and walstream saw it too, then went on to timeline 2 at the same position.
    assert ours.returncode == 0, ours.stderr
    assert f"starting log streaming at {LSN(boundary)} (timeline 1)" in ours.stderr
    assert f"timeline 1 ends exactly at the start position {LSN(boundary)}" in ours.stderr
    assert f"switched to timeline 2 at {LSN(boundary)}" in ours.stderr
    assert f"switched to timeline 2 at {LSN(boundary)}" in live_errs[0]

    resumed_files = _files(dirs["resumed"])
    reference = _files(dirs["live_ref"])
    assert resumed_files["00000002.history"] == history
    assert reference["00000002.history"] == history

    # No gap: timeline 1 up to the boundary, timeline 2 from it.
    segments = sorted(
        (n.segno, n.timeline, n.partial)
        for n in map(lambda f: parse_segment_name(f, SEG), resumed_files)
        if n is not None
    )
    assert segments == [
        (segno - 1, 1, False),
        (segno, 1, True),
        (segno, 2, False),
        (segno + 1, 2, True),
    ], segments

    def completed(files: dict[str, bytes]) -> dict[str, bytes]:
        return {k: v for k, v in files.items() if ".partial" not in k}

    # The same names and bytes as pg_receivewal following the promotion live
    # (its timeline-1 .partial depends on what the standby forwarded: not compared).
    assert completed(resumed_files) == completed(reference)
    assert sorted(n for n in resumed_files if n.startswith("00000002")) == sorted(
        n for n in reference if n.startswith("00000002")
    )
    assert completed(_files(dirs["live"])) == completed(reference)
    for name, data in completed(resumed_files).items():
        server = (primary if name.startswith("00000001") else standby).datadir / "pg_wal" / name
        if not name.endswith(".history"):
            assert data == server.read_bytes(), f"{name} differs from the server's"
    tail = f"{_name(2, segno + 1)}.partial"
    upto = endpos % SEG
    assert resumed_files[tail][:upto] == reference[tail][:upto]
    assert len(resumed_files[tail]) == len(reference[tail]) == SEG
    # The resumed pg_receivewal got nowhere: its directory is as it left it.
    assert not any(n.startswith("00000002") for n in _files(dirs["resumed_ref"]))
