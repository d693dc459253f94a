"""A sans-IO, incremental decoder of PostgreSQL WAL.

Bytes go in with :meth:`WalDecoder.feed` (from files, from a replication
stream, from anywhere: the decoder does no I/O and keeps no clock), records
come out of :meth:`WalDecoder.next_record` / :meth:`WalDecoder.records`.

The rules are PostgreSQL's reader's (``xlogreader.c``), because a replica
that accepts WAL PostgreSQL would refuse, or the reverse, is broken:

* page headers are validated as each page is reached (magic, flags, the long
  header on a segment's first page, the page address, timelines that never go
  back);
* a record that does not fit its page continues after the next page header,
  which must say so (FIRST_IS_CONTRECORD) and agree on the remaining length;
  its 24-byte header may itself be split, and is validated once whole;
* every record's CRC-32C is verified, and its xl_prev must point at the
  previous record;
* block references and the data lengths they declare are cross-checked
  exactly as ``DecodeXLogRecord`` does;
* an XLOG_SWITCH record ends its segment: reading resumes at the next one
  and the zero-filled tail is never looked at;
* a continuation page flagged FIRST_IS_OVERWRITE_CONTRECORD means the
  record being assembled was abandoned by a crash: it is dropped and reading
  restarts at that page, whose first record must be the OVERWRITE_CONTRECORD
  that names it.

When decoding stops, the decoder says why and where with an outcome object:
:class:`EndOfWal` where the WAL simply ends (a zero record length, a page
never written, a recycled segment's stale page) and :class:`InvalidRecord`
for a record or page that fails a check. PostgreSQL's startup process treats
both as "no more WAL for now" on a standby (a torn last record looks exactly
like corruption), so both carry the exact position (``lsn``) and
PostgreSQL's wording (``reason``); a reader that expected more WAL may
raise them, as they are :class:`~walstream.errors.WalCorruption`.

Speed matters (a standby must keep up with its primary), so the common case,
a record lying within one page of data already fed, is decoded in place from
the fed ``bytes`` (``struct.unpack_from`` on offsets, no copy, two CRC calls
on memoryview slices); only records crossing pages are reassembled. Records
are tuples built without running any Python ``__init__``. Whole-WAL scans
that need no Record per record (:meth:`WalDecoder.scan_stats` and
:meth:`WalDecoder.scan_replay`) run their common case in the compiled kernel
when it is built (:mod:`walstream.wal.fastscan`, selected by
:mod:`walstream.wal.kernel`), which hands everything else back to the same
general path.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from walstream.errors import LocalProtocolError, WalCorruption
from walstream.lsn import LSN
from walstream.wal import kernel
from walstream.wal.crc import crc32c
from walstream.wal.rmgr import (
    MAGIC_VERSIONS,
    OverwriteContrecord,
    Payload,
    decode_payload,
    record_type_name,
    rmgr_name,
)
from walstream.wal.segment import segment_name

if TYPE_CHECKING:
    from walstream.wal.fastscan import Counts, ReplaySink, Scanner

__all__ = [
    "NEED_DATA",
    "BlockRef",
    "EndOfWal",
    "InvalidRecord",
    "NeedData",
    "Record",
    "RecordStats",
    "WalDecoder",
]

XLOG_BLCKSZ: Final = 8192
BLCKSZ: Final = 8192
SHORT_HEADER: Final = 24
LONG_HEADER: Final = 40
RECORD_HEADER: Final = 24

# xlp_info flags
XLP_FIRST_IS_CONTRECORD: Final = 0x0001
XLP_LONG_HEADER: Final = 0x0002
XLP_BKP_REMOVABLE: Final = 0x0004
XLP_FIRST_IS_OVERWRITE_CONTRECORD: Final = 0x0008
XLP_ALL_FLAGS: Final = 0x000F

# Block reference flags (fork_flags)
BKPBLOCK_FORK_MASK: Final = 0x0F
BKPBLOCK_HAS_IMAGE: Final = 0x10
BKPBLOCK_HAS_DATA: Final = 0x20
BKPBLOCK_WILL_INIT: Final = 0x40
BKPBLOCK_SAME_REL: Final = 0x80

# bimg_info, 15 and later; up to 14 compression was 0x02 and APPLY 0x04.
BKPIMAGE_HAS_HOLE: Final = 0x01
BKPIMAGE_APPLY: Final = 0x02
BKPIMAGE_COMPRESS_PGLZ: Final = 0x04
BKPIMAGE_COMPRESS_LZ4: Final = 0x08
BKPIMAGE_COMPRESS_ZSTD: Final = 0x10

XLR_MAX_BLOCK_ID: Final = 32
XLR_BLOCK_ID_DATA_SHORT: Final = 255
XLR_BLOCK_ID_DATA_LONG: Final = 254
XLR_BLOCK_ID_ORIGIN: Final = 253
XLR_BLOCK_ID_TOPLEVEL_XID: Final = 252

RM_XLOG_ID: Final = 0
XLOG_SWITCH: Final = 0x40
XLOG_OVERWRITE_CONTRECORD: Final = 0xD0

_MAX_RECORD_16: Final = 1020 * 1024 * 1024  # XLogRecordMaxSize, 16 and later
_MAX_ALLOC: Final = 0x3FFFFFFF  # MaxAllocSize: the reader's limit before 16

FORK_NAMES: Final = ("main", "fsm", "vm", "init")

_RECORD: Final = struct.Struct("<IIQBBxxI")  # tot_len, xid, prev, info, rmid, crc
_PAGE: Final = struct.Struct("<HHIQI")  # magic, info, tli, pageaddr, rem_len
_LONG: Final = struct.Struct("<QII")  # sysid, seg_size, xlog_blcksz
_BLOCK_NEW_REL: Final = struct.Struct("<BBHIIII")  # id, flags, data_len, spc, db, rel, blk
_BLOCK_SAME_REL: Final = struct.Struct("<BBHI")  # id, flags, data_len, blk
_BLOCK_HEAD: Final = struct.Struct("<BBH")
_IMAGE: Final = struct.Struct("<HHB")  # length, hole_offset, bimg_info
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_REL_BLK: Final = struct.Struct("<IIII")

_tuple_new = tuple.__new__

# The record header as the statistics scan needs it: tot_len, prev, info | rmid << 8, crc.
_STATS_HEAD: Final = struct.Struct("<I4xQHxxI")
# ... and what follows when it is one block header and a short main data header:
# block id, fork_flags, data_length, (relation, block number), DATA_SHORT, length.
_STATS_HEAD46: Final = struct.Struct("<I4xQHxxIBBH16xBB")


def _special_keys(v15: bool) -> bytes:
    """Per ``info | rmid << 8``: 1 where a record needs the general path.

    Invalid resource manager ids (custom ids 128-255 exist from 15), and the
    two XLOG records that change how reading goes on (SWITCH ends the segment,
    OVERWRITE_CONTRECORD is checked against the record abandoned before it).
    """
    table = bytearray(65536)
    for key in range(65536):
        rmid, info = key >> 8, key & 0xFF
        invalid = rmid > 21 and (rmid < 128 or not v15)
        if invalid or (
            rmid == RM_XLOG_ID and info & 0xF0 in (XLOG_SWITCH, XLOG_OVERWRITE_CONTRECORD)
        ):
            table[key] = 1
    return bytes(table)


# Per fork_flags of a lone block header: 1 if it must carry data, 0 if it must
# not, 2 if it has an image or refers to the previous relation (not the shape).
_ONE_BLOCK: Final = bytes(
    2 if f & (BKPBLOCK_HAS_IMAGE | BKPBLOCK_SAME_REL) else int(bool(f & BKPBLOCK_HAS_DATA))
    for f in range(256)
)
_SPECIAL_15: Final = _special_keys(True)
_SPECIAL_14: Final = _special_keys(False)


_COUNT_ONE: Final = 1 << 48  # RecordStats.acc: the count above bit 48, tot_len sums below
# The compiled kernel keeps offsets and record ends in 64-bit integers: it runs
# on buffers below this LSN (4 EiB of WAL), the pure path beyond.
_KERNEL_LIMIT: Final = 1 << 62
# Compiled code holds the GIL: the kernel pauses after about this much WAL
# (about a millisecond) so that other threads are not held up for a segment.
_KERNEL_RUN: Final = 1 << 20


class RecordStats:
    """Per record type counters, filled by :meth:`WalDecoder.scan_stats`.

    Indexed by ``info | rmid << 8`` (the two header bytes as they lie): plain
    lists, because a list index is the cheapest update Python has and the
    scan does one for every record. ``acc[k]`` holds the count of records of
    type ``k`` times 2**48 plus the sum of their xl_tot_len (one update for
    both; sums up to 256 TB per type), ``fpi[k]`` the sum of their stored
    block image lengths (pg_waldump's record size is xl_tot_len minus that).
    """

    __slots__ = ("acc", "fpi")

    def __init__(self) -> None:
        self.acc = [0] * 65536
        self.fpi = [0] * 65536

    def add(self, rec: Record) -> None:
        """Count a record decoded by the general path."""
        key = rec[5] | rec[4] << 8
        self.acc[key] += rec[6] + _COUNT_ONE
        self.fpi[key] += rec[10]

    @property
    def total(self) -> int:
        """The number of records counted."""
        return sum(self.acc) >> 48

    def items(self) -> Iterator[tuple[int, int, int, int, int]]:
        """(rmid, info, count, tot_len sum, fpi sum) for every type seen."""
        mask = _COUNT_ONE - 1
        for key, acc in enumerate(self.acc):
            if acc:
                yield key >> 8, key & 0xFF, acc >> 48, acc & mask, self.fpi[key]


class NeedData(enum.Enum):
    """Returned when the next record needs bytes not fed yet."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


class EndOfWal(WalCorruption):
    """Valid WAL ends at ``lsn``: nothing was written there (yet).

    A zero record length, a page that was never written (zero header), or a
    page left over from a recycled segment (an older page address). On a
    standby this is the normal "wait for more" condition.
    """


class InvalidRecord(WalCorruption):
    """A record or page at ``lsn`` fails validation (CRC, xl_prev, lengths, page header).

    PostgreSQL's recovery stops here too (a torn last record cannot be told
    apart from corruption); unlike :class:`EndOfWal` it means bytes are there
    but wrong.
    """


class BlockRef(NamedTuple):
    """A block reference of a record: which page it touches and what it carries.

    ``image_len`` is the stored (possibly compressed) image length, which is
    what pg_waldump counts as FPI size; ``hole_offset``/``hole_length``
    describe the unused middle of the page that was left out of the image.
    """

    id: int
    spc: int
    db: int
    rel: int
    fork: int
    blk: int
    flags: int  # fork_flags as stored
    data_len: int
    has_image: bool
    image_len: int
    hole_offset: int
    hole_length: int
    bimg_info: int
    apply_image: bool
    compression: str | None  # "pglz", "lz4", "zstd" or None

    @property
    def has_data(self) -> bool:
        return bool(self.flags & BKPBLOCK_HAS_DATA)

    @property
    def will_init(self) -> bool:
        return bool(self.flags & BKPBLOCK_WILL_INIT)

    @property
    def fork_name(self) -> str:
        return FORK_NAMES[self.fork] if self.fork < len(FORK_NAMES) else str(self.fork)


class _RecordFields(NamedTuple):
    lsn: int
    end_lsn: int
    prev: int
    xid: int
    rmid: int
    info: int
    tot_len: int
    blocks: tuple[BlockRef, ...]
    origin: int  # replication origin id, 0 if none
    toplevel_xid: int  # 0 if none
    fpi_len: int  # sum of the blocks' stored image lengths
    main_offset: int  # main data start, relative to the record start
    main_len: int
    buffer: bytes
    offset: int
    version: int  # PostgreSQL major version of the page format


class Record(_RecordFields):
    """A decoded, verified WAL record.

    ``end_lsn`` is PostgreSQL's EndRecPtr: the MAXALIGNed end of the record
    (the next segment's start after an XLOG_SWITCH), which is what
    pg_last_wal_replay_lsn() reports once the record is replayed and what
    XLogInsert returned when it was written.

    The record's bytes are ``buffer[offset:offset + tot_len]`` (page headers
    removed): a record that lay within one page is not copied, so ``buffer``
    may be a larger chunk of fed WAL that the record keeps alive.

    The tuple holds plain ints (``rec[0]`` is the start LSN, ``rec[1]`` the
    end): making three LSN objects per record would cost a sixth of the
    decoding time, so ``lsn``, ``end_lsn`` and ``prev`` make them on access.
    """

    __slots__ = ()

    @property
    def lsn(self) -> LSN:
        return LSN(self[0])

    @property
    def end_lsn(self) -> LSN:
        return LSN(self[1])

    @property
    def prev(self) -> LSN:
        return LSN(self[2])

    @property
    def main_data(self) -> bytes:
        start = self.offset + self.main_offset
        return self.buffer[start : start + self.main_len]

    @property
    def rec_len(self) -> int:
        """pg_waldump's "rec" length: the record without its block images."""
        return self.tot_len - self.fpi_len

    @property
    def raw(self) -> memoryview:
        """The record's bytes as written, page headers removed (a view, no copy)."""
        return memoryview(self.buffer)[self.offset : self.offset + self.tot_len]

    @property
    def rmgr(self) -> str:
        return rmgr_name(self.rmid)

    @property
    def type_name(self) -> str:
        """pg_waldump's record type name, e.g. ``INSERT+INIT``."""
        return record_type_name(self.rmid, self.info, self.version)

    def payload(self) -> Payload | None:
        """The decoded main data for record types replay tracking needs (see rmgr)."""
        return decode_payload(
            self.rmid, self.info, self.xid, self.main_data, self.lsn, self.version
        )

    def block_data(self, block_id: int) -> bytes | None:
        """The data attached to block reference ``block_id`` (None if absent)."""
        pos = self._payload_start()
        for b in self.blocks:
            pos += b.image_len
            if b.id == block_id:
                return self.buffer[pos : pos + b.data_len] if b.data_len else None
            pos += b.data_len
        return None

    def block_image(self, block_id: int) -> bytes | None:
        """The stored (possibly compressed, hole removed) image of block ``block_id``."""
        pos = self._payload_start()
        for b in self.blocks:
            if b.id == block_id:
                return self.buffer[pos : pos + b.image_len] if b.has_image else None
            pos += b.image_len + b.data_len
        return None

    def _payload_start(self) -> int:
        payload = sum(b.image_len + b.data_len for b in self.blocks) + self.main_len
        return self.offset + self.tot_len - payload


class _Bad(Exception):
    """Internal: the record being decoded is invalid (becomes InvalidRecord)."""


def _parse_body(
    buf: bytes, start: int, tot_len: int, v15: bool, toplevel_ok: bool
) -> tuple[tuple[BlockRef, ...], int, int, int, int, int]:
    """Decode the block/origin/data headers of the record at ``buf[start:]``.

    Mirrors DecodeXLogRecord's checks. Returns (blocks, origin, toplevel_xid,
    main_offset, main_len, fpi_len); raises _Bad with PostgreSQL's message.
    """
    end = start + tot_len
    p = start + RECORD_HEADER
    datatotal = 0
    blocks: list[BlockRef] = []
    origin = 0
    toplevel = 0
    main_len = 0
    fpi = 0
    max_id = -1
    spc = db = rel = -1
    while end - p > datatotal:
        bid = buf[p]
        if bid <= XLR_MAX_BLOCK_ID:
            if end - p < 4:
                raise _Bad("record with invalid length")
            flags = buf[p + 1]
            if bid <= max_id:
                raise _Bad(f"out-of-order block_id {bid}")
            max_id = bid
            if not flags & (BKPBLOCK_HAS_IMAGE | BKPBLOCK_SAME_REL):
                # The common case: a new relation, no image, in one unpack.
                if end - p < 20:
                    raise _Bad("record with invalid length")
                _, _, dlen, spc, db, rel, blk = _BLOCK_NEW_REL.unpack_from(buf, p)
                p += 20
                if flags & BKPBLOCK_HAS_DATA:
                    if not dlen:
                        raise _Bad("BKPBLOCK_HAS_DATA set, but no data included")
                elif dlen:
                    raise _Bad(f"BKPBLOCK_HAS_DATA not set, but data length is {dlen}")
                datatotal += dlen
                blocks.append(
                    _tuple_new(
                        BlockRef,
                        (bid, spc, db, rel, flags & 15, blk, flags, dlen, False, 0, 0, 0, 0,
                         False, None),
                    )
                )  # fmt: skip
                continue
            (dlen,) = _U16.unpack_from(buf, p + 2)
            p += 4
            if flags & BKPBLOCK_HAS_DATA:
                if not dlen:
                    raise _Bad("BKPBLOCK_HAS_DATA set, but no data included")
            elif dlen:
                raise _Bad(f"BKPBLOCK_HAS_DATA not set, but data length is {dlen}")
            datatotal += dlen
            has_image = bool(flags & BKPBLOCK_HAS_IMAGE)
            img_len = hole_off = hole_len = bimg = 0
            apply = False
            compression = None
            if has_image:
                if end - p < 5:
                    raise _Bad("record with invalid length")
                img_len, hole_off, bimg = _IMAGE.unpack_from(buf, p)
                p += 5
                if v15:
                    apply = bool(bimg & BKPIMAGE_APPLY)
                    if bimg & BKPIMAGE_COMPRESS_PGLZ:
                        compression = "pglz"
                    elif bimg & BKPIMAGE_COMPRESS_LZ4:
                        compression = "lz4"
                    elif bimg & BKPIMAGE_COMPRESS_ZSTD:
                        compression = "zstd"
                else:
                    apply = bool(bimg & 0x04)
                    if bimg & 0x02:
                        compression = "pglz"
                if compression is not None:
                    if bimg & BKPIMAGE_HAS_HOLE:
                        if end - p < 2:
                            raise _Bad("record with invalid length")
                        (hole_len,) = _U16.unpack_from(buf, p)
                        p += 2
                else:
                    hole_len = BLCKSZ - img_len
                datatotal += img_len
                fpi += img_len
                if bimg & BKPIMAGE_HAS_HOLE:
                    if hole_off == 0 or hole_len == 0 or img_len == BLCKSZ:
                        raise _Bad(
                            f"BKPIMAGE_HAS_HOLE set, but hole offset {hole_off} length "
                            f"{hole_len} block image length {img_len}"
                        )
                elif hole_off or hole_len:
                    raise _Bad(
                        f"BKPIMAGE_HAS_HOLE not set, but hole offset {hole_off} length {hole_len}"
                    )
                if compression is not None:
                    if img_len == BLCKSZ:
                        raise _Bad(f"BKPIMAGE_COMPRESSED set, but block image length {img_len}")
                elif not bimg & BKPIMAGE_HAS_HOLE and img_len != BLCKSZ:
                    raise _Bad(
                        "neither BKPIMAGE_HAS_HOLE nor BKPIMAGE_COMPRESSED set, but block "
                        f"image length is {img_len}"
                    )
            if flags & BKPBLOCK_SAME_REL:
                if rel < 0:
                    raise _Bad("BKPBLOCK_SAME_REL set but no previous rel")
                if end - p < 4:
                    raise _Bad("record with invalid length")
                (blk,) = _U32.unpack_from(buf, p)
                p += 4
            else:
                if end - p < 16:
                    raise _Bad("record with invalid length")
                spc, db, rel, blk = _REL_BLK.unpack_from(buf, p)
                p += 16
            blocks.append(
                _tuple_new(
                    BlockRef,
                    (bid, spc, db, rel, flags & 15, blk, flags, dlen, has_image, img_len,
                     hole_off, hole_len, bimg, apply, compression),
                )
            )  # fmt: skip
        elif bid == XLR_BLOCK_ID_DATA_SHORT:
            if end - p < 2:
                raise _Bad("record with invalid length")
            main_len = buf[p + 1]
            p += 2
            datatotal += main_len
            break
        elif bid == XLR_BLOCK_ID_DATA_LONG:
            if end - p < 5:
                raise _Bad("record with invalid length")
            (main_len,) = _U32.unpack_from(buf, p + 1)
            p += 5
            datatotal += main_len
            break
        elif bid == XLR_BLOCK_ID_ORIGIN:
            if end - p < 3:
                raise _Bad("record with invalid length")
            (origin,) = _U16.unpack_from(buf, p + 1)
            p += 3
        elif bid == XLR_BLOCK_ID_TOPLEVEL_XID and toplevel_ok:
            if end - p < 5:
                raise _Bad("record with invalid length")
            (toplevel,) = _U32.unpack_from(buf, p + 1)
            p += 5
        else:
            raise _Bad(f"invalid block_id {bid}")
    if end - p != datatotal:
        raise _Bad("record with invalid length")
    return tuple(blocks), origin, toplevel, tot_len - main_len, main_len, fpi


def _body_fpi(buf: bytes, start: int, tot_len: int, v15: bool, toplevel_ok: bool) -> int:
    """The checks of :func:`_parse_body`, without building anything.

    Returns the record's FPI length (the sum of its stored image lengths), or
    -1 where _parse_body would raise (the general path then says why). Kept
    statement for statement parallel to _parse_body: the statistics scan
    relies on the two accepting exactly the same records (tested).
    """
    end = start + tot_len
    p = start + RECORD_HEADER
    datatotal = 0
    fpi = 0
    max_id = -1
    have_rel = False
    while end - p > datatotal:
        bid = buf[p]
        if bid <= XLR_MAX_BLOCK_ID:
            if end - p < 4 or bid <= max_id:
                return -1
            max_id = bid
            flags = buf[p + 1]
            dlen = buf[p + 2] | buf[p + 3] << 8
            p += 4
            if flags & BKPBLOCK_HAS_DATA:
                if not dlen:
                    return -1
            elif dlen:
                return -1
            datatotal += dlen
            if flags & BKPBLOCK_HAS_IMAGE:
                if end - p < 5:
                    return -1
                img_len, hole_off, bimg = _IMAGE.unpack_from(buf, p)
                p += 5
                if v15:
                    compressed = bimg & (
                        BKPIMAGE_COMPRESS_PGLZ | BKPIMAGE_COMPRESS_LZ4 | BKPIMAGE_COMPRESS_ZSTD
                    )
                else:
                    compressed = bimg & 0x02
                hole_len = 0
                if compressed:
                    if bimg & BKPIMAGE_HAS_HOLE:
                        if end - p < 2:
                            return -1
                        hole_len = buf[p] | buf[p + 1] << 8
                        p += 2
                else:
                    hole_len = BLCKSZ - img_len
                datatotal += img_len
                fpi += img_len
                if bimg & BKPIMAGE_HAS_HOLE:
                    if hole_off == 0 or hole_len == 0 or img_len == BLCKSZ:
                        return -1
                elif hole_off or hole_len:
                    return -1
                if compressed:
                    if img_len == BLCKSZ:
                        return -1
                elif not bimg & BKPIMAGE_HAS_HOLE and img_len != BLCKSZ:
                    return -1
            if flags & BKPBLOCK_SAME_REL:
                if not have_rel or end - p < 4:
                    return -1
                p += 4
            else:
                if end - p < 16:
                    return -1
                have_rel = True
                p += 16
        elif bid == XLR_BLOCK_ID_DATA_SHORT:
            if end - p < 2:
                return -1
            datatotal += buf[p + 1]
            p += 2
            break
        elif bid == XLR_BLOCK_ID_DATA_LONG:
            if end - p < 5:
                return -1
            datatotal += _U32.unpack_from(buf, p + 1)[0]
            p += 5
            break
        elif bid == XLR_BLOCK_ID_ORIGIN:
            if end - p < 3:
                return -1
            p += 3
        elif bid == XLR_BLOCK_ID_TOPLEVEL_XID and toplevel_ok:
            if end - p < 5:
                return -1
            p += 5
        else:
            return -1
    if end - p != datatotal:
        return -1
    return fpi


def _gather(
    buf: bytes,
    mv: memoryview,
    base: int,
    pos: int,
    tot_len: int,
    *,
    split: bool,
    prev: int,
    want: int,
    special: bytes,
    max_len: int,
    magic: int | None,
    tli: int,
    seg_mask: int,
) -> tuple[bytes, tuple[int, int, int, int, int, int], int, int] | None:
    """Reassemble and verify the record at ``pos`` that continues on the following pages,
    for the fast paths: each page must be a plain continuation page (short
    header, flags FIRST_IS_CONTRECORD with or without BKP_REMOVABLE, the
    expected address and timeline, a remaining length that agrees) within the
    same segment and the fed data. A header that was itself ``split`` across
    pages is checked here once whole (``xl_prev``, not a special record), and
    the CRC against ``want`` (or the header's own when split).

    Returns (record bytes, its header as ``_RECORD`` unpacks it, the start of
    its last page, the position after the record), or None when anything
    differs: the general path decides then.
    """
    if tot_len > max_len:
        return None
    off = pos & 8191
    i = pos - base
    n = len(buf)
    got = 8192 - off
    pieces = [mv[i : i + got]]
    page = pos - off + 8192
    take = 0
    page_head = _PAGE.unpack_from
    while got < tot_len:
        pi = page - base
        if pi + 24 > n or not page & seg_mask:
            return None
        p_magic, p_info, p_tli, p_addr, rem = page_head(buf, pi)
        if p_magic != magic or p_info | 4 != 5 or p_addr != page or p_tli != tli:
            return None
        if rem != tot_len - got:
            return None
        take = rem if rem < 8168 else 8168
        if pi + 24 + take > n:
            return None
        pieces.append(mv[pi + 24 : pi + 24 + take])
        got += take
        page += 8192
    rec = b"".join(pieces)
    header: tuple[int, int, int, int, int, int] = _RECORD.unpack_from(rec, 0)
    if split:
        _, _, xl_prev, info, rmid, want = header
        if xl_prev != prev or special[rmid << 8 | info]:
            return None
    if crc32c(rec[:20], crc32c(memoryview(rec)[24:])) != want:
        return None
    page -= 8192
    return rec, header, page, page + 24 + ((take + 7) & ~7)


class _Assembly:
    """A record being reassembled from several pages (kept across NEED_DATA)."""

    __slots__ = ("checked", "got", "lsn", "page", "pieces", "tot_len")

    def __init__(self, lsn: int, tot_len: int, first: bytes, page: int, checked: bool) -> None:
        self.lsn = lsn
        self.tot_len = tot_len
        self.pieces = [first]
        self.got = len(first)
        self.page = page  # the next page to read a continuation from
        self.checked = checked  # record header validated


Outcome = Record | Literal[NeedData.NEED_DATA] | EndOfWal | InvalidRecord


class WalDecoder:
    """Decode WAL records from bytes fed in order, starting at ``start_lsn``.

    ``start_lsn`` is either a record's start (a checkpoint's redo pointer, a
    record LSN reported by pg_waldump, the end of the last record replayed)
    or the start of a page (a segment's start, typically): then a record
    continued from the previous page is skipped using xlp_rem_len, as
    pg_waldump does, and decoding begins with the first record that starts
    on that page or later.

    ``prev_lsn``, if known, is the start of the record before ``start_lsn``;
    the first record's xl_prev must then equal it (otherwise it must merely
    be lower, as for PostgreSQL's random access). ``system_identifier``,
    if given, must match every segment's long header. ``timeline``, if
    given, is the timeline being read: pages from a later timeline are
    rejected (pages of ancestor timelines are normal before a switch point).

    The page format (and so the PostgreSQL version) is taken from the page
    magic; until the first page header has been seen (when decoding starts
    mid-page from data fed from ``start_lsn``) 15+ rules apply unless
    ``magic`` says otherwise.
    """

    def __init__(
        self,
        start_lsn: int,
        seg_size: int,
        *,
        timeline: int | None = None,
        system_identifier: int | None = None,
        prev_lsn: int | None = None,
        magic: int | None = None,
    ) -> None:
        if seg_size < 1024 * 1024 or seg_size > 1024**3 or seg_size & (seg_size - 1):
            raise ValueError(
                f"WAL segment size must be a power of two between 1 MB and 1 GB, not {seg_size}"
            )
        if start_lsn % 8:
            raise ValueError(f"start LSN {LSN(start_lsn)} is not aligned to a record boundary")
        if 0 < start_lsn % XLOG_BLCKSZ < SHORT_HEADER:
            raise ValueError(f"start LSN {LSN(start_lsn)} points into a page header")
        self.seg_size = seg_size
        self.timeline = timeline
        self.system_identifier = system_identifier
        # Positions are kept as plain ints: arithmetic on an int subclass such as
        # LSN misses the interpreter's fast paths (and LSN.__add__ is Python).
        start_lsn = int(start_lsn)
        self._next = start_lsn  # where the next record (or page header) is read
        self._prev = None if prev_lsn is None else int(prev_lsn)  # None: random access
        self._buf = b""
        self._mv = memoryview(self._buf)
        self._buf_lsn = start_lsn  # LSN of _buf[0]
        self._fed_end: int | None = None  # LSN after the last byte fed
        self._skip_contrecord = start_lsn % XLOG_BLCKSZ == 0
        self._page_ok = -1  # LSN of the last page whose header was validated
        self._latest_page = -1
        self._latest_tli = 0
        self._magic = magic if magic in MAGIC_VERSIONS else None
        self._version = MAGIC_VERSIONS[self._magic] if self._magic else 15
        self._v15 = self._version >= 15
        self._toplevel_ok = self._version >= 14
        self._max_len = _MAX_RECORD_16 if self._version >= 16 else _MAX_ALLOC
        self._asm: _Assembly | None = None
        self._overwritten: int | None = None  # start of an abandoned record
        self._outcome: EndOfWal | InvalidRecord | None = None
        self._scanner: Scanner | None = None  # the compiled kernel's state, made on first use
        self._counts: Counts | None = None

    # -- state --------------------------------------------------------------

    @property
    def position(self) -> LSN:
        """Where the next record is read: the last record's end_lsn (EndRecPtr)."""
        return LSN(self._next)

    @property
    def last_lsn(self) -> LSN | None:
        """Start of the last record returned (ReadRecPtr), or the given prev_lsn, or None."""
        return None if self._prev is None else LSN(self._prev)

    @property
    def version(self) -> int:
        """PostgreSQL major version of the pages (15 until a page header is seen)."""
        return self._version

    @property
    def magic(self) -> int | None:
        return self._magic

    @property
    def fed_end(self) -> LSN | None:
        """LSN just after the last byte fed, or None before the first feed."""
        return None if self._fed_end is None else LSN(self._fed_end)

    @property
    def latest_timeline(self) -> int:
        """The timeline of the last page header validated (0 before the first)."""
        return self._latest_tli

    @property
    def mid_record(self) -> bool:
        """Whether a record is being reassembled or was just abandoned (see OVERWRITE)."""
        return self._asm is not None or self._overwritten is not None

    @property
    def outcome(self) -> EndOfWal | InvalidRecord | None:
        """Why decoding stopped for good, once it has."""
        return self._outcome

    # -- input --------------------------------------------------------------

    def feed(self, lsn: int, data: bytes | bytearray | memoryview) -> None:
        """Add WAL bytes that start at ``lsn``.

        Feeds must be contiguous. The first may start before the start LSN
        (the bytes before its page are ignored) but not after it.
        """
        lsn = int(lsn)
        if self._fed_end is None:
            if lsn > self._next:
                raise LocalProtocolError(
                    f"first WAL fed starts at {LSN(lsn)}, after the start position {self.position}"
                )
        elif lsn != self._fed_end:
            raise LocalProtocolError(
                f"WAL fed at {LSN(lsn)} is not contiguous with the data fed before "
                f"(which ended at {LSN(self._fed_end)})"
            )
        if not isinstance(data, bytes):
            data = bytes(data)
        end = lsn + len(data)
        keep = self._keep_from()
        if self._fed_end is not None:
            keep = max(keep, self._buf_lsn)
        if self._fed_end is not None and keep < self._fed_end:
            self._buf = self._buf[keep - self._buf_lsn :] + data
            self._buf_lsn = keep
        else:
            # Nothing pending: adopt the new bytes as they are (no copy).
            skip = max(0, keep - lsn)
            if skip >= len(data):
                self._buf, self._buf_lsn = b"", end
            else:
                self._buf = data[skip:] if skip else data
                self._buf_lsn = lsn + skip
        self._mv = memoryview(self._buf)
        self._fed_end = end

    def _keep_from(self) -> int:
        """The first position still needed (the page being read must be validated first)."""
        if self._asm is not None:
            return self._asm.page
        nxt = self._next
        if nxt - nxt % XLOG_BLCKSZ > self._page_ok and nxt % XLOG_BLCKSZ:
            return nxt - nxt % XLOG_BLCKSZ  # this page's header is still to be checked
        return nxt

    # -- output -------------------------------------------------------------

    def next_record(self) -> Outcome:
        """The next record, NEED_DATA, or the outcome that ends decoding (sticky)."""
        for rec in self.records():
            return rec
        return self._outcome if self._outcome is not None else NEED_DATA

    def records(self) -> Iterator[Record]:
        """Yield records until more data is needed or decoding stops.

        Afterwards :attr:`outcome` tells whether decoding stopped (and why);
        if it is None, feed more data and iterate again. The decoder's state
        is saved before each record is yielded, so the loop may be left at
        any point (and :meth:`feed` called in between).
        """
        unpack = _RECORD.unpack_from
        page_head = _PAGE.unpack_from
        crc = crc32c
        tnew = _tuple_new
        parse = _parse_body
        gather = _gather
        block_new_rel = _BLOCK_NEW_REL.unpack_from
        seg_mask = self.seg_size - 1
        while self._outcome is None:
            # Fast path: records in fed data whose pages have a plain header,
            # decoded in place when they lie within one page. Anything else
            # leaves the inner loop for _step.
            buf = self._buf
            mv = self._mv
            base = self._buf_lsn
            n = len(buf)
            pos = self._next
            prev = self._prev
            page_ok = self._page_ok
            tli = self._latest_tli
            magic = self._magic
            version = self._version
            v15 = self._v15
            top_ok = self._toplevel_ok
            special = _SPECIAL_15 if v15 else _SPECIAL_14
            max_len = self._max_len
            while self._asm is None and prev is not None:
                off = pos & 8191
                i = pos - base
                if off == 0:
                    # A plain page header (see scan_stats) is accepted here.
                    if i < 0 or i + 24 > n or not pos & seg_mask or self._skip_contrecord:
                        break
                    p_magic, p_info, p_tli, p_addr, _ = page_head(buf, i)
                    if p_magic != magic or p_info | 4 != 4 or p_addr != pos or p_tli != tli:
                        break
                    self._page_ok = self._latest_page = page_ok = pos
                    self._next = pos = pos + 24
                    continue
                if pos - off != page_ok:
                    break
                split = off > 8168  # the record header itself continues on the next page
                if split:
                    if i + 4 > n:
                        break
                    tot_len = buf[i] | buf[i + 1] << 8 | buf[i + 2] << 16 | buf[i + 3] << 24
                    if tot_len < 24:
                        break
                    xid = xl_prev = info = rmid = want = -1  # (known once reassembled)
                else:
                    if i + 24 > n:
                        break
                    tot_len, xid, xl_prev, info, rmid, want = unpack(buf, i)
                    if tot_len < 24 or xl_prev != prev or special[rmid << 8 | info]:
                        break
                e = i + tot_len
                if not split and off + tot_len <= 8192:
                    if e > n or crc(buf[i : i + 20], crc(buf[i + 24 : e])) != want:
                        break
                    rbuf = buf
                    ri = i
                    end = pos + ((tot_len + 7) & ~7)
                    page = -1
                else:
                    # Continued on plain continuation pages (see _gather).
                    gathered = gather(
                        buf, mv, base, pos, tot_len, split=split, prev=prev, want=want,
                        special=special, max_len=max_len, magic=magic, tli=tli,
                        seg_mask=seg_mask,
                    )  # fmt: skip
                    if gathered is None:
                        break
                    rbuf, (_, xid, xl_prev, info, rmid, _), page, end = gathered
                    ri = 0
                first = rbuf[ri + 24] if tot_len >= 26 else -1  # (never past the record)
                if first == XLR_BLOCK_ID_DATA_SHORT and tot_len == 26 + rbuf[ri + 25]:
                    # Main data only (commits, running-xacts, most non-page records).
                    blocks: tuple[BlockRef, ...] = ()
                    origin = top = fpi = 0
                    main_off = 26
                    main_len = tot_len - 26
                elif (
                    first == 0
                    and tot_len >= 46
                    and not rbuf[ri + 25] & 0x90
                    and rbuf[ri + 44] == XLR_BLOCK_ID_DATA_SHORT
                ):
                    # One block without image on a named relation, then main data:
                    # most heap and index changes. Checked as _parse_body would.
                    _, flags, dlen, spc, db, rel, blk = block_new_rel(rbuf, ri + 24)
                    main_len = rbuf[ri + 45]
                    if tot_len != 46 + dlen + main_len or bool(dlen) != bool(flags & 0x20):
                        break
                    blocks = (
                        tnew(
                            BlockRef,
                            (0, spc, db, rel, flags & 15, blk, flags, dlen, False, 0, 0, 0, 0,
                             False, None),
                        ),
                    )  # fmt: skip
                    origin = top = fpi = 0
                    main_off = tot_len - main_len
                else:
                    try:
                        blocks, origin, top, main_off, main_len, fpi = parse(
                            rbuf, ri, tot_len, v15, top_ok
                        )
                    except _Bad:
                        break
                if page >= 0:
                    self._page_ok = self._latest_page = page_ok = page
                rec: Record = tnew(
                    Record,
                    (pos, end, xl_prev, xid, rmid, info, tot_len, blocks, origin, top, fpi,
                     main_off, main_len, rbuf, ri, version),
                )  # fmt: skip
                self._prev = prev = pos
                self._next = pos = end
                yield rec
                if self._buf is not buf or self._next != pos:
                    break  # fed or driven from elsewhere meanwhile: reload
            # The general path: page headers, records crossing pages, errors.
            try:
                general = self._step()
            except _Stop as stop:
                self._outcome = stop.outcome
                return
            if general is None:
                return
            yield general

    def scan_stats(self, stats: RecordStats, stop: int | None = None) -> None:
        """Decode and verify records as :meth:`records` does, counting them into ``stats``.

        For ``waldump --stats`` and other whole-WAL scans that need only each
        record's type and sizes. Building a Record costs more than verifying
        it, so the common records are only checked and counted, in a loop
        that does the least Python per record: one ``struct`` unpack of the
        record header with the first block header, the two CRC calls, a few
        comparisons and two list updates. The verification is the same, check
        for check: records of unusual shape go through the checks of the
        general decoder without building anything (:func:`_body_fpi`), and
        page headers other than a plain one, records whose header is split
        across pages and anything failing a check are handed to the general
        path itself, which then decodes the record or ends decoding with the
        outcome :meth:`records` would give. Afterwards :attr:`outcome`,
        :attr:`position` and :attr:`last_lsn` are what iterating
        :meth:`records` would have left.

        ``stop``, a segment boundary, ends the scan before the first record
        that starts at or after it (the record crossing it is counted): a
        scan of the WAL in parts, each part verified from its segment start
        on and its first record checked against the end of the part before
        (see ``walstream waldump``), counts each record exactly once.
        """
        if stop is not None and stop % self.seg_size:
            raise ValueError(f"stop {LSN(stop)} is not a segment boundary")
        if kernel.FASTSCAN is not None:
            self._scan_stats_compiled(kernel.FASTSCAN, stats, stop)
            return
        acc, fpis = stats.acc, stats.fpi
        head = _STATS_HEAD.unpack_from
        head46 = _STATS_HEAD46.unpack_from
        page_head = _PAGE.unpack_from
        crc = crc32c
        body_fpi = _body_fpi
        one_block = _ONE_BLOCK
        gather = _gather
        seg_mask = self.seg_size - 1
        while self._outcome is None:
            if stop is not None and self._next >= stop and self._asm is None:
                break
            buf = self._buf
            mv = self._mv
            base = self._buf_lsn
            n = len(buf)
            pos = self._next
            prev = self._prev
            if (
                self._asm is None
                and prev is not None
                and not self._skip_contrecord
                and not base & 7
            ):
                page_ok = self._page_ok
                latest_page = self._latest_page
                tli = self._latest_tli
                magic = self._magic
                v15 = self._v15
                top_ok = self._toplevel_ok
                special = _SPECIAL_15 if v15 else _SPECIAL_14
                max_len = self._max_len
                while True:
                    off = pos & 8191
                    if off == 0:
                        # A page start: a plain page header (no flags but
                        # BKP_REMOVABLE, not a segment's first page, the page
                        # before's timeline) is accepted here.
                        i = pos - base
                        if i < 0 or i + 24 > n or not pos & seg_mask:
                            break
                        p_magic, p_info, p_tli, p_addr, _ = page_head(buf, i)
                        if p_magic != magic or p_info | 4 != 4 or p_addr != pos or p_tli != tli:
                            break
                        page_ok = latest_page = pos
                        pos += 24
                        continue
                    if pos - off != page_ok:
                        break  # a page not validated yet
                    i = pos - base
                    # The records lying wholly in this page, with room after
                    # their start for the header and one block header.
                    lim = i - off + 8192
                    if lim > n:
                        lim = n
                    hlim = lim - 46
                    prev_i = prev - base
                    while i <= hlim:
                        tot_len, xl_prev, key, want, b0, flags, dlen, b44, b45 = head46(buf, i)
                        e = i + tot_len
                        if e > lim or xl_prev - base != prev_i or special[key] or tot_len < 24:
                            break
                        if crc(buf[i : i + 20], crc(buf[i + 24 : e])) != want:
                            break
                        if not (
                            # One block without image on a named relation, then
                            # main data: most heap and index changes.
                            b0 == 0
                            and b44 == 255
                            and tot_len == 46 + dlen + b45
                            and one_block[flags] == (dlen != 0)
                        ) and not (
                            # Main data only (commits, most non-page records).
                            b0 == 255 and tot_len == 26 + flags
                        ):
                            fpi = body_fpi(buf, i, tot_len, v15, top_ok)
                            if fpi < 0:
                                break
                            fpis[key] += fpi
                        acc[key] += tot_len + 281474976710656  # + _COUNT_ONE
                        prev_i = i
                        i = (e + 7) & ~7
                    prev = base + prev_i
                    pos = base + i
                    if pos & 8191 == 0:
                        continue
                    # One record the loop above left: near the page's end, or
                    # continued on the next pages, or of another shape, or bad.
                    off = pos & 8191
                    split = off > 8168  # the record header itself continues on the next page
                    if split:
                        if i + 4 > n:
                            break
                        tot_len = buf[i] | buf[i + 1] << 8 | buf[i + 2] << 16 | buf[i + 3] << 24
                        if tot_len < 24:
                            break
                        xl_prev = key = want = -1  # (known once reassembled)
                    else:
                        if i + 24 > n:
                            break
                        tot_len, xl_prev, key, want = head(buf, i)
                        if xl_prev != prev or special[key] or tot_len < 24:
                            break
                    e = i + tot_len
                    if not split and off + tot_len <= 8192:
                        if e > n or crc(buf[i : i + 20], crc(buf[i + 24 : e])) != want:
                            break
                        fpi = body_fpi(buf, i, tot_len, v15, top_ok)
                        if fpi < 0:
                            break
                        end = pos + ((tot_len + 7) & ~7)
                    else:
                        # Continued on the next pages (see _gather).
                        gathered = gather(
                            buf, mv, base, pos, tot_len, split=split, prev=prev, want=want,
                            special=special, max_len=max_len, magic=magic, tli=tli,
                            seg_mask=seg_mask,
                        )  # fmt: skip
                        if gathered is None:
                            break
                        rec, (_, _, _, info, rmid, _), page, end = gathered
                        key = rmid << 8 | info
                        fpi = body_fpi(rec, 0, tot_len, v15, top_ok)
                        if fpi < 0:
                            break
                        page_ok = latest_page = page
                    acc[key] += tot_len + _COUNT_ONE
                    fpis[key] += fpi
                    prev = pos
                    pos = end
                self._next = pos
                self._prev = prev
                self._page_ok = page_ok
                self._latest_page = latest_page
            # The general path: page headers, split headers, errors, need data.
            # (The fast path never passes a segment start: nor the stop.)
            if stop is not None and self._next >= stop and self._asm is None:
                break
            try:
                general = self._step()
            except _Stop as stop:
                self._outcome = stop.outcome
                break
            if general is None:
                break
            stats.add(general)

    def _scan_stats_compiled(
        self, fastscan: ModuleType, stats: RecordStats, stop: int | None
    ) -> None:
        """scan_stats with the compiled kernel's loop in place of the pure fast path."""
        counts = self._counts
        if counts is None:
            counts = self._counts = fastscan.Counts()
        try:
            while self._outcome is None:
                if stop is not None and self._next >= stop and self._asm is None:
                    break
                self._run_kernel(counts, None)
                # (The kernel never passes a segment start: nor the stop.)
                if stop is not None and self._next >= stop and self._asm is None:
                    break
                try:
                    general = self._step()
                except _Stop as e:
                    self._outcome = e.outcome
                    break
                if general is None:
                    break
                stats.add(general)
        finally:
            counts.flush(stats.acc, stats.fpi, _COUNT_ONE)

    def scan_replay(self, sink: ReplaySink) -> None:
        """Decode and verify as :meth:`records` does, handing every record to ``sink``.

        For the startup role's replay with the compiled kernel (see
        :class:`walstream.wal.replay.ReplayState`): the kernel passes the
        common records to the sink without building them, and the general
        path decodes the rest, one at a time, as :meth:`scan_stats` does.
        Afterwards :attr:`outcome`, :attr:`position` and :attr:`last_lsn`
        are what iterating :meth:`records` would have left.
        """
        if kernel.FASTSCAN is None:
            raise LocalProtocolError("scan_replay needs the compiled kernel")
        wanted = sink.wanted
        while self._outcome is None:
            self._run_kernel(None, sink)
            try:
                rec = self._step()
            except _Stop as e:
                self._outcome = e.outcome
                break
            if rec is None:
                break
            key = rec[4] << 8 | rec[5]
            sink.add(rec[1], key, rec[3], rec.main_data if wanted[key] else b"", rec[0])

    def _run_kernel(self, counts: Counts | None, sink: ReplaySink | None) -> None:
        """Let the compiled kernel verify and count (or queue) records from the current position.

        It stops before anything but the plain case, leaving the decoder's
        state as the pure fast path would: the general path goes on from
        there. Not run where the pure fast paths do not run either (no
        xl_prev to check, a record being reassembled, a start that skips a
        continuation) nor at LSNs beyond 2**62.
        """
        buf = self._buf
        base = self._buf_lsn
        prev = self._prev
        if (
            self._asm is not None
            or prev is None
            or self._skip_contrecord
            or base & 7
            or base + len(buf) >= _KERNEL_LIMIT
            or prev >= _KERNEL_LIMIT
        ):
            return
        scanner = self._scanner
        if scanner is None:
            assert kernel.FASTSCAN is not None
            scanner = self._scanner = kernel.FASTSCAN.Scanner(self.seg_size)
        magic = -1 if self._magic is None else self._magic
        special = _SPECIAL_15 if self._v15 else _SPECIAL_14
        while True:
            pos = self._next - base
            pos, prev, page_ok, latest = scanner.run(
                buf, base, pos, prev - base, self._page_ok - base, self._latest_page - base,
                self._latest_tli, magic, self._v15, self._toplevel_ok, self._max_len,
                self._version, special, counts, sink, pos + _KERNEL_RUN,
            )  # fmt: skip
            self._next = base + pos
            self._prev = prev = base + prev
            self._page_ok = base + page_ok
            self._latest_page = base + latest
            if not scanner.paused:
                return
            # Paused at a page start: back in the interpreter, where another
            # thread (the receiver's event loop, beside its replay) may run.

    def _stop_end(self, lsn: int, reason: str) -> _Stop:
        return _Stop(EndOfWal(lsn, reason))

    def _stop_bad(self, lsn: int, reason: str) -> _Stop:
        return _Stop(InvalidRecord(lsn, reason))

    def _available(self, lsn: int, n: int) -> bool:
        return self._fed_end is not None and lsn + n <= self._fed_end

    def _page_header(self, page: int) -> int | None:
        """Validate the header of the page at ``page``; return its size or None (need data)."""
        if not self._available(page, SHORT_HEADER):
            return None
        buf = self._buf
        i = page - self._buf_lsn
        if i < 0:
            # Decoding started mid-page from data fed from there: the header is
            # not available and the record will be verified by its CRC alone.
            return None
        magic, info, tli, pageaddr, _rem_len = _PAGE.unpack_from(buf, i)
        seg_off = page % self.seg_size
        if magic != self._magic:
            if self._magic is None and magic in MAGIC_VERSIONS:
                self._set_magic(magic)
            elif magic == 0 and not any(buf[i : i + SHORT_HEADER]):
                raise self._stop_end(page, f"invalid magic number 0000 {self._where(page)}")
            else:
                raise self._stop_bad(page, f"invalid magic number {magic:04X} {self._where(page)}")
        if info & ~XLP_ALL_FLAGS:
            raise self._stop_bad(page, f"invalid info bits {info:04X} {self._where(page)}")
        size = SHORT_HEADER
        if info & XLP_LONG_HEADER:
            if not self._available(page, LONG_HEADER):
                return None
            size = LONG_HEADER
            sysid, seg_size, blcksz = _LONG.unpack_from(buf, i + SHORT_HEADER)
            if self.system_identifier is not None and sysid != self.system_identifier:
                raise self._stop_bad(
                    page,
                    "WAL file is from different database system: WAL file database system "
                    f"identifier is {sysid}, pg_control database system identifier is "
                    f"{self.system_identifier}",
                )
            if seg_size != self.seg_size:
                raise self._stop_bad(
                    page,
                    "WAL file is from different database system: incorrect segment size in "
                    "page header",
                )
            if blcksz != XLOG_BLCKSZ:
                raise self._stop_bad(
                    page,
                    "WAL file is from different database system: incorrect XLOG_BLCKSZ in "
                    "page header",
                )
        elif seg_off == 0:
            raise self._stop_bad(page, f"invalid info bits {info:04X} {self._where(page)}")
        if pageaddr != page:
            reason = f"unexpected pageaddr {LSN(pageaddr)} {self._where(page)}"
            if pageaddr < page:  # a recycled segment not yet overwritten
                raise self._stop_end(page, reason)
            raise self._stop_bad(page, reason)
        if page > self._latest_page:
            if tli < self._latest_tli:
                after = f"(after {self._latest_tli}) {self._where(page)}"
                raise self._stop_bad(page, f"out-of-sequence timeline ID {tli} {after}")
            if self.timeline is not None and tli > self.timeline:
                raise self._stop_bad(page, f"unexpected timeline ID {tli} {self._where(page)}")
        self._latest_page = page
        self._latest_tli = tli
        return size

    def _where(self, page: int) -> str:
        """The tail of a page header error (only made for errors: it costs)."""
        # Named as in PostgreSQL's messages: by the file's timeline, not the page's.
        name = self._segment_name(page, self.timeline or self._latest_tli or 1)
        return f"in WAL segment {name}, LSN {LSN(page)}, offset {page % self.seg_size}"

    def _set_magic(self, magic: int) -> None:
        self._magic = magic
        self._version = MAGIC_VERSIONS[magic]
        self._v15 = self._version >= 15
        self._toplevel_ok = self._version >= 14
        self._max_len = _MAX_RECORD_16 if self._version >= 16 else _MAX_ALLOC

    def _segment_name(self, lsn: int, tli: int) -> str:
        return segment_name(tli, lsn // self.seg_size, self.seg_size)

    def _page_flags(self, page: int) -> tuple[int, int]:
        _magic, info, _tli, _pageaddr, rem_len = _PAGE.unpack_from(self._buf, page - self._buf_lsn)
        return info, rem_len

    def _step(self) -> Record | None:
        """Decode the next record in full generality; None means more data is needed."""
        if self._asm is not None:
            return self._continue_assembly()
        while True:
            pos = self._next
            off = pos % XLOG_BLCKSZ
            page = pos - off
            if off == 0:
                hdr = self._page_header(page)
                if hdr is None:
                    return None
                self._page_ok = page
                info, rem_len = self._page_flags(page)
                if self._skip_contrecord and info & XLP_FIRST_IS_CONTRECORD:
                    # Starting at a page that continues a record from before
                    # our start: skip it, as XLogFindNextRecord does.
                    if ((rem_len + 7) & ~7) >= XLOG_BLCKSZ - hdr:
                        self._next = page + XLOG_BLCKSZ
                        continue
                    self._next = page + hdr + ((rem_len + 7) & ~7)
                else:
                    if info & XLP_FIRST_IS_CONTRECORD:
                        raise self._stop_bad(
                            page + hdr, f"contrecord is requested by {LSN(page + hdr)}"
                        )
                    self._next = page + hdr
                self._skip_contrecord = False
                continue
            if page != self._page_ok and page >= self._buf_lsn:
                # First record of a mid-page start: validate its page header.
                hdr = self._page_header(page)
                if hdr is None:
                    return None
                self._page_ok = page
                if off < hdr:
                    raise self._stop_bad(
                        pos,
                        f"invalid record offset at {LSN(pos)}: expected at least {hdr}, got {off}",
                    )
            self._skip_contrecord = False
            return self._read_record(pos, off)

    def _check_header(self, pos: int, tot_len: int, rmid: int, prev: int) -> None:
        """ValidXLogRecordHeader."""
        if tot_len < RECORD_HEADER:
            reason = (
                f"invalid record length at {LSN(pos)}: expected at least {RECORD_HEADER}, "
                f"got {tot_len}"
            )
            if tot_len == 0:
                raise self._stop_end(pos, reason)
            raise self._stop_bad(pos, reason)
        if tot_len > self._max_len:
            raise self._stop_bad(pos, f"record length {tot_len} at {LSN(pos)} too long")
        if rmid > 21 and (rmid < 128 or not self._v15):
            raise self._stop_bad(pos, f"invalid resource manager ID {rmid} at {LSN(pos)}")
        if self._prev is None:
            if not prev < pos:
                raise self._stop_bad(
                    pos, f"record with incorrect prev-link {LSN(prev)} at {LSN(pos)}"
                )
        elif prev != self._prev:
            raise self._stop_bad(pos, f"record with incorrect prev-link {LSN(prev)} at {LSN(pos)}")

    def _read_record(self, pos: int, off: int) -> Record | None:
        buf = self._buf
        i = pos - self._buf_lsn
        if not self._available(pos, 4):
            return None
        if off <= XLOG_BLCKSZ - RECORD_HEADER:
            if not self._available(pos, RECORD_HEADER):
                return None
            tot_len, _xid, prev, _info, rmid, _crc = _RECORD.unpack_from(buf, i)
            self._check_header(pos, tot_len, rmid, prev)
            checked = True
        else:
            (tot_len,) = _U32.unpack_from(buf, i)
            if tot_len < RECORD_HEADER:
                self._check_header(pos, tot_len, 0, self._prev or 0)
            checked = False
        room = XLOG_BLCKSZ - off
        if tot_len <= room:
            if not self._available(pos, tot_len):
                return None
            return self._finish(pos, buf, i, tot_len, pos + ((tot_len + 7) & ~7))
        if not self._available(pos, room):
            return None
        self._asm = _Assembly(pos, tot_len, buf[i : i + room], pos + room, checked)
        return self._continue_assembly()

    def _continue_assembly(self) -> Record | None:
        asm = self._asm
        assert asm is not None
        while asm.got < asm.tot_len:
            page = asm.page
            if not self._available(page, SHORT_HEADER):
                return None
            hdr = self._page_header(page)
            if hdr is None:
                return None
            info, rem_len = self._page_flags(page)
            if info & XLP_FIRST_IS_OVERWRITE_CONTRECORD:
                # The record was abandoned after a crash: drop it and read the
                # page as a fresh start (its first record must say so).
                self._asm = None
                self._overwritten = asm.lsn
                self._next = page
                return self._step()
            if not info & XLP_FIRST_IS_CONTRECORD:
                raise self._stop_bad(asm.lsn, f"there is no contrecord flag at {LSN(asm.lsn)}")
            if rem_len == 0 or asm.tot_len != rem_len + asm.got:
                raise self._stop_bad(
                    asm.lsn,
                    f"invalid contrecord length {rem_len} (expected {asm.tot_len - asm.got}) "
                    f"at {LSN(asm.lsn)}",
                )
            take = min(rem_len, XLOG_BLCKSZ - hdr)
            if not self._available(page, hdr + take):
                return None
            i = page - self._buf_lsn + hdr
            asm.pieces.append(self._buf[i : i + take])
            asm.got += take
            if not asm.checked and asm.got >= RECORD_HEADER:
                head = b"".join(asm.pieces)
                tot_len, _, prev, _, rmid, _ = _RECORD.unpack_from(head)
                self._check_header(asm.lsn, tot_len, rmid, prev)
                asm.checked = True
            if asm.got < asm.tot_len:
                asm.page = page + XLOG_BLCKSZ
            else:
                self._page_ok = page
                end = page + hdr + ((take + 7) & ~7)
                self._asm = None
                record = b"".join(asm.pieces)
                return self._finish(asm.lsn, record, 0, asm.tot_len, end)
        raise AssertionError("unreachable")  # pragma: no cover

    def _finish(self, pos: int, buf: bytes, i: int, tot_len: int, end: int) -> Record:
        """Verify the CRC, decode the headers and build the record."""
        _tot, xid, prev, info, rmid, crc = _RECORD.unpack_from(buf, i)
        mv = memoryview(buf)
        if crc32c(mv[i : i + 20], crc32c(mv[i + 24 : i + tot_len], 0)) != crc:
            raise self._stop_bad(
                pos, f"incorrect resource manager data checksum in record at {LSN(pos)}"
            )
        try:
            blocks, origin, top, main_off, main_len, fpi = _parse_body(
                buf, i, tot_len, self._v15, self._toplevel_ok
            )
        except _Bad as e:
            raise self._stop_bad(pos, f"{e} at {LSN(pos)}") from None
        if rmid == RM_XLOG_ID:
            op = info & 0xF0
            if op == XLOG_SWITCH:
                # The rest of the segment is padding: pretend the record fills it.
                end = end + self.seg_size - 1
                end -= end % self.seg_size
            elif op == XLOG_OVERWRITE_CONTRECORD:
                self._check_overwrite(pos, bytes(buf[i + main_off : i + main_off + main_len]))
        rec: Record = _tuple_new(
            Record,
            (pos, end, prev, xid, rmid, info, tot_len, blocks, origin, top, fpi, main_off,
             main_len, buf, i, self._version),
        )  # fmt: skip
        self._prev = pos
        self._next = end
        return rec

    def _check_overwrite(self, pos: int, main: bytes) -> None:
        """The OVERWRITE_CONTRECORD must name the record we abandoned (xlogrecovery_redo).

        Only checked when this decoder saw the abandoned record; decoding that
        starts later cannot know it (pg_waldump never checks).
        """
        expected = self._overwritten
        self._overwritten = None
        if expected is None:
            return
        try:
            payload = decode_payload(
                RM_XLOG_ID, XLOG_OVERWRITE_CONTRECORD, 0, main, pos, self._version
            )
        except WalCorruption as e:
            raise self._stop_bad(pos, e.reason) from None
        assert isinstance(payload, OverwriteContrecord)
        if payload.overwritten_lsn != expected:
            raise self._stop_bad(
                pos,
                f"mismatching overwritten LSN {LSN(expected)} -> {payload.overwritten_lsn}",
            )


class _Stop(Exception):
    """Internal: decoding ends with ``outcome``."""

    def __init__(self, outcome: EndOfWal | InvalidRecord) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome
