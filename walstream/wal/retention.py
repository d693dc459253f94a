"""Which WAL segments a directory may drop: wal_keep_size, slots, clients, hooks and timelines.

The relay's directory is bounded as a primary's pg_wal is. This module is
the decision, sans-IO: segment numbers, positions and histories in, the
segments that may go out. :mod:`walstream.storage.retention` scans the
directory, asks here, and unlinks.

It lives in ``wal/`` because it is arithmetic on segment numbers and
timeline histories (this layer's vocabulary, next to
:func:`~walstream.wal.segment.expected_timelines`), with no file in it: the
import rules then keep it free of I/O, and the relay, the sender (what is
the oldest segment still served?) and the tests can ask it without a disk.

PostgreSQL's rules, from xlog.c, and where walstream departs from them:

* **KeepLogSeg**: the oldest segment kept is the newest position's segment,
  lowered to the oldest slot's ``restart_lsn`` (slots that reserved no WAL,
  restart_lsn 0, hold nothing: XLogGetReplicationSlotMinimumLSN ignores
  them; a slot at or past the newest position lowers nothing), then lowered
  so that ``wal_keep_size`` of segments stay behind the newest position,
  counted in whole segments rounded down (XLogMBVarToSegs). PostgreSQL
  clamps that at segment 1, because segment 0 never holds WAL there; this
  clamps at 0, which removes nothing more.
* **RemoveOldXlogFiles**: every segment file older than that, on any
  timeline (the timeline part of the name is ignored, so that no parent
  timeline's segment goes early), is removed, each only if archived
  (XLogArchiveCheckDone; here: its ``--on-segment-complete`` hook succeeded),
  each independently of the others.
* **RemoveNonParentXlogFiles**: segments of an older timeline past the
  segment where it ended in the newest timeline's history (its switch
  segment) are WAL of an abandoned branch: removed, whatever their age,
  once archived. walstream goes one step further for a timeline that is not
  in the newest timeline's history at all: none of its files is on the way
  to the newest timeline (a walsender refuses to stream a timeline that is
  not in its history), so all may go.

Where walstream keeps more than PostgreSQL:

* the segment holding the newest WAL byte is never removed, whatever the
  keep size: it is where the receiver resumes (PostgreSQL's equivalent, the
  redo segment, is likewise never removed);
* a connected client's sent position keeps its segment and every later one,
  as a slot would (a primary's walsender fails with "requested WAL segment
  ... has already been removed" instead: a connected standby of the relay
  is never cut off, only one that comes back too late);
* a ``.partial`` (the segment being written, or an old timeline's last
  one) and any file of a timeline newer than the newest known one are never
  removed; history files are not segments and never reach this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from walstream.lsn import LSN
from walstream.wal.segment import HistoryEntry, TimelineSpan, expected_timelines

__all__ = ["PresentSegment", "RetentionPolicy", "keep_horizon", "removable_segments"]


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How much WAL to keep behind the newest position, and whether hooks must succeed first.

    ``keep_size`` is in bytes (``--wal-keep-size`` is in MB, as PostgreSQL's
    wal_keep_size); it is counted in whole segments, rounded down.
    ``require_archived``: segment-complete hooks are configured, so a
    segment goes only after its hook succeeded.
    """

    keep_size: int
    require_archived: bool = False

    def __post_init__(self) -> None:
        if self.keep_size < 0:
            raise ValueError(f"the WAL keep size must be 0 or more, not {self.keep_size} bytes")

    def keep_segments(self, seg_size: int) -> int:
        """wal_keep_size in segments, rounded down as XLogMBVarToSegs does."""
        return self.keep_size // seg_size


@dataclass(frozen=True, slots=True)
class PresentSegment:
    """One segment file in the directory, as the decision sees it.

    ``name`` is the caller's own key (the storage layer's file name); the
    decision returns the same objects it was given.
    """

    timeline: int
    segno: int
    complete: bool  # renamed from .partial: its last byte is written and durable
    archived: bool = False  # its segment-complete hook succeeded
    name: str = ""


def keep_horizon(
    seg_size: int,
    newest: int,
    keep_segments: int,
    *,
    slots: Iterable[int] = (),
    clients: Iterable[int] = (),
) -> int:
    """The oldest segment number that must stay (KeepLogSeg, plus the resume point and clients).

    ``newest`` is the end of the newest WAL (the relay's flush position);
    ``slots`` are the slots' restart_lsns (0: reserves nothing);
    ``clients`` the connected clients' sent positions.
    """
    current = newest // seg_size
    horizon = current
    # The segment holding the newest byte: where a restart resumes from.
    if newest > 0:
        horizon = (newest - 1) // seg_size
    reserved = [lsn for lsn in slots if lsn != 0]
    if reserved and min(reserved) < newest:
        horizon = min(horizon, min(reserved) // seg_size)
    horizon = min(horizon, max(0, current - keep_segments))
    for sent in clients:
        horizon = min(horizon, sent // seg_size)
    return horizon


def _last_segment_on_path(spans: Sequence[TimelineSpan], seg_size: int) -> dict[int, int | None]:
    """For each timeline of the newest one's history, its last segment on the way (None: open).

    The segment holding the byte before the switch point, as
    RemoveNonParentXlogFiles's XLByteToPrevSeg: a switch point on a segment
    boundary leaves the parent nothing in the child's first segment.
    """
    return {s.timeline: None if s.end is None else max(0, (s.end - 1) // seg_size) for s in spans}


def removable_segments(
    policy: RetentionPolicy,
    seg_size: int,
    *,
    newest: LSN | int,
    timeline: int,
    history: Sequence[HistoryEntry] | None,
    segments: Iterable[PresentSegment],
    slots: Iterable[int] = (),
    clients: Iterable[int] = (),
) -> list[PresentSegment]:
    """The segments that may be removed, oldest first.

    ``timeline`` is the newest timeline and ``history`` its parsed history
    file (empty for timeline 1; None if it cannot be read, which turns the
    abandoned-branch rule off and leaves PostgreSQL's age rule alone).
    """
    horizon = keep_horizon(
        seg_size, newest, policy.keep_segments(seg_size), slots=slots, clients=clients
    )
    path_end: dict[int, int | None] | None = None
    if history is not None:
        path_end = _last_segment_on_path(expected_timelines(timeline, list(history)), seg_size)
    chosen: list[PresentSegment] = []
    for seg in segments:
        if not seg.complete or (policy.require_archived and not seg.archived):
            continue
        if seg.timeline > timeline:
            continue  # newer than what we know of: never guess about it
        if seg.segno < horizon:
            chosen.append(seg)
        elif path_end is not None and seg.timeline < timeline:
            if seg.timeline not in path_end:
                chosen.append(seg)  # a branch the newest timeline does not descend from
            else:
                last = path_end[seg.timeline]
                if last is not None and seg.segno > last:
                    chosen.append(seg)  # past its switch segment: WAL of an abandoned branch
    chosen.sort(key=lambda s: (s.segno, s.timeline, s.name))
    return chosen
