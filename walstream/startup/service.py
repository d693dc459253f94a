"""The startup role: follow received WAL, decode and verify it, track replay.

PostgreSQL's startup process replays what the walreceiver flushed and
reports how far it got (``pg_last_wal_replay_lsn()``): the end of the last
replayed record. walstream does not redo pages (see the WAL-format notes);
it decodes and CRC-verifies every record, in order, and keeps the state a
standby would report: replay position, last commit/abort time, timeline,
last checkpoint and the outcome of recent transactions.

:class:`StartupService` follows a directory as a standby's startup process
does; :class:`~walstream.wal.replay.ReplayState` (sans-IO: bytes in, state
out) does the replaying, and :mod:`walstream.startup.replayer` runs it
beside a receiver.

Its command line is :mod:`walstream.cli.startup` (``python -m walstream.startup``).

Errors: :class:`StartupError` (corrupt WAL, a target never reached, a bad
directory).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from walstream.errors import Error
from walstream.lsn import LSN
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

__all__ = ["StartupError", "StartupOptions", "StartupService", "StartupStatus"]

log = logging.getLogger("walstream.startup")


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
