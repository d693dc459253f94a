"""Retention against real primaries: KeepLogSeg is a checkpoint's, and a stream stays bounded.

A primary's checkpoint is the oracle for KeepLogSeg: with wal_keep_size
and physical slots set, the oldest segment left in its pg_wal after a
CHECKPOINT is the boundary :func:`keep_horizon` computes. Then a walstream
receiver streams pgbench from a real primary with the retention applied
after each completed segment (``after_segment_complete``), while a slot,
then a client, then nothing holds WAL, with one segment-complete hook
failing: the directory keeps what each needs and otherwise stays within
the keep size plus the segment being written.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from walstream import LSN
from walstream.receiver import ReceiverOptions, WalReceiver
from walstream.storage.retention import WalRetention
from walstream.wal.retention import RetentionPolicy, keep_horizon
from walstream.wal.segment import parse_segment_name

from .pgcluster import PgCluster

VERSIONS = [15, 16, 18]
IDS = [f"pg{v}" for v in VERSIONS]
MB = 1024 * 1024


# -- KeepLogSeg against a primary's checkpoint ------------------------------------


def _oldest_segment(cluster: PgCluster, seg_size: int) -> int:
    name = cluster.psql("SELECT min(name) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'")
    parsed = parse_segment_name(name, seg_size)
    assert parsed is not None, name
    return parsed.segno


def _checkpoint_boundary(
    cluster: PgCluster, seg_size: int, keep_size: int, slots: list[int], segments: int
) -> None:
    """Switch ``segments`` segments, CHECKPOINT; the oldest segment left is ours."""
    cluster.psql(
        f"DO $$ BEGIN FOR i IN 1..{segments} LOOP "
        "INSERT INTO gen VALUES (i); PERFORM pg_switch_wal(); END LOOP; END $$"
    )
    before = _oldest_segment(cluster, seg_size)
    cluster.psql("CHECKPOINT")
    redo, checkpoint = (
        LSN.parse(v)
        for v in cluster.psql("SELECT redo_lsn, checkpoint_lsn FROM pg_control_checkpoint()").split(
            "|"
        )
    )
    # The checkpoint record follows a segment switch: it and its end (KeepLogSeg's
    # recptr) are in the redo segment, a few hundred bytes in.
    assert redo // seg_size == checkpoint // seg_size
    keep = RetentionPolicy(keep_size).keep_segments(seg_size)
    expected = min(redo // seg_size, keep_horizon(seg_size, checkpoint, keep, slots=slots))
    assert before < expected, "nothing to remove: the comparison would prove nothing"
    assert _oldest_segment(cluster, seg_size) == expected, (keep_size, slots, redo, checkpoint)


def _reserve(cluster: PgCluster, slot: str) -> int:
    cluster.psql(f"SELECT pg_create_physical_replication_slot('{slot}', true)")
    return int(
        LSN.parse(
            cluster.psql(f"SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'")
        )
    )


@pytest.mark.parametrize("version", VERSIONS, ids=IDS)
def test_the_keep_boundary_is_a_primarys_checkpoint(
    pg_factory: Callable[..., PgCluster], version: int
) -> None:
    seg = 2 * MB
    cluster = pg_factory(version, wal_segsize_mb=2, conf={"wal_keep_size": "'5MB'"})
    cluster.psql("CREATE TABLE gen(x int)")
    # 5 MB of 2 MB segments: two kept, rounded down as XLogMBVarToSegs.
    _checkpoint_boundary(cluster, seg, 5 * MB, [], segments=8)
    # A slot holds from its restart_lsn, further back than the keep size.
    held = _reserve(cluster, "held")
    _checkpoint_boundary(cluster, seg, 5 * MB, [held], segments=6)
    # A slot that reserved nothing (restart_lsn NULL, our 0) holds nothing;
    # the keep size alone counts again once the other slot is dropped. The
    # restart applies the new size to the checkpointer, with no reload to race.
    cluster.psql("SELECT pg_drop_replication_slot('held')")
    cluster.psql("SELECT pg_create_physical_replication_slot('unreserved', false)")
    cluster.set_conf(wal_keep_size="24MB")
    cluster.restart()
    _checkpoint_boundary(cluster, seg, 24 * MB, [0], segments=14)
    # A slot newer than the keep size's boundary lowers nothing.
    late = _reserve(cluster, "late")
    _checkpoint_boundary(cluster, seg, 24 * MB, [0, late], segments=3)


# -- a bounded directory under a real stream --------------------------------------

KEEP = 4  # segments; the keep size is 4.5 MB, rounded down to 4 segments of 1 MB


@dataclass(frozen=True)
class Pass:
    """One retention pass, after segment ``segno`` completed."""

    segno: int
    slot: int | None
    client: int | None
    before: frozenset[int]  # complete segments present before the pass
    after: frozenset[int]
    partials: int  # .partial files present before the pass
    removed: tuple[str, ...]


def _segments(directory: Path) -> tuple[frozenset[int], int]:
    complete, partials = set(), 0
    for p in directory.iterdir():
        name = parse_segment_name(p.name, MB)
        if name is None:
            continue
        if name.partial:
            partials += 1
        else:
            complete.add(name.segno)
    return frozenset(complete), partials


@pytest.mark.parametrize("version", VERSIONS, ids=IDS)
async def test_a_streamed_directory_stays_bounded_and_keeps_what_is_held(
    pg_factory: Callable[..., PgCluster], tmp_path: Path, version: int
) -> None:
    cluster = pg_factory(version, wal_segsize_mb=1)
    retention = WalRetention(tmp_path, RetentionPolicy(KEEP * MB + MB // 2, require_archived=True))
    lock = threading.Lock()
    holds: dict[str, LSN | None] = {"slot": None, "client": None}  # set by the test
    passes: list[Pass] = []
    failed_hook: list[str] = []  # the one segment whose hook fails
    phase = {"hooks fail": False}

    def after_segment(path: Path, timeline: int, segno: int) -> None:
        # In the receiver's disk thread: what the relay will do.
        with lock:
            slot, client = holds["slot"], holds["client"]
        before, partials = _segments(tmp_path)
        removed = retention.remove_old_segments(
            MB,
            newest=LSN((segno + 1) * MB),
            timeline=timeline,
            slots=[slot] if slot is not None else [],
            clients=[client] if client is not None else [],
        )
        after, _ = _segments(tmp_path)
        passes.append(
            Pass(segno, slot, client, before, after, partials, tuple(p.name for p in removed))
        )

    def hook(path: Path) -> None:
        # On the event loop, as the CLI's hooks report: the first one after
        # the holds are released fails, every other one succeeds.
        if phase["hooks fail"] and not failed_hook:
            failed_hook.append(path.name)
            return
        retention.hook_succeeded(path)

    receiver = WalReceiver(
        ReceiverOptions(
            directory=tmp_path,
            conninfo=cluster.conninfo("trust_user"),
            status_interval=1.0,
            after_segment_complete=after_segment,
            on_segment_complete=hook,
        )
    )
    # 1: a slot at the server's position holds everything streamed from then
    # on (the receiver starts at the beginning of that segment, or later).
    start = LSN.parse(cluster.current_lsn())
    holds["slot"] = start
    task = asyncio.create_task(receiver.run())

    async def until(what: str, predicate: Callable[[], bool]) -> None:
        for _ in range(1200):
            if predicate():
                return
            if task.done():
                task.result()  # the receiver failed: say why
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {receiver.status()}")

    async def load(*pgbench: str) -> None:
        # After a checkpoint, so that full-page images make WAL quickly.
        await asyncio.to_thread(cluster.psql, "CHECKPOINT")
        await asyncio.to_thread(cluster.pgbench, *pgbench)
        end = LSN.parse(await asyncio.to_thread(cluster.current_lsn))
        await until("the receiver to catch up", lambda: receiver.status().flush >= end // MB * MB)

    try:
        await until("streaming", lambda: receiver.status().state == "streaming")
        await load("-i", "-s", "2", "-q")
        # 2: the slot is gone; a client two segments behind holds from its position.
        client = LSN(receiver.status().flush - 2 * MB - 100)
        with lock:
            holds["slot"], holds["client"] = None, client
        await load("-c", "4", "-j", "2", "-t", "400", "-n")
        # 3: nothing holds WAL; one hook fails.
        with lock:
            holds["client"] = None
        phase["hooks fail"] = True
        await load("-c", "4", "-j", "2", "-t", "600", "-n")
    finally:
        receiver.stop()
        await asyncio.wait_for(task, 60)

    # Each pass says what held WAL when it ran.
    slot_phase = [p for p in passes if p.slot is not None]
    client_phase = [p for p in passes if p.client is not None]
    free = [p for p in passes if p.slot is None and p.client is None]
    assert passes == slot_phase + client_phase + free
    counts = (len(slot_phase), len(client_phase), len(free))
    assert counts[0] > 2 * KEEP, counts
    assert counts[1] >= 2, counts
    assert counts[2] > 2 * KEEP, counts
    first = min(slot_phase[0].after)
    assert first >= start // MB
    for p in slot_phase:  # the slot needs every segment from its restart_lsn
        assert p.removed == ()
        assert p.after == frozenset(range(first, p.segno + 1)), p
    for p in client_phase:  # the client needs its segment and every later one
        assert p.client is not None
        assert set(range(p.client // MB, p.segno + 1)) <= p.after, p
        assert min(p.after) == min(p.client // MB, p.segno + 1 - KEEP), p  # nothing more
    assert failed_hook, "no hook failed"
    victim = parse_segment_name(failed_hook[0], MB)
    assert victim is not None
    for i, p in enumerate(free):
        # Exactly the keep size: the segments before are all gone, oldest first.
        window = frozenset(range(p.segno + 1 - KEEP, p.segno + 1))
        assert p.after - {victim.segno} == window - {victim.segno}, p
        assert list(p.removed) == sorted(p.removed)
        if i > 0:  # from the second pass on, before it too: keep size plus one segment
            assert len(p.before - {victim.segno}) <= KEEP + 1, p
        assert p.partials == 0  # the next segment's file is opened after the pass
        if p.segno > victim.segno + KEEP:
            assert victim.segno in p.after, "removed although its hook failed"
    # At rest: the keep size and the segment being written (and the failed hook's).
    complete, partials = _segments(tmp_path)
    assert len(complete - {victim.segno}) == KEEP
    assert partials <= 1
    sizes = [p.stat().st_size for p in tmp_path.iterdir() if p.name != failed_hook[0]]  # noqa: ASYNC240
    assert sum(sizes) <= KEEP * MB + MB // 2 + MB
    assert retention.removed == sum(len(p.removed) for p in passes)


@pytest.mark.parametrize("version", VERSIONS, ids=IDS)
async def test_after_a_promotion_the_old_timeline_goes_by_age_but_its_last_segment_stays(
    pg_factory: Callable[..., PgCluster],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    version: int,
) -> None:
    """Streaming from a standby that is promoted: the history file and the old .partial stay.

    A client still on timeline 1 holds its segments up to the switch; once it
    is gone, timeline 1's completed segments go by age like any others.
    """
    caplog.set_level(logging.INFO, "walstream.storage.retention")
    primary = pg_factory(version, wal_segsize_mb=1)
    primary.psql("CREATE TABLE t(x int, pad text)")
    standby = primary.make_standby()
    retention = WalRetention(tmp_path, RetentionPolicy(2 * MB))
    client: list[LSN] = []  # a client's sent position, while it is connected

    def after_segment(path: Path, timeline: int, segno: int) -> None:
        retention.remove_old_segments(
            MB, newest=LSN((segno + 1) * MB), timeline=timeline, clients=list(client)
        )

    receiver = WalReceiver(
        ReceiverOptions(
            directory=tmp_path,
            conninfo=standby.conninfo("trust_user"),
            status_interval=1.0,
            after_segment_complete=after_segment,
        )
    )
    task = asyncio.create_task(receiver.run())

    async def until(what: str, predicate: Callable[[], bool]) -> None:
        for _ in range(1200):
            if predicate():
                return
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {receiver.status()}")

    async def write(cluster: PgCluster, times: int) -> LSN:
        for _ in range(times):  # about 1.2 MB each
            sql = "INSERT INTO t SELECT g, repeat('w', 500) FROM generate_series(1, 2000) g"
            await asyncio.to_thread(cluster.psql, sql)
        return LSN.parse(await asyncio.to_thread(cluster.current_lsn))

    def files() -> set[str]:
        return {p.name for p in tmp_path.iterdir()}

    try:
        await until("streaming", lambda: receiver.status().state == "streaming")
        # A client connected from here on, that does not move.
        client_at = LSN.parse(await asyncio.to_thread(primary.current_lsn))
        client.append(client_at)
        end = await write(primary, 6)
        await until("timeline 1 received", lambda: receiver.status().flush >= end // MB * MB)
        await asyncio.to_thread(standby.wait_for_replay, end)
        await asyncio.to_thread(primary.stop)
        await asyncio.to_thread(standby.promote)
        end = await write(standby, 6)
        await until("timeline 2 received", lambda: receiver.status().timeline == 2)
        await until("caught up on 2", lambda: receiver.status().flush >= end // MB * MB)
        history = (tmp_path / "00000002.history").read_text()
        switch = LSN.parse(history.split("\t")[1])
        held = set(files())
        client.clear()  # the client is gone: timeline 1 is old WAL like any other
        end = await write(standby, 4)
        await until("more of 2 received", lambda: receiver.status().flush >= end // MB * MB)
    finally:
        receiver.stop()
        await asyncio.wait_for(task, 60)

    def name(tli: int, segno: int) -> str:
        return f"{tli:08X}{segno >> 12:08X}{segno & 0xFFF:08X}"

    last_of_1 = switch // MB
    # While the client was there: timeline 1 from its position to the switch.
    assert {name(1, s) for s in range(client_at // MB, last_of_1)} <= held, held
    assert name(1, last_of_1) + ".partial" in held
    # Afterwards: no completed segment of timeline 1 (all older than the keep
    # size now), but its last segment and the history file stay.
    now = files()
    assert not [n for n in now if n.startswith("00000001") and len(n) == 24], now
    assert name(1, last_of_1) + ".partial" in now
    assert "00000002.history" in now
    completed = sorted(n for n in now if n.startswith("00000002") and len(n) == 24)
    newest = int(completed[-1][16:], 16) + (int(completed[-1][8:16], 16) << 12)
    assert completed == [name(2, newest - 1), name(2, newest)]
    # The receiver's history file was read (else only age would have counted).
    assert "could not read the history" not in caplog.text
    assert f'removing write-ahead log file "{name(1, last_of_1 - 1)}"' in caplog.text
