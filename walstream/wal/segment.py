"""WAL segment and timeline-history file names, and history file contents.

Pure functions shared by the receiver, startup and sender roles. The naming
is PostgreSQL's ``XLogFileName``: ``%08X%08X%08X`` of the timeline, the
segment number divided by segments-per-xlogid (``2**32 // seg_size``) and its
remainder, so the split depends on the segment size.

Errors: :class:`HistoryFileError`, a history file PostgreSQL would refuse.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final

from walstream.errors import Error
from walstream.lsn import LSN

__all__ = [
    "COMPRESSION_SUFFIXES",
    "LONG_PAGE_HEADER_SIZE",
    "HistoryEntry",
    "LongPageHeader",
    "SegmentName",
    "TimelineSpan",
    "expected_timelines",
    "history_file_name",
    "history_timeline",
    "is_segment_file_name",
    "parse_history",
    "parse_segment_name",
    "parse_size_setting",
    "segment_name",
    "segment_start",
    "segno_of",
    "timeline_of",
    "timelines_for_segment",
]

MIN_SEG_SIZE: Final = 1024 * 1024
MAX_SEG_SIZE: Final = 1024 * 1024 * 1024
COMPRESSION_SUFFIXES: Final = ("", ".gz", ".lz4", ".zst")

_SEGMENT_RE: Final = re.compile(
    r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.gz|\.lz4|\.zst)?(\.partial)?"
)
_HISTORY_RE: Final = re.compile(r"([0-9A-F]{8})\.history")
_SIZE_RE: Final = re.compile(r"(\d+)\s*(kB|MB|GB)")
_UNITS: Final = {"kB": 1024, "MB": 1024 * 1024, "GB": 1024 * 1024 * 1024}


class HistoryFileError(Error):
    """A timeline history file that PostgreSQL would refuse."""


def check_seg_size(seg_size: int) -> int:
    if not (MIN_SEG_SIZE <= seg_size <= MAX_SEG_SIZE) or seg_size & (seg_size - 1):
        raise ValueError(
            f"WAL segment size must be a power of two between 1 MB and 1 GB, not {seg_size} bytes"
        )
    return seg_size


def parse_size_setting(text: str) -> int:
    """``SHOW wal_segment_size`` output ("16MB", "1GB") in bytes, validated."""
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f'could not parse WAL segment size "{text}"')
    return check_seg_size(int(m.group(1)) * _UNITS[m.group(2)])


def segno_of(lsn: int, seg_size: int) -> int:
    return lsn // seg_size


def segment_start(lsn: int, seg_size: int) -> LSN:
    return LSN(lsn - lsn % seg_size)


def segment_name(timeline: int, segno: int, seg_size: int) -> str:
    per_id = 0x100000000 // seg_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


@dataclass(frozen=True, slots=True)
class SegmentName:
    timeline: int
    segno: int
    compression: str  # "", ".gz", ".lz4" or ".zst"
    partial: bool

    def file_name(self, seg_size: int) -> str:
        return (
            segment_name(self.timeline, self.segno, seg_size)
            + self.compression
            + (".partial" if self.partial else "")
        )


def is_segment_file_name(name: str, *, plain: bool = False) -> bool:
    """Whether ``name`` is a segment file's name; ``plain``: without suffixes (IsXLogFileName).

    Needs no segment size, so it serves to find the first file whose header
    tells the size.
    """
    m = _SEGMENT_RE.fullmatch(name)
    return m is not None and not (plain and (m.group(4) or m.group(5)))


def parse_segment_name(name: str, seg_size: int) -> SegmentName | None:
    """The parts of a segment file name as pg_receivewal writes them, or None."""
    m = _SEGMENT_RE.fullmatch(name)
    if m is None:
        return None
    tli, log_id, seg = (int(g, 16) for g in m.group(1, 2, 3))
    per_id = 0x100000000 // seg_size
    if tli == 0 or seg >= per_id:
        return None
    return SegmentName(tli, log_id * per_id + seg, m.group(4) or "", m.group(5) is not None)


def history_file_name(timeline: int) -> str:
    return f"{timeline:08X}.history"


def history_timeline(name: str) -> int | None:
    """The timeline a ``%08X.history`` file name is for, or None for any other name."""
    m = _HISTORY_RE.fullmatch(name)
    return int(m.group(1), 16) if m is not None else None


LONG_PAGE_HEADER_SIZE: Final = 40  # SizeOfXLogLongPHD
_LONG_PAGE_HEADER: Final = struct.Struct("<HHIQIxxxxQII")
_XLP_LONG_HEADER: Final = 0x0002


@dataclass(frozen=True, slots=True)
class LongPageHeader:
    """XLogLongPageHeaderData, the header of a segment's first page.

    What a file says about itself without decoding any record: the page
    magic (hence the PostgreSQL major version that wrote it), the timeline,
    the system identifier and the segment size. The decoder checks these
    inline, page by page; everything else that looks at a file reads them here.
    """

    magic: int
    info: int
    timeline: int
    pageaddr: LSN
    system_identifier: int
    seg_size: int
    xlog_blcksz: int

    @property
    def is_long(self) -> bool:
        """The page says it has a long header (XLP_LONG_HEADER): the fields past 24 are real."""
        return bool(self.info & _XLP_LONG_HEADER)

    @classmethod
    def parse(cls, head: bytes | bytearray | memoryview) -> LongPageHeader | None:
        """The fields at the start of ``head``, unchecked (as pg_waldump reads them); None if short.

        Callers decide what they trust: a receiver's newest ``.partial`` may
        still be all zeros, and pg_waldump takes xlp_seg_size as it finds it.
        """
        if len(head) < LONG_PAGE_HEADER_SIZE:
            return None
        magic, info, tli, addr, _rem, sysid, seg_size, blcksz = _LONG_PAGE_HEADER.unpack_from(head)
        return cls(magic, info, tli, LSN(addr), sysid, seg_size, blcksz)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One line of a history file: ``parent_tli`` ended at ``switchpoint``."""

    parent_tli: int
    switchpoint: LSN
    reason: str


def parse_history(content: bytes) -> list[HistoryEntry]:
    """Parse a ``%08X.history`` file with PostgreSQL's rules (readTimeLineHistory)."""
    try:
        text = content.decode()
    except UnicodeDecodeError as e:
        raise HistoryFileError(f"invalid data in history file: {e}") from None
    entries: list[HistoryEntry] = []
    for line in text.splitlines():
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split("\t")
        if len(fields) < 2:
            fields = stripped.split(None, 2)
        if len(fields) < 2:
            raise HistoryFileError(
                f"syntax error in history file: {line!r}\n"
                "Expected a write-ahead log switchpoint location."
            )
        try:
            tli = int(fields[0])
            switchpoint = LSN.parse(fields[1])
        except ValueError:
            raise HistoryFileError(f"syntax error in history file: {line!r}") from None
        if entries and tli <= entries[-1].parent_tli:
            raise HistoryFileError(
                "invalid data in history file: timeline IDs must be in increasing sequence"
            )
        entries.append(HistoryEntry(tli, switchpoint, fields[2].strip() if len(fields) > 2 else ""))
    return entries


def timeline_of(lsn: int, history: list[HistoryEntry], current_tli: int) -> int:
    """Which timeline of ``history`` (ending in ``current_tli``) holds ``lsn``."""
    for entry in history:
        if lsn < entry.switchpoint:
            return entry.parent_tli
    return current_tli


@dataclass(frozen=True, slots=True)
class TimelineSpan:
    """A timeline of a history and the WAL range it covers: [begin, end), end None if open."""

    timeline: int
    begin: LSN
    end: LSN | None


def expected_timelines(target_tli: int, history: list[HistoryEntry]) -> list[TimelineSpan]:
    """The timelines recovery to ``target_tli`` passes through, newest first.

    ``history`` is the target's history file (empty for timeline 1). This is
    PostgreSQL's expectedTLEs: WAL below a switch point belongs to the parent.
    """
    spans = [TimelineSpan(target_tli, history[-1].switchpoint if history else LSN(0), None)]
    for i in range(len(history) - 1, -1, -1):
        begin = history[i - 1].switchpoint if i else LSN(0)
        spans.append(TimelineSpan(history[i].parent_tli, begin, history[i].switchpoint))
    return spans


def timelines_for_segment(segno: int, spans: list[TimelineSpan], seg_size: int) -> list[int]:
    """Which timelines' files may hold segment ``segno``, in the order to try them.

    As XLogFileReadAnyTLI: the newest timeline that begins at or before the
    segment first, so the segment holding a switch point is read from the
    child timeline's file (its bytes before the switch are the parent's). A
    parent's file is never read past the segment of its switch point: what
    it holds there is WAL of an abandoned branch.
    """
    return [
        s.timeline
        for s in spans
        if s.begin // seg_size <= segno and (s.end is None or segno <= s.end // seg_size)
    ]
