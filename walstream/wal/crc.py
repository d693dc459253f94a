"""CRC-32C (Castagnoli), the checksum of every WAL record.

Record verification is the single largest cost of decoding WAL, so the C
implementation from the optional ``crc32c`` package (SSE4.2/ARMv8 CRC
instructions, several GB/s, no copy of memoryviews) is used when it is
installed: ``pip install walstream[fast]``. Without it a pure-Python
fallback gives the same results, about 15 MB/s (4x a byte-at-a-time table
loop): it consumes 8 bytes per step with four 64 Ki-entry tables, one per
16-bit lane ("slicing by 4x16"), so each step costs one ``struct`` unpack
and four lookups instead of eight shifts and table lookups per byte.

``zlib.crc32`` is a different polynomial (CRC-32/ISO-HDLC) and cannot be used.

Both implementations share the signature ``crc32c(data, crc=0) -> int``:
the standard CRC of ``data`` (initial value and final XOR 0xFFFFFFFF
included), continued from ``crc`` when it is the CRC of preceding bytes, so
``crc32c(b, crc32c(a)) == crc32c(a + b)``. PostgreSQL's record CRC is thus
``crc32c(header[:20], crc32c(record[24:]))``.
"""

from __future__ import annotations

import struct
from array import array
from typing import Final, Protocol

__all__ = ["HAVE_C_CRC32C", "Crc32c", "crc32c", "crc32c_python"]

_POLY: Final = 0x82F63B78  # CRC-32C, reflected
_MASK: Final = 0xFFFFFFFF


def _byte_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_T0: Final = _byte_table()
_lanes: tuple[array[int], array[int], array[int], array[int]] | None = None
_QWORDS: Final = struct.Struct("<Q")


def _lane_tables() -> tuple[array[int], array[int], array[int], array[int]]:
    """Tables for the 16-bit lanes of an 8-byte step (built on first use, ~30 ms, 1 MiB).

    Byte tables T[k] advance a byte that is followed by k more bytes; lane k of
    the step covers bytes 2k and 2k+1 and is followed by 6-2k bytes.
    """
    global _lanes
    if _lanes is None:
        tables = [_T0]
        for _ in range(7):
            prev = tables[-1]
            tables.append([(v >> 8) ^ _T0[v & 0xFF] for v in prev])
        lanes = []
        for lane in range(4):
            low = tables[7 - 2 * lane]  # the lane's first byte has 7-2*lane bytes after it
            high = tables[6 - 2 * lane]
            lanes.append(array("I", [low[x & 0xFF] ^ high[x >> 8] for x in range(65536)]))
        _lanes = (lanes[0], lanes[1], lanes[2], lanes[3])
    return _lanes


def crc32c_python(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Pure-Python CRC-32C of ``data``, continuing from ``crc``."""
    mv = memoryview(data).cast("B")
    crc ^= _MASK
    whole = len(mv) & ~7
    if whole:
        l0, l1, l2, l3 = _lane_tables()
        for (q,) in _QWORDS.iter_unpack(mv[:whole]):
            q ^= crc
            crc = l0[q & 0xFFFF] ^ l1[(q >> 16) & 0xFFFF] ^ l2[(q >> 32) & 0xFFFF] ^ l3[q >> 48]
    t0 = _T0
    for b in mv[whole:]:
        crc = t0[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ _MASK


class Crc32c(Protocol):
    """``crc32c(data, crc=0) -> int``: the signature both implementations share."""

    def __call__(self, data: bytes | bytearray | memoryview, crc: int = 0, /) -> int: ...


def _c_implementation() -> Crc32c | None:
    try:
        from crc32c import crc32c as c_crc32c
    except ImportError:  # pragma: no cover - depends on the installation
        return None
    return c_crc32c


_C_CRC32C: Final = _c_implementation()
HAVE_C_CRC32C: Final = _C_CRC32C is not None
crc32c: Final[Crc32c] = _C_CRC32C if _C_CRC32C is not None else crc32c_python
"""CRC-32C of ``data``, continuing from ``crc``: the C implementation when installed."""
