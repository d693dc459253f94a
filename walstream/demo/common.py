"""What both demos share: printing, the write load, waiting for a condition."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

from walstream.embedded import PgCluster

__all__ = ["Load", "a_commit_waits", "say", "wait_for"]


def say(text: str = "") -> None:
    print(text, flush=True)


class Load:
    """Committed transactions in a thread, one ``psql`` each, until :meth:`stop`.

    With a synchronous standby named, each commit waits for it. :meth:`stop`
    lets the transaction in flight commit (its standby must still be there
    for that) and joins the thread; a psql that fails because the server is
    going away after a stop is the end of the load, not an error. An error
    while running is kept in :attr:`error` and ends the load: the demo
    reports it in one line, never as a thread's traceback.
    """

    def __init__(self, cluster: PgCluster, statement: str) -> None:
        self.cluster = cluster
        self.statement = statement
        self.commits = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="walstream-demo-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.cluster.psql(self.statement)
            except (RuntimeError, OSError) as e:
                if not self._stop.is_set():
                    self.error = str(e).strip().splitlines()[-1]
                return
            self.commits += 1

    async def stop(self, within: float = 60.0) -> bool:
        """Stop after the transaction in flight; False if it did not end ``within`` seconds."""
        self._stop.set()
        await asyncio.to_thread(self._thread.join, within)
        return not self._thread.is_alive()


async def wait_for(predicate: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """Poll ``predicate`` every 0.1 s; TimeoutError naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


async def a_commit_waits(cluster: PgCluster, within: float = 60.0) -> bool:
    """Until a backend of ``cluster`` waits for its synchronous standby (wait_event SyncRep).

    The load runs one statement at a time, so once one waits every earlier
    one has returned and been counted: a count taken then is exact, where
    one taken at once could still miss a commit confirmed just before the
    standby went away. False if none waits ``within`` seconds.
    """
    sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"

    async def waiting() -> bool:
        return await asyncio.to_thread(cluster.psql, sql) != "0"

    try:
        await wait_for(waiting, within, "a commit waiting for its synchronous standby")
    except TimeoutError:
        return False
    return True
