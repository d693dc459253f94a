"""What one scrape sees: the roles' status objects, taken together at one moment.

A :class:`Snapshot` is plain data: the receiver's :class:`ReceiverStatus`
(the upstream side), the sender's pg_stat_replication rows
(:class:`WalSenderStatus`, the downstream side), the disk's fsync
histogram. :mod:`.metrics` and :mod:`.status` turn one into text without
asking anything else, so a scrape's metrics agree with one another.

:func:`collector` builds the ``collect`` callable a :class:`MonitorServer`
calls per request, from whichever roles a process runs: a receiver
(``walstream receive``), a sender (``walstream send``), or both (the relay).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from walstream.receiver import ReceiverStatus, WalReceiver
from walstream.storage.latency import HistogramSnapshot

if TYPE_CHECKING:
    # Types only: a receiver with --http need not import the sender role.
    from walstream.sender.walsender import WalSenderStatus

__all__ = ["SenderStatusSource", "Snapshot", "collector"]


@dataclass(frozen=True)
class Snapshot:
    """The status of a walstream process at ``taken_at``.

    ``upstream`` is None where no receiver runs; ``clients`` is None where no
    sender runs (and empty where one runs with nobody connected).
    ``segments_removed`` counts segments a retention policy removed (the
    relay's); nothing removes them in a plain receiver, as in pg_receivewal.
    """

    taken_at: datetime
    upstream: ReceiverStatus | None = None
    clients: tuple[WalSenderStatus, ...] | None = None
    fsync: HistogramSnapshot | None = None
    segments_removed: int = 0


class SenderStatusSource(Protocol):
    """A sender, as the monitor sees it: pg_stat_replication's rows (``WalSender.status()``)."""

    def status(self) -> Sequence[WalSenderStatus]: ...


def collector(
    *,
    receiver: WalReceiver | None = None,
    sender: SenderStatusSource | None = None,
    segments_removed: Callable[[], int] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Callable[[], Snapshot]:
    """The ``collect`` of a :class:`~walstream.monitor.http.MonitorServer` for these roles.

    Each call reads the roles' status at once (on the event loop they run
    on, so nothing moves in between).
    """

    def collect() -> Snapshot:
        return Snapshot(
            taken_at=clock(),
            upstream=None if receiver is None else receiver.status(),
            clients=None if sender is None else tuple(sender.status()),
            fsync=None if receiver is None else receiver.fsync_latency.snapshot(),
            segments_removed=0 if segments_removed is None else segments_removed(),
        )

    return collect
