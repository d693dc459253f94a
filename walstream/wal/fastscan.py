"""The WAL-scan kernel: the per-record loop of decode + verify, written for mypyc.

This module is only used compiled (see :mod:`walstream.wal.kernel`, which
selects it, and ``setup.py``, which compiles it when ``WALSTREAM_COMPILE=1``
is set at build time). Interpreted it would be slower than the decoder's own
pure-Python loops, which stay the reference and the fallback.

It does the common part of :meth:`WalDecoder.scan_stats
<walstream.wal.decoder.WalDecoder.scan_stats>` and of the startup role's
replay scan: starting from a record start inside a validated page, it
verifies record after record (xl_tot_len, xl_prev, resource manager, both
halves of the CRC, the block and data headers as ``DecodeXLogRecord``
checks them), crosses plain page headers, reassembles records continued on
plain continuation pages, and hands each record to a sink without building
an object for it: a :class:`Counts` for the statistics, a
:class:`ReplaySink` for replay (native arrays of record ends and of the
commits and aborts it parses itself, a tuple only for the other records
whose payload replay decodes). At the first thing that
is not the plain case (a segment's first page, a page header with other
flags, an XLOG_SWITCH or OVERWRITE_CONTRECORD, the end of the data fed, a
check that fails) it returns, and the decoder's general path takes over
from that very record: it decodes it, or ends decoding with PostgreSQL's
reason at PostgreSQL's LSN. The kernel never decides an error itself, so the
two paths cannot disagree on where or why decoding stops.

Written for mypyc: offsets and lengths are native ``i64`` (relative to the
buffer, so they stay far from the limits: ``i64`` arithmetic wraps
silently), never LSNs, which reach 2**64 (the caller only uses the kernel
for buffers below 2**62, and compares 64-bit fields read from the WAL with
``base + offset`` computed in range); little-endian fields are read with
``librt.strings`` (inlined loads) instead of ``struct``; CRC-32C is a
compiled slicing-by-8 table loop up to ``_TABLE_CRC_MAX`` bytes, where
calling the C ``crc32c`` package costs more than the loop (its call and
the slice it needs cost 70-120 ns), and the C package above.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from librt.strings import read_i16_le, read_i32_le, read_i64_le
from librt.vecs import append, vec
from mypy_extensions import i64

__all__ = [
    "WANT_END",
    "WANT_PAYLOAD",
    "WANT_XACT_END",
    "Counts",
    "ReplaySink",
    "Scanner",
    "crc32c_table",
]

_POLY: Final = 0x82F63B78  # CRC-32C, reflected
# Records up to this many bytes are checksummed by the table loop (about
# 0.7 ns a byte compiled); above, the C crc32c package's call is cheaper.
_TABLE_CRC_MAX: Final = 256
_SHORT_HEADER: Final = 24
_PAGE: Final = 8192
_PAGE_DATA: Final = 8168  # XLOG_BLCKSZ - SizeOfXLogShortPHD
_BLCKSZ: Final = 8192
# Record ends are kept as i64: the decoder runs the kernel below this LSN only.
_LIMIT: Final[i64] = 1 << 62
_LIMIT_INT: Final[int] = 1 << 62

XLR_MAX_BLOCK_ID: Final = 32
XLR_BLOCK_ID_DATA_SHORT: Final = 255
XLR_BLOCK_ID_DATA_LONG: Final = 254
XLR_BLOCK_ID_ORIGIN: Final = 253
XLR_BLOCK_ID_TOPLEVEL_XID: Final = 252
BKPBLOCK_HAS_IMAGE: Final = 0x10
BKPBLOCK_HAS_DATA: Final = 0x20
BKPBLOCK_SAME_REL: Final = 0x80
BKPIMAGE_HAS_HOLE: Final = 0x01
# bimg_info compression bits: 15 and later pglz/lz4/zstd, before 15 pglz only.
_COMPRESSED_15: Final = 0x04 | 0x08 | 0x10
_COMPRESSED_14: Final = 0x02


def _crc_table() -> vec[i64]:
    """Eight 256-entry tables for slicing-by-8: entry k*256+b advances byte b by k more bytes."""
    t0: list[int] = []
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        t0.append(c)
    table = vec[i64]()
    row = t0
    for _ in range(8):
        for v in row:
            table = append(table, i64(v))
        row = [(v >> 8) ^ t0[v & 0xFF] for v in row]
    return table


_T: Final = _crc_table()


def _load_c_crc32c() -> Callable[[memoryview, int], int] | None:
    try:
        from crc32c import crc32c as c_crc32c
    except ImportError:
        return None
    f: Callable[[memoryview, int], int] = c_crc32c
    return f


_C_CRC32C: Final = _load_c_crc32c()


def crc32c_table(buf: bytes, i: i64, e: i64, crc: i64) -> i64:
    """CRC-32C of ``buf[i:e]`` continued from ``crc`` (the table loop, for any length)."""
    t = _T
    c = crc ^ 0xFFFFFFFF
    while i + 8 <= e:
        q = read_i64_le(buf, i) ^ c
        c = (
            t[1792 + (q & 255)]
            ^ t[1536 + ((q >> 8) & 255)]
            ^ t[1280 + ((q >> 16) & 255)]
            ^ t[1024 + ((q >> 24) & 255)]
            ^ t[768 + ((q >> 32) & 255)]
            ^ t[512 + ((q >> 40) & 255)]
            ^ t[256 + ((q >> 48) & 255)]
            ^ t[(q >> 56) & 255]
        )
        i += 8
    # The tail in a 4-, a 2- and a 1-byte step (a byte at a time cost a fifth of the scan).
    if i + 4 <= e:
        q = (i64(read_i32_le(buf, i)) & 0xFFFFFFFF) ^ c
        c = t[768 + (q & 255)] ^ t[512 + ((q >> 8) & 255)] ^ t[256 + ((q >> 16) & 255)] ^ t[q >> 24]
        i += 4
    if i + 2 <= e:
        q = (i64(read_i16_le(buf, i)) & 0xFFFF) ^ (c & 0xFFFF)
        c = t[256 + (q & 255)] ^ t[q >> 8] ^ (c >> 16)
        i += 2
    if i < e:
        c = t[(c ^ buf[i]) & 255] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _record_crc(buf: bytes, i: i64, tot_len: i64) -> i64:
    """The CRC PostgreSQL stores in xl_crc: the data after the header, then its first 20 bytes."""
    c_crc = _C_CRC32C
    if tot_len > _TABLE_CRC_MAX and c_crc is not None:
        body = c_crc(memoryview(buf)[i + 24 : i + tot_len], 0)
        return crc32c_table(buf, i, i + 20, i64(body))
    return crc32c_table(buf, i, i + 20, crc32c_table(buf, i + 24, i + tot_len, 0))


def _u32(buf: bytes, i: i64) -> i64:
    return i64(read_i32_le(buf, i)) & 0xFFFFFFFF


def _u16(buf: bytes, i: i64) -> i64:
    return i64(read_i16_le(buf, i)) & 0xFFFF


class Counts:
    """Per record type counters of one scan, flushed into RecordStats' lists.

    Native arrays indexed like RecordStats (``info | rmid << 8``), so that
    counting a record allocates nothing; :meth:`flush` adds the types seen
    to the Python lists and clears them.
    """

    def __init__(self) -> None:
        self.n: vec[i64] = vec[i64]([0] * 65536)
        self.tot: vec[i64] = vec[i64]([0] * 65536)
        self.fpi: vec[i64] = vec[i64]([0] * 65536)
        self.touched: vec[i64] = vec[i64]()

    def add(self, key: i64, tot_len: i64, fpi: i64) -> None:
        n = self.n[key]
        if n == 0:
            self.touched = append(self.touched, key)
        self.n[key] = n + 1
        self.tot[key] = self.tot[key] + tot_len
        if fpi:
            self.fpi[key] = self.fpi[key] + fpi

    def flush(self, acc: list[int], fpis: list[int], count_one: int) -> None:
        """Add the counts to RecordStats' ``acc`` and ``fpi`` lists; start from zero again."""
        for key in self.touched:
            # In int, not i64: an int operand next to an i64 one is made i64,
            # and the count times 2**48 would wrap silently.
            count: int = int(self.n[key])
            acc[key] += count * count_one + int(self.tot[key])
            fpis[key] += int(self.fpi[key])
            self.n[key] = 0
            self.tot[key] = 0
            self.fpi[key] = 0
        self.touched = vec[i64]()


# ReplaySink.wanted values: what replay needs of a record type.
WANT_END: Final = 0  # only its end (the replay position)
WANT_PAYLOAD: Final = 1  # its main data, decoded in Python (decode_payload)
WANT_XACT_END: Final = 2  # a commit or abort: parsed here when well formed
_XACT_KINDS: Final = ("COMMIT", "", "ABORT", "COMMIT_PREPARED", "ABORT_PREPARED")


class ReplaySink:
    """Records decoded for replay, waiting until they are durable.

    Every record's end (EndRecPtr) goes into a native array. Replay needs
    more of a few record types (``wanted``, per ``info | rmid << 8``):
    transaction ends are parsed here (:func:`_xact_end`) into native arrays
    too, the others (and transaction ends this parser leaves to
    ``decode_payload``) into a list of tuples ``(index, end, rmid, info,
    xid, main data, lsn)``. :meth:`pop_due` then replays in LSN order up to
    a durable position: record ends and transaction ends on its own (as
    ReplayState._apply and _track would: the bounded ``xacts`` mapping,
    the last transaction time), the rest handed back one at a time. Record
    ends are absolute LSNs kept as ``i64``: the kernel only runs below
    2**62.
    """

    def __init__(self, wanted: bytes, xacts: OrderedDict[int, str], recent: i64) -> None:
        self.wanted = wanted
        self.xacts = xacts  # ReplayState.xacts, the same object
        self.recent = recent  # its bound
        self.ends: vec[i64] = vec[i64]()
        self.head: i64 = 0  # ends[head] is the first record not replayed
        self.dropped: i64 = 0  # records removed from the front of ends
        self.entries: list[tuple[int, int, int, int, int, bytes, int]] = []
        self.entry_head: i64 = 0
        # Transaction ends parsed here: record index, xid, kind (info & 0x70 >> 4), time.
        self.x_index: vec[i64] = vec[i64]()
        self.x_xid: vec[i64] = vec[i64]()
        self.x_kind: vec[i64] = vec[i64]()
        self.x_time: vec[i64] = vec[i64]()
        self.x_head: i64 = 0
        self.replayed: i64 = 0  # the end of the last record replayed, 0 before any
        self.pending: i64 = 0  # the end of the record pop_due returned, replayed on the next call
        self.xact_time: i64 = 0  # the raw time of the last transaction end replayed here
        self.xact_time_new = False  # ... not yet taken by ReplayState

    def __len__(self) -> int:
        """Records decoded and not replayed yet."""
        return int(len(self.ends) - self.head)

    def add(self, end: i64, key: i64, xid: int, main: bytes, lsn: int) -> None:
        """A record whose payload, if wanted, Python decodes (the general path's records)."""
        if self.wanted[key]:
            index = self.dropped + len(self.ends)
            self.entries.append((index, end, key >> 8, key & 255, xid, main, lsn))
        self.ends = append(self.ends, end)

    def add_end(self, end: i64) -> None:
        self.ends = append(self.ends, end)

    def add_xact_end(self, end: i64, xid: i64, kind: i64, time: i64) -> None:
        self.x_index = append(self.x_index, self.dropped + len(self.ends))
        self.x_xid = append(self.x_xid, xid)
        self.x_kind = append(self.x_kind, kind)
        self.x_time = append(self.x_time, time)
        self.ends = append(self.ends, end)

    def pop_due(self, durable: int) -> tuple[int, int, int, int, bytes, int] | None:
        """Replay up to ``durable``: the next record for Python ending there or before, else None.

        Records between are replayed on the way (``replayed`` follows them,
        transaction ends update ``xacts`` and ``xact_time``); a record for
        Python is returned as ``(end, rmid, info, xid, main data, lsn)``
        before ``replayed`` passes it: the caller applies it, then takes its
        end as the replay position.
        """
        limit: i64 = _LIMIT
        if durable < _LIMIT_INT:  # (compared as int: an LSN may not fit an i64)
            limit = i64(durable)
        if self.pending:  # the record returned last time was applied
            self.replayed = self.pending
            self.pending = 0
        ends = self.ends
        head = self.head
        start = head
        count = len(ends)
        dropped = self.dropped
        next_entry: i64 = -1
        if self.entry_head < len(self.entries):
            next_entry = i64(self.entries[self.entry_head][0]) - dropped
        x_head = self.x_head
        x_count = len(self.x_index)
        next_xact: i64 = -1
        if x_head < x_count:
            next_xact = self.x_index[x_head] - dropped
        found: tuple[int, int, int, int, bytes, int] | None = None
        while head < count and ends[head] <= limit:
            if head == next_xact:
                kind = self.x_kind[x_head]
                self.xact_time = self.x_time[x_head]
                self.xact_time_new = True
                xacts = self.xacts
                xacts[int(self.x_xid[x_head])] = _XACT_KINDS[kind]
                if len(xacts) > self.recent:
                    xacts.popitem(last=False)
                x_head += 1
                next_xact = self.x_index[x_head] - dropped if x_head < x_count else -1
            elif head == next_entry:
                entry = self.entries[self.entry_head]
                self.entry_head += 1
                found = (entry[1], entry[2], entry[3], entry[4], entry[5], entry[6])
                if head > start:
                    self.replayed = ends[head - 1]
                self.pending = ends[head]
                head += 1
                break
            head += 1
        if found is None and head > start:
            self.replayed = ends[head - 1]
        self.x_head = x_head
        self.head = head
        self._compact()
        return found

    def _compact(self) -> None:
        """Drop what was replayed (decoding may stay ahead of durability for ever)."""
        head = self.head
        if head < 65536 and head < len(self.ends):
            return
        self.ends = self.ends[head:]
        self.dropped += head
        self.head = 0
        if self.entry_head:
            self.entries = self.entries[self.entry_head :]
            self.entry_head = 0
        x_head = self.x_head
        if x_head:
            self.x_index = self.x_index[x_head:]
            self.x_xid = self.x_xid[x_head:]
            self.x_kind = self.x_kind[x_head:]
            self.x_time = self.x_time[x_head:]
            self.x_head = 0


def _xact_end(buf: bytes, m: i64, e: i64, info: i64, version: i64) -> i64:
    """The xid a well-formed commit or abort record completes, or -1 for decode_payload to decide.

    The main data is ``buf[m:e]``. Follows rmgr._xact (ParseCommitRecord /
    ParseAbortRecord) on the records it accepts, which are those whose
    every field lies within the main data: no negative count, no GID (its
    text is Python's to decode). Anything else is left to the Python
    parser, which then says exactly what it says on the pure path.
    """
    op = info & 0x70
    commit = op == 0x00 or op == 0x30
    p = m + 8
    if p > e:
        return -1
    xinfo: i64 = 0
    if info & 0x80:  # XLOG_XACT_HAS_INFO
        if p + 4 > e:
            return -1
        xinfo = _u32(buf, p)
        p += 4
    if xinfo & 0x01:  # HAS_DBINFO
        p += 8
    if xinfo & 0x02:  # HAS_SUBXACTS
        if p + 4 > e:
            return -1
        n = i64(read_i32_le(buf, p))
        if n < 0:
            return -1
        p += 4 + 4 * n
    if xinfo & 0x04:  # HAS_RELFILELOCATORS
        if p + 4 > e:
            return -1
        n = i64(read_i32_le(buf, p))
        if n < 0:
            return -1
        p += 4 + 12 * n
    if xinfo & 0x100:  # HAS_DROPPED_STATS
        if p + 4 > e:
            return -1
        n = i64(read_i32_le(buf, p))
        if n < 0:
            return -1
        p += 4 + (16 if version >= 18 else 12) * n
    if commit and xinfo & 0x08:  # HAS_INVALS
        if p + 4 > e:
            return -1
        n = i64(read_i32_le(buf, p))
        if n < 0:
            return -1
        p += 4 + 16 * n
    twophase: i64 = -1
    if xinfo & 0x10:  # HAS_TWOPHASE
        if p + 4 > e or xinfo & 0x80:  # (HAS_GID)
            return -1
        twophase = _u32(buf, p)
        p += 4
    if xinfo & 0x20:  # HAS_ORIGIN
        p += 16
    if p > e:
        return -1
    if twophase >= 0 and (op == 0x30 or op == 0x40):
        return twophase
    return -2  # the record's own xl_xid


class Scanner:
    """Runs the kernel over a decoder's buffer (see WalDecoder._run_kernel); state in, state out.

    Offsets are relative to ``base``, the LSN of ``buf[0]``. One Scanner
    belongs to one decoder and keeps its segment size and the per-key
    table of records left to the general path (``special``).
    """

    def __init__(self, seg_size: i64) -> None:
        self.seg_mask: i64 = seg_size - 1
        self.main_len: i64 = 0  # set by _body: the main data length of the record checked
        # The state of one run.
        self.buf = b""
        self.base: i64 = 0
        self.n: i64 = 0
        self.pos: i64 = 0
        self.prev: i64 = 0
        self.page_ok: i64 = -1
        self.latest_page: i64 = -1
        self.tli: i64 = 0
        self.magic: i64 = -1
        self.v15 = True
        self.top_ok = True
        self.max_len: i64 = 0
        self.version: i64 = 15
        self.special = b""
        self.pause_at: i64 = 0
        self.paused = False
        # Set by _gather: the start of the record's last page and the position after it.
        self.g_page: i64 = 0
        self.g_end: i64 = 0

    def run(
        self,
        buf: bytes,
        base: i64,
        pos: i64,
        prev: i64,
        page_ok: i64,
        latest_page: i64,
        tli: i64,
        magic: i64,
        v15: bool,
        top_ok: bool,
        max_len: i64,
        version: i64,
        special: bytes,
        counts: Counts | None,
        sink: ReplaySink | None,
        pause_at: i64,
    ) -> tuple[i64, i64, i64, i64]:
        """Verify and hand on records from offset ``pos``; return (pos, prev, page_ok, latest_page).

        ``pos`` must be a record start or a page start, ``prev`` the offset
        of the record before it, ``page_ok`` the offset of the last page
        whose header was validated. Stops before the first record or page
        that is not the plain case (the general path's to decide), or
        ``paused`` at the first page start at or after offset ``pause_at``
        (compiled code holds the GIL: the caller runs it again after a
        chance for other threads).
        """
        self.buf = buf
        self.base = base
        self.n = len(buf)
        self.pos = pos
        self.prev = prev
        self.page_ok = page_ok
        self.latest_page = latest_page
        self.tli = tli
        self.magic = magic
        self.v15 = v15
        self.top_ok = top_ok
        self.max_len = max_len
        self.version = version
        self.special = special
        self.pause_at = pause_at
        self.paused = False
        self._scan(counts, sink)
        self.buf = b""
        self.special = b""
        return self.pos, self.prev, self.page_ok, self.latest_page

    def _scan(self, counts: Counts | None, sink: ReplaySink | None) -> None:
        buf = self.buf
        base = self.base
        n = self.n
        i = self.pos
        prev = self.prev
        page_ok = self.page_ok
        latest = self.latest_page
        tli = self.tli
        magic = self.magic
        special = self.special
        seg_mask = self.seg_mask
        boff = base & 8191
        bseg = base & seg_mask
        while True:
            off = (i + boff) & 8191
            if off == 0:
                # A page start: a plain page header (no flags but BKP_REMOVABLE,
                # not a segment's first page, the page before's timeline) is
                # accepted here; anything else is the general path's.
                if i < 0 or i + _SHORT_HEADER > n or ((i + bseg) & seg_mask) == 0:
                    break
                if i >= self.pause_at:
                    self.paused = True
                    break
                if (
                    _u16(buf, i) != magic
                    or _u16(buf, i + 2) | 4 != 4
                    or _u32(buf, i + 4) != tli
                    or read_i64_le(buf, i + 8) != base + i
                ):
                    break
                page_ok = i
                latest = i
                i += _SHORT_HEADER
                continue
            if i - off != page_ok:
                break  # a page not validated yet
            # The records lying wholly in this page.
            lim = i - off + _PAGE
            if lim > n:
                lim = n
            while i + 24 <= lim:
                tot_len = _u32(buf, i)
                e = i + tot_len
                if e > lim or tot_len < 24 or read_i64_le(buf, i + 8) != base + prev:
                    break
                key = i64(buf[i + 17]) << 8 | i64(buf[i + 16])
                if special[key] or _record_crc(buf, i, tot_len) != _u32(buf, i + 20):
                    break
                fpi = self._shape(buf, i, tot_len)
                if fpi < 0:
                    break
                end = (e + 7) & ~7
                if counts is not None:
                    counts.add(key, tot_len, fpi)
                if sink is not None:
                    self._hand(sink, buf, i, tot_len, key, base + end, base + i)
                prev = i
                i = end
            if ((i + boff) & 8191) == 0:
                continue
            # The record the loop above left: continued on the next pages, or
            # not fed yet, or bad (the general path then says why).
            off = (i + boff) & 8191
            split = off > _PAGE_DATA  # the record header itself continues on the next page
            if i + 4 > n:
                break
            tot_len = _u32(buf, i)
            if tot_len < 24:
                break
            want: i64 = -1
            if not split:
                if i + 24 > n:
                    break
                key = i64(buf[i + 17]) << 8 | i64(buf[i + 16])
                if read_i64_le(buf, i + 8) != base + prev or special[key]:
                    break
                if off + tot_len <= _PAGE:
                    break  # within the page: not fed yet, or failed a check above
                want = _u32(buf, i + 20)
            rec = self._gather(i, tot_len, split, prev, want)
            if rec is None:
                break
            fpi = self._shape(rec, 0, tot_len)
            if fpi < 0:
                break
            key = i64(rec[17]) << 8 | i64(rec[16])
            page_ok = self.g_page
            latest = page_ok
            end = self.g_end
            if counts is not None:
                counts.add(key, tot_len, fpi)
            if sink is not None:
                self._hand(sink, rec, 0, tot_len, key, base + end, base + i)
            prev = i
            i = end
        self.pos = i
        self.prev = prev
        self.page_ok = page_ok
        self.latest_page = latest

    def _hand(
        self, sink: ReplaySink, buf: bytes, s: i64, tot_len: i64, key: i64, end: i64, lsn: i64
    ) -> None:
        """Give the verified record at ``buf[s:]`` (LSN ``lsn`` to ``end``) to the replay sink."""
        wanted = sink.wanted[key]
        if wanted == WANT_END:
            sink.add_end(end)
            return
        e = s + tot_len
        m = e - self.main_len
        xid = _u32(buf, s + 4)
        if wanted == WANT_XACT_END:
            completed = _xact_end(buf, m, e, key & 255, self.version)
            if completed != -1:
                kind = (key & 0x70) >> 4
                time = read_i64_le(buf, m)
                sink.add_xact_end(end, xid if completed == -2 else completed, kind, time)
                return
        sink.add(end, key, xid, buf[m:e], lsn)

    def _gather(self, i: i64, tot_len: i64, split: bool, prev: i64, want: i64) -> bytes | None:
        """Reassemble and verify the record at ``i`` that continues on the following pages.

        Each page must be a plain continuation page (short header, flags
        FIRST_IS_CONTRECORD with or without BKP_REMOVABLE, the expected
        address and timeline, a remaining length that agrees) within the same
        segment and the data fed. A header ``split`` across pages is checked
        once whole (xl_prev, not a special record); the CRC against ``want``
        (or the header's own when split). Returns the record's bytes and
        sets ``g_page`` and ``g_end``, or None: the general path decides.
        """
        if tot_len > self.max_len:
            return None
        buf = self.buf
        base = self.base
        n = self.n
        seg_mask = self.seg_mask
        off = (i + base) & 8191
        got = _PAGE - off
        pieces = [buf[i : i + got]]
        page = i - off + _PAGE
        take: i64 = 0
        while got < tot_len:
            if page + _SHORT_HEADER > n or ((page + base) & seg_mask) == 0:
                return None
            if (
                _u16(buf, page) != self.magic
                or _u16(buf, page + 2) | 4 != 5
                or _u32(buf, page + 4) != self.tli
                or read_i64_le(buf, page + 8) != base + page
            ):
                return None
            rem = _u32(buf, page + 16)  # xlp_rem_len
            if rem != tot_len - got:
                return None
            take = rem if rem < _PAGE_DATA else _PAGE_DATA
            if page + _SHORT_HEADER + take > n:
                return None
            pieces.append(buf[page + _SHORT_HEADER : page + _SHORT_HEADER + take])
            got += take
            page += _PAGE
        rec = b"".join(pieces)
        if split:
            key = i64(rec[17]) << 8 | i64(rec[16])
            if read_i64_le(rec, 8) != base + prev or self.special[key]:
                return None
            want = _u32(rec, 20)
        if _record_crc(rec, 0, tot_len) != want:
            return None
        page -= _PAGE
        self.g_page = page
        self.g_end = page + _SHORT_HEADER + ((take + 7) & ~7)
        return rec

    def _shape(self, buf: bytes, s: i64, tot_len: i64) -> i64:
        """The block and data header checks; returns the FPI length or -1 (and sets main_len).

        The two shapes most records have are recognised first: main data
        only (commits, most non-page records), and one block without image
        on a named relation followed by short main data (most heap and
        index changes).
        """
        if tot_len >= 26:
            b0 = buf[s + 24]
            if b0 == XLR_BLOCK_ID_DATA_SHORT and tot_len == 26 + i64(buf[s + 25]):
                self.main_len = tot_len - 26
                return 0
            if b0 == 0 and tot_len >= 46 and buf[s + 44] == XLR_BLOCK_ID_DATA_SHORT:
                flags = buf[s + 25]
                dlen = _u16(buf, s + 26)
                main_len = i64(buf[s + 45])
                if (
                    tot_len == 46 + dlen + main_len
                    and not flags & (BKPBLOCK_HAS_IMAGE | BKPBLOCK_SAME_REL)
                    and (flags & BKPBLOCK_HAS_DATA != 0) == (dlen != 0)
                ):
                    self.main_len = main_len
                    return 0
        return self._body(buf, s, tot_len)

    def _body(self, buf: bytes, s: i64, tot_len: i64) -> i64:
        """DecodeXLogRecord's checks, statement for statement as the decoder's _body_fpi."""
        v15 = self.v15
        end = s + tot_len
        p = s + 24
        datatotal: i64 = 0
        fpi: i64 = 0
        max_id: i64 = -1
        main_len: i64 = 0
        have_rel = False
        while end - p > datatotal:
            bid = i64(buf[p])
            if bid <= XLR_MAX_BLOCK_ID:
                if end - p < 4 or bid <= max_id:
                    return -1
                max_id = bid
                flags = buf[p + 1]
                dlen = _u16(buf, p + 2)
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
                    img_len = _u16(buf, p)
                    hole_off = _u16(buf, p + 2)
                    bimg = buf[p + 4]
                    p += 5
                    compressed = bimg & (_COMPRESSED_15 if v15 else _COMPRESSED_14)
                    hole_len: i64 = 0
                    if compressed:
                        if bimg & BKPIMAGE_HAS_HOLE:
                            if end - p < 2:
                                return -1
                            hole_len = _u16(buf, p)
                            p += 2
                    else:
                        hole_len = _BLCKSZ - img_len
                    datatotal += img_len
                    fpi += img_len
                    if bimg & BKPIMAGE_HAS_HOLE:
                        if hole_off == 0 or hole_len == 0 or img_len == _BLCKSZ:
                            return -1
                    elif hole_off or hole_len:
                        return -1
                    if compressed:
                        if img_len == _BLCKSZ:
                            return -1
                    elif not bimg & BKPIMAGE_HAS_HOLE and img_len != _BLCKSZ:
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
                main_len = i64(buf[p + 1])
                datatotal += main_len
                p += 2
                break
            elif bid == XLR_BLOCK_ID_DATA_LONG:
                if end - p < 5:
                    return -1
                main_len = _u32(buf, p + 1)
                datatotal += main_len
                p += 5
                break
            elif bid == XLR_BLOCK_ID_ORIGIN:
                if end - p < 3:
                    return -1
                p += 3
            elif bid == XLR_BLOCK_ID_TOPLEVEL_XID and self.top_ok:
                if end - p < 5:
                    return -1
                p += 5
            else:
                return -1
        if end - p != datatotal:
            return -1
        self.main_len = main_len
        return fpi
