"""Where a walsender's WAL comes from: the interface, and a directory behind it.

The sender serves WAL from a :class:`WalSource`. :class:`DirectorySource`
is a walstream or pg_receivewal directory (completed segments, ``.partial``,
compressed ones, history files), possibly still being written by a receiver;
the relay will put a receiver in the same process behind the same
interface, with no files read back in between.

The interface is synchronous and does no waiting: the sender's shell asks
what is there (:meth:`WalSource.refresh` for a source that must look, as a
directory must), and is told of more by whoever writes it (the relay).

Errors: :class:`SegmentRemoved` (the requested WAL is no longer there, as
PostgreSQL's 58P01 words it), :class:`SourceError` (the directory cannot
be served: no WAL, a damaged completed segment, WAL of two systems).
"""

from __future__ import annotations

from typing import Protocol

from walstream.errors import Error
from walstream.lsn import LSN
from walstream.wal.segment import HistoryEntry

__all__ = ["SegmentRemoved", "SourceError", "WalSource"]


class SourceError(Error):
    """The source cannot be served (no WAL yet, damage, mixed systems); names what and where."""


class SegmentRemoved(Error):
    """The WAL asked for is older than the oldest segment there is."""

    def __init__(self, segment: str) -> None:
        super().__init__(f"requested WAL segment {segment} has already been removed")
        self.segment = segment


class WalSource(Protocol):
    """The WAL a walsender serves: one system, one segment size, timelines with their histories.

    Positions are LSNs. Only WAL that is really there and valid is ever
    returned: a source never reports an end position past the last byte it
    can return, and what it returns never changes afterwards.
    """

    @property
    def seg_size(self) -> int: ...

    @property
    def system_identifier(self) -> int: ...

    @property
    def server_version(self) -> int:
        """PG_VERSION_NUM of the PostgreSQL that wrote the WAL (from the page magic): 160000."""
        ...

    def refresh(self) -> bool:
        """Look for new WAL and timelines; True if anything changed. May block on disk."""
        ...

    def timeline(self) -> int:
        """The newest timeline (IDENTIFY_SYSTEM's)."""
        ...

    def end_of_wal(self) -> LSN:
        """The end of the valid WAL on the newest timeline (IDENTIFY_SYSTEM's xlogpos)."""
        ...

    def history(self, timeline: int) -> list[HistoryEntry]:
        """The parsed history of ``timeline`` (empty for 1); FileNotFoundError if unknown."""
        ...

    def history_file(self, timeline: int) -> tuple[str, bytes]:
        """TIMELINE_HISTORY's answer: the file name and its bytes; FileNotFoundError if none."""
        ...

    def read(self, timeline: int, start: LSN, size: int) -> bytes:
        """Up to ``size`` bytes of WAL at ``start`` as timeline ``timeline``'s history has it.

        Stops at the end of what is there (b"" when nothing is yet) and,
        for an older timeline, at its switch point. Raises
        :class:`SegmentRemoved` when the segment of ``start`` is gone.
        """
        ...
