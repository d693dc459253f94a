"""Log sequence numbers: PostgreSQL's byte positions in the WAL stream."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["INVALID_LSN", "LSN"]

_LSN_RE: Final = re.compile(r"\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*")


class LSN(int):
    """An unsigned 64-bit WAL position.

    It is an ``int`` so that arithmetic, comparison and struct packing need no
    conversions on the streaming path; only its text form differs. ``str()``
    prints ``%X/%X`` as PostgreSQL 15 does (newer servers zero-pad the low half,
    and :meth:`parse` accepts both).
    """

    __slots__ = ()

    def __new__(cls, value: int = 0) -> LSN:
        if not 0 <= value <= 0xFFFFFFFFFFFFFFFF:
            raise ValueError(f"LSN out of range: {value}")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str) -> LSN:
        """Parse ``X/X`` (either half 1 to 8 hex digits, any zero padding)."""
        m = _LSN_RE.fullmatch(text)
        if m is None:
            raise ValueError(f'invalid LSN "{text}"')
        return cls((int(m.group(1), 16) << 32) | int(m.group(2), 16))

    @property
    def high(self) -> int:
        return self >> 32

    @property
    def low(self) -> int:
        return self & 0xFFFFFFFF

    def __str__(self) -> str:
        return f"{self >> 32:X}/{self & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"LSN('{self}')"

    def __add__(self, other: int) -> LSN:
        return LSN(int(self) + int(other))

    def __sub__(self, other: int) -> int:
        # A difference of positions is a byte count, not a position.
        return int(self) - int(other)


INVALID_LSN: Final = LSN(0)
