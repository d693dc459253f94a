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

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from walstream.errors import Error, WalCorruption
from walstream.lsn import LSN
from walstream.recovery_options import add_target_arguments, target_from_arguments
from walstream.storage.reader import SegmentFile, WalReader
from walstream.wal.decoder import InvalidRecord
from walstream.wal.recovery import RecoveryTarget, TargetReached
from walstream.wal.replay import ReplayState
from walstream.wal.segment import (
    HistoryEntry,
    HistoryFileError,
    SegmentName,
    TimelineSpan,
    expected_timelines,
    parse_segment_name,
    timelines_for_segment,
)

__all__ = [
    "ReplayState",
    "Replayer",
    "StartupError",
    "StartupOptions",
    "StartupService",
    "StartupStatus",
    "main",
]

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


# -- following a directory ----------------------------------------------------------------------


NO_TARGET: Final = RecoveryTarget("unset")


@dataclass(frozen=True, slots=True)
class StartupOptions:
    """What the startup service replays and how far.

    ``directory`` is a walstream / pg_receivewal directory (or a pg_wal).
    ``follow`` keeps waiting for new WAL at the end, as a standby does;
    without it the service stops at the end of the WAL it finds. ``start``
    is a record or segment start (default: the first segment found).
    ``target`` holds PostgreSQL's recovery_target_* settings, including the
    timeline to follow and the action at the target (see
    :class:`~walstream.wal.recovery.RecoveryTarget`). ``backup_start`` is
    the START WAL LOCATION of the base backup the WAL is replayed onto (its
    backup_label): recovery is consistent once that backup's end record is
    replayed, which ``recovery_target = immediate`` stops at and before
    which no target may stop; without it replay counts as consistent at once.
    """

    directory: Path
    follow: bool = False
    start: LSN | None = None
    target: RecoveryTarget = NO_TARGET
    backup_start: LSN | None = None
    poll_interval: float = 0.2


@dataclass(frozen=True, slots=True)
class StartupStatus:
    """A snapshot of the startup role, as a standby would report it."""

    state: str  # replaying, waiting, paused, promoted, shut down, failed, ended
    replay_lsn: LSN
    timeline: int | None
    last_xact_time: datetime | None
    last_checkpoint: LSN | None
    last_checkpoint_redo: LSN | None
    target_reached: TargetReached | None
    error: str | None


class StartupError(Error):
    """The startup role cannot go on: corrupt WAL, a target never reached, a bad directory."""


class StartupService:
    """Replay (decode, verify, track) the WAL of a directory, in LSN order, across timelines.

    Files are read in PostgreSQL's order: for each segment, the newest
    timeline of the target timeline's history that may hold it, so a switch
    segment is read from the child's file and nothing of an abandoned branch
    is replayed. A ``.partial`` is read as far as it holds valid WAL; while
    following, the service retries from the end of the last valid record as
    the file grows, exactly as a standby's startup process waits for its
    walreceiver. A record that fails verification inside a completed segment
    is corruption, not an end of WAL: the service stops there with the LSN and
    the reason, and the replay position never passes it.

    Decoding runs in a worker thread, so the event loop stays free.
    """

    def __init__(
        self,
        options: StartupOptions,
        *,
        on_replayed: Callable[[LSN], None] | None = None,
    ) -> None:
        self.options = options
        self.on_replayed = on_replayed
        self.state: ReplayState | None = None
        self.seg_size: int | None = None
        self._reader = WalReader(options.directory)
        self._spans: list[TimelineSpan] = []
        self._target_tli = 0
        self._file_tli = 0
        self._read = LSN(0)  # where the next byte fed comes from
        self._warned = LSN(0)  # end of WAL in a completed segment, warned about once
        self._caught_up = False
        self._status = "replaying"
        self._error: str | None = None
        self._stop = asyncio.Event()
        self._resume = asyncio.Event()
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="walstream-startup"
        )

    # -- control and status ---------------------------------------------------------------

    def stop(self) -> None:
        """Stop at the next step (SIGINT/SIGTERM); what was replayed stays reported."""
        self._stop.set()

    def resume(self) -> None:
        """Leave a pause at the recovery target: recovery ends (PostgreSQL then promotes)."""
        self._resume.set()

    def status(self) -> StartupStatus:
        st = self.state
        return StartupStatus(
            state=self._status,
            replay_lsn=st.replay_lsn if st else LSN(0),
            timeline=(st.timeline if st and st.timeline else None) or self._file_tli or None,
            last_xact_time=st.last_xact_time if st else None,
            last_checkpoint=st.last_checkpoint if st else None,
            last_checkpoint_redo=st.last_checkpoint_redo if st else None,
            target_reached=st.target_reached if st else None,
            error=self._error,
        )

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> StartupStatus:
        """Replay until the end of WAL (or forever with ``follow``), the target, or stop()."""
        loop = asyncio.get_running_loop()
        try:
            while not await loop.run_in_executor(self._thread, self._setup):
                await self._wait(self.options.poll_interval)
                if self._stop.is_set():
                    return self.status()
            while not self._stop.is_set():
                before = self.state.replay_lsn if self.state else LSN(0)
                progressed = await loop.run_in_executor(self._thread, self._step)
                assert self.state is not None
                if self.state.replay_lsn > before:
                    self._status = "replaying"
                    if self.on_replayed is not None:
                        self.on_replayed(self.state.replay_lsn)
                if self.state.target_reached is not None:
                    await self._at_target()
                    break
                if progressed:
                    continue
                if not self.options.follow:
                    self._end_of_wal()
                    break
                if self._status != "waiting":
                    # Said once at INFO (caught up); later idle spells at DEBUG.
                    level = logging.DEBUG if self._caught_up else logging.INFO
                    log.log(level, "replayed up to %s; waiting for more WAL", self.state.replay_lsn)
                    self._caught_up = True
                self._status = "waiting"
                if await loop.run_in_executor(self._thread, self._rescan_timeline):
                    continue
                await self._wait(self.options.poll_interval)
        except Error as e:
            self._status = "failed"
            self._error = str(e)
            raise
        finally:
            self._thread.shutdown(wait=False, cancel_futures=True)
        return self.status()

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _at_target(self) -> None:
        assert self.state is not None
        assert self.state.target_reached is not None
        action = self.options.target.action
        log.info("%s", self.state.target_reached.message)
        if action == "pause":
            self._status = "paused"
            log.info(
                "recovery has paused at the target (SIGINT/SIGTERM, or stop(), ends the "
                "process paused; the library's resume() ends recovery)"
            )
            stop = asyncio.ensure_future(self._stop.wait())
            resume = asyncio.ensure_future(self._resume.wait())
            await asyncio.wait([stop, resume], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            resume.cancel()
            if not self._resume.is_set():
                return
        if action == "shutdown":
            self._status = "shut down"
            log.info("shutting down at the recovery target")
        else:
            self._status = "promoted"
            log.info("recovery ended at %s (timeline %s)", self.state.replay_lsn, self._file_tli)

    def _end_of_wal(self) -> None:
        assert self.state is not None
        self._status = "ended"
        stopped = self.state.stopped
        if stopped is not None:
            log.info("end of WAL at %s: %s", stopped.lsn, stopped.reason)
        self.state.finish()  # PostgreSQL's FATAL if a target was set and not reached

    # -- in the worker thread ---------------------------------------------------------------

    def _setup(self) -> bool:
        """Find the WAL to replay; False (while following) when there is none yet."""
        directory = self.options.directory
        if not directory.is_dir():
            raise StartupError(f'could not open directory "{directory}": No such directory')
        files = self._segment_files()
        # The first segment with a written page header gives the segment size:
        # a receiver's newest .partial may still be all zeros.
        seg_size = next((size for path in files if (size := self._segment_size(path))), None)
        if seg_size is None:
            if self.options.follow:
                return False
            raise StartupError(f'no WAL in "{directory}"')
        self.seg_size = seg_size
        self._choose_timeline(files)
        seg = self.seg_size
        if self.options.start is not None:
            start = self.options.start
        else:
            start = LSN(min(n.segno for n in self._names(files) if self._on_history(n)) * seg)
        self._read = LSN(start - start % seg)
        self.state = ReplayState(
            start, seg, target=self.options.target, backup_start=self.options.backup_start
        )
        log.info("starting replay at %s on timeline %d (%s)", start, self._target_tli, directory)
        return True

    def _segment_files(self) -> list[Path]:
        return self._reader.segment_files()

    def _segment_size(self, path: Path) -> int | None:
        try:
            return self._reader.segment_size(path)
        except OSError as e:
            raise StartupError(f'could not read "{path}": {e.strerror}') from None
        except ValueError as e:
            raise StartupError(f'WAL file "{path}": {e}') from None

    def _names(self, files: list[Path]) -> list[SegmentName]:
        assert self.seg_size is not None
        return [n for p in files if (n := parse_segment_name(p.name, self.seg_size)) is not None]

    def _on_history(self, name: SegmentName) -> bool:
        assert self.seg_size is not None
        return name.timeline in timelines_for_segment(name.segno, self._spans, self.seg_size)

    def _history(self, tli: int) -> list[HistoryEntry]:
        path = self._reader.history_path(tli)
        try:
            return self._reader.history(tli)
        except FileNotFoundError:
            raise StartupError(f'timeline history file "{path}" is missing') from None
        except OSError as e:
            raise StartupError(f'could not read "{path}": {e.strerror}') from None
        except HistoryFileError as e:
            raise StartupError(f'"{path}": {e}') from None

    def _latest_timeline(self) -> int:
        return self._reader.latest_timeline()

    def _choose_timeline(self, files: list[Path]) -> None:
        wanted = self.options.target.timeline
        names = self._names(files)
        if wanted == "latest":
            tli = max(self._latest_timeline(), min(n.timeline for n in names))
        elif wanted == "current":
            # The timeline of the start point: that of the first segment read.
            first = min(names, key=lambda n: (n.segno, n.timeline))
            if self.options.start is not None:
                assert self.seg_size is not None
                at = [n for n in names if n.segno == self.options.start // self.seg_size]
                first = min(at, key=lambda n: n.timeline) if at else first
            tli = first.timeline
        else:
            tli = int(wanted)
        self._target_tli = tli
        self._spans = expected_timelines(tli, self._history(tli))

    def _rescan_timeline(self) -> bool:
        """recovery_target_timeline = latest while following: switch to a newer timeline.

        As rescanLatestTimeLine: only if what was replayed so far is on the new
        timeline's history (it did not fork before our replay position).
        """
        if self.options.target.timeline != "latest" or self.state is None:
            return False
        newest = self._latest_timeline()
        if newest <= self._target_tli:
            return False
        spans = expected_timelines(newest, self._history(newest))
        mine = next((s for s in spans if s.timeline == self._target_tli), None)
        replayed = self.state.replay_lsn
        if mine is None or (mine.end is not None and mine.end < replayed):
            log.warning(
                "new timeline %d is not a child of database system timeline %d, or forked "
                "off it before the current recovery point %s",
                newest,
                self._target_tli,
                replayed,
            )
            self._target_tli = newest  # do not warn again; keep the old spans
            return False
        log.info("new target timeline is %d", newest)
        self._target_tli = newest
        self._spans = spans
        return True

    def _find(self, segno: int) -> SegmentFile | None:
        assert self.seg_size is not None
        for tli in timelines_for_segment(segno, self._spans, self.seg_size):
            if tli < self._file_tli:
                break  # never go back to an older timeline's files
            found = self._reader.find(tli, segno, self.seg_size)
            if found is not None:
                return found
        return None

    def _step(self) -> bool:
        """Feed the next piece of WAL and replay what decodes.

        True while there is more to read now; False at the end of the WAL
        there is for now (nothing new, or decoding stopped without progress).
        """
        state = self.state
        seg = self.seg_size
        assert state is not None
        assert seg is not None
        if state.stopped is not None:
            if not self.options.follow:
                return False
            self._read = state.rewind()  # the WAL ended for now: retry from the last record
        segno = self._read // seg
        found = self._find(segno)
        if found is None:
            return False
        offset = self._read - segno * seg
        # A bounded piece at a time: segments may be up to 1 GB.
        want = min(seg - offset, _READ_CHUNK)
        try:
            data = self._reader.read(found.path, offset, want)
        except OSError as e:
            raise StartupError(f'could not read "{found.path}": {e.strerror}') from None
        if found.complete and len(data) != want:
            raise StartupError(
                f'WAL segment "{found.path}" has {offset + len(data)} bytes, expected {seg}'
            )
        if not data:
            return False
        if found.timeline != self._file_tli:
            self._file_tli = found.timeline
            log.debug("reading %s", found.path.name)
        before = state.replay_lsn
        state.feed(self._read, data)
        self._read = LSN(self._read + len(data))
        state.advance(self._read)
        stopped = state.stopped
        if stopped is None:
            return True  # all of it decoded: read on
        if found.complete and stopped.lsn < self._read:
            # A completed segment never changes: what fails in it is not an
            # unfinished write but damage.
            message = (
                f"invalid WAL in completed segment {found.path.name} at {stopped.lsn}: "
                f"{stopped.reason}"
            )
            if isinstance(stopped, InvalidRecord):
                raise StartupError(message)
            if stopped.lsn != self._warned:
                log.warning("%s; treating it as the end of WAL", message)
                self._warned = stopped.lsn
        return state.replay_lsn > before


_READ_CHUNK: Final = 16 * 1024 * 1024

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m walstream.startup",
        description="Replay the WAL of a walstream or pg_receivewal directory the way a "
        "standby's startup process does, without page redo: decode and CRC-verify every "
        "record in LSN order across timelines, track the replay position, the last "
        "transaction and checkpoint, and stop at a recovery target. With --follow it keeps "
        "waiting for new WAL, as a standby does. 'python -m walstream.startup waldump ...' "
        "inspects WAL like pg_waldump.",
        epilog="Exit status: 0 at the end of the WAL, at the recovery target, or on SIGINT/"
        "SIGTERM; 1 on corrupt WAL, a target the WAL ends before, or another error. "
        "To replay while receiving, in one process: python -m walstream.receiver --replay.",
    )
    parser.add_argument(
        "-D", "--directory", required=True, type=Path, help="the WAL directory to replay"
    )
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="at the end of the WAL, wait for more (a receiver is writing the directory)",
    )
    parser.add_argument(
        "-s",
        "--start",
        metavar="LSN",
        help="start at this record or segment start (default: the first segment in the directory)",
    )
    parser.add_argument(
        "--recovery-target-timeline",
        metavar="latest|current|N",
        default="latest",
        help="the timeline to recover along (default latest: the highest history file)",
    )
    add_target_arguments(parser)
    parser.add_argument(
        "--backup-start",
        metavar="LSN",
        help="START WAL LOCATION of the base backup this WAL applies to (its backup_label): "
        "no target may stop before that backup's end, and --recovery-target immediate stops "
        "there",
    )
    parser.add_argument(
        "--poll-interval", type=float, default=0.2, metavar="SECONDS",
        help="with --follow, how often to look for new WAL (default 0.2)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the final state as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    return parser


def _summary(status: StartupStatus) -> dict[str, object]:
    def text(value: object) -> object:
        if isinstance(value, datetime):
            return value.isoformat()
        return str(value) if isinstance(value, LSN) else value

    reached = status.target_reached
    return {
        "state": status.state,
        "replay_lsn": text(status.replay_lsn),
        "timeline": status.timeline,
        "last_xact_time": text(status.last_xact_time),
        "last_checkpoint": text(status.last_checkpoint),
        "last_checkpoint_redo": text(status.last_checkpoint_redo),
        "target_reached": None if reached is None else reached.message,
        "error": status.error,
    }


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["waldump"]:
        from walstream.waldump import main as waldump

        return waldump(args_list[1:])
    args = _parser().parse_args(args_list)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="walstream startup: %(message)s",
        stream=sys.stderr,
    )
    prog = "walstream startup"
    try:
        start = LSN.parse(args.start) if args.start else None
        backup_start = LSN.parse(args.backup_start) if args.backup_start else None
        target = target_from_arguments(args)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    options = StartupOptions(
        args.directory, follow=args.follow, start=start, target=target,
        backup_start=backup_start, poll_interval=args.poll_interval,
    )  # fmt: skip
    service = StartupService(options)

    async def run() -> StartupStatus:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, service.stop)
        return await service.run()

    try:
        status = asyncio.run(run())
        code = 0
    except Error as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        status = service.status()
        code = 1
    summary = _summary(status)
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            if value is not None:
                print(f"{key}: {value}")
    return code


if __name__ == "__main__":
    sys.exit(main())
