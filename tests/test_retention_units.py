"""Retention without a server: KeepLogSeg's arithmetic, the timeline rules, and the removal on disk.

The decision is checked against PostgreSQL's examples and, with
Hypothesis, against an independent statement of what must stay: random
slots, clients, keep sizes, hooks and timeline histories never make it
remove a segment that is needed, and never let it keep a segment that
nothing needs. tests/test_retention_pg.py compares the boundary with a real
primary's checkpoint and runs it under a real stream.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walstream import LSN
from walstream.storage.retention import WalRetention
from walstream.wal.retention import (
    PresentSegment,
    RetentionPolicy,
    keep_horizon,
    removable_segments,
)
from walstream.wal.segment import HistoryEntry, history_file_name, segment_name

MB = 1024 * 1024
SEG16 = 16 * MB


# -- KeepLogSeg -------------------------------------------------------------------


def test_keep_size_counts_whole_segments_back_from_the_newest() -> None:
    newest = 0x5A3F1E28  # segment 0x5A of 16 MB segments
    assert keep_horizon(SEG16, newest, RetentionPolicy(1024 * MB).keep_segments(SEG16)) == 0x1A
    # 40 MB is 2.5 segments: rounded down, as XLogMBVarToSegs does.
    assert RetentionPolicy(40 * MB).keep_segments(SEG16) == 2
    assert keep_horizon(SEG16, newest, 2) == 0x58
    assert keep_horizon(SEG16, newest, 0) == 0x5A
    # More to keep than there is: nothing goes (PostgreSQL clamps at 1, whose
    # segment 0 never holds WAL).
    assert keep_horizon(SEG16, newest, 1000) == 0


def test_slots_hold_from_their_restart_lsn() -> None:
    newest = 0x5A3F1E28
    assert keep_horizon(SEG16, newest, 0, slots=[0x2A000000]) == 0x2A
    assert keep_horizon(SEG16, newest, 0, slots=[0x2AFFFFFF, 0x40000000]) == 0x2A
    # The keep size still applies where it keeps more than the slots.
    assert keep_horizon(SEG16, newest, 64, slots=[0x2A000000]) == 0x1A
    # A slot that reserved nothing (restart_lsn 0) holds nothing.
    assert keep_horizon(SEG16, newest, 0, slots=[0]) == 0x5A
    # A slot at or past the newest position lowers nothing (keep < recptr).
    assert keep_horizon(SEG16, newest, 0, slots=[newest, newest + SEG16]) == 0x5A


def test_clients_hold_from_their_sent_position() -> None:
    newest = 0x5A3F1E28
    assert keep_horizon(SEG16, newest, 2, clients=[0x30000010]) == 0x30
    assert keep_horizon(SEG16, newest, 2, clients=[0x5A000000]) == 0x58
    # A client sent up to a segment boundary needs the segment after it.
    assert keep_horizon(SEG16, newest, 0, clients=[0x30000000]) == 0x30


def test_the_segment_of_the_newest_byte_stays_even_with_no_keep_size() -> None:
    # Just completed segment 9: the newest position is the end of it.
    assert keep_horizon(SEG16, 10 * SEG16, 0) == 9
    assert keep_horizon(SEG16, 10 * SEG16, 1) == 9
    assert keep_horizon(SEG16, 10 * SEG16, 2) == 8
    assert keep_horizon(SEG16, 0, 0) == 0


def test_a_negative_keep_size_is_refused() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        RetentionPolicy(-1)


# -- which files ------------------------------------------------------------------


def _segs(*specs: tuple[int, int, bool, bool]) -> list[PresentSegment]:
    return [PresentSegment(t, s, c, a, f"{t}/{s}/{c}/{a}") for t, s, c, a in specs]


def _ids(chosen: list[PresentSegment]) -> list[tuple[int, int]]:
    return [(s.timeline, s.segno) for s in chosen]


def test_partials_unarchived_and_unknown_timelines_stay() -> None:
    policy = RetentionPolicy(0, require_archived=True)
    segments = _segs(
        (1, 1, True, True),  # goes
        (1, 2, False, True),  # a .partial
        (1, 3, True, False),  # its hook has not succeeded
        (3, 4, True, True),  # a timeline newer than the newest known
        (1, 5, True, True),  # goes: PostgreSQL checks each file on its own
        (1, 9, True, True),  # the newest byte's segment
    )
    chosen = removable_segments(
        policy, SEG16, newest=10 * SEG16, timeline=1, history=[], segments=segments
    )
    assert _ids(chosen) == [(1, 1), (1, 5)]
    # Without hooks the archived flag does not matter.
    chosen = removable_segments(
        RetentionPolicy(0), SEG16, newest=10 * SEG16, timeline=1, history=[], segments=segments
    )
    assert _ids(chosen) == [(1, 1), (1, 3), (1, 5)]


def test_an_abandoned_branch_goes_and_the_switch_segment_stays() -> None:
    # Timeline 2 forked from 1 in segment 10; the directory still holds
    # timeline 1 up to segment 14, streamed before the failover.
    history = [HistoryEntry(1, LSN(10 * SEG16 + 0x123), "")]
    segments = _segs(*[(1, s, True, True) for s in range(5, 15)], (1, 15, False, True))
    segments += _segs(*[(2, s, True, True) for s in range(10, 13)])
    chosen = removable_segments(
        RetentionPolicy(10 * SEG16),
        SEG16,
        newest=13 * SEG16,
        timeline=2,
        history=history,
        segments=segments,
    )
    # The keep size alone keeps everything from segment 3: only timeline 1
    # past its switch segment goes (not its .partial).
    assert _ids(chosen) == [(1, 11), (1, 12), (1, 13), (1, 14)]
    # Without the history only age counts, as RemoveOldXlogFiles.
    chosen = removable_segments(
        RetentionPolicy(10 * SEG16),
        SEG16,
        newest=13 * SEG16,
        timeline=2,
        history=None,
        segments=segments,
    )
    assert chosen == []


def test_a_switch_point_on_a_segment_boundary_leaves_the_parent_the_segment_before() -> None:
    history = [HistoryEntry(1, LSN(10 * SEG16), "")]
    segments = _segs((1, 9, True, True), (1, 10, True, True), (2, 10, True, True))
    chosen = removable_segments(
        RetentionPolicy(SEG16 * 100),
        SEG16,
        newest=11 * SEG16,
        timeline=2,
        history=history,
        segments=segments,
    )
    assert _ids(chosen) == [(1, 10)]  # XLByteToPrevSeg: segment 9 is timeline 1's last


def test_a_timeline_outside_the_newest_history_goes_whole() -> None:
    # 3 forked from 1; 2 was a branch of 1 that lost.
    history = [HistoryEntry(1, LSN(8 * SEG16 + 100), "")]
    segments = _segs((1, 8, True, True), (2, 8, True, True), (2, 9, True, True), (3, 8, True, True))
    chosen = removable_segments(
        RetentionPolicy(SEG16 * 100),
        SEG16,
        newest=9 * SEG16 + 5,
        timeline=3,
        history=history,
        segments=segments,
    )
    assert _ids(chosen) == [(2, 8), (2, 9)]


def test_old_timelines_go_by_age_like_the_newest() -> None:
    history = [HistoryEntry(1, LSN(4 * SEG16 + 100), ""), HistoryEntry(2, LSN(6 * SEG16 + 1), "")]
    segments = _segs(
        *[(1, s, True, True) for s in range(1, 5)],
        *[(2, s, True, True) for s in range(4, 7)],
        *[(3, s, True, True) for s in range(6, 12)],
    )
    chosen = removable_segments(
        RetentionPolicy(3 * SEG16),
        SEG16,
        newest=12 * SEG16,
        timeline=3,
        history=history,
        segments=segments,
    )
    assert _ids(chosen) == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 4), (2, 5), (2, 6)] + [
        (3, s) for s in range(6, 9)
    ]


# -- the property -----------------------------------------------------------------


@dataclass(frozen=True)
class Situation:
    seg_size: int
    timeline: int
    history: list[HistoryEntry] | None
    segments: list[PresentSegment]
    newest: int
    policy: RetentionPolicy
    slots: list[int]
    clients: list[int]


@st.composite
def _situations(draw: st.DrawFn) -> Situation:
    seg_size = draw(st.sampled_from([MB, 16 * MB]))

    def lsn(segments: int) -> st.SearchStrategy[int]:
        # Segment boundaries and their neighbours often: that is where off-by-ones live.
        offset = st.one_of(st.sampled_from([0, 1, seg_size - 1]), st.integers(0, seg_size - 1))
        return st.builds(lambda n, o: n * seg_size + o, st.integers(0, segments), offset)

    newest_tli = draw(st.integers(1, 5))
    # The newest timeline's ancestors, oldest first, with rising switch points.
    ancestors = sorted(draw(st.sets(st.integers(1, newest_tli - 1))) if newest_tli > 1 else [])
    points = sorted(draw(st.lists(lsn(40), min_size=len(ancestors), max_size=len(ancestors))))
    history = [HistoryEntry(t, LSN(p), "") for t, p in zip(ancestors, points, strict=True)]
    # Runs of segments per timeline, as a directory holds them, most complete and archived.
    segments: list[PresentSegment] = []
    for tli in range(1, newest_tli + 2):
        if draw(st.booleans()):
            low = draw(st.integers(0, 50))
            for segno in range(low, draw(st.integers(low, 50)) + 1):
                flags = [(True, True)] * 4 + [(True, False), (False, True), (False, False)]
                complete, archived = draw(st.sampled_from(flags))
                segments.append(PresentSegment(tli, segno, complete, archived))
    return Situation(
        seg_size=seg_size,
        timeline=newest_tli,
        history=history if draw(st.integers(0, 9)) else None,  # sometimes unreadable
        segments=segments,
        newest=draw(lsn(50)),
        policy=RetentionPolicy(draw(st.one_of(st.just(0), lsn(20))), draw(st.booleans())),
        slots=draw(st.lists(st.one_of(st.just(0), lsn(50)), max_size=3)),
        clients=draw(st.lists(lsn(50), max_size=3)),
    )


def _on_path(seg: PresentSegment, case: Situation) -> bool:
    """Whether a reader following the newest timeline may read this file (unknown: yes)."""
    if seg.timeline >= case.timeline or case.history is None:
        return True
    ends = {e.parent_tli: e.switchpoint for e in case.history}
    if seg.timeline not in ends:
        return False
    return seg.segno <= max(0, ends[seg.timeline] - 1) // case.seg_size


@settings(max_examples=600, deadline=None)
@given(_situations())
def test_never_removes_what_is_needed_and_keeps_nothing_needless(case: Situation) -> None:
    policy, seg_size, newest = case.policy, case.seg_size, case.newest
    chosen = removable_segments(
        policy,
        seg_size,
        newest=newest,
        timeline=case.timeline,
        history=case.history,
        segments=case.segments,
        slots=case.slots,
        clients=case.clients,
    )
    assert chosen == sorted(chosen, key=lambda s: (s.segno, s.timeline, s.name))
    keep_from = max(0, newest // seg_size - policy.keep_segments(seg_size))
    resume = (newest - 1) // seg_size if newest else 0
    positions = [p for p in case.slots if p] + case.clients
    for seg in chosen:
        assert seg.complete, "a .partial"
        assert seg.archived or not policy.require_archived, "before its hook succeeded"
        assert seg.timeline <= case.timeline, "a timeline newer than the newest"
        if seg.timeline == case.timeline:
            assert seg.segno < keep_from, "the newest timeline within the keep size"
            assert seg.segno != resume, "the newest byte's segment (the resume point)"
        if _on_path(seg, case):
            # A client may start anywhere in the keep size, on any timeline on the way.
            assert seg.segno < keep_from, "on the way to the newest timeline, within the keep size"
            for p in positions:
                assert seg.segno < p // seg_size, f"needed from {p} (a slot or client)"
    # Liveness: what nothing needs goes. Abandoned branches whatever holds
    # WAL; by age, with nothing holding WAL, all that is older than the keep
    # size (and than the newest byte's segment), so the directory stays bounded.
    for seg in case.segments:
        eligible = seg.complete and (seg.archived or not policy.require_archived)
        if not eligible or seg.timeline > case.timeline:
            continue
        if not _on_path(seg, case):
            assert seg in chosen, "an abandoned branch kept"
        if not positions and seg.segno < min(keep_from, resume):
            assert seg in chosen, "needed by nothing, yet kept"


# -- on disk ----------------------------------------------------------------------

SEG = MB


def _touch(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_bytes(b"x")


def _name(tli: int, segno: int) -> str:
    return segment_name(tli, segno, SEG)


def test_removes_oldest_first_and_leaves_everything_else(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    completed = [_name(1, s) for s in range(1, 9)]
    others = [
        _name(1, 9) + ".partial",
        _name(1, 2) + ".gz.partial",  # a stale partial: never removed
        _name(1, 3) + ".partial.tmp",  # a rewrite in progress: not a segment
        history_file_name(2) + ".tmp",
        "README",
    ]
    _touch(tmp_path, *completed, *others)
    (tmp_path / (_name(1, 0) + ".zst")).write_bytes(b"z")  # compressed ones count too
    (tmp_path / "subdir").mkdir()
    retention = WalRetention(tmp_path, RetentionPolicy(3 * SEG))
    caplog.set_level(logging.INFO, "walstream.storage.retention")
    removed = retention.remove_old_segments(SEG, newest=LSN(9 * SEG + 200), timeline=1)
    expect = [_name(1, 0) + ".zst", *completed[:5]]  # keep segments 6, 7, 8 (and 9's partial)
    assert [p.name for p in removed] == expect
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*completed[5:], *others, "subdir"])
    assert [r.getMessage() for r in caplog.records] == [
        f'removing write-ahead log file "{n}"' for n in expect
    ]
    assert retention.removed == 6
    assert retention.remove_old_segments(SEG, newest=LSN(9 * SEG + 200), timeline=1) == []


def test_history_files_stay_and_abandoned_segments_go(tmp_path: Path) -> None:
    (tmp_path / history_file_name(2)).write_text(
        f"1\t0/{10 * SEG + 0x40:X}\tno recovery target specified\n"
    )
    _touch(tmp_path, *[_name(1, s) for s in range(8, 13)], _name(1, 13) + ".partial")
    _touch(tmp_path, _name(2, 10), _name(2, 11))
    retention = WalRetention(tmp_path, RetentionPolicy(20 * SEG))
    removed = retention.remove_old_segments(SEG, newest=LSN(12 * SEG), timeline=2)
    assert [p.name for p in removed] == [_name(1, 11), _name(1, 12)]
    assert (tmp_path / history_file_name(2)).is_file()
    assert (tmp_path / _name(1, 10)).is_file()  # timeline 1's switch segment


def test_an_unreadable_history_removes_by_age_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / history_file_name(2)).write_text("this is not a history file\n")
    _touch(tmp_path, *[_name(1, s) for s in range(1, 13)], _name(2, 10), _name(2, 11))
    retention = WalRetention(tmp_path, RetentionPolicy(3 * SEG))
    caplog.set_level(logging.WARNING, "walstream.storage.retention")
    removed = retention.remove_old_segments(SEG, newest=LSN(12 * SEG), timeline=2)
    assert [p.name for p in removed] == [_name(1, s) for s in range(1, 9)]
    assert "could not read the history of timeline 2" in caplog.text
    assert "removing by age only" in caplog.text


def test_with_hooks_only_what_succeeded_goes(tmp_path: Path) -> None:
    names = [_name(1, s) for s in range(1, 8)]
    _touch(tmp_path, *names)
    retention = WalRetention(tmp_path, RetentionPolicy(SEG, require_archived=True))
    retention.hook_succeeded(tmp_path / names[0])
    retention.hook_succeeded(names[2])
    retention.hook_succeeded(names[6])  # newest: stays for the keep size
    removed = retention.remove_old_segments(SEG, newest=LSN(8 * SEG), timeline=1)
    assert [p.name for p in removed] == [names[0], names[2]]
    retention.hook_succeeded(names[1])
    removed = retention.remove_old_segments(SEG, newest=LSN(8 * SEG), timeline=1)
    assert [p.name for p in removed] == [names[1]]


def test_a_file_that_cannot_be_removed_is_logged_and_the_rest_go(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [_name(1, s) for s in range(1, 6)]
    _touch(tmp_path, *names)
    real_unlink = os.unlink
    fsyncs: list[int] = []
    real_fsync = os.fsync

    def unlink(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        if Path(path).name == names[1]:
            raise PermissionError(13, "Permission denied")
        real_unlink(path)

    def fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "fsync", fsync)
    caplog.set_level(logging.WARNING, "walstream.storage.retention")
    retention = WalRetention(tmp_path, RetentionPolicy(0))
    removed = retention.remove_old_segments(SEG, newest=LSN(5 * SEG + 1), timeline=1)
    assert [p.name for p in removed] == [names[0], names[2], names[3]]
    assert f'could not remove file "{tmp_path / names[1]}": Permission denied' in caplog.text
    assert len(fsyncs) == 1  # the directory, once for the batch
    monkeypatch.setattr(os, "unlink", real_unlink)
    removed = retention.remove_old_segments(SEG, newest=LSN(5 * SEG + 1), timeline=1)
    assert [p.name for p in removed] == [names[1]]  # tried again next time


def test_no_sync_does_not_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _touch(tmp_path, _name(1, 1), _name(1, 2))
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("fsync with sync off"))
    retention = WalRetention(tmp_path, RetentionPolicy(0), sync=False)
    assert len(retention.remove_old_segments(SEG, newest=LSN(3 * SEG + 1), timeline=1)) == 2
