"""WalReader: compressed files read as they grow, are replaced, or are rewritten in place.

The compressed streams are written by walstream.storage.compression, whose
output is byte for byte pg_receivewal's (tests/test_receiver_interchange.py
holds that against the real program); what matters here is what the reader
makes of a file at each stage of being written.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from walstream.storage import reader as reader_module
from walstream.storage.compression import Compression, make_compressor
from walstream.storage.reader import WalReader

METHODS = {"gzip": ".gz", "lz4": ".lz4", "zstd": ".zst"}


def _wal_like(n: int, seed: int = 1) -> bytes:
    """Bytes that compress as WAL does, partly: runs of zeros between random records."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        out += rnd.randbytes(rnd.randrange(20, 400)) + bytes(rnd.randrange(0, 3000))
    return bytes(out[:n])


def _stream(method: str, data: bytes, flush_every: int, *, finish: bool = False) -> bytes:
    c = make_compressor(Compression(method))
    assert c is not None
    out = [c.start()]
    for i in range(0, len(data), flush_every):
        out += [c.compress(data[i : i + flush_every]), c.flush()]
    if finish:
        out.append(c.finish())
    return b"".join(out)


@pytest.fixture
def inflations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each file the reader decompresses from its start (an inode each)."""
    made: list[int] = []
    real = reader_module._Inflated

    def counting(ino: int, *args: object) -> object:
        made.append(ino)
        return real(ino, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(reader_module, "_Inflated", counting)
    return made


@pytest.mark.parametrize("method", list(METHODS))
def test_a_growing_partial_is_decompressed_on_from_where_it_was(
    tmp_path: Path, method: str, inflations: list[int]
) -> None:
    data = _wal_like(3_000_000)
    c = make_compressor(Compression(method))
    assert c is not None
    path = tmp_path / f"000000010000000000000001{METHODS[method]}.partial"
    reader = WalReader(tmp_path)
    with open(path, "wb") as f:
        f.write(c.start())
        for i in range(0, len(data), 250_000):
            f.write(c.compress(data[i : i + 250_000]) + c.flush())
            f.flush()
            held = min(i + 250_000, len(data))
            assert reader.wal_size(path) == held
            start = max(0, i - 100)
            assert reader.read(path, start, 300) == data[start : min(start + 300, held)]
    assert reader.read(path) == data
    assert len(inflations) == 1  # decompressed once, as it grew


def test_a_partial_replaced_by_a_rename_is_read_afresh(
    tmp_path: Path, inflations: list[int]
) -> None:
    """walstream's receiver rewrites a reopened compressed .partial into NAME.partial.tmp and
    renames it over the old one once it holds as much."""
    data = _wal_like(1_000_000)
    path = tmp_path / "000000010000000000000001.gz.partial"
    path.write_bytes(_stream("gzip", data[:400_000], 100_000))
    reader = WalReader(tmp_path)
    assert reader.read(path) == data[:400_000]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(_stream("gzip", data[:600_000], 250_000))
    os.rename(tmp, path)
    assert reader.read(path) == data[:600_000]
    assert len(inflations) == 2


def test_a_partial_rewritten_in_place_reads_as_what_decodes(tmp_path: Path) -> None:
    """pg_receivewal reopens a compressed .partial without truncating it and writes a new
    stream from its start: until the new stream is the longer, the old one's bytes follow it."""
    data = _wal_like(2_000_000)
    path = tmp_path / "000000010000000000000001.gz.partial"
    old = _stream("gzip", data[:1_500_000], 100_000)
    path.write_bytes(old)
    reader = WalReader(tmp_path)
    assert reader.read(path) == data[:1_500_000]
    new = _stream("gzip", data[:300_000], 300_000)
    with open(path, "r+b") as f:
        f.write(new)
    assert os.path.getsize(path) == len(old)
    seen = reader.read(path)
    assert seen[:300_000] == data[:300_000]  # what follows, if anything, is not WAL
    with open(path, "r+b") as f:
        f.write(_stream("gzip", data, 300_000))
    assert reader.read(path) == data


def test_a_damaged_completed_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "000000010000000000000001.gz"
    stream = bytearray(_stream("gzip", _wal_like(500_000), 100_000, finish=True))
    stream[len(stream) // 2 :] = os.urandom(len(stream) - len(stream) // 2)
    path.write_bytes(bytes(stream))
    with pytest.raises(ValueError, match=r"could not decompress .*000000010000000000000001\.gz"):
        WalReader(tmp_path).read(path, 0, 10)


@pytest.mark.parametrize("method", list(METHODS))
def test_a_completed_file_cut_short_is_an_error_naming_it(tmp_path: Path, method: str) -> None:
    """Random bytes in a deflate stream often decode without error: only the end tells.

    The damaged-file test above failed about one run in a few hundred that way.
    """
    path = tmp_path / f"000000010000000000000001{METHODS[method]}"
    stream = _stream(method, _wal_like(500_000), 100_000, finish=True)
    path.write_bytes(stream[: len(stream) // 2])
    with pytest.raises(ValueError, match=r"ends before its compressed stream"):
        WalReader(tmp_path).read(path, 0, 10)
    partial = tmp_path / f"000000010000000000000002{METHODS[method]}.partial"
    partial.write_bytes(stream[: len(stream) // 2])
    assert WalReader(tmp_path).read(partial, 0, 10) == _wal_like(500_000)[:10]


def test_a_header_is_read_without_decompressing_the_file(
    tmp_path: Path, inflations: list[int]
) -> None:
    data = _wal_like(4_000_000)
    for method, suffix in METHODS.items():
        path = tmp_path / f"000000010000000000000001{suffix}"
        path.write_bytes(_stream(method, data, 1_000_000, finish=True))
        assert WalReader(tmp_path).head(path) == data[:40]
    assert inflations == []  # nothing cached, nothing decompressed whole


def test_several_compressed_files_read_in_turn(tmp_path: Path, inflations: list[int]) -> None:
    """Clients reading different segments, and the tail: each file decompressed once."""
    files = []
    for i in range(3):
        data = _wal_like(300_000, seed=i)
        path = tmp_path / f"00000001000000000000000{i}.gz"
        path.write_bytes(_stream("gzip", data, 100_000, finish=True))
        files.append((path, data))
    reader = WalReader(tmp_path)
    for offset in range(0, 300_000, 50_000):
        for path, data in files:
            assert reader.read(path, offset, 50_000) == data[offset : offset + 50_000]
    assert len(inflations) == 3


def test_the_cache_is_bounded_in_bytes_but_keeps_the_file_being_read(
    tmp_path: Path, inflations: list[int]
) -> None:
    files = []
    for i in range(2):
        data = _wal_like(400_000, seed=i)
        path = tmp_path / f"00000001000000000000000{i}.gz"
        path.write_bytes(_stream("gzip", data, 100_000, finish=True))
        files.append((path, data))
    reader = WalReader(tmp_path, cache_bytes=500_000)  # room for one of them
    for _ in range(2):
        for path, data in files:
            assert reader.read(path, 1000, 100) == data[1000:1100]
            assert reader.read(path, 300_000, 100) == data[300_000:300_100]
    assert len(inflations) == 4
