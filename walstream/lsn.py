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

    Constructing one is ``int``'s own C constructor, with no range check in
    Python: a synchronous standby builds about twenty per commit round trip,
    and a Python-level ``__new__`` cost measurable TPS (its CPU is taken from
    the primary's backends on the same cores). The values come from 64-bit
    unsigned wire fields, :meth:`parse` (at most 8 hex digits a half) or
    arithmetic on those; ``struct`` refuses an out-of-range one when packed.
    """

    __slots__ = ()

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
        total = _int_add(self, other)
        return total if total is NotImplemented else _new_int(LSN, total)

    def __sub__(self, other: int) -> int:
        # A difference of positions is a byte count, not a position.
        return _int_sub(self, other)


_new_int: Final = int.__new__
_int_add: Final = int.__add__
_int_sub: Final = int.__sub__


INVALID_LSN: Final = LSN(0)
