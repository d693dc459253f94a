"""The sender's DirectorySource over directories real receivers wrote from real servers.

Oracles: the servers' own pg_wal files (every byte served), the history file
the promoted server wrote, and pg_waldump (where the last whole record of a
.partial ends, where damage stops it). The directories are written by
walstream's receiver and by pg_receivewal (plain, gzip, and lz4 where the
build has it: Debian's 15), streaming from a standby that is promoted, so
they hold timeline 1 up to its switch point (its last segment a .partial),
timeline 2's history file and timeline 2's segments.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from walstream.lsn import LSN
from walstream.sender import source as source_module
from walstream.sender.source import DirectorySource, SegmentRemoved, SourceError
from walstream.storage.compression import Compression, make_compressor, read_wal_file
from walstream.storage.slots import SavedSlot, SlotStore
from walstream.wal.segment import parse_history, parse_segment_name, segment_name

from .conftest import require_version
from .pgcluster import PgCluster, wait_until
from .test_startup_service import _copy_segments, _switch
from .waldump_oracle import run_waldump

SEG = 1024 * 1024
PIECE = 128 * 1024  # what a walsender reads at a time


@dataclass
class Promoted:
    """Directories written by receivers across a promotion, and the two servers' WAL."""

    version: int
    old_primary: PgCluster  # timeline 1 (stopped)
    promoted: PgCluster  # timeline 2
    dirs: dict[str, Path]
    target: LSN  # every receiver had written at least this much of timeline 2
    followers: dict[str, _Follower]  # sources that followed the directories as they were written


class _Follower(threading.Thread):
    """A DirectorySource refreshed every few ms while a receiver writes the directory,
    as the sender's disk thread does: (timeline, end of WAL) each time either changes."""

    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.seen: list[tuple[int, LSN]] = []
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        source = None
        try:
            while True:
                halting = self.halt.is_set()  # then one last look, after the receiver's end
                if source is None:
                    try:
                        source = DirectorySource(self.directory)
                    except SourceError:  # nothing written yet
                        if halting:
                            return
                        self.halt.wait(0.01)
                        continue
                else:
                    source.refresh()
                now = (source.timeline(), source.end_of_wal())
                if not self.seen or self.seen[-1] != now:
                    self.seen.append(now)
                if halting:
                    return
                self.halt.wait(0.005)
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            if source is not None:
                source.close()


def _receivers(version: int, standby: PgCluster, base: Path) -> dict[str, list[str]]:
    conninfo = standby.conninfo("scram_user", "scrampass")
    common = ["-d", conninfo, "-s", "1"]
    pg_receivewal = str(standby.program("pg_receivewal"))
    commands = {
        "walstream": [sys.executable, "-m", "walstream.receiver", *common],
        "pg_receivewal": [pg_receivewal, *common],
        "pg_receivewal-gzip": [pg_receivewal, *common, "-Z", "gzip"],
    }
    if version == 15:  # the wheels' 16 and 18 are built without lz4
        commands["pg_receivewal-lz4"] = [pg_receivewal, *common, "-Z", "lz4"]
    for name, command in commands.items():
        (base / name).mkdir()
        # A slot kept in the directory from the start: the receivers must not mind it.
        SlotStore(base / name).save(SavedSlot("kept", LSN(0x1000000), xmin=734))
        command += ["-D", str(base / name)]
    return commands


@pytest.fixture(scope="module", params=[15, 16, 18], ids=["pg15", "pg16", "pg18"])
def promoted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Promoted]:
    """Built once per version; the tests read the directories (or copies of them)."""
    version: int = request.param
    require_version(version)
    base = tmp_path_factory.mktemp(f"source{version}")
    primary = PgCluster.create(version, wal_segsize_mb=1)
    try:
        primary.psql("CREATE TABLE t(x int, pad text)")
        standby = primary.make_standby()
        commands = _receivers(version, standby, base)
        procs = {
            n: subprocess.Popen(c, stderr=subprocess.PIPE, text=True) for n, c in commands.items()
        }
        followers = {kind: _Follower(base / kind) for kind in ("walstream", "pg_receivewal")}
        for follower in followers.values():
            follower.start()
        try:
            wait_until(
                lambda: standby.psql("SELECT count(*) FROM pg_stat_replication") == str(len(procs)),
                what="the receivers streaming from the standby",
            )
            for i in range(4):  # rows of 500 bytes: records of every size, segments switched
                rows = f"generate_series(1, {1500 * (i + 1)})"
                primary.psql(f"INSERT INTO t SELECT g, repeat('p', 500) FROM {rows} g")
                if i % 2:
                    primary.psql("SELECT pg_switch_wal()")
            standby.wait_for_replay(LSN.parse(primary.current_lsn()))
            primary.stop()
            standby.promote()
            wait_until(lambda: standby.psql("SELECT pg_is_in_recovery()") == "f", what="promotion")
            for i in range(3):
                rows = f"generate_series(1, {1200 * (i + 1)})"
                standby.psql(f"INSERT INTO t SELECT g, repeat('s', 700) FROM {rows} g")
                if i == 1:
                    standby.psql("SELECT pg_switch_wal()")
            # End mid-segment, after a large record and a small one.
            standby.psql("INSERT INTO t VALUES (0, repeat('x', 5000))")
            target = LSN.parse(standby.current_lsn())
            wait_until(
                lambda: standby.psql(
                    f"SELECT count(*) FROM pg_stat_replication WHERE write_lsn >= '{target}'"
                ) == str(len(procs)),
                what="every receiver on timeline 2 past the last insert",
            )  # fmt: skip
        finally:
            for proc in procs.values():
                proc.send_signal(signal.SIGINT)
            errors = {n: p.communicate(timeout=60)[1] for n, p in procs.items()}
            for follower in followers.values():
                follower.halt.set()
                follower.join(60)
        assert all(p.returncode == 0 for p in procs.values()), errors
        dirs = {n: base / n for n in commands}
        yield Promoted(version, primary, standby, dirs, target, followers)
    finally:
        primary.destroy()


def _read_all(source: DirectorySource, timeline: int, start: int, stop: int) -> bytes:
    """What a walsender would send of [start, stop): read() in 128 kB pieces, as it loops."""
    pieces = []
    pos = start
    while pos < stop:
        data = source.read(timeline, LSN(pos), min(PIECE, stop - pos))
        assert data, f"read({timeline}, {LSN(pos)}) returned nothing before {LSN(stop)}"
        assert (pos + len(data) - 1) // SEG == pos // SEG, "a read crossed a segment end"
        pieces.append(data)
        pos += len(data)
    return b"".join(pieces)


def _segments(directory: Path) -> list[tuple[int, int]]:
    return sorted(
        (n.segno, n.timeline)
        for p in directory.iterdir()
        if (n := parse_segment_name(p.name, SEG)) is not None
    )


def _last_record_end_per_pg_waldump(bindir: Path, wal: Path, timeline: int, start: LSN) -> LSN:
    """Where the last whole record pg_waldump finds from ``start`` ends.

    pg_waldump with ``-e E`` reads no byte at or past E, so it shows the
    last record exactly when E is at or after that record's end: the end is
    the smallest E (a MAXALIGNed position) for which it still does.
    """
    full = run_waldump(bindir, "-p", str(wal), "-t", str(timeline), "-s", str(start))
    assert full.records, full.stderr
    last = full.records[-1].lsn

    def shows_last(end: int) -> bool:
        dump = run_waldump(
            bindir, "-p", str(wal), "-t", str(timeline), "-s", str(start), "-e", str(LSN(end))
        )
        return bool(dump.records) and dump.records[-1].lsn == last

    lo, hi = int(last), int(last) + SEG  # shows_last(hi); not shows_last(lo)
    assert shows_last(hi)
    while hi - lo > 8:
        mid = (lo + hi) // 2 // 8 * 8
        if shows_last(mid):
            hi = mid
        else:
            lo = mid
    return LSN(hi)


def _as_pg_wal(directory: Path, dest: Path) -> Path:
    """The directory's files as pg_waldump reads them: decompressed, named complete, padded."""
    dest.mkdir()
    for p in directory.iterdir():
        name = parse_segment_name(p.name, SEG)
        if name is not None:
            data = read_wal_file(p)
            (dest / segment_name(name.timeline, name.segno, SEG)).write_bytes(
                data + bytes(SEG - len(data))
            )
    return dest


# -- every byte served, across the promotion --------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["walstream", "pg_receivewal", "pg_receivewal-gzip", "pg_receivewal-lz4"]
)
def test_every_byte_served_is_the_servers(promoted: Promoted, kind: str) -> None:
    if kind not in promoted.dirs:
        pytest.skip(f"pg_receivewal {promoted.version} of this build has no lz4")
    directory = promoted.dirs[kind]
    source = DirectorySource(directory)
    old_wal = promoted.old_primary.datadir / "pg_wal"
    new_wal = promoted.promoted.datadir / "pg_wal"
    sysid = promoted.promoted.psql("SELECT system_identifier FROM pg_control_system()")
    assert (source.seg_size, source.system_identifier) == (SEG, int(sysid))
    assert source.server_version == promoted.version * 10000
    assert source.timeline() == 2
    history = (new_wal / "00000002.history").read_bytes()
    assert source.history_file(2) == ("00000002.history", history)
    assert source.history(2) == parse_history(history)
    assert source.history(1) == []
    with pytest.raises(FileNotFoundError):
        source.history_file(3)
    switch = source.history(2)[0].switchpoint
    end = source.end_of_wal()
    flushed = LSN.parse(promoted.promoted.psql("SELECT pg_current_wal_flush_lsn()"))
    assert promoted.target <= end <= flushed
    assert any(
        p.name.startswith("00000001") and p.name.endswith(".partial") for p in directory.iterdir()
    )

    oldest = _segments(directory)[0][0]
    for segno in range(oldest, (end - 1) // SEG + 1):
        start, stop = segno * SEG, min((segno + 1) * SEG, end)
        got = _read_all(source, 2, start, stop)
        if segno < switch // SEG:
            expected = (old_wal / segment_name(1, segno, SEG)).read_bytes()
        else:  # the switch segment too: timeline 2's copy, timeline 1's bytes before the switch
            expected = (new_wal / segment_name(2, segno, SEG)).read_bytes()
        assert got == expected[: stop - start], f"segment {segno:X} differs from the server's"
    # Timeline 1 as a standby still on it asks for it: up to the switch point, not a byte more.
    switch_seg = switch - switch % SEG
    old = (old_wal / segment_name(1, switch // SEG, SEG)).read_bytes()
    assert _read_all(source, 1, switch_seg, switch) == old[: switch - switch_seg]
    assert source.read(1, switch, PIECE) == b""
    assert (
        source.read(1, LSN(switch - 8), PIECE) == old[switch - switch_seg - 8 : switch - switch_seg]
    )
    assert source.read(2, end, PIECE) == b""
    assert len(source.read(2, LSN(end - 8), PIECE)) == 8
    with pytest.raises(SourceError, match="not in the history"):
        source.read(3, LSN(oldest * SEG), PIECE)
    # Before the oldest segment: PostgreSQL's 58P01 words, the segment named on the timeline asked.
    with pytest.raises(SegmentRemoved) as removed:
        source.read(2, LSN(oldest * SEG - 8), PIECE)
    assert removed.value.segment == segment_name(2, oldest - 1, SEG)
    assert (
        str(removed.value)
        == f"requested WAL segment {segment_name(2, oldest - 1, SEG)} has already been removed"
    )
    assert not source.refresh()  # nothing new: the receivers are stopped
    source.close()
    # The slot kept in the directory survived the receivers, untouched.
    assert SlotStore(directory).load() == {"kept": SavedSlot("kept", LSN(0x1000000), xmin=734)}


@pytest.mark.parametrize("kind", ["walstream", "pg_receivewal"])
def test_a_follower_goes_over_to_the_new_timeline(promoted: Promoted, kind: str) -> None:
    """Refreshed while the receiver wrote: timeline 1 up to its switch point, then timeline 2
    once its history file came, ending where a source opened afterwards ends."""
    follower = promoted.followers[kind]
    assert not follower.is_alive()
    assert follower.error is None, repr(follower.error)
    seen = follower.seen
    switch = parse_history((promoted.dirs[kind] / "00000002.history").read_bytes())[0].switchpoint
    assert [t for t, _ in seen] == sorted(t for t, _ in seen)
    assert seen[0][0] == 1
    assert seen[-1] == (2, DirectorySource(promoted.dirs[kind]).end_of_wal())
    for timeline in (1, 2):
        ends = [end for t, end in seen if t == timeline]
        assert len(ends) > 3, f"timeline {timeline}: {ends}"
        assert ends == sorted(ends), f"the end went back on timeline {timeline}"
    assert max(end for t, end in seen if t == 1) <= switch
    assert any(end % SEG for t, end in seen if t == 2)


@pytest.mark.parametrize("kind", ["walstream", "pg_receivewal-gzip"])
def test_end_of_wal_is_where_pg_waldump_finds_the_last_record(
    promoted: Promoted, kind: str, tmp_path: Path
) -> None:
    directory = promoted.dirs[kind]
    source = DirectorySource(directory)
    end = source.end_of_wal()
    assert end % SEG, "the test wants the end inside a .partial"
    wal = _as_pg_wal(directory, tmp_path / "pg_wal")
    bindir = promoted.promoted.bindir
    assert end == _last_record_end_per_pg_waldump(bindir, wal, 2, LSN(end - end % SEG))


def test_a_hole_is_an_error_and_not_a_removal(promoted: Promoted, tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    shutil.copytree(promoted.dirs["walstream"], directory)
    segments = [s for s in _segments(directory) if s[1] == 1]
    victim = segments[len(segments) // 2]
    (directory / segment_name(victim[1], victim[0], SEG)).unlink()
    source = DirectorySource(directory)
    with pytest.raises(
        SourceError, match=f"WAL segment {segment_name(2, victim[0], SEG)} is missing"
    ):
        source.read(2, LSN(victim[0] * SEG), PIECE)
    assert source.read(2, LSN((victim[0] + 1) * SEG), PIECE)
    # Removing the oldest ones (a retention job) turns them into removals.
    for segno, tli in segments[: segments.index(victim)]:
        (directory / segment_name(tli, segno, SEG)).unlink()
    with pytest.raises(SegmentRemoved):
        source.read(2, LSN(segments[0][0] * SEG), PIECE)


def test_wal_of_two_systems_is_refused_naming_both_files(
    promoted: Promoted, pg_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    other: PgCluster = pg_factory(promoted.version, wal_segsize_mb=1)
    directory = tmp_path / "wal"
    shutil.copytree(promoted.dirs["pg_receivewal"], directory)
    theirs = sorted(
        p for p in (other.datadir / "pg_wal").iterdir() if parse_segment_name(p.name, SEG)
    )[0]
    stranger = segment_name(7, 1, SEG)  # a timeline of its own: nothing of ours is replaced
    shutil.copy(theirs, directory / stranger)
    with pytest.raises(SourceError) as caught:
        DirectorySource(directory)
    first = min(
        p.name
        for p in directory.iterdir()
        if parse_segment_name(p.name, SEG) and p.name != stranger
    )
    message = str(caught.value)
    assert "two database systems" in message, message
    assert stranger in message, message
    assert first in message, message


def test_a_damaged_byte_in_the_partial_stops_the_end_before_it(
    promoted: Promoted, tmp_path: Path
) -> None:
    directory = tmp_path / "wal"
    shutil.copytree(promoted.dirs["walstream"], directory)
    end = DirectorySource(directory).end_of_wal()
    partial = directory / (segment_name(2, end // SEG, SEG) + ".partial")
    bindir = promoted.promoted.bindir
    seg_start = LSN(end - end % SEG)
    dump = run_waldump(
        bindir,
        "-p",
        str(_as_pg_wal(directory, tmp_path / "before")),
        "-t",
        "2",
        "-s",
        str(seg_start),
    )
    # A record a few from the end whose header lies within its page (and not just after a
    # page header, where the end before it is the page's start): flip a byte of its CRC.
    victim = next(r for r in reversed(dump.records[:-3]) if 40 < r.lsn % 8192 <= 8192 - 24)
    data = bytearray(partial.read_bytes())
    data[victim.lsn - seg_start + 21] ^= 0x40
    partial.write_bytes(bytes(data))
    oracle = run_waldump(
        bindir,
        "-p",
        str(_as_pg_wal(directory, tmp_path / "after")),
        "-t",
        "2",
        "-s",
        str(seg_start),
    )
    assert oracle.error is not None, oracle.stderr
    assert "incorrect resource manager data checksum" in oracle.error, oracle.stderr
    assert oracle.records[-1].lsn < victim.lsn

    source = DirectorySource(directory)
    assert source.end_of_wal() == victim.lsn  # the end of the record before it
    assert not source.refresh()
    assert source.end_of_wal() == victim.lsn
    # The segment completed as it is (a receiver renames only whole segments):
    # the end would have to pass the damage, so the source refuses, naming file and LSN.
    partial.rename(partial.with_name(partial.name.removesuffix(".partial")))
    with pytest.raises(SourceError) as caught:
        source.refresh()
    message = str(caught.value)
    assert partial.name.removesuffix(".partial") in message, message
    assert str(victim.lsn) in message, message
    assert "checksum" in message
    assert source.end_of_wal() == victim.lsn


# -- following a receiver that writes the directory --------------------------------------------


@dataclass
class _Seen:
    end: LSN
    digest: bytes  # of what read() served of the end's segment, from its start to the end


def _observe(source: DirectorySource, seen: list[_Seen]) -> None:
    source.refresh()
    end = source.end_of_wal()
    if seen and end == seen[-1].end:
        return
    assert not seen or end > seen[-1].end, "the end of WAL went back"
    start = (end - 1) // SEG * SEG
    seen.append(_Seen(end, hashlib.sha256(_read_all(source, 1, start, end)).digest()))


@pytest.mark.parametrize("version", [15, 16, 18], ids=["pg15", "pg16", "pg18"])
def test_follows_a_partial_growing_under_load(pg_factory, tmp_path: Path, version: int) -> None:  # type: ignore[no-untyped-def]
    """end_of_wal advances through a .partial as receivers write it, only ever to a record's
    end, and what was served there never changes (so it was never zero padding)."""
    primary: PgCluster = pg_factory(version, wal_segsize_mb=1)
    primary.pgbench("-i", "-s", "2", "-q")
    conninfo = primary.conninfo("trust_user")
    kinds = {
        "walstream": [sys.executable, "-m", "walstream.receiver", "-d", conninfo, "-s", "1"],
        # --synchronous: pg_receivewal flushes its gzip stream only at sync points; without
        # them zlib holds the newest WAL until the segment ends (served once on disk, not before).
        "gzip": [
            str(primary.program("pg_receivewal")),
            *("-d", conninfo, "-s", "1", "-Z", "gzip", "--synchronous"),
        ],
    }
    procs = []
    for kind, command in kinds.items():
        (tmp_path / kind).mkdir()
        procs.append(
            subprocess.Popen(
                [*command, "-D", str(tmp_path / kind)], stderr=subprocess.PIPE, text=True
            )
        )
    seen: dict[str, list[_Seen]] = {kind: [] for kind in kinds}
    sources: dict[str, DirectorySource] = {}

    def ready() -> bool:
        try:
            sources.update({k: DirectorySource(tmp_path / k) for k in kinds if k not in sources})
        except SourceError:  # no page header yet
            return False
        return True

    try:
        wait_until(ready, what="WAL in both directories")
        load = threading.Thread(
            target=primary.pgbench, args=("-c", "2", "-j", "2", "-T", "3", "-n")
        )
        load.start()
        while load.is_alive():
            for kind, source in sources.items():
                _observe(source, seen[kind])
        load.join()
        target = LSN.parse(primary.current_lsn())

        def caught_up() -> bool:
            for kind, source in sources.items():
                _observe(source, seen[kind])
            return all(s.end_of_wal() >= target for s in sources.values())

        wait_until(caught_up, what=f"the end of WAL to reach {target}")
        primary.psql(
            "INSERT INTO pgbench_history VALUES (0, 0, 0, 0)"
        )  # a record after the last end
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        errors = [p.communicate(timeout=60)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors

    pg_wal = primary.datadir / "pg_wal"
    first = min(s.end for runs in seen.values() for s in runs)
    last = max(s.end for runs in seen.values() for s in runs)
    dump = run_waldump(primary.bindir, "-p", str(pg_wal), "-s", str(LSN(first - first % SEG)))
    starts = {int(r.lsn) for r in dump.records}  # a record ends where the next one starts
    assert max(starts) >= last, dump.stderr
    for kind, runs in seen.items():
        assert len(runs) > 10, f"{kind}: the end moved only {len(runs)} times"
        assert sum(1 for s in runs if s.end % SEG) > 5, f"{kind}: never followed a .partial"
        for s in runs:
            # A completed segment counts whole; otherwise the end is where a record starts
            # (after the page header when that is at a page's start).
            header = 24 if s.end % 8192 == 0 else 0
            whole = s.end % SEG == 0
            assert whole or {s.end, s.end + header} & starts, f"{kind}: {s.end} is not a record end"
            start = (s.end - 1) // SEG * SEG
            server = (pg_wal / segment_name(1, start // SEG, SEG)).read_bytes()[: s.end - start]
            assert s.digest == hashlib.sha256(server).digest(), (
                f"{kind}: served bytes before {s.end} changed"
            )
    for source in sources.values():
        source.close()


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_a_decoder_far_behind_jumps_near_the_written_end(
    promoted: Promoted, compression: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real WAL written into a .partial in pieces of every size, some far larger than the
    decoder may take in one refresh: the end is still always a record's end within what
    is written, and reaches the segment's end when it completes."""
    monkeypatch.setattr(source_module, "_JUMP_LAG", 64 * 1024)  # 1 MB segments: jump often
    monkeypatch.setattr(source_module, "_JUMP_BACK", 16 * 1024)
    old_wal = promoted.old_primary.datadir / "pg_wal"
    switch = parse_history((promoted.dirs["walstream"] / "00000002.history").read_bytes())[0]
    complete = [s for s, t in _segments(promoted.dirs["walstream"]) if t == 1]
    complete = [s for s in complete if s < switch.switchpoint.__index__() // SEG][-3:]
    assert len(complete) == 3, complete
    first, growing = complete[0], complete[1:]
    dump = run_waldump(
        promoted.old_primary.bindir, "-p", str(old_wal), "-s", str(LSN(first * SEG)),
        "-e", str(LSN((growing[-1] + 1) * SEG)),
    )  # fmt: skip
    starts = {int(r.lsn) for r in dump.records} | {(growing[-1] + 1) * SEG}
    directory = tmp_path / "wal"
    directory.mkdir()
    shutil.copy(old_wal / segment_name(1, first, SEG), directory)
    suffix = Compression(compression).suffix
    pieces = [5000, 150_000, 37, 300_000, 8192, 70_000, 1, 200_000, 4096, 2_000_000]
    source = DirectorySource(directory)
    assert source.end_of_wal() == (first + 1) * SEG
    anchors = set()
    for segno in growing:
        data = (old_wal / segment_name(1, segno, SEG)).read_bytes()
        name = directory / (segment_name(1, segno, SEG) + suffix)
        partial = name.with_name(name.name + ".partial")
        compressor = make_compressor(Compression(compression))
        with open(partial, "wb") as f:
            if compressor is None:
                f.write(bytes(SEG))  # pre-padded, as receivers write plain segments
                f.seek(0)
            else:
                f.write(compressor.start())
            written = 0
            for size in pieces * 3:
                chunk = data[written : written + size]
                f.write(
                    chunk if compressor is None else compressor.compress(chunk) + compressor.flush()
                )
                f.flush()
                written += len(chunk)
                source.refresh()
                end = source.end_of_wal()
                anchors.add(source._anchor % SEG)
                assert end <= segno * SEG + written, "served past what is written"
                assert end % SEG == 0 or {end, end + 24 * (end % 8192 == 0)} & starts, end
                if written == SEG:
                    break
            if compressor is not None:
                f.write(compressor.finish())
        partial.rename(name)
        source.refresh()
        assert source.end_of_wal() == (segno + 1) * SEG
    assert anchors - {0}, "the decoder never jumped"
    assert _read_all(source, 1, first * SEG, source.end_of_wal()) == b"".join(
        (old_wal / segment_name(1, s, SEG)).read_bytes() for s in complete
    )
    source.close()


def test_the_new_timeline_takes_over_the_switch_segment_step_by_step(
    promoted: Promoted, tmp_path: Path
) -> None:
    """The directory as a receiver fills it across the promotion: timeline 1 up to its switch
    point; its history file; timeline 2's copy of the switch segment, a little, then all."""
    source_dir = promoted.dirs["walstream"]
    history = (source_dir / "00000002.history").read_bytes()
    switch = parse_history(history)[0].switchpoint
    k = switch // SEG
    directory = tmp_path / "wal"
    directory.mkdir()
    for segno, tli in _segments(source_dir):
        if tli == 1:
            shutil.copy(
                source_dir / (segment_name(1, segno, SEG) + ".partial" * (segno == k)), directory
            )
    source = DirectorySource(directory)
    assert (source.timeline(), source.end_of_wal()) == (1, switch)  # timeline 1's last record

    (directory / "00000002.history").write_bytes(history)
    assert source.refresh()
    assert (source.timeline(), source.end_of_wal()) == (2, switch)  # from timeline 1's file
    assert source.read(2, switch, PIECE) == b""

    # Timeline 2's copy of the switch segment: timeline 1's bytes, then the first of its own.
    mine = read_wal_file(next(source_dir.glob(segment_name(2, k, SEG) + "*")))
    partial = directory / (segment_name(2, k, SEG) + ".partial")
    written = switch - k * SEG + 8192
    partial.write_bytes(mine[:written] + bytes(SEG - written))
    assert source.refresh()
    end = source.end_of_wal()
    assert switch < end <= k * SEG + written
    assert _read_all(source, 2, k * SEG, end) == mine[: end - k * SEG]
    assert _read_all(source, 1, k * SEG, switch) == mine[: switch - k * SEG]

    for segno, tli in _segments(source_dir):
        if tli == 2:
            for f in source_dir.glob(segment_name(2, segno, SEG) + "*"):
                shutil.copy(f, directory)
    if not list(source_dir.glob(segment_name(2, k, SEG) + ".partial")):
        partial.unlink()  # completed meanwhile: the completed file replaces it
    source.refresh()
    assert source.end_of_wal() == DirectorySource(source_dir).end_of_wal()
    source.close()


def test_an_abandoned_branch_past_the_fork_is_never_served(pg_factory) -> None:  # type: ignore[no-untyped-def]
    """Timeline 1 went on after timeline 2 forked from it inside a segment (an old primary
    that kept writing): its bytes past the switch point are never served, for 2 nor for 1."""
    primary: PgCluster = pg_factory(15, wal_segsize_mb=1)
    primary.psql("CREATE TABLE t(x int)")
    standby = primary.make_standby()
    primary.psql("INSERT INTO t SELECT generate_series(1, 3000)")
    standby.wait_for_replay(primary.current_lsn())
    standby.promote()
    wait_until(lambda: standby.psql("SELECT pg_is_in_recovery()") == "f", what="promotion")
    standby.psql("INSERT INTO t SELECT generate_series(1, 30000)")
    end2 = _switch(standby)
    primary.psql("INSERT INTO t SELECT generate_series(1, 5000)")  # the branch abandoned
    end1 = _switch(primary)
    wal = primary.base / "wal"
    wal.mkdir()
    _copy_segments(primary, wal, 1, end1)
    _copy_segments(standby, wal, 2, end2)
    shutil.copy(standby.datadir / "pg_wal" / "00000002.history", wal)

    source = DirectorySource(wal)
    assert (source.timeline(), source.end_of_wal()) == (2, end2)
    switch = source.history(2)[0].switchpoint
    k, off = divmod(switch, SEG)
    assert off >= 8, "the fork should be inside a segment"
    old = (wal / segment_name(1, k, SEG)).read_bytes()
    new = (wal / segment_name(2, k, SEG)).read_bytes()
    assert old[:off] == new[:off]
    assert old[off : off + 8192] != new[off : off + 8192], "the branches differ after the fork"
    for segno in range(_segments(wal)[0][0], end2 // SEG):
        tli = 1 if segno < k else 2
        expected = (wal / segment_name(tli, segno, SEG)).read_bytes()
        assert _read_all(source, 2, segno * SEG, (segno + 1) * SEG) == expected, f"{segno:X}"
    assert _read_all(source, 1, k * SEG, switch) == new[:off]
    assert source.read(1, switch, PIECE) == b""
    # Without timeline 2's copy of the switch segment, timeline 1's serves up to the
    # switch point only; what follows it on timeline 2 is missing, not timeline 1's.
    (wal / segment_name(2, k, SEG)).unlink()
    source = DirectorySource(wal)
    assert _read_all(source, 2, k * SEG, switch) == old[:off]
    with pytest.raises(SourceError, match=f"{segment_name(2, k, SEG)} is missing"):
        source.read(2, switch, PIECE)


@pytest.mark.parametrize("told", [False, True], ids=["listed", "writer-told"])
def test_segments_removed_before_they_were_followed_are_passed_over(
    tmp_path: Path, told: bool
) -> None:
    """A retention job removed segments this source had not followed yet (the relay's,
    when one receiver batch completes more segments than it keeps): they were complete, so
    the end goes on from the oldest segment there is. It used to stay before them for good.

    Built with tests/walbuild.py: what is tested is the following, not the WAL.
    """
    from .walbuild import WalWriter, noop

    writer = WalWriter(16)
    while writer.pos < writer.start + 4 * SEG + 5000:
        writer.add(noop(4000))
    segments = writer.segments()
    first = min(segments)
    directory = tmp_path / "wal"
    directory.mkdir()

    def put(segno: int, suffix: str = "") -> None:
        (directory / (writer.segment_name(segno) + suffix)).write_bytes(segments[segno])

    put(first)
    durable = [LSN((first + 1) * SEG)]
    source = DirectorySource(
        directory,
        rescan_interval=3600 if told else 0,  # told: no listing but the one the fix makes
        durable=(lambda: durable[0]) if told else None,
    )
    assert source.end_of_wal() == (first + 1) * SEG
    for segno in range(first + 1, first + 4):
        put(segno)
    put(first + 4, ".partial")
    for segno in range(first, first + 2):
        (directory / writer.segment_name(segno)).unlink()
    durable[0] = LSN(writer.pos)
    source.refresh()
    assert source.end_of_wal() == writer.pos
    with pytest.raises(SegmentRemoved):
        source.read(1, LSN((first + 1) * SEG), PIECE)
    assert source.read(1, LSN((first + 2) * SEG), PIECE) == segments[first + 2][:PIECE]
    source.close()
