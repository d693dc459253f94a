"""Scripted conversations: ClientConnection and ServerConnection talking in memory.

Bytes one machine returns are fed to the other, so every test checks both
directions of the codec and both state machines at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import scramp

from walstream.errors import AuthenticationError, LocalProtocolError, ProtocolViolation
from walstream.lsn import LSN
from walstream.protocol import messages as m
from walstream.protocol.auth import Authenticator
from walstream.protocol.client import (
    ClientConnection,
    ClientEvent,
    ClientState,
    ConnectionClosed,
    EncryptionResponse,
)
from walstream.protocol.replication import (
    HotStandbyFeedback,
    PrimaryKeepalive,
    StandbyStatusUpdate,
    XLogData,
    decode_server_copy_data,
)
from walstream.protocol.server import ServerConnection, ServerEvent, ServerState

USER = "rep"
PASSWORD = "secret"
STARTUP_PARAMS = {
    "user": USER,
    "database": "replication",
    "replication": "true",
    "application_name": "walreceiver",
}
SALT = b"\x01\x02\x03\x04"
# "md5" + md5hex(md5hex("secret" + "rep") + salt); md5hex("secretrep") is
# 345dd60f5188c1a9c656482f63d77e69, what pg_authid would store after "md5".
MD5_RESPONSE = b"md5db553f6eefcecf29ae790fb02f820b64"

Splitter = Callable[[bytes], Iterator[bytes]]


def whole(data: bytes) -> Iterator[bytes]:
    yield data


def bytewise(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


def feed(machine: ClientConnection | ServerConnection, split: Splitter, data: bytes) -> None:
    for chunk in split(data):
        machine.receive_data(chunk)


class Pair:
    """A client and a server joined by an in-memory wire."""

    def __init__(self, split: Splitter = whole) -> None:
        self.client = ClientConnection()
        self.server = ServerConnection()
        self.split = split
        self.client_log: list[ClientEvent] = []
        self.server_log: list[ServerEvent] = []

    def to_server(self, data: bytes) -> list[ServerEvent]:
        events: list[ServerEvent] = []
        for chunk in self.split(data):
            events += self.server.receive_data(chunk)
        self.server_log += events
        return events

    def to_client(self, data: bytes) -> list[ClientEvent]:
        events: list[ClientEvent] = []
        for chunk in self.split(data):
            events += self.client.receive_data(chunk)
        self.client_log += events
        return events


def startup(pair: Pair) -> None:
    """Trust authentication up to the first ReadyForQuery."""
    assert pair.to_server(pair.client.startup(STARTUP_PARAMS)) == [m.StartupMessage(STARTUP_PARAMS)]
    s = pair.server
    events = pair.to_client(
        s.authentication_ok()
        + s.parameter_status("server_version", "15.18")
        + s.parameter_status("integer_datetimes", "on")
        + s.backend_key_data(4242, b"\x00\x01\x02\x03")
        + s.ready_for_query()
    )
    assert events == [
        m.AuthenticationOk(),
        m.ParameterStatus("server_version", "15.18"),
        m.ParameterStatus("integer_datetimes", "on"),
        m.BackendKeyData(4242, b"\x00\x01\x02\x03"),
        m.ReadyForQuery("I"),
    ]


def start_streaming(pair: Pair, start: str = "0/3000000") -> None:
    sql = f'START_REPLICATION SLOT "s" {start} TIMELINE 1'
    assert pair.to_server(pair.client.query(sql)) == [m.Query(sql)]
    assert pair.server.state is ServerState.QUERY
    assert pair.to_client(pair.server.copy_both_response()) == [m.CopyBothResponse()]
    assert pair.client.state is ClientState.COPY_BOTH
    assert pair.server.state is ServerState.COPY_BOTH


def fatal(sqlstate: str, message: str) -> dict[str, str]:
    return m.error_fields("FATAL", sqlstate, message)


# ---------------------------------------------------------------------------
# Startup and authentication
# ---------------------------------------------------------------------------


def test_startup_with_trust() -> None:
    pair = Pair()
    startup(pair)
    assert pair.client.state is ClientState.IDLE
    assert pair.server.state is ServerState.READY
    assert pair.client.parameters == {"server_version": "15.18", "integer_datetimes": "on"}
    assert (pair.client.backend_pid, pair.client.secret_key) == (4242, b"\x00\x01\x02\x03")
    assert pair.client.transaction_status == "I"
    assert pair.server.startup_message == m.StartupMessage(STARTUP_PARAMS)


def test_startup_with_md5() -> None:
    pair = Pair()
    pair.to_server(pair.client.startup(STARTUP_PARAMS))
    auth = Authenticator(USER, PASSWORD)
    (request,) = pair.to_client(
        pair.server.authentication_request(m.AuthenticationMD5Password(SALT))
    )
    assert request == m.AuthenticationMD5Password(SALT)
    response = auth.respond(request)
    assert response == m.PasswordMessage(MD5_RESPONSE)
    assert pair.to_server(pair.client.authentication_response(response)) == [response]
    (ok,) = pair.to_client(pair.server.authentication_ok())
    assert ok == m.AuthenticationOk()
    auth.authentication_ok()
    assert auth.method == "md5"
    assert pair.client.state is ClientState.STARTUP


def test_startup_with_cleartext_password() -> None:
    pair = Pair()
    pair.to_server(pair.client.startup(STARTUP_PARAMS))
    auth = Authenticator(USER, PASSWORD)
    (request,) = pair.to_client(
        pair.server.authentication_request(m.AuthenticationCleartextPassword())
    )
    assert isinstance(request, m.AuthenticationCleartextPassword)
    response = auth.respond(request)
    assert pair.to_server(pair.client.authentication_response(response)) == [
        m.PasswordMessage(b"secret")
    ]


def test_bad_password_is_fatal() -> None:
    pair = Pair()
    pair.to_server(pair.client.startup(STARTUP_PARAMS))
    pair.to_client(pair.server.authentication_request(m.AuthenticationMD5Password(SALT)))
    wrong = Authenticator(USER, "wrong").respond(m.AuthenticationMD5Password(SALT))
    assert wrong is not None
    (received,) = pair.to_server(pair.client.authentication_response(wrong))
    assert received != m.PasswordMessage(MD5_RESPONSE)
    fields = fatal("28P01", f'password authentication failed for user "{USER}"')
    (error,) = pair.to_client(pair.server.error(fields))
    assert isinstance(error, m.ErrorResponse)
    assert error.sqlstate == "28P01"
    assert pair.client.state is ClientState.CLOSED
    assert pair.server.state is ServerState.CLOSED


class ScramServerSide:
    """scramp's server half, answering for one role with password ``secret``."""

    def __init__(self, password: str = PASSWORD) -> None:
        mech = scramp.ScramMechanism("SCRAM-SHA-256")
        info = mech.make_auth_info(password, iteration_count=4096)
        self.scram = mech.make_server(lambda _username: info)

    def first(self, msg: m.SASLInitialResponse) -> m.AuthenticationSASLContinue:
        assert msg.data is not None
        self.scram.set_client_first(msg.data.decode())
        return m.AuthenticationSASLContinue(self.scram.get_server_first().encode())

    def final(self, msg: m.SASLResponse) -> m.AuthenticationSASLFinal:
        self.scram.set_client_final(msg.data.decode())
        return m.AuthenticationSASLFinal(self.scram.get_server_final().encode())


def scram_until_final(pair: Pair, auth: Authenticator, side: ScramServerSide) -> bytes:
    """Run SCRAM up to the server-final message; return it (not yet sent)."""
    pair.to_server(pair.client.startup(STARTUP_PARAMS))
    server = pair.server
    (request,) = pair.to_client(
        server.authentication_request(m.AuthenticationSASL(("SCRAM-SHA-256",)))
    )
    assert isinstance(request, m.AuthenticationSASL)
    initial = auth.respond(request)
    assert isinstance(initial, m.SASLInitialResponse)
    assert initial.data is not None
    assert initial.data.startswith(b"n,,n=")
    (received,) = pair.to_server(pair.client.authentication_response(initial))
    assert received == initial  # decoded as SASLInitialResponse, not a password
    (cont,) = pair.to_client(server.authentication_request(side.first(initial)))
    assert isinstance(cont, m.AuthenticationSASLContinue)
    final = auth.respond(cont)
    assert isinstance(final, m.SASLResponse)
    (received,) = pair.to_server(pair.client.authentication_response(final))
    assert received == final  # decoded as SASLResponse
    return side.final(final).data


def test_startup_with_scram() -> None:
    pair = Pair()
    auth = Authenticator(USER, PASSWORD)
    server_final = scram_until_final(pair, auth, ScramServerSide())
    (final,) = pair.to_client(
        pair.server.authentication_request(m.AuthenticationSASLFinal(server_final))
    )
    assert isinstance(final, m.AuthenticationSASLFinal)
    assert auth.respond(final) is None
    assert pair.to_client(pair.server.authentication_ok()) == [m.AuthenticationOk()]
    auth.authentication_ok()
    assert auth.method == "SCRAM-SHA-256"
    assert pair.server.state is ServerState.STARTUP


def test_scram_wrong_server_signature_is_refused() -> None:
    pair = Pair()
    auth = Authenticator(USER, PASSWORD)
    server_final = scram_until_final(pair, auth, ScramServerSide())
    assert server_final.startswith(b"v=")
    forged = b"v=" + bytes(32).hex().encode()  # well-formed, wrong signature
    (final,) = pair.to_client(pair.server.authentication_request(m.AuthenticationSASLFinal(forged)))
    assert isinstance(final, m.AuthenticationSASLFinal)
    with pytest.raises(AuthenticationError, match="SCRAM server verification failed"):
        auth.respond(final)
    # A server that skips the final message cannot sneak past either.
    with pytest.raises(ProtocolViolation, match="before completing SCRAM"):
        auth.authentication_ok()


def test_scram_wrong_password_rejected_by_server() -> None:
    pair = Pair()
    auth = Authenticator(USER, "wrong")
    with pytest.raises(scramp.ScramException):
        scram_until_final(pair, auth, ScramServerSide())
    (error,) = pair.to_client(
        pair.server.error(fatal("28P01", f'password authentication failed for user "{USER}"'))
    )
    assert isinstance(error, m.ErrorResponse)
    assert pair.client.state is ClientState.CLOSED


def test_server_refuses_ok_before_sasl_final() -> None:
    pair = Pair()
    scram_until_final(pair, Authenticator(USER, PASSWORD), ScramServerSide())
    with pytest.raises(LocalProtocolError, match="SASLFinal"):
        pair.server.authentication_ok()


def test_server_refuses_invalid_sasl_mechanism() -> None:
    pair = Pair()
    pair.to_server(pair.client.startup(STARTUP_PARAMS))
    pair.to_client(pair.server.authentication_request(m.AuthenticationSASL(("SCRAM-SHA-256",))))
    bogus = m.SASLInitialResponse("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=x")
    with pytest.raises(ProtocolViolation, match="invalid SASL authentication mechanism"):
        pair.to_server(pair.client.authentication_response(bogus))


def test_negotiate_protocol_version() -> None:
    pair = Pair()
    params = {**STARTUP_PARAMS, "_pq_.future": "1"}
    (startup_msg,) = pair.to_server(pair.client.startup(params))
    assert isinstance(startup_msg, m.StartupMessage)
    assert startup_msg.parameters["_pq_.future"] == "1"
    events = pair.to_client(
        pair.server.negotiate_protocol_version(0, ["_pq_.future"]) + pair.server.authentication_ok()
    )
    assert events == [m.NegotiateProtocolVersion(0, ("_pq_.future",)), m.AuthenticationOk()]


# ---------------------------------------------------------------------------
# Queries and streaming
# ---------------------------------------------------------------------------


def test_query_with_rows() -> None:
    pair = Pair()
    startup(pair)
    assert pair.to_server(pair.client.query("IDENTIFY_SYSTEM")) == [m.Query("IDENTIFY_SYSTEM")]
    s = pair.server
    events = pair.to_client(
        s.row_description(
            [
                "systemid",
                m.FieldDescription("timeline", type_oid=20, type_size=8),
                "xlogpos",
                "dbname",
            ]
        )
        + s.data_row(["7711506486921884499", "1", b"0/15015B8", None])
        + s.command_complete("IDENTIFY_SYSTEM")
        + s.ready_for_query()
    )
    desc, row, done, ready = events
    assert isinstance(desc, m.RowDescription)
    assert desc.names == ("systemid", "timeline", "xlogpos", "dbname")
    assert row == m.DataRow((b"7711506486921884499", b"1", b"0/15015B8", None))
    assert done == m.CommandComplete("IDENTIFY_SYSTEM")
    assert ready == m.ReadyForQuery("I")
    assert pair.client.state is ClientState.IDLE
    assert pair.server.state is ServerState.READY


def test_empty_query() -> None:
    pair = Pair()
    startup(pair)
    pair.to_server(pair.client.query(""))
    events = pair.to_client(pair.server.empty_query_response() + pair.server.ready_for_query())
    assert events == [m.EmptyQueryResponse(), m.ReadyForQuery("I")]


def test_streaming_with_status_updates() -> None:
    pair = Pair()
    startup(pair)
    start_streaming(pair)
    s, c = pair.server, pair.client
    wal = bytes(range(256)) * 32
    xlog1 = XLogData(LSN(0x3000000), LSN(0x3004000), 1000, wal)
    xlog2 = XLogData(LSN(0x3002000), LSN(0x3004000), 1001, wal)
    events = pair.to_client(
        s.xlog_data(xlog1) + s.keepalive(LSN(0x3004000), 1002) + s.xlog_data(xlog2)
    )
    assert events == [xlog1, PrimaryKeepalive(LSN(0x3004000), 1002, False), xlog2]
    status = StandbyStatusUpdate(LSN(0x3004000), LSN(0x3002000), LSN(0), 2000, True)
    feedback = HotStandbyFeedback(2001, 1234, 0, 0, 0)
    assert pair.to_server(c.copy_data(status.encode()) + c.copy_data(feedback.encode())) == [
        status,
        feedback,
    ]
    # replyRequested is answered by an immediate keepalive.
    assert pair.to_client(s.keepalive(0x3004000, 2002, reply_requested=True)) == [
        PrimaryKeepalive(LSN(0x3004000), 2002, True)
    ]
    # The raw copy_data path frames the same bytes.
    assert s.copy_data(xlog1.encode()) == s.xlog_data(xlog1)


def test_client_ends_streaming() -> None:
    pair = Pair()
    startup(pair)
    start_streaming(pair)
    s, c = pair.server, pair.client
    assert pair.to_server(c.copy_done()) == [m.CopyDone()]
    assert c.client_copy_done
    assert s.client_copy_done
    assert s.state is ServerState.COPY_BOTH
    # Data already in flight still arrives after the client's CopyDone.
    xlog = XLogData(LSN(0x3000000), LSN(0x3000010), 5, b"x" * 16)
    assert pair.to_client(s.xlog_data(xlog)) == [xlog]
    events = pair.to_client(
        s.copy_done()
        + s.command_complete("START_STREAMING")
        + s.command_complete("START_REPLICATION")
        + s.ready_for_query()
    )
    assert events == [
        m.CopyDone(),
        m.CommandComplete("START_STREAMING"),
        m.CommandComplete("START_REPLICATION"),
        m.ReadyForQuery("I"),
    ]
    assert c.state is ClientState.IDLE
    assert s.state is ServerState.READY


def test_end_of_timeline() -> None:
    pair = Pair()
    startup(pair)
    start_streaming(pair)
    s, c = pair.server, pair.client
    last = XLogData(LSN(0x3000000), LSN(0x3000100), 5, b"y" * 0x100)
    assert pair.to_client(s.xlog_data(last) + s.copy_done()) == [last, m.CopyDone()]
    assert c.server_copy_done
    assert s.server_copy_done
    assert c.state is ClientState.COPY_BOTH
    # The client may still report its positions before its own CopyDone.
    status = StandbyStatusUpdate(LSN(0x3000100), LSN(0x3000100), LSN(0), 6)
    assert pair.to_server(c.copy_data(status.encode())) == [status]
    assert pair.to_server(c.copy_done()) == [m.CopyDone()]
    assert s.state is ServerState.QUERY
    assert c.state is ClientState.QUERY
    events = pair.to_client(
        s.row_description(
            [m.FieldDescription("next_tli", type_oid=20, type_size=8), "next_tli_startpos"]
        )
        + s.data_row(["2", "0/3000100"])
        + s.command_complete("START_STREAMING")
        + s.command_complete("START_REPLICATION")
        + s.ready_for_query()
    )
    assert [type(e) for e in events] == [
        m.RowDescription,
        m.DataRow,
        m.CommandComplete,
        m.CommandComplete,
        m.ReadyForQuery,
    ]
    assert events[1] == m.DataRow((b"2", b"0/3000100"))
    assert c.state is ClientState.IDLE
    assert s.state is ServerState.READY
    # And the next timeline can be streamed on the same connection.
    start_streaming(pair, "0/3000000")


def test_shutdown_ends_copy_without_copy_done() -> None:
    pair = Pair()
    startup(pair)
    start_streaming(pair)
    s, c = pair.server, pair.client
    xlog = XLogData(LSN(0x3000000), LSN(0x3000008), 5, b"z" * 8)
    events = pair.to_client(
        s.xlog_data(xlog)
        + s.keepalive(0x3000008, 6, reply_requested=True)
        + s.command_complete("COPY 0")
    )
    assert events == [xlog, PrimaryKeepalive(LSN(0x3000008), 6, True), m.CommandComplete("COPY 0")]
    assert c.state is ClientState.QUERY
    assert s.state is ServerState.QUERY
    s.close()
    assert s.state is ServerState.CLOSED
    assert c.receive_eof() == [ConnectionClosed()]
    assert c.state is ClientState.CLOSED


def test_timeline_switch_point_skips_copy() -> None:
    # START_REPLICATION at exactly the switch point: result and tags only.
    pair = Pair()
    startup(pair)
    pair.to_server(pair.client.query("START_REPLICATION 0/3000100 TIMELINE 1"))
    s = pair.server
    events = pair.to_client(
        s.row_description(["next_tli", "next_tli_startpos"])
        + s.data_row(["2", "0/3000100"])
        + s.command_complete("START_STREAMING")
        + s.command_complete("START_REPLICATION")
        + s.ready_for_query()
    )
    assert len(events) == 5
    assert pair.client.state is ClientState.IDLE


# ---------------------------------------------------------------------------
# ErrorResponse in each state
# ---------------------------------------------------------------------------


def test_error_answering_encryption_request() -> None:
    pair = Pair()
    (request,) = pair.to_server(pair.client.ssl_request())
    assert request == m.SSLRequest()
    (error,) = pair.to_client(pair.server.error(fatal("53300", "sorry, too many clients already")))
    assert isinstance(error, m.ErrorResponse)
    assert error.sqlstate == "53300"
    assert pair.client.state is ClientState.CLOSED
    assert pair.server.state is ServerState.CLOSED


def test_error_during_authentication() -> None:
    pair = Pair()
    pair.to_server(pair.client.startup(STARTUP_PARAMS))
    fields = fatal("28000", 'no pg_hba.conf entry for replication connection from host "[local]"')
    (error,) = pair.to_client(pair.server.error(fields))
    assert isinstance(error, m.ErrorResponse)
    assert pair.client.state is ClientState.CLOSED
    assert pair.server.state is ServerState.CLOSED


def test_error_after_authentication_ok() -> None:
    pair = Pair()
    pair.to_server(pair.client.startup(STARTUP_PARAMS))
    fields = fatal("42501", "must be superuser or replication role to start walsender")
    events = pair.to_client(pair.server.authentication_ok() + pair.server.error(fields))
    assert [type(e) for e in events] == [m.AuthenticationOk, m.ErrorResponse]
    assert pair.client.state is ClientState.CLOSED
    assert pair.server.state is ServerState.CLOSED


def test_fatal_error_while_idle() -> None:
    pair = Pair()
    startup(pair)
    with pytest.raises(LocalProtocolError, match="FATAL"):
        pair.server.error(m.error_fields("ERROR", "XX000", "not while idle"))
    fields = fatal("57P01", "terminating connection due to administrator command")
    (error,) = pair.to_client(pair.server.error(fields))
    assert isinstance(error, m.ErrorResponse)
    assert pair.client.state is ClientState.CLOSED
    assert pair.server.state is ServerState.CLOSED


def test_error_in_query() -> None:
    pair = Pair()
    startup(pair)
    pair.to_server(pair.client.query("SHOW no_such_setting"))
    s = pair.server
    events = pair.to_client(
        s.error(m.error_fields("ERROR", "42704", 'unrecognized configuration parameter "x"'))
        + s.ready_for_query()
    )
    assert [type(e) for e in events] == [m.ErrorResponse, m.ReadyForQuery]
    assert pair.client.state is ClientState.IDLE
    assert s.state is ServerState.READY


def test_error_in_copy_both() -> None:
    pair = Pair()
    startup(pair)
    start_streaming(pair)
    s = pair.server
    fields = m.error_fields(
        "ERROR", "58P01", "requested WAL segment 000000010000000000000003 has already been removed"
    )
    events = pair.to_client(s.error(fields) + s.ready_for_query())
    assert [type(e) for e in events] == [m.ErrorResponse, m.ReadyForQuery]
    assert pair.client.state is ClientState.IDLE
    assert s.state is ServerState.READY


def test_fatal_error_in_copy_both() -> None:
    pair = Pair()
    startup(pair)
    start_streaming(pair)
    pair.to_client(pair.server.error(fatal("57P01", "terminating connection")))
    assert pair.client.state is ClientState.CLOSED
    assert pair.server.state is ServerState.CLOSED


def test_notices_in_every_session_state() -> None:
    pair = Pair()
    pair.to_server(pair.client.startup(STARTUP_PARAMS))
    notice = m.error_fields("WARNING", "01000", "careful")
    s = pair.server
    assert pair.to_client(s.notice(notice)) == [m.NoticeResponse(notice)]
    pair.to_client(s.authentication_ok() + s.notice(notice) + s.ready_for_query())
    assert pair.to_client(s.notice(notice) + s.parameter_status("in_hot_standby", "off")) == [
        m.NoticeResponse(notice),
        m.ParameterStatus("in_hot_standby", "off"),
    ]
    start_streaming(pair)
    assert pair.to_client(s.notice(notice)) == [m.NoticeResponse(notice)]
    assert pair.client.parameters["in_hot_standby"] == "off"


# ---------------------------------------------------------------------------
# Encryption negotiation
# ---------------------------------------------------------------------------


def test_ssl_accepted() -> None:
    pair = Pair()
    assert pair.to_server(pair.client.ssl_request()) == [m.SSLRequest()]
    assert pair.server.state is ServerState.ENCRYPTION_REQUESTED
    answer = pair.server.encryption_response(True)
    assert answer == b"S"
    assert pair.to_client(answer) == [EncryptionResponse(True)]
    assert pair.server.encryption == "ssl"
    # (The shells run the TLS handshake here; the machines just carry on.)
    startup(pair)


def test_ssl_refused() -> None:
    pair = Pair()
    pair.to_server(pair.client.ssl_request())
    assert pair.to_client(pair.server.encryption_response(False)) == [EncryptionResponse(False)]
    assert pair.server.encryption is None
    startup(pair)


def test_gss_refused_then_ssl_accepted() -> None:
    pair = Pair()
    assert pair.to_server(pair.client.gssenc_request()) == [m.GSSENCRequest()]
    assert pair.to_client(pair.server.encryption_response(False)) == [EncryptionResponse(False)]
    pair.to_server(pair.client.ssl_request())
    assert pair.to_client(pair.server.encryption_response(True)) == [EncryptionResponse(True)]
    startup(pair)


def test_gss_accepted_answers_g() -> None:
    pair = Pair()
    pair.to_server(pair.client.gssenc_request())
    answer = pair.server.encryption_response(True)
    assert answer == b"G"
    assert pair.to_client(answer) == [EncryptionResponse(True)]
    assert pair.server.encryption == "gss"


def test_client_refuses_wrong_acceptance_letter() -> None:
    client = ClientConnection()
    client.gssenc_request()
    with pytest.raises(ProtocolViolation, match="invalid response to encryption negotiation"):
        client.receive_data(b"S")
    client = ClientConnection()
    client.ssl_request()
    with pytest.raises(ProtocolViolation, match="invalid response to encryption negotiation"):
        client.receive_data(b"G")


def test_second_ssl_request_is_refused() -> None:
    pair = Pair()
    pair.to_server(pair.client.ssl_request())
    pair.server.encryption_response(True)
    with pytest.raises(
        ProtocolViolation, match=r"unsupported frontend protocol 1234\.5679"
    ) as info:
        pair.to_server(m.SSLRequest().encode())
    assert info.value.sqlstate == "0A000"
    # Nor GSS over SSL.
    server = ServerConnection()
    server.receive_data(m.SSLRequest().encode())
    server.encryption_response(True)
    with pytest.raises(ProtocolViolation, match=r"1234\.5680"):
        server.receive_data(m.GSSENCRequest().encode())


@pytest.mark.parametrize("split", [whole, bytewise])
def test_client_rejects_data_pipelined_after_s(split: Splitter) -> None:
    # CVE-2021-23222: a man in the middle appends plaintext after 'S'.
    client = ClientConnection()
    client.ssl_request()
    forged = b"S" + m.AuthenticationOk().encode()
    with pytest.raises(ProtocolViolation, match=r"unencrypted data|before the startup packet"):
        feed(client, split, forged)
    assert client.state is ClientState.CLOSED


def test_client_rejects_a_single_stray_byte_after_s() -> None:
    # Even one byte, in a later read, would otherwise sit in front of the
    # first decrypted message.
    client = ClientConnection()
    client.ssl_request()
    assert client.receive_data(b"S") == [EncryptionResponse(True)]
    with pytest.raises(ProtocolViolation, match="before the startup packet"):
        client.receive_data(b"R")


@pytest.mark.parametrize("split", [whole, bytewise])
def test_server_rejects_data_pipelined_after_ssl_request(split: Splitter) -> None:
    server = ServerConnection()
    pipelined = m.SSLRequest().encode() + m.StartupMessage(STARTUP_PARAMS).encode()
    with pytest.raises(ProtocolViolation, match="received unencrypted data after SSL request"):
        feed(server, split, pipelined)
    assert server.state is ServerState.CLOSED
    # The shell may still tell the client why.
    assert server.error(fatal("08P01", "received unencrypted data after SSL request"))[:1] == b"E"
    with pytest.raises(LocalProtocolError):
        server.error(fatal("08P01", "twice"))


def test_server_rejects_data_pipelined_after_gssenc_request() -> None:
    server = ServerConnection()
    with pytest.raises(ProtocolViolation, match="after GSSAPI encryption request"):
        server.receive_data(m.GSSENCRequest().encode() + b"\0")


def test_encryption_answered_with_error_response() -> None:
    # A server failing before negotiation answers 'E' and an ErrorResponse.
    client = ClientConnection()
    client.ssl_request()
    (error,) = client.receive_data(m.ErrorResponse(fatal("53300", "too many")).encode())
    assert isinstance(error, m.ErrorResponse)
    assert client.state is ClientState.CLOSED


def test_cancel_request() -> None:
    server = ServerConnection()
    request = m.CancelRequest(4242, b"\x00\x01\x02\x03")
    assert server.receive_data(request.encode() + b"ignored") == [request]
    assert server.state is ServerState.CLOSED
    assert server.receive_data(b"more") == []


# ---------------------------------------------------------------------------
# Pipelining, chunking, stray and early messages
# ---------------------------------------------------------------------------


def full_conversation(split: Splitter) -> Pair:
    """Startup, a query, streaming, end of timeline and Terminate."""
    pair = Pair(split)
    pair.to_server(pair.client.ssl_request())
    pair.to_client(pair.server.encryption_response(False))
    startup(pair)
    pair.to_server(pair.client.query("IDENTIFY_SYSTEM"))
    s, c = pair.server, pair.client
    pair.to_client(
        s.row_description(["systemid", "timeline", "xlogpos", "dbname"])
        + s.data_row(["1", "1", "0/3000000", None])
        + s.command_complete("IDENTIFY_SYSTEM")
        + s.ready_for_query()
    )
    start_streaming(pair)
    pair.to_client(
        b"".join(
            s.xlog_data(XLogData(LSN(0x3000000 + i * 100), LSN(0x3001000), i, bytes([i]) * 100))
            for i in range(20)
        )
        + s.keepalive(0x3001000, 99, True)
    )
    pair.to_server(
        c.copy_data(StandbyStatusUpdate(LSN(0x3000000), LSN(0), LSN(0), 1).encode())
        + c.copy_data(HotStandbyFeedback(1).encode())
    )
    pair.to_client(s.copy_done())
    pair.to_server(c.copy_done())
    pair.to_client(
        s.row_description(["next_tli", "next_tli_startpos"])
        + s.data_row(["2", "0/3000100"])
        + s.command_complete("START_STREAMING")
        + s.command_complete("START_REPLICATION")
        + s.ready_for_query()
    )
    pair.to_server(c.terminate())
    assert s.state is ServerState.CLOSED
    return pair


def test_byte_at_a_time_equals_whole() -> None:
    a = full_conversation(whole)
    b = full_conversation(bytewise)
    assert a.client_log == b.client_log
    assert a.server_log == b.server_log
    assert len(a.client_log) > 30
    assert a.server_log[-1] == m.Terminate()


def test_many_messages_in_one_feed() -> None:
    """One read carrying the end of a stream, the timeline switch and the next prompt."""
    pair = Pair()
    startup(pair)
    start_streaming(pair)
    s, c = pair.server, pair.client
    # The client has asked to stop; the server flushes what it had.
    pair.to_server(c.copy_done())
    xlogs = [XLogData(LSN(0x3000000 + i * 8), LSN(0x3000100), i, bytes([i]) * 8) for i in range(32)]
    burst = (
        b"".join(s.xlog_data(x) for x in xlogs)
        + s.keepalive(0x3000100, 99)
        + s.copy_done()
        + s.row_description(["next_tli", "next_tli_startpos"])
        + s.data_row(["2", "0/3000100"])
        + s.command_complete("START_STREAMING")
        + s.command_complete("START_REPLICATION")
        + s.ready_for_query()
    )
    events = c.receive_data(burst)
    assert events[:32] == xlogs
    assert events[32:] == [
        PrimaryKeepalive(LSN(0x3000100), 99, False),
        m.CopyDone(),
        m.RowDescription((m.FieldDescription("next_tli"), m.FieldDescription("next_tli_startpos"))),
        m.DataRow((b"2", b"0/3000100")),
        m.CommandComplete("START_STREAMING"),
        m.CommandComplete("START_REPLICATION"),
        m.ReadyForQuery("I"),
    ]
    assert c.state is ClientState.IDLE
    # And the other way: a client's status updates, CopyDone, next command, goodbye.
    pair = Pair()
    startup(pair)
    start_streaming(pair)
    status = StandbyStatusUpdate(LSN(1), LSN(1), LSN(0), 1)
    events = pair.server.receive_data(
        m.CopyData(status.encode()).encode() * 3
        + m.CopyDone().encode()
        + m.Query("IDENTIFY_SYSTEM").encode()
        + m.Terminate().encode()
    )
    assert events == [status] * 3 + [m.CopyDone(), m.Query("IDENTIFY_SYSTEM"), m.Terminate()]
    assert pair.server.state is ServerState.CLOSED


def test_pipelined_queries() -> None:
    pair = Pair()
    startup(pair)
    s = pair.server
    events = pair.to_server(
        m.Query("IDENTIFY_SYSTEM").encode()
        + m.Query("SHOW wal_segment_size").encode()
        + m.Query("TIMELINE_HISTORY 2").encode()
    )
    assert [e for e in events if isinstance(e, m.Query)] == events
    assert len(events) == 3
    assert s.state is ServerState.QUERY
    assert s.pending_queries == 2
    s.command_complete("IDENTIFY_SYSTEM")
    s.ready_for_query()
    assert (s.state, s.pending_queries) == (ServerState.QUERY, 1)
    s.command_complete("SHOW")
    s.ready_for_query()
    s.command_complete("TIMELINE_HISTORY")
    s.ready_for_query()
    assert (s.state, s.pending_queries) == (ServerState.READY, 0)


def test_query_pipelined_before_startup_ready() -> None:
    pair = Pair()
    pair.to_server(pair.client.startup(STARTUP_PARAMS))
    s = pair.server
    s.authentication_ok()
    assert pair.to_server(m.Query("IDENTIFY_SYSTEM").encode()) == [m.Query("IDENTIFY_SYSTEM")]
    assert s.pending_queries == 1
    s.ready_for_query()
    assert s.state is ServerState.QUERY


def test_terminate_closes_and_discards_the_rest() -> None:
    pair = Pair()
    startup(pair)
    assert pair.to_server(m.Terminate().encode() + b"garbage\xff\xff") == [m.Terminate()]
    assert pair.server.state is ServerState.CLOSED
    assert pair.server.receive_data(b"more garbage") == []
    assert pair.server.receive_eof() == []
    with pytest.raises(LocalProtocolError):
        pair.server.error(fatal("08P01", "nobody is listening"))


def test_terminate_during_authentication_and_streaming() -> None:
    pair = Pair()
    pair.to_server(pair.client.startup(STARTUP_PARAMS))
    pair.server.authentication_request(m.AuthenticationMD5Password(SALT))
    assert pair.to_server(pair.client.terminate()) == [m.Terminate()]
    assert pair.server.state is ServerState.CLOSED
    pair = Pair()
    startup(pair)
    start_streaming(pair)
    assert pair.to_server(pair.client.terminate()) == [m.Terminate()]
    assert pair.server.state is ServerState.CLOSED


def test_stray_copy_messages_outside_copy_are_ignored() -> None:
    # PostgreSQL's main loop accepts and ignores CopyData/CopyDone/CopyFail.
    pair = Pair()
    startup(pair)
    stray = m.CopyDone().encode() + m.CopyData(b"r").encode() + m.CopyFail("x").encode()
    assert pair.to_server(stray) == [m.CopyDone(), m.CopyData(b"r"), m.CopyFail("x")]
    assert pair.server.state is ServerState.READY


def test_client_copy_done_then_pipelined_query() -> None:
    # After its CopyDone the client's next message is the next command, read
    # once the server has finished its side of the COPY.
    pair = Pair()
    startup(pair)
    start_streaming(pair)
    s = pair.server
    events = pair.to_server(m.CopyDone().encode() + m.Query("IDENTIFY_SYSTEM").encode())
    assert events == [m.CopyDone(), m.Query("IDENTIFY_SYSTEM")]
    assert s.state is ServerState.COPY_BOTH
    assert s.pending_queries == 1
    s.copy_done()
    s.command_complete("START_STREAMING")
    s.command_complete("START_REPLICATION")
    s.ready_for_query()
    assert s.state is ServerState.QUERY  # answering IDENTIFY_SYSTEM


def test_copy_done_racing_copy_done() -> None:
    # Both sides end COPY at the same moment: each CopyDone crosses the other.
    pair = Pair()
    startup(pair)
    start_streaming(pair)
    s, c = pair.server, pair.client
    from_server = s.copy_done()
    from_client = c.copy_done()
    assert pair.to_server(from_client) == [m.CopyDone()]
    assert pair.to_client(from_server) == [m.CopyDone()]
    assert s.state is ServerState.QUERY
    assert c.state is ClientState.QUERY


# ---------------------------------------------------------------------------
# Violations by the client
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mtype", sorted(set(b"PBEDSHC")))
def test_extended_query_protocol_is_refused(mtype: int) -> None:
    pair = Pair()
    startup(pair)
    with pytest.raises(
        ProtocolViolation,
        match=r"^extended query protocol not supported in a replication connection$",
    ) as info:
        pair.to_server(bytes([mtype]) + b"\0\0\0\4")
    assert info.value.sqlstate == "08P01"
    assert pair.server.state is ServerState.CLOSED
    error = pair.server.error(m.error_fields("FATAL", info.value.sqlstate, str(info.value)))
    (event,) = pair.to_client(error)
    assert isinstance(event, m.ErrorResponse)
    assert event.message == "extended query protocol not supported in a replication connection"


def test_extended_query_refused_on_its_type_byte_alone() -> None:
    # No need to buffer the body of a message we will refuse anyway.
    pair = Pair()
    startup(pair)
    with pytest.raises(ProtocolViolation, match="extended query protocol"):
        pair.to_server(b"P")


def test_fastpath_function_call_is_refused() -> None:
    pair = Pair()
    startup(pair)
    with pytest.raises(ProtocolViolation, match="fastpath function calls not supported"):
        pair.to_server(b"F\0\0\0\4")


def test_password_message_after_authentication() -> None:
    pair = Pair()
    startup(pair)
    with pytest.raises(ProtocolViolation, match="invalid frontend message type 112"):
        pair.to_server(m.PasswordMessage(b"x").encode())


def test_unsolicited_password() -> None:
    pair = Pair()
    pair.to_server(pair.client.startup(STARTUP_PARAMS))
    with pytest.raises(
        ProtocolViolation, match="unexpected message type 'p' during authentication"
    ):
        pair.to_server(m.PasswordMessage(b"x").encode())


def test_query_during_authentication() -> None:
    pair = Pair()
    pair.to_server(pair.client.startup(STARTUP_PARAMS))
    pair.server.authentication_request(m.AuthenticationCleartextPassword())
    with pytest.raises(ProtocolViolation, match="expected password response, got message type 81"):
        pair.to_server(m.Query("x").encode())


def test_invalid_standby_message_while_streaming() -> None:
    for bad, pattern in [
        (m.Query("IDENTIFY_SYSTEM").encode(), 'invalid standby message type "Q"'),
        (m.CopyFail("x").encode(), 'invalid standby message type "f"'),
        (m.CopyData(b"k" + bytes(17)).encode(), "unexpected streaming message type"),
        (m.CopyData(b"r" + bytes(10)).encode(), "standby status update has 11 bytes"),
        (m.CopyData(b"").encode(), "unexpected streaming message type"),
    ]:
        pair = Pair()
        startup(pair)
        start_streaming(pair)
        with pytest.raises(ProtocolViolation, match=pattern):
            pair.to_server(bad)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"\x7f\xff\xff\xff", "invalid length of startup packet"),
        (b"\x00\x00\x00\x07", "invalid length of startup packet"),
        ((10004 + 1).to_bytes(4, "big"), "invalid length of startup packet"),
        (b"\x16\x03\x01\x02\x00\x01", "invalid length of startup packet"),  # a TLS ClientHello
        (b"\x00\x00\x00\x08\x00\x02\x00\x00", "unsupported frontend protocol 2.0"),
    ],
)
def test_bad_first_packet(data: bytes, pattern: str) -> None:
    with pytest.raises(ProtocolViolation, match=pattern):
        ServerConnection().receive_data(data)


def test_startup_packet_size_limit() -> None:
    big = m.StartupMessage({"user": "u", "options": "x" * 9000}).encode()
    assert len(ServerConnection().receive_data(big)) == 1
    with pytest.raises(ProtocolViolation, match="invalid length of startup packet"):
        ServerConnection(max_startup_size=1000).receive_data(big[:4])


def test_absurd_length_words_rejected_at_once() -> None:
    pair = Pair()
    startup(pair)
    with pytest.raises(ProtocolViolation, match="invalid message length 2147483647"):
        pair.server.receive_data(b"Q\x7f\xff\xff\xff")
    client = ClientConnection()
    client.startup(STARTUP_PARAMS)
    with pytest.raises(ProtocolViolation, match="invalid message length 2147483647"):
        client.receive_data(b"R\x7f\xff\xff\xff")


@pytest.mark.parametrize(
    "data",
    [
        b"\x40\x00\x00\x00",  # a 1 GiB startup packet
        b"\x00\x00\x00\x07",  # one too short for the protocol code
        b"\x16\x03\x01\x02\x00\x01",  # a TLS ClientHello where the packet should be
    ],
)
def test_an_unframeable_startup_packet_is_not_answered(data: bytes) -> None:
    # PostgreSQL: "invalid length of startup packet" is a COMMERROR, logged and
    # never sent (ProcessStartupPacket); the connection just closes (measured on
    # 15, 16 and 18 in tests/test_sender_hostile.py).
    server = ServerConnection()
    with pytest.raises(ProtocolViolation, match="invalid length of startup packet"):
        server.receive_data(data)
    with pytest.raises(LocalProtocolError):
        server.error(fatal("08P01", "invalid length of startup packet"))


def test_an_unframeable_message_is_not_answered() -> None:
    # pq_getmessage's "invalid message length" is a COMMERROR too.
    pair = Pair()
    startup(pair)
    with pytest.raises(ProtocolViolation, match="invalid message length 1073741824"):
        pair.server.receive_data(b"Q\x40\x00\x00\x00")
    with pytest.raises(LocalProtocolError):
        pair.server.error(fatal("08P01", "invalid message length"))
    # A violation inside a well-framed stream is still answered, once.
    pair = Pair()
    startup(pair)
    with pytest.raises(ProtocolViolation, match="invalid frontend message type 97"):
        pair.server.receive_data(b"a\x00\x00\x00\x04")
    assert pair.server.error(fatal("08P01", "invalid frontend message type 97"))[:1] == b"E"


def test_a_standby_message_of_an_unknown_kind_is_not_answered() -> None:
    # ProcessStandbyMessage: COMMERROR "unexpected message type", then exit.
    pair = Pair()
    startup(pair)
    start_streaming(pair)
    with pytest.raises(ProtocolViolation, match="unexpected streaming message type"):
        pair.server.receive_data(m.CopyData(b"e" + bytes(20)).encode())
    with pytest.raises(LocalProtocolError):
        pair.server.error(fatal("08P01", "unexpected message type"))


def test_authentication_messages_are_small() -> None:
    server = ServerConnection()
    server.receive_data(m.StartupMessage(STARTUP_PARAMS).encode())
    server.authentication_request(m.AuthenticationCleartextPassword())
    with pytest.raises(ProtocolViolation, match="limit 65535"):
        server.receive_data(b"p\x00\x01\x00\x00")


def test_eof_mid_message() -> None:
    server = ServerConnection()
    server.receive_data(b"\x00\x00")
    with pytest.raises(ProtocolViolation, match="incomplete startup packet"):
        server.receive_eof()
    pair = Pair()
    startup(pair)
    pair.server.receive_data(b"Q\x00")
    with pytest.raises(ProtocolViolation, match="unexpected EOF"):
        pair.server.receive_eof()


def test_clean_eof() -> None:
    pair = Pair()
    startup(pair)
    assert pair.server.receive_eof() == [ConnectionClosed()]
    assert pair.server.state is ServerState.CLOSED
    assert pair.server.receive_eof() == []


# ---------------------------------------------------------------------------
# Our own misuse
# ---------------------------------------------------------------------------


def test_client_misuse() -> None:
    client = ClientConnection()
    with pytest.raises(LocalProtocolError):
        client.query("IDENTIFY_SYSTEM")
    with pytest.raises(LocalProtocolError):
        client.copy_done()
    with pytest.raises(LocalProtocolError):
        client.copy_data(b"r")
    with pytest.raises(LocalProtocolError):
        client.authentication_response(m.PasswordMessage(b"x"))
    client.startup(STARTUP_PARAMS)
    with pytest.raises(LocalProtocolError):
        client.ssl_request()
    with pytest.raises(LocalProtocolError):
        client.startup(STARTUP_PARAMS)


def test_client_misuse_in_copy() -> None:
    pair = Pair()
    startup(pair)
    start_streaming(pair)
    with pytest.raises(LocalProtocolError):
        pair.client.query("IDENTIFY_SYSTEM")
    pair.client.copy_done()
    with pytest.raises(LocalProtocolError):
        pair.client.copy_done()
    with pytest.raises(LocalProtocolError):
        pair.client.copy_data(b"r")


def _misuse(server: ServerConnection, calls: list[Callable[[ServerConnection], object]]) -> None:
    for call in calls:
        with pytest.raises(LocalProtocolError):
            call(server)


def test_server_misuse_before_startup() -> None:
    _misuse(
        ServerConnection(),
        [
            lambda s: s.encryption_response(True),
            lambda s: s.authentication_ok(),
            lambda s: s.authentication_request(m.AuthenticationCleartextPassword()),
            lambda s: s.parameter_status("a", "b"),
            lambda s: s.ready_for_query(),
            lambda s: s.notice({}),
            lambda s: s.row_description([]),
            lambda s: s.copy_both_response(),
            lambda s: s.xlog_data(XLogData(LSN(0), LSN(0), 0, b"")),
            lambda s: s.negotiate_protocol_version(0),
        ],
    )


def test_server_misuse_during_authentication() -> None:
    server = ServerConnection()
    server.receive_data(m.StartupMessage(STARTUP_PARAMS).encode())
    server.authentication_request(m.AuthenticationMD5Password(SALT))
    _misuse(
        server,
        [
            lambda s: s.authentication_ok(),  # the password has not come yet
            lambda s: s.authentication_request(m.AuthenticationMD5Password(SALT)),
            lambda s: s.ready_for_query(),
            lambda s: s.backend_key_data(1, b"1234"),
            lambda s: s.parameter_status("a", "b"),
        ],
    )
    server = ServerConnection()
    server.receive_data(m.StartupMessage(STARTUP_PARAMS).encode())
    _misuse(
        server,
        [
            lambda s: s.authentication_request(m.AuthenticationSASLContinue(b"")),
            lambda s: s.authentication_request(m.AuthenticationSASLFinal(b"")),
            lambda s: s.authentication_request(m.AuthenticationUnsupported(7)),  # type: ignore[arg-type]
        ],
    )


def test_server_misuse_in_session() -> None:
    pair = Pair()
    startup(pair)
    _misuse(
        pair.server,
        [
            lambda s: s.row_description([]),
            lambda s: s.data_row([]),
            lambda s: s.command_complete("X"),
            lambda s: s.copy_both_response(),
            lambda s: s.ready_for_query(),
            lambda s: s.authentication_ok(),
            lambda s: s.backend_key_data(1, b"1234"),
            lambda s: s.copy_done(),
            lambda s: s.keepalive(0, 0),
        ],
    )
    start_streaming(pair)
    _misuse(
        pair.server,
        [
            lambda s: s.ready_for_query(),
            lambda s: s.row_description([]),
            lambda s: s.copy_both_response(),
        ],
    )
    pair.server.copy_done()
    _misuse(
        pair.server,
        [
            lambda s: s.copy_done(),
            lambda s: s.xlog_data(XLogData(LSN(0), LSN(0), 0, b"")),
            lambda s: s.keepalive(0, 0),
            lambda s: s.copy_data(b"k"),
        ],
    )


def test_server_argument_checks() -> None:
    server = ServerConnection()
    server.receive_data(m.StartupMessage(STARTUP_PARAMS).encode())
    server.authentication_ok()
    with pytest.raises(ValueError, match="cancel key"):
        server.backend_key_data(1, b"123")
    with pytest.raises(ValueError, match="transaction status"):
        server.ready_for_query("X")


def test_server_closed_refuses_everything() -> None:
    server = ServerConnection()
    server.close()
    _misuse(
        server,
        [
            lambda s: s.error(fatal("08P01", "x")),
            lambda s: s.ready_for_query(),
            lambda s: s.notice({}),
        ],
    )


def test_xlog_data_past_the_end_of_the_wal_space_is_a_violation() -> None:
    """A hostile or broken server: WAL ending beyond 2**64 could never be acknowledged."""
    pair = Pair()
    startup(pair)
    start_streaming(pair)
    last = XLogData(LSN(2**64 - 16), LSN(2**64 - 1), 0, bytes(15))  # ends at the last LSN
    assert pair.to_client(pair.server.xlog_data(last)) == [last]
    beyond = XLogData(LSN(2**64 - 16), LSN(2**64 - 1), 0, bytes(16))
    with pytest.raises(ProtocolViolation, match="runs past the end of the WAL"):
        pair.to_client(pair.server.xlog_data(beyond))
    with pytest.raises(ProtocolViolation, match="runs past the end of the WAL"):
        decode_server_copy_data(beyond.encode())
