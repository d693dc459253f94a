"""The message codec: round trips in both directions, literal wire fixtures, malformed bodies.

The literal fixtures marked "PostgreSQL 15.18" were captured from a real
server (Debian 15.18-0+deb12u1) over a Unix socket, byte for byte; the others
are written out from the protocol documentation.
"""

from __future__ import annotations

import contextlib
import struct

import pytest

from walstream.errors import ProtocolViolation
from walstream.lsn import LSN
from walstream.protocol import messages as m
from walstream.protocol.replication import (
    HotStandbyFeedback,
    PrimaryKeepalive,
    StandbyStatusUpdate,
    XLogData,
    decode_client_copy_data,
    decode_server_copy_data,
)


def h(text: str) -> bytes:
    """Bytes from spaced hex, so fixtures read like a packet dump."""
    return bytes.fromhex(text)


def split_typed(data: bytes) -> tuple[int, bytes]:
    """Parse exactly one typed frame: type byte, length word (counting itself), body."""
    assert len(data) >= 5
    (length,) = struct.unpack_from("!i", data, 1)
    assert length == len(data) - 1, "length word must cover the whole rest of the frame"
    return data[0], data[5:]


def split_untyped(data: bytes) -> bytes:
    (length,) = struct.unpack_from("!i", data, 0)
    assert length == len(data)
    return data[4:]


def split_stream(data: bytes) -> list[tuple[int, bytes]]:
    frames = []
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from("!i", data, pos + 1)
        frames.append(split_typed(data[pos : pos + 1 + length]))
        pos += 1 + length
    return frames


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------

BACKEND_MESSAGES: list[m.BackendMessage] = [
    m.AuthenticationOk(),
    m.AuthenticationCleartextPassword(),
    m.AuthenticationMD5Password(b"\x01\x02\x03\x04"),
    m.AuthenticationSASL(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")),
    m.AuthenticationSASL(()),
    m.AuthenticationSASLContinue(b"r=abc,s=c2FsdA==,i=4096"),
    m.AuthenticationSASLFinal(b"v=c2lnbmF0dXJl"),
    m.AuthenticationUnsupported(7),
    m.AuthenticationUnsupported(8, b"gss token"),
    m.ParameterStatus("server_version", "15.18"),
    m.ParameterStatus("application_name", ""),
    m.BackendKeyData(4991, b"\x35\x52\xb5\x42"),
    m.BackendKeyData(1, bytes(range(32))),  # protocol 3.2: longer keys
    m.ReadyForQuery("I"),
    m.ReadyForQuery("T"),
    m.ReadyForQuery("E"),
    m.RowDescription(()),
    m.RowDescription(
        (
            m.FieldDescription("next_tli", type_oid=20, type_size=8),
            m.FieldDescription("next_tli_startpos"),
            m.FieldDescription("big oid", table_oid=0xFFFFFFF0, column=3, type_oid=0x80000001),
        )
    ),
    m.DataRow(()),
    m.DataRow((b"1", None, b"", "ünïcode".encode())),
    m.CommandComplete("START_REPLICATION"),
    m.EmptyQueryResponse(),
    m.ErrorResponse(m.error_fields("ERROR", "42704", 'unrecognized configuration parameter "x"')),
    m.ErrorResponse({}),
    m.NoticeResponse(m.error_fields("WARNING", "01000", "careful", detail="d", hint="h")),
    m.NotificationResponse(42, "chan", "payload"),
    m.NegotiateProtocolVersion(0, ("_pq_.something",)),
    m.NegotiateProtocolVersion(2),
    m.CopyBothResponse(),
    m.CopyOutResponse(1, (1, 1)),
    m.CopyInResponse(0, (0,)),
    m.CopyData(b""),
    m.CopyData(b"w" + bytes(24) + b"wal"),
    m.CopyDone(),
]


@pytest.mark.parametrize("msg", BACKEND_MESSAGES, ids=lambda msg: type(msg).__name__)
def test_backend_round_trip(msg: m.BackendMessage) -> None:
    mtype, body = split_typed(msg.encode())
    assert m.decode_backend(mtype, body) == msg


TYPED_FRONTEND: list[m.FrontendMessage] = [
    m.PasswordMessage(b"secret"),
    m.PasswordMessage(b""),
    m.Query("IDENTIFY_SYSTEM"),
    m.Query('SHOW "wal_segment_size"; -- ünïcode'),
    m.CopyData(b""),
    m.CopyData(StandbyStatusUpdate(LSN(1), LSN(2), LSN(3), 4).encode()),
    m.CopyDone(),
    m.CopyFail("aborted"),
    m.Terminate(),
]


@pytest.mark.parametrize("msg", TYPED_FRONTEND, ids=lambda msg: type(msg).__name__)
def test_typed_frontend_round_trip(msg: m.FrontendMessage) -> None:
    mtype, body = split_typed(msg.encode())
    assert m.decode_frontend(mtype, body) == msg


@pytest.mark.parametrize("data", [b"n,,n=,r=nonce", b"", None])
def test_sasl_initial_response_round_trip(data: bytes | None) -> None:
    msg = m.SASLInitialResponse("SCRAM-SHA-256", data)
    mtype, body = split_typed(msg.encode())
    assert mtype == ord("p")
    assert m.decode_sasl_initial(body) == msg


def test_sasl_response_round_trip() -> None:
    # The body is the raw SASL data: no terminator, no length.
    msg = m.SASLResponse(b"c=biws,r=nonce,p=proof")
    mtype, body = split_typed(msg.encode())
    assert (mtype, body) == (ord("p"), b"c=biws,r=nonce,p=proof")
    assert m.SASLResponse(body) == msg


UNTYPED_FRONTEND: list[m.StartupMessage | m.SSLRequest | m.GSSENCRequest | m.CancelRequest] = [
    m.SSLRequest(),
    m.GSSENCRequest(),
    m.CancelRequest(1234, b"\xde\xad\xbe\xef"),
    m.CancelRequest(1234, bytes(256)),
    m.StartupMessage({"user": "rep", "database": "replication", "replication": "true"}),
    m.StartupMessage({}),
    m.StartupMessage({"user": "u"}, protocol=(3 << 16) | 2),
]


@pytest.mark.parametrize("msg", UNTYPED_FRONTEND, ids=lambda msg: type(msg).__name__)
def test_untyped_frontend_round_trip(
    msg: m.StartupMessage | m.SSLRequest | m.GSSENCRequest | m.CancelRequest,
) -> None:
    assert m.decode_untyped_frontend(split_untyped(msg.encode())) == msg


SERVER_PAYLOADS: list[XLogData | PrimaryKeepalive] = [
    XLogData(LSN(0x1000000), LSN(0x15015B8), 12345, b"\x01" * 100),
    XLogData(LSN(0xFFFFFFFFFFFFFFFF), LSN(0), -1, b""),
    PrimaryKeepalive(LSN(0x15015B8), 2**62, True),
    PrimaryKeepalive(LSN(0), 0, False),
]


@pytest.mark.parametrize("msg", SERVER_PAYLOADS, ids=lambda msg: type(msg).__name__)
def test_server_copy_data_round_trip(msg: XLogData | PrimaryKeepalive) -> None:
    mtype, body = split_typed(m.CopyData(msg.encode()).encode())
    decoded = m.decode_backend(mtype, body)
    assert isinstance(decoded, m.CopyData)
    assert decode_server_copy_data(decoded.data) == msg


CLIENT_PAYLOADS: list[StandbyStatusUpdate | HotStandbyFeedback] = [
    StandbyStatusUpdate(LSN(3), LSN(2), LSN(1), 99, True),
    StandbyStatusUpdate(LSN(0xFFFFFFFFFFFFFFFF), LSN(0), LSN(0), -5),
    HotStandbyFeedback(99, 0xFFFFFFFF, 1, 2, 3),
    HotStandbyFeedback(0),
]


@pytest.mark.parametrize("msg", CLIENT_PAYLOADS, ids=lambda msg: type(msg).__name__)
def test_client_copy_data_round_trip(msg: StandbyStatusUpdate | HotStandbyFeedback) -> None:
    mtype, body = split_typed(m.CopyData(msg.encode()).encode())
    decoded = m.decode_frontend(mtype, body)
    assert isinstance(decoded, m.CopyData)
    assert decode_client_copy_data(decoded.data) == msg


# ---------------------------------------------------------------------------
# Literal wire fixtures
# ---------------------------------------------------------------------------


def test_ssl_request_bytes() -> None:
    assert m.SSLRequest().encode() == h("00 00 00 08 04 d2 16 2f")
    assert m.decode_untyped_frontend(h("04 d2 16 2f")) == m.SSLRequest()


def test_gssenc_request_bytes() -> None:
    assert m.GSSENCRequest().encode() == h("00 00 00 08 04 d2 16 30")


def test_cancel_request_bytes() -> None:
    wire = h("00 00 00 10 04 d2 16 2e 00 00 04 d2 de ad be ef")
    assert m.CancelRequest(1234, h("de ad be ef")).encode() == wire
    assert m.decode_untyped_frontend(wire[4:]) == m.CancelRequest(1234, h("de ad be ef"))


# What a PostgreSQL 15 walreceiver sends after its SSLRequest is refused.
WALRECEIVER_STARTUP = (
    h("00 00 00 55 00 03 00 00")
    + b"user\0rep\0database\0replication\0replication\0true\0"
    + b"application_name\0walreceiver\0\0"
)


def test_startup_message_bytes() -> None:
    msg = m.StartupMessage(
        {
            "user": "rep",
            "database": "replication",
            "replication": "true",
            "application_name": "walreceiver",
        }
    )
    assert msg.encode() == WALRECEIVER_STARTUP
    assert m.decode_untyped_frontend(WALRECEIVER_STARTUP[4:]) == msg


def test_simple_frontend_bytes() -> None:
    assert m.Terminate().encode() == h("58 00 00 00 04")
    assert m.CopyDone().encode() == h("63 00 00 00 04")
    assert m.Query("IDENTIFY_SYSTEM").encode() == h("51 00 00 00 14") + b"IDENTIFY_SYSTEM\0"
    # md5 of md5("secret" + "rep_md5") + salt; see test_protocol_state for the value.
    assert m.PasswordMessage(b"md5abc").encode() == h("70 00 00 00 0b") + b"md5abc\0"
    assert m.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=x").encode() == (
        h("70 00 00 00 1f") + b"SCRAM-SHA-256\0" + h("00 00 00 09") + b"n,,n=,r=x"
    )


# PostgreSQL 15.18: the answer to a wrong md5 password for role rep_md5.
PG15_BAD_PASSWORD = (
    b"E\x00\x00\x00gSFATAL\x00VFATAL\x00C28P01\x00"
    b'Mpassword authentication failed for user "rep_md5"\x00'
    b"Fauth.c\x00L334\x00Rauth_failed\x00\x00"
)


def test_pg15_bad_password_error() -> None:
    mtype, body = split_typed(PG15_BAD_PASSWORD)
    msg = m.decode_backend(mtype, body)
    assert isinstance(msg, m.ErrorResponse)
    assert msg.severity == "FATAL"
    assert msg.sqlstate == "28P01"
    assert msg.message == 'password authentication failed for user "rep_md5"'
    assert msg.fields == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "28P01",
        "M": 'password authentication failed for user "rep_md5"',
        "F": "auth.c",
        "L": "334",
        "R": "auth_failed",
    }
    # Field order is preserved, so re-encoding gives the server's bytes back.
    assert msg.encode() == PG15_BAD_PASSWORD
    err = msg.to_exception()
    assert err.sqlstate == "28P01"
    assert str(err) == 'FATAL:  password authentication failed for user "rep_md5"'


# PostgreSQL 15.18: a Parse message sent on a replication connection. Note the
# server reports it as ERROR (then skips to the next Sync), not FATAL.
PG15_EXTENDED_QUERY_ERROR = (
    b"E\x00\x00\x00\x88SERROR\x00VERROR\x00C08P01\x00"
    b"Mextended query protocol not supported in a replication connection\x00"
    b"Fpostgres.c\x00L4909\x00Rforbidden_in_wal_sender\x00\x00"
)


def test_pg15_extended_query_error() -> None:
    msg = m.decode_backend(*split_typed(PG15_EXTENDED_QUERY_ERROR))
    assert isinstance(msg, m.ErrorResponse)
    assert (msg.severity, msg.sqlstate) == ("ERROR", "08P01")
    assert msg.message == "extended query protocol not supported in a replication connection"


def test_pg15_authentication_requests() -> None:
    md5 = m.decode_backend(*split_typed(h("52 00 00 00 0c 00 00 00 05 c3 d9 37 86")))
    assert md5 == m.AuthenticationMD5Password(h("c3 d9 37 86"))
    sasl = m.decode_backend(*split_typed(b"R\x00\x00\x00\x17\x00\x00\x00\nSCRAM-SHA-256\x00\x00"))
    assert sasl == m.AuthenticationSASL(("SCRAM-SHA-256",))
    assert sasl.encode() == b"R\x00\x00\x00\x17\x00\x00\x00\nSCRAM-SHA-256\x00\x00"


# PostgreSQL 15.18: everything a trust-authenticated replication connection
# receives after its startup packet, in one read.
PG15_TRUST_STARTUP = (
    b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    b"S\x00\x00\x00!application_name\x00walreceiver\x00"
    b"S\x00\x00\x00\x1eclient_encoding\x00SQL_ASCII\x00"
    b"S\x00\x00\x00\x17DateStyle\x00ISO, MDY\x00"
    b"S\x00\x00\x00&default_transaction_read_only\x00off\x00"
    b"S\x00\x00\x00\x17in_hot_standby\x00off\x00"
    b"S\x00\x00\x00\x19integer_datetimes\x00on\x00"
    b"S\x00\x00\x00\x1bIntervalStyle\x00postgres\x00"
    b"S\x00\x00\x00\x15is_superuser\x00off\x00"
    b"S\x00\x00\x00\x1eserver_encoding\x00SQL_ASCII\x00"
    b"S\x00\x00\x002server_version\x0015.18 (Debian 15.18-0+deb12u1)\x00"
    b"S\x00\x00\x00$session_authorization\x00rep_trust\x00"
    b"S\x00\x00\x00#standard_conforming_strings\x00on\x00"
    b"S\x00\x00\x00\x15TimeZone\x00Etc/UTC\x00"
    b"K\x00\x00\x00\x0c\x00\x00\x13\x7f5R\xb5B"
    b"Z\x00\x00\x00\x05I"
)


def test_pg15_trust_startup_stream() -> None:
    msgs = [m.decode_backend(t, b) for t, b in split_stream(PG15_TRUST_STARTUP)]
    assert msgs[0] == m.AuthenticationOk()
    params = {p.name: p.value for p in msgs if isinstance(p, m.ParameterStatus)}
    assert params["integer_datetimes"] == "on"
    assert params["server_version"] == "15.18 (Debian 15.18-0+deb12u1)"
    assert len(params) == 13
    assert msgs[-2] == m.BackendKeyData(0x137F, h("35 52 b5 42"))
    assert msgs[-1] == m.ReadyForQuery("I")
    assert b"".join(msg.encode() for msg in msgs) == PG15_TRUST_STARTUP


# PostgreSQL 15.18: the answer to IDENTIFY_SYSTEM (timeline is int4 up to 15).
PG15_IDENTIFY_SYSTEM = (
    b"T\x00\x00\x00o\x00\x04"
    b"systemid\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00"
    b"timeline\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"
    b"xlogpos\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00"
    b"dbname\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00"
    b"D\x00\x00\x003\x00\x04\x00\x00\x00\x137711506486921884499"
    b"\x00\x00\x00\x011\x00\x00\x00\t0/15015B8\xff\xff\xff\xff"
    b"C\x00\x00\x00\x14IDENTIFY_SYSTEM\x00"
    b"Z\x00\x00\x00\x05I"
)


def test_pg15_identify_system() -> None:
    msgs = [m.decode_backend(t, b) for t, b in split_stream(PG15_IDENTIFY_SYSTEM)]
    desc, row, done, ready = msgs
    assert isinstance(desc, m.RowDescription)
    assert desc.names == ("systemid", "timeline", "xlogpos", "dbname")
    assert desc.fields[1].type_oid == 23  # int4 before PostgreSQL 16
    assert row == m.DataRow((b"7711506486921884499", b"1", b"0/15015B8", None))
    assert done == m.CommandComplete("IDENTIFY_SYSTEM")
    assert ready == m.ReadyForQuery("I")
    assert b"".join(msg.encode() for msg in msgs) == PG15_IDENTIFY_SYSTEM


def test_pg15_copy_both_response() -> None:
    assert m.CopyBothResponse().encode() == h("57 00 00 00 07 00 00 00")


# PostgreSQL 15.18: the frame header of the first XLogData after
# START_REPLICATION 0/1000000 (a full 128 KiB chunk follows).
PG15_XLOGDATA_HEADER = h(
    "64 00 02 00 1d 77 00 00 00 00 01 00 00 00 00 00 00 00 01 50 15 b8 00 03 03 f8 60 87 26 02"
)


def test_pg15_xlogdata_header() -> None:
    wal = bytes(range(256)) * 512  # 128 KiB
    frame = PG15_XLOGDATA_HEADER + wal
    mtype, body = split_typed(frame)
    msg = m.decode_backend(mtype, body)
    assert isinstance(msg, m.CopyData)
    xlog = decode_server_copy_data(msg.data)
    assert isinstance(xlog, XLogData)
    assert xlog.data_start == LSN.parse("0/1000000")
    assert xlog.wal_end == LSN.parse("0/15015B8")
    assert xlog.send_time == 0x000303F860872602
    assert xlog.data == wal
    assert xlog.data_end == LSN.parse("0/1020000")
    assert m.CopyData(xlog.encode()).encode() == frame


# PostgreSQL 15.18: the keepalive answering a status update with replyRequested.
PG15_KEEPALIVE = h("64 00 00 00 16 6b 00 00 00 00 01 50 15 b8 00 03 03 f8 61 3a 4d 92 00")


def test_pg15_keepalive() -> None:
    msg = m.decode_backend(*split_typed(PG15_KEEPALIVE))
    assert isinstance(msg, m.CopyData)
    assert len(msg.data) == 18
    ka = decode_server_copy_data(msg.data)
    assert ka == PrimaryKeepalive(LSN.parse("0/15015B8"), 0x000303F8613A4D92, False)
    assert m.CopyData(ka.encode()).encode() == PG15_KEEPALIVE


def test_standby_status_update_bytes() -> None:
    msg = StandbyStatusUpdate(LSN(0x1000000), LSN(0x1000000), LSN(0), 1, True)
    assert m.CopyData(msg.encode()).encode() == (
        h("64 00 00 00 26 72")
        + h("00 00 00 00 01 00 00 00") * 2
        + h("00 00 00 00 00 00 00 00")
        + h("00 00 00 00 00 00 00 01 01")
    )


def test_hot_standby_feedback_bytes() -> None:
    msg = HotStandbyFeedback(2, 3, 4, 5, 6)
    assert m.CopyData(msg.encode()).encode() == (
        h("64 00 00 00 1d 68 00 00 00 00 00 00 00 02")
        + h("00 00 00 03 00 00 00 04 00 00 00 05 00 00 00 06")
    )


# ---------------------------------------------------------------------------
# Malformed input
# ---------------------------------------------------------------------------

MALFORMED_BACKEND = [
    ("R", b""),  # no auth code
    ("R", h("00 00 00 00 00")),  # AuthenticationOk with a trailing byte
    ("R", h("00 00 00 05 01 02 03")),  # md5 salt too short
    ("R", h("00 00 00 05 01 02 03 04 05")),  # md5 salt too long
    ("R", h("00 00 00 0a") + b"SCRAM-SHA-256\0"),  # mechanism list not terminated
    ("R", h("00 00 00 0a") + b"\xff\xfe\0\0"),  # mechanism not UTF-8
    ("S", b"name\0"),  # value missing
    ("S", b"name\0value\0x"),
    ("K", h("00 00 00 01 02 03")),  # cancel key too short
    ("K", h("00 00 00 01") + bytes(257)),  # cancel key too long
    ("Z", b""),
    ("Z", b"X"),
    ("Z", b"II"),
    ("T", h("ff ff")),  # negative field count
    ("T", h("00 01") + b"col\0" + bytes(17)),  # field truncated
    ("T", h("00 01") + b"col"),
    ("D", h("ff ff")),
    ("D", h("00 01 ff ff ff fe")),  # length -2
    ("D", h("00 01 00 00 00 05") + b"abc"),  # value truncated
    ("D", h("00 02 00 00 00 00")),  # second column missing
    ("C", b"TAG"),
    ("C", b"TAG\0x"),
    ("I", b"x"),
    ("E", b"Mmessage"),  # unterminated field
    ("E", b"Mmessage\0"),  # no final NUL
    ("N", b"\0x"),
    ("A", h("00 00 00 01") + b"chan\0"),
    ("v", h("00 00 00 00 ff ff ff ff")),  # negative option count
    ("v", h("00 00 00 00 00 00 00 02") + b"one\0"),
    ("v", h("00 00 00 00 7f ff ff ff")),  # absurd option count
    ("W", b""),
    ("W", h("00 ff ff")),
    ("W", h("00 00 02 00 00")),
    ("H", h("00 00 00 00")),  # trailing byte
    ("c", b"x"),
    ("x", b""),  # unknown type
    ("\0", b""),
]


@pytest.mark.parametrize(("mtype", "body"), MALFORMED_BACKEND)
def test_malformed_backend(mtype: str, body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        m.decode_backend(ord(mtype), body)


MALFORMED_FRONTEND = [
    ("p", b"secret"),  # not NUL-terminated
    ("p", b"sec\0ret\0"),
    ("Q", b"SELECT 1"),
    ("Q", b"\xff\0"),  # not UTF-8
    ("Q", b"a\0b\0"),
    ("c", b"\0"),
    ("f", b"no terminator"),
    ("X", b"\0"),
    ("P", b"\0SELECT 1\0\0\0"),  # extended query messages are not decoded
    ("B", b""),
    ("x", b""),
]


@pytest.mark.parametrize(("mtype", "body"), MALFORMED_FRONTEND)
def test_malformed_frontend(mtype: str, body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        m.decode_frontend(ord(mtype), body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"SCRAM-SHA-256",  # not terminated
        b"SCRAM-SHA-256\0",  # length missing
        b"SCRAM-SHA-256\0" + h("00 00 00 05") + b"abc",  # data truncated
        b"SCRAM-SHA-256\0" + h("00 00 00 01") + b"ab",  # trailing byte
        b"SCRAM-SHA-256\0" + h("ff ff ff fe"),  # length -2
        b"SCRAM-SHA-256\0" + h("80 00 00 00"),
        b"\xff\0" + h("ff ff ff ff"),  # mechanism not UTF-8
    ],
)
def test_malformed_sasl_initial(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        m.decode_sasl_initial(body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        h("04 d2"),
        h("04 d2 16 2f 00"),  # SSLRequest with a trailing byte
        h("04 d2 16 30 00 00 00 00"),
        h("04 d2 16 2e 00 00 04 d2 de ad be"),  # cancel key too short
        h("04 d2 16 2e 00 00 04 d2") + bytes(257),
        h("00 02 00 00") + b"user\0u\0\0",  # protocol 2.0
        h("ff ff ff ff"),
        h("00 03 00 00") + b"user\0u\0",  # list not terminated
        h("00 03 00 00") + b"user\0",  # value missing
        h("00 03 00 00") + b"user\0u\0\0x",  # trailing byte
        h("00 03 00 00") + b"user\0\xff\0\0",  # value not UTF-8
    ],
)
def test_malformed_untyped_frontend(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        m.decode_untyped_frontend(body)


def test_unsupported_protocol_is_0a000() -> None:
    with pytest.raises(ProtocolViolation, match=r"unsupported frontend protocol 2\.0") as info:
        m.decode_untyped_frontend(h("00 02 00 00") + b"user\0u\0\0")
    assert info.value.sqlstate == "0A000"


def test_protocol_violation_defaults_to_08p01() -> None:
    assert ProtocolViolation("x").sqlstate == "08P01"
    assert str(ProtocolViolation("x")) == "x"
    with pytest.raises(ProtocolViolation) as info:
        m.decode_backend(ord("Z"), b"")
    assert info.value.sqlstate == "08P01"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"w",
        b"w" + bytes(23),  # header one byte short
        b"k" + bytes(16),
        b"k" + bytes(18),
        b"r" + bytes(33),  # a client message, wrong direction
        b"?",
    ],
)
def test_malformed_server_copy_data(payload: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        decode_server_copy_data(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"r" + bytes(32),
        b"r" + bytes(34),
        b"h" + bytes(23),
        b"h" + bytes(25),
        b"k" + bytes(17),  # a server message, wrong direction
        b"w" + bytes(24),
    ],
)
def test_malformed_client_copy_data(payload: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        decode_client_copy_data(payload)


def _prefixes_and_extensions(body: bytes) -> list[bytes]:
    return [body[:i] for i in range(len(body))] + [body + b"\0", body + b"\xff"]


@pytest.mark.parametrize("msg", BACKEND_MESSAGES, ids=lambda msg: type(msg).__name__)
def test_backend_truncations_never_crash(msg: m.BackendMessage) -> None:
    """Every prefix of a valid body either decodes or is a ProtocolViolation."""
    mtype, body = split_typed(msg.encode())
    for variant in _prefixes_and_extensions(body):
        with contextlib.suppress(ProtocolViolation):  # anything else fails the test
            m.decode_backend(mtype, variant)


@pytest.mark.parametrize("msg", TYPED_FRONTEND, ids=lambda msg: type(msg).__name__)
def test_frontend_truncations_never_crash(msg: m.FrontendMessage) -> None:
    mtype, body = split_typed(msg.encode())
    for variant in _prefixes_and_extensions(body):
        with contextlib.suppress(ProtocolViolation):  # anything else fails the test
            m.decode_frontend(mtype, variant)


@pytest.mark.parametrize("msg", UNTYPED_FRONTEND, ids=lambda msg: type(msg).__name__)
def test_untyped_truncations_never_crash(
    msg: m.StartupMessage | m.SSLRequest | m.GSSENCRequest | m.CancelRequest,
) -> None:
    body = split_untyped(msg.encode())
    for variant in _prefixes_and_extensions(body):
        with contextlib.suppress(ProtocolViolation):  # anything else fails the test
            m.decode_untyped_frontend(variant)


def test_encoding_refuses_nul_in_strings() -> None:
    # A NUL would silently truncate the string on the wire.
    with pytest.raises(ValueError, match="NUL"):
        m.Query("SELECT 1\0; DROP").encode()
    with pytest.raises(ValueError, match="NUL"):
        m.StartupMessage({"user": "a\0b"}).encode()
