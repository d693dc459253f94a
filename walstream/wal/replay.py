"""Replay tracking, sans-IO: the state PostgreSQL's startup process keeps, without page redo.

:class:`ReplayState` takes WAL bytes and the position up to which they are
durable, and replays (decodes, verifies, tracks) records in LSN order. It
does no I/O and reads no clock, so the startup service, the receiver's
in-process replay and the tests drive the same code.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from datetime import datetime
from typing import Final

from walstream.errors import WalCorruption
from walstream.lsn import LSN
from walstream.wal.decoder import WalDecoder
from walstream.wal.rmgr import CheckPoint, EndOfRecovery, XactRecord, decode_payload

__all__ = ["ReplayState"]

log = logging.getLogger("walstream.startup")

_RECENT_XACTS: Final = 10_000


class ReplayState:
    """Replay tracking for one stream of WAL, starting at a segment or record start.

    Feed WAL with :meth:`feed` (overlapping bytes, as after a reconnect or a
    timeline switch restarts at a segment start, are skipped) and call
    :meth:`advance` with the position up to which WAL is durable: records
    ending at or before it are replayed. The replay position never passes a
    record that failed verification; :attr:`stopped` then says why.
    """

    def __init__(self, start: int, seg_size: int, *, timeline: int | None = None) -> None:
        self.decoder = WalDecoder(start, seg_size)
        self.replay_lsn = LSN(0)  # end of the last replayed record
        self.last_xact_time: datetime | None = None
        self.timeline = timeline
        self.last_checkpoint: LSN | None = None
        self.last_checkpoint_redo: LSN | None = None
        self.xacts: OrderedDict[int, str] = OrderedDict()  # xid -> COMMIT/ABORT..., bounded
        self.stopped: WalCorruption | None = None
        self._decoded: deque[tuple[LSN, int, int, int, bytes, int]] = deque()

    def feed(self, lsn: int, data: bytes) -> None:
        fed = self.decoder.fed_end
        if fed is not None:
            if lsn + len(data) <= fed:
                return
            if lsn < fed:
                data, lsn = data[fed - lsn :], fed
        self.decoder.feed(lsn, data)

    def advance(self, durable: int) -> LSN:
        """Replay every decoded record that ends at or before ``durable``; return replay_lsn."""
        if self.stopped is None:
            for rec in self.decoder.records():
                # Only XLOG (0) and Transaction (1) payloads change the tracked state.
                main = rec.main_data if rec.rmid <= 1 else b""
                self._decoded.append((rec.end_lsn, rec.rmid, rec.info, rec.xid, main, rec[0]))
            outcome = self.decoder.outcome
            if outcome is not None:
                self.stopped = outcome
                log.error("WAL replay stops at %s: %s", outcome.lsn, outcome.reason)
        version = self.decoder.version
        while self._decoded and self._decoded[0][0] <= durable:
            end, rmid, info, xid, main_data, lsn = self._decoded.popleft()
            self._apply(rmid, info, xid, main_data, lsn, version)
            self.replay_lsn = end
        return self.replay_lsn

    def _apply(self, rmid: int, info: int, xid: int, main: bytes, lsn: int, version: int) -> None:
        if rmid > 1:
            return  # only XLOG and Transaction records change what we track
        payload = decode_payload(rmid, info, xid, main, lsn, version)
        if payload is None:
            return
        if isinstance(payload, XactRecord):
            if payload.kind != "PREPARE":
                self.last_xact_time = payload.xact_time
            self.xacts[payload.xid] = payload.kind
            if len(self.xacts) > _RECENT_XACTS:
                self.xacts.popitem(last=False)
        elif isinstance(payload, CheckPoint):
            self.last_checkpoint = LSN(lsn)
            self.last_checkpoint_redo = payload.redo
            self.timeline = payload.timeline
        elif isinstance(payload, EndOfRecovery):
            self.timeline = payload.timeline
