"""A walstream client that plays a standby whose replies the test chooses.

For the oracle tests of the lag tracker and of synchronous replication: it
streams from a real primary, reports chosen positions, and after each report
waits for the walsender's answer, so the test knows the primary has handled
it. It also records what the primary's lag tracker saw, as far as a client
can know it (see :class:`Sample`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import walstream
from walstream import LSN
from walstream.client import ReplicationConnection, ReplicationStream
from walstream.pgtypes import pg_time_from_unix
from walstream.protocol.replication import PrimaryKeepalive, XLogData

__all__ = ["Answer", "Sample", "StandbyProbe", "sql_connection"]

PAGE = 8192
TIMEOUT = 60.0


@dataclass(frozen=True)
class Sample:
    """One (WAL end, time) sample of the walsender's lag tracker, with bounds on the time.

    The walsender records a sample (LagTrackerWrite) each time its WAL end
    moves, just before it reads and sends the WAL up to it, and every
    XLogData it sends carries that WAL end. So each new ``walEnd`` seen in
    XLogData is a sample, taken after the previous message was sent
    (``earliest``: that message's send time) and before this one was
    (``latest``: its send time, which the walsender takes last).
    """

    lsn: LSN
    earliest: int
    latest: int


@dataclass(frozen=True)
class Answer:
    """The walsender's answer: it handled the reply between ``sent_at`` and ``answered_at``."""

    sent_at: int
    answered_at: int
    sent: LSN  # the walsender's sentPtr when it handled the reply (the keepalive's walEnd)
    samples: list[Sample]  # samples it had recorded by then, not yet returned by an earlier answer


async def sql_connection(conninfo: str) -> ReplicationConnection:
    """An ordinary (not replication) session, for SQL: ALTER SYSTEM, pg_stat_replication."""
    return await walstream.connect(conninfo, dbname="postgres", replication="false")


class StandbyProbe:
    def __init__(self, conn: ReplicationConnection, stream: ReplicationStream) -> None:
        self.conn = conn
        self.stream = stream
        self.sent = stream.start  # end of the WAL received
        self.reported = (LSN(0), LSN(0), LSN(0))  # the last write, flush, apply reported
        self._wal_end = LSN(0)
        self._last_send_time = 0
        self._new_samples: list[Sample] = []
        self.samples: list[Sample] = []  # every sample seen so far
        self._pending: list[XLogData | PrimaryKeepalive] = []  # read after an answer
        self._floor = (LSN(0), 0)  # (insert position, time): see wal_beyond

    @classmethod
    async def start(
        cls, conninfo: str, application_name: str, *, behind_flush: bool = True
    ) -> StandbyProbe:
        """Connect and START_REPLICATION.

        With ``behind_flush`` it starts a page before the WAL end, so the
        first XLogData shows the walsender's first sample; otherwise at the
        WAL end, caught up at once (that first sample is then never seen).
        """
        conn = await walstream.connect(
            conninfo, replication="true", application_name=application_name
        )
        system = await conn.identify_system()
        start = system.xlogpos
        if behind_flush:
            start = LSN((start - 1) // PAGE * PAGE)
        before = pg_time_from_unix(time.time())
        stream = await conn.start_replication(start)
        probe = cls(conn, stream)
        probe._last_send_time = before
        return probe

    @property
    def pid(self) -> int:
        pid = self.conn.backend_pid
        assert pid is not None
        return pid

    async def _events(self) -> list[XLogData | PrimaryKeepalive]:
        if self._pending:
            events, self._pending = self._pending, []
            return events
        events = await self.stream.read()
        if not events:
            raise AssertionError("the walsender ended the stream")
        return events

    def _take(self, events: list[XLogData | PrimaryKeepalive]) -> PrimaryKeepalive | None:
        """Record events up to the first answer keepalive, which is returned; keep the rest."""
        for i, ev in enumerate(events):
            if isinstance(ev, XLogData):
                if ev.wal_end != self._wal_end:
                    self._wal_end = ev.wal_end
                    earliest = self._last_send_time
                    if ev.wal_end > self._floor[0]:
                        earliest = max(earliest, self._floor[1])
                    sample = Sample(ev.wal_end, earliest, ev.send_time)
                    self._new_samples.append(sample)
                    self.samples.append(sample)
                self.sent = ev.data_end
            elif not ev.reply_requested:
                self._pending = events[i + 1 :]
                return ev
            self._last_send_time = max(self._last_send_time, ev.send_time)
        return None

    def wal_beyond(self, insert_lsn: int, since: int) -> None:
        """Note that WAL past ``insert_lsn`` was written after ``since``.

        ``insert_lsn`` is pg_current_wal_insert_lsn() read after ``since``: a
        sample beyond it was taken after that WAL was flushed, so after
        ``since``. Tightens ``earliest`` after an idle period.
        """
        self._floor = (LSN(insert_lsn), since)

    async def receive_until(self, lsn: int) -> None:
        """Read the stream until WAL up to ``lsn`` has arrived."""
        async with asyncio.timeout(TIMEOUT):
            while self.sent < lsn:
                if self._take(await self._events()) is not None:
                    raise AssertionError("an answer keepalive nobody asked for")

    async def reply(self, write: int, flush: int, apply: int) -> Answer:
        """Report positions with a reply requested; return once the walsender has answered.

        A walsender answers a requested reply with a keepalive after it has
        handled the update (lags computed, positions stored, waiters
        released): everything it sent before that keepalive arrives first.
        """
        self.reported = (LSN(write), LSN(flush), LSN(apply))
        sent_at = pg_time_from_unix(time.time())
        self.stream.send_status(write, flush, apply, reply_requested=True)
        async with asyncio.timeout(TIMEOUT):
            while True:
                answer = self._take(await self._events())
                if answer is not None:
                    break
        samples, self._new_samples = self._new_samples, []
        # The next sample is taken after this keepalive went out.
        self._last_send_time = max(self._last_send_time, answer.send_time)
        return Answer(sent_at, answer.send_time, answer.wal_end, samples)

    async def close(self) -> None:
        self.conn.abort()
