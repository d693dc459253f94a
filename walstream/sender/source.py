"""Where a walsender's WAL comes from: the interface, and a directory behind it.

The sender serves WAL from a :class:`WalSource`. :class:`DirectorySource`
is a walstream or pg_receivewal directory (completed segments, ``.partial``,
compressed ones, history files), possibly still being written by a receiver;
the relay will put a receiver in the same process behind the same
interface, with no files read back in between.

The interface is synchronous and does no waiting: the sender's shell asks
what is there (:meth:`WalSource.refresh` for a source that must look, as a
directory must), and is told of more by whoever writes it (the relay).

A source whose WAL is in files may also say where (:class:`RegionSource`):
a :class:`FileRegion` of a completed, uncompressed segment, which the shell
has the kernel send straight from the page cache (``os.sendfile``) instead
of reading it into Python first.

Errors: :class:`SegmentRemoved` (the requested WAL is no longer there, as
PostgreSQL's 58P01 words it), :class:`SourceError` (the directory cannot
be served: no WAL, a damaged completed segment, WAL of two systems, a
missing history file, a hole in the WAL).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from walstream.errors import Error
from walstream.lsn import LSN
from walstream.storage.reader import SegmentFile, WalReader
from walstream.wal.decoder import RecordStats, WalDecoder
from walstream.wal.rmgr import version_of_magic
from walstream.wal.segment import (
    COMPRESSION_SUFFIXES,
    MIN_SEG_SIZE,
    HistoryEntry,
    HistoryFileError,
    LongPageHeader,
    TimelineSpan,
    check_seg_size,
    expected_timelines,
    history_file_name,
    history_timeline,
    parse_segment_name,
    segment_name,
    timelines_for_segment,
)

__all__ = [
    "DirectorySource",
    "FileRegion",
    "RegionSource",
    "SegmentRemoved",
    "SourceError",
    "WalSource",
]

log = logging.getLogger("walstream.sender.source")

_PAGE: Final = 8192  # XLOG_BLCKSZ
_PAGE_HEADER: Final = 24  # SizeOfXLogShortPHD: a page never written is zeros here
# Decoding the tail of a .partial costs 10-25 ms per MB of small records
# (pgbench's: WalDecoder.scan_stats decodes and verifies 40-96 MB/s of them on
# this machine's 2 cores, 0.7-1 GB/s of pgbench -i's large ones; bench/source.py).
# So that a
# refresh stays within a few ms, a decoder more than _JUMP_LAG behind what a
# receiver wrote starts again _JUMP_BACK before its end; the bytes jumped over
# are trusted as completed segments are (see DirectorySource).
_JUMP_LAG: Final = 1024 * 1024
_JUMP_BACK: Final = 256 * 1024
_RECHECK_PIECE: Final = 64 * 1024  # fed at a time to re-check a stop in a segment just completed
_OPEN_SEGMENTS: Final = 16  # completed segments kept open for regions (clients at other places)


class SourceError(Error):
    """The source cannot be served (no WAL yet, damage, mixed systems); names what and where."""


class SegmentRemoved(Error):
    """The WAL asked for is older than the oldest segment there is."""

    def __init__(self, segment: str) -> None:
        super().__init__(f"requested WAL segment {segment} has already been removed")
        self.segment = segment


class WalSource(Protocol):
    """The WAL a walsender serves: one system, one segment size, timelines with their histories.

    Positions are LSNs. Only WAL that is really there and valid is ever
    returned: a source never reports an end position past the last byte it
    can return, and what it returns never changes afterwards.
    """

    @property
    def seg_size(self) -> int: ...

    @property
    def system_identifier(self) -> int: ...

    @property
    def server_version(self) -> int:
        """PG_VERSION_NUM of the PostgreSQL that wrote the WAL (from the page magic): 160000."""
        ...

    def refresh(self) -> bool:
        """Look for new WAL and timelines; True if anything changed. May block on disk."""
        ...

    def timeline(self) -> int:
        """The newest timeline (IDENTIFY_SYSTEM's)."""
        ...

    def end_of_wal(self) -> LSN:
        """The end of the valid WAL on the newest timeline (IDENTIFY_SYSTEM's xlogpos)."""
        ...

    def history(self, timeline: int) -> list[HistoryEntry]:
        """The parsed history of ``timeline`` (empty for 1); FileNotFoundError if unknown."""
        ...

    def history_file(self, timeline: int) -> tuple[str, bytes]:
        """TIMELINE_HISTORY's answer: the file name and its bytes; FileNotFoundError if none."""
        ...

    def read(self, timeline: int, start: LSN, size: int) -> bytes:
        """Up to ``size`` bytes of WAL at ``start`` as timeline ``timeline``'s history has it.

        Stops at the end of what is there (b"" when nothing is yet) and,
        for an older timeline, at its switch point. Raises
        :class:`SegmentRemoved` when the segment of ``start`` is gone.
        """
        ...


class _OpenSegment:
    """A completed segment file, held open while regions of it may still be sent.

    Closed when the last reference goes: a region being sent keeps it open
    even if the source has moved on (or the file was removed since).
    """

    __slots__ = ("fd", "size")

    def __init__(self, path: Path) -> None:
        self.fd = -1
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def __del__(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)


@dataclass(frozen=True, eq=False, slots=True)
class FileRegion:
    """``size`` bytes of WAL at ``offset`` of an open, completed segment file.

    The bytes :meth:`WalSource.read` would return, which never change (a
    completed segment is never rewritten), for the shell to send with
    ``os.sendfile(socket, region.fileno, region.offset, region.size)``.
    """

    file: _OpenSegment
    offset: int
    size: int

    @property
    def fileno(self) -> int:
        return self.file.fd

    def tail(self, sent: int) -> FileRegion:
        """What is left after the first ``sent`` bytes went."""
        return FileRegion(self.file, self.offset + sent, self.size - sent)

    def read(self) -> bytes:
        """The bytes themselves (for a client that cannot take them from the file)."""
        data = os.pread(self.file.fd, self.size, self.offset)
        if len(data) != self.size:  # checked against its size at open: the file shrank
            raise SourceError(
                f"a completed WAL segment shrank while being sent: {len(data)} of "
                f"{self.size} bytes at offset {self.offset}"
            )
        return data


@runtime_checkable
class RegionSource(Protocol):
    """A source that can say where its WAL is in files (see :class:`FileRegion`)."""

    def region(self, timeline: int, start: LSN, size: int) -> FileRegion | None:
        """What ``read(timeline, start, size)`` would return, as a region of a completed,
        uncompressed segment file; None where it is not in one (read it instead)."""
        ...


@dataclass(eq=False, slots=True)
class _Tail:
    """The file the end of the WAL is in: followed as a receiver writes it."""

    file: SegmentFile
    start: int  # the segment's first LSN
    limit: int  # where its WAL on the history ends: the segment's end, or a switch point
    fd: int = -1  # a plain file, kept open for cheap probes
    ino: int = -1
    size: int = -1  # a compressed file's decompressed size when last looked at
    frontier: int = 0  # bytes of the segment (from its start) that may hold WAL so far
    last_page: bytes = b""  # a plain file's page before the frontier, as last read


def _record_end(position: int, seg_size: int) -> int:
    """The decoder's position as the end of a record: not after a page header it already read.

    No record ends just after a page header (a continuation ends at least 8
    bytes further), so a position there is the end of the record before it.
    """
    off = position % _PAGE
    if off == _PAGE_HEADER or (off == 40 and position % seg_size == 40):
        return position - off
    return position


def _rank(f: SegmentFile) -> tuple[int, bool]:
    """The order in which WalReader.find prefers files of one segment."""
    return COMPRESSION_SUFFIXES.index(f.compression), f.partial


class DirectorySource:
    """The WAL of a walstream or pg_receivewal directory, which a receiver may still be writing.

    Served as recovery would read it: the newest timeline (the highest
    history file) and, for each segment, the file of the newest timeline of
    that timeline's history that may hold it, never an older timeline's file
    past its switch point (so an abandoned branch is never served). Segment
    size, system identifier and PostgreSQL version come from the files' long
    page headers; WAL of two systems in one directory is a
    :class:`SourceError` naming both files.

    Where valid WAL ends: a completed segment counts whole (a receiver
    renames a segment only once all of it is written, and fsynced unless
    told not to; decoding completed segments to validate them would cost
    1-1.5 s per GiB of bulk-load WAL and 11-25 s per GiB of pgbench's small
    records, measured with bench/source.py, and a standby checks every
    record itself anyway). In the ``.partial`` at the end, the end is the
    end of the last whole, CRC-valid record the decoder finds there, never
    the zero padding after it. The decoder is kept between refreshes and
    restarted at its last whole record when a torn or zero tail stopped it.
    When it falls far behind a fast receiver, it starts again near the end
    of what is written, and the bytes it jumped over are trusted as a
    completed segment's are. A stop inside a segment that is then completed
    is checked again; if the completed file still fails there, that is
    damage, and :meth:`refresh` raises :class:`SourceError` naming the file
    and the LSN instead of passing it.

    :meth:`refresh` is cheap enough to call every few ms while a receiver
    writes: it stats the ``.partial`` being followed (and probes a plain
    one's pages with two small reads), and the names that may come next
    (the completed name, the next segment, the next timeline's history
    file); the whole directory is listed only every ``rescan_interval``
    seconds or when something expected is missing.

    Not thread-safe: use a source from one thread at a time (the sender's
    disk thread). It reads files only: the receiver owns the directory.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        rescan_interval: float = 10.0,
        durable: Callable[[], int] | None = None,
    ) -> None:
        """``durable``: the writer of the directory, in this process, says how far its WAL is
        durable (the relay's receiver); the ``.partial`` is then not decoded to find the end.
        """
        self.path = Path(path)
        self._durable = durable
        self._reader = WalReader(self.path)
        self._rescan_interval = rescan_interval
        self._next_scan = 0.0
        self._force_scan = False
        # The file that gave the directory its identity, and its header.
        self._identity: tuple[str, LongPageHeader] | None = None
        self._seg = 0
        self._checked: set[str] = set()  # files whose page header agrees with the identity
        self._histories: dict[int, list[HistoryEntry]] = {}
        self._newest = 0
        self._spans: list[TimelineSpan] = []
        self._span_of: dict[int, TimelineSpan] = {}
        self._files: dict[tuple[int, int], SegmentFile] = {}  # (timeline, segno): as last seen
        self._names: dict[str, SegmentFile | None] = {}  # each name listed, parsed once
        self._oldest: int | None = None  # the oldest segment on the newest timeline's history
        self._placed = False
        self._end = 0
        self._tail: _Tail | None = None
        self._decoder: WalDecoder | None = None
        self._feed_from = 0  # the next LSN the decoder is fed
        self._anchor = 0  # where a decoder that decoded nothing yet starts again
        self._stop: int | None = None  # where decoding last stopped, until it gets past it
        self._stats = RecordStats()  # scan_stats counts into it; nobody reads it
        self._read_fd: tuple[Path, int] | None = None
        self._open_segments: OrderedDict[Path, _OpenSegment] = OrderedDict()
        self._scan()
        if self._identity is None:
            raise SourceError(f'no WAL in "{self.path}"')
        self._follow()

    # -- what the WAL is ----------------------------------------------------------------------

    @property
    def seg_size(self) -> int:
        return self._seg

    @property
    def system_identifier(self) -> int:
        assert self._identity is not None
        return self._identity[1].system_identifier

    @property
    def server_version(self) -> int:
        """PG_VERSION_NUM of the major version whose page magic the files carry (160000)."""
        assert self._identity is not None
        version = version_of_magic(self._identity[1].magic)
        assert version is not None  # checked when the identity was taken
        return version * 10000

    def timeline(self) -> int:
        return self._newest

    def end_of_wal(self) -> LSN:
        return LSN(self._end)

    def history(self, timeline: int) -> list[HistoryEntry]:
        if timeline == 1:
            return []
        if timeline not in self._histories:
            path = self._reader.history_path(timeline)
            try:
                self._histories[timeline] = self._reader.history(timeline)
            except FileNotFoundError:
                raise  # an unknown timeline, as the interface says
            except HistoryFileError as e:
                raise SourceError(f'timeline history file "{path}": {e}') from None
            except (OSError, ValueError) as e:
                raise SourceError(f'could not read timeline history file "{path}": {e}') from None
        return list(self._histories[timeline])

    def history_file(self, timeline: int) -> tuple[str, bytes]:
        """``%08X.history`` and its bytes (decompressed if pg_receivewal -Z wrote it)."""
        return history_file_name(timeline), self._reader.history_content(timeline)

    def close(self) -> None:
        """Close the files kept open (the source can be used again afterwards)."""
        if self._tail is not None:
            self._close_tail(self._tail)
        if self._read_fd is not None:
            os.close(self._read_fd[1])
            self._read_fd = None
        self._open_segments.clear()  # each closes once no region being sent holds it

    # -- reading ------------------------------------------------------------------------------

    def read(self, timeline: int, start: LSN, size: int) -> bytes:
        """Up to ``size`` bytes at ``start`` as ``timeline``'s history has it (see WalSource).

        Never past :meth:`end_of_wal` nor, for an older timeline, its switch
        point; never across a segment's end (the caller loops). A segment
        older than the oldest there is raises :class:`SegmentRemoved` naming
        it on ``timeline``; a segment missing between others is a
        :class:`SourceError`, as is a timeline not in the newest one's history.
        While pg_receivewal, restarted, rewrites a compressed ``.partial`` in
        place, the file may hold less than it did: fewer bytes (even none)
        come back until it has caught up; the caller tries again later.
        """
        for _ in range(3):
            found = self._locate(timeline, start, size)
            if found is None:
                return b""
            file, offset, n = found
            try:
                data = self._pread(file, offset, n)
            except FileNotFoundError:
                # Renamed (.partial completed) or removed since it was listed.
                self._files.pop((file.timeline, file.segno), None)
                continue
            except (OSError, ValueError) as e:
                raise SourceError(f'could not read "{file.path}": {e}') from None
            if len(data) < n and file.complete:
                raise SourceError(
                    f'WAL segment "{file.path}" holds {offset + len(data)} bytes, '
                    f"expected {self._seg}"
                )
            return data
        name = segment_name(timeline, int(start) // self._seg, self._seg)
        raise SourceError(f"WAL segment {name} keeps disappearing")

    def region(self, timeline: int, start: LSN, size: int) -> FileRegion | None:
        """Where :meth:`read` would take its bytes from, if that is a completed, plain file.

        None for a ``.partial`` (still being written; where its WAL ends is
        the decoder's to say), a compressed file, and wherever :meth:`read`
        would raise or come back short (it then says why). Files stay open
        between calls (the last few): one open per segment, not per message.
        """
        found = self._locate(timeline, start, size)
        if found is None:
            return None
        file, offset, n = found
        if file.partial or file.compression:
            return None
        opened = self._open_segments.get(file.path)
        if opened is None:
            try:
                opened = _OpenSegment(file.path)
            except OSError:
                return None  # gone since it was listed: read() looks again
            self._open_segments[file.path] = opened
            if len(self._open_segments) > _OPEN_SEGMENTS:
                self._open_segments.popitem(last=False)
        else:
            self._open_segments.move_to_end(file.path)
        if offset + n > opened.size:
            return None
        return FileRegion(opened, offset, n)

    def _locate(self, timeline: int, start: LSN, size: int) -> tuple[SegmentFile, int, int] | None:
        """The file, offset and length of what ``read(timeline, start, size)`` returns."""
        seg = self._seg
        pos = int(start)
        limit = self._limit_of(timeline)
        if size <= 0 or pos >= limit:
            return None
        segno = pos // seg
        found = self._choose(segno, pos, stat=True)
        if found is None and (self._oldest is None or segno >= self._oldest):
            self._scan()  # removed meanwhile, or a hole: the listing says which
            found = self._choose(segno, pos, stat=True)
        if found is None:
            name = segment_name(timeline, segno, seg)
            if self._oldest is None or segno < self._oldest:
                raise SegmentRemoved(name)
            raise SourceError(
                f'WAL segment {name} is missing from "{self.path}", which has '
                f"{segment_name(timeline, self._oldest, seg)} and later ones"
            )
        file, file_limit = found
        return file, pos - segno * seg, min(size, limit - pos, file_limit - pos)

    def _limit_of(self, timeline: int) -> int:
        if timeline == self._newest:
            return self._end
        span = self._span_of.get(timeline)
        if span is None or span.end is None:
            raise SourceError(
                f"requested timeline {timeline} is not in the history of timeline {self._newest}"
            )
        return min(self._end, span.end)

    def _pread(self, file: SegmentFile, offset: int, n: int) -> bytes:
        if file.compression:
            return self._reader.read(file.path, offset, n)
        cached = self._read_fd
        if cached is None or cached[0] != file.path:
            fd = os.open(file.path, os.O_RDONLY)
            if cached is not None:
                os.close(cached[1])
            self._read_fd = cached = (file.path, fd)
        return os.pread(cached[1], n, offset)

    # -- looking at the directory -------------------------------------------------------------

    def refresh(self) -> bool:
        """Look for new WAL, segments and timelines; True if the end or the timeline changed.

        Raises :class:`SourceError` for damage found in a segment just
        completed, WAL of another system, or a broken history file.
        """
        changed = False
        if self._force_scan or time.monotonic() >= self._next_scan or self._new_history():
            changed = self._scan()
        return self._follow() or changed

    def _new_history(self) -> bool:
        """Whether the next timeline's history file appeared (a promotion upstream)."""
        name = history_file_name(self._newest + 1)
        return any(os.path.exists(self.path / (name + s)) for s in COMPRESSION_SUFFIXES)

    def _scan(self) -> bool:
        """List the directory: timelines, files, the oldest segment; True if any of it changed."""
        self._next_scan = time.monotonic() + self._rescan_interval
        self._force_scan = False
        try:
            with os.scandir(self.path) as it:
                names = sorted(e.name for e in it if e.is_file())
        except OSError as e:
            raise SourceError(f'could not open directory "{self.path}": {e.strerror}') from None
        timelines = {1}
        for name in names:
            for suffix in COMPRESSION_SUFFIXES[1:]:
                name = name.removesuffix(suffix)
            tli = history_timeline(name)
            if tli is not None:
                timelines.add(tli)
        if self._identity is None:
            self._take_identity(names)
            if self._identity is None:
                return False
        files: dict[tuple[int, int], SegmentFile] = {}
        known, self._names = self._names, {}
        for name in names:
            # Parsing 10,000 names and making their paths was most of a listing's 80 ms.
            f = known[name] if name in known else self._parse(name)
            self._names[name] = f
            if f is None:
                continue
            if name not in self._checked:
                self._check(f)
            key = (f.timeline, f.segno)
            if key not in files or _rank(f) < _rank(files[key]):
                files[key] = f
            timelines.add(f.timeline)
        self._checked.intersection_update(self._names)  # forget files removed since
        changed = False
        newest = max(timelines)
        if newest != self._newest:
            self._set_newest(newest)
            changed = True
        self._files = files
        on_history = [segno for tli, segno in files if self._on_history(tli, segno)]
        oldest = min(on_history, default=None)
        if oldest != self._oldest:
            self._oldest = oldest
            changed = True
        if not self._placed and on_history:
            self._place(max(on_history))
            changed = True
        return changed

    def _parse(self, name: str) -> SegmentFile | None:
        parsed = parse_segment_name(name, self._seg)
        if parsed is None:
            return None
        return SegmentFile(
            self.path / name, parsed.timeline, parsed.segno, parsed.compression, parsed.partial
        )

    def _take_identity(self, names: list[str]) -> None:
        """The first segment with a page header gives the segment size and the system."""
        for name in names:
            parsed = parse_segment_name(name, MIN_SEG_SIZE)  # any size: only suffixes matter
            if parsed is None:
                continue
            f = SegmentFile(self.path / name, 0, 0, parsed.compression, parsed.partial)
            header = self._header(f)
            if header is not None:
                self._identity = (name, header)
                self._seg = header.seg_size
                self._checked.add(name)
                return

    def _header(self, f: SegmentFile) -> LongPageHeader | None:
        """A file's long page header, checked; None if a .partial has none yet."""
        try:
            head = self._reader.head(f.path)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SourceError(f'could not read "{f.path}": {e.strerror}') from None
        header = LongPageHeader.parse(head)
        if header is None or not any(head):
            if f.partial:
                return None  # a receiver's newest .partial: zeros until its first write
            raise SourceError(f'WAL file "{f.path}" has no page header')
        if version_of_magic(header.magic) is None or not header.is_long:
            if f.partial and len(head) < 40:
                return None
            raise SourceError(
                f'WAL file "{f.path}" has an invalid page header (magic {header.magic:04X}, '
                f"info {header.info:04X})"
            )
        try:
            check_seg_size(header.seg_size)
        except ValueError as e:
            raise SourceError(f'WAL file "{f.path}": {e}') from None
        return header

    def _check(self, f: SegmentFile) -> None:
        """Refuse a file of another system (identifier, segment size or version)."""
        header = self._header(f)
        if header is None:
            return
        assert self._identity is not None
        first, mine = self._identity
        for what, theirs, ours in (
            ("database system identifier", header.system_identifier, mine.system_identifier),
            ("segment size", header.seg_size, mine.seg_size),
            ("page magic", header.magic, mine.magic),
        ):
            if theirs != ours:
                raise SourceError(
                    f'WAL of two database systems in "{self.path}": "{first}" has {what} '
                    f'{ours}, "{f.path.name}" has {theirs}'
                )
        self._checked.add(f.path.name)

    def _set_newest(self, newest: int) -> None:
        """Serve a new newest timeline: its history decides which files are read from now on."""
        try:
            history = self.history(newest)
        except FileNotFoundError:
            path = self._reader.history_path(newest)
            raise SourceError(f'timeline history file "{path}" is missing') from None
        if self._newest:
            log.info("new timeline %d in %s", newest, self.path)
        self._newest = newest
        self._spans = expected_timelines(newest, history)
        self._span_of = {span.timeline: span for span in self._spans}
        if self._tail is not None:
            self._close_tail(self._tail)
        self._tail = None
        self._decoder = None
        self._stop = None
        self._end = 0
        self._placed = False

    def _on_history(self, timeline: int, segno: int) -> bool:
        """Whether segment ``segno`` of ``timeline`` may be read (timelines_for_segment's rule)."""
        span = self._span_of.get(timeline)
        return (
            span is not None
            and span.begin // self._seg <= segno
            and (span.end is None or segno <= span.end // self._seg)
        )

    def _place(self, segno: int) -> None:
        """Start following at the newest segment on the history: everything before is complete."""
        self._placed = True
        found = self._choose(segno, segno * self._seg, stat=False)
        if found is None:
            return
        self._end = segno * self._seg
        self._anchor = self._end
        self._tail = _Tail(found[0], self._end, found[1])

    def _choose(self, segno: int, pos: int, *, stat: bool) -> tuple[SegmentFile, int] | None:
        """The file to read ``pos`` of segment ``segno`` from, and where its WAL on history ends.

        XLogFileReadAnyTLI's order (the newest timeline that may hold the
        segment), skipping a timeline whose switch point is at or before
        ``pos``. ``stat``: look for files not listed yet.
        """
        seg = self._seg
        for tli in timelines_for_segment(segno, self._spans, seg):
            span = self._span_of[tli]
            if span.end is not None and span.end <= pos:
                continue
            f = self._files.get((tli, segno))
            if f is None and stat:
                f = self._reader.find(tli, segno, seg)
                if f is not None:
                    self._files[tli, segno] = f
            if f is not None:
                end = (segno + 1) * seg
                return f, end if span.end is None else min(end, span.end)
        return None

    # -- following the end --------------------------------------------------------------------

    def _follow(self) -> bool:
        """Advance the end of WAL through what the receiver wrote; True if it moved."""
        before = self._end
        while True:
            tail = self._tail
            if tail is None:
                found = self._choose(self._end // self._seg, self._end, stat=True)
                if found is None:
                    if self._past_removed():
                        continue
                    break
                tail = self._tail = _Tail(found[0], self._end - self._end % self._seg, found[1])
            if not self._advance(tail):
                break
        return self._end != before

    def _past_removed(self) -> bool:
        """The segment the end is in is gone and no earlier one is there: it was removed.

        A retention job removes completed segments, oldest first, and may
        remove one this source has not followed yet (the relay's removes in
        its receiver's writer, and one batch of the receiver can complete more
        segments than the keep size: tests/test_relay_failures.py saw a relay
        stuck at such a segment for good, refusing its standbys' starting
        points as ahead of its WAL). The segment was complete, so the WAL goes
        on: the end moves to the start of the oldest segment there is (reads
        before it are :class:`SegmentRemoved`). When the writer says it has
        durable WAL past the end, the file was there: the directory is listed
        at once; otherwise the next listing tells. True if the end moved.
        """
        if self._durable is not None and self._durable() > self._end:
            self._scan()
            if self._tail is not None:  # a new timeline was placed
                return True
        segno = self._end // self._seg
        oldest = self._oldest
        if oldest is None or oldest <= segno:
            return False
        log.debug(
            "segments before %s were removed before they were followed",
            segment_name(self._newest, oldest, self._seg),
        )
        self._end = oldest * self._seg
        self._stop = None
        return True

    def _advance(self, tail: _Tail) -> bool:
        """Follow ``tail``; True once its WAL is all counted and the next file may be looked for."""
        if tail.file.complete:
            self._finish(tail)
            return True
        better = self._choose(tail.start // self._seg, self._end, stat=True)
        if better is not None and better[0].timeline != tail.file.timeline:
            self._switch_file(tail, *better)  # a promotion: the child's copy of this segment
            return True
        if self._durable is not None:
            # The writer says how far it is durable: nothing to decode or probe.
            self._end = max(self._end, min(self._durable(), tail.limit))
            if self._end >= tail.limit:
                self._close_tail(tail)
                self._tail = None
                return True
            return False
        try:
            changed = self._probe(tail)
            dec = self._decoder
            if (
                changed
                or dec is None
                or (dec.outcome is None and self._feed_from < self._avail(tail))
            ):
                self._decode(tail)
        except FileNotFoundError:  # renamed (completed) since, or removed
            completed = self._completed(tail)
            if completed is None:
                # Gone without a completed file: the listing will tell.
                self._close_tail(tail)
                self._tail = None
                self._force_scan = True
                return False
            tail.file = completed
            self._finish(tail)
            return True
        if self._end >= tail.limit:  # an XLOG_SWITCH, or the switch point of this timeline
            self._close_tail(tail)
            self._tail = None
            return True
        if tail.start + tail.frontier >= tail.limit:
            # All written: the receiver renames it next.
            completed = self._completed(tail)
            if completed is not None:
                tail.file = completed
                self._finish(tail)
                return True
        return False

    def _avail(self, tail: _Tail) -> int:
        return min(tail.start + tail.frontier, tail.limit)

    def _completed(self, tail: _Tail) -> SegmentFile | None:
        """The completed file of the ``.partial`` being followed, if it was renamed."""
        f = self._reader.find(
            tail.file.timeline, tail.file.segno, self._seg,
            suffixes=(tail.file.compression,), partial=False,
        )  # fmt: skip
        if f is not None:
            self._files[f.timeline, f.segno] = f
        return f

    def _probe(self, tail: _Tail) -> bool:
        """Whether the ``.partial`` holds more (or other) bytes than when last looked at."""
        path = tail.file.path
        if tail.file.compression:
            size = self._reader.wal_size(path)
            if size == tail.size:
                return False
            if size < tail.size:  # rewritten shorter (pg_receivewal restarted): look again
                tail.frontier = 0
            tail.size = size
            # The zeros after an XLOG_SWITCH are in the file too: stop before them.
            head = self._reader.read
            pages = -(-size // _PAGE)
            frontier = self._frontier(tail, lambda p: head(path, p * _PAGE, _PAGE_HEADER), pages)
            tail.frontier = min(frontier, size)
            return True
        st = os.stat(path)
        if st.st_ino != tail.ino:
            if tail.fd >= 0:
                os.close(tail.fd)
            tail.fd = os.open(path, os.O_RDONLY)
            tail.ino = os.fstat(tail.fd).st_ino
            tail.frontier, tail.last_page = 0, b""
        fd = tail.fd
        frontier = self._frontier(
            tail, lambda p: os.pread(fd, _PAGE_HEADER, p * _PAGE), self._seg // _PAGE
        )
        last = os.pread(fd, _PAGE, frontier - _PAGE) if frontier else b""
        changed = frontier != tail.frontier or last != tail.last_page
        tail.frontier, tail.last_page = frontier, last
        return changed

    @staticmethod
    def _frontier(tail: _Tail, header: Callable[[int], bytes], pages: int) -> int:
        """The first of ``pages`` pages of the ``.partial`` never written (all: their end).

        A receiver pre-pads a plain file with zeros and writes it in order,
        and every page it writes starts with a page header whose magic is
        not zero: so the pages written are a prefix, found by probing page
        headers (``header(page)``) from the last frontier on, doubling the
        step, then bisecting. After an XLOG_SWITCH the rest of the segment
        is zeros too (pages included, also in a compressed file): the search
        stops there, and the decoder ends the segment at the switch record.
        """

        def written(page: int) -> bool:
            return any(header(page))

        known = tail.frontier // _PAGE - 1  # pages up to here are written
        if known + 1 >= pages or not written(known + 1):
            return (known + 1) * _PAGE
        known += 1
        step = 1
        while True:
            probe = known + step
            if probe >= pages:
                hi = pages
                break
            if not written(probe):
                hi = probe
                break
            known = probe
            step *= 2
        while hi - known > 1:
            mid = (known + hi) // 2
            if written(mid):
                known = mid
            else:
                hi = mid
        return hi * _PAGE

    def _read_tail(self, tail: _Tail, lsn: int, n: int) -> bytes:
        if tail.fd >= 0:
            return os.pread(tail.fd, n, lsn - tail.start)
        return self._reader.read(tail.file.path, lsn - tail.start, n)

    def _new_decoder(self, start: int, prev: int | None) -> WalDecoder:
        assert self._identity is not None
        header = self._identity[1]
        self._feed_from = start - start % _PAGE
        return WalDecoder(
            start,
            self._seg,
            system_identifier=header.system_identifier,
            prev_lsn=prev,
            magic=header.magic,
        )

    def _decoder_for(self, tail: _Tail) -> WalDecoder:
        """The decoder, ready to be fed this file's bytes from ``_feed_from``.

        After a stop, again from the end of the last whole record (as
        ReplayState.rewind). If it cannot go on in this file (it decoded
        nothing, or it is still in an earlier segment), a new one starts at
        the anchor or this segment's start, skipping a record continued
        from before, as pg_waldump does.
        """
        dec = self._decoder
        if dec is not None and (
            dec.outcome is not None or not tail.start <= self._feed_from < tail.limit
        ):
            last = dec.last_lsn
            position = dec.position
            if last is not None and tail.start <= position < tail.limit:
                dec = self._new_decoder(position, last)
            else:
                dec = None
        if dec is None:
            if not tail.start <= self._anchor < tail.limit:
                self._anchor = tail.start
            dec = self._new_decoder(self._anchor, None)
        self._decoder = dec
        return dec

    def _decode(self, tail: _Tail) -> None:
        """Feed what the receiver wrote since last time and move the end to the last record."""
        dec = self._decoder_for(tail)
        avail = self._avail(tail)
        if avail - self._feed_from > _JUMP_LAG and self._stop is None:
            jump = avail - _JUMP_BACK
            jump -= jump % _PAGE
            if jump > self._feed_from:
                self._anchor = jump
                dec = self._decoder = self._new_decoder(jump, None)
        n = min(avail - self._feed_from, _JUMP_LAG + _JUMP_BACK)
        if n <= 0:
            return
        data = self._read_tail(tail, self._feed_from, n)
        self._feed(dec, data, tail)

    def _feed(self, dec: WalDecoder, data: bytes, tail: _Tail) -> None:
        dec.feed(self._feed_from, data)
        self._feed_from += len(data)
        dec.scan_stats(self._stats)
        outcome = dec.outcome
        if outcome is not None:
            self._stop = outcome.lsn
        elif self._stop is not None and dec.position > self._stop:
            self._stop = None
        if dec.last_lsn is not None:
            end = min(_record_end(dec.position, self._seg), tail.limit)
            self._end = max(self._end, end)

    def _finish(self, tail: _Tail) -> None:
        """A completed file counts whole, unless decoding stopped inside it and still does."""
        stop = self._stop
        if self._decoder is not None and stop is not None and tail.start <= stop < tail.limit:
            dec = self._decoder_for(tail)
            while dec.outcome is None and dec.position <= stop and self._feed_from < tail.limit:
                n = min(_RECHECK_PIECE, tail.limit - self._feed_from)
                data = self._reader.read(tail.file.path, self._feed_from - tail.start, n)
                if not data:
                    break
                self._feed(dec, data, tail)
            outcome = dec.outcome
            if outcome is not None and outcome.lsn < tail.limit:
                raise SourceError(
                    f"invalid WAL in completed segment {tail.file.path.name} at {outcome.lsn}: "
                    f"{outcome.reason}"
                )
            self._stop = None
        self._end = max(self._end, tail.limit)
        self._close_tail(tail)
        self._tail = None

    def _switch_file(self, tail: _Tail, better: SegmentFile, limit: int) -> None:
        """Follow a newer timeline's copy of the segment: equal to the old one up to the switch."""
        log.debug("reading %s instead of %s", better.path.name, tail.file.path.name)
        self._close_tail(tail)
        self._stop = None
        self._tail = _Tail(better, tail.start, limit)

    def _close_tail(self, tail: _Tail) -> None:
        if tail.fd >= 0:
            os.close(tail.fd)
            tail.fd = -1
