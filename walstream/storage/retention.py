"""Removing the WAL segments a directory no longer needs: the relay's bounded directory.

:class:`WalRetention` scans the directory, asks
:func:`walstream.wal.retention.removable_segments` which segment files may
go (``--wal-keep-size``, slots, connected clients, segment-complete hooks,
timelines), removes them oldest first, then fsyncs the directory once.
The relay calls :meth:`WalRetention.remove_old_segments` in its disk thread
after each completed segment, so removal stays in order with the writes;
hook results come from the event loop through
:meth:`WalRetention.hook_succeeded`.

Without a retention nothing is removed, as with pg_receivewal.

Failures are logged, never raised, as the checkpointer's durable_unlink
logs them: a file that cannot be removed now is tried again after the next
segment, and the stream must not stop for it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from walstream.lsn import LSN
from walstream.storage.reader import WalReader
from walstream.wal.retention import PresentSegment, RetentionPolicy, removable_segments
from walstream.wal.segment import HistoryEntry, HistoryFileError, parse_segment_name

__all__ = ["RetentionPolicy", "WalRetention"]

log = logging.getLogger("walstream.storage.retention")


class WalRetention:
    """Keeps one WAL directory bounded: thread-safe between a disk thread and an event loop.

    ``sync``: fsync the directory after removing (off with ``--no-sync``).
    """

    def __init__(self, path: Path | str, policy: RetentionPolicy, *, sync: bool = True) -> None:
        self.path = Path(path)
        self.policy = policy
        self.sync = sync
        self.removed = 0  # segment files removed so far (a metric)
        self._archived: set[str] = set()
        self._lock = threading.Lock()

    def hook_succeeded(self, segment: Path | str) -> None:
        """The segment-complete hook of this file (a path or a file name) succeeded."""
        name = segment.name if isinstance(segment, Path) else segment
        with self._lock:
            self._archived.add(name)

    def remove_old_segments(
        self,
        seg_size: int,
        *,
        newest: LSN | int,
        timeline: int,
        slots: Iterable[int] = (),
        clients: Iterable[int] = (),
    ) -> list[Path]:
        """Remove what the policy lets go; return the removed paths, oldest first.

        ``newest`` is the end of the newest durable WAL and ``timeline`` its
        timeline (the receiver's); ``slots`` the slots' restart_lsns,
        ``clients`` the connected clients' sent positions.
        """
        with self._lock:
            archived = frozenset(self._archived)
        try:
            entries = list(os.scandir(self.path))
        except OSError as e:
            log.warning('could not open directory "%s": %s', self.path, e.strerror or e)
            return []
        present: list[PresentSegment] = []
        for entry in entries:
            name = parse_segment_name(entry.name, seg_size)
            if name is None:
                continue  # history files, .tmp files, anything else: never ours to remove
            present.append(
                PresentSegment(
                    name.timeline,
                    name.segno,
                    complete=not name.partial,
                    archived=entry.name in archived,
                    name=entry.name,
                )
            )
        chosen = removable_segments(
            self.policy,
            seg_size,
            newest=newest,
            timeline=timeline,
            history=self._history(timeline),
            segments=present,
            slots=slots,
            clients=clients,
        )
        removed: list[Path] = []
        # Oldest first, the order they aged in: the log reads as the directory moved.
        for seg in chosen:
            path = self.path / seg.name
            # The checkpointer's own words for it, at DEBUG2 there; here one
            # line per segment as -v's "finished segment" line has.
            log.info('removing write-ahead log file "%s"', seg.name)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass  # gone already: nothing to keep track of
            except OSError as e:
                log.warning('could not remove file "%s": %s', path, e.strerror or e)
                continue
            removed.append(path)
        if removed:
            self.removed += len(removed)
            with self._lock:
                self._archived.difference_update(p.name for p in removed)
            if self.sync:
                self._fsync_dir()
        return removed

    def _history(self, timeline: int) -> list[HistoryEntry] | None:
        """The newest timeline's history, or None (no abandoned-branch rule) if unreadable."""
        try:
            return WalReader(self.path).history(timeline)
        except (OSError, HistoryFileError) as e:
            log.warning(
                "could not read the history of timeline %d: %s; removing by age only",
                timeline,
                e,
            )
            return None

    def _fsync_dir(self) -> None:
        # One fsync for the whole batch: what a crash can undo is only the
        # removal of segments nobody needs, which the next run repeats.
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            log.warning('could not fsync directory "%s": %s', self.path, e.strerror or e)
