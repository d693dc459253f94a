"""Reading a WAL directory back: the one reader of segment and history files.

A walstream or pg_receivewal directory (completed segments, ``.partial``,
``.gz``/``.lz4``/``.zst`` and their partials, ``%08X.history``) or a pg_wal.
The startup role, ``walstream waldump`` and the sender all find and read
their files here, each wording its own errors (a tool that imitates
pg_waldump says what pg_waldump says), so this module raises ``OSError``,
``ValueError`` (an invalid segment size) and
:class:`~walstream.wal.segment.HistoryFileError` and leaves the words to them.

Compressed segments are read decompressed. The last one decompressed is
kept (keyed by its size and modification time, so a growing ``.partial``
is decompressed again): a segment is read a piece at a time, and
decompressing the whole file for every piece made reading a 16 MB ``.gz``
segment in 128 kB pieces quadratic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from walstream.storage.compression import decompress_file, suffix_of
from walstream.wal.segment import (
    COMPRESSION_SUFFIXES,
    LONG_PAGE_HEADER_SIZE,
    HistoryEntry,
    HistoryFileError,
    LongPageHeader,
    check_seg_size,
    history_file_name,
    history_timeline,
    is_segment_file_name,
    parse_history,
    segment_name,
)

__all__ = ["SegmentFile", "WalReader"]

_PARTIAL: Final = ".partial"


@dataclass(frozen=True, slots=True)
class SegmentFile:
    """One file holding segment ``segno`` of ``timeline``."""

    path: Path
    timeline: int
    segno: int
    compression: str  # "", ".gz", ".lz4" or ".zst"
    partial: bool

    @property
    def complete(self) -> bool:
        """A completed segment never changes: what fails in it is damage, not a torn write."""
        return not self.partial


class WalReader:
    """The WAL files of one directory, found and read as PostgreSQL's tools find them."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._cache: tuple[Path, int, int, bytes] | None = None  # path, size, mtime_ns, data

    # -- finding files --------------------------------------------------------

    def segment_files(self) -> list[Path]:
        """Every file named like a segment (any suffix), in name order."""
        return sorted(
            p for p in self.path.iterdir() if is_segment_file_name(p.name) and p.is_file()
        )

    def find(
        self,
        timeline: int,
        segno: int,
        seg_size: int,
        *,
        suffixes: tuple[str, ...] = COMPRESSION_SUFFIXES,
        partial: bool = True,
    ) -> SegmentFile | None:
        """The file holding a segment: each suffix in turn, completed before ``.partial``."""
        base = segment_name(timeline, segno, seg_size)
        for suffix in suffixes:
            for is_partial in (False, True) if partial else (False,):
                path = self.path / (base + suffix + (_PARTIAL if is_partial else ""))
                if path.is_file():
                    return SegmentFile(path, timeline, segno, suffix, is_partial)
        return None

    def latest_timeline(self) -> int:
        """The highest timeline with a history file (1 without any), as findNewestTimeLine."""
        best = 1
        for p in self.path.iterdir():
            tli = history_timeline(p.name)
            if tli is not None:
                best = max(best, tli)
        return best

    # -- reading --------------------------------------------------------------

    def read(self, path: Path, offset: int = 0, size: int = -1) -> bytes:
        """Up to ``size`` bytes (-1: all) of WAL from ``offset``; compressed files decompressed."""
        if suffix_of(path.name):
            data = self._decompressed(path)
            return data[offset : offset + size] if size >= 0 else data[offset:]
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def segment_size(self, path: Path) -> int | None:
        """The segment size a file's long page header gives, as pg_waldump finds it.

        None for a file with no page header yet (empty, or zeros ahead of the
        data: a receiver's newest ``.partial``); ValueError for a size
        PostgreSQL cannot have written.
        """
        head = self.read(path, 0, LONG_PAGE_HEADER_SIZE)
        header = LongPageHeader.parse(head)
        if header is None or not any(head):
            return None
        return check_seg_size(header.seg_size)

    def history(self, timeline: int) -> list[HistoryEntry]:
        """The parsed history of ``timeline`` (empty for 1): FileNotFoundError if missing."""
        if timeline == 1:
            return []
        entries = parse_history(self.history_content(timeline))
        if entries and entries[-1].parent_tli >= timeline:
            raise HistoryFileError(f"timeline {timeline} cannot descend from a later one")
        return entries

    def history_content(self, timeline: int) -> bytes:
        """The bytes of ``%08X.history``, or of a compressed one (``pg_receivewal -Z`` writes them).

        FileNotFoundError names the plain file when there is none.
        """
        plain = self.history_path(timeline)
        for suffix in COMPRESSION_SUFFIXES[1:]:
            path = plain.with_name(plain.name + suffix)
            if not plain.is_file() and path.is_file():
                return self.read(path)
        return plain.read_bytes()

    def history_path(self, timeline: int) -> Path:
        return self.path / history_file_name(timeline)

    def _decompressed(self, path: Path) -> bytes:
        st = os.stat(path)
        cached = self._cache
        if cached is not None and cached[:3] == (path, st.st_size, st.st_mtime_ns):
            return cached[3]
        data = decompress_file(path, suffix_of(path.name))
        self._cache = (path, st.st_size, st.st_mtime_ns, data)
        return data
