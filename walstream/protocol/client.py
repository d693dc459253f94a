"""The client side of a replication connection as a sans-IO state machine.

Feed it the bytes the server sent (:meth:`ClientConnection.receive_data`) and
it returns the events they complete; ask it for the bytes of the messages you
want to send and it checks they are allowed in the current state. It never
touches a socket, a clock or an event loop, so every path through it can be
driven from byte fixtures and fuzzed.

The framing loop parses every complete message in the buffer per call, and
decodes the CopyData payloads of physical streaming (XLogData, keepalives)
inline, because that is where the receiver spends its time.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from walstream.errors import LocalProtocolError, ProtocolViolation
from walstream.lsn import LSN
from walstream.protocol import messages as m
from walstream.protocol.messages import message_end
from walstream.protocol.replication import (
    MAX_LSN,
    XLOGDATA_HEADER,
    PrimaryKeepalive,
    XLogData,
    check_xlog_range,
    decode_server_copy_data,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "ClientConnection",
    "ClientEvent",
    "ClientState",
    "ConnectionClosed",
    "EncryptionResponse",
]

# Large enough for any legitimate message on a replication connection
# (XLogData is at most 128 KiB; history files are small), small enough that a
# hostile length word cannot make us buffer gigabytes.
DEFAULT_MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024

_LEN: Final = struct.Struct("!i")
_COPY_DATA: Final = ord("d")
_COPY_DATA_HEADER: Final = struct.Struct("!ci")  # CopyData framing, built per status update
_XLOG_PREFIX: Final = 1 + XLOGDATA_HEADER.size  # 'w' + dataStart + walEnd + sendTime


class ClientState(enum.Enum):
    INITIAL = "initial"  # nothing sent, or an encryption request was answered
    ENCRYPTION_REQUESTED = "encryption requested"  # SSLRequest/GSSENCRequest sent
    AUTHENTICATING = "authenticating"  # StartupMessage sent
    STARTUP = "startup"  # AuthenticationOk received, waiting for ReadyForQuery
    IDLE = "idle"
    QUERY = "query"  # simple query sent, waiting for ReadyForQuery
    COPY_BOTH = "copy both"  # streaming (START_REPLICATION)
    COPY_OUT = "copy out"  # e.g. BASE_BACKUP
    CLOSED = "closed"


# States whose input is not (only) framed messages: checked byte by byte.
_RAW_STATES: Final = frozenset({ClientState.INITIAL, ClientState.ENCRYPTION_REQUESTED})
_FRAMED_STATES: Final = frozenset(ClientState) - _RAW_STATES - {ClientState.CLOSED}


@dataclass(frozen=True, slots=True)
class EncryptionResponse:
    """The server's one-byte answer to SSLRequest or GSSENCRequest."""

    accepted: bool


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The server closed the connection (end of stream)."""


ClientEvent = m.BackendMessage | XLogData | PrimaryKeepalive | EncryptionResponse | ConnectionClosed

_ASYNC: Final = (m.NoticeResponse, m.ParameterStatus, m.NotificationResponse)
_QUERY_RESULTS: Final = (
    m.RowDescription,
    m.DataRow,
    m.CommandComplete,
    m.EmptyQueryResponse,
)


class ClientConnection:
    """State of one client connection, from the first byte to Terminate."""

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.state = ClientState.INITIAL
        self.max_message_size = max_message_size
        self.parameters: dict[str, str] = {}
        self.backend_pid: int | None = None
        self.secret_key: bytes | None = None
        self.transaction_status: str | None = None
        self._buf = bytearray()
        self._sasl = False  # a SASL exchange is under way
        self._client_copy_done = False
        self._server_copy_done = False
        # The byte that accepts our encryption request: 'S' for SSL, 'G' for GSS.
        self._encryption_accept = b"S"

    @property
    def framed(self) -> bool:
        """Input is framed messages now (not an encryption answer): reads may be cut there."""
        return self.state in _FRAMED_STATES

    @property
    def closed(self) -> bool:
        return self.state is ClientState.CLOSED

    # -- sending ------------------------------------------------------------

    def _require(self, *states: ClientState) -> None:
        if self.state not in states:
            allowed = ", ".join(s.value for s in states)
            raise LocalProtocolError(
                f"cannot do that in state {self.state.value!r} (needs {allowed})"
            )

    def ssl_request(self) -> bytes:
        self._require(ClientState.INITIAL)
        self.state = ClientState.ENCRYPTION_REQUESTED
        self._encryption_accept = b"S"
        return m.SSLRequest().encode()

    def gssenc_request(self) -> bytes:
        self._require(ClientState.INITIAL)
        self.state = ClientState.ENCRYPTION_REQUESTED
        self._encryption_accept = b"G"
        return m.GSSENCRequest().encode()

    def startup(self, parameters: Mapping[str, str]) -> bytes:
        self._require(ClientState.INITIAL)
        self.state = ClientState.AUTHENTICATING
        return m.StartupMessage(dict(parameters)).encode()

    def authentication_response(
        self, msg: m.PasswordMessage | m.SASLInitialResponse | m.SASLResponse
    ) -> bytes:
        self._require(ClientState.AUTHENTICATING)
        return msg.encode()

    def query(self, sql: str) -> bytes:
        self._require(ClientState.IDLE)
        self.state = ClientState.QUERY
        return m.Query(sql).encode()

    def copy_data(self, payload: bytes) -> bytes:
        """Frame a CopyData message; allowed until the client's CopyDone."""
        if self.state is not ClientState.COPY_BOTH or self._client_copy_done:
            raise LocalProtocolError(f"cannot send CopyData in state {self.state.value!r}")
        return _COPY_DATA_HEADER.pack(b"d", len(payload) + 4) + payload

    def copy_done(self) -> bytes:
        if self.state is not ClientState.COPY_BOTH or self._client_copy_done:
            raise LocalProtocolError(f"cannot send CopyDone in state {self.state.value!r}")
        self._client_copy_done = True
        self._maybe_leave_copy()
        return m.CopyDone().encode()

    def terminate(self) -> bytes:
        """Terminate is legal in any state; after it the connection is closed."""
        self.state = ClientState.CLOSED
        return m.Terminate().encode()

    @property
    def in_copy(self) -> bool:
        return self.state is ClientState.COPY_BOTH

    @property
    def client_copy_done(self) -> bool:
        return self._client_copy_done

    @property
    def server_copy_done(self) -> bool:
        return self._server_copy_done

    # -- receiving ----------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[ClientEvent]:
        """Consume bytes from the server; return the events they complete.

        Raises :class:`ProtocolViolation` for malformed or out-of-order input,
        after which the connection is closed and must be abandoned.
        """
        if self.state is ClientState.CLOSED:
            if data:
                raise ProtocolViolation("data received after the connection was closed")
            return []
        buf = self._buf
        events: list[ClientEvent] = []
        if not buf and self.state not in _RAW_STATES:
            # Nothing buffered: parse straight from the caller's bytes and keep
            # only an unfinished message. A shell that hands over whole
            # messages (as the asyncio one does) then never copies here.
            try:
                used = self._receive_messages(events, data)
            except ProtocolViolation:
                self.state = ClientState.CLOSED
                raise
            if used < len(data):
                buf += memoryview(data)[used:]
            return events
        buf += data
        try:
            if self.state is ClientState.ENCRYPTION_REQUESTED:
                self._receive_encryption_response(events)
            elif self.state is ClientState.INITIAL and buf:
                # The server speaks only after our startup packet. Checking
                # here rather than when a whole message has arrived matters
                # after an encryption answer: a stray byte buffered now would
                # otherwise be prepended to what arrives over TLS, whichever
                # way the shell happened to split its reads (CVE-2021-23222).
                raise ProtocolViolation("server sent data before the startup packet")
            del buf[: self._receive_messages(events, buf)]
        except ProtocolViolation:
            self.state = ClientState.CLOSED
            buf.clear()
            raise
        return events

    def receive_eof(self) -> list[ClientEvent]:
        """The server closed its side; anything half-received is a violation."""
        pending = len(self._buf)
        was = self.state
        self.state = ClientState.CLOSED
        self._buf.clear()
        if pending:
            raise ProtocolViolation(
                f"server closed the connection in the middle of a message ({pending} bytes pending)"
            )
        if was is ClientState.CLOSED:
            return []
        return [ConnectionClosed()]

    def _receive_encryption_response(self, events: list[ClientEvent]) -> None:
        buf = self._buf
        if not buf:
            return
        answer = buf[0]
        if answer == ord("E"):
            # A server that fails before negotiating sends a framed ErrorResponse.
            self.state = ClientState.AUTHENTICATING
            return
        # SSL is accepted with 'S', GSS encryption with 'G'; the other
        # request's letter is as invalid as any other byte.
        if answer not in (self._encryption_accept[0], ord("N")):
            raise ProtocolViolation(
                f"received invalid response to encryption negotiation: {chr(answer)!r}"
            )
        del buf[0]
        if buf:
            # CVE-2021-23222: bytes sent before the TLS handshake could be
            # injected by a man in the middle; libpq refuses them too.
            raise ProtocolViolation("received unencrypted data after SSL response")
        self.state = ClientState.INITIAL
        events.append(EncryptionResponse(answer != ord("N")))

    def _receive_messages(
        self, events: list[ClientEvent], buf: bytes | bytearray | memoryview
    ) -> int:
        """Parse every complete message of ``buf``; return how many bytes they took."""
        size = len(buf)
        pos = 0
        limit = self.max_message_size
        mv = memoryview(buf)
        try:
            while True:
                end = message_end(buf, pos, size, limit)
                if end < 0:
                    break
                mtype = buf[pos]
                if (
                    mtype == _COPY_DATA
                    and self.state is ClientState.COPY_BOTH
                    and end - pos >= 5 + _XLOG_PREFIX
                    and buf[pos + 5] == 0x77  # 'w'
                    and not self._server_copy_done
                ):
                    # The hot path: one copy of the WAL bytes, no intermediate objects.
                    start, wal_end, send_time = XLOGDATA_HEADER.unpack_from(buf, pos + 6)
                    data = pos + 5 + _XLOG_PREFIX
                    if start + end - data > MAX_LSN:
                        check_xlog_range(start, end - data)  # raises
                    events.append(
                        XLogData(LSN(start), LSN(wal_end), send_time, mv[data:end].tobytes())
                    )
                else:
                    msg = m.decode_backend(mtype, mv[pos + 5 : end].tobytes())
                    events.append(self._handle(msg))
                pos = end
                if self.state is ClientState.CLOSED:
                    if pos != size:
                        raise ProtocolViolation("server sent data after a fatal error")
                    break
        finally:
            mv.release()
        return pos

    def _handle(self, msg: m.BackendMessage) -> ClientEvent:
        state = self.state
        if isinstance(msg, m.ErrorResponse):
            if state in (ClientState.AUTHENTICATING, ClientState.STARTUP):
                self.state = ClientState.CLOSED  # startup errors are always FATAL
            elif msg.severity in ("FATAL", "PANIC"):
                self.state = ClientState.CLOSED
            elif state in (ClientState.COPY_BOTH, ClientState.COPY_OUT):
                self._end_copy()
            elif state is not ClientState.QUERY:
                raise self._unexpected(msg)
            return msg
        if state is ClientState.AUTHENTICATING:
            return self._handle_auth(msg)
        if isinstance(msg, _ASYNC):
            if isinstance(msg, m.ParameterStatus):
                self.parameters[msg.name] = msg.value
            return msg
        if state is ClientState.STARTUP:
            if isinstance(msg, m.BackendKeyData):
                self.backend_pid, self.secret_key = msg.pid, msg.secret_key
                return msg
            if isinstance(msg, m.ReadyForQuery):
                self.state = ClientState.IDLE
                self.transaction_status = msg.status
                return msg
            raise self._unexpected(msg)
        if state is ClientState.QUERY:
            if isinstance(msg, _QUERY_RESULTS):
                return msg
            if isinstance(msg, m.ReadyForQuery):
                self.state = ClientState.IDLE
                self.transaction_status = msg.status
                return msg
            if isinstance(msg, m.CopyBothResponse):
                self.state = ClientState.COPY_BOTH
                self._client_copy_done = self._server_copy_done = False
                return msg
            if isinstance(msg, m.CopyOutResponse):
                self.state = ClientState.COPY_OUT
                self._client_copy_done, self._server_copy_done = True, False
                return msg
            raise self._unexpected(msg)
        if state in (ClientState.COPY_BOTH, ClientState.COPY_OUT):
            if isinstance(msg, m.CopyData) and not self._server_copy_done:
                if state is ClientState.COPY_BOTH:
                    return decode_server_copy_data(msg.data)
                return msg
            if isinstance(msg, m.CopyDone) and not self._server_copy_done:
                self._server_copy_done = True
                self._maybe_leave_copy()
                return msg
            if isinstance(msg, m.CommandComplete):
                # A walsender shutting down ends COPY with CommandComplete and
                # no CopyDone; the query's remaining messages follow as usual.
                self._end_copy()
                return msg
            raise self._unexpected(msg)
        raise self._unexpected(msg)

    def _handle_auth(self, msg: m.BackendMessage) -> ClientEvent:
        if isinstance(msg, m.AuthenticationOk):
            self.state = ClientState.STARTUP
            self._sasl = False
            return msg
        if isinstance(msg, m.AuthenticationSASL):
            if self._sasl:
                raise ProtocolViolation("server restarted a SASL exchange")
            self._sasl = True
            return msg
        if isinstance(msg, m.AuthenticationSASLContinue | m.AuthenticationSASLFinal):
            if not self._sasl:
                raise ProtocolViolation("SASL message from server without a SASL exchange")
            return msg
        if isinstance(
            msg,
            m.AuthenticationCleartextPassword
            | m.AuthenticationMD5Password
            | m.AuthenticationUnsupported
            | m.NegotiateProtocolVersion
            | m.NoticeResponse,
        ):
            return msg
        raise self._unexpected(msg)

    def _end_copy(self) -> None:
        self.state = ClientState.QUERY
        self._client_copy_done = self._server_copy_done = False

    def _maybe_leave_copy(self) -> None:
        if self._client_copy_done and self._server_copy_done:
            self._end_copy()

    def _unexpected(self, msg: object) -> ProtocolViolation:
        return ProtocolViolation(
            f"unexpected {type(msg).__name__} from server in state {self.state.value!r}"
        )
