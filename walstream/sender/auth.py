"""The server side of authentication, as PostgreSQL conducts it, without I/O.

A :class:`ServerAuthenticator` is made for one connection from the facts the
shell knows (the matching pg_hba line, the role's verifier, TLS) and holds the
conversation: :meth:`~ServerAuthenticator.start` and
:meth:`~ServerAuthenticator.receive` return the next step, which is one of

* :class:`AuthRequest`: send this authentication request and feed the
  client's answer (the event :class:`~walstream.protocol.server.ServerConnection`
  decodes) to :meth:`~ServerAuthenticator.receive`;
* :class:`AuthSuccess`: send its SASL final message if any, then
  AuthenticationOk;
* :class:`AuthFailure`: send it as a FATAL ErrorResponse and hang up.

:func:`encode_step` turns a step into bytes through the connection's state
machine, so an asyncio shell is a short loop::

    step = authenticator.start()
    while True:
        writer.write(encode_step(conn, step))
        if not isinstance(step, AuthRequest):
            break                      # success or failure: done
        event = await next_event()     # from conn.receive_data()
        if isinstance(event, ConnectionClosed):
            break                      # the client gave up (libpq without a password)
        step = authenticator.receive(event)

What PostgreSQL does, followed here (auth.c, auth-scram.c, crypt.c):

* ``md5`` lines use SCRAM when the role's verifier is a SCRAM secret; only an
  MD5 verifier gets the MD5 challenge. ``password`` (cleartext) is checked
  against either kind of verifier.
* SCRAM-SHA-256-PLUS (channel binding ``tls-server-end-point``) is offered,
  listed first, only over TLS and only when the shell gives the hash of our
  certificate (:func:`tls_server_end_point`).
* A role without a verifier (or with an MD5 verifier under SCRAM) goes
  through a complete mock exchange, with a salt derived from the role name
  and a per-server secret, and then fails exactly as a wrong password does:
  an unauthenticated client cannot probe which roles exist.
* Malformed SCRAM messages fail with PostgreSQL's SQLSTATE, message and
  detail; every credential failure is 28P01 ``password authentication failed
  for user "..."``.

Randomness (nonces, the MD5 salt) comes from an injectable function, so
tests can replay an exchange byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from walstream.errors import LocalProtocolError
from walstream.protocol import messages as m
from walstream.protocol.auth import tls_server_end_point
from walstream.protocol.server import ServerConnection, ServerEvent
from walstream.sender.hba import (
    ConnectionFacts,
    HbaLine,
    HbaRules,
    InterfaceAddress,
    rejection_message,
)
from walstream.sender.passwords import (
    SCRAM_ITERATIONS_DEFAULT,
    SCRAM_SALT_LENGTH,
    Md5Verifier,
    ScramVerifier,
    Verifier,
    pg_b64_decode,
)

__all__ = [
    "SCRAM_SHA_256",
    "SCRAM_SHA_256_PLUS",
    "AuthFailure",
    "AuthRequest",
    "AuthStep",
    "AuthSuccess",
    "ClientCertificate",
    "ServerAuthenticator",
    "encode_step",
    "tls_server_end_point",
]

SCRAM_SHA_256: Final = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS: Final = "SCRAM-SHA-256-PLUS"

# PostgreSQL's SCRAM_RAW_NONCE_LEN (18 random bytes, 24 base64 characters)
# and MOCK_AUTH_NONCE_LEN.
_RAW_NONCE_LENGTH: Final = 18
_MOCK_NONCE_LENGTH: Final = 32
_MD5_SALT_LENGTH: Final = 4
_KEY_LENGTH: Final = 32
_CBIND_HEADER: Final = b"p=tls-server-end-point,,"

_INVALID_PASSWORD: Final = "28P01"  # ERRCODE_INVALID_PASSWORD
_INVALID_AUTHORIZATION: Final = "28000"  # ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION
_PROTOCOL_VIOLATION: Final = "08P01"
_FEATURE_NOT_SUPPORTED: Final = "0A000"

_process_mock_nonce: bytes | None = None


def _default_mock_nonce() -> bytes:
    # PostgreSQL keeps its mock authentication nonce in pg_control, so a
    # role's mock salt never changes; one per process is the nearest a
    # server without a data directory of its own gets.
    global _process_mock_nonce
    if _process_mock_nonce is None:
        _process_mock_nonce = secrets.token_bytes(_MOCK_NONCE_LENGTH)
    return _process_mock_nonce


# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------

AuthRequestMessage = (
    m.AuthenticationCleartextPassword
    | m.AuthenticationMD5Password
    | m.AuthenticationSASL
    | m.AuthenticationSASLContinue
)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """Send ``message``, then feed the client's answer to :meth:`ServerAuthenticator.receive`."""

    message: AuthRequestMessage


@dataclass(frozen=True, slots=True)
class AuthSuccess:
    """The client is in: send ``final`` (SCRAM's server signature) if set, then AuthenticationOk.

    ``identity`` is PostgreSQL's authenticated identity for the log: the role
    for passwords, the certificate's CN for ``cert``, the OS user for
    ``peer``, None for ``trust``.
    """

    method: str
    identity: str | None
    final: m.AuthenticationSASLFinal | None = None


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Refused: a FATAL ErrorResponse with PostgreSQL's SQLSTATE and words.

    ``log_detail`` is for the server log only (PostgreSQL's errdetail_log):
    it says why, which the client must not learn.
    """

    sqlstate: str
    message: str
    detail: str | None = None
    log_detail: str | None = None

    def fields(self) -> dict[str, str]:
        """The ErrorResponse fields, for :meth:`ServerConnection.error`."""
        return m.error_fields("FATAL", self.sqlstate, self.message, detail=self.detail)


AuthStep = AuthRequest | AuthSuccess | AuthFailure


def encode_step(conn: ServerConnection, step: AuthStep) -> bytes:
    """The bytes that carry ``step`` to the client, through ``conn``'s state machine."""
    if isinstance(step, AuthRequest):
        return conn.authentication_request(step.message)
    if isinstance(step, AuthSuccess):
        out = b"" if step.final is None else conn.authentication_request(step.final)
        return out + conn.authentication_ok()
    return conn.error(step.fields())


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A client certificate the TLS layer verified against our CA.

    ``common_name`` is its subject's first CN, None if it has none.
    """

    common_name: str | None


# ---------------------------------------------------------------------------
# tls-server-end-point (RFC 5929 section 4.1)
# ---------------------------------------------------------------------------


# Signature algorithm OIDs (DER content bytes) -> the digest that signs.
def tls_server_end_point_from_pem(pem: str) -> bytes:
    """:func:`tls_server_end_point` of the first certificate in PEM text (a cert file)."""
    begin = pem.find("-----BEGIN CERTIFICATE-----")
    end = pem.find("-----END CERTIFICATE-----", begin)
    if begin < 0 or end < 0:
        raise ValueError("no certificate in the PEM text")
    block = pem[begin : end + len("-----END CERTIFICATE-----")]
    return tls_server_end_point(ssl.PEM_cert_to_DER_cert(block))


# ---------------------------------------------------------------------------
# SCRAM message parsing, with PostgreSQL's errors
# ---------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, sqlstate: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.failure = AuthFailure(sqlstate, message, detail)


def _malformed(detail: str) -> _Refused:
    return _Refused(_PROTOCOL_VIOLATION, "malformed SCRAM message", detail)


def _sanitize_char(c: str) -> str:
    # PostgreSQL's sanitize_char: printable ASCII quoted, anything else in hex.
    code = ord(c) if c else 0
    return f"'{c}'" if 0x21 <= code <= 0x7E else f"0x{code:02x}"


def _sanitize_str(s: str) -> str:
    # PostgreSQL's sanitize_str: 30 characters at most, non-printables as '?'.
    return "".join(c if 0x21 <= ord(c) <= 0x7E else "?" for c in s[:30])


class _Cursor:
    """Reads SCRAM attributes (``a=value,``) with PostgreSQL's error details.

    The message is latin-1 decoded, so each character is one byte, as the C
    code sees it.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    @property
    def current(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _value(self) -> str:
        end = self.text.find(",", self.pos)
        if end < 0:
            value = self.text[self.pos :]
            self.pos = len(self.text)
        else:
            value = self.text[self.pos : end]
            self.pos = end + 1
        return value

    def attr_value(self, attr: str) -> str:
        """read_attr_value: the value of attribute ``attr``, which must come next."""
        if self.current != attr:
            raise _malformed(
                f'Expected attribute "{attr}" but found "{_sanitize_char(self.current)}".'
            )
        self.pos += 1
        if self.current != "=":
            raise _malformed(f'Expected character "=" for attribute "{attr}".')
        self.pos += 1
        return self._value()

    def any_attr(self) -> tuple[str, str]:
        """read_any_attr: whatever attribute comes next, and its value."""
        attr = self.current
        if not attr:
            raise _malformed("Attribute expected, but found end of string.")
        if not ("A" <= attr <= "Z" or "a" <= attr <= "z"):
            raise _malformed(
                f'Attribute expected, but found invalid character "{_sanitize_char(attr)}".'
            )
        self.pos += 1
        if self.current != "=":
            raise _malformed(f'Expected character "=" for attribute "{attr}".')
        self.pos += 1
        return attr, self._value()


def _check_input(data: bytes) -> str:
    if not data:
        raise _malformed("The message is empty.")
    if b"\0" in data:
        raise _malformed("Message length does not match input length.")
    return data.decode("latin-1")


def _printable(s: str) -> bool:
    # RFC 5802's "printable": %x21-2B / %x2D-7E.
    return all(0x21 <= ord(c) <= 0x7E and c != "," for c in s)


# ---------------------------------------------------------------------------
# The conversation
# ---------------------------------------------------------------------------

_Stage = Literal["new", "password", "md5", "sasl-initial", "sasl-first", "sasl-final", "done"]


class ServerAuthenticator:
    """One connection's authentication, from the pg_hba match to Ok or FATAL.

    ``line`` is the first matching pg_hba line, None when none matched
    (an implicit rejection). ``verifier`` is the role's entry from the
    passwords file, None when it has none. ``tls_end_point`` is
    :func:`tls_server_end_point` of our certificate when the connection is
    TLS (``facts.ssl``); without it SCRAM-SHA-256-PLUS is not offered.
    ``client_certificate`` is the verified client certificate, if any, and
    ``client_ca_loaded`` whether we have a CA to verify one with (PostgreSQL's
    ssl_ca_file). ``peer_user`` is the OS user at the other end of a Unix
    socket (SO_PEERCRED). ``password_encryption`` decides, as the setting
    does in PostgreSQL, what a role without a verifier pretends to have on an
    ``md5`` line.
    """

    def __init__(
        self,
        facts: ConnectionFacts,
        line: HbaLine | None,
        verifier: Verifier | None,
        *,
        tls_end_point: bytes | None = None,
        client_certificate: ClientCertificate | None = None,
        client_ca_loaded: bool = False,
        peer_user: str | None = None,
        password_encryption: Literal["scram-sha-256", "md5"] = "scram-sha-256",
        mock_auth_nonce: bytes | None = None,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.facts = facts
        self.line = line
        self.verifier = verifier
        self.tls_end_point = tls_end_point if facts.ssl else None
        self.client_certificate = client_certificate
        self.client_ca_loaded = client_ca_loaded
        self.peer_user = peer_user
        self.password_encryption = password_encryption
        self._mock_nonce = mock_auth_nonce
        self._random = random_bytes
        self._stage: _Stage = "new"
        self._md5_salt = b""
        # SCRAM state
        self._plus = False  # the client chose SCRAM-SHA-256-PLUS
        self._cbind_flag = ""
        self._doomed = False  # mock exchange, or a verifier SCRAM cannot use
        self._log_detail: str | None = None
        self._iterations = SCRAM_ITERATIONS_DEFAULT
        self._salt = b""
        self._stored_key = bytes(_KEY_LENGTH)
        self._server_key = bytes(_KEY_LENGTH)
        self._client_first_bare = ""
        self._client_nonce = ""
        self._server_nonce = ""
        self._server_first = ""

    @classmethod
    def for_connection(
        cls,
        rules: HbaRules,
        facts: ConnectionFacts,
        verifiers: Mapping[str, Verifier],
        *,
        interfaces: Sequence[InterfaceAddress] = (),
        **kwargs: Any,
    ) -> ServerAuthenticator:
        """The authenticator for a connection: its pg_hba line and its role's verifier looked up.

        ``interfaces`` matter only when :attr:`HbaRules.needs_interfaces`;
        the other keyword arguments are the constructor's.
        """
        return cls(facts, rules.match(facts, interfaces), verifiers.get(facts.user), **kwargs)

    @property
    def user(self) -> str:
        return self.facts.user

    @property
    def method(self) -> str | None:
        return None if self.line is None else self.line.method

    @property
    def done(self) -> bool:
        return self._stage == "done"

    # -- the steps ------------------------------------------------------------

    def start(self) -> AuthStep:
        """The first step: a request, or already the verdict (trust, reject, cert, peer)."""
        if self._stage != "new":
            raise LocalProtocolError("authentication already started")
        line = self.line
        if line is None:
            return self._finish(
                AuthFailure(_INVALID_AUTHORIZATION, rejection_message(self.facts, explicit=False))
            )
        if line.clientcert is not None:
            if not self.client_ca_loaded:
                return self._finish(
                    AuthFailure(
                        _INVALID_AUTHORIZATION,
                        "client certificates can only be checked if a root certificate "
                        "store is available",
                    )
                )
            if self.client_certificate is None:
                return self._finish(
                    AuthFailure(
                        _INVALID_AUTHORIZATION, "connection requires a valid client certificate"
                    )
                )
        method = line.method
        if method == "reject":
            return self._finish(
                AuthFailure(_INVALID_AUTHORIZATION, rejection_message(self.facts, explicit=True))
            )
        if method == "trust":
            return self._succeed(None)
        if method == "password":
            self._stage = "password"
            return AuthRequest(m.AuthenticationCleartextPassword())
        if method == "md5" and self._md5_challenge():
            self._md5_salt = self._random(_MD5_SALT_LENGTH)
            self._stage = "md5"
            return AuthRequest(m.AuthenticationMD5Password(self._md5_salt))
        if method in ("md5", "scram-sha-256"):
            self._scram_init()
            mechanisms: tuple[str, ...] = (SCRAM_SHA_256,)
            if self.tls_end_point is not None:
                mechanisms = (SCRAM_SHA_256_PLUS, SCRAM_SHA_256)
            self._stage = "sasl-initial"
            return AuthRequest(m.AuthenticationSASL(mechanisms))
        if method == "cert":
            return self._check_certificate(None)
        # peer: only on local lines, which only match Unix-socket connections.
        if self.peer_user is None:
            return self._fail("could not get peer credentials")
        if self.peer_user != self.user:
            return self._fail(
                f"provided user name ({self.user}) and authenticated user name "
                f"({self.peer_user}) do not match"
            )
        return self._succeed(self.peer_user)

    def receive(self, event: ServerEvent) -> AuthStep:
        """The next step, given the client's answer to the last :class:`AuthRequest`."""
        stage = self._stage
        try:
            if stage == "password" and isinstance(event, m.PasswordMessage):
                return self._check_cleartext(self._password(event))
            if stage == "md5" and isinstance(event, m.PasswordMessage):
                return self._check_md5(self._password(event))
            if stage == "sasl-initial" and isinstance(event, m.SASLInitialResponse):
                self._plus = event.mechanism == SCRAM_SHA_256_PLUS
                if event.data is None:
                    # No initial response: ask for it with an empty challenge.
                    self._stage = "sasl-first"
                    return AuthRequest(m.AuthenticationSASLContinue(b""))
                return self._client_first(event.data)
            if stage == "sasl-first" and isinstance(event, m.SASLResponse):
                return self._client_first(event.data)
            if stage == "sasl-final" and isinstance(event, m.SASLResponse):
                return self._client_final(event.data)
        except _Refused as e:
            return self._finish(e.failure)
        raise LocalProtocolError(
            f"{type(event).__name__} does not answer the authentication stage {stage!r}"
        )

    # -- outcomes -------------------------------------------------------------

    def _finish(self, step: AuthSuccess | AuthFailure) -> AuthSuccess | AuthFailure:
        self._stage = "done"
        return step

    def _fail(self, log_detail: str | None = None) -> AuthFailure:
        """PostgreSQL's auth_failed: the method's message, the reason only in the log."""
        line = self.line
        assert line is not None
        method = line.method
        sqlstate = _INVALID_AUTHORIZATION
        if method in ("password", "md5", "scram-sha-256"):
            message = f'password authentication failed for user "{self.user}"'
            sqlstate = _INVALID_PASSWORD  # libpq's cue that a .pgpass password failed
        elif method == "trust":
            message = f'"trust" authentication failed for user "{self.user}"'
        elif method == "peer":
            message = f'Peer authentication failed for user "{self.user}"'
        else:
            message = f'certificate authentication failed for user "{self.user}"'
        matched = (
            f'Connection matched file "{line.file_name}" line {line.line_number}: "{line.raw_line}"'
        )
        detail = f"{log_detail}\n{matched}" if log_detail else matched
        failure = AuthFailure(sqlstate, message, log_detail=detail)
        self._finish(failure)
        return failure

    def _succeed(
        self, identity: str | None, final: m.AuthenticationSASLFinal | None = None
    ) -> AuthSuccess | AuthFailure:
        line = self.line
        assert line is not None
        if line.clientcert == "verify-full" and line.method != "cert":
            # clientcert=verify-full: after the method, the certificate must
            # name the role too (PostgreSQL's CheckCertAuth).
            check = self._check_certificate(identity, final)
            return check
        return self._finish(AuthSuccess(line.method, identity, final))

    def _check_certificate(
        self, identity: str | None, final: m.AuthenticationSASLFinal | None = None
    ) -> AuthSuccess | AuthFailure:
        line = self.line
        assert line is not None
        cert = self.client_certificate
        name = None if cert is None else cert.common_name
        if not name:
            return self._fail(
                f'certificate authentication failed for user "{self.user}": '
                "client certificate contains no user name"
            )
        if name != self.user:
            detail = (
                f"provided user name ({self.user}) and authenticated user name ({name}) "
                "do not match"
            )
            if line.method != "cert":
                detail = (
                    f"certificate validation (clientcert=verify-full) failed for user "
                    f'"{self.user}": CN mismatch'
                )
            return self._fail(detail)
        if line.method == "cert":
            identity = name
        return self._finish(AuthSuccess(line.method, identity, final))

    # -- passwords (cleartext and MD5) ----------------------------------------

    def _password(self, msg: m.PasswordMessage) -> bytes:
        if not msg.password:
            raise _Refused(_INVALID_PASSWORD, "empty password returned by client")
        return msg.password

    def _md5_challenge(self) -> bool:
        """Whether an ``md5`` line does MD5 rather than SCRAM (CheckPWChallengeAuth)."""
        if self.verifier is None:
            return self.password_encryption == "md5"
        return isinstance(self.verifier, Md5Verifier)

    def _check_cleartext(self, password: bytes) -> AuthStep:
        verifier = self.verifier
        if verifier is None:
            return self._fail(f'User "{self.user}" has no password assigned.')
        if isinstance(verifier, ScramVerifier):
            ok = verifier.verify_password(password)
        else:
            ok = verifier.verify_password(password, self.user)
        if not ok:
            return self._fail(f'Password does not match for user "{self.user}".')
        return self._succeed(self.user)

    def _check_md5(self, response: bytes) -> AuthStep:
        verifier = self.verifier
        if not isinstance(verifier, Md5Verifier):
            return self._fail(f'User "{self.user}" has no password assigned.')
        if not hmac.compare_digest(response, verifier.expected_response(self._md5_salt)):
            return self._fail(f'Password does not match for user "{self.user}".')
        return self._succeed(self.user)

    # -- SCRAM-SHA-256 (auth-scram.c) ------------------------------------------

    def _scram_init(self) -> None:
        verifier = self.verifier
        if isinstance(verifier, ScramVerifier):
            self._iterations = verifier.iterations
            self._salt = verifier.salt
            self._stored_key = verifier.stored_key
            self._server_key = verifier.server_key
            return
        # Mock authentication: a plausible salt that is the same every time
        # for this role, keys that can never verify.
        if verifier is not None:
            self._log_detail = f'User "{self.user}" does not have a valid SCRAM secret.'
        else:
            self._log_detail = f'User "{self.user}" has no password assigned.'
        nonce = self._mock_nonce if self._mock_nonce is not None else _default_mock_nonce()
        self._salt = hashlib.sha256(self.user.encode("utf-8") + nonce).digest()[:SCRAM_SALT_LENGTH]
        self._iterations = SCRAM_ITERATIONS_DEFAULT
        self._doomed = True

    def _client_first(self, data: bytes) -> AuthStep:
        text = _check_input(data)
        cur = _Cursor(text)
        flag = cur.current
        self._cbind_flag = flag
        if flag in ("n", "y"):
            if self._plus:
                raise _malformed(
                    "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not "
                    "include channel binding data."
                )
            if flag == "y" and self.tls_end_point is not None:
                raise _Refused(
                    _INVALID_AUTHORIZATION,
                    "SCRAM channel binding negotiation error",
                    "The client supports SCRAM channel binding but thinks the server does "
                    "not.  However, this server does support channel binding.",
                )
            cur.pos += 1
            if cur.current != ",":
                raise _malformed(
                    f'Comma expected, but found character "{_sanitize_char(cur.current)}".'
                )
            cur.pos += 1
        elif flag == "p":
            if not self._plus:
                raise _malformed(
                    "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM "
                    "message includes channel binding data."
                )
            binding_type = cur.attr_value("p")
            if binding_type != "tls-server-end-point":
                raise _Refused(
                    _PROTOCOL_VIOLATION,
                    f'unsupported SCRAM channel-binding type "{_sanitize_str(binding_type)}"',
                )
        else:
            raise _malformed(f'Unexpected channel-binding flag "{_sanitize_char(flag)}".')
        if cur.current == "a":
            raise _Refused(
                _FEATURE_NOT_SUPPORTED,
                "client uses authorization identity, but it is not supported",
            )
        if cur.current != ",":
            raise _malformed(
                f'Unexpected attribute "{_sanitize_char(cur.current)}" in client-first-message.'
            )
        cur.pos += 1
        self._client_first_bare = text[cur.pos :]
        if cur.current == "m":
            raise _Refused(_FEATURE_NOT_SUPPORTED, "client requires an unsupported SCRAM extension")
        cur.attr_value("n")  # the user name inside SCRAM is ignored: the startup's counts
        self._client_nonce = cur.attr_value("r")
        if not _printable(self._client_nonce):
            raise _Refused(_PROTOCOL_VIOLATION, "non-printable characters in SCRAM nonce")
        while cur.current:
            cur.any_attr()  # extensions: none supported, all ignored
        self._server_nonce = base64.b64encode(self._random(_RAW_NONCE_LENGTH)).decode("ascii")
        self._server_first = (
            f"r={self._client_nonce}{self._server_nonce},"
            f"s={base64.b64encode(self._salt).decode('ascii')},i={self._iterations}"
        )
        self._stage = "sasl-final"
        return AuthRequest(m.AuthenticationSASLContinue(self._server_first.encode("latin-1")))

    def _client_final(self, data: bytes) -> AuthStep:
        text = _check_input(data)
        cur = _Cursor(text)
        binding = cur.attr_value("c")
        if self._plus:
            assert self.tls_end_point is not None
            expected = base64.b64encode(_CBIND_HEADER + self.tls_end_point).decode("ascii")
            if binding != expected:
                raise _Refused(_INVALID_AUTHORIZATION, "SCRAM channel binding check failed")
        elif not (
            (binding == "biws" and self._cbind_flag == "n")
            or (binding == "eSws" and self._cbind_flag == "y")
        ):
            raise _Refused(
                _PROTOCOL_VIOLATION,
                "unexpected SCRAM channel-binding attribute in client-final-message",
            )
        final_nonce = cur.attr_value("r")
        while True:
            proof_start = cur.pos - 1  # the "," before the attribute
            attr, value = cur.any_attr()
            if attr == "p":
                break
        proof = pg_b64_decode(value)
        if proof is None or len(proof) != _KEY_LENGTH:
            raise _malformed("Malformed proof in client-final-message.")
        if cur.current:
            raise _malformed("Garbage found at the end of client-final-message.")
        without_proof = text[:proof_start]
        if final_nonce != self._client_nonce + self._server_nonce:
            raise _Refused(_PROTOCOL_VIOLATION, "invalid SCRAM response", "Nonce does not match.")
        auth_message = ",".join((self._client_first_bare, self._server_first, without_proof))
        auth_bytes = auth_message.encode("latin-1")
        # The proof is checked even in a mock exchange, so the time taken
        # does not tell whether the role exists.
        signature = hmac.digest(self._stored_key, auth_bytes, "sha256")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        verified = hmac.compare_digest(hashlib.sha256(client_key).digest(), self._stored_key)
        if not verified or self._doomed:
            return self._fail(self._log_detail)
        server_signature = hmac.digest(self._server_key, auth_bytes, "sha256")
        final = m.AuthenticationSASLFinal(b"v=" + base64.b64encode(server_signature))
        return self._succeed(self.user, final)
