"""CRC-32C, record-type names and exact page layouts, with pg_waldump as the judge.

The WAL here is written by tests/walbuild.py, for what a server cannot be
asked to produce on demand: every (rmgr, info) pair, record headers split at
each possible offset, records ending exactly at page and segment ends, block
references of every shape, an abandoned record with its overwrite page. Each
built segment is read by pg_waldump too, so the writer cannot drift into a
private dialect.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from walstream.embedded import find_bindir
from walstream.wal import crc as crc_module
from walstream.wal.crc import HAVE_C_CRC32C, crc32c, crc32c_python
from walstream.wal.decoder import EndOfWal, InvalidRecord, Record, WalDecoder
from walstream.wal.rmgr import record_type_name, rmgr_id, rmgr_name

from .conftest import require_version
from .walbuild import MAGIC, PAGE, WalWriter, noop, record
from .waldump_oracle import compare, error_lsn, run_ours, run_waldump

VERSIONS = [15, 16, 18]
SEG = 1024 * 1024

# ---------------------------------------------------------------------------
# CRC-32C
# ---------------------------------------------------------------------------


def test_crc_check_value() -> None:
    assert crc32c_python(b"123456789") == 0xE3069283
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c_python(b"") == 0
    # The dev/test environment installs the C implementation (walstream[fast]).
    assert HAVE_C_CRC32C
    assert crc_module.crc32c is not crc32c_python


@given(data=st.binary(max_size=600), cut=st.integers(min_value=0, max_value=600))
def test_python_crc_matches_c_and_continues(data: bytes, cut: int) -> None:
    cut = min(cut, len(data))
    expected = crc32c(data)
    assert crc32c_python(data) == expected
    assert crc32c_python(data[cut:], crc32c_python(data[:cut])) == expected
    assert crc32c_python(memoryview(data)[cut:], crc32c(data[:cut])) == expected
    assert crc32c(memoryview(data)[cut:], crc32c_python(data[:cut])) == expected


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------


def test_rmgr_names_and_ids() -> None:
    assert [rmgr_name(i) for i in (0, 1, 10, 21)] == [
        "XLOG",
        "Transaction",
        "Heap",
        "LogicalMessage",
    ]
    assert rmgr_name(200) == "custom200"
    assert rmgr_id("heap2") == 9
    assert rmgr_id("custom130") == 130
    assert rmgr_id("custom12") is None
    assert rmgr_id("nosuch") is None
    assert record_type_name(10, 0x80) == "INSERT+INIT"
    assert record_type_name(1, 0x80) == "COMMIT"  # XLOG_XACT_HAS_INFO is not the opcode
    assert record_type_name(9, 0x10, 16) == "PRUNE"
    assert record_type_name(9, 0x10, 17) == "PRUNE_ON_ACCESS"
    assert record_type_name(0, 0xE0, 16) == "UNKNOWN (e0)"
    assert record_type_name(0, 0xE0, 18) == "CHECKPOINT_REDO"


def _write(w: WalWriter, directory: Path) -> list[str]:
    directory.mkdir(exist_ok=True)
    names = []
    for segno, data in w.segments().items():
        name = w.segment_name(segno)
        (directory / name).write_bytes(data)
        names.append(name)
    return names


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("mode", ["--stats=record", "--stats"])
def test_every_record_type_is_named_as_pg_waldump_names_it(
    version: int, mode: str, tmp_path: Path
) -> None:
    require_version(version)
    w = WalWriter(version)
    for rmid in range(22):
        for op in range(16):
            if (rmid, op) != (0, 4):  # XLOG_SWITCH ends the segment: last
                w.add(record(rmid, op << 4, xid=rmid * 16 + op))
    w.add(record(0, 0x40))
    names = _write(w, tmp_path)
    bindir = find_bindir(version)
    assert bindir is not None
    theirs = run_waldump(bindir, mode, "-p", str(tmp_path), names[0])
    code, out, _ = run_ours(mode, "-p", str(tmp_path), names[0])
    assert code == 0
    assert theirs.code == 0
    assert out == theirs.stdout
    assert "UNKNOWN (e0)" in out or version >= 17 or mode == "--stats"


# ---------------------------------------------------------------------------
# Page layouts and block references, decoded as pg_waldump decodes them
# ---------------------------------------------------------------------------


def _block(
    bid: int,
    *,
    fork: int = 0,
    data: bytes = b"",
    image: bytes | None = None,
    hole: tuple[int, int] | None = None,
    bimg_extra: int = 0,
    same_rel: bool = False,
    will_init: bool = False,
    rel: tuple[int, int, int] = (1663, 5, 16384),
    blk: int = 7,
) -> tuple[bytes, bytes]:
    """A block header and its payload (image then data), for PostgreSQL 15+."""
    flags = fork | (0x20 if data else 0) | (0x80 if same_rel else 0) | (0x40 if will_init else 0)
    head = b""
    payload = b""
    if image is not None:
        flags |= 0x10
        bimg = bimg_extra | (0x01 if hole else 0)
        head += struct.pack("<HHB", len(image), hole[0] if hole else 0, bimg)
        if hole and bimg & 0x1C:  # compressed with a hole: the hole length follows
            head += struct.pack("<H", hole[1])
        payload += image
    head = struct.pack("<BBH", bid, flags, len(data)) + head
    if not same_rel:
        head += struct.pack("<III", *rel)
    head += struct.pack("<I", blk)
    return head, payload + data


def _with_blocks(*blocks: tuple[bytes, bytes], main: bytes = b"", extra: bytes = b"") -> bytes:
    """An XLOG NOOP (no rmgr description to parse) carrying the given block references."""
    headers = b"".join(h for h, _ in blocks) + extra
    payload = b"".join(p for _, p in blocks)
    return record(0, 0x20, main_data=main, headers=headers, payload=payload)


def _layouts(version: int) -> WalWriter:
    w = WalWriter(version)
    w.add(noop(64))
    # Record headers starting in each of the last 24 bytes of a page (8-aligned).
    for offset in (8160, 8168, 8176, 8184):
        w.skip_to(offset)
        w.add(noop(200))
    # A record ending exactly at a page end, then one right after the next header.
    w.skip_to(8192 - 64)
    w.add(noop(64))
    w.add(noop(48))
    # Block references of every shape.
    v15 = version >= 15
    pglz, lz4, zstd, apply = (0x04, 0x08, 0x10, 0x02) if v15 else (0x02, 0, 0, 0x04)
    w.add(
        _with_blocks(
            _block(0, data=b"d" * 10),
            _block(1, image=b"i" * 8192, bimg_extra=apply, same_rel=True, blk=8),
            _block(3, fork=2, image=b"j" * 5000, hole=(100, 3192), bimg_extra=apply),
            _block(4, image=b"k" * 300, hole=(64, 4000), bimg_extra=pglz | apply),
            _block(7, image=b"l" * 200, bimg_extra=(lz4 or pglz) | apply, data=b"x"),
            _block(8, image=b"m" * 100, bimg_extra=(zstd or pglz), fork=1),
            _block(32, will_init=True, fork=3, same_rel=True, blk=0xFFFFFFFE),
            main=b"main" * 100,
            extra=struct.pack("<BH", 0xFD, 7) + struct.pack("<BI", 0xFC, 4242),
        )
    )
    w.add(_with_blocks(_block(0), main=b""))  # no data, no main data
    # A record crossing three segments.
    w.add(noop(2 * SEG + 5000))
    # A record ending exactly at a segment end, then the next segment's first.
    w.fill_to((w.pos // SEG + 1) * SEG - 64)
    w.add(noop(64))
    assert w.pos % SEG == 0
    w.add(noop(32))
    # An XLOG_SWITCH whose header is split across pages.
    w.skip_to(8184)
    w.add(record(0, 0x40))
    w.end_segment()
    w.add(noop(40))  # at the next segment's first record position
    return w


@pytest.mark.parametrize("version", VERSIONS)
def test_page_layouts_and_block_shapes_match_pg_waldump(version: int, tmp_path: Path) -> None:
    require_version(version)
    w = _layouts(version)
    _write(w, tmp_path)
    bindir = find_bindir(version)
    assert bindir is not None
    theirs = run_waldump(bindir, "-b", "-p", str(tmp_path), "-s", f"0/{w.start:X}")
    decoder = WalDecoder(w.start, SEG)
    segments = w.segments()
    for segno in sorted(segments):
        decoder.feed(segno * SEG, segments[segno])
    records = list(decoder.records())
    compare(records, theirs)
    assert [r.lsn for r in records] == w.lsns
    assert isinstance(decoder.outcome, EndOfWal)
    assert theirs.error is not None
    assert decoder.outcome.lsn == error_lsn(theirs.error)
    by_lsn = {r.lsn: r for r in records}
    rich = next(r for r in records if len(r.blocks) == 7)
    assert (rich.origin, rich.toplevel_xid) == (7, 4242)
    assert rich.main_data == b"main" * 100
    assert rich.block_data(0) == b"d" * 10
    assert rich.block_data(7) == b"x"
    assert rich.block_image(3) == b"j" * 5000
    assert rich.block_image(0) is None
    assert [b.compression for b in rich.blocks] == (
        [None, None, None, "pglz", "lz4", "zstd", None]
        if version >= 15
        else [None, None, None, "pglz", "pglz", "pglz", None]
    )
    assert [b.apply_image for b in rich.blocks] == [False, True, True, True, True, False, False]
    assert rich.blocks[-1].will_init
    assert rich.blocks[-1].fork_name == "init"
    assert rich.fpi_len == 8192 + 5000 + 300 + 200 + 100
    empty = next(r for r in records if r.blocks and not r.blocks[0].data_len and not r.main_len)
    assert empty.block_data(0) is None
    switch = next(r for r in records if r.type_name == "SWITCH")
    assert switch.lsn % PAGE == 8184
    assert switch.end_lsn % SEG == 0
    assert by_lsn[w.lsns[-1]].lsn == switch.end_lsn + 40


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("has_data_without_data", "BKPBLOCK_HAS_DATA set, but no data included"),
        ("out_of_order", "out-of-order block_id 1"),
        ("same_rel_first", "BKPBLOCK_SAME_REL set but no previous rel"),
        ("bad_block_id", "invalid block_id 40"),
        ("hole_without_hole", "BKPIMAGE_HAS_HOLE set, but hole offset 0 length 4192"),
        ("short_image", "BKPIMAGE_HAS_HOLE not set, but hole offset 0 length 4192"),
        ("lengths", "record with invalid length"),
    ],
)
def test_inconsistent_block_headers_are_invalid(case: str, message: str, tmp_path: Path) -> None:
    """CRC-valid records whose headers DecodeXLogRecord rejects: same verdict, same words."""
    require_version(15)
    w = WalWriter(15)
    w.add(noop(64))
    if case == "has_data_without_data":
        head, payload = _block(0)
        head = head[:1] + bytes([head[1] | 0x20]) + head[2:]
        bad = _with_blocks((head, payload))
    elif case == "out_of_order":
        bad = _with_blocks(_block(1), _block(1, same_rel=True))
    elif case == "same_rel_first":
        bad = _with_blocks(_block(0, same_rel=True))
    elif case == "bad_block_id":
        bad = _with_blocks(_block(40))
    elif case == "hole_without_hole":
        bad = _with_blocks(_block(0, image=b"z" * 4000, bimg_extra=0x01 | 0x02))
    elif case == "short_image":
        bad = _with_blocks(_block(0, image=b"z" * 4000, bimg_extra=0x02))
    else:
        bad = _with_blocks(_block(0, data=b"q" * 8), main=b"m" * 4)
        bad = bad[:-1]  # one byte short of what the headers declare
        bad = struct.pack("<I", len(bad)) + bad[4:]
    lsn = w.add(bad)
    w.add(noop(64))
    _write(w, tmp_path)
    bindir = find_bindir(15)
    assert bindir is not None
    theirs = run_waldump(bindir, "-p", str(tmp_path), "-s", f"0/{w.start:X}")
    assert theirs.error is not None
    assert message in theirs.error
    decoder = WalDecoder(w.start, SEG)
    for segno, data in w.segments().items():
        decoder.feed(segno * SEG, data)
    records = list(decoder.records())
    assert len(records) == len(theirs.records) == 1
    outcome = decoder.outcome
    assert isinstance(outcome, InvalidRecord)
    assert message in outcome.reason
    # PostgreSQL names the previous record (ReadRecPtr) here; walstream names the bad one.
    assert outcome.lsn == lsn


def test_abandoned_record_and_its_overwrite(tmp_path: Path) -> None:
    require_version(15)
    for variant in ("matching", "mismatching", "no_flag"):
        w = WalWriter(15)
        w.add(noop(64))
        w.skip_to(6000)
        before = w.add(noop(100))
        abandoned = w.abandon(noop(5000))
        if variant == "no_flag":
            w.overwrite_next = False
        named = abandoned if variant != "mismatching" else abandoned + 8
        overwrite = w.add(record(0, 0xD0, main_data=struct.pack("<Qq", named, 0)))
        w.add(noop(64))
        directory = tmp_path / variant
        _write(w, directory)
        bindir = find_bindir(15)
        assert bindir is not None
        theirs = run_waldump(bindir, "-p", str(directory), "-s", f"0/{w.start:X}")
        decoder = WalDecoder(w.start, SEG)
        for segno, data in w.segments().items():
            decoder.feed(segno * SEG, data)
        records = list(decoder.records())
        if variant == "no_flag":
            assert theirs.error is not None
            assert "there is no contrecord flag" in theirs.error
            assert isinstance(decoder.outcome, InvalidRecord)
            assert decoder.outcome.lsn == abandoned == error_lsn(theirs.error)
            assert records[-1].lsn == before
            continue
        # pg_waldump skips the abandoned record like recovery does ...
        assert [d.lsn for d in theirs.records][-3:] == [before, overwrite, w.lsns[-1]]
        if variant == "matching":
            assert [r.lsn for r in records] == [d.lsn for d in theirs.records]
            ow = next(r for r in records if r.lsn == overwrite)
            assert ow.prev == before  # xl_prev skips the abandoned record
        else:
            # ... and recovery then insists the overwrite names it (pg_waldump does not check).
            assert records[-1].lsn == before
            assert isinstance(decoder.outcome, InvalidRecord)
            assert "mismatching overwritten LSN" in decoder.outcome.reason


def test_mid_page_start_without_the_page_header() -> None:
    """Streaming from a record in mid-page: no header to check, CRCs still verified."""
    w = WalWriter(16)
    first = w.add(noop(64))
    second = w.add(record(0, 0x20, main_data=b"a" * 100))
    third = w.add(noop(4000))
    w.add(noop(9000))  # crosses into the next page, whose header is checked
    data = w.segments()[w.start // SEG]
    decoder = WalDecoder(second, SEG, prev_lsn=first)
    decoder.feed(second, data[second - w.start :])
    got = list(decoder.records())
    assert [r.lsn for r in got] == w.lsns[1:]
    assert isinstance(got[0], Record)
    assert got[1].lsn == third
    assert decoder.version == 16  # learnt from the next page's magic
    assert MAGIC[16] == decoder.magic


@pytest.mark.parametrize("size", [24, 27, 46, 47, 64])
def test_feed_ending_exactly_at_a_small_record(size: int) -> None:
    """The in-place fast path never reads past the record it decodes."""
    w = WalWriter(15)
    first = w.add(noop(64))
    last = w.add(noop(size))
    data = w.segments()[w.start // SEG]
    decoder = WalDecoder(w.start, SEG)
    decoder.feed(w.start, data[: last + size - 1 - w.start])
    assert [r.lsn for r in decoder.records()] == [first]
    decoder.feed(last + size - 1, data[last + size - 1 - w.start : last + size - w.start])
    assert [r.lsn for r in decoder.records()] == [last]
    assert decoder.outcome is None
