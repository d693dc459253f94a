"""The core's client conversations, replayed offline over bytes real servers sent.

The fixtures (tests/fixtures/conversations/pgNN.json, made by
``python -m tests.fixtures.capture_conversations``) hold what crossed the
wire when walstream's client talked to PostgreSQL 15, 16 and 18: trust and
md5 logins, a wrong password, a user with no pg_hba.conf line, replication
commands, SQL on a walsender, a START_REPLICATION ahead of the server. Here
the same conversations run with no socket at all: the server's bytes are fed
to the state machine as the shell would feed them, and the client must send
exactly the bytes it sent then and come to exactly the same results.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from walstream.errors import Error, ServerError
from walstream.lsn import LSN
from walstream.protocol import commands, generators
from walstream.protocol import messages as m
from walstream.protocol.auth import Authenticator
from walstream.protocol.client import ClientConnection, ClientEvent
from walstream.protocol.generators import RECEIVE, Conversation

T = TypeVar("T")
FIXTURES = sorted((Path(__file__).parent / "fixtures" / "conversations").glob("pg*.json"))


class _Offline:
    """A shell with no socket: what the conversation sends is kept, what it reads is replayed."""

    def __init__(self, transcript: list[list[str]]) -> None:
        self.machine = ClientConnection()
        self.expected_sent = b"".join(bytes.fromhex(h) for tag, h in transcript if tag == "C")
        self.server: Iterator[bytes] = (bytes.fromhex(h) for tag, h in transcript if tag == "S")
        self.sent = bytearray()
        self.events: deque[ClientEvent] = deque()

    def run(self, conversation: Conversation[T]) -> T:
        answer: Any = None
        while True:
            try:
                need = conversation.send(answer)
            except StopIteration as stop:
                value: T = stop.value
                return value
            if isinstance(need, bytes):
                self.sent += need
                answer = None
            else:
                assert need is RECEIVE  # the fixtures are plain TCP: no TLS step
                while not self.events:
                    self.events.extend(self.machine.receive_data(next(self.server)))
                answer = self.events.popleft()


def _sessions() -> list[Any]:
    params = []
    for path in FIXTURES:
        data = json.loads(path.read_text())
        for i, session in enumerate(data["sessions"]):
            params.append(pytest.param(session, id=f"pg{data['version']}-{i}-{session['user']}"))
    return params


def test_fixtures_cover_every_version() -> None:
    assert [p.stem for p in FIXTURES] == ["pg15", "pg16", "pg18"]


@pytest.mark.parametrize("session", _sessions())
def test_conversation_replays_exactly(session: Any) -> None:
    shell = _Offline(session["transcript"])
    machine = shell.machine
    user, password = session["user"], session["password"]
    expected = session["results"]

    def authenticator(certificate: bytes | None) -> Authenticator:
        return Authenticator(user, password, server_certificate=certificate)

    first = bytes.fromhex(session["transcript"][0][1])
    packet = m.decode_untyped_frontend(first[4:])  # the startup packet the client sent
    assert isinstance(packet, m.StartupMessage)
    startup = generators.startup(
        machine,
        dict(packet.parameters),
        authenticator,
        use_tls=False,
        tls_required=False,
        where="connection to server failed",
    )
    if "error" in expected[0]:
        with pytest.raises(Error) as failure:
            shell.run(startup)
        assert type(failure.value).__name__ == expected[0]["error"]
        assert getattr(failure.value, "sqlstate", None) == expected[0]["sqlstate"]
        assert bytes(shell.sent) == shell.expected_sent
        return
    result = shell.run(startup)
    assert result.tls is False
    assert machine.parameters == expected[0]["parameters"]
    for sql, want in zip(session["steps"], expected[1:], strict=True):
        try:
            if sql.startswith("START_REPLICATION"):
                sql = commands.start_replication(LSN.parse(sql.split()[1]))  # the client's words
                assert shell.run(generators.start_replication(machine, sql)) is None  # COPY began
                shell.run(generators.query_results(machine, sql))  # the error ends it
                pytest.fail("the server streamed from the future")
            results = shell.run(generators.simple_query(machine, sql))
            rows = [list(row) for row in results[-1].rows]
            got: dict[str, Any] = {"columns": list(results[-1].columns), "rows": rows}
        except ServerError as e:
            got = {"sqlstate": e.sqlstate, "message": e.message}
        assert got == want
    shell.sent += machine.terminate()
    assert bytes(shell.sent) == shell.expected_sent
