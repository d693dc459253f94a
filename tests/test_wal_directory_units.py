"""The disk layer's repairs of what pg_receivewal leaves broken, without a server."""

from __future__ import annotations

import logging
import random
import struct
import zlib
from pathlib import Path

import pytest

from walstream import LSN
from walstream.storage.compression import Compression
from walstream.storage.directory import DirectoryMismatch, WalDirectory

SEG = 1024 * 1024
NAME = "000000010000000000000003"


def _long_header(sysid: int, segno: int) -> bytes:
    # xlp_magic (15), xlp_info LONG_HEADER, tli, pageaddr, rem_len, pad, sysid, seg_size, blcksz
    return struct.pack("<HHIQIIQII", 0xD110, 0x0002, 1, segno * SEG, 0, 0, sysid, SEG, 8192)


def test_short_partial_from_a_crash_during_padding_is_repaired(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / f"{NAME}.partial").write_bytes(bytes(12345))  # padding interrupted
    d = WalDirectory(tmp_path, SEG, sync=True)
    assert d.find_start() == (LSN(3 * SEG), 1)
    caplog.set_level(logging.WARNING)
    d.write(3 * SEG, b"w" * 100, 1)
    d.close()
    assert "has 12345 bytes, should be 0 or 1048576: padding it again" in caplog.text
    data = (tmp_path / f"{NAME}.partial").read_bytes()
    assert len(data) == SEG
    assert data[:100] == b"w" * 100
    assert not any(data[100:])


# The same WAL whichever stream sends it again; random, so a compressor cannot
# hold much of it back.
_WAL = random.Random(3).randbytes(SEG)


def _gzip_partial(path: Path) -> bytes:
    d = zlib.decompressobj(31)
    out = d.decompress(path.read_bytes())
    assert d.unused_data == b""  # pg_receivewal would leave an old stream's tail here
    return out


def test_reopened_gzip_partial_has_no_trailing_garbage(tmp_path: Path) -> None:
    gz = Compression.parse("gzip:5")
    first = WalDirectory(tmp_path, SEG, compression=gz)
    first.write(3 * SEG, _WAL[:5000], 1)
    first.close()
    again = WalDirectory(tmp_path, SEG, compression=gz)
    assert again.find_start() == (LSN(3 * SEG), 1)
    again.write(3 * SEG, _WAL[:8000], 1)
    again.close()
    assert _gzip_partial(tmp_path / f"{NAME}.gz.partial") == _WAL[:8000]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{NAME}.gz.partial"]


def test_a_rewrite_of_a_compressed_partial_never_holds_less_than_the_old_file(
    tmp_path: Path,
) -> None:
    """The old file stays until the new one holds as much WAL, durably; a short one is dropped."""
    gz = Compression.parse("gzip")
    partial = tmp_path / f"{NAME}.gz.partial"
    first = WalDirectory(tmp_path, SEG, compression=gz)
    first.write(3 * SEG, _WAL[:5000], 1)
    first.close()

    short = WalDirectory(tmp_path, SEG, compression=gz)  # the stream breaks again soon
    short.write(3 * SEG, _WAL[:300], 1)
    short.sync()
    assert _gzip_partial(partial) == _WAL[:5000]
    short.close()
    assert _gzip_partial(partial) == _WAL[:5000]
    assert sorted(p.name for p in tmp_path.iterdir()) == [partial.name]

    crashed = WalDirectory(tmp_path, SEG, compression=gz)  # killed mid-rewrite: never closed
    crashed.write(3 * SEG, _WAL[:4000], 1)
    crashed.sync()
    assert _gzip_partial(partial) == _WAL[:5000]

    resumed = WalDirectory(tmp_path, SEG, compression=gz)
    assert resumed.find_start() == (LSN(3 * SEG), 1)  # the leftover .tmp is no segment
    resumed.write(3 * SEG, _WAL[:6000], 1)
    resumed.sync()  # caught up and durable: it takes the old file's place
    assert _gzip_partial(partial) == _WAL[:6000]
    assert sorted(p.name for p in tmp_path.iterdir()) == [partial.name]
    resumed.write(3 * SEG + 6000, _WAL[6000:], 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{NAME}.gz"]


def test_a_rewrite_killed_after_passing_the_old_file_is_kept(tmp_path: Path) -> None:
    """Default fsync rules: no sync point before completion, then SIGKILL; the resume keeps it."""
    gz = Compression.parse("gzip")
    partial = tmp_path / f"{NAME}.gz.partial"
    first = WalDirectory(tmp_path, SEG, compression=gz)
    first.write(3 * SEG, _WAL[:5000], 1)
    first.close()
    killed = WalDirectory(tmp_path, SEG, compression=gz)
    killed.write(3 * SEG, _WAL[: 900 * 1024], 1)  # written, never synced: then SIGKILL
    assert _gzip_partial(partial) == _WAL[:5000]
    resumed = WalDirectory(tmp_path, SEG, compression=gz)
    assert resumed.find_start() == (LSN(3 * SEG), 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [partial.name]
    held = zlib.decompressobj(31).decompress(partial.read_bytes())
    assert len(held) > 800 * 1024
    assert held == _WAL[: len(held)]


def test_a_rewrite_that_completes_the_segment_replaces_the_partial(tmp_path: Path) -> None:
    gz = Compression.parse("gzip")
    first = WalDirectory(tmp_path, SEG, compression=gz)
    first.write(3 * SEG, _WAL[:5000], 1)
    first.close()
    again = WalDirectory(tmp_path, SEG, compression=gz)
    again.write(3 * SEG, _WAL, 1)  # no sync point on the way (default fsync rules)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{NAME}.gz"]
    assert zlib.decompress((tmp_path / f"{NAME}.gz").read_bytes(), 31) == _WAL


def test_wal_of_another_system_is_refused(tmp_path: Path) -> None:
    segment = _long_header(111, 3) + bytes(SEG - 40)
    (tmp_path / NAME).write_bytes(segment)
    with pytest.raises(DirectoryMismatch, match=r"belongs to database system 111.*system 222"):
        WalDirectory(tmp_path, SEG, system_identifier=222).find_start()
    assert WalDirectory(tmp_path, SEG, system_identifier=111).find_start() == (LSN(4 * SEG), 1)
    assert (tmp_path / NAME).read_bytes() == segment  # nothing touched


def test_no_sync_never_claims_a_flush(tmp_path: Path) -> None:
    d = WalDirectory(tmp_path, SEG, sync=False)
    d.write(3 * SEG, b"x" * SEG, 1)  # completes the segment
    assert d.written == LSN(4 * SEG)
    assert d.sync() == LSN(0)
    assert d.flushed == LSN(0)
    assert (tmp_path / NAME).stat().st_size == SEG


def test_resume_scan_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "000000010000000000000005").write_bytes(bytes(SEG))
    (tmp_path / "000000020000000000000005.partial").write_bytes(bytes(SEG))
    (tmp_path / "000000010000000000000004").write_bytes(bytes(SEG))
    caplog.set_level(logging.WARNING)
    assert WalDirectory(tmp_path, SEG).find_start() == (LSN(5 * SEG), 2)  # higher TLI wins
    (tmp_path / "000000020000000000000005").write_bytes(bytes(SEG))
    assert WalDirectory(tmp_path, SEG).find_start() == (LSN(6 * SEG), 2)  # completed beats partial
    (tmp_path / "000000020000000000000006").write_bytes(bytes(100))  # wrong size: skipped
    assert WalDirectory(tmp_path, SEG).find_start() == (LSN(6 * SEG), 2)
    assert "has incorrect size 100, skipping" in caplog.text


@pytest.mark.parametrize("compress", ["none", "gzip:1"])
def test_write_chunks_equals_one_write(tmp_path: Path, compress: str) -> None:
    # Pieces inside one segment (one pwritev), ending exactly at a segment's
    # end, and crossing into the next segment: the files match one plain write.
    pieces = [bytes([i]) * n for i, n in enumerate([5000, 70000, 1000, SEG - 76000, 3000, 9])]
    pieces += [b"y" * 300_000, b"z" * (SEG - 200_000)]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir()
    parts.mkdir()
    a = WalDirectory(whole, SEG, compression=Compression.parse(compress))
    a.write(3 * SEG, b"".join(pieces), 1)
    a.close()
    b = WalDirectory(parts, SEG, compression=Compression.parse(compress))
    assert b.fits(3 * SEG, 10, 1) is False  # no segment open yet
    b.write_chunks(3 * SEG, pieces[:1], 1)
    assert b.fits(3 * SEG + 5000, 71000, 1) is (compress == "none")
    assert not b.fits(3 * SEG + 5000, SEG - 5000, 1)  # would complete the segment
    b.write_chunks(3 * SEG + 5000, pieces[1:3], 1)
    lsn = 3 * SEG + 76000
    for group in (pieces[3:5], pieces[5:]):
        b.write_chunks(lsn, group, 1)
        lsn += sum(map(len, group))
    assert b.written == LSN(lsn)
    b.close()
    names = sorted(p.name for p in whole.iterdir())
    assert names == sorted(p.name for p in parts.iterdir())
    assert len(names) == 3  # two completed segments and a .partial
    for name in names:
        assert (whole / name).read_bytes() == (parts / name).read_bytes(), name
