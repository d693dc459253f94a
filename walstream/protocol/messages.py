"""Encode and decode PostgreSQL protocol 3.0 messages, in both directions.

One codec serves the client (which encodes frontend messages and decodes
backend ones) and the server (the reverse), so every message type has a
single definition: a frozen dataclass with ``encode()``, and a decoder
registered by its type byte. Decoders receive the body of one framed message
(without the type byte and length word) and raise :class:`ProtocolViolation`
for anything malformed; they never raise ``struct.error``, ``IndexError`` or
``UnicodeDecodeError``, so a broken peer cannot surface as a crash.

Strings are UTF-8. Text fields that only serve humans (error messages) are
decoded with replacement characters rather than rejected, because a server in
a non-UTF-8 locale may send them before ``client_encoding`` applies.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Final

from walstream.errors import ProtocolViolation, ServerError

__all__ = [
    "CANCEL_REQUEST_CODE",
    "GSSENC_REQUEST_CODE",
    "PROTOCOL_3_0",
    "SSL_REQUEST_CODE",
    "AuthenticationCleartextPassword",
    "AuthenticationMD5Password",
    "AuthenticationOk",
    "AuthenticationSASL",
    "AuthenticationSASLContinue",
    "AuthenticationSASLFinal",
    "AuthenticationUnsupported",
    "BackendKeyData",
    "BackendMessage",
    "CancelRequest",
    "CommandComplete",
    "CopyBothResponse",
    "CopyData",
    "CopyDone",
    "CopyFail",
    "CopyInResponse",
    "CopyOutResponse",
    "DataRow",
    "EmptyQueryResponse",
    "ErrorResponse",
    "FieldDescription",
    "FrontendMessage",
    "GSSENCRequest",
    "NegotiateProtocolVersion",
    "NoticeResponse",
    "NotificationResponse",
    "ParameterStatus",
    "PasswordMessage",
    "Query",
    "ReadyForQuery",
    "RowDescription",
    "SASLInitialResponse",
    "SASLResponse",
    "SSLRequest",
    "StartupMessage",
    "Terminate",
    "decode_backend",
    "decode_frontend",
    "decode_untyped_frontend",
    "describe_type",
    "message_end",
]

PROTOCOL_3_0: Final = 196608  # (3 << 16) | 0
SSL_REQUEST_CODE: Final = 80877103  # (1234 << 16) | 5679
GSSENC_REQUEST_CODE: Final = 80877104  # (1234 << 16) | 5680
CANCEL_REQUEST_CODE: Final = 80877102  # (1234 << 16) | 5678

_I32: Final = struct.Struct("!i")
_I16: Final = struct.Struct("!h")
_HEADER: Final = struct.Struct("!ci")


def _frame(type_byte: bytes, body: bytes = b"") -> bytes:
    return _HEADER.pack(type_byte, len(body) + 4) + body


def describe_type(type_byte: int) -> str:
    """A message type byte for an error message: 'Q', or '\\x00' when unprintable."""
    return chr(type_byte) if 0x20 <= type_byte < 0x7F else f"\\x{type_byte:02x}"


def message_end(buf: bytes | bytearray | memoryview, pos: int, size: int, limit: int) -> int:
    """Where the message framed at ``buf[pos]`` ends, if ``buf[:size]`` holds all of it; else -1.

    The one framing rule of protocol 3 (type byte, then an int32 length
    that counts itself), shared by the client and server state machines and
    by the asyncio wire that cuts its reads at message boundaries. A length
    word below 4 or above ``limit`` raises :class:`ProtocolViolation` as soon
    as it is read, so a hostile peer can never make anyone buffer the body.
    """
    if size - pos < 5:
        return -1
    (length,) = _I32.unpack_from(buf, pos + 1)
    if length < 4 or length > limit:
        raise ProtocolViolation(
            f"invalid message length {length} for message type "
            f"'{describe_type(buf[pos])}' (limit {limit})"
        )
    end = pos + 1 + length
    return end if end <= size else -1


def _cstr(text: str) -> bytes:
    raw = text.encode()
    if b"\0" in raw:
        raise ValueError(f"string contains a NUL byte: {text!r}")
    return raw + b"\0"


class _Reader:
    """A bounds-checked cursor over one message body."""

    __slots__ = ("body", "name", "pos")

    def __init__(self, body: bytes, name: str) -> None:
        self.body = body
        self.pos = 0
        self.name = name

    def fail(self, why: str) -> ProtocolViolation:
        return ProtocolViolation(f"malformed {self.name} message: {why}")

    def int32(self) -> int:
        if self.pos + 4 > len(self.body):
            raise self.fail("truncated")
        (v,) = _I32.unpack_from(self.body, self.pos)
        self.pos += 4
        return int(v)

    def int16(self) -> int:
        if self.pos + 2 > len(self.body):
            raise self.fail("truncated")
        (v,) = _I16.unpack_from(self.body, self.pos)
        self.pos += 2
        return int(v)

    def byte(self) -> int:
        if self.pos >= len(self.body):
            raise self.fail("truncated")
        v = self.body[self.pos]
        self.pos += 1
        return v

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.body):
            raise self.fail("truncated")
        v = self.body[self.pos : self.pos + n]
        self.pos += n
        return v

    def rest(self) -> bytes:
        v = self.body[self.pos :]
        self.pos = len(self.body)
        return v

    def cstr_bytes(self) -> bytes:
        end = self.body.find(b"\0", self.pos)
        if end < 0:
            raise self.fail("string not NUL-terminated")
        v = self.body[self.pos : end]
        self.pos = end + 1
        return v

    def cstr(self, *, lenient: bool = False) -> str:
        raw = self.cstr_bytes()
        try:
            return raw.decode()
        except UnicodeDecodeError:
            if lenient:
                return raw.decode(errors="replace")
            raise self.fail("string is not valid UTF-8") from None

    def end(self) -> None:
        if self.pos != len(self.body):
            raise self.fail(f"{len(self.body) - self.pos} unexpected trailing bytes")


# ---------------------------------------------------------------------------
# Frontend messages (client to server)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The first message of a session; it has no type byte."""

    parameters: Mapping[str, str]
    protocol: int = PROTOCOL_3_0

    def encode(self) -> bytes:
        body = _I32.pack(self.protocol)
        body += b"".join(_cstr(k) + _cstr(v) for k, v in self.parameters.items()) + b"\0"
        return _I32.pack(len(body) + 4) + body


@dataclass(frozen=True, slots=True)
class SSLRequest:
    def encode(self) -> bytes:
        return _I32.pack(8) + _I32.pack(SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    def encode(self) -> bytes:
        return _I32.pack(8) + _I32.pack(GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    secret_key: bytes

    def encode(self) -> bytes:
        body = _I32.pack(CANCEL_REQUEST_CODE) + _I32.pack(self.pid) + self.secret_key
        return _I32.pack(len(body) + 4) + body


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """A cleartext or MD5 password response (type 'p')."""

    password: bytes

    def encode(self) -> bytes:
        return _frame(b"p", self.password + b"\0")


@dataclass(frozen=True, slots=True)
class SASLInitialResponse:
    mechanism: str
    data: bytes | None

    def encode(self) -> bytes:
        body = _cstr(self.mechanism)
        body += _I32.pack(-1) if self.data is None else _I32.pack(len(self.data)) + self.data
        return _frame(b"p", body)


@dataclass(frozen=True, slots=True)
class SASLResponse:
    data: bytes

    def encode(self) -> bytes:
        return _frame(b"p", self.data)


@dataclass(frozen=True, slots=True)
class Query:
    sql: str

    def encode(self) -> bytes:
        return _frame(b"Q", _cstr(self.sql))


@dataclass(frozen=True, slots=True)
class CopyData:
    """A chunk of a COPY stream; sent by both sides."""

    data: bytes

    def encode(self) -> bytes:
        return _HEADER.pack(b"d", len(self.data) + 4) + self.data


@dataclass(frozen=True, slots=True)
class CopyDone:
    """End of a COPY stream; sent by both sides."""

    def encode(self) -> bytes:
        return b"c\0\0\0\4"


@dataclass(frozen=True, slots=True)
class CopyFail:
    message: str

    def encode(self) -> bytes:
        return _frame(b"f", _cstr(self.message))


@dataclass(frozen=True, slots=True)
class Terminate:
    def encode(self) -> bytes:
        return b"X\0\0\0\4"


# ---------------------------------------------------------------------------
# Backend messages (server to client)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthenticationOk:
    def encode(self) -> bytes:
        return _frame(b"R", _I32.pack(0))


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword:
    def encode(self) -> bytes:
        return _frame(b"R", _I32.pack(3))


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password:
    salt: bytes

    def encode(self) -> bytes:
        return _frame(b"R", _I32.pack(5) + self.salt)


@dataclass(frozen=True, slots=True)
class AuthenticationSASL:
    mechanisms: tuple[str, ...]

    def encode(self) -> bytes:
        body = _I32.pack(10) + b"".join(_cstr(m) for m in self.mechanisms) + b"\0"
        return _frame(b"R", body)


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue:
    data: bytes

    def encode(self) -> bytes:
        return _frame(b"R", _I32.pack(11) + self.data)


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal:
    data: bytes

    def encode(self) -> bytes:
        return _frame(b"R", _I32.pack(12) + self.data)


@dataclass(frozen=True, slots=True)
class AuthenticationUnsupported:
    """A request for a method walstream does not implement (Kerberos, GSS, SSPI)."""

    code: int
    data: bytes = b""

    # PostgreSQL's AUTH_REQ_* numbers, for error messages.
    NAMES = {2: "KerberosV5", 6: "SCM credentials", 7: "GSSAPI", 8: "GSSAPI", 9: "SSPI"}

    @property
    def method(self) -> str:
        return self.NAMES.get(self.code, f"request {self.code}")

    def encode(self) -> bytes:
        return _frame(b"R", _I32.pack(self.code) + self.data)


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    name: str
    value: str

    def encode(self) -> bytes:
        return _frame(b"S", _cstr(self.name) + _cstr(self.value))


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    """The cancel key; variable-length from protocol 3.2 (PostgreSQL 18)."""

    pid: int
    secret_key: bytes

    def encode(self) -> bytes:
        return _frame(b"K", _I32.pack(self.pid) + self.secret_key)


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    status: str  # 'I' idle, 'T' in transaction, 'E' failed transaction

    def encode(self) -> bytes:
        return _frame(b"Z", self.status.encode())


@dataclass(frozen=True, slots=True)
class FieldDescription:
    name: str
    table_oid: int = 0
    column: int = 0
    type_oid: int = 25  # text
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0


# table OID (unsigned), column number, type OID (unsigned), type size, typmod, format
_FIELD: Final = struct.Struct("!IhIhih")


@dataclass(frozen=True, slots=True)
class RowDescription:
    fields: tuple[FieldDescription, ...]

    def encode(self) -> bytes:
        body = _I16.pack(len(self.fields))
        for f in self.fields:
            body += _cstr(f.name) + _FIELD.pack(
                f.table_oid, f.column, f.type_oid, f.type_size, f.type_modifier, f.format
            )
        return _frame(b"T", body)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


@dataclass(frozen=True, slots=True)
class DataRow:
    values: tuple[bytes | None, ...]

    def encode(self) -> bytes:
        parts = [_I16.pack(len(self.values))]
        for v in self.values:
            parts.append(_I32.pack(-1) if v is None else _I32.pack(len(v)) + v)
        return _frame(b"D", b"".join(parts))


@dataclass(frozen=True, slots=True)
class CommandComplete:
    tag: str

    def encode(self) -> bytes:
        return _frame(b"C", _cstr(self.tag))


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse:
    def encode(self) -> bytes:
        return b"I\0\0\0\4"


def _encode_fields(fields: Mapping[str, str]) -> bytes:
    return b"".join(k.encode() + _cstr(v) for k, v in fields.items()) + b"\0"


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """An error; ``fields`` maps PostgreSQL's one-letter codes (C, M, S, V, ...) to text."""

    fields: Mapping[str, str]

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @property
    def severity(self) -> str:
        return self.fields.get("V") or self.fields.get("S") or ""

    def to_exception(self, context: str | None = None) -> ServerError:
        return ServerError(self.fields, context)

    def encode(self) -> bytes:
        return _frame(b"E", _encode_fields(self.fields))


@dataclass(frozen=True, slots=True)
class NoticeResponse:
    fields: Mapping[str, str]

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @property
    def severity(self) -> str:
        return self.fields.get("V") or self.fields.get("S") or ""

    def encode(self) -> bytes:
        return _frame(b"N", _encode_fields(self.fields))


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    pid: int
    channel: str
    payload: str

    def encode(self) -> bytes:
        return _frame(b"A", _I32.pack(self.pid) + _cstr(self.channel) + _cstr(self.payload))


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    newest_minor: int
    unrecognized: tuple[str, ...] = ()

    def encode(self) -> bytes:
        body = _I32.pack(self.newest_minor) + _I32.pack(len(self.unrecognized))
        body += b"".join(_cstr(o) for o in self.unrecognized)
        return _frame(b"v", body)


@dataclass(frozen=True, slots=True)
class _CopyResponse:
    """CopyInResponse, CopyOutResponse and CopyBothResponse share one layout."""

    format: int = 0
    column_formats: tuple[int, ...] = ()
    TYPE: ClassVar[bytes] = b""

    def encode(self) -> bytes:
        body = bytes([self.format]) + _I16.pack(len(self.column_formats))
        body += b"".join(_I16.pack(c) for c in self.column_formats)
        return _frame(self.TYPE, body)


class CopyBothResponse(_CopyResponse):
    """Start of the bidirectional COPY used by START_REPLICATION."""

    __slots__ = ()
    TYPE = b"W"


class CopyOutResponse(_CopyResponse):
    __slots__ = ()
    TYPE = b"H"


class CopyInResponse(_CopyResponse):
    __slots__ = ()
    TYPE = b"G"


BackendMessage = (
    AuthenticationOk
    | AuthenticationCleartextPassword
    | AuthenticationMD5Password
    | AuthenticationSASL
    | AuthenticationSASLContinue
    | AuthenticationSASLFinal
    | AuthenticationUnsupported
    | ParameterStatus
    | BackendKeyData
    | ReadyForQuery
    | RowDescription
    | DataRow
    | CommandComplete
    | EmptyQueryResponse
    | ErrorResponse
    | NoticeResponse
    | NotificationResponse
    | NegotiateProtocolVersion
    | CopyBothResponse
    | CopyOutResponse
    | CopyInResponse
    | CopyData
    | CopyDone
)

FrontendMessage = (
    StartupMessage
    | SSLRequest
    | GSSENCRequest
    | CancelRequest
    | PasswordMessage
    | SASLInitialResponse
    | SASLResponse
    | Query
    | CopyData
    | CopyDone
    | CopyFail
    | Terminate
)

# ---------------------------------------------------------------------------
# Decoders
# ---------------------------------------------------------------------------


def _decode_auth(r: _Reader) -> BackendMessage:
    code = r.int32()
    if code == 0:
        r.end()
        return AuthenticationOk()
    if code == 3:
        r.end()
        return AuthenticationCleartextPassword()
    if code == 5:
        salt = r.raw(4)
        r.end()
        return AuthenticationMD5Password(salt)
    if code == 10:
        mechanisms: list[str] = []
        while True:
            m = r.cstr()
            if not m:
                break
            mechanisms.append(m)
        r.end()
        return AuthenticationSASL(tuple(mechanisms))
    if code == 11:
        return AuthenticationSASLContinue(r.rest())
    if code == 12:
        return AuthenticationSASLFinal(r.rest())
    return AuthenticationUnsupported(code, r.rest())


def _decode_fields(r: _Reader) -> dict[str, str]:
    fields: dict[str, str] = {}
    while True:
        code = r.byte()
        if code == 0:
            break
        fields[chr(code)] = r.cstr(lenient=True)
    r.end()
    return fields


def _decode_error(r: _Reader) -> BackendMessage:
    return ErrorResponse(_decode_fields(r))


def _decode_notice(r: _Reader) -> BackendMessage:
    return NoticeResponse(_decode_fields(r))


def _decode_parameter_status(r: _Reader) -> BackendMessage:
    name, value = r.cstr(lenient=True), r.cstr(lenient=True)
    r.end()
    return ParameterStatus(name, value)


def _decode_backend_key(r: _Reader) -> BackendMessage:
    pid = r.int32()
    key = r.rest()
    if not 4 <= len(key) <= 256:  # 3.2 allows up to 256 bytes
        raise r.fail(f"cancel key of {len(key)} bytes")
    return BackendKeyData(pid, key)


def _decode_ready(r: _Reader) -> BackendMessage:
    status = r.raw(1)
    r.end()
    if status not in (b"I", b"T", b"E"):
        raise r.fail(f"unknown transaction status {status!r}")
    return ReadyForQuery(status.decode())


def _decode_row_description(r: _Reader) -> BackendMessage:
    n = r.int16()
    if n < 0:
        raise r.fail("negative field count")
    fields = []
    for _ in range(n):
        name = r.cstr(lenient=True)
        t_oid, col, ty, size, mod, fmt = _FIELD.unpack(r.raw(_FIELD.size))
        fields.append(FieldDescription(name, t_oid, col, ty, size, mod, fmt))
    r.end()
    return RowDescription(tuple(fields))


def _decode_data_row(r: _Reader) -> BackendMessage:
    n = r.int16()
    if n < 0:
        raise r.fail("negative column count")
    values: list[bytes | None] = []
    for _ in range(n):
        size = r.int32()
        if size == -1:
            values.append(None)
        elif size < 0:
            raise r.fail(f"column length {size}")
        else:
            values.append(r.raw(size))
    r.end()
    return DataRow(tuple(values))


def _decode_command_complete(r: _Reader) -> BackendMessage:
    tag = r.cstr(lenient=True)
    r.end()
    return CommandComplete(tag)


def _decode_empty(r: _Reader) -> BackendMessage:
    r.end()
    return EmptyQueryResponse()


def _decode_notification(r: _Reader) -> BackendMessage:
    pid = r.int32()
    channel, payload = r.cstr(lenient=True), r.cstr(lenient=True)
    r.end()
    return NotificationResponse(pid, channel, payload)


def _decode_negotiate(r: _Reader) -> BackendMessage:
    minor = r.int32()
    n = r.int32()
    if n < 0:
        raise r.fail("negative option count")
    options = tuple(r.cstr(lenient=True) for _ in range(n))
    r.end()
    return NegotiateProtocolVersion(minor, options)


def _decode_copy_response(
    cls: type[CopyBothResponse | CopyOutResponse | CopyInResponse],
) -> Callable[[_Reader], BackendMessage]:
    def decode(r: _Reader) -> BackendMessage:
        fmt = r.byte()
        n = r.int16()
        if n < 0:
            raise r.fail("negative column count")
        cols = tuple(r.int16() for _ in range(n))
        r.end()
        return cls(fmt, cols)

    return decode


def _decode_copy_data(r: _Reader) -> CopyData:
    return CopyData(r.rest())


def _decode_copy_done(r: _Reader) -> CopyDone:
    r.end()
    return CopyDone()


_BACKEND: Final[dict[int, tuple[str, Callable[[_Reader], BackendMessage]]]] = {
    ord("R"): ("Authentication", _decode_auth),
    ord("S"): ("ParameterStatus", _decode_parameter_status),
    ord("K"): ("BackendKeyData", _decode_backend_key),
    ord("Z"): ("ReadyForQuery", _decode_ready),
    ord("T"): ("RowDescription", _decode_row_description),
    ord("D"): ("DataRow", _decode_data_row),
    ord("C"): ("CommandComplete", _decode_command_complete),
    ord("I"): ("EmptyQueryResponse", _decode_empty),
    ord("E"): ("ErrorResponse", _decode_error),
    ord("N"): ("NoticeResponse", _decode_notice),
    ord("A"): ("NotificationResponse", _decode_notification),
    ord("v"): ("NegotiateProtocolVersion", _decode_negotiate),
    ord("W"): ("CopyBothResponse", _decode_copy_response(CopyBothResponse)),
    ord("H"): ("CopyOutResponse", _decode_copy_response(CopyOutResponse)),
    ord("G"): ("CopyInResponse", _decode_copy_response(CopyInResponse)),
    ord("d"): ("CopyData", _decode_copy_data),
    ord("c"): ("CopyDone", _decode_copy_done),
}


def decode_backend(type_byte: int, body: bytes) -> BackendMessage:
    """Decode one server-to-client message from its type byte and body."""
    entry = _BACKEND.get(type_byte)
    if entry is None:
        raise ProtocolViolation(f"unexpected message type 0x{type_byte:02x} from server")
    name, decoder = entry
    return decoder(_Reader(body, name))


def _decode_password(r: _Reader) -> FrontendMessage:
    # 'p' is ambiguous on the wire: its meaning depends on which authentication
    # request it answers. The server state machine re-reads the body as SASL
    # when it asked for SASL; here it is a password.
    pw = r.cstr_bytes()
    r.end()
    return PasswordMessage(pw)


def _decode_query(r: _Reader) -> FrontendMessage:
    sql = r.cstr()
    r.end()
    return Query(sql)


def _decode_copy_fail(r: _Reader) -> FrontendMessage:
    msg = r.cstr(lenient=True)
    r.end()
    return CopyFail(msg)


def _decode_terminate(r: _Reader) -> FrontendMessage:
    r.end()
    return Terminate()


_FRONTEND: Final[dict[int, tuple[str, Callable[[_Reader], FrontendMessage]]]] = {
    ord("p"): ("PasswordMessage", _decode_password),
    ord("Q"): ("Query", _decode_query),
    ord("d"): ("CopyData", _decode_copy_data),
    ord("c"): ("CopyDone", _decode_copy_done),
    ord("f"): ("CopyFail", _decode_copy_fail),
    ord("X"): ("Terminate", _decode_terminate),
}

# Extended-query messages: recognised so a server can answer PostgreSQL's
# 08P01 "extended query protocol not supported in a replication connection".
EXTENDED_QUERY_TYPES: Final = frozenset(b"PBEDSHFC")


def decode_frontend(type_byte: int, body: bytes) -> FrontendMessage:
    """Decode one typed client-to-server message (anything after startup)."""
    entry = _FRONTEND.get(type_byte)
    if entry is None:
        raise ProtocolViolation(f"unexpected message type 0x{type_byte:02x} from client")
    name, decoder = entry
    return decoder(_Reader(body, name))


def decode_sasl_initial(body: bytes) -> SASLInitialResponse:
    r = _Reader(body, "SASLInitialResponse")
    mechanism = r.cstr()
    n = r.int32()
    data = None if n == -1 else r.raw(n)
    r.end()
    return SASLInitialResponse(mechanism, data)


def decode_untyped_frontend(
    body: bytes,
) -> StartupMessage | SSLRequest | GSSENCRequest | CancelRequest:
    """Decode the first, untyped message of a session (after its length word)."""
    r = _Reader(body, "startup")
    code = r.int32()
    if code == SSL_REQUEST_CODE:
        r.end()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        r.end()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        pid = r.int32()
        key = r.rest()
        if not 4 <= len(key) <= 256:
            raise r.fail(f"cancel key of {len(key)} bytes")
        return CancelRequest(pid, key)
    if code >> 16 != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
            "server supports 3.0 to 3.2",
            sqlstate="0A000",  # PostgreSQL's ERRCODE_FEATURE_NOT_SUPPORTED
        )
    params: dict[str, str] = {}
    while True:
        name = r.cstr()
        if not name:
            break
        params[name] = r.cstr()
    r.end()
    return StartupMessage(params, code)


def error_fields(
    severity: str,
    sqlstate: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
) -> dict[str, str]:
    """Build ErrorResponse/NoticeResponse fields in the order PostgreSQL sends them."""
    fields = {"S": severity, "V": severity, "C": sqlstate, "M": message}
    if detail is not None:
        fields["D"] = detail
    if hint is not None:
        fields["H"] = hint
    fields.update(extra)
    return fields
