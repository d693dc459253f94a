"""libpq-compatible connection parameters: parsing, defaults and validation.

Users already have connection strings, ``postgresql://`` URIs, ``PG*``
environment variables and service files that work with ``psql`` and
``pg_receivewal``. This module reads all of them with libpq's exact rules and
error messages, so that a string that works (or fails) with libpq works (or
fails) the same way here. Two entry points:

* :func:`parse_conninfo` is ``PQconninfoParse``: syntax only, no defaults.
* :func:`resolve` is what ``PQconnectdbParams`` + ``PQconnectStart`` do before
  opening a socket: merge explicit parameters, a service file, the
  environment and compiled-in defaults, then split and validate the host
  list. The result, :class:`ConnectParams`, is everything a connector needs.

The passwords of ``.pgpass`` are not looked up here: libpq does that per host
at connect time (see :mod:`walstream.pgpass`).

Nothing here does I/O at import time; the file system is consulted only by
:func:`resolve` (socket directory, service files, home directory).

Deliberate differences from libpq, all in the direction of failing earlier:

* Port numbers are validated for every host up front (libpq skips a host with
  a bad port at connect time and tries the next one).
* Unknown keyword arguments to :func:`resolve` are rejected even when their
  value is ``None`` or empty (libpq ignores empty array entries unchecked).
* A NUL character in a connection string is an error (C would silently
  truncate the string there).
* LDAP lines in a service file are rejected (walstream has no LDAP client).
"""

from __future__ import annotations

import io
import locale
import os
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from walstream.errors import ConnInfoError
from walstream.pgtypes import parse_bool

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_SOCKET_DIRS",
    "DEFAULT_SYSCONFDIR",
    "KEYWORDS",
    "KEYWORD_ENVVARS",
    "ConnInfoError",
    "ConnectParams",
    "HostSpec",
    "default_socket_dir",
    "parse_conninfo",
    "resolve",
]

DEFAULT_PORT: Final = 5432
"""libpq's ``DEF_PGPORT``."""

DEFAULT_SOCKET_DIRS: Final = ("/var/run/postgresql", "/tmp")
"""Candidates for the default Unix-socket directory, in order of preference.

libpq compiles one in: Debian's and Red Hat's builds use
``/var/run/postgresql``, upstream uses ``/tmp``. We cannot know which server
the user runs, so we take the distribution directory when it exists.
"""

DEFAULT_SYSCONFDIR: Final = "/etc/postgresql-common"
"""Where the system-wide ``pg_service.conf`` lives when ``PGSYSCONFDIR`` is
unset. This is the value compiled into Debian's libpq (``pg_config
--sysconfdir``); upstream's default depends on the installation prefix."""


@dataclass(frozen=True)
class _Option:
    keyword: str
    envvar: str | None = None
    default: str | None = None
    since: int = 15  # first libpq major version that knows the keyword


# libpq's PQconninfoOptions[] (union of versions 15 to 18), in its order, so
# that dictionaries we return list keywords the way PQconninfoParse does.
_OPTIONS: Final[tuple[_Option, ...]] = (
    _Option("service", "PGSERVICE"),
    _Option("servicefile", "PGSERVICEFILE", since=18),
    _Option("user", "PGUSER"),
    _Option("password", "PGPASSWORD"),
    _Option("passfile", "PGPASSFILE"),
    _Option("channel_binding", "PGCHANNELBINDING", "prefer"),
    _Option("connect_timeout", "PGCONNECT_TIMEOUT"),
    _Option("dbname", "PGDATABASE"),
    _Option("host", "PGHOST"),
    _Option("hostaddr", "PGHOSTADDR"),
    _Option("port", "PGPORT", str(DEFAULT_PORT)),
    _Option("client_encoding", "PGCLIENTENCODING"),
    _Option("options", "PGOPTIONS", ""),
    _Option("application_name", "PGAPPNAME"),
    _Option("fallback_application_name"),
    _Option("keepalives"),
    _Option("keepalives_idle"),
    _Option("keepalives_interval"),
    _Option("keepalives_count"),
    _Option("tcp_user_timeout"),
    _Option("sslmode", "PGSSLMODE", "prefer"),
    _Option("sslnegotiation", "PGSSLNEGOTIATION", "postgres", since=17),
    _Option("sslcompression", "PGSSLCOMPRESSION", "0"),
    _Option("sslcert", "PGSSLCERT"),
    _Option("sslkey", "PGSSLKEY"),
    _Option("sslkeylogfile", since=18),
    _Option("sslcertmode", "PGSSLCERTMODE", since=16),
    _Option("sslpassword"),
    _Option("sslrootcert", "PGSSLROOTCERT"),
    _Option("sslcrl", "PGSSLCRL"),
    _Option("sslcrldir", "PGSSLCRLDIR"),
    _Option("sslsni", "PGSSLSNI", "1"),
    _Option("requirepeer", "PGREQUIREPEER"),
    _Option("require_auth", "PGREQUIREAUTH", since=16),
    _Option("min_protocol_version", "PGMINPROTOCOLVERSION", since=18),
    _Option("max_protocol_version", "PGMAXPROTOCOLVERSION", since=18),
    _Option("ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION", "TLSv1.2"),
    _Option("ssl_max_protocol_version", "PGSSLMAXPROTOCOLVERSION"),
    _Option("gssencmode", "PGGSSENCMODE", "prefer"),
    _Option("krbsrvname", "PGKRBSRVNAME", "postgres"),
    _Option("gsslib", "PGGSSLIB"),
    _Option("gssdelegation", "PGGSSDELEGATION", "0", since=16),
    _Option("replication"),
    _Option("target_session_attrs", "PGTARGETSESSIONATTRS", "any"),
    _Option("load_balance_hosts", "PGLOADBALANCEHOSTS", "disable", since=16),
    _Option("scram_client_key", since=18),
    _Option("scram_server_key", since=18),
    _Option("oauth_issuer", since=18),
    _Option("oauth_client_id", since=18),
    _Option("oauth_client_secret", since=18),
    _Option("oauth_scope", since=18),
)

KEYWORDS: Final[tuple[str, ...]] = tuple(o.keyword for o in _OPTIONS)
"""Every connection keyword documented for libpq 15 to 18, in libpq's order."""

KEYWORD_ENVVARS: Final[Mapping[str, str]] = types.MappingProxyType(
    {o.keyword: o.envvar for o in _OPTIONS if o.envvar is not None}
)
"""Keyword -> the environment variable libpq falls back to for it."""

_OPTION_BY_KEYWORD: Final = {o.keyword: o for o in _OPTIONS}
_KEYWORD_ORDER: Final = {o.keyword: i for i, o in enumerate(_OPTIONS)}

# C's isspace() in the "C" locale; str.isspace() would also accept Unicode
# spaces that libpq treats as ordinary characters.
_WHITESPACE: Final = frozenset(" \t\n\v\f\r")

_URI_PREFIXES: Final = ("postgresql://", "postgres://")

# libpq's EnvironmentOptions[]: sent as startup GUCs when set.
_ENVIRONMENT_GUCS: Final = (("PGDATESTYLE", "datestyle"), ("PGTZ", "timezone"), ("PGGEQO", "geqo"))


# --------------------------------------------------------------------------
# Parsing (PQconninfoParse)
# --------------------------------------------------------------------------


def parse_conninfo(s: str) -> dict[str, str]:
    """Parse a keyword/value string or a URI exactly as ``PQconninfoParse`` does.

    Returns only the keywords present in ``s`` (no defaults, no environment,
    no service file), with quoting, escapes and percent-encoding removed. A
    repeated keyword keeps its last value, even an empty one. The old
    ``requiressl`` keyword becomes ``sslmode`` as in libpq, and ``ssl=true``
    in a URI query means ``sslmode=require``.

    ``dbname`` is *not* expanded here even if it looks like a connection
    string; :func:`resolve` does that, as libpq's connect functions do.

    Percent-decoded bytes that are not UTF-8 are kept as surrogate escapes
    (PEP 383), so ``value.encode("utf-8", "surrogateescape")`` gives the bytes
    libpq would have produced.

    Raises :class:`ConnInfoError` carrying libpq's message (without its
    trailing newline).
    """
    if "\0" in s:
        raise ConnInfoError("connection info string contains a NUL character")
    options: dict[str, str] = {}
    if _uri_prefix_length(s):
        _parse_uri(s, options)
    else:
        _parse_keyword_value(s, options)
    return {k: options[k] for k in sorted(options, key=_KEYWORD_ORDER.__getitem__)}


def _uri_prefix_length(s: str) -> int:
    for prefix in _URI_PREFIXES:
        if s.startswith(prefix):
            return len(prefix)
    return 0


def _is_connection_string(s: str) -> bool:
    """libpq's recognized_connection_string(): what a dbname gets expanded from."""
    return _uri_prefix_length(s) != 0 or "=" in s


def _store(
    options: dict[str, str],
    keyword: str,
    value: str,
    *,
    ignore_missing: bool = False,
    uri_decode: bool = False,
) -> bool:
    """conninfo_storeval(): the one place a parsed value enters the map.

    Returns False (without raising) for an unknown keyword only when
    ``ignore_missing`` is set, so that URI query parsing can substitute its
    own message, exactly as libpq does.
    """
    if keyword == "requiressl":  # pre-7.4 spelling, still accepted by libpq
        keyword, value = "sslmode", ("require" if value.startswith("1") else "prefer")
    if keyword not in _OPTION_BY_KEYWORD:
        if ignore_missing:
            return False
        raise ConnInfoError(f'invalid connection option "{keyword}"')
    options[keyword] = _uri_decode(value) if uri_decode else value
    return True


def _parse_keyword_value(s: str, options: dict[str, str]) -> None:
    """conninfo_parse(): ``kw = value`` pairs, single quotes and backslashes."""
    n = len(s)
    i = 0
    while i < n:
        if s[i] in _WHITESPACE:
            i += 1
            continue
        # The keyword runs to "=" or whitespace; whitespace may precede "=".
        start = i
        while i < n and s[i] != "=" and s[i] not in _WHITESPACE:
            i += 1
        name = s[start:i]
        while i < n and s[i] in _WHITESPACE:
            i += 1
        if i >= n or s[i] != "=":
            raise ConnInfoError(f'missing "=" after "{name}" in connection info string')
        i += 1
        while i < n and s[i] in _WHITESPACE:
            i += 1

        value: list[str] = []
        if i < n and s[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise ConnInfoError("unterminated quoted string in connection info string")
                c = s[i]
                if c == "\\":
                    i += 1
                    if i < n:
                        value.append(s[i])
                        i += 1
                    continue
                i += 1
                if c == "'":
                    break
                value.append(c)
        else:
            while i < n:
                c = s[i]
                i += 1
                if c in _WHITESPACE:
                    break
                if c == "\\":
                    if i < n:
                        value.append(s[i])
                        i += 1
                else:
                    value.append(c)
        _store(options, name, "".join(value))


def _utf8_offset(s: str, index: int) -> int:
    """Byte offset of ``s[index]`` in UTF-8: libpq counts bytes, not characters."""
    return len(s[:index].encode("utf-8", "surrogateescape"))


def _parse_uri(uri: str, options: dict[str, str]) -> None:
    """conninfo_uri_parse_options(): RFC 3986 plus libpq's extensions.

    ``postgresql://[user[:password]@][netloc][:port][,...][/dbname][?param=value&...]``
    where netloc may be ``[IPv6]`` and several ``netloc[:port]`` may be given
    separated by commas. Hosts and ports are joined back into comma lists
    (``h1:5433,h2`` gives host ``h1,h2`` and port ``5433,``) because that is
    how the keyword form spells multiple hosts.
    """
    n = len(uri)
    p = _uri_prefix_length(uri)

    # User credentials: only if an "@" comes before the first "/".
    q = p
    while q < n and uri[q] not in "@/":
        q += 1
    if q < n and uri[q] == "@":
        q = p
        while uri[q] not in ":@":
            q += 1
        user = uri[p:q]
        if user:
            _store(options, "user", user, uri_decode=True)
        if uri[q] == ":":
            password_start = q + 1
            q = password_start
            while uri[q] != "@":
                q += 1
            password = uri[password_start:q]
            if password:
                _store(options, "password", password, uri_decode=True)
        p = q + 1

    hosts: list[str] = []
    ports: list[str] = []
    while True:
        if p < n and uri[p] == "[":
            p += 1
            host_start = p
            while p < n and uri[p] != "]":
                p += 1
            if p >= n:
                raise ConnInfoError(
                    'end of string reached when looking for matching "]" in IPv6 host'
                    f' address in URI: "{uri}"'
                )
            if p == host_start:
                raise ConnInfoError(f'IPv6 host address may not be empty in URI: "{uri}"')
            host = uri[host_start:p]
            p += 1
            if p < n and uri[p] not in ":/?,":
                raise ConnInfoError(
                    f'unexpected character "{uri[p]}" at position {_utf8_offset(uri, p) + 1}'
                    f' in URI (expected ":" or "/"): "{uri}"'
                )
        else:
            host_start = p
            while p < n and uri[p] not in ":/?,":
                p += 1
            host = uri[host_start:p]
        terminator = uri[p] if p < n else ""
        hosts.append(host)
        port = ""
        if terminator == ":":
            p += 1
            port_start = p
            while p < n and uri[p] not in "/?,":
                p += 1
            terminator = uri[p] if p < n else ""
            port = uri[port_start:p]
        ports.append(port)
        if terminator != ",":
            break
        p += 1

    host_list = ",".join(hosts)
    port_list = ",".join(ports)
    if host_list:
        _store(options, "host", host_list, uri_decode=True)
    if port_list:
        _store(options, "port", port_list, uri_decode=True)

    if terminator == "/":
        p += 1
        dbname_start = p
        while p < n and uri[p] != "?":
            p += 1
        terminator = uri[p] if p < n else ""
        dbname = uri[dbname_start:p]
        # An empty dbname is left unset so that PGDATABASE still applies.
        if dbname:
            _store(options, "dbname", dbname, uri_decode=True)

    if terminator:  # "?"
        _parse_uri_query(uri[p + 1 :], options)


def _parse_uri_query(query: str, options: dict[str, str]) -> None:
    """conninfo_uri_parse_params(): ``key=value`` pairs separated by ``&``."""
    n = len(query)
    i = 0
    while i < n:
        start = i
        key_end = -1
        p = i
        while True:
            if p < n and query[p] == "=":
                if key_end >= 0:
                    raise ConnInfoError(
                        'extra key/value separator "=" in URI query parameter:'
                        f' "{query[start:key_end]}"'
                    )
                key_end = p
                p += 1
            elif p >= n or query[p] == "&":
                end = p
                if p < n:
                    p += 1
                if key_end < 0:
                    raise ConnInfoError(
                        'missing key/value separator "=" in URI query parameter:'
                        f' "{query[start:end]}"'
                    )
                break
            else:
                p += 1
        keyword = _uri_decode(query[start:key_end])
        value = _uri_decode(query[key_end + 1 : end])
        if keyword == "ssl" and value == "true":  # JDBC compatibility
            keyword, value = "sslmode", "require"
        if not _store(options, keyword, value, ignore_missing=True):
            raise ConnInfoError(f'invalid URI query parameter: "{keyword}"')
        i = p


_HEX: Final = {c: int(c, 16) for c in "0123456789abcdefABCDEF"}


def _uri_decode(s: str) -> str:
    """conninfo_uri_decode(): %XX escapes; %00 is refused (C strings end there)."""
    if "%" not in s:
        return s
    out = bytearray()
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c != "%":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        hi = _HEX.get(s[i + 1]) if i + 1 < n else None
        lo = _HEX.get(s[i + 2]) if i + 2 < n else None
        if hi is None or lo is None:
            raise ConnInfoError(f'invalid percent-encoded token: "{s}"')
        byte = (hi << 4) | lo
        if byte == 0:
            raise ConnInfoError(f'forbidden value %00 in percent-encoded value: "{s}"')
        out.append(byte)
        i += 3
    return out.decode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------
# Resolution (PQconnectdbParams + pqConnectOptions2)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class HostSpec:
    """One server to try, with libpq's defaults already applied.

    ``host`` is what libpq's ``PQhost()`` reports and what ``.pgpass`` and TLS
    host-name checks use: the host name, an IP address, or an absolute
    directory holding the Unix socket (``@`` starts a Linux abstract-namespace
    socket name). When only ``hostaddr`` was given, ``host`` is the same
    address, as ``PQhost()`` returns it. ``hostaddr``, when set, is the
    numeric address to connect to without a name lookup.
    """

    host: str
    hostaddr: str | None
    port: int

    @property
    def is_unix_socket(self) -> bool:
        """True when this entry names a Unix-domain socket directory."""
        return self.hostaddr is None and self.host[:1] in ("/", "@")

    def socket_path(self) -> str:
        """The socket file, ``{host}/.s.PGSQL.{port}``, as the server names it.

        For an abstract-namespace socket (``host`` starting with ``@``) the
        caller must replace the leading ``@`` with a NUL byte, as libpq does.
        """
        return f"{self.host}/.s.PGSQL.{self.port}"


@dataclass(frozen=True)
class ConnectParams:
    """Everything needed to connect, after libpq's merging and validation.

    Produced by :func:`resolve`. Empty strings have been normalised to
    ``None`` for the optional fields, because libpq treats an empty value as
    "not set" at connect time. ``settings`` keeps the full merged keyword map
    (explicit, service file, environment and compiled defaults) for anything
    not modelled as a field.
    """

    hosts: tuple[HostSpec, ...]
    user: str
    dbname: str
    password: str | None = field(repr=False)
    passfile: str
    application_name: str | None
    options: str | None
    replication: str | None
    client_encoding: str | None
    connect_timeout: float | None
    target_session_attrs: str
    load_balance_hosts: str
    sslmode: str
    sslrootcert: str | None
    sslcert: str | None
    sslkey: str | None
    sslcrl: str | None
    sslpassword: str | None = field(repr=False)
    sslsni: bool
    ssl_min_protocol_version: str | None
    ssl_max_protocol_version: str | None
    channel_binding: str
    gssencmode: str
    require_auth: str | None
    settings: Mapping[str, str] = field(repr=False, hash=False)
    environment_gucs: Mapping[str, str] = field(
        default_factory=lambda: types.MappingProxyType({}), repr=False, hash=False
    )
    """Server settings libpq sends from ``PGDATESTYLE``, ``PGTZ`` and ``PGGEQO``."""

    @property
    def physical_replication(self) -> bool:
        """True when ``replication`` asks for a physical walsender.

        The server reads the value with its boolean parser; only the exact
        string ``database`` means a logical (database-bound) walsender.
        """
        return self.replication is not None and parse_bool(self.replication) is True

    def startup_parameters(self) -> dict[str, str]:
        """The StartupMessage parameters, in the order libpq sends them.

        libpq's order is user, database, replication, options,
        application_name, client_encoding, then the environment-driven
        settings (datestyle, timezone, geqo).
        """
        params: dict[str, str] = {}
        if self.user:
            params["user"] = self.user
        if self.dbname:
            params["database"] = self.dbname
        if self.replication:
            params["replication"] = self.replication
        if self.options:
            params["options"] = self.options
        if self.application_name:
            params["application_name"] = self.application_name
        if self.client_encoding:
            params["client_encoding"] = self.client_encoding
        for name, value in self.environment_gucs.items():
            params.setdefault(name, value)
        return params


def default_socket_dir() -> str:
    """The Unix-socket directory used when no host is given.

    ``/var/run/postgresql`` where it exists (distribution packages), else
    ``/tmp`` (upstream's default). Evaluated on each call, not at import.
    """
    for candidate in DEFAULT_SOCKET_DIRS[:-1]:
        if os.path.isdir(candidate):
            return candidate
    return DEFAULT_SOCKET_DIRS[-1]


def resolve(
    conninfo: str = "",
    /,
    *,
    environ: Mapping[str, str] | None = None,
    **params: str | int | None,
) -> ConnectParams:
    """Merge, default and validate connection parameters as libpq does.

    Precedence, highest first (libpq's ``conninfo_array_parse`` followed by
    ``conninfo_add_defaults``):

    1. ``params``: keyword arguments, libpq keywords. ``None`` or ``""``
       means unset (libpq skips empty array entries); ``bool`` becomes
       ``"1"``/``"0"`` and ``int`` its decimal text.
    2. ``conninfo``: a keyword/value string or URI, parsed strictly. Unlike
       ``params``, an explicit empty value here (``host=''``) counts as set
       and hides the environment variable, exactly as in ``PQconnectdb``.
    3. The service named by ``service`` (or ``PGSERVICE``), read from
       ``servicefile``/``PGSERVICEFILE`` or ``~/.pg_service.conf``, then
       ``$PGSYSCONFDIR/pg_service.conf``. libpq applies service values
       *before* the environment, so they beat ``PG*`` variables.
    4. ``PG*`` environment variables from ``environ`` (default
       ``os.environ``).
    5. Compiled-in defaults.

    dbname expansion: the first ``dbname`` that looks like a connection
    string (contains ``=`` or starts with a URI prefix) is parsed and its
    keywords fill in, overriding what came before it; later keywords still
    win. A non-empty ``conninfo`` occupies that first slot (it is what
    libpq's ``dbname`` expansion would parse), so a ``dbname`` keyword
    argument is then taken literally.

    Physical replication: when ``replication`` is a true boolean and no
    ``dbname`` is given explicitly or by the service, dbname becomes
    ``replication``, as both ``pg_receivewal`` and the walreceiver pass it
    (the server ignores it; ``.pgpass`` matches on it).

    Raises :class:`ConnInfoError` with libpq's message for anything libpq
    would refuse before or while connecting.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    options = _explicit_options(conninfo, params)
    _apply_service(options, env)
    if "dbname" not in options and parse_bool(options.get("replication", "")) is True:
        options["dbname"] = "replication"
    _apply_defaults(options, env)
    return _finish(options, env)


def _param_text(value: str | int) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _explicit_options(conninfo: str, params: Mapping[str, str | int | None]) -> dict[str, str]:
    """conninfo_array_parse() over ``[("dbname", conninfo), *params]``."""
    for keyword in params:
        if keyword not in _OPTION_BY_KEYWORD:
            raise ConnInfoError(f'invalid connection option "{keyword}"')
    items = [(k, None if v is None else _param_text(v)) for k, v in params.items()]

    options: dict[str, str] = {}
    expand: dict[str, str] | None = None
    if conninfo:
        options.update(parse_conninfo(conninfo))
    else:
        # libpq expands only the first dbname that has a value at all.
        for keyword, value in items:
            if keyword == "dbname" and value is not None:
                if _is_connection_string(value):
                    expand = parse_conninfo(value)
                break

    for keyword, value in items:
        if not value:
            continue
        if keyword == "dbname" and expand is not None:
            options.update(expand)
            expand = None
        else:
            options[keyword] = value
    return options


def _home_directory(env: Mapping[str, str]) -> str | None:
    """pqGetHomeDirectory(): $HOME, else the password database; on Windows %APPDATA%."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        appdata = env.get("APPDATA")
        return os.path.join(appdata, "postgresql") if appdata else None
    home = env.get("HOME")
    if home:
        return home
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_dir
    except (ImportError, KeyError):  # pragma: no cover - no passwd entry
        return None


def _apply_service(options: dict[str, str], env: Mapping[str, str]) -> None:
    """parseServiceInfo(): fill unset keywords from the named service."""
    service = options.get("service")
    if service is None:
        service = env.get("PGSERVICE")
    if service is None:
        return

    servicefile = options.get("servicefile")
    if servicefile is None:
        servicefile = env.get("PGSERVICEFILE")
    if servicefile is not None:
        if _parse_service_file(servicefile, service, options):
            return
    else:
        home = _home_directory(env)
        if home is not None:
            user_file = os.path.join(home, ".pg_service.conf")
            if os.path.exists(user_file) and _parse_service_file(user_file, service, options):
                return

    sysconfdir = env.get("PGSYSCONFDIR", DEFAULT_SYSCONFDIR)
    system_file = f"{sysconfdir}/pg_service.conf"
    if os.path.exists(system_file) and _parse_service_file(system_file, service, options):
        return
    raise ConnInfoError(f'definition of service "{service}" not found')


_SERVICE_LINE_MAX: Final = 1023  # libpq reads service files with fgets(buf, 1024)


def _parse_service_file(path: str, service: str, options: dict[str, str]) -> bool:
    """parseServiceFile(): returns whether the ``[service]`` group was found.

    Values only fill keywords still unset, so explicit settings win and the
    first occurrence inside the group wins over later ones.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        raise ConnInfoError(f'service file "{path}" not found') from None

    group_found = False
    # Iterating a BytesIO splits on b"\n" only, as fgets() does.
    for lineno, raw in enumerate(io.BytesIO(data), start=1):
        if len(raw) >= _SERVICE_LINE_MAX:
            raise ConnInfoError(f'line {lineno} too long in service file "{path}"')
        line = raw.decode("utf-8", "surrogateescape").strip("".join(_WHITESPACE))
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if group_found:
                return True
            # "[name]" followed by anything: libpq compares only up to "]".
            group_found = line[1:].startswith(service + "]")
            continue
        if not group_found:
            continue
        if line.startswith("ldap"):
            raise ConnInfoError(
                f'LDAP lookup of connection parameters is not supported (service file "{path}",'
                f" line {lineno})"
            )
        key, sep, value = line.partition("=")
        if not sep:
            raise ConnInfoError(f'syntax error in service file "{path}", line {lineno}')
        if key == "service":
            raise ConnInfoError(
                f'nested service specifications not supported in service file "{path}",'
                f" line {lineno}"
            )
        if key not in _OPTION_BY_KEYWORD:
            raise ConnInfoError(f'syntax error in service file "{path}", line {lineno}')
        options.setdefault(key, value)
    return group_found


def _apply_defaults(options: dict[str, str], env: Mapping[str, str]) -> None:
    """conninfo_add_defaults() after the service: environment, then compiled."""
    sslmode_defaulted = False
    for opt in _OPTIONS:
        if opt.keyword in options:
            continue
        if opt.envvar is not None and opt.envvar in env:
            options[opt.keyword] = env[opt.envvar]
            continue
        if opt.keyword == "sslmode":
            # The deprecated PGREQUIRESSL, honoured as libpq still does.
            if env.get("PGREQUIRESSL", "").startswith("1"):
                options["sslmode"] = "require"
                continue
            sslmode_defaulted = True
        if opt.default is not None:
            options[opt.keyword] = opt.default
    if "user" not in options:
        options["user"] = _os_user_name()
    # PostgreSQL 16+: trusting the system CA store implies full verification.
    if sslmode_defaulted and options.get("sslrootcert") == "system":
        options["sslmode"] = "verify-full"


def _os_user_name() -> str:
    """pg_fe_getauthname(): the effective user's login name."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        # libpq asks GetUserName(); the login session's name is in the environment.
        return os.environ.get("USERNAME") or os.environ.get("USER") or ""
    import pwd

    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise ConnInfoError(f"could not look up local user ID {uid}") from None


def _parse_int_param(value: str, keyword: str) -> int:
    """pqParseIntParam(): strtol() in base 10, surrounding whitespace allowed."""
    n = len(value)
    i = 0
    while i < n and value[i] in _WHITESPACE:
        i += 1
    j = i + 1 if i < n and value[i] in "+-" else i
    k = j
    while k < n and value[k] in "0123456789":
        k += 1
    number = int(value[i:k]) if k > j else None
    while k < n and value[k] in _WHITESPACE:
        k += 1
    if number is None or k != n or not -(2**31) <= number < 2**31:
        raise ConnInfoError(f'invalid integer value "{value}" for connection option "{keyword}"')
    return number


def _invalid(keyword: str, value: str) -> ConnInfoError:
    return ConnInfoError(f'invalid {keyword} value: "{value}"')


def _hosts(options: Mapping[str, str]) -> tuple[HostSpec, ...]:
    """pqConnectOptions2()'s host, hostaddr and port list handling."""
    host = options.get("host", "")
    hostaddr = options.get("hostaddr", "")
    port = options.get("port", "")
    if hostaddr:
        count = hostaddr.count(",") + 1
    elif host:
        count = host.count(",") + 1
    else:
        count = 1
    addrs = hostaddr.split(",") if hostaddr else [""] * count
    names = host.split(",") if host else [""] * count
    if len(names) != count:
        raise ConnInfoError(f"could not match {len(names)} host names to {count} hostaddr values")
    ports = port.split(",") if port else [""] * count
    if len(ports) == 1:
        ports = ports * count
    elif len(ports) != count:
        raise ConnInfoError(f"could not match {len(ports)} port numbers to {count} hosts")

    specs: list[HostSpec] = []
    for addr, name, port_text in zip(addrs, names, ports, strict=True):
        if port_text:
            number = _parse_int_param(port_text, "port")
            if not 1 <= number <= 65535:
                raise ConnInfoError(f'invalid port number: "{port_text}"')
        else:
            number = DEFAULT_PORT
        if addr:
            specs.append(HostSpec(name or addr, addr, number))
        elif name:
            specs.append(HostSpec(name, None, number))
        elif sys.platform == "win32":  # pragma: no cover - no default socket on Windows
            specs.append(HostSpec("localhost", None, number))
        else:
            specs.append(HostSpec(default_socket_dir(), None, number))
    return tuple(specs)


# require_auth methods and the authentication-request bits each allows; gss
# and sspi share GSS_CONT, which is what makes "!gss,!sspi" legal.
_AUTH_BITS: Final = {
    "password": 1 << 0,
    "md5": 1 << 1,
    "gss": (1 << 2) | (1 << 4),
    "sspi": (1 << 3) | (1 << 4),
    "scram-sha-256": 1 << 5,
    "oauth": 1 << 6,
}
_ALL_AUTH_BITS: Final = (1 << 7) - 1


def _check_require_auth(value: str) -> None:
    """The require_auth list rules of pqConnectOptions2() (PostgreSQL 16+)."""
    auth_required = True
    allowed = 0
    negated = False
    for index, part in enumerate(value.split(",")):
        method = part
        if method.startswith("!"):
            if index == 0:
                auth_required = False
                allowed = _ALL_AUTH_BITS
            elif not negated:
                raise ConnInfoError(
                    f'negative require_auth method "{method}" cannot be mixed with'
                    " non-negative methods"
                )
            negated = True
            method = method[1:]
        elif negated:
            raise ConnInfoError(
                f'require_auth method "{method}" cannot be mixed with negative methods'
            )
        if method == "none":
            duplicate = auth_required if negated else not auth_required
            auth_required = negated
        else:
            bits = _AUTH_BITS.get(method)
            if bits is None:
                raise _invalid("require_auth", method)
            if negated:
                duplicate = allowed & bits == 0
                allowed &= ~bits
            else:
                duplicate = allowed & bits == bits
                allowed |= bits
        if duplicate:
            raise ConnInfoError(f'require_auth method "{part}" is specified more than once')


_TLS_VERSIONS: Final = ("tlsv1", "tlsv1.1", "tlsv1.2", "tlsv1.3")


def _check_tls_versions(minimum: str, maximum: str) -> None:
    """sslVerifyProtocolVersion() and sslVerifyProtocolRange()."""
    for keyword, version in (
        ("ssl_min_protocol_version", minimum),
        ("ssl_max_protocol_version", maximum),
    ):
        if version and version.lower() not in _TLS_VERSIONS:
            raise _invalid(keyword, version)
    # TLSv1 as the minimum admits any maximum; otherwise the names sort.
    if (
        minimum
        and maximum
        and minimum.lower() != "tlsv1"
        and (maximum.lower() == "tlsv1" or minimum.lower() > maximum.lower())
    ):
        raise ConnInfoError("invalid SSL protocol version range")


def _connect_timeout(value: str | None) -> float | None:
    """pqConnectDBComplete(): integer seconds; <= 0 waits forever; 1 means 2.

    libpq rounds deadlines to whole seconds, so it insists on two seconds to
    avoid giving up almost at once.
    """
    if value is None:
        return None
    seconds = _parse_int_param(value, "connect_timeout")
    if seconds <= 0:
        return None
    return float(max(seconds, 2))


def _choice(options: Mapping[str, str], keyword: str, allowed: tuple[str, ...]) -> str:
    value = options.get(keyword)
    if value is None:
        # Only reachable for keywords without a compiled default.
        return allowed[0]
    if value not in allowed:
        raise _invalid(keyword, value)
    return value


# pg_encoding_to_char() names for nl_langinfo(CODESET) values, from
# src/port/chklocale.c; matched case-insensitively as libpq does.
_CODESET_ENCODINGS: Final = {
    name.lower(): encoding
    for encoding, names in {
        "EUC_JP": ("EUC-JP", "eucJP", "IBM-eucJP", "sdeckanji"),
        "EUC_CN": ("EUC-CN", "eucCN", "IBM-eucCN", "GB2312", "dechanzi"),
        "EUC_KR": ("EUC-KR", "eucKR", "IBM-eucKR", "deckorean", "5601"),
        "EUC_TW": ("EUC-TW", "eucTW", "IBM-eucTW", "cns11643"),
        "UTF8": ("UTF-8", "utf8"),
        "LATIN1": ("ISO-8859-1", "ISO8859-1", "iso88591"),
        "LATIN2": ("ISO-8859-2", "ISO8859-2", "iso88592"),
        "LATIN3": ("ISO-8859-3", "ISO8859-3", "iso88593"),
        "LATIN4": ("ISO-8859-4", "ISO8859-4", "iso88594"),
        "LATIN5": ("ISO-8859-9", "ISO8859-9", "iso88599"),
        "LATIN6": ("ISO-8859-10", "ISO8859-10", "iso885910"),
        "LATIN7": ("ISO-8859-13", "ISO8859-13", "iso885913"),
        "LATIN8": ("ISO-8859-14", "ISO8859-14", "iso885914"),
        "LATIN9": ("ISO-8859-15", "ISO8859-15", "iso885915"),
        "LATIN10": ("ISO-8859-16", "ISO8859-16", "iso885916"),
        "ISO_8859_5": ("ISO-8859-5", "ISO8859-5", "iso88595"),
        "ISO_8859_6": ("ISO-8859-6", "ISO8859-6", "iso88596"),
        "ISO_8859_7": ("ISO-8859-7", "ISO8859-7", "iso88597"),
        "ISO_8859_8": ("ISO-8859-8", "ISO8859-8", "iso88598"),
        "WIN1250": ("CP1250",),
        "WIN1251": ("CP1251",),
        "WIN1252": ("CP1252",),
        "WIN1253": ("CP1253",),
        "WIN1254": ("CP1254",),
        "WIN1255": ("CP1255",),
        "WIN1256": ("CP1256",),
        "WIN1257": ("CP1257",),
        "WIN1258": ("CP1258",),
        "WIN866": ("CP866",),
        "WIN874": ("CP874",),
        "KOI8R": ("KOI8-R",),
        "KOI8U": ("KOI8-U",),
        "SJIS": ("SJIS", "PCK", "SHIFT_JIS"),
        "BIG5": ("BIG5", "BIG5HKSCS"),
        "GBK": ("GBK", "CP936"),
        "UHC": ("CP949",),
        "JOHAB": ("JOHAB", "CP1361"),
        "GB18030": ("GB18030",),
        "EUC_JIS_2004": ("EUC-JISX0213",),
        "SHIFT_JIS_2004": ("SHIFT_JISX0213",),
    }.items()
    for name in names
}


def _client_encoding_from_locale() -> str | None:
    """pg_get_encoding_from_locale(NULL): client_encoding=auto.

    Returns None when the codeset has no PostgreSQL equivalent; libpq then
    sends no client_encoding at all.
    """
    if sys.platform == "win32":  # pragma: no cover - Windows code pages differ
        return None
    ctype = locale.setlocale(locale.LC_CTYPE)  # a query: no argument, no change
    if ctype.upper() in ("C", "POSIX"):
        return "SQL_ASCII"
    return _CODESET_ENCODINGS.get(locale.nl_langinfo(locale.CODESET).lower())


def _passfile(options: Mapping[str, str], env: Mapping[str, str]) -> str:
    passfile = options.get("passfile")
    if passfile:
        return passfile
    home = _home_directory(env)
    if home is None:
        return ""
    name = "pgpass.conf" if sys.platform == "win32" else ".pgpass"
    return f"{home}/{name}"


def _finish(options: dict[str, str], env: Mapping[str, str]) -> ConnectParams:
    """pqConnectOptions2(): derive and validate, in libpq's order."""
    hosts = _hosts(options)

    user = options.get("user") or _os_user_name()
    dbname = options.get("dbname") or user

    require_auth = options.get("require_auth") or None
    if require_auth:
        _check_require_auth(require_auth)
    channel_binding = _choice(options, "channel_binding", ("prefer", "disable", "require"))

    sslmode = options["sslmode"]
    if sslmode not in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"):
        raise _invalid("sslmode", sslmode)
    sslnegotiation = _choice(options, "sslnegotiation", ("postgres", "direct"))
    if sslnegotiation == "direct" and sslmode in ("disable", "allow", "prefer"):
        raise ConnInfoError(
            f'weak sslmode "{sslmode}" may not be used with sslnegotiation=direct'
            ' (use "require", "verify-ca", or "verify-full")'
        )
    if options.get("sslrootcert") == "system" and sslmode != "verify-full":
        raise ConnInfoError(
            f'weak sslmode "{sslmode}" may not be used with sslrootcert=system (use "verify-full")'
        )
    _check_tls_versions(
        options.get("ssl_min_protocol_version", ""), options.get("ssl_max_protocol_version", "")
    )
    for keyword in ("min_protocol_version", "max_protocol_version"):
        version = options.get(keyword)
        if version and version not in ("3.0", "3.2", "latest"):
            raise _invalid(keyword, version)
    if "sslcertmode" in options:
        _choice(options, "sslcertmode", ("disable", "allow", "require"))

    gssencmode = _choice(options, "gssencmode", ("prefer", "disable", "require"))
    if gssencmode == "require":
        # walstream has no GSSAPI, which is what this libpq message is for.
        raise ConnInfoError(
            'gssencmode value "require" invalid when GSSAPI support is not compiled in'
        )
    target_session_attrs = _choice(
        options,
        "target_session_attrs",
        ("any", "read-write", "read-only", "primary", "standby", "prefer-standby"),
    )
    load_balance_hosts = _choice(options, "load_balance_hosts", ("disable", "random"))

    client_encoding = options.get("client_encoding") or None
    if client_encoding == "auto":
        client_encoding = _client_encoding_from_locale()

    application_name = options.get("application_name")
    if application_name is None:
        application_name = options.get("fallback_application_name")

    gucs = {
        guc: env[var]
        for var, guc in _ENVIRONMENT_GUCS
        if var in env and env[var].lower() != "default"
    }

    return ConnectParams(
        hosts=hosts,
        user=user,
        dbname=dbname,
        password=options.get("password") or None,
        passfile=_passfile(options, env),
        application_name=application_name or None,
        options=options.get("options") or None,
        replication=options.get("replication") or None,
        client_encoding=client_encoding,
        connect_timeout=_connect_timeout(options.get("connect_timeout")),
        target_session_attrs=target_session_attrs,
        load_balance_hosts=load_balance_hosts,
        sslmode=sslmode,
        sslrootcert=options.get("sslrootcert") or None,
        sslcert=options.get("sslcert") or None,
        sslkey=options.get("sslkey") or None,
        sslcrl=options.get("sslcrl") or None,
        sslpassword=options.get("sslpassword") or None,
        sslsni=options.get("sslsni", "").startswith("1"),
        ssl_min_protocol_version=options.get("ssl_min_protocol_version") or None,
        ssl_max_protocol_version=options.get("ssl_max_protocol_version") or None,
        channel_binding=channel_binding,
        gssencmode=gssencmode,
        require_auth=require_auth,
        settings=types.MappingProxyType(
            {k: options[k] for k in sorted(options, key=_KEYWORD_ORDER.__getitem__)}
        ),
        environment_gucs=types.MappingProxyType(gucs),
    )
