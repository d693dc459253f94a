"""A synchronous receiver answers after the write and again after the fsync, as a walreceiver does.

So a primary waiting with ``synchronous_commit = remote_write`` is released
before the fsync (pg_receivewal answers only after it), while one waiting
with ``on`` is released only after it. The fsync is made slow (3 s) so the
order of the two is plain to see: what is asserted is which came first.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from walstream.receiver import ReceiverOptions, WalReceiver

from .pgcluster import PgCluster, wait_until

APP = "walstream_replies"
SLOW_FSYNC = 3.0


def _run(receiver: WalReceiver) -> threading.Thread:
    thread = threading.Thread(target=asyncio.run, args=(receiver.run(),), daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("mode", ["remote_write", "on"])
def test_remote_write_is_released_before_the_fsync_and_on_after_it(
    pg_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:  # type: ignore[no-untyped-def]
    cluster: PgCluster = pg_factory(15, wal_segsize_mb=1)
    cluster.psql("CREATE TABLE r(x int)")
    cluster.set_conf(synchronous_standby_names=APP)
    receiver = WalReceiver(
        ReceiverOptions(
            directory=tmp_path,
            conninfo=cluster.conninfo("trust_user", application_name=APP),
            synchronous=True,
        )
    )
    thread = _run(receiver)
    try:
        wait_until(
            lambda: cluster.psql(
                f"SELECT sync_state FROM pg_stat_replication WHERE application_name = '{APP}'"
            ) == "sync",
            what="the receiver as the synchronous standby",
        )  # fmt: skip
        fsyncs: list[float] = []  # when each fsync of the receiver ended
        real_fsync = os.fsync

        def slow_fsync(fd: int) -> None:
            if threading.current_thread() is not threading.main_thread():
                time.sleep(SLOW_FSYNC)  # the receiver's threads (its loop, its disk thread)
            real_fsync(fd)
            fsyncs.append(time.monotonic())

        monkeypatch.setattr(os, "fsync", slow_fsync)
        start = time.monotonic()
        cluster.psql(f"SET synchronous_commit = {mode}; INSERT INTO r VALUES (1)")
        committed = time.monotonic()
        wait_until(lambda: any(t > start for t in fsyncs), what="the receiver's fsync")
        first_fsync = min(t for t in fsyncs if t > start)
        if mode == "remote_write":
            assert committed < first_fsync, "the commit waited for the fsync"
        else:
            assert committed >= first_fsync, "the commit was released before the fsync"
    finally:
        monkeypatch.undo()
        receiver.stop()
        thread.join(30)
