"""The startup role beside a receiver: decode and verify WAL as it arrives, report replay.

:class:`Replayer` runs a :class:`~walstream.wal.replay.ReplayState` next to a
receiver in the same process, decoding in its own thread so the event loop
never waits for it, and hands the replay position back as the receiver's
'apply', which is what makes ``synchronous_commit = remote_apply`` work (it
blocks forever with pg_receivewal). :mod:`walstream.standby` joins the two.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Callable, Iterable

from walstream.errors import WalCorruption
from walstream.lsn import LSN
from walstream.wal.recovery import RecoveryTarget, TargetReached
from walstream.wal.replay import ReplayState

__all__ = ["Replayer"]

log = logging.getLogger("walstream.startup")


class Replayer:
    """Runs a :class:`ReplayState` beside a receiver; decoding happens in its own thread.

    With a recovery ``target``, replay stops there and ``on_target`` is
    called once (on the event loop) with where it stopped; the receiver
    decides what the action means for it.
    """

    def __init__(
        self,
        seg_size: int,
        on_applied: Callable[[LSN], None],
        *,
        target: RecoveryTarget | None = None,
        on_target: Callable[[TargetReached], None] | None = None,
    ) -> None:
        self.seg_size = seg_size
        self.on_applied = on_applied
        self.target = target
        self.on_target = on_target
        self.state: ReplayState | None = None
        self._reported: WalCorruption | None = None
        self._pending: list[tuple[int, bytes]] = []
        self._durable = 0
        self._job_durable = 0
        self._failed = False
        self._job: concurrent.futures.Future[LSN] | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="walstream-startup"
        )

    def offer(self, chunks: Iterable[tuple[int, bytes]], durable: int) -> None:
        """New WAL (start, bytes) and how far WAL is now durable; never blocks.

        Offering WAL before it is durable lets decoding run while the
        receiver's fsync does: the records then only wait to be applied.
        The work goes straight to the decoding thread (no task hop), so it
        starts even while the event loop is busy writing.
        """
        if self._failed or (self.state is not None and self.state.target_reached is not None):
            return  # replay ended (at its target, or on a bug): nothing more is decoded
        self._pending.extend(chunks)
        self._durable = max(self._durable, durable)
        if self._job is None:
            self._submit()

    def _submit(self) -> None:
        chunks, self._pending = self._pending, []
        before = self.state.replay_lsn if self.state else LSN(0)
        loop = asyncio.get_running_loop()
        self._job_durable = self._durable
        job = self._thread.submit(self._step, chunks, self._durable)
        self._job = job

        def back_on_loop(done: concurrent.futures.Future[LSN]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._finished, done, before)

        job.add_done_callback(back_on_loop)

    def _finished(self, job: concurrent.futures.Future[LSN], before: LSN) -> None:
        """Back on the event loop: report what was replayed, then take the next batch."""
        self._job = None
        if job.cancelled() or self._failed:
            return
        error = job.exception()
        if error is not None:  # a bug or a gap: stop replaying, keep receiving
            log.error("replay tracking stopped: %s", error)
            self._pending.clear()
            self._failed = True
            return
        replayed = job.result()
        if replayed > before:
            self.on_applied(replayed)
        state = self.state
        stopped = state.stopped if state else None
        if stopped is not None and stopped is not self._reported:
            # Received WAL is fed whole: a stop is damage, not a torn tail.
            log.error("WAL replay stops at %s: %s", stopped.lsn, stopped.reason)
            self._reported = stopped
        if state is not None and state.target_reached is not None:
            self._pending.clear()
            if self.on_target is not None:
                self.on_target(state.target_reached)
            return
        if self._pending or self._durable > self._job_durable:
            self._submit()  # more WAL, or more of it durable, arrived meanwhile

    def _step(self, chunks: list[tuple[int, bytes]], durable: int) -> LSN:
        for lsn, data in chunks:
            if self.state is None:
                start = lsn - lsn % self.seg_size
                self.state = ReplayState(start, self.seg_size, target=self.target)
            self.state.feed(lsn, data)
        return self.state.advance(durable) if self.state else LSN(0)

    @property
    def replay_lsn(self) -> LSN:
        """The end of the last record replayed (0 before the first)."""
        return self.state.replay_lsn if self.state is not None else LSN(0)

    def close(self) -> None:
        self._pending.clear()
        self._failed = True
        self._thread.shutdown(wait=False, cancel_futures=True)
