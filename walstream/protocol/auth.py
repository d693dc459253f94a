"""Answers to the server's authentication requests, without I/O.

The state machine in :mod:`walstream.protocol.client` reports what the server
asked for; :class:`Authenticator` says what to send back and enforces the
client's policy (libpq's ``channel_binding``). SCRAM itself is scramp's, which
is sans-IO too; channel binding ``tls-server-end-point`` hashes the server
certificate the caller hands in (DER bytes, taken from its TLS session).
"""

from __future__ import annotations

import hashlib
from types import ModuleType
from typing import TYPE_CHECKING, Final

from walstream.errors import AuthenticationError, ProtocolViolation
from walstream.protocol import messages as m

if TYPE_CHECKING:
    import scramp

__all__ = ["CHANNEL_BINDING_MODES", "Authenticator", "md5_password", "tls_server_end_point"]


def _scramp() -> ModuleType:
    """scramp, imported on the first SCRAM exchange: trust, md5 and every
    process that never authenticates skip its import (about 25 ms of each start)."""
    import scramp

    module: ModuleType = scramp
    return module


CHANNEL_BINDING_MODES: Final = ("disable", "prefer", "require")
_PLUS: Final = "SCRAM-SHA-256-PLUS"
_SCRAM: Final = "SCRAM-SHA-256"

AuthRequest = (
    m.AuthenticationCleartextPassword
    | m.AuthenticationMD5Password
    | m.AuthenticationSASL
    | m.AuthenticationSASLContinue
    | m.AuthenticationSASLFinal
    | m.AuthenticationUnsupported
)


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """PostgreSQL's MD5 response: ``"md5" + md5hex(md5hex(password + user) + salt)``."""
    inner = hashlib.md5(password.encode() + user.encode()).hexdigest().encode()
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode()


_SIGNATURE_DIGESTS: Final = {
    bytes.fromhex("2a864886f70d010104"): "md5",  # md5WithRSAEncryption
    bytes.fromhex("2a864886f70d010105"): "sha1",  # sha1WithRSAEncryption
    bytes.fromhex("2a864886f70d01010e"): "sha224",
    bytes.fromhex("2a864886f70d01010b"): "sha256",
    bytes.fromhex("2a864886f70d01010c"): "sha384",
    bytes.fromhex("2a864886f70d01010d"): "sha512",
    bytes.fromhex("2a8648ce3d040301"): "sha224",  # ecdsa-with-SHA224
    bytes.fromhex("2a8648ce3d040302"): "sha256",
    bytes.fromhex("2a8648ce3d040303"): "sha384",
    bytes.fromhex("2a8648ce3d040304"): "sha512",
    bytes.fromhex("2a8648ce3d0401"): "sha1",  # ecdsa-with-SHA1
    bytes.fromhex("608648016503040301"): "sha224",  # dsa-with-sha224
    bytes.fromhex("608648016503040302"): "sha256",
    bytes.fromhex("2a8648ce380403"): "sha1",  # dsa-with-sha1
}


def _der_item(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER item at ``pos``."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or pos + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def tls_server_end_point(certificate_der: bytes) -> bytes:
    """SCRAM's ``tls-server-end-point`` binding data (RFC 5929) for a DER certificate.

    The server's certificate hashed, as PostgreSQL computes it on both sides.

    The hash function is the one the certificate's signature uses, except
    that MD5 and SHA-1 become SHA-256 (RFC 5929); a certificate signed
    without a separate digest (Ed25519, RSASSA-PSS) raises ValueError, as
    PostgreSQL cannot bind to it either.
    """
    tag, start, _ = _der_item(certificate_der, 0)  # Certificate ::= SEQUENCE
    if tag != 0x30:
        raise ValueError("not a DER certificate")
    _, _, tbs_end = _der_item(certificate_der, start)  # tbsCertificate
    tag, alg_start, _ = _der_item(certificate_der, tbs_end)  # signatureAlgorithm
    if tag != 0x30:
        raise ValueError("not a DER certificate")
    tag, oid_start, oid_end = _der_item(certificate_der, alg_start)
    if tag != 0x06:
        raise ValueError("not a DER certificate")
    digest = _SIGNATURE_DIGESTS.get(certificate_der[oid_start:oid_end])
    if digest is None:
        raise ValueError("could not determine server certificate signature algorithm")
    if digest in ("md5", "sha1"):
        digest = "sha256"
    return hashlib.new(digest, certificate_der).digest()


def _binding(certificate: bytes) -> bytes:
    try:
        return tls_server_end_point(certificate)
    except ValueError as e:
        raise AuthenticationError(f"could not compute channel binding data: {e}") from e


class Authenticator:
    """One authentication exchange, on behalf of one startup packet's user."""

    def __init__(
        self,
        user: str,
        password: str | None,
        *,
        channel_binding: str = "prefer",
        server_certificate: bytes | None = None,
    ) -> None:
        """``server_certificate``: the server's DER certificate when TLS is in use, else None."""
        if channel_binding not in CHANNEL_BINDING_MODES:
            raise ValueError(f'invalid channel_binding value: "{channel_binding}"')
        if channel_binding == "require" and server_certificate is None:
            raise AuthenticationError("channel binding required, but SSL not in use")
        self.user = user
        self.password = password
        self.channel_binding = channel_binding
        self.server_certificate = server_certificate
        self.method: str | None = None  # what the server made us use, for messages
        self._scram: scramp.ScramClient | None = None
        self._bound = False
        self._final_verified = False

    def _require_password(self) -> str:
        if not self.password:
            raise AuthenticationError("fe_sendauth: no password supplied")
        return self.password

    def _refuse_unbound(self) -> None:
        if self.channel_binding == "require":
            raise AuthenticationError(
                "channel binding required but not supported by server's authentication request"
            )

    def respond(
        self, request: AuthRequest
    ) -> m.PasswordMessage | m.SASLInitialResponse | m.SASLResponse | None:
        """The message that answers ``request``, or None when none is due."""
        if isinstance(request, m.AuthenticationCleartextPassword):
            self._refuse_unbound()
            self.method = "password"
            return m.PasswordMessage(self._require_password().encode())
        if isinstance(request, m.AuthenticationMD5Password):
            self._refuse_unbound()
            self.method = "md5"
            return m.PasswordMessage(
                md5_password(self.user, self._require_password(), request.salt)
            )
        if isinstance(request, m.AuthenticationSASL):
            return self._sasl_start(request.mechanisms)
        if isinstance(request, m.AuthenticationSASLContinue):
            return self._sasl_continue(request.data)
        if isinstance(request, m.AuthenticationSASLFinal):
            self._sasl_final(request.data)
            return None
        raise AuthenticationError(f"{request.method} authentication is not supported by walstream")

    def _sasl_start(self, mechanisms: tuple[str, ...]) -> m.SASLInitialResponse:
        if self._scram is not None:
            raise ProtocolViolation("server restarted a SASL exchange")
        use_plus = (
            self.server_certificate is not None
            and self.channel_binding != "disable"
            and _PLUS in mechanisms
        )
        if self.channel_binding == "require" and not use_plus:
            raise AuthenticationError(
                "channel binding is required, but server did not offer an authentication "
                "method that supports channel binding"
            )
        if not use_plus and _SCRAM not in mechanisms:
            offered = ", ".join(mechanisms) or "none"
            raise AuthenticationError(
                f"none of the server's SASL authentication mechanisms are supported ({offered})"
            )
        password = self._require_password()
        self.method = _PLUS if use_plus else _SCRAM
        scramp = _scramp()
        cert = self.server_certificate
        try:
            if use_plus:
                assert cert is not None
                self._scram = scramp.ScramClient(
                    [_PLUS],
                    self.user,
                    password,
                    channel_binding=("tls-server-end-point", _binding(cert)),
                )
            else:
                # scramp writes the "y,," GS2 header when it was given binding
                # data it does not use; libpq sends "y" exactly when SSL is in
                # use but the server offered no PLUS mechanism, so mirror that.
                binding = (
                    ("tls-server-end-point", _binding(cert))
                    if cert is not None and self.channel_binding != "disable"
                    else None
                )
                self._scram = scramp.ScramClient(
                    [_SCRAM], self.user, password, channel_binding=binding
                )
            first = self._scram.get_client_first()
        except scramp.ScramException as e:
            raise AuthenticationError(f"SCRAM: {e}") from e
        self._bound = use_plus
        return m.SASLInitialResponse(self.method, first.encode())

    def _sasl_continue(self, data: bytes) -> m.SASLResponse:
        if self._scram is None:
            raise ProtocolViolation("SASL continuation without a SASL exchange")
        scramp = _scramp()
        try:
            self._scram.set_server_first(data.decode())
            final = self._scram.get_client_final()
        except (scramp.ScramException, UnicodeDecodeError) as e:
            raise ProtocolViolation(f"invalid SCRAM server-first-message: {e}") from e
        return m.SASLResponse(final.encode())

    def _sasl_final(self, data: bytes) -> None:
        if self._scram is None:
            raise ProtocolViolation("SASL final message without a SASL exchange")
        scramp = _scramp()
        try:
            self._scram.set_server_final(data.decode())
        except (scramp.ScramException, UnicodeDecodeError) as e:
            # The server could not prove it knows the password: never proceed.
            raise AuthenticationError(f"SCRAM server verification failed: {e}") from e
        self._final_verified = True

    def authentication_ok(self) -> None:
        """Check the exchange met the client's policy when the server says Ok."""
        if self._scram is not None and not self._final_verified:
            raise ProtocolViolation("server sent AuthenticationOk before completing SCRAM")
        if self.channel_binding == "require" and not self._bound:
            raise AuthenticationError(
                "channel binding required, but server authenticated client without channel binding"
            )
