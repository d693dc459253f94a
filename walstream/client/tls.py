"""TLS for client connections, following libpq's ``sslmode`` rules.

Python's own host-name check differs from libpq's (it never falls back to the
certificate's CN, and its messages differ), so for ``verify-full`` we let the
ssl module verify the chain only and check the name ourselves, after the
handshake, with libpq's rules and messages.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from walstream.errors import ConnectError

__all__ = ["TlsPolicy", "check_host_name", "make_context"]

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_TLS_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """The TLS-related connection parameters, already defaulted."""

    sslmode: str = "prefer"
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    sslcrl: str | None = None
    sslpassword: str | None = None
    sslsni: bool = True
    min_protocol: str | None = "TLSv1.2"
    max_protocol: str | None = None

    @property
    def attempt(self) -> bool:
        return self.sslmode != "disable"

    @property
    def required(self) -> bool:
        return self.sslmode in ("require", "verify-ca", "verify-full")


def _postgresql_dir() -> Path:
    return Path(os.environ.get("HOME") or Path.home()) / ".postgresql"


def _check_key_permissions(path: str) -> None:
    # libpq refuses a private key others can read: 0600 for the owner, 0640 if owned by root.
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ConnectError(f'private key file "{path}" is not a regular file')
    limit = 0o640 if st.st_uid == 0 else 0o600
    if st.st_mode & 0o777 & ~limit:
        raise ConnectError(
            f'private key file "{path}" has group or world access; file must have '
            "permissions u=rw (0600) or less if owned by the current user, or permissions "
            "u=rw,g=r (0640) or less if owned by root"
        )


def make_context(policy: TlsPolicy) -> tuple[ssl.SSLContext, bool]:
    """An SSL context for ``policy`` and whether the host name must be checked."""
    mode = policy.sslmode
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if policy.min_protocol:
        ctx.minimum_version = _tls_version(policy.min_protocol, "ssl_min_protocol_version")
    if policy.max_protocol:
        ctx.maximum_version = _tls_version(policy.max_protocol, "ssl_max_protocol_version")

    rootcert = policy.sslrootcert
    check_name = mode == "verify-full"
    if rootcert == "system":
        # PostgreSQL 16: the system store, and always verify-full.
        ctx.load_default_certs()
        ctx.verify_mode = ssl.CERT_REQUIRED
        check_name = True
    else:
        path = rootcert or str(_postgresql_dir() / "root.crt")
        # libpq: "require" with a root CA file present behaves as verify-ca.
        verify = mode in ("verify-ca", "verify-full") or (
            mode == "require" and os.path.exists(path)
        )
        if verify:
            if not os.path.exists(path):
                raise ConnectError(
                    f'root certificate file "{path}" does not exist\n'
                    "Either provide the file, use the system's trusted roots with "
                    "sslrootcert=system, or change sslmode to disable server certificate "
                    "verification."
                )
            try:
                ctx.load_verify_locations(cafile=path)
            except (ssl.SSLError, OSError) as e:
                raise ConnectError(f'could not read root certificate file "{path}": {e}') from e
            ctx.verify_mode = ssl.CERT_REQUIRED
            if policy.sslcrl:
                ctx.load_verify_locations(cafile=policy.sslcrl)
                ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        else:
            ctx.verify_mode = ssl.CERT_NONE

    cert = policy.sslcert or str(_postgresql_dir() / "postgresql.crt")
    if os.path.exists(cert):
        key = policy.sslkey or str(_postgresql_dir() / "postgresql.key")
        if not os.path.exists(key):
            raise ConnectError(f'certificate present, but not private key file "{key}"')
        _check_key_permissions(key)
        try:
            ctx.load_cert_chain(cert, key, password=policy.sslpassword or None)
        except (ssl.SSLError, OSError) as e:
            raise ConnectError(f'could not load client certificate "{cert}": {e}') from e
    elif policy.sslcert:
        raise ConnectError(f'could not open certificate file "{cert}": No such file or directory')
    return ctx, check_name


def _tls_version(name: str, option: str) -> ssl.TLSVersion:
    try:
        return _TLS_VERSIONS[name]
    except KeyError:
        raise ConnectError(f'invalid {option} value: "{name}"') from None


def _name_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower(), host.lower()
    if pattern.startswith("*."):
        # A leading wildcard matches exactly one label, never a dot.
        first, _, rest = host.partition(".")
        return bool(first) and rest == pattern[2:]
    return pattern == host


def check_host_name(cert: dict[str, object], host: str) -> None:
    """Raise ConnectError unless ``cert`` (``getpeercert()``) is valid for ``host``.

    libpq's rules (14+): dNSName and iPAddress SANs are examined in order
    until one matches; the CN is consulted only when no SAN has the host's own
    type (DNS name or IP address); the error names the first name examined.
    """
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    examined: list[str] = []
    check_cn = True
    for kind, value in cert.get("subjectAltName") or ():  # type: ignore[attr-defined]
        if kind not in ("DNS", "IP Address"):
            continue
        if (kind == "IP Address") == (ip is not None):
            check_cn = False
        value = str(value).strip()
        examined.append(value)
        if kind == "DNS":
            if _name_matches(value, host):
                return
        elif ip is not None and _same_ip(value, ip):
            return
    if check_cn:
        for rdn in cert.get("subject") or ():  # type: ignore[attr-defined]
            for k, v in rdn:
                if k == "commonName":
                    examined.append(v)
                    if _name_matches(v, host):
                        return
                    break
            else:
                continue
            break
    if not examined:
        raise ConnectError("could not get server's host name from server certificate")
    others = len(examined) - 1
    if others == 0:
        text = f'server certificate for "{examined[0]}" does not match host name "{host}"'
    else:
        noun = "name" if others == 1 else "names"
        text = (
            f'server certificate for "{examined[0]}" (and {others} other {noun}) '
            f'does not match host name "{host}"'
        )
    raise ConnectError(text)


def _same_ip(value: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(value) == ip
    except ValueError:
        return False
