"""The startup role: follow received WAL, decode and verify it, track replay.

PostgreSQL's startup process replays what the walreceiver flushed and
reports how far it got (``pg_last_wal_replay_lsn()``): the end of the last
replayed record. walstream does not redo pages (see the WAL-format notes);
it decodes and CRC-verifies every record, in order, and keeps the state a
standby would report: replay position, last commit/abort time, timeline,
last checkpoint and the outcome of recent transactions.

:class:`ReplayState` is sans-IO (bytes in, state out). :class:`Replayer` runs
it next to a receiver in the same process, decoding in its own thread so the
event loop never waits for it, and hands the replay position back as the
receiver's 'apply', which is what makes ``synchronous_commit = remote_apply``
work (it blocks forever with pg_receivewal).

``python -m walstream.startup waldump ...`` runs the pg_waldump counterpart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Final

from walstream.errors import WalCorruption
from walstream.lsn import LSN
from walstream.wal.decoder import WalDecoder
from walstream.wal.rmgr import CheckPoint, EndOfRecovery, XactRecord, decode_payload

__all__ = ["ReplayState", "Replayer", "main"]

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


class Replayer:
    """Runs a :class:`ReplayState` beside a receiver; decoding happens in its own thread."""

    def __init__(self, seg_size: int, on_applied: Callable[[LSN], None]) -> None:
        self.seg_size = seg_size
        self.on_applied = on_applied
        self.state: ReplayState | None = None
        self._pending: list[tuple[int, bytes]] = []
        self._durable = 0
        self._task: asyncio.Task[None] | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="walstream-startup"
        )

    def offer(self, chunks: Iterable[tuple[int, bytes]], durable: int) -> None:
        """New WAL (start, bytes) and how far WAL is now durable; never blocks."""
        self._pending.extend(chunks)
        self._durable = max(self._durable, durable)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending or (self.state and self.state.replay_lsn < self._durable):
            chunks, self._pending = self._pending, []
            durable = self._durable
            before = self.state.replay_lsn if self.state else LSN(0)
            try:
                replayed = await loop.run_in_executor(self._thread, self._step, chunks, durable)
            except Exception as e:  # a bug or a gap: stop replaying, keep receiving
                log.error("replay tracking stopped: %s", e)
                self._pending.clear()
                return
            if replayed > before:
                self.on_applied(replayed)
            elif not self._pending and durable == self._durable:
                break  # nothing more can be replayed until more WAL arrives

    def _step(self, chunks: list[tuple[int, bytes]], durable: int) -> LSN:
        for lsn, data in chunks:
            if self.state is None:
                self.state = ReplayState(lsn - lsn % self.seg_size, self.seg_size)
            self.state.feed(lsn, data)
        return self.state.advance(durable) if self.state else LSN(0)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._thread.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["waldump"]:
        from walstream.waldump import main as waldump

        return waldump(args[1:])
    print(
        "usage: python -m walstream.startup waldump [pg_waldump options]\n"
        "The startup role runs inside the receiver: python -m walstream.receiver --replay ...",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
