"""The sender's authentication in memory, against walstream's own client.

The server side (ServerConnection + ServerAuthenticator) talks to the client
side (ClientConnection + protocol.auth.Authenticator) through byte strings,
with a real TLS handshake between two in-memory SSL objects where channel
binding needs one. libpq and real servers are the oracles in
test_sender_auth_pg.py.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walstream.errors import AuthenticationError
from walstream.protocol import messages as m
from walstream.protocol.auth import Authenticator
from walstream.protocol.client import ClientConnection
from walstream.protocol.server import ServerConnection
from walstream.sender.auth import (
    AuthFailure,
    AuthRequest,
    AuthStep,
    AuthSuccess,
    ClientCertificate,
    ServerAuthenticator,
    encode_step,
    tls_server_end_point,
)
from walstream.sender.hba import ConnectionFacts, parse_hba
from walstream.sender.passwords import Verifier, make_md5_verifier, make_scram_verifier

from .pgcluster import SslFiles, make_test_ca

USER = "repl"
PASSWORD = "s3cret"
SCRAM = make_scram_verifier(PASSWORD, salt=b"0123456789abcdef")
MD5 = make_md5_verifier(PASSWORD, USER)
PASSWORD_FAILED = f'password authentication failed for user "{USER}"'


@dataclass
class Tls:
    client: ssl.SSLObject
    end_point: bytes


@pytest.fixture(scope="module")
def ssl_files(tmp_path_factory: pytest.TempPathFactory) -> SslFiles:
    return make_test_ca(tmp_path_factory.mktemp("ca"), client_user=USER)


def tls_handshake(files: SslFiles) -> Tls:
    """A finished TLS handshake between two in-memory SSL objects."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(files.ca_cert)
    bios = [ssl.MemoryBIO() for _ in range(4)]
    server = server_ctx.wrap_bio(bios[0], bios[1], server_side=True)
    client = client_ctx.wrap_bio(bios[2], bios[3], server_hostname="localhost")
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, obj in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        bios[0].write(bios[3].read())
        bios[2].write(bios[1].read())
        if all(done.values()):
            break
    assert all(done.values())
    der = ssl.PEM_cert_to_DER_cert(Path(files.server_cert).read_text())
    return Tls(client, tls_server_end_point(der))


@pytest.fixture
def tls(ssl_files: SslFiles) -> Tls:
    return tls_handshake(ssl_files)


@dataclass
class Outcome:
    step: AuthStep  # the server's last step
    error: m.ErrorResponse | None  # what the client received instead of Ok
    client_method: str | None  # what the client ended up using
    requests: list[str]  # the request types the client saw


def converse(
    authenticator: ServerAuthenticator,
    client_auth: Authenticator,
    *,
    tamper: Callable[[bytes], bytes] | None = None,
) -> Outcome:
    """Run one authentication between the two state machines, in memory."""
    server, client = ServerConnection(), ClientConnection()
    server.receive_data(client.startup({"user": authenticator.user, "replication": "true"}))
    step = authenticator.start()
    seen: list[str] = []
    while True:
        replies = b""
        for ev in client.receive_data(encode_step(server, step)):
            seen.append(type(ev).__name__)
            if isinstance(ev, m.AuthenticationOk):
                client_auth.authentication_ok()
            elif isinstance(ev, m.ErrorResponse):
                return Outcome(step, ev, client_auth.method, seen)
            else:
                assert not isinstance(ev, m.ReadyForQuery)
                reply = client_auth.respond(ev)  # type: ignore[arg-type]
                if reply is not None:
                    replies += client.authentication_response(reply)
        if not isinstance(step, AuthRequest):
            return Outcome(step, None, client_auth.method, seen)
        if tamper is not None:
            replies = tamper(replies)
        (event,) = server.receive_data(replies)
        step = authenticator.receive(event)


def make(
    method: str,
    verifier: Verifier | None,
    *,
    tls: Tls | None = None,
    user: str = USER,
    options: str = "",
    **kwargs: object,
) -> ServerAuthenticator:
    kind = "hostssl" if method == "cert" or "clientcert" in options else "host"
    rules = parse_hba(f"{kind} replication all 127.0.0.1/32 {method} {options}\n", "pg_hba.conf")
    facts = ConnectionFacts(user, ipaddress.ip_address("127.0.0.1"), ssl=tls is not None)
    kwargs.setdefault("tls_end_point", None if tls is None else tls.end_point)
    return ServerAuthenticator(facts, rules.match(facts), verifier, **kwargs)  # type: ignore[arg-type]


def client(
    password: str | None, tls: Tls | None = None, channel_binding: str = "prefer"
) -> Authenticator:
    cert = None if tls is None else tls.client.getpeercert(binary_form=True)
    return Authenticator(USER, password, channel_binding=channel_binding, server_certificate=cert)


# -- every method, right and wrong passwords --------------------------------------


@pytest.mark.parametrize(
    ("method", "verifier", "client_method"),
    [
        ("scram-sha-256", SCRAM, "SCRAM-SHA-256"),
        ("md5", SCRAM, "SCRAM-SHA-256"),  # md5 lines use SCRAM for a SCRAM secret
        ("md5", MD5, "md5"),
        ("password", SCRAM, "password"),
        ("password", MD5, "password"),
    ],
)
def test_password_methods(method: str, verifier: Verifier, client_method: str) -> None:
    right = converse(make(method, verifier), client(PASSWORD))
    assert right.error is None
    assert isinstance(right.step, AuthSuccess)
    assert right.step.identity == USER
    assert right.client_method == client_method
    assert right.requests[-1] == "AuthenticationOk"

    wrong = converse(make(method, verifier), client("wrong"))
    assert wrong.error is not None
    assert (wrong.error.fields["C"], wrong.error.fields["M"]) == ("28P01", PASSWORD_FAILED)
    assert wrong.error.fields["S"] == "FATAL"
    assert isinstance(wrong.step, AuthFailure)
    assert wrong.step.log_detail is not None
    assert 'line 1: "host replication all 127.0.0.1/32' in wrong.step.log_detail


@pytest.mark.parametrize(
    ("method", "verifier", "requests"),
    [
        # Without a verifier SCRAM goes through the whole exchange, then fails.
        ("scram-sha-256", None, ["AuthenticationSASL", "AuthenticationSASLContinue"]),
        ("md5", None, ["AuthenticationSASL", "AuthenticationSASLContinue"]),
        ("scram-sha-256", MD5, ["AuthenticationSASL", "AuthenticationSASLContinue"]),
        ("password", None, ["AuthenticationCleartextPassword"]),
    ],
)
def test_role_without_usable_verifier_fails_like_a_wrong_password(
    method: str, verifier: Verifier | None, requests: list[str]
) -> None:
    outcome = converse(make(method, verifier), client(PASSWORD))
    assert outcome.requests == [*requests, "ErrorResponse"]
    assert outcome.error is not None
    assert (outcome.error.fields["C"], outcome.error.fields["M"]) == ("28P01", PASSWORD_FAILED)


def test_md5_challenge_for_a_missing_verifier_under_md5_encryption() -> None:
    outcome = converse(make("md5", None, password_encryption="md5"), client(PASSWORD))
    assert outcome.requests == ["AuthenticationMD5Password", "ErrorResponse"]


def test_mock_salt_is_stable_per_role_and_differs_between_roles() -> None:
    def salt(user: str) -> bytes:
        auth = make("scram-sha-256", None, user=user, mock_auth_nonce=b"n" * 32)
        auth.start()
        step = auth.receive(m.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc"))
        assert isinstance(step, AuthRequest)
        assert isinstance(step.message, m.AuthenticationSASLContinue)
        fields = dict(f.split("=", 1) for f in step.message.data.decode().split(","))
        assert fields["i"] == "4096"
        return base64.b64decode(fields["s"])

    assert salt("ghost") == salt("ghost")
    assert salt("ghost") != salt("spirit")
    assert len(salt("ghost")) == 16


def test_trust_and_reject() -> None:
    trusted = converse(make("trust", None), client(None))
    assert isinstance(trusted.step, AuthSuccess)
    assert trusted.requests == ["AuthenticationOk"]
    rejected = converse(make("reject", SCRAM), client(PASSWORD))
    assert rejected.error is not None
    assert rejected.error.fields["C"] == "28000"
    assert rejected.error.fields["M"] == (
        f'pg_hba.conf rejects replication connection for host "127.0.0.1", user "{USER}", '
        "no encryption"
    )


def test_for_connection_looks_up_line_and_verifier() -> None:
    rules = parse_hba("host replication all samenet scram-sha-256\n", "f")
    facts = ConnectionFacts(USER, ipaddress.ip_address("192.0.2.7"))
    auth = ServerAuthenticator.for_connection(
        rules, facts, {USER: SCRAM}, interfaces=[ipaddress.ip_interface("192.0.2.1/24")]
    )
    assert auth.line is rules.lines[0]
    assert auth.verifier is SCRAM
    outsider = ServerAuthenticator.for_connection(rules, facts, {})
    assert outsider.line is None
    assert outsider.verifier is None


def test_no_matching_line() -> None:
    facts = ConnectionFacts(USER, ipaddress.ip_address("192.0.2.1"), ssl=True)
    step = ServerAuthenticator(facts, None, SCRAM).start()
    assert isinstance(step, AuthFailure)
    assert (step.sqlstate, step.message) == (
        "28000",
        f'no pg_hba.conf entry for replication connection from host "192.0.2.1", '
        f'user "{USER}", SSL encryption',
    )


def test_empty_password() -> None:
    auth = make("password", SCRAM)
    auth.start()
    step = auth.receive(m.PasswordMessage(b""))
    assert isinstance(step, AuthFailure)
    assert (step.sqlstate, step.message) == ("28P01", "empty password returned by client")
    assert auth.done


def test_sasl_without_initial_response() -> None:
    auth = make("scram-sha-256", SCRAM, random_bytes=lambda n: b"\x07" * n)
    auth.start()
    step = auth.receive(m.SASLInitialResponse("SCRAM-SHA-256", None))
    assert step == AuthRequest(m.AuthenticationSASLContinue(b""))
    step = auth.receive(m.SASLResponse(b"n,,n=,r=clientnonce"))
    assert isinstance(step, AuthRequest)
    assert isinstance(step.message, m.AuthenticationSASLContinue)
    assert step.message.data.startswith(b"r=clientnonce" + b"BwcH" * 6 + b",s=")


# -- channel binding ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel_binding", "client_method"),
    [
        ("require", "SCRAM-SHA-256-PLUS"),
        ("prefer", "SCRAM-SHA-256-PLUS"),
        ("disable", "SCRAM-SHA-256"),
    ],
)
def test_channel_binding_over_tls(tls: Tls, channel_binding: str, client_method: str) -> None:
    outcome = converse(
        make("scram-sha-256", SCRAM, tls=tls), client(PASSWORD, tls, channel_binding)
    )
    assert outcome.error is None, outcome.error
    assert outcome.client_method == client_method
    wrong = converse(make("scram-sha-256", SCRAM, tls=tls), client("nope", tls, channel_binding))
    assert wrong.error is not None
    assert wrong.error.fields["C"] == "28P01"


def test_plus_is_offered_first_and_only_over_tls(tls: Tls) -> None:
    step = make("scram-sha-256", SCRAM, tls=tls).start()
    assert step == AuthRequest(m.AuthenticationSASL(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")))
    step = make("scram-sha-256", SCRAM).start()
    assert step == AuthRequest(m.AuthenticationSASL(("SCRAM-SHA-256",)))


def test_tls_without_end_point_accepts_y_flag(tls: Tls) -> None:
    # A server that cannot bind (no certificate hash) offers no PLUS; libpq
    # then sends "y" and the server must accept it.
    outcome = converse(
        make("scram-sha-256", SCRAM, tls=tls, tls_end_point=None), client(PASSWORD, tls, "prefer")
    )
    assert outcome.error is None
    assert outcome.client_method == "SCRAM-SHA-256"
    auth = make("scram-sha-256", SCRAM, tls=tls, tls_end_point=None)
    with pytest.raises(AuthenticationError, match="channel binding is required"):
        converse(auth, client(PASSWORD, tls, "require"))


def test_client_that_thinks_we_cannot_bind(tls: Tls) -> None:
    auth = make("scram-sha-256", SCRAM, tls=tls)
    auth.start()
    step = auth.receive(m.SASLInitialResponse("SCRAM-SHA-256", b"y,,n=,r=abc"))
    assert step == AuthFailure(
        "28000",
        "SCRAM channel binding negotiation error",
        "The client supports SCRAM channel binding but thinks the server does not.  "
        "However, this server does support channel binding.",
    )


def test_channel_binding_data_must_match(tls: Tls) -> None:
    def swap_binding(data: bytes) -> bytes:
        # Re-frame the client-final with another certificate hash in c=.
        body = data[5:]
        if not body.startswith(b"c="):
            return data
        attrs = body.split(b",")
        attrs[0] = b"c=" + base64.b64encode(b"p=tls-server-end-point,," + bytes(32))
        new = b",".join(attrs)
        return m.SASLResponse(new).encode()

    outcome = converse(
        make("scram-sha-256", SCRAM, tls=tls), client(PASSWORD, tls, "require"), tamper=swap_binding
    )
    assert outcome.error is not None
    assert (outcome.error.fields["C"], outcome.error.fields["M"]) == (
        "28000",
        "SCRAM channel binding check failed",
    )


def test_end_point_hash_matches_scramp(tmp_path: Path) -> None:
    # scramp (asn1crypto underneath) computes the same RFC 5929 hash, for
    # the digests that map through and the ones replaced by SHA-256.
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID
    from scramp.core import CBindData  # type: ignore[import-untyped]

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.datetime.now(datetime.UTC)
    for key, digest in (
        (ec.generate_private_key(ec.SECP256R1()), hashes.SHA384()),
        (rsa.generate_private_key(65537, 2048), hashes.SHA512()),
        (rsa.generate_private_key(65537, 2048), hashes.SHA256()),
    ):
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, digest)  # type: ignore[arg-type]
        )
        der = cert.public_bytes(serialization.Encoding.DER)
        assert tls_server_end_point(der) == bytes(CBindData.from_der(der)), digest.name
    # SHA-1 (which nothing signs with any more) is replaced by SHA-256: the
    # last certificate relabelled sha1WithRSAEncryption, same length.
    sha1_der = der.replace(bytes.fromhex("2a864886f70d01010b"), bytes.fromhex("2a864886f70d010105"))
    assert tls_server_end_point(sha1_der) == bytes(CBindData.from_der(sha1_der))
    assert tls_server_end_point(sha1_der) == hashlib.sha256(sha1_der).digest()


# -- cert, peer, clientcert -----------------------------------------------------------


def test_cert(tls: Tls) -> None:
    ok = make(
        "cert", None, tls=tls, client_certificate=ClientCertificate(USER), client_ca_loaded=True
    )
    assert ok.start() == AuthSuccess("cert", USER)
    other = make(
        "cert",
        None,
        tls=tls,
        client_certificate=ClientCertificate("someone"),
        client_ca_loaded=True,
    )
    assert other.start() == AuthFailure(
        "28000",
        f'certificate authentication failed for user "{USER}"',
        log_detail=(
            f"provided user name ({USER}) and authenticated user name (someone) do not match\n"
            'Connection matched file "pg_hba.conf" line 1: "hostssl replication all 127.0.0.1/32 '
            'cert "'
        ),
    )
    missing = make("cert", None, tls=tls, client_ca_loaded=True).start()
    assert missing == AuthFailure("28000", "connection requires a valid client certificate")
    no_ca = make("cert", None, tls=tls, client_certificate=ClientCertificate(USER)).start()
    assert no_ca == AuthFailure(
        "28000",
        "client certificates can only be checked if a root certificate store is available",
    )


def test_clientcert_verify_full_after_scram(tls: Tls) -> None:
    def attempt(common_name: str) -> Outcome:
        auth = make(
            "scram-sha-256",
            SCRAM,
            tls=tls,
            options="clientcert=verify-full",
            client_certificate=ClientCertificate(common_name),
            client_ca_loaded=True,
        )
        return converse(auth, client(PASSWORD, tls))

    assert attempt(USER).error is None
    mismatch = attempt("intruder")
    assert mismatch.error is not None
    assert (mismatch.error.fields["C"], mismatch.error.fields["M"]) == ("28P01", PASSWORD_FAILED)


def peer(user: str, peer_user: str | None) -> AuthStep:
    rules = parse_hba("local replication all peer\n", "f")
    facts = ConnectionFacts(user, None)
    return ServerAuthenticator(facts, rules.match(facts), None, peer_user=peer_user).start()


def test_peer() -> None:
    assert peer("postgres", "postgres") == AuthSuccess("peer", "postgres")
    failed = peer("postgres", "root")
    assert isinstance(failed, AuthFailure)
    assert (failed.sqlstate, failed.message) == (
        "28000",
        'Peer authentication failed for user "postgres"',
    )
    assert isinstance(peer("postgres", None), AuthFailure)


# -- robustness -------------------------------------------------------------------------


def scram_ready(tls: bool) -> tuple[ServerAuthenticator, str]:
    auth = make("scram-sha-256", SCRAM, tls=_FAKE_TLS if tls else None)
    auth.start()
    return auth, "SCRAM-SHA-256-PLUS" if tls else "SCRAM-SHA-256"


_FAKE_TLS = Tls(client=None, end_point=bytes(32))  # type: ignore[arg-type]


@settings(max_examples=300)
@given(first=st.binary(max_size=80), final=st.binary(max_size=120), plus=st.booleans())
def test_any_client_messages_end_in_a_step(first: bytes, final: bytes, plus: bool) -> None:
    auth, mechanism = scram_ready(plus)
    step = auth.receive(m.SASLInitialResponse(mechanism, first))
    if isinstance(step, AuthRequest):
        step = auth.receive(m.SASLResponse(final))
    assert isinstance(step, AuthFailure | AuthSuccess)
    if isinstance(step, AuthFailure):
        assert step.sqlstate in ("08P01", "0A000", "28000", "28P01")
        assert step.fields()["S"] == "FATAL"


@given(
    nonce=st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1
    ).filter(lambda s: "," not in s),
    extra=st.lists(st.sampled_from(["x=1", "k=", "z=a=b"]), max_size=3),
)
def test_well_formed_first_messages_get_a_challenge(nonce: str, extra: list[str]) -> None:
    auth, mechanism = scram_ready(False)
    first = ",".join(["n,,n=ignored", f"r={nonce}", *extra]).encode()
    step = auth.receive(m.SASLInitialResponse(mechanism, first))
    assert isinstance(step, AuthRequest)
    assert isinstance(step.message, m.AuthenticationSASLContinue)
    assert step.message.data.startswith(f"r={nonce}".encode())


def test_steps_out_of_order_are_our_bug() -> None:
    from walstream.errors import LocalProtocolError

    auth = make("password", SCRAM)
    with pytest.raises(LocalProtocolError):
        auth.receive(m.PasswordMessage(b"x"))
    auth.start()
    with pytest.raises(LocalProtocolError):
        auth.start()
    with pytest.raises(LocalProtocolError):
        auth.receive(m.SASLResponse(b"x"))
