"""Opening a replication connection the way libpq does.

Hosts in order and every address of each, the sslmode fallbacks (prefer
retries without TLS, allow with it), ``target_session_attrs``,
``connect_timeout`` per address, ``.pgpass``; the startup and authentication
exchange itself is the core's conversation
(:func:`walstream.protocol.generators.startup`), driven here over the wire.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from walstream.client import pgpass
from walstream.client.connection import ReplicationConnection, _log_notice, drive
from walstream.client.conninfo import ConnectParams, HostSpec, resolve
from walstream.client.tls import TlsPolicy, check_host_name, make_context
from walstream.client.wire import Wire
from walstream.errors import ConnectError, ServerError
from walstream.protocol import generators
from walstream.protocol.auth import Authenticator
from walstream.protocol.client import ClientConnection, ClientEvent

__all__ = ["connect", "connect_params"]

log = logging.getLogger("walstream.connection")


@dataclass
class _Attempt:
    host: HostSpec
    address: Any  # a sockaddr tuple for TCP, a path for Unix sockets
    family: int


def _describe(host: HostSpec, address: Any) -> str:
    if host.is_unix_socket:
        return f'connection to server on socket "{host.socket_path()}" failed'
    ip = address[0] if isinstance(address, tuple) else str(address)
    name = host.host
    if host.hostaddr or name == ip:
        return f'connection to server at "{ip}", port {host.port} failed'
    return f'connection to server at "{name}" ({ip}), port {host.port} failed'


async def _addresses(host: HostSpec) -> list[_Attempt]:
    if host.is_unix_socket:
        return [_Attempt(host, host.socket_path(), socket.AF_UNIX)]
    target = host.hostaddr or host.host
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target, host.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConnectError(
            f'could not translate host name "{target}" to address: {e.strerror}'
        ) from e
    seen: list[_Attempt] = []
    for family, _, _, _, addr in infos:
        if not any(a.address == addr for a in seen):
            seen.append(_Attempt(host, addr, family))
    return seen


def _tls_policy(p: ConnectParams) -> TlsPolicy:
    return TlsPolicy(
        sslmode=p.sslmode,
        sslrootcert=p.sslrootcert,
        sslcert=p.sslcert,
        sslkey=p.sslkey,
        sslcrl=p.sslcrl,
        sslpassword=p.sslpassword,
        sslsni=p.sslsni,
        min_protocol=p.ssl_min_protocol_version or "TLSv1.2",
        max_protocol=p.ssl_max_protocol_version,
    )


async def _open(attempt: _Attempt, machine: ClientConnection) -> Wire[ClientEvent]:
    loop = asyncio.get_running_loop()
    wire: Wire[ClientEvent] = Wire(machine)
    if attempt.family == socket.AF_UNIX:
        await loop.create_unix_connection(lambda: wire, attempt.address)
    else:
        sock = socket.socket(attempt.family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, attempt.address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.create_connection(lambda: wire, sock=sock)
        except BaseException:
            sock.close()
            raise
    return wire


async def _startup(
    attempt: _Attempt, params: ConnectParams, use_tls: bool, policy: TlsPolicy
) -> ReplicationConnection:
    """One connection attempt to one address: TLS, startup, authentication."""
    machine = ClientConnection()
    wire = await _open(attempt, machine)
    where = _describe(attempt.host, attempt.address)
    password = params.password
    from_file = False
    if password is None and params.user and params.dbname:
        password = pgpass.lookup_password(
            params.passfile,
            attempt.host.host,
            attempt.host.port,
            params.dbname,
            params.user,
            replication=params.physical_replication,
        )
        from_file = password is not None

    def authenticator(certificate: bytes | None) -> Authenticator:
        return Authenticator(
            params.user,
            password,
            channel_binding=params.channel_binding,
            server_certificate=certificate,
        )

    async def start_tls() -> bytes:
        return await _start_tls(wire, attempt.host, policy)

    conversation = generators.startup(
        machine,
        params.startup_parameters(),
        authenticator,
        use_tls=use_tls,
        tls_required=policy.required,
        where=where,
        on_notice=_log_notice,
    )
    try:
        try:
            result = await drive(wire, conversation, start_tls)
        except ServerError as err:
            if from_file and err.sqlstate == "28P01":
                err.note = f'password retrieved from file "{params.passfile}"'
            raise
        return ReplicationConnection(
            wire, attempt.host, params, tls=result.tls, auth_method=result.auth_method
        )
    except BaseException:
        wire.abort()
        raise


async def _start_tls(wire: Wire[ClientEvent], host: HostSpec, policy: TlsPolicy) -> bytes:
    """The TLS handshake and libpq's host-name check; the server's DER certificate."""
    ctx, check_name = make_context(policy)
    name = host.host
    sni: str | None = None
    if policy.sslsni and not _is_ip(name):
        sni = name
    try:
        obj = await wire.start_tls(ctx, server_hostname=sni)
    except ssl.SSLCertVerificationError as e:
        detail = f": {e.verify_message}" if e.verify_message else ""
        raise ConnectError(f"SSL error: certificate verify failed{detail}") from e
    except (ssl.SSLError, OSError) as e:
        raise ConnectError(f"SSL error: {e}") from e
    if check_name:
        cert = obj.getpeercert()
        if not cert:
            raise ConnectError("server did not present a certificate")
        check_host_name(dict(cert), host.hostaddr if _is_ip(name) and host.hostaddr else name)
    der = obj.getpeercert(binary_form=True)
    if der is None:
        raise ConnectError("server did not present a certificate")
    return der


def _is_ip(name: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name)
    except OSError:
        return False
    return True


_CANNOT_CONNECT_NOW: Final = "57P03"

_SESSION_CHECKS: Final[dict[str, tuple[Callable[[dict[str, str]], bool], str]]] = {
    # As libpq: a hot standby is read-only whatever default_transaction_read_only says.
    "read-write": (
        lambda p: (
            p.get("default_transaction_read_only") == "off" and p.get("in_hot_standby") != "on"
        ),
        "session is read-only",
    ),
    "read-only": (
        lambda p: p.get("default_transaction_read_only") == "on" or p.get("in_hot_standby") == "on",
        "session is not read-only",
    ),
    "primary": (lambda p: p.get("in_hot_standby") == "off", "server is in hot standby mode"),
    "standby": (lambda p: p.get("in_hot_standby") == "on", "server is not in hot standby mode"),
}


def _session_mismatch(attrs: str, parameters: dict[str, str]) -> str | None:
    check = _SESSION_CHECKS.get(attrs)
    if check is None:
        return None
    ok, message = check
    return None if ok(parameters) else message


async def connect(conninfo: str = "", **params: str | int | None) -> ReplicationConnection:
    """Open a physical replication connection, the way libpq would.

    ``conninfo`` is a keyword/value string or a ``postgresql://`` URI; keyword
    arguments override it; PG* environment variables and ``.pgpass`` apply as
    in libpq. ``replication`` defaults to ``true`` (a physical walsender) and
    ``fallback_application_name`` to ``walstream``.
    """
    given: dict[str, Any] = dict(params)  # Any: keys are libpq keywords, not resolve()'s own
    resolved = resolve(conninfo, **given)
    defaults: dict[str, Any] = {}
    if resolved.replication is None:
        defaults["replication"] = "true"
    if resolved.application_name is None:
        defaults["fallback_application_name"] = "walstream"
    if defaults:
        resolved = resolve(conninfo, **{**defaults, **given})
    return await connect_params(resolved)


async def connect_params(params: ConnectParams) -> ReplicationConnection:
    """:func:`connect` for parameters already resolved."""
    policy = _tls_policy(params)
    hosts = list(params.hosts)
    if params.load_balance_hosts == "random":
        random.shuffle(hosts)
    errors: list[str] = []
    attrs = params.target_session_attrs
    passes = ["standby", "any"] if attrs == "prefer-standby" else [attrs]
    refusal: ServerError | None = None
    for wanted in passes:
        for host in hosts:
            try:
                attempts = await _addresses(host)
            except ConnectError as e:
                errors.append(str(e))
                continue
            for attempt in attempts:
                try:
                    conn = await _connect_address(attempt, params, policy)
                except ServerError as e:
                    if e.sqlstate != _CANNOT_CONNECT_NOW:
                        raise
                    # As libpq: a server starting up or shutting down sends the
                    # client on to the next host (its other addresses would
                    # say the same).
                    errors.append(str(e))  # it names the server already
                    refusal = e
                    break
                except (OSError, TimeoutError) as e:
                    if isinstance(e, ConnectError):
                        errors.append(f"{_describe(host, attempt.address)}: {e}")
                    else:
                        errors.append(_os_error_text(host, attempt.address, e))
                    continue
                mismatch = _session_mismatch(wanted, conn.server_parameters)
                if mismatch is None:
                    return conn
                errors.append(f"{_describe(host, attempt.address)}: {mismatch}")
                await conn.close()
                break  # another address of the same server would say the same
    if refusal is not None and len(errors) == 1:
        raise refusal  # the only failure: keep its SQLSTATE
    raise ConnectError("\n".join(errors) if errors else "no host to connect to")


def _os_error_text(host: HostSpec, address: Any, e: BaseException) -> str:
    head = _describe(host, address)
    if isinstance(e, TimeoutError):
        return f"{head}: timeout expired"
    # asyncio words refusals as "Connect call failed (...)"; libpq prints strerror.
    errno = getattr(e, "errno", None)
    reason = os.strerror(errno) if errno else getattr(e, "strerror", None) or str(e)
    text = f"{head}: {reason}"
    if isinstance(e, ConnectionRefusedError | FileNotFoundError):
        if host.is_unix_socket:
            text += "\n\tIs the server running locally and accepting connections on that socket?"
        else:
            text += "\n\tIs the server running on that host and accepting TCP/IP connections?"
    return text


async def _connect_address(
    attempt: _Attempt, params: ConnectParams, policy: TlsPolicy
) -> ReplicationConnection:
    """Connect to one address, applying the sslmode fallbacks libpq applies.

    ``prefer`` retries without TLS, and ``allow`` with TLS, when the server
    rejects the first attempt during startup (e.g. a hostssl/hostnossl line).
    """
    unix = attempt.family == socket.AF_UNIX
    mode = policy.sslmode
    if unix or mode == "disable":
        order = [False]
    elif mode == "allow":
        order = [False, True]
    elif mode == "prefer":
        order = [True, False]
    else:
        order = [True]
    timeout = params.connect_timeout
    for i, use_tls in enumerate(order):
        try:
            async with asyncio.timeout(timeout):
                return await _startup(attempt, params, use_tls, policy)
        except ServerError as e:
            if i + 1 < len(order) and e.sqlstate.startswith("28"):
                log.debug("retrying %s TLS after: %s", "with" if order[i + 1] else "without", e)
                continue
            raise
    raise AssertionError("unreachable")
