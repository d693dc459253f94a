"""Replay tracking, sans-IO: the state PostgreSQL's startup process keeps, without page redo.

:class:`ReplayState` takes WAL bytes and the position up to which they are
durable, and replays (decodes, verifies, tracks) records in LSN order. It
does no I/O and reads no clock, so the startup service, the receiver's
in-process replay and the tests drive the same code.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from datetime import datetime
from typing import TYPE_CHECKING, Final, cast

from walstream.errors import RecoveryTargetUnreachable, WalCorruption
from walstream.lsn import LSN
from walstream.pgtypes import datetime_from_pg, pg_usecs
from walstream.wal import kernel
from walstream.wal.decoder import XLOG_BLCKSZ, WalDecoder
from walstream.wal.recovery import (
    RecoveryTarget,
    TargetReached,
    backup_end_start,
    restore_point_name,
)
from walstream.wal.rmgr import (
    CheckPoint,
    EndOfRecovery,
    Payload,
    RestorePoint,
    XactRecord,
    decode_payload,
)

if TYPE_CHECKING:
    from walstream.wal.fastscan import ReplaySink

__all__ = ["RecoveryTarget", "ReplayState", "TargetReached"]

_RECENT_XACTS: Final = 10_000
XLOG_BACKUP_END: Final = 0x50
_wanted: bytes | None = None


def _wanted_keys() -> bytes:
    """Per ``info | rmid << 8``, what the compiled kernel hands on (see fastscan.ReplaySink).

    The records whose payload replay decodes are those for which
    :func:`decode_payload` returns something or refuses the main data (found
    by asking it, so the table cannot drift from it; only XLOG and
    Transaction records, as :meth:`ReplayState._apply`). Of those, commits
    and aborts (xl_info & 0x70: COMMIT, ABORT, COMMIT_PREPARED,
    ABORT_PREPARED) are parsed by the kernel itself when well formed.
    """
    global _wanted
    if _wanted is None:
        from walstream.wal.fastscan import WANT_END, WANT_PAYLOAD, WANT_XACT_END

        table = bytearray(65536)
        for rmid in (0, 1):
            for info in range(256):
                try:
                    wanted = decode_payload(rmid, info, 0, b"", 0) is not None
                except WalCorruption:
                    wanted = True
                if not wanted:
                    want = WANT_END
                elif rmid == 1 and info & 0x70 in (0x00, 0x20, 0x30, 0x40):
                    want = WANT_XACT_END
                else:
                    want = WANT_PAYLOAD
                table[rmid << 8 | info] = want
        _wanted = bytes(table)
    return _wanted


class ReplayState:
    """Replay tracking for one stream of WAL, starting at a segment or record start.

    Feed WAL with :meth:`feed` (overlapping bytes, as after a reconnect or a
    timeline switch restarts at a segment start, are skipped) and call
    :meth:`advance` with the position up to which WAL is durable: records
    ending at or before it are replayed. The replay position never passes a
    record that failed verification; :attr:`stopped` then says why.

    With a recovery ``target`` (see :mod:`walstream.wal.recovery`) replay
    stops where PostgreSQL's would: :attr:`target_reached` then describes
    the stop and :meth:`advance` replays nothing more. Call :meth:`finish`
    once no more WAL will come: it returns the stop or raises PostgreSQL's
    FATAL as :class:`~walstream.errors.RecoveryTargetUnreachable`.
    ``backup_start`` is the restored base backup's START WAL LOCATION
    (backup_label): recovery is consistent once the XLOG_BACKUP_END record
    closing that backup has been replayed, which the ``immediate`` target
    stops at and before which no target may stop. Without it replay counts
    as consistent from the start (a standby restart, or WAL replayed for
    tracking only). Without a target none of this costs anything per
    record: the receiver's replay runs the same loop as before.

    Without a target, and with the compiled kernel (see
    :mod:`walstream.wal.kernel`), decoding and the queue of records waiting
    to be durable run in the kernel (:meth:`WalDecoder.scan_replay
    <walstream.wal.decoder.WalDecoder.scan_replay>`), which builds no object
    for a record whose payload replay does not need and replays commits and
    aborts itself: the same positions, the same state, about 15 times as
    fast as the pure path (see bench/README.md).
    """

    def __init__(
        self,
        start: int,
        seg_size: int,
        *,
        timeline: int | None = None,
        target: RecoveryTarget | None = None,
        backup_start: int | None = None,
    ) -> None:
        self.decoder = WalDecoder(start, seg_size)
        self.replay_lsn = LSN(0)  # end of the last replayed record
        self.last_xact_time: datetime | None = None
        self.timeline = timeline
        self.last_checkpoint: LSN | None = None
        self.last_checkpoint_redo: LSN | None = None
        self.xacts: OrderedDict[int, str] = OrderedDict()  # xid -> COMMIT/ABORT..., bounded
        self.stopped: WalCorruption | None = None
        self.target = target if target is not None and target.is_set else None
        self.target_reached: TargetReached | None = None
        self.backup_start = None if backup_start is None else LSN(backup_start)
        self.consistent = backup_start is None  # tracked only with a target
        self._decoded: deque[tuple[LSN, int, int, int, bytes, int]] = deque()
        # With the compiled kernel (and no target: a target checks record by
        # record), records wait in a sink that costs no object per record.
        self._sink: ReplaySink | None = (
            kernel.FASTSCAN.ReplaySink(_wanted_keys(), self.xacts, _RECENT_XACTS)
            if kernel.FASTSCAN is not None and self.target is None
            else None
        )
        self._target_value: int | bytes | None = None
        if self.target is not None:
            value = self.target.value
            if isinstance(value, datetime):
                self._target_value = pg_usecs(value)
            elif isinstance(value, str):
                self._target_value = value.encode()
            else:
                self._target_value = value

    def feed(self, lsn: int, data: bytes) -> None:
        if self.target_reached is not None:
            return  # replay is over: nothing more will be decoded
        fed = self.decoder.fed_end
        if fed is not None:
            if lsn + len(data) <= fed:
                return
            if lsn < fed:
                data, lsn = data[fed - lsn :], fed
        self.decoder.feed(lsn, data)

    def advance(self, durable: int) -> LSN:
        """Replay every decoded record that ends at or before ``durable``; return replay_lsn."""
        if self.target is not None:
            return self._advance_to_target(durable)
        if self._sink is not None:
            return self._advance_compiled(durable)
        if self.stopped is None:
            for rec in self.decoder.records():
                # Only XLOG (0) and Transaction (1) payloads change the tracked state.
                main = rec.main_data if rec.rmid <= 1 else b""
                self._decoded.append((rec.end_lsn, rec.rmid, rec.info, rec.xid, main, rec[0]))
            self.stopped = self.decoder.outcome  # the caller says what it means
        version = self.decoder.version
        while self._decoded and self._decoded[0][0] <= durable:
            end, rmid, info, xid, main_data, lsn = self._decoded.popleft()
            self._apply(rmid, info, xid, main_data, lsn, version)
            self.replay_lsn = end
        return self.replay_lsn

    def _advance_compiled(self, durable: int) -> LSN:
        """advance() with the compiled kernel: the same replay, records queued in the sink."""
        sink = self._sink
        assert sink is not None
        if self.stopped is None:
            self.decoder.scan_replay(sink)
            self.stopped = self.decoder.outcome  # the caller says what it means
        version = self.decoder.version
        while True:
            entry = sink.pop_due(durable)
            if sink.xact_time_new:  # the sink replayed transaction ends itself
                sink.xact_time_new = False
                self.last_xact_time = datetime_from_pg(sink.xact_time)
            if sink.replayed > self.replay_lsn:
                self.replay_lsn = LSN(sink.replayed)
            if entry is None:
                return self.replay_lsn
            end, rmid, info, xid, main, lsn = entry
            self._apply(rmid, info, xid, main, lsn, version)
            self.replay_lsn = LSN(end)

    def _apply(self, rmid: int, info: int, xid: int, main: bytes, lsn: int, version: int) -> None:
        if rmid > 1:
            return  # only XLOG and Transaction records change what we track
        payload = decode_payload(rmid, info, xid, main, lsn, version)
        if payload is None:
            return
        if isinstance(payload, XactRecord) and payload.kind != "PREPARE":
            self.last_xact_time = payload.xact_time
        self._track(payload, lsn)

    def _track(self, payload: Payload, lsn: int) -> None:
        if isinstance(payload, XactRecord):
            self.xacts[payload.xid] = payload.kind
            if len(self.xacts) > _RECENT_XACTS:
                self.xacts.popitem(last=False)
        elif isinstance(payload, CheckPoint):
            self.last_checkpoint = LSN(lsn)
            self.last_checkpoint_redo = payload.redo
            self.timeline = payload.timeline
        elif isinstance(payload, EndOfRecovery):
            self.timeline = payload.timeline

    def rewind(self) -> LSN:
        """Decode again from the end of the last decoded record, after :attr:`stopped`.

        For WAL that was read before it was whole (a file a receiver is still
        writing): a torn or zero tail stopped decoding, and the bytes there
        may since have been written. Records already decoded are kept.
        Returns the page start from which WAL must be fed again.
        """
        old = self.decoder
        position = old.position
        self.decoder = WalDecoder(
            position,
            old.seg_size,
            timeline=old.timeline,
            system_identifier=old.system_identifier,
            prev_lsn=old.last_lsn,
            magic=old.magic,
        )
        self.stopped = None
        return LSN(position - position % XLOG_BLCKSZ)

    # -- recovery targets ---------------------------------------------------

    def finish(self) -> TargetReached | None:
        """Call once no more WAL will come: where recovery stopped, or why it cannot end.

        Returns :attr:`target_reached` (None without a target). Raises
        :class:`~walstream.errors.RecoveryTargetUnreachable` with
        PostgreSQL's message when a target was set but not reached, or was
        reached before the backup's consistent point (PostgreSQL refuses to
        end recovery there too).
        """
        if self.target is None:
            return None
        reached = self.target_reached
        if reached is None:
            raise RecoveryTargetUnreachable(
                self.replay_lsn, "recovery ended before configured recovery target was reached"
            )
        if not reached.consistent:
            raise RecoveryTargetUnreachable(
                reached.replay_lsn,
                "requested recovery stop point is before consistent recovery point",
            )
        return reached

    def _advance_to_target(self, durable: int) -> LSN:
        """advance() with a target: decode, check and replay one record at a time.

        Records are replayed as soon as they are decoded and durable, so
        decoding ends at the target: WAL after it (possibly torn, or of
        another timeline) is never looked at, as PostgreSQL never reads past
        its stop point.
        """
        if self.target_reached is not None:
            return self.replay_lsn
        queue = self._decoded
        if self._replay_queued(durable):
            return self.replay_lsn
        if self.stopped is None:
            for rec in self.decoder.records():
                main = rec.main_data if rec.rmid <= 1 else b""
                queue.append((rec.end_lsn, rec.rmid, rec.info, rec.xid, main, rec[0]))
                if queue[0][0] <= durable and self._replay_queued(durable):
                    return self.replay_lsn
            self.stopped = self.decoder.outcome  # the caller says what it means
        return self.replay_lsn

    def _replay_queued(self, durable: int) -> bool:
        """Replay the queued durable records; True once the target is reached."""
        queue = self._decoded
        version = self.decoder.version
        while queue and queue[0][0] <= durable:
            end, rmid, info, xid, main, lsn = queue.popleft()
            if self._replay_checked(end, rmid, info, xid, main, lsn, version):
                queue.clear()
                return True
        return False

    def _replay_checked(
        self, end: LSN, rmid: int, info: int, xid: int, main: bytes, lsn: int, version: int
    ) -> bool:
        """One record between recoveryStopsBefore and recoveryStopsAfter; True if stopped."""
        target = cast(RecoveryTarget, self.target)
        kind = target.kind
        inclusive = target.inclusive
        value = self._target_value
        payload = decode_payload(rmid, info, xid, main, lsn, version) if rmid <= 1 else None
        xact = payload if isinstance(payload, XactRecord) and payload.kind != "PREPARE" else None
        # recoveryStopsBefore: the record is not replayed.
        if kind == "immediate" and self.consistent:
            return self._stop(False, lsn, end)
        if kind == "lsn" and not inclusive and lsn >= cast(int, value):
            return self._stop(False, lsn, end)
        if xact is not None:
            if kind == "xid" and not inclusive and xact.xid == value:
                return self._stop(False, lsn, end, xact)
            if kind == "time":
                t = xact.xact_time_raw
                if (t > cast(int, value)) if inclusive else (t >= cast(int, value)):
                    return self._stop(False, lsn, end, xact)
        # Replay.
        if payload is not None:
            self._track(payload, lsn)
        self.replay_lsn = end
        if (
            not self.consistent
            and rmid == 0
            and info & 0xF0 == XLOG_BACKUP_END
            and backup_end_start(main) == self.backup_start
        ):
            self.consistent = True
        # recoveryStopsAfter, in its order: a name or LSN stop comes before the
        # last transaction time is updated.
        if (
            kind == "name"
            and isinstance(payload, RestorePoint)
            and restore_point_name(main) == value
        ):
            return self._stop(True, lsn, end, restore_point=payload)
        if kind == "lsn" and inclusive and lsn >= cast(int, value):
            return self._stop(True, lsn, end)
        if xact is not None:
            self.last_xact_time = xact.xact_time
            if kind == "xid" and inclusive and xact.xid == value:
                return self._stop(True, lsn, end, xact)
        if kind == "immediate" and self.consistent:
            return self._stop(True, lsn, end)
        return False

    def _stop(
        self,
        after: bool,
        lsn: int,
        end: int,
        xact: XactRecord | None = None,
        *,
        restore_point: RestorePoint | None = None,
    ) -> bool:
        if not after and self.replay_lsn == 0:
            # Nothing replayed yet: PostgreSQL reports where redo began, which is
            # this first record's start.
            self.replay_lsn = LSN(lsn)
        time = raw = None
        if xact is not None:
            time, raw = xact.xact_time, xact.xact_time_raw
        elif restore_point is not None:
            time = restore_point.time
            raw = pg_usecs(time) if time is not None else None
        reached = TargetReached(
            target=cast(RecoveryTarget, self.target),
            after=after,
            lsn=LSN(lsn),
            end_lsn=LSN(end),
            replay_lsn=self.replay_lsn,
            xid=xact.xid if xact is not None else None,
            time=time,
            time_raw=raw,
            name=restore_point.name if restore_point is not None else None,
            commit=xact.kind in ("COMMIT", "COMMIT_PREPARED") if xact is not None else None,
            consistent=self.consistent,
        )
        self.target_reached = reached  # the caller logs reached.message, as it sees fit
        return True
