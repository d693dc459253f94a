"""The lag tracker against real primaries (15, 16, 18): pg_stat_replication's lag columns.

A walstream client streams from the primary and reports chosen positions at
chosen moments; the samples the primary's tracker took (visible as the WAL
ends of its XLogData) and the same replies go to our tracker, and the lag
columns the primary shows must be what our tracker computes.

Exactness and tolerance: which columns are NULL depends only on positions,
so that pattern must match exactly. The values depend on two clock readings
inside the walsender that a client can only bracket: when it took each
sample (after it sent the previous message, before it sent this one: both
send times are in the messages) and when it handled our reply (after we
sent it, before it sent its answer); after an idle period, the moment we
asked for the WAL that a sample covers bounds it too. So the test runs two trackers: one
with every sample at its earliest time and the reply handled at the
answer's send time (the largest lag those readings allow), one with every
sample at its latest time and the reply handled when we sent it (the
smallest); the tracker's arithmetic, interpolation included, only grows
with later replies and earlier samples, so the primary's value lies between.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from walstream import LSN
from walstream.client import ReplicationConnection
from walstream.pgtypes import pg_time_from_unix
from walstream.sender.lag import LagTracker

from .pgcluster import VERSIONS, PgCluster
from .standby_probe import StandbyProbe, sql_connection

LAG_COLUMNS = ", ".join(
    f"(extract(epoch FROM {c}) * 1000000)::bigint" for c in ("write_lag", "flush_lag", "replay_lag")
)


async def server_lags(sql: ReplicationConnection, pid: int) -> list[int | None]:
    result = await sql.execute(f"SELECT {LAG_COLUMNS} FROM pg_stat_replication WHERE pid = {pid}")
    (row,) = result.rows
    return [None if v is None else int(v) for v in row]


async def flush_lsn(sql: ReplicationConnection) -> LSN:
    (row,) = (await sql.execute("SELECT pg_current_wal_flush_lsn()")).rows
    assert row[0] is not None
    return LSN.parse(row[0])


class Oracle:
    def __init__(self, probe: StandbyProbe, sql: ReplicationConnection) -> None:
        self.probe = probe
        self.sql = sql
        self.most = LagTracker()  # samples at their earliest, reply handled at its latest
        self.least = LagTracker()  # samples at their latest, reply handled at its earliest
        self.steps = 0

    async def burst(self) -> LSN:
        """Commit a row (the commit flushes WAL) and receive it: one new sample."""
        since = pg_time_from_unix(time.time())
        (row,) = (await self.sql.execute("SELECT pg_current_wal_insert_lsn()")).rows
        assert row[0] is not None
        self.probe.wal_beyond(LSN.parse(row[0]), since)
        await self.sql.execute("INSERT INTO lag_probe VALUES (1)")
        end = await flush_lsn(self.sql)
        await self.probe.receive_until(end)
        return end

    async def step(self, write: int, flush: int, apply: int) -> list[int | None]:
        self.steps += 1
        answer = await self.probe.reply(write, flush, apply)
        for s in answer.samples:
            self.most.record(s.lsn, s.earliest)
            self.least.record(s.lsn, s.latest)
        self.most.reply(write, flush, apply, sent=answer.sent, now=answer.answered_at)
        self.least.reply(write, flush, apply, sent=answer.sent, now=answer.sent_at)
        got = await server_lags(self.sql, self.probe.pid)
        expected = [self.most.write_lag, self.most.flush_lag, self.most.replay_lag]
        where = (
            f"step {self.steps}: reply {LSN(write)} {LSN(flush)} {LSN(apply)}, sent {answer.sent}"
        )
        assert [v is None for v in got] == [v is None for v in expected], (
            f"{where}: primary {got}, ours {expected}"
        )
        print(where, got, self.least.lags, self.most.lags)
        for value, low, high in zip(got, self.least.lags, self.most.lags, strict=True):
            if value is not None:
                assert low <= value <= high, f"{where}: primary {got}, ours {low}..{high}"
        return got

    async def until(
        self,
        positions: Callable[[], tuple[int, int, int]],
        done: Callable[[list[int | None]], bool],
    ) -> list[int | None]:
        """Repeat a step until its outcome is the one wanted (background WAL can intervene)."""
        for _ in range(20):
            got = await self.step(*positions())
            if done(got):
                return got
        raise AssertionError("the primary kept writing WAL of its own")


@pytest.mark.parametrize("version", VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
async def test_lag_columns_match_the_primary(
    pg_factory: Callable[..., PgCluster], version: int
) -> None:
    primary = pg_factory(version)
    conninfo = primary.conninfo("postgres")
    sql = await sql_connection(conninfo)
    await sql.execute("CREATE TABLE lag_probe (i int)")
    probe = await StandbyProbe.start(conninfo, "lag_probe")
    try:
        oracle = Oracle(probe, sql)
        await probe.receive_until(await flush_lsn(sql))

        # Nothing reported yet: only future samples, whose lag grows.
        got = await oracle.step(0, 0, 0)
        assert None not in got

        for _ in range(3):
            await oracle.burst()
        s = [x.lsn for x in probe.samples]
        assert len(s) >= 3
        mid = (s[-2] + s[-1]) // 2
        # write crosses a sample exactly, flush passes one, apply is stuck at the first.
        await oracle.step(s[-2], mid, s[0])
        # Again: nothing crossed, so each column interpolates (write and apply at
        # fraction 0, flush halfway) and keeps growing.
        await oracle.step(s[-2], mid, s[0])
        await oracle.step(probe.sent, probe.sent, s[-2])

        # Everything applied once: values stay; twice in a row: NULL.
        def caught_up() -> tuple[int, int, int]:
            return probe.sent, probe.sent, probe.sent

        got = await oracle.until(caught_up, lambda got: None not in got)
        await oracle.until(caught_up, lambda got: got == [None, None, None])
        assert await oracle.step(*caught_up()) == [None, None, None]

        # A new burst after idleness: measured from its own first sample,
        # never interpolated from the samples consumed before.
        before = probe.sent
        await oracle.burst()
        got = await oracle.step(before, before, before)
        assert None not in got
        await oracle.until(caught_up, lambda got: got == [None, None, None])

        # A client that never reports apply (pg_receivewal): apply is never
        # equal to sent, so nothing is cleared, and replay_lag is measured
        # from the first sample it has not reached.
        await oracle.burst()
        await oracle.step(probe.sent, probe.sent, 0)
        got = await oracle.step(probe.sent, probe.sent, 0)
        assert None not in got
    finally:
        await probe.close()
        await sql.close()
