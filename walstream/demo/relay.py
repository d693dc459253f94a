"""The relay demo (``python -m walstream.demo --relay``): sync replication through a cascade.

A throwaway primary; ``walstream relay`` (in this process) as its
synchronous standby, ``--synchronous`` with ``--synchronous-standby-names``
naming the standby behind it; a real PostgreSQL hot standby, made with
pg_basebackup from the primary, whose ``primary_conninfo`` names the relay.
Under a small write load it prints once a second where each hop is: the
primary's WAL, the relay's own flush, what the relay confirmed to the
primary (what the standby behind it flushed), the standby's replay. Then it
stops the standby behind the relay and shows a commit on the primary
waiting for it (PostgreSQL's own cascades are always asynchronous: no
commit can wait for a standby behind one), starts it again and shows the
commit complete, and prints each hop's status: the primary's
pg_stat_replication, the relay's rows (``/status``'s ``clients``), the
standby's pg_stat_wal_receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from walstream.demo.common import Load, a_commit_waits, say, wait_for
from walstream.embedded import PgCluster
from walstream.lsn import LSN
from walstream.receiver import ReceiverOptions
from walstream.relay import RelayOptions, WalRelay
from walstream.sender.server import SenderOptions
from walstream.sender.walsender import WalSenderStatus

__all__ = ["run"]

RELAY_APP = "walstream_relay"  # the relay's application_name on the primary
STANDBY_APP = "demo_standby"  # the standby's, on the relay
LOAD = "INSERT INTO demo(payload) SELECT repeat('x', 200) FROM generate_series(1, 100)"
_SETUP = 120.0  # seconds for a step of the set-up (a base backup, a connection)
_HOLD = 3.0  # seconds a commit is shown waiting


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lsn(value: LSN | None) -> str:
    return "-" if value is None else str(value)


class _Demo:
    def __init__(self, primary: PgCluster, relay: WalRelay, task: asyncio.Task[None]) -> None:
        self.primary = primary
        self.relay = relay
        self.relay_task = task
        self.standby: PgCluster | None = None

    async def sql(self, cluster: PgCluster, statement: str) -> str:
        return await asyncio.to_thread(cluster.psql, statement)

    def _relay_alive(self) -> None:
        if self.relay_task.done():
            self.relay_task.result()  # its error
            raise RuntimeError("the relay stopped")

    async def until(
        self, what: str, check: Callable[[], Awaitable[bool]], within: float = _SETUP
    ) -> None:
        """Wait for ``check``; fail at once if the relay died."""

        async def predicate() -> bool:
            self._relay_alive()
            return await check()

        await wait_for(predicate, within, what)

    def client(self) -> WalSenderStatus | None:
        rows = [c for c in self.relay.status().clients if c.application_name == STANDBY_APP]
        return rows[0] if rows else None

    async def relay_row(self) -> list[str]:
        """The primary's pg_stat_replication row for the relay: state, sync, flush, backend_xmin."""
        row = await self.sql(
            self.primary,
            "SELECT coalesce(state, '-'), coalesce(sync_state, '-'), "
            "coalesce(flush_lsn::text, '-'), coalesce(backend_xmin::text, '-') "
            "FROM (SELECT 1) x LEFT JOIN pg_stat_replication "
            f"ON application_name = '{RELAY_APP}'",
        )
        return row.split("|")

    async def standby_replay(self) -> str:
        standby = self.standby
        if standby is None or not standby.running:
            return "-"
        try:
            return await self.sql(standby, "SELECT pg_last_wal_replay_lsn()")
        except RuntimeError:
            return "-"  # starting up, not accepting connections yet

    # -- what is shown -------------------------------------------------------------------

    async def show_hops(self) -> None:
        """Each hop's own view, as an operator would look at it."""
        say("  primary: SELECT ... FROM pg_stat_replication")
        rows = await self.sql(
            self.primary,
            "SELECT application_name, state, sync_state, sent_lsn, flush_lsn, replay_lsn, "
            "coalesce(backend_xmin::text, '-') FROM pg_stat_replication "
            "ORDER BY application_name",
        )
        header = ("application_name", "state", "sync_state", "sent_lsn", "flush_lsn",
                  "replay_lsn", "backend_xmin")  # fmt: skip
        self._table(header, [r.split("|") for r in rows.splitlines()])
        up = self.relay.status().upstream
        say(f"  relay: upstream {up.state} from {up.host}, timeline {up.timeline}, "
            f"flushed (fsync) up to {up.flush}, primary's WAL end {up.server_wal_end}")  # fmt: skip
        say("  relay: its clients (GET /status's \"clients\", pg_stat_replication's columns)")
        self._table(
            header,
            [
                [c.application_name, c.state, c.sync_state, _lsn(c.sent_lsn), _lsn(c.flush_lsn),
                 _lsn(c.replay_lsn), "-" if c.backend_xmin is None else str(c.backend_xmin)]
                for c in self.relay.status().clients
            ],
        )  # fmt: skip
        standby = self.standby
        say("  standby: SELECT ... FROM pg_stat_wal_receiver")
        if standby is None or not standby.running:
            say("    (stopped)")
            return
        rows = await self.sql(
            standby,
            "SELECT status, sender_host, sender_port, flushed_lsn, "
            "pg_last_wal_replay_lsn() FROM pg_stat_wal_receiver",
        )
        self._table(
            ("status", "sender_host", "sender_port", "flushed_lsn", "replayed"),
            [r.split("|") for r in rows.splitlines()],
        )

    @staticmethod
    def _table(header: tuple[str, ...], rows: list[list[str]]) -> None:
        widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
        for cells in (list(header), *rows):
            line = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
            say("    " + line.rstrip())
        if not rows:
            say("    (no rows)")

    async def watch(self, seconds: float, load: Load) -> None:
        say(f"{'t':>3} {'primary flush':>13} {'relay flush':>12} {'relay confirmed':>15} "
            f"{'standby replay':>14} {'relay':>6} {'standby':>7} {'commits':>7}")  # fmt: skip
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            await asyncio.sleep(1)
            self._relay_alive()
            flushed = await self.sql(self.primary, "SELECT pg_current_wal_flush_lsn()")
            _, sync, confirmed, _ = await self.relay_row()
            client = self.client()
            replay = await self.standby_replay()
            say(f"{time.monotonic() - start:3.0f} {flushed:>13} "
                f"{self.relay.status().upstream.flush!s:>12} {confirmed:>15} {replay:>14} "
                f"{sync:>6} {client.sync_state if client else '-':>7} "
                f"{load.commits:>7}")  # fmt: skip


async def run(version: int, seconds: float) -> None:
    say(f"Starting a throwaway PostgreSQL {version} primary with 1 MB WAL segments ...")
    primary = PgCluster.create(version, wal_segsize_mb=1)
    directory = Path(tempfile.mkdtemp(prefix="walstream-relay-demo-"))
    relay: WalRelay | None = None
    task: asyncio.Task[None] | None = None
    demo: _Demo | None = None
    load: Load | None = None
    try:
        primary.psql("CREATE TABLE demo(id serial PRIMARY KEY, payload text)")
        say(f"  primary on port {primary.port}, data in {primary.datadir}")
        port = _free_port()
        say(f"Starting walstream relay: receives from the primary into {directory} and serves "
            f"what it has made durable on 127.0.0.1:{port}")  # fmt: skip
        say(f"  --synchronous (fsync, then report) --synchronous-standby-names '{STANDBY_APP}' "
            "(confirm upstream only what that standby has flushed)")  # fmt: skip
        relay = WalRelay(
            RelayOptions(
                receiver=ReceiverOptions(
                    directory=directory,
                    conninfo=primary.conninfo("walstream", "walstream", application_name=RELAY_APP),
                    synchronous=True,
                    status_interval=1.0,
                ),
                sender=SenderOptions(
                    directory=directory,
                    listen=(("127.0.0.1", port),),
                    synchronous_standby_names=STANDBY_APP,
                ),
            )
        )
        task = asyncio.create_task(relay.run())
        demo = _Demo(primary, relay, task)
        serving = relay

        async def relay_serving() -> bool:
            return serving.sender is not None and serving.status().upstream.state == "streaming"

        await demo.until("the relay to stream from the primary", relay_serving)

        say("Making a hot standby with pg_basebackup from the primary; its primary_conninfo "
            "names the relay ...")  # fmt: skip
        conninfo = f"host=127.0.0.1 port={port} user=walstream application_name={STANDBY_APP}"
        standby = demo.standby = await asyncio.to_thread(
            primary.backup_standby,
            "standby",
            conninfo,
            hot_standby_feedback="on",
            wal_receiver_status_interval="'1s'",
        )
        await asyncio.to_thread(standby.start)
        say(f"  standby on port {standby.port}: primary_conninfo = '{conninfo}'")

        async def standby_streaming() -> bool:
            client = demo.client() if demo else None
            return client is not None and client.state == "streaming"

        await demo.until("the standby to stream from the relay", standby_streaming)
        say("\nEach hop, before the primary names the relay in synchronous_standby_names:")
        await demo.show_hops()

        say(f"\nsynchronous_standby_names = '{RELAY_APP}' on the primary: a commit there waits "
            f"for the relay, which confirms only what {STANDBY_APP} has flushed.")  # fmt: skip
        await asyncio.to_thread(primary.set_conf, synchronous_standby_names=RELAY_APP)

        async def relay_sync() -> bool:
            return demo is not None and (await demo.relay_row())[1] == "sync"

        await demo.until("the relay to be the primary's synchronous standby", relay_sync)
        say("Writing on the primary (each commit: 100 rows), watching each hop once a second:\n")
        load = Load(primary, LOAD)
        load.start()
        await demo.watch(seconds, load)

        say(f"\nStopping the standby behind the relay ({STANDBY_APP}, pg_ctl stop) ...")
        await asyncio.to_thread(standby.stop)
        if not await a_commit_waits(primary):
            say("  no commit is waiting (has the load stopped?)")
        before = load.commits
        await asyncio.sleep(_HOLD)
        say(f"  commits completed in the {_HOLD:.0f} s without it: {load.commits - before} "
            "(they wait)")  # fmt: skip
        waiting = await demo.sql(
            primary, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
        )
        say(f"  backends on the primary waiting with wait_event SyncRep: {waiting}")
        say("  the relay has the waiting commit's WAL, but confirms to the primary only what "
            f"{STANDBY_APP} flushed:")  # fmt: skip
        await demo.show_hops()
        if (await demo.relay_row())[2] == "-":
            say("  (with none of its synchronous standbys connected the relay confirms nothing: "
                "it reports no flush position, so the primary does not count it as a candidate "
                "and lists it async; the commit waits all the same)")  # fmt: skip
        say(f"Starting {STANDBY_APP} again: it reconnects to the relay, catches up, and the "
            "waiting commit completes.")  # fmt: skip
        await asyncio.to_thread(standby.start)
        counted = load

        async def commits_resume() -> bool:
            return counted.commits > before

        await demo.until("the waiting commit to complete", commits_resume)
        await asyncio.sleep(1)
        say(f"  commits completed since: {load.commits - before}")

        say("Stopping the load (its last commit confirmed through the cascade) ...")
        if not await load.stop():
            say("  the load's last commit did not complete")
        if load.error:
            say(f"  the load stopped early: {load.error}")
        last = await demo.sql(primary, "SELECT max(id) FROM demo")
        end = LSN.parse(await demo.sql(primary, "SELECT pg_current_wal_flush_lsn()"))

        async def replayed() -> bool:
            text = await demo.standby_replay() if demo else "-"
            return text != "-" and LSN.parse(text) >= end

        await demo.until(f"the standby to replay up to {end}", replayed)
        say(f"  the standby has replayed the primary's WAL up to {end}, its end after the load")
        seen = await demo.sql(standby, f"SELECT count(*) FROM demo WHERE id = {last}")
        say(f"  the last row committed on the primary (id {last}) is on the standby: "
            f"{seen == '1'}")  # fmt: skip
        say("\nEach hop at the end:")
        await demo.show_hops()
    finally:
        if load is not None:
            await load.stop(within=0)
        if relay is not None and task is not None:
            relay.stop()
            with contextlib.suppress(Exception):  # what failed first is being raised
                await task
        if demo is not None and demo.standby is not None:
            demo.standby.destroy()
        primary.destroy()
        shutil.rmtree(directory, ignore_errors=True)
        say("Cleaned up.")
