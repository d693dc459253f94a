"""WAL file compression as pg_receivewal writes it: gzip, lz4 and (ours) zstd.

Byte for byte what pg_receivewal 15+ writes, so either tool reads the
other's files: gzip is zlib's gzip stream (the header zlib's gz* API writes,
input fed 8 kB at a time, a sync flush at each sync point); lz4 is an LZ4
frame with default preferences fed 4 kB at a time; zstd (``.zst``) is ours.
lz4 and zstandard are optional extras, imported on first use.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

__all__ = [
    "Compression",
    "Compressor",
    "Decompressor",
    "decompress_file",
    "make_compressor",
    "make_decompressor",
    "read_wal_file",
    "suffix_of",
]

_PAGE: Final = 8192  # XLOG_BLCKSZ: zlib's gz* API buffers this much input
_METHODS: Final = {"none": "", "gzip": ".gz", "lz4": ".lz4", "zstd": ".zst"}
_LEVELS: Final = {"gzip": (1, 9, 6), "lz4": (1, 12, None), "zstd": (1, 22, None)}


@dataclass(frozen=True)
class Compression:
    """pg_receivewal's ``-Z`` (none, gzip[:N], lz4[:N], a gzip level), and zstd[:N]."""

    method: str = "none"
    level: int | None = None

    @property
    def suffix(self) -> str:
        return _METHODS[self.method]

    @classmethod
    def parse(cls, spec: str) -> Compression:
        spec = spec.strip()
        if spec.isdigit():
            level = int(spec)
            return cls() if level == 0 else cls._checked("gzip", level)
        method, _, detail = spec.partition(":")
        method = method.lower()
        if method not in _METHODS:
            raise ValueError(f'unrecognized compression algorithm: "{method}"')
        if not detail:
            return cls(method) if method == "none" else cls._checked(method, None)
        key, eq, value = detail.partition("=")
        if eq and key != "level":
            raise ValueError(f'unrecognized compression option: "{key}"')
        text = value if eq else detail
        if not text.lstrip("-").isdigit():
            raise ValueError(f'value for compression option "level" must be an integer: "{text}"')
        if method == "none":
            raise ValueError('compression algorithm "none" does not accept a compression level')
        return cls._checked(method, int(text))

    @classmethod
    def _checked(cls, method: str, level: int | None) -> Compression:
        low, high, _ = _LEVELS[method]
        if level is not None and not low <= level <= high:
            raise ValueError(
                f'compression algorithm "{method}" expects a compression level between '
                f"{low} and {high} (default at {_LEVELS[method][2] or 'library default'})"
            )
        if method == "lz4":
            _require("lz4.frame", "lz4")
        if method == "zstd":
            _require("zstandard", "zstd")
        return cls(method, level)


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(
            f"{extra} compression needs the {module.split('.')[0]} package: "
            f"pip install 'walstream[{extra}]'"
        ) from None


class Compressor(Protocol):
    def start(self) -> bytes: ...  # what is written when the file is created
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...  # a sync point: everything so far decodable
    def finish(self) -> bytes: ...


class _Gzip:
    def __init__(self, level: int | None) -> None:
        self._z = zlib.compressobj(6 if level is None else level, zlib.DEFLATED, 31, 8)

    def start(self) -> bytes:
        return b""  # zlib writes the gzip header with the first output

    def compress(self, data: bytes) -> bytes:
        # zlib's gz* API, which pg_receivewal uses, buffers input 8 kB at a time.
        compress = self._z.compress
        return b"".join(compress(data[i : i + _PAGE]) for i in range(0, len(data), _PAGE))

    def flush(self) -> bytes:
        return self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class _Lz4:
    """An LZ4 frame as pg_receivewal writes it: default preferences (64 kB linked
    blocks, no checksums, no content size), input fed 4 kB at a time."""

    def __init__(self, level: int | None) -> None:
        self._frame = frame = _require("lz4.frame", "lz4")
        self._ctx = frame.create_compression_context()
        self._level = level or 0

    def start(self) -> bytes:
        header: bytes = self._frame.compress_begin(
            self._ctx,
            compression_level=self._level,
            block_size=self._frame.BLOCKSIZE_MAX64KB,
            content_checksum=False,
            block_linked=True,
            auto_flush=False,
        )
        return header

    def compress(self, data: bytes) -> bytes:
        chunk = self._frame.compress_chunk
        return b"".join(chunk(self._ctx, data[i : i + 4096]) for i in range(0, len(data), 4096))

    def flush(self) -> bytes:
        out: bytes = self._frame.compress_flush(self._ctx, end_frame=False)
        return out

    def finish(self) -> bytes:
        out: bytes = self._frame.compress_flush(self._ctx, end_frame=True)
        return out


class _Zstd:
    def __init__(self, level: int | None) -> None:
        zstandard = _require("zstandard", "zstd")
        self._mod = zstandard
        self._c = zstandard.ZstdCompressor(level=level or 3).compressobj()

    def start(self) -> bytes:
        return b""

    def compress(self, data: bytes) -> bytes:
        return bytes(self._c.compress(data))

    def flush(self) -> bytes:
        return bytes(self._c.flush(self._mod.COMPRESSOBJ_FLUSH_BLOCK))

    def finish(self) -> bytes:
        return bytes(self._c.flush(self._mod.COMPRESSOBJ_FLUSH_FINISH))


def make_compressor(c: Compression) -> Compressor | None:
    if c.method == "gzip":
        return _Gzip(c.level)
    if c.method == "lz4":
        return _Lz4(c.level)
    if c.method == "zstd":
        return _Zstd(c.level)
    return None


class Decompressor(Protocol):
    """A stream decompressor fed a compressed file a piece at a time (zlib's, lz4's, zstd's).

    ``decompress`` returns what the bytes so far decode to (an unfinished
    stream decodes up to its last complete block) and raises on damage;
    ``eof`` is true once the stream's end was read (what follows is not WAL).
    """

    @property
    def eof(self) -> bool: ...

    def decompress(self, data: bytes) -> bytes: ...


def make_decompressor(suffix: str) -> Decompressor:
    """A decompressor for files with ``suffix`` (".gz", ".lz4" or ".zst")."""
    if suffix == ".gz":
        return zlib.decompressobj(31)
    if suffix == ".lz4":
        frame = _require("lz4.frame", "lz4")
        lz4: Decompressor = frame.LZ4FrameDecompressor()
        return lz4
    if suffix == ".zst":
        zstandard = _require("zstandard", "zstd")
        zst: Decompressor = zstandard.ZstdDecompressor().decompressobj()
        return zst
    raise ValueError(f"not a compression suffix: {suffix!r}")


def decompress_file(path: Path, method: str, limit: int | None = None) -> bytes:
    """The uncompressed content of a (possibly unfinished) compressed file."""
    data = path.read_bytes()
    if method == ".gz":
        d = zlib.decompressobj(31)
        return d.decompress(data, limit or 0)
    if method == ".lz4":
        frame = _require("lz4.frame", "lz4")
        dec = frame.LZ4FrameDecompressor()
        out: bytes = dec.decompress(data)
        return out
    if method == ".zst":
        zstandard = _require("zstandard", "zstd")
        reader = zstandard.ZstdDecompressor().decompressobj()
        return bytes(reader.decompress(data))
    return data


def read_wal_file(path: Path) -> bytes:
    """The WAL a segment file holds, decompressed by its suffix (``.partial`` or not).

    A compressed file still being written decompresses to what it holds so far.
    """
    return decompress_file(path, suffix_of(path.name))


def suffix_of(name: str) -> str:
    """The compression suffix of a WAL file name ("" for a plain file), ``.partial`` or not."""
    name = name.removesuffix(".partial")
    return next((s for s in (".gz", ".lz4", ".zst") if name.endswith(s)), "")
