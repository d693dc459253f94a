"""The startup service replaying a WAL directory: timelines, following a receiver, corruption.

The oracles are the servers themselves (where each branch of WAL ends) and
pg_waldump (where it finds damage).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from walstream import LSN
from walstream.errors import RecoveryTargetUnreachable
from walstream.startup import StartupError, StartupOptions, StartupService, StartupStatus
from walstream.wal.recovery import RecoveryTarget
from walstream.wal.segment import parse_segment_name

from .conftest import require_version
from .pgcluster import PgCluster, wait_until

SEG = 1 << 20


def _switch(cluster: PgCluster) -> LSN:
    """Close the current segment; return the boundary where the WAL copied out ends."""
    cluster.psql("SELECT pg_switch_wal()")
    insert = LSN.parse(cluster.psql("SELECT pg_current_wal_insert_lsn()"))
    return LSN(insert - insert % SEG)


def _copy_segments(cluster: PgCluster, dest: Path, timeline: int, end: LSN) -> None:
    """Copy the timeline's completed segments below ``end`` (no recycled files ahead of it)."""
    for path in (cluster.datadir / "pg_wal").iterdir():
        name = parse_segment_name(path.name, SEG)
        if name and not name.partial and name.timeline == timeline and name.segno < end // SEG:
            shutil.copy(path, dest / path.name)


def _replay(directory: Path, **options: object) -> StartupStatus:
    return asyncio.run(StartupService(StartupOptions(directory, **options)).run())  # type: ignore[arg-type]


@dataclass
class Fork:
    """Two branches of WAL in one directory: timeline 1 as the old primary went on, and
    timeline 2 of the standby promoted from it, each with its own restore point."""

    primary: PgCluster
    wal: Path
    backup: Path  # taken on timeline 1 before the fork
    end1: LSN
    end2: LSN


@pytest.fixture(scope="module", params=[15, 18], ids=["pg15", "pg18"])
def forked(request: pytest.FixtureRequest) -> Iterator[Fork]:
    """Built once per version: the tests only read the copy."""
    require_version(request.param)
    primary = PgCluster.create(request.param, wal_segsize_mb=1)
    try:
        yield _fork(primary)
    finally:
        primary.destroy()


def _fork(primary: PgCluster) -> Fork:
    primary.psql("CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 1000)")
    backup = primary.base_backup(primary.base / "backup", "-X", "none")
    standby = primary.make_standby()
    standby.wait_for_replay(primary.current_lsn())
    standby.promote()
    wait_until(lambda: standby.psql("SELECT pg_is_in_recovery()") == "f", what="promotion")
    # Different amounts of WAL on each branch, so that their ends differ.
    standby.psql("INSERT INTO t SELECT generate_series(1, 30000)")
    standby.psql("SELECT pg_create_restore_point('on_tl2')")
    end2 = _switch(standby)
    primary.psql("INSERT INTO t SELECT generate_series(1, 5000)")
    primary.psql("SELECT pg_create_restore_point('on_tl1')")
    end1 = _switch(primary)
    wal = primary.base / "wal"  # where the server user can read it, for restore_command
    wal.mkdir()
    _copy_segments(primary, wal, 1, end1)
    _copy_segments(standby, wal, 2, end2)
    shutil.copy(standby.datadir / "pg_wal" / "00000002.history", wal)
    for path in wal.iterdir():
        path.chmod(0o644)
    assert end1 != end2
    return Fork(primary, wal, backup, end1, end2)


def _recover(fork: Fork, cluster_name: str, **settings: str) -> str:
    """pg_last_wal_replay_lsn() of a real recovery paused at its target, or its FATAL."""
    conf = {f"recovery_target_{k}".rstrip("_"): f"'{v}'" for k, v in settings.items()}
    conf |= {"restore_command": f"'cp {fork.wal}/%f %p'", "recovery_target_action": "'pause'"}
    c = PgCluster.from_backup(
        fork.primary.version, fork.backup, fork.primary.base, name=cluster_name, conf=conf,
        signal="recovery",
    )  # fmt: skip

    def fatal() -> str | None:
        lines = c.log_path.read_text().splitlines()
        return next((ln for ln in lines if "FATAL:" in ln), None)

    def paused_or_dead() -> bool:
        if fatal() is not None:
            return not (c.datadir / "postmaster.pid").exists()
        try:
            return c.psql("SELECT pg_get_wal_replay_pause_state()") == "paused"
        except RuntimeError:  # not accepting connections yet, or gone
            return False

    try:
        c.start(check=False)  # may succeed and then die at the end of recovery
        wait_until(paused_or_dead, what=f"recovery to pause or fail ({settings})")
        return fatal() or c.psql("SELECT pg_last_wal_replay_lsn()")
    finally:
        c.running = True
        c.destroy()


def test_replays_across_a_promotion_along_the_latest_timeline(forked) -> None:  # type: ignore[no-untyped-def]
    wal, end2 = forked.wal, forked.end2
    # latest: timeline 1 up to the switch point, then timeline 2's copy of the
    # switch segment and after. Reading timeline 1's copy there would decode
    # the old primary's divergent records and fail the prev-links that follow.
    status = _replay(wal)
    assert (status.replay_lsn, status.timeline, status.state) == (end2, 2, "ended")
    assert status.error is None


@pytest.mark.parametrize("timeline", ["current", "1"])
def test_replays_the_old_branch_when_asked(forked, timeline: str) -> None:  # type: ignore[no-untyped-def]
    status = _replay(forked.wal, target=RecoveryTarget.from_settings(timeline=timeline))
    assert (status.replay_lsn, status.timeline) == (forked.end1, 1)


@pytest.mark.parametrize(
    ("name", "timeline"),
    [("on_tl2", "latest"), ("on_tl1", "1"), ("on_tl1", "latest"), ("on_tl2", "1")],
)
def test_timeline_and_target_stop_where_a_real_recovery_does(forked, name, timeline) -> None:  # type: ignore[no-untyped-def]
    """The restore point of each branch is reached only along its own timeline."""
    target = RecoveryTarget.from_settings(name=name, timeline=timeline, action="promote")
    oracle = _recover(forked, f"rec_{name}_{timeline}", name=name, timeline=timeline)
    if "FATAL" in oracle:
        assert "recovery ended before configured recovery target was reached" in oracle
        with pytest.raises(RecoveryTargetUnreachable, match=oracle.split("FATAL:  ")[1]):
            _replay(forked.wal, target=target)
        return
    status = _replay(forked.wal, target=target)
    assert status.state == "promoted"
    assert status.replay_lsn == LSN.parse(oracle)
    assert status.target_reached is not None
    assert status.target_reached.name == name


def test_cli_summary_and_exit_status(forked) -> None:  # type: ignore[no-untyped-def]
    wal, end2 = forked.wal, forked.end2
    cmd = [sys.executable, "-m", "walstream.startup", "-D", str(wal), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["replay_lsn"] == str(end2)
    assert summary["timeline"] == 2
    assert summary["last_checkpoint"] is not None
    assert "starting replay at" in done.stderr


def test_a_damaged_byte_in_a_completed_segment_stops_replay_where_pg_waldump_does(
    pg_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cluster: PgCluster = pg_factory(15, wal_segsize_mb=1)
    cluster.psql("CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 30000)")
    end = _switch(cluster)
    wal = tmp_path / "wal"
    wal.mkdir()
    _copy_segments(cluster, wal, 1, end)
    victim = sorted(wal.iterdir())[-2]
    data = bytearray(victim.read_bytes())
    data[SEG // 2 + 100] ^= 0x01
    victim.write_bytes(bytes(data))
    first = sorted(wal.iterdir())[0]
    n = parse_segment_name(first.name, SEG)
    assert n is not None
    waldump = [str(cluster.program("pg_waldump")), "-p", str(wal), "-s", str(LSN(n.segno * SEG))]
    oracle = subprocess.run(waldump, capture_output=True, text=True, check=False)
    assert oracle.returncode != 0
    # pg_waldump: "error in WAL record at X/Y: <reason naming the bad record's LSN>"
    reason = oracle.stderr.strip().splitlines()[-1].split(": ", 3)[-1]
    assert reason.startswith("incorrect resource manager data checksum"), oracle.stderr
    with pytest.raises(StartupError) as caught:
        _replay(wal)
    assert reason in str(caught.value)
    assert victim.name in str(caught.value)
    # The CLI: exit 1, the reason, and a replay position that never passed the damage.
    cmd = [sys.executable, "-m", "walstream.startup", "-D", str(wal), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert reason in done.stderr
    summary = json.loads(done.stdout)
    bad = LSN.parse(reason.rsplit(" at ", 1)[1])
    assert LSN.parse(summary["replay_lsn"]) <= bad
    assert summary["state"] == "failed"


def test_follows_a_receiver_writing_the_directory(pg_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """--follow: replay keeps up with the receiver's growing .partial and new segments."""
    cluster: PgCluster = pg_factory(15, wal_segsize_mb=1)
    cluster.psql("CREATE TABLE t(x int)")
    wal = tmp_path / "wal"
    wal.mkdir()
    # Started on the empty directory: it must wait for the first segment, and
    # for that segment's first page (the receiver pre-pads it with zeros).
    service = StartupService(StartupOptions(wal, follow=True, poll_interval=0.05))
    result: list[object] = []
    loop = asyncio.new_event_loop()

    def run() -> None:
        try:
            result.append(loop.run_until_complete(service.run()))
        except Exception as e:  # reported by the assertions below
            result.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    receiver = subprocess.Popen(
        [sys.executable, "-m", "walstream.receiver", "-d", cluster.conninfo("trust_user"),
         "-D", str(wal), "--synchronous", "-s", "1"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for i in range(6):
            cluster.psql(f"INSERT INTO t SELECT generate_series(1, {4000 * (i + 1)})")
            if i % 2:
                cluster.psql("SELECT pg_switch_wal()")
        # Stop mid-segment: the last WAL is in a .partial the receiver writes in place.
        cluster.psql("INSERT INTO t VALUES (-1)")
        last = LSN.parse(cluster.psql("SELECT pg_current_wal_insert_lsn()"))
        try:
            wait_until(lambda: service.status().replay_lsn >= last,
                       what=f"replay to reach {last}")  # fmt: skip
        except TimeoutError as e:
            listing = sorted((p.name, p.stat().st_size) for p in wal.iterdir())
            raise AssertionError(f"{e}: {service.status()} {result} {listing}") from None
        status = service.status()
        assert status.error is None
        assert status.replay_lsn <= LSN.parse(cluster.psql("SELECT pg_current_wal_flush_lsn()"))
        assert any(p.name.endswith(".partial") for p in wal.iterdir())
        loop.call_soon_threadsafe(service.stop)
        thread.join(30)
        assert not thread.is_alive()
        assert isinstance(result[0], StartupStatus), result
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(service.stop)
            thread.join(30)
        receiver.terminate()
        receiver.communicate(timeout=30)


def test_cli_immediate_target_stops_at_the_backup_end_like_a_real_recovery(forked) -> None:  # type: ignore[no-untyped-def]
    label = (forked.backup / "backup_label").read_text()
    start = re.search(r"START WAL LOCATION: (\S+)", label)
    assert start is not None, label
    oracle = _recover(forked, "rec_immediate", **{"": "immediate"})
    cmd = [sys.executable, "-m", "walstream.startup", "-D", str(forked.wal), "--json",
           "--recovery-target", "immediate", "--backup-start", start.group(1),
           "--recovery-target-action", "shutdown"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["replay_lsn"] == oracle
    assert summary["state"] == "shut down"
    assert summary["target_reached"] == "recovery stopping after reaching consistency"


def test_pause_at_the_target_until_resumed(forked) -> None:  # type: ignore[no-untyped-def]
    """action pause: replay holds at the target; resume() ends recovery (PostgreSQL promotes)."""
    target = RecoveryTarget.from_settings(name="on_tl2")  # action defaults to pause
    service = StartupService(StartupOptions(forked.wal, target=target))

    async def run() -> tuple[StartupStatus, StartupStatus]:
        task = asyncio.create_task(service.run())
        while service.status().state != "paused":
            assert not task.done(), task
            await asyncio.sleep(0.02)
        paused = service.status()
        service.resume()
        return paused, await task

    paused, final = asyncio.run(run())
    assert paused.target_reached is not None
    assert paused.replay_lsn == paused.target_reached.end_lsn
    assert (final.state, final.replay_lsn) == ("promoted", paused.replay_lsn)


def test_cli_follow_stops_cleanly_on_sigterm(forked) -> None:  # type: ignore[no-untyped-def]
    cmd = [sys.executable, "-m", "walstream.startup", "-D", str(forked.wal), "--follow", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        # Following: it replays all there is, then says it waits for more.
        def caught_up() -> bool:
            return any("waiting for more WAL" in ln for ln in lines) or proc.poll() is not None

        wait_until(caught_up, what="replay to catch up")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        reader.join(30)
    assert proc.returncode == 0, lines
    summary = json.loads(out)
    assert summary["replay_lsn"] == str(forked.end2)
    assert summary["state"] == "waiting"


def test_replays_compressed_segments(forked, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A -Z gzip directory replays like the plain one (its last file still a .gz.partial)."""
    import gzip

    packed = tmp_path / "packed"
    packed.mkdir()
    files = sorted(p for p in forked.wal.iterdir() if not p.name.endswith(".history"))
    for path in files:
        suffix = ".gz.partial" if path == files[-1] else ".gz"
        (packed / (path.name + suffix)).write_bytes(gzip.compress(path.read_bytes(), 1))
    shutil.copy(forked.wal / "00000002.history", packed)
    status = _replay(packed)
    assert (status.replay_lsn, status.timeline) == (forked.end2, 2)


def test_reads_segments_in_bounded_pieces(forked, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Segments may be up to 1 GB: they are read a bounded piece at a time, same result."""
    import walstream.startup.service

    monkeypatch.setattr(walstream.startup.service, "_READ_CHUNK", 3 * 8192 + 100)
    status = _replay(forked.wal)
    assert (status.replay_lsn, status.timeline) == (forked.end2, 2)
