"""The CopyData payloads of physical streaming replication.

Server to client: XLogData ``'w'`` and primary keepalive ``'k'``.
Client to server: standby status update ``'r'`` and hot standby feedback ``'h'``.

Timestamps are PostgreSQL's: int64 microseconds since 2000-01-01 00:00 UTC
(:mod:`walstream.pgtypes` converts them). They are plain arguments here
(never read from a clock) so that the state machines stay deterministic and
testable.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from walstream.errors import ProtocolViolation
from walstream.lsn import LSN

__all__ = [
    "MAX_LSN",
    "HotStandbyFeedback",
    "PrimaryKeepalive",
    "StandbyStatusUpdate",
    "XLogData",
    "check_xlog_range",
    "decode_client_copy_data",
    "decode_server_copy_data",
]

MAX_LSN: Final = 0xFFFFFFFFFFFFFFFF

XLOGDATA_HEADER: Final = struct.Struct("!QQq")  # dataStart, walEnd, sendTime
_KEEPALIVE: Final = struct.Struct("!Qq?")
_STATUS: Final = struct.Struct("!QQQq?")
_FEEDBACK: Final = struct.Struct("!qIIII")


# Not frozen: a frozen dataclass's __init__ costs about four times as much
# (object.__setattr__ per field), and one of these is built for every message
# of a stream and every status update (measured in synchronous-standby TPS).
@dataclass(slots=True)
class XLogData:
    """A run of WAL bytes starting at ``data_start``; ``wal_end`` is the server's end of WAL."""

    data_start: LSN
    wal_end: LSN
    send_time: int
    data: bytes

    @property
    def data_end(self) -> LSN:
        return LSN(self.data_start + len(self.data))

    def encode(self) -> bytes:
        return (
            b"w" + XLOGDATA_HEADER.pack(self.data_start, self.wal_end, self.send_time) + self.data
        )


@dataclass(slots=True)
class PrimaryKeepalive:
    wal_end: LSN
    send_time: int
    reply_requested: bool

    def encode(self) -> bytes:
        return b"k" + _KEEPALIVE.pack(self.wal_end, self.send_time, self.reply_requested)


@dataclass(slots=True)
class StandbyStatusUpdate:
    """The standby's positions: received (write), durable (flush), replayed (apply)."""

    write: LSN
    flush: LSN
    apply: LSN
    send_time: int
    reply_requested: bool = False

    def encode(self) -> bytes:
        return b"r" + _STATUS.pack(
            self.write, self.flush, self.apply, self.send_time, self.reply_requested
        )


@dataclass(slots=True)
class HotStandbyFeedback:
    send_time: int
    xmin: int = 0
    xmin_epoch: int = 0
    catalog_xmin: int = 0
    catalog_xmin_epoch: int = 0

    def encode(self) -> bytes:
        return b"h" + _FEEDBACK.pack(
            self.send_time, self.xmin, self.xmin_epoch, self.catalog_xmin, self.catalog_xmin_epoch
        )


def check_xlog_range(start: int, size: int) -> None:
    """A peer's XLogData must end inside the 64-bit WAL address space.

    Otherwise its end position could not be sent back in a status update
    (struct would fail there, far from the cause).
    """
    if start + size > MAX_LSN:
        raise ProtocolViolation(
            f"XLogData at {LSN(start)} with {size} bytes runs past the end of the WAL"
        )


def decode_server_copy_data(payload: bytes) -> XLogData | PrimaryKeepalive:
    """Decode a CopyData payload sent by a walsender."""
    kind = payload[:1]
    if kind == b"w":
        if len(payload) < 1 + XLOGDATA_HEADER.size:
            raise ProtocolViolation(f"XLogData message too short ({len(payload)} bytes)")
        start, end, t = XLOGDATA_HEADER.unpack_from(payload, 1)
        data = payload[1 + XLOGDATA_HEADER.size :]
        check_xlog_range(start, len(data))
        return XLogData(LSN(start), LSN(end), t, data)
    if kind == b"k":
        if len(payload) != 1 + _KEEPALIVE.size:
            raise ProtocolViolation(f"keepalive message has {len(payload)} bytes, expected 18")
        end, t, reply = _KEEPALIVE.unpack_from(payload, 1)
        return PrimaryKeepalive(LSN(end), t, bool(reply))
    raise ProtocolViolation(f"unexpected streaming message type {kind!r} from server")


def decode_client_copy_data(payload: bytes) -> StandbyStatusUpdate | HotStandbyFeedback:
    """Decode a CopyData payload sent by a standby."""
    kind = payload[:1]
    if kind == b"r":
        if len(payload) != 1 + _STATUS.size:
            raise ProtocolViolation(f"standby status update has {len(payload)} bytes, expected 34")
        w, f, a, t, reply = _STATUS.unpack_from(payload, 1)
        return StandbyStatusUpdate(LSN(w), LSN(f), LSN(a), t, bool(reply))
    if kind == b"h":
        if len(payload) != 1 + _FEEDBACK.size:
            raise ProtocolViolation(f"hot standby feedback has {len(payload)} bytes, expected 25")
        t, x, xe, cx, cxe = _FEEDBACK.unpack_from(payload, 1)
        return HotStandbyFeedback(t, x, xe, cx, cxe)
    raise ProtocolViolation(f"unexpected streaming message type {kind!r} from standby")
