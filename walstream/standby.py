"""A standby without a data directory: the receiver and the startup role's replayer in one process.

The first composition of roles (the relay, receiver + sender, is the
second): the receiver offers every batch to a
:class:`~walstream.startup.Replayer`, which decodes and CRC-verifies it in
its own thread and reports the replay position back as the receiver's
'apply', so ``synchronous_commit = remote_apply`` works (it blocks forever
with pg_receivewal). With a recovery target, replay stops there and the
action applies to the receiver: ``pause`` holds the apply position at the
target while WAL keeps arriving, ``promote`` and ``shutdown`` stop it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from walstream.lsn import LSN
from walstream.receiver import ReceiverOptions, ReceiverStatus, WalReceiver
from walstream.startup import Replayer
from walstream.wal.recovery import RecoveryTarget, TargetReached

__all__ = ["Standby"]

log = logging.getLogger("walstream.receiver")


class Standby:
    """``WalReceiver`` + ``Replayer``: receive, make durable, replay, report all three."""

    def __init__(self, options: ReceiverOptions, *, target: RecoveryTarget | None = None) -> None:
        self.target = target
        self.receiver = WalReceiver(options, consumer=self._start_replay)
        self._replay: _Replay | None = None

    async def run(self) -> None:
        await self.receiver.run()

    def stop(self) -> None:
        self.receiver.stop()

    def status(self) -> ReceiverStatus:
        return self.receiver.status()

    @property
    def replay_lsn(self) -> LSN:
        """The end of the last record replayed (0 before the first)."""
        return self._replay.replayer.replay_lsn if self._replay is not None else LSN(0)

    def _start_replay(self, seg_size: int) -> _Replay:
        self._replay = _Replay(self, seg_size)
        return self._replay

    def _target_reached(self, reached: TargetReached) -> None:
        action = reached.target.action
        log.warning("%s", reached.message)
        if action == "pause":
            log.warning("replay paused at the recovery target; still receiving WAL")
        else:
            log.warning("recovery target action %s: stopping the receiver", action)
            self.receiver.stop()


class _Replay:
    """The receiver's consumer: a Replayer, started afresh when the server's history forks."""

    def __init__(self, standby: Standby, seg_size: int) -> None:
        self._standby = standby
        self._seg_size = seg_size
        self.replayer = self._new()

    def _new(self) -> Replayer:
        return Replayer(
            self._seg_size,
            self._standby.receiver.report_applied,
            target=self._standby.target,
            on_target=self._standby._target_reached,
        )

    def offer(self, chunks: Iterable[tuple[int, bytes]], durable: int) -> None:
        self.replayer.offer(chunks, durable)

    def rewind(self, fork: LSN) -> None:
        """The new timeline's stream is replayed from its start, as when the receiver starts."""
        old = self.replayer
        if old.state is not None and old.state.target_reached is not None:
            return  # replay is over (at its target)
        old.close()
        self.replayer = self._new()
        if old.replay_lsn > fork:
            log.warning(
                "replay had reached %s on the old timeline, past the fork at %s: "
                "replay tracking starts again on the new timeline",
                old.replay_lsn,
                fork,
            )

    def close(self) -> None:
        self.replayer.close()
