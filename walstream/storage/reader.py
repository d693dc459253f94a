"""Reading a WAL directory back: the one reader of segment and history files.

A walstream or pg_receivewal directory (completed segments, ``.partial``,
``.gz``/``.lz4``/``.zst`` and their partials, ``%08X.history``) or a pg_wal.
The startup role, ``walstream waldump`` and the sender all find and read
their files here, each wording its own errors (a tool that imitates
pg_waldump says what pg_waldump says), so this module raises ``OSError``,
``ValueError`` (an invalid segment size, a damaged completed compressed
file) and :class:`~walstream.wal.segment.HistoryFileError` and leaves the
words to them.

Compressed segments are read decompressed. The last few decompressed are
kept (a segment is read a piece at a time, and decompressing the whole file
for every piece made reading a 16 MB ``.gz`` segment in 128 kB pieces
quadratic), and a compressed ``.partial`` that grows is decompressed on from
where it was, not again from its start: a sender following a receiver's
``.gz.partial`` every few milliseconds would otherwise decompress the whole
segment each time. A file replaced (another inode: walstream's receiver
renames a rewritten ``.partial`` over the old one) or rewritten in place
(pg_receivewal restarted: the bytes before the point reached differ) is
decompressed again from its start. A ``.partial`` that fails to decompress
part way (pg_receivewal's in-place rewrite leaves the old stream's bytes
after the new one) reads as what came before the damage.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from walstream.storage.compression import Decompressor, make_decompressor, suffix_of
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
_INFLATE_PIECE: Final = 1024 * 1024  # compressed bytes read and decompressed at a time
_TAIL_CHECK: Final = 4096  # compressed bytes compared to tell a file rewritten in place
_HEAD_PIECES: Final = (4096, 65536, 1024 * 1024)  # prefixes tried to decompress a header


@dataclass(eq=False, slots=True)
class _Inflated:
    """A compressed file decompressed up to ``consumed`` of its bytes."""

    ino: int
    size: int  # st_size and st_mtime_ns when last brought up to date
    mtime_ns: int
    decompressor: Decompressor
    consumed: int = 0
    out: bytearray = field(default_factory=bytearray)
    tail: bytes = b""  # the last compressed bytes consumed, to notice a rewrite
    error: str | None = None  # decompression failed at ``consumed``: out is what came before


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

    def __init__(
        self, path: Path | str, *, cache_files: int = 4, cache_bytes: int = 64 * 1024 * 1024
    ) -> None:
        self.path = Path(path)
        # Decompressed files, least recently used first (see the module docstring):
        # at most cache_files of them and cache_bytes in all, but always the last one.
        self._cache: OrderedDict[Path, _Inflated] = OrderedDict()
        self._cache_files = max(1, cache_files)
        self._cache_bytes = cache_bytes

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
            data = self._inflated(path).out
            return bytes(data[offset : offset + size] if size >= 0 else data[offset:])
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def wal_size(self, path: Path) -> int:
        """How many bytes of WAL a file holds: its size, or its decompressed size so far."""
        if suffix_of(path.name):
            return len(self._inflated(path).out)
        return os.stat(path).st_size

    def head(self, path: Path, size: int = LONG_PAGE_HEADER_SIZE) -> bytes:
        """The first ``size`` bytes of WAL in a file, without decompressing all of it.

        For looking at the long page header of every file of a directory:
        a compressed file's first few kB are decompressed, not the file.
        """
        method = suffix_of(path.name)
        if not method:
            with open(path, "rb") as f:
                return f.read(size)
        with open(path, "rb") as f:
            for piece in _HEAD_PIECES:
                f.seek(0)
                data = f.read(piece)
                try:
                    out = make_decompressor(method).decompress(data)
                except Exception:  # damaged: whatever decodes is not a header
                    return b""
                if len(out) >= size or len(data) < piece:
                    return out[:size]
        return self.read(path, 0, size)

    def segment_size(self, path: Path) -> int | None:
        """The segment size a file's long page header gives, as pg_waldump finds it.

        None for a file with no page header yet (empty, or zeros ahead of the
        data: a receiver's newest ``.partial``); ValueError for a size
        PostgreSQL cannot have written.
        """
        head = self.head(path)
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

    def _inflated(self, path: Path) -> _Inflated:
        """The file decompressed as far as it goes now (see the module docstring)."""
        st = os.stat(path)
        cache = self._cache
        inf = cache.get(path)
        if inf is not None:
            cache.move_to_end(path)
            if (inf.ino, inf.size, inf.mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns):
                return self._checked(path, inf)  # unchanged since brought up to date
        if (
            inf is None
            or inf.ino != st.st_ino
            or st.st_size < inf.consumed
            or inf.error is not None
            or not self._same_tail(path, inf)
        ):
            inf = _Inflated(st.st_ino, 0, 0, make_decompressor(suffix_of(path.name)))
            cache[path] = inf
        self._inflate(path, inf)
        inf.size, inf.mtime_ns = st.st_size, st.st_mtime_ns
        total = sum(len(i.out) for i in cache.values())
        while len(cache) > 1 and (len(cache) > self._cache_files or total > self._cache_bytes):
            total -= len(cache.popitem(last=False)[1].out)  # never the one just read: it is last
        return self._checked(path, inf)

    @staticmethod
    def _checked(path: Path, inf: _Inflated) -> _Inflated:
        if path.name.endswith(_PARTIAL):
            return inf
        # A completed file never changes: its damage is not a write in progress.
        if inf.error is not None:
            raise ValueError(f'could not decompress "{path}": {inf.error}')
        if not inf.decompressor.eof:
            # Cut short, or damaged into bits that still decode (random bytes in
            # a deflate stream often do): a completed file ends with its stream.
            raise ValueError(
                f'could not decompress "{path}": the file ends before its compressed stream'
            )
        return inf

    @staticmethod
    def _same_tail(path: Path, inf: _Inflated) -> bool:
        """Whether the compressed bytes just before where decompression stopped are unchanged."""
        if not inf.tail:
            return True
        with open(path, "rb") as f:
            f.seek(inf.consumed - len(inf.tail))
            return f.read(len(inf.tail)) == inf.tail

    @staticmethod
    def _inflate(path: Path, inf: _Inflated) -> None:
        """Decompress what the file holds past ``inf.consumed``."""
        dec = inf.decompressor
        with open(path, "rb") as f:
            f.seek(inf.consumed)
            while not dec.eof:
                piece = f.read(_INFLATE_PIECE)
                if not piece:
                    break
                try:
                    inf.out += dec.decompress(piece)
                except Exception as e:  # zlib.error, lz4's RuntimeError, zstd's ZstdError
                    inf.error = str(e) or type(e).__name__
                    break
                inf.consumed += len(piece)
                inf.tail = (inf.tail + piece)[-_TAIL_CHECK:]
