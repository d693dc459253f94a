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
from collections.abc import Callable, Iterable

from walstream.lsn import LSN
from walstream.wal.replay import ReplayState

__all__ = ["ReplayState", "Replayer", "main"]

log = logging.getLogger("walstream.startup")


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
