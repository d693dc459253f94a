"""A minimal WAL writer for tests that need WAL PostgreSQL would not write on demand.

Real WAL from real servers is the decoder's main oracle (see wal_workload.py);
this writer only builds what a server cannot be asked for directly: a record
of every (rmgr, info) pair, to learn pg_waldump's names for each, and
records placed exactly at page and segment boundaries. Its output is itself
checked by pg_waldump in the tests, so it cannot drift into a private dialect.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from walstream.wal.crc import crc32c

PAGE = 8192
MAGIC = {15: 0xD110, 16: 0xD113, 17: 0xD116, 18: 0xD118}


def record(
    rmid: int,
    info: int,
    *,
    xid: int = 0,
    main_data: bytes = b"",
    headers: bytes = b"",
    payload: bytes = b"",
) -> bytes:
    """An XLogRecord without xl_prev and CRC (filled in by :class:`WalWriter`).

    ``headers`` are raw block/origin headers placed before the main-data
    header, ``payload`` the bytes that follow the headers (block images and
    data), then the main data.
    """
    body = bytearray(headers)
    if main_data:
        if len(main_data) < 256:
            body += bytes([0xFF, len(main_data)])
        else:
            body += b"\xfe" + struct.pack("<I", len(main_data))
    body += payload + main_data
    head = struct.pack("<IIQBBHI", 24 + len(body), xid, 0, info, rmid, 0, 0)
    return head + bytes(body)


@dataclass
class WalWriter:
    """Lays records out on pages as XLogInsert does: aligned starts, continuation pages."""

    version: int
    seg_size: int = 1024 * 1024
    start: int = 0x1000000
    timeline: int = 1
    sysid: int = 7300000000000000001
    buf: bytearray = field(default_factory=bytearray)
    prev: int = 0
    lsns: list[int] = field(default_factory=list)
    overwrite_next: bool = False  # flag the next page FIRST_IS_OVERWRITE_CONTRECORD

    def __post_init__(self) -> None:
        assert self.start % self.seg_size == 0
        self.pos = self.start  # the next byte to write

    # -- layout -------------------------------------------------------------

    def _page_header(self, page_lsn: int, rem_len: int) -> bytes:
        info = 0x0004 | (0x0001 if rem_len else 0)
        if self.overwrite_next:
            info |= 0x0008
            self.overwrite_next = False
        if page_lsn % self.seg_size == 0:
            info |= 0x0002
            return struct.pack(
                "<HHIQI4xQII",
                MAGIC[self.version],
                info,
                self.timeline,
                page_lsn,
                rem_len,
                self.sysid,
                self.seg_size,
                PAGE,
            )
        return struct.pack("<HHIQI4x", MAGIC[self.version], info, self.timeline, page_lsn, rem_len)

    def _new_page(self, rem_len: int) -> None:
        hdr = self._page_header(self.pos, rem_len)
        self.buf += hdr
        self.pos += len(hdr)

    def _put(self, data: bytes) -> None:
        """Append a record's bytes at ``pos``, with continuation page headers."""
        i = 0
        while i < len(data):
            if self.pos % PAGE == 0:
                self._new_page(len(data) - i)
            chunk = data[i : i + PAGE - self.pos % PAGE]
            self.buf += chunk
            self.pos += len(chunk)
            i += len(chunk)
        pad = -self.pos % 8
        self.buf += b"\0" * pad
        self.pos += pad

    def skip_to(self, offset_in_page: int) -> None:
        """Add XLOG NOOP fillers until the next record would start at ``offset_in_page``."""
        assert offset_in_page % 8 == 0
        assert offset_in_page >= 24
        while True:
            cur = self.pos % PAGE
            if cur == 0:
                self._new_page(0)
                continue
            if cur == offset_in_page:
                return
            gap = offset_in_page - cur if offset_in_page > cur else PAGE - cur
            if gap in (8, 16):
                self.add(record(0, 0x20, main_data=b"\0" * 38))  # 64 bytes: move on
                continue
            size = min(gap, 4000)
            if 0 < gap - size < 32:
                size = gap - 32
            self.add(noop(size))

    # -- records ------------------------------------------------------------

    def _seal(self, rec: bytes) -> bytes:
        """Fill in xl_prev and the CRC."""
        sealed = bytearray(rec)
        struct.pack_into("<Q", sealed, 8, self.prev)
        crc = crc32c(bytes(sealed[24:]))
        crc = crc32c(bytes(sealed[:20]), crc)
        struct.pack_into("<I", sealed, 20, crc)
        return bytes(sealed)

    def add(self, rec: bytes) -> int:
        """Append a record; returns its LSN."""
        if self.pos % PAGE == 0:
            self._new_page(0)
        lsn = self.pos
        self._put(self._seal(rec))
        self.prev = lsn
        self.lsns.append(lsn)
        return lsn

    def abandon(self, rec: bytes) -> int:
        """Write ``rec`` only up to the end of its page, as a crash that lost the next one would.

        The next page is flagged FIRST_IS_OVERWRITE_CONTRECORD, as the restarted
        server writes it; xl_prev still points before the abandoned record.
        """
        if self.pos % PAGE == 0:
            self._new_page(0)
        lsn = self.pos
        room = PAGE - self.pos % PAGE
        sealed = self._seal(rec)
        assert len(sealed) > room
        self.buf += sealed[:room]
        self.pos += room
        self.overwrite_next = True
        return lsn

    def fill_to(self, target: int) -> None:
        """Add fillers so that the next record starts exactly at ``target``."""
        while target - self.pos > 2 * PAGE:
            self.add(noop(4000))
        while self.pos // PAGE != target // PAGE:
            self.skip_to(48)  # to the next page (at offset 48 of it)
        self.skip_to(target % PAGE)
        assert self.pos == target

    def end_segment(self) -> None:
        """Zero-fill to the segment end, as the server does after XLOG_SWITCH."""
        pad = -self.pos % self.seg_size
        self.buf += b"\0" * pad
        self.pos += pad

    def segments(self) -> dict[int, bytes]:
        """Whole segments (zero-padded), keyed by segment number."""
        data = bytes(self.buf)
        total = -(-len(data) // self.seg_size) * self.seg_size
        data += b"\0" * (total - len(data))
        first = self.start // self.seg_size
        return {
            first + i: data[i * self.seg_size : (i + 1) * self.seg_size]
            for i in range(total // self.seg_size)
        }

    def segment_name(self, segno: int) -> str:
        per = 0x100000000 // self.seg_size
        return f"{self.timeline:08X}{segno // per:08X}{segno % per:08X}"


def noop(size: int) -> bytes:
    """An XLOG NOOP record occupying exactly ``size`` bytes (24, or 26 and up)."""
    if size == 24:
        return record(0, 0x20)
    n = size - 26 if size - 26 < 256 else size - 29
    rec = record(0, 0x20, main_data=b"\0" * n)
    assert len(rec) == size, (size, len(rec))
    return rec
