"""The client's protocol conversations, written once, driven by any shell.

As psycopg 3's ``generators.py``: each conversation is a generator over a
:class:`~walstream.protocol.client.ClientConnection` that yields what it
needs from the shell and is sent the answer, until it returns its result:

* ``bytes``: send these to the server; resumed with ``None``;
* :data:`RECEIVE`: resumed with the machine's next event;
* :data:`START_TLS`: run the TLS handshake the server just agreed to;
  resumed with the server's certificate (DER bytes).

No sockets, clocks or event loops here, so every conversation is tested
with byte fixtures captured from real servers; the asyncio shell
(:mod:`walstream.client`) is a ten-line loop around them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

from walstream.errors import (
    AuthenticationError,
    ConnectError,
    LocalProtocolError,
)
from walstream.protocol import messages as m
from walstream.protocol.auth import Authenticator
from walstream.protocol.client import (
    ClientConnection,
    ClientEvent,
    ConnectionClosed,
    EncryptionResponse,
)
from walstream.protocol.commands import QueryResult
from walstream.protocol.replication import PrimaryKeepalive, XLogData

__all__ = [
    "RECEIVE",
    "START_TLS",
    "Conversation",
    "Need",
    "StartupResult",
    "query_results",
    "simple_query",
    "start_replication",
    "startup",
]

T = TypeVar("T")


class Need(enum.Enum):
    """What a conversation asks of its shell, besides sending bytes."""

    RECEIVE = "receive"  # the next event
    START_TLS = "start TLS"  # the handshake; answered with the server's DER certificate


RECEIVE: Final = Need.RECEIVE
START_TLS: Final = Need.START_TLS

Conversation = Generator[bytes | Need, ClientEvent | bytes | None, T]
NoticeHandler = Callable[[m.NoticeResponse], None]

_AUTH_REQUESTS: Final = (
    m.AuthenticationCleartextPassword,
    m.AuthenticationMD5Password,
    m.AuthenticationSASL,
    m.AuthenticationSASLContinue,
    m.AuthenticationSASLFinal,
    m.AuthenticationUnsupported,
)


def _ignore(notice: m.NoticeResponse) -> None:
    pass


def _receive() -> Generator[Need, ClientEvent | bytes | None, ClientEvent]:
    event = yield RECEIVE
    if event is None or isinstance(event, bytes):
        raise LocalProtocolError("the shell answered RECEIVE without an event")
    return event


@dataclass(frozen=True, slots=True)
class StartupResult:
    tls: bool
    auth_method: str | None  # None when the server trusted us without asking


def startup(
    machine: ClientConnection,
    parameters: Mapping[str, str],
    authenticator: Callable[[bytes | None], Authenticator],
    *,
    use_tls: bool,
    tls_required: bool,
    where: str,
    on_notice: NoticeHandler = _ignore,
) -> Conversation[StartupResult]:
    """Encryption, the startup packet and authentication, up to ReadyForQuery.

    ``authenticator`` is called with the server's certificate (None without
    TLS) once TLS is settled; ``where`` ("connection to server at ...
    failed", libpq's words) prefixes the errors, as libpq names the server.
    """
    certificate: bytes | None = None
    if use_tls:
        yield machine.ssl_request()
        answer = yield from _receive()
        if isinstance(answer, m.ErrorResponse):
            raise answer.to_exception(where)
        assert isinstance(answer, EncryptionResponse)
        if answer.accepted:
            got = yield START_TLS
            if not isinstance(got, bytes):
                raise LocalProtocolError("the shell answered START_TLS without a certificate")
            certificate = got
        elif tls_required:
            raise ConnectError("server does not support SSL, but SSL was required")
    yield machine.startup(parameters)
    auth = authenticator(certificate)
    while True:
        ev = yield from _receive()
        if isinstance(ev, m.AuthenticationOk):
            auth.authentication_ok()
        elif isinstance(ev, _AUTH_REQUESTS):
            try:
                reply = auth.respond(ev)
            except AuthenticationError as e:
                # libpq names the server in front of its own errors too.
                raise AuthenticationError(f"{where}: {e}") from None
            if reply is not None:
                yield machine.authentication_response(reply)
        elif isinstance(ev, m.ErrorResponse):
            raise ev.to_exception(where)
        elif isinstance(ev, m.NoticeResponse):
            on_notice(ev)
        elif isinstance(ev, m.ReadyForQuery):
            break
        elif isinstance(ev, ConnectionClosed):
            raise ConnectError("server closed the connection unexpectedly")
        # NegotiateProtocolVersion, ParameterStatus, BackendKeyData: the machine keeps them.
    if auth.channel_binding == "require" and auth.method is None:
        # trust: the server never asked; libpq refuses this under require.
        raise AuthenticationError(
            "channel binding required, but server authenticated client without channel binding"
        )
    return StartupResult(certificate is not None, auth.method)


def simple_query(
    machine: ClientConnection, sql: str, on_notice: NoticeHandler = _ignore
) -> Conversation[list[QueryResult]]:
    """One Query, every result set up to ReadyForQuery; the server's error raised."""
    yield machine.query(sql)
    return (yield from query_results(machine, sql, None, on_notice))


def query_results(
    machine: ClientConnection,
    sql: str,
    first: ClientEvent | None = None,
    on_notice: NoticeHandler = _ignore,
) -> Conversation[list[QueryResult]]:
    """Read result sets up to ReadyForQuery (starting with ``first`` if given)."""
    results: list[QueryResult] = []
    columns: tuple[str, ...] = ()
    rows: list[tuple[bytes | None, ...]] = []
    error: m.ErrorResponse | None = None
    ev = first
    while True:
        if ev is None:
            ev = yield from _receive()
        if isinstance(ev, m.RowDescription):
            columns, rows = ev.names, []
        elif isinstance(ev, m.DataRow):
            rows.append(ev.values)
        elif isinstance(ev, m.CommandComplete):
            results.append(QueryResult(columns, tuple(rows), ev.tag))
            columns, rows = (), []
        elif isinstance(ev, m.EmptyQueryResponse):
            results.append(QueryResult((), (), ""))
        elif isinstance(ev, m.ErrorResponse):
            error = ev
            if machine.closed:
                break
        elif isinstance(ev, m.ReadyForQuery):
            break
        elif isinstance(ev, m.NoticeResponse):
            on_notice(ev)
        elif isinstance(ev, m.CopyBothResponse | m.CopyOutResponse):
            raise LocalProtocolError(f"{sql!r} started a COPY; use start_replication()")
        elif isinstance(ev, XLogData | PrimaryKeepalive | m.CopyData | m.CopyDone):
            pass  # WAL still in flight when a stream ended: discarded
        elif isinstance(ev, ConnectionClosed):
            raise ConnectError("server closed the connection unexpectedly")
        ev = None
    if error is not None:
        raise error.to_exception()
    return results


def start_replication(
    machine: ClientConnection, sql: str, on_notice: NoticeHandler = _ignore
) -> Conversation[list[QueryResult] | None]:
    """START_REPLICATION's answer: None once COPY began, else the results it sent instead.

    A server asked to start exactly at the end of a timeline answers with
    the next timeline's row and no COPY at all.
    """
    yield machine.query(sql)
    while True:
        ev = yield from _receive()
        if not isinstance(ev, m.NoticeResponse):
            break
        on_notice(ev)
    if isinstance(ev, m.CopyBothResponse):
        return None
    return (yield from query_results(machine, sql, ev, on_notice))
