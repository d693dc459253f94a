"""The server side of a replication connection as a sans-IO state machine.

The mirror image of :mod:`walstream.protocol.client`: feed it the bytes a
client sent (:meth:`ServerConnection.receive_data`) and it returns the
frontend messages they complete; ask it for the bytes of what the server
wants to say and it checks that is allowed in the current state. It never
touches a socket, a clock or an event loop. TLS is the shell's business: when
:meth:`~ServerConnection.encryption_response` accepts, the shell performs the
handshake and feeds the decrypted bytes from then on.

Reading is eager (every complete message in the buffer is decoded per call)
while PostgreSQL reads lazily, one message whenever it is ready for one. The
two agree on everything a conforming client sends; where a client pipelines,
the state machine keeps PostgreSQL's observable behaviour:

* A Query that arrives while the previous one is still being answered (or
  before the startup's ReadyForQuery, or after the client's CopyDone while the
  server is still streaming) is reported at once and counted in
  :attr:`~ServerConnection.pending_queries`; :meth:`~ServerConnection.ready_for_query`
  then moves straight on to answering it instead of going idle.
* CopyData, CopyDone and CopyFail outside COPY are reported but change
  nothing, because PostgreSQL's main loop accepts and ignores them (a client
  may still be sending COPY traffic when a COPY ends on the server's side).
* Terminate closes from any state, and whatever follows it is discarded, as it
  is by a backend that has exited. The same goes for anything the client
  pipelined past a FATAL error.

A peer that breaks the protocol gets a :class:`ProtocolViolation` carrying the
SQLSTATE and message PostgreSQL would report; the machine is closed after it,
except that :meth:`~ServerConnection.error` may still frame the one FATAL
ErrorResponse that tells the client why (not after the violations PostgreSQL
only logs: a length word out of range, a standby message of an unknown kind).

Memory stays bounded by construction: a length word is checked as soon as its
four bytes are buffered, so the buffer never holds more than one message of at
most ``max_message_size`` bytes (``max_startup_size`` for the first packet)
plus the bytes of the current feed.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping
from typing import Final

from walstream.errors import LocalProtocolError, ProtocolViolation
from walstream.lsn import LSN
from walstream.protocol import messages as m
from walstream.protocol.client import DEFAULT_MAX_MESSAGE_SIZE, ConnectionClosed
from walstream.protocol.messages import describe_type, message_end
from walstream.protocol.replication import (
    XLOGDATA_HEADER,
    HotStandbyFeedback,
    PrimaryKeepalive,
    StandbyStatusUpdate,
    XLogData,
    decode_client_copy_data,
)

__all__ = [
    "MAX_AUTH_MESSAGE_SIZE",
    "MAX_STARTUP_PACKET_LENGTH",
    "ServerConnection",
    "ServerEvent",
    "ServerState",
]

# PostgreSQL's MAX_STARTUP_PACKET_LENGTH: the largest first packet (after its
# length word) a server reads from an unauthenticated client.
MAX_STARTUP_PACKET_LENGTH: Final = 10000

# PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH. Before authentication nobody is
# trusted, so a length word asking for megabytes is refused outright rather
# than buffered; every password and SASL message fits easily.
MAX_AUTH_MESSAGE_SIZE: Final = 65535

_LEN: Final = struct.Struct("!i")
# A whole XLogData frame header: 'd', length, 'w', dataStart, walEnd, sendTime.
_XLOG_FRAME: Final = struct.Struct("!ci" + "c" + XLOGDATA_HEADER.format.lstrip("!"))

_TERMINATE: Final = ord("X")
_PASSWORD: Final = ord("p")
_QUERY: Final = ord("Q")
_COPY_DATA: Final = ord("d")
_COPY_DONE: Final = ord("c")
_COPY_FAIL: Final = ord("f")
_FUNCTION_CALL: Final = ord("F")
_AFTER_AUTH_TYPES: Final = frozenset((_QUERY, _TERMINATE, _COPY_DATA, _COPY_DONE, _COPY_FAIL))


class ServerState(enum.Enum):
    AWAITING_STARTUP = "awaiting startup"  # first packet, or again after an encryption answer
    ENCRYPTION_REQUESTED = "encryption requested"  # SSLRequest/GSSENCRequest read, answer due
    AUTHENTICATING = "authenticating"  # StartupMessage read, until AuthenticationOk
    STARTUP = "startup"  # AuthenticationOk sent; ParameterStatus etc. until ReadyForQuery
    READY = "ready"  # idle: ReadyForQuery sent, no query under way
    QUERY = "query"  # answering a Query
    COPY_BOTH = "copy both"  # streaming (START_REPLICATION)
    CLOSED = "closed"


class _Awaiting(enum.Enum):
    """What a 'p' message from the client answers; the wire does not say."""

    PASSWORD = "password"  # cleartext or MD5
    SASL_INITIAL = "SASL initial response"
    SASL_RESPONSE = "SASL response"


ServerEvent = (
    m.StartupMessage
    | m.SSLRequest
    | m.GSSENCRequest
    | m.CancelRequest
    | m.PasswordMessage
    | m.SASLInitialResponse
    | m.SASLResponse
    | m.Query
    | m.CopyData
    | m.CopyDone
    | m.CopyFail
    | m.Terminate
    | StandbyStatusUpdate
    | HotStandbyFeedback
    | ConnectionClosed
)

_STARTUP_STATES: Final = (
    ServerState.AWAITING_STARTUP,
    ServerState.ENCRYPTION_REQUESTED,
    ServerState.AUTHENTICATING,
    ServerState.STARTUP,
)
_FRAMED_STATES: Final = frozenset(
    {
        ServerState.AUTHENTICATING,
        ServerState.STARTUP,
        ServerState.READY,
        ServerState.QUERY,
        ServerState.COPY_BOTH,
    }
)
_SESSION_STATES: Final = (
    ServerState.STARTUP,
    ServerState.READY,
    ServerState.QUERY,
    ServerState.COPY_BOTH,
)


class ServerConnection:
    """State of one server connection, from the first packet to its close."""

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_startup_size: int = MAX_STARTUP_PACKET_LENGTH,
    ) -> None:
        self.state = ServerState.AWAITING_STARTUP
        self.max_message_size = max_message_size
        self.max_startup_size = max_startup_size
        self.startup_message: m.StartupMessage | None = None
        self.encryption: str | None = None  # "ssl" or "gss" once accepted
        self._buf = bytearray()
        self._encryption_request: m.SSLRequest | m.GSSENCRequest | None = None
        # PostgreSQL allows one SSLRequest and one GSSENCRequest, and neither
        # after the other was accepted.
        self._ssl_done = False
        self._gss_done = False
        self._awaiting: _Awaiting | None = None
        self._sasl_mechanisms: tuple[str, ...] | None = None  # set once SASL started
        self._sasl_final = False
        self._pending_queries = 0
        self._client_copy_done = False
        self._server_copy_done = False
        self._may_report_violation = False
        # A violation PostgreSQL only logs (COMMERROR) before it hangs up,
        # telling the client nothing: a length word out of range (the stream
        # cannot be framed any more), and a standby message of an unknown kind.
        self._log_only = False

    # -- introspection ------------------------------------------------------

    @property
    def framed(self) -> bool:
        """Input is typed, framed messages now (not a startup packet): reads may be cut there."""
        return self.state in _FRAMED_STATES

    @property
    def closed(self) -> bool:
        return self.state is ServerState.CLOSED

    @property
    def in_copy(self) -> bool:
        return self.state is ServerState.COPY_BOTH

    @property
    def client_copy_done(self) -> bool:
        """The client sent CopyDone in the current COPY (it may still receive)."""
        return self._client_copy_done

    @property
    def server_copy_done(self) -> bool:
        """We sent CopyDone in the current COPY (the client may still send)."""
        return self._server_copy_done

    @property
    def pending_queries(self) -> int:
        """Queries received and reported but not yet being answered."""
        return self._pending_queries

    # -- receiving ----------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[ServerEvent]:
        """Consume bytes from the client; return the events they complete.

        Raises :class:`ProtocolViolation` for malformed or out-of-order input,
        after which the connection is closed: send the error (:meth:`error`
        with the exception's ``sqlstate`` and text, severity FATAL) and hang up.
        Once closed for any reason, further bytes are discarded.
        """
        if self.state is ServerState.CLOSED:
            return []
        buf = self._buf
        buf += data
        events: list[ServerEvent] = []
        try:
            pos = self._receive(events)
        except ProtocolViolation:
            self.state = ServerState.CLOSED
            self._may_report_violation = not self._log_only
            buf.clear()
            raise
        del buf[:pos]  # everything, once closed
        return events

    def receive_eof(self) -> list[ServerEvent]:
        """The client closed its side; a half-received message is a violation."""
        pending = len(self._buf)
        was = self.state
        self.state = ServerState.CLOSED
        self._buf.clear()
        if was is ServerState.CLOSED:
            return []
        if pending:
            # PostgreSQL's wording for the two cases, logged as COMMERROR.
            what = (
                "incomplete startup packet"
                if was is ServerState.AWAITING_STARTUP
                else "unexpected EOF within message from client"
            )
            raise ProtocolViolation(f"{what} ({pending} bytes pending)")
        return [ConnectionClosed()]

    def _receive(self, events: list[ServerEvent]) -> int:
        """Parse every complete message in the buffer; return the bytes consumed."""
        buf = self._buf
        size = len(buf)
        pos = 0
        while True:
            state = self.state
            if state is ServerState.CLOSED:
                return size  # discard what follows Terminate or CancelRequest
            if state is ServerState.ENCRYPTION_REQUESTED:
                if pos < size:
                    # CVE-2021-23222: bytes that arrive before the TLS (or GSS)
                    # handshake could have been injected by a man in the middle.
                    what = (
                        "SSL request"
                        if isinstance(self._encryption_request, m.SSLRequest)
                        else "GSSAPI encryption request"
                    )
                    raise ProtocolViolation(f"received unencrypted data after {what}")
                return pos
            if state is ServerState.AWAITING_STARTUP:
                if size - pos < 4:
                    return pos
                (length,) = _LEN.unpack_from(buf, pos)
                # As PostgreSQL: the body after the length word holds at least
                # the protocol code and at most MAX_STARTUP_PACKET_LENGTH bytes.
                if not 4 <= length - 4 <= self.max_startup_size:
                    self._log_only = True
                    raise ProtocolViolation("invalid length of startup packet")
                end = pos + length
                if end > size:
                    return pos
                msg = m.decode_untyped_frontend(bytes(buf[pos + 4 : end]))
                pos = end
                events.append(self._handle_untyped(msg))
                continue
            if size - pos < 1:
                return pos
            mtype = buf[pos]
            # Reject a bad type byte before buffering its body.
            self._check_type(mtype)
            limit = self.max_message_size
            if state is ServerState.AUTHENTICATING:
                limit = min(limit, MAX_AUTH_MESSAGE_SIZE)
            try:
                end = message_end(buf, pos, size, limit)
            except ProtocolViolation:
                self._log_only = True
                raise
            if end < 0:
                return pos
            event = self._handle_typed(mtype, bytes(buf[pos + 5 : end]))
            pos = end
            events.append(event)

    def _handle_untyped(
        self, msg: m.StartupMessage | m.SSLRequest | m.GSSENCRequest | m.CancelRequest
    ) -> ServerEvent:
        if isinstance(msg, m.SSLRequest | m.GSSENCRequest):
            ssl = isinstance(msg, m.SSLRequest)
            if self._ssl_done if ssl else self._gss_done:
                # PostgreSQL then reads the code as a protocol version.
                code = m.SSL_REQUEST_CODE if ssl else m.GSSENC_REQUEST_CODE
                raise ProtocolViolation(
                    f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
                    "server supports 3.0 to 3.2",
                    sqlstate="0A000",
                )
            self._encryption_request = msg
            self.state = ServerState.ENCRYPTION_REQUESTED
        elif isinstance(msg, m.CancelRequest):
            # A cancel connection carries nothing else; the server hangs up.
            self.state = ServerState.CLOSED
        else:
            self.startup_message = msg
            self.state = ServerState.AUTHENTICATING
        return msg

    def _check_type(self, mtype: int) -> None:
        """Refuse a message type the client may not send in the current state."""
        state = self.state
        if mtype == _TERMINATE:
            return
        if state is ServerState.AUTHENTICATING:
            if mtype == _PASSWORD and self._awaiting is not None:
                return
            if self._awaiting is None:
                raise ProtocolViolation(
                    f"unexpected message type '{describe_type(mtype)}' during authentication"
                )
            kind = "password" if self._awaiting is _Awaiting.PASSWORD else "SASL"
            raise ProtocolViolation(f"expected {kind} response, got message type {mtype}")
        if state is ServerState.COPY_BOTH and not self._client_copy_done:
            if mtype in (_COPY_DATA, _COPY_DONE):
                return
            # PostgreSQL's walsender exits on anything else while streaming.
            raise ProtocolViolation(f'invalid standby message type "{describe_type(mtype)}"')
        # After authentication, and after the client's CopyDone (whatever it
        # sends then is read by the main loop as the next command).
        if mtype in _AFTER_AUTH_TYPES:
            return
        if mtype == _FUNCTION_CALL:
            raise ProtocolViolation(
                "fastpath function calls not supported in a replication connection"
            )
        if mtype in m.EXTENDED_QUERY_TYPES:
            raise ProtocolViolation(
                "extended query protocol not supported in a replication connection"
            )
        raise ProtocolViolation(f"invalid frontend message type {mtype}")

    def _handle_typed(self, mtype: int, body: bytes) -> ServerEvent:
        state = self.state
        if mtype == _TERMINATE:
            msg = m.decode_frontend(mtype, body)
            self.state = ServerState.CLOSED
            return msg
        if state is ServerState.AUTHENTICATING:
            return self._handle_auth(body)
        if state is ServerState.COPY_BOTH and not self._client_copy_done:
            if mtype == _COPY_DATA:
                if body[:1] not in (b"", b"r", b"h"):
                    # ProcessStandbyMessage: COMMERROR "unexpected message type".
                    self._log_only = True
                return decode_client_copy_data(body)
            done = m.decode_frontend(mtype, body)
            self._client_copy_done = True
            self._maybe_leave_copy()
            return done
        msg = m.decode_frontend(mtype, body)
        if isinstance(msg, m.Query):
            if state is ServerState.READY:
                self.state = ServerState.QUERY
            else:
                self._pending_queries += 1
        return msg

    def _handle_auth(self, body: bytes) -> ServerEvent:
        awaiting = self._awaiting
        self._awaiting = None
        if awaiting is _Awaiting.SASL_INITIAL:
            initial = m.decode_sasl_initial(body)
            if initial.mechanism not in (self._sasl_mechanisms or ()):
                raise ProtocolViolation("client selected an invalid SASL authentication mechanism")
            return initial
        if awaiting is _Awaiting.SASL_RESPONSE:
            return m.SASLResponse(body)
        return m.decode_frontend(_PASSWORD, body)

    # -- sending ------------------------------------------------------------

    def _require(self, *states: ServerState) -> None:
        if self.state not in states:
            allowed = ", ".join(s.value for s in states)
            raise LocalProtocolError(
                f"cannot do that in state {self.state.value!r} (needs {allowed})"
            )

    def encryption_response(self, accept: bool) -> bytes:
        """Answer SSLRequest ('S'/'N') or GSSENCRequest ('G'/'N').

        On acceptance the shell runs the handshake before feeding more bytes;
        either way the next thing read is an untyped packet again.
        """
        self._require(ServerState.ENCRYPTION_REQUESTED)
        ssl = isinstance(self._encryption_request, m.SSLRequest)
        # As PostgreSQL: once SSL is up GSS may not be requested and vice
        # versa, but a refused request leaves the other one open.
        if ssl:
            self._ssl_done = True
            self._gss_done = self._gss_done or accept
        else:
            self._gss_done = True
            self._ssl_done = self._ssl_done or accept
        if accept:
            self.encryption = "ssl" if ssl else "gss"
        self._encryption_request = None
        self.state = ServerState.AWAITING_STARTUP
        if not accept:
            return b"N"
        return b"S" if ssl else b"G"

    def negotiate_protocol_version(
        self, newest_minor: int, unrecognized: Iterable[str] = ()
    ) -> bytes:
        """Tell the client which 3.x minor version and ``_pq_`` options we support."""
        self._require(ServerState.AUTHENTICATING)
        return m.NegotiateProtocolVersion(newest_minor, tuple(unrecognized)).encode()

    def authentication_request(
        self,
        msg: m.AuthenticationOk
        | m.AuthenticationCleartextPassword
        | m.AuthenticationMD5Password
        | m.AuthenticationSASL
        | m.AuthenticationSASLContinue
        | m.AuthenticationSASLFinal,
    ) -> bytes:
        """Send an authentication request; the client's 'p' is decoded to match it."""
        self._require(ServerState.AUTHENTICATING)
        if isinstance(msg, m.AuthenticationOk):
            return self.authentication_ok()
        if self._awaiting is not None:
            raise LocalProtocolError(
                f"the client has not answered the previous request ({self._awaiting.value})"
            )
        sasl = self._sasl_mechanisms is not None
        if isinstance(msg, m.AuthenticationCleartextPassword | m.AuthenticationMD5Password):
            if sasl:
                raise LocalProtocolError("cannot ask for a password during a SASL exchange")
            self._awaiting = _Awaiting.PASSWORD
        elif isinstance(msg, m.AuthenticationSASL):
            if sasl:
                raise LocalProtocolError("a SASL exchange has already started")
            self._sasl_mechanisms = msg.mechanisms
            self._awaiting = _Awaiting.SASL_INITIAL
        elif isinstance(msg, m.AuthenticationSASLContinue | m.AuthenticationSASLFinal):
            if not sasl or self._sasl_final:
                raise LocalProtocolError(f"{type(msg).__name__} outside a SASL exchange")
            if isinstance(msg, m.AuthenticationSASLFinal):
                self._sasl_final = True
            else:
                self._awaiting = _Awaiting.SASL_RESPONSE
        else:
            raise LocalProtocolError(f"unsupported authentication request {msg!r}")
        return msg.encode()

    def authentication_ok(self) -> bytes:
        """The client is in; ParameterStatus, BackendKeyData and ReadyForQuery follow."""
        self._require(ServerState.AUTHENTICATING)
        if self._awaiting is not None:
            raise LocalProtocolError(
                f"the client has not answered the authentication request ({self._awaiting.value})"
            )
        if self._sasl_mechanisms is not None and not self._sasl_final:
            # A client must refuse AuthenticationOk until the server proved
            # it knows the password, so this would be our bug.
            raise LocalProtocolError("AuthenticationOk before AuthenticationSASLFinal")
        self.state = ServerState.STARTUP
        return m.AuthenticationOk().encode()

    def parameter_status(self, name: str, value: str) -> bytes:
        self._require(*_SESSION_STATES)
        return m.ParameterStatus(name, value).encode()

    def backend_key_data(self, pid: int, key: bytes) -> bytes:
        """The cancel key: 4 bytes in protocol 3.0, up to 256 from 3.2."""
        self._require(ServerState.STARTUP)
        if not 4 <= len(key) <= 256:
            raise ValueError(f"cancel key of {len(key)} bytes (needs 4 to 256)")
        return m.BackendKeyData(pid, key).encode()

    def ready_for_query(self, status: str = "I") -> bytes:
        """End the startup or a query; go idle, or on to the next pipelined query."""
        self._require(ServerState.STARTUP, ServerState.QUERY)
        if status not in ("I", "T", "E"):
            raise ValueError(f"invalid transaction status {status!r}")
        if self._pending_queries:
            self._pending_queries -= 1
            self.state = ServerState.QUERY
        else:
            self.state = ServerState.READY
        return m.ReadyForQuery(status).encode()

    def row_description(self, fields: Iterable[m.FieldDescription | str]) -> bytes:
        """Describe the result columns; a plain name stands for a text column."""
        self._require(ServerState.QUERY)
        described = tuple(
            f if isinstance(f, m.FieldDescription) else m.FieldDescription(f) for f in fields
        )
        return m.RowDescription(described).encode()

    def data_row(self, values: Iterable[bytes | str | None]) -> bytes:
        """One result row; text values are sent UTF-8, None is SQL NULL."""
        self._require(ServerState.QUERY)
        row = tuple(v.encode() if isinstance(v, str) else v for v in values)
        return m.DataRow(row).encode()

    def empty_query_response(self) -> bytes:
        self._require(ServerState.QUERY)
        return m.EmptyQueryResponse().encode()

    def command_complete(self, tag: str) -> bytes:
        """End one command's result.

        Also allowed while streaming, where it ends COPY without CopyDone: a
        walsender shutting down sends the remaining WAL, then CommandComplete
        ``COPY 0``, and closes.
        """
        self._require(ServerState.QUERY, ServerState.COPY_BOTH)
        if self.state is ServerState.COPY_BOTH:
            self._end_copy()
        return m.CommandComplete(tag).encode()

    def error(self, fields: Mapping[str, str]) -> bytes:
        """Send an ErrorResponse (build ``fields`` with :func:`messages.error_fields`).

        FATAL and PANIC close the connection, as does any error before the
        first ReadyForQuery, since clients treat those as fatal. An ERROR
        aborts a COPY (ReadyForQuery follows) and is otherwise only allowed
        while answering a query. After a :class:`ProtocolViolation` one error
        may still be framed, to tell the client why it is being dropped,
        unless the violation is one PostgreSQL only logs (a length word out of
        range, a standby message of an unknown kind): then this raises as for
        any closed connection.
        """
        if self.state is ServerState.CLOSED:
            if not self._may_report_violation:
                raise LocalProtocolError("cannot send an error on a closed connection")
            self._may_report_violation = False
            return m.ErrorResponse(fields).encode()
        severity = fields.get("V") or fields.get("S") or ""
        if severity in ("FATAL", "PANIC") or self.state in _STARTUP_STATES:
            self.close()
        elif self.state is ServerState.READY:
            raise LocalProtocolError("only a FATAL error can be sent while idle")
        elif self.state is ServerState.COPY_BOTH:
            self._end_copy()
        return m.ErrorResponse(fields).encode()

    def notice(self, fields: Mapping[str, str]) -> bytes:
        self._require(ServerState.AUTHENTICATING, *_SESSION_STATES)
        return m.NoticeResponse(fields).encode()

    def copy_both_response(self) -> bytes:
        """Start streaming: from now on the client's CopyData are status messages."""
        self._require(ServerState.QUERY)
        self.state = ServerState.COPY_BOTH
        self._client_copy_done = self._server_copy_done = False
        return m.CopyBothResponse().encode()

    def _require_sending_copy(self, what: str) -> None:
        if self.state is not ServerState.COPY_BOTH or self._server_copy_done:
            raise LocalProtocolError(f"cannot send {what} in state {self.state.value!r}")

    def copy_data(self, payload: bytes) -> bytes:
        """Frame a raw CopyData payload; allowed until our CopyDone."""
        self._require_sending_copy("CopyData")
        return m.CopyData(payload).encode()

    def xlog_data(self, msg: XLogData) -> bytes:
        """Frame XLogData, copying the WAL bytes only once."""
        header = self.xlog_data_header(msg.data_start, msg.wal_end, msg.send_time, len(msg.data))
        return header + msg.data

    def xlog_data_header(self, data_start: int, wal_end: int, send_time: int, size: int) -> bytes:
        """The first 30 bytes of an XLogData message whose ``size`` WAL bytes follow it.

        A sender writes this and then the WAL itself, which is never copied to
        be framed (or is sent by the kernel straight from the segment file).
        """
        self._require_sending_copy("XLogData")
        return _XLOG_FRAME.pack(
            b"d", 4 + 1 + XLOGDATA_HEADER.size + size, b"w", data_start, wal_end, send_time
        )

    def keepalive(self, wal_end: int, send_time: int, reply_requested: bool = False) -> bytes:
        """A primary keepalive; ``send_time`` is microseconds since 2000-01-01 UTC."""
        self._require_sending_copy("a keepalive")
        payload = PrimaryKeepalive(LSN(wal_end), send_time, reply_requested).encode()
        return m.CopyData(payload).encode()

    def copy_done(self) -> bytes:
        """End our side of the stream (end of timeline, or answering the client's CopyDone)."""
        self._require_sending_copy("CopyDone")
        self._server_copy_done = True
        self._maybe_leave_copy()
        return m.CopyDone().encode()

    def close(self) -> None:
        """We hang up (timeout, shutdown, or after a FATAL error)."""
        self.state = ServerState.CLOSED
        self._may_report_violation = False
        self._buf.clear()

    def _end_copy(self) -> None:
        self.state = ServerState.QUERY
        self._client_copy_done = self._server_copy_done = False

    def _maybe_leave_copy(self) -> None:
        if self._client_copy_done and self._server_copy_done:
            self._end_copy()
