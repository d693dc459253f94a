"""The sender's asyncio shell in-process, over an in-memory source: what only the shell decides.

What real clients make of the whole sender is tested against real servers in
tests/test_sender_access.py and tests/test_sender_hostile.py; these are the
shell's own duties, fast and without PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from walstream.protocol import messages as m
from walstream.sender.server import SenderOptions, WalSender

from .test_sender_session import SEG, MemorySource

AUTHENTICATION_TIMEOUT = 0.3


@pytest.fixture
async def sender() -> AsyncIterator[WalSender]:
    options = SenderOptions(
        source=MemorySource(3 * SEG),
        listen=(("127.0.0.1", 0),),
        authentication_timeout=AUTHENTICATION_TIMEOUT,
    )
    sender = WalSender(options)
    task = asyncio.ensure_future(sender.serve())
    while not sender.addresses:
        await asyncio.sleep(0.01)
        assert not task.done(), task.exception()
    yield sender
    sender.stop()
    await asyncio.wait_for(task, 30)


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connects and says nothing
        m.StartupMessage({"user": "rep", "replication": "true"}).encode()[:9],  # half a packet
    ],
    ids=["nothing", "half-a-packet"],
)
async def test_authentication_timeout_runs_from_the_accept(sender: WalSender, sent: bytes) -> None:
    # As PostgreSQL's authentication_timeout covers reading the startup packet:
    # a client that never completes a message is dropped, silently.
    reader, writer = await asyncio.open_connection(*sender.addresses[0])
    writer.write(sent)
    try:
        assert await asyncio.wait_for(reader.read(), 30) == b""
    finally:
        writer.close()
