"""pg_hba.conf as PostgreSQL reads it, for a server of physical replication connections.

:func:`parse_hba` tokenizes and parses the text as PostgreSQL's hba.c does
(its pg_hba_file_rules view on 15, 16 and 18 agrees): double quotes (``""`` is
a literal quote inside them), ``#`` comments, commas between the values of a
field, a backslash at the end of a line continuing it on the next.
:meth:`HbaRules.match` finds the first line whose connection type, address,
database and user match a connection; there is no fall-through, and no match
is a rejection (:func:`rejection_message` words it as PostgreSQL does).

What walstream serves is narrower than PostgreSQL, and the differences are
refused at load rather than silently misread:

* Every connection is a physical replication connection, so the database
  column matches only the unquoted keyword ``replication`` (not ``all``, not a
  quoted ``"replication"``, never a name or a regular expression).
* ``+group`` is refused: walstream knows no role memberships. ``@file``
  inclusions and the ``include``/``include_if_exists``/``include_dir``
  directives are refused, as are host names in the address column.
* Methods: ``trust``, ``reject``, ``scram-sha-256``, ``md5``, ``password``,
  ``cert`` and ``peer`` (``ident`` on a ``local`` line means ``peer``, as in
  PostgreSQL). PostgreSQL's other methods are refused with its own words
  for a build that lacks them; ``map=`` (no pg_ident.conf) and
  ``clientname=DN`` are refused too.
* ``hostgssenc`` lines parse but never match (no GSSAPI encryption), and
  ``hostssl`` lines never match a server without TLS: both are PostgreSQL's
  warnings (:meth:`HbaRules.warnings`), not errors.
* User regular expressions (``/regex``, PostgreSQL 16) use Python's
  :mod:`re` with search semantics, as PostgreSQL's regexec does; Python's
  syntax differs from PostgreSQL's ARE in corners, and so do the words of a
  compile error.

Error messages are PostgreSQL's, as its ``pg_hba_file_rules`` view reports
them; each error also names the file and line. Everything here is pure
computation except :func:`read_hba_file`. Numeric addresses are parsed with
``getaddrinfo(AI_NUMERICHOST)``, as PostgreSQL does, which never consults the
network but accepts exactly what PostgreSQL accepts (``127.1``,
``fe80::1%lo``).

Errors: :class:`HbaFileError` (every bad line of a file, each an
:class:`HbaError` naming file and line, with PostgreSQL's words).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from walstream.errors import Error

__all__ = [
    "DEFAULT_HBA",
    "METHODS",
    "ConnectionFacts",
    "HbaError",
    "HbaFileError",
    "HbaLine",
    "HbaRules",
    "HbaToken",
    "InterfaceAddress",
    "TokenizedLine",
    "default_hba_rules",
    "parse_hba",
    "read_hba_file",
    "rejection_message",
    "tokenize_hba",
]

# initdb's spirit without a file: replication over the local socket and from
# loopback only, without a password.
DEFAULT_HBA: Final = """\
local   replication   all                  trust
host    replication   all   127.0.0.1/32   trust
host    replication   all   ::1/128        trust
"""

ConnType = Literal["local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc"]
Method = Literal["trust", "reject", "scram-sha-256", "md5", "password", "cert", "peer"]
METHODS: Final[tuple[Method, ...]] = (
    "trust",
    "reject",
    "scram-sha-256",
    "md5",
    "password",
    "cert",
    "peer",
)
_CONN_TYPES: Final = ("local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc")
# PostgreSQL's methods that walstream does not implement: refused with the
# words PostgreSQL uses for a build without them.
_UNSUPPORTED_METHODS: Final = frozenset(
    ("ident", "gss", "sspi", "pam", "bsd", "ldap", "radius", "oauth")
)
# Options of methods walstream refuses: PostgreSQL's INVALID_AUTH_OPTION
# names the methods they belong to.
_FOREIGN_OPTIONS: Final = {
    "pamservice": "pam",
    "pam_use_hostname": "pam",
    "ldapurl": "ldap",
    "ldaptls": "ldap",
    "ldapscheme": "ldap",
    "ldapserver": "ldap",
    "ldapport": "ldap",
    "ldapbinddn": "ldap",
    "ldapbindpasswd": "ldap",
    "ldapsearchattribute": "ldap",
    "ldapsearchfilter": "ldap",
    "ldapbasedn": "ldap",
    "ldapprefix": "ldap",
    "ldapsuffix": "ldap",
    "krb_realm": "gssapi and sspi",
    "include_realm": "gssapi and sspi",
    "compat_realm": "sspi",
    "upn_username": "sspi",
    "radiusservers": "radius",
    "radiussecrets": "radius",
    "radiusidentifiers": "radius",
    "radiusports": "radius",
    "issuer": "oauth",
    "scope": "oauth",
    "validator": "oauth",
    "delegate_ident_mapping": "oauth",
}
# PostgreSQL 18's list (15 and 16 lack "oauth"): the newest server's words.
_MAP_METHODS: Final = "ident, peer, gssapi, sspi, cert, and oauth"
_BLANKS: Final = " \t\r"  # PostgreSQL's pg_isblank


class HbaError(Error, ValueError):
    """One bad line: PostgreSQL's message, and where."""

    def __init__(
        self, file_name: str, line_number: int, message: str, *, hint: str | None = None
    ) -> None:
        self.file_name = file_name
        self.line_number = line_number
        self.message = message
        self.hint = hint
        text = f'{message} (line {line_number} of configuration file "{file_name}")'
        if hint:
            text += f"\nHINT:  {hint}"
        super().__init__(text)


class HbaFileError(Error, ValueError):
    """The file cannot be used; ``errors`` holds every bad line, as PostgreSQL logs them all."""

    def __init__(
        self, file_name: str, errors: Sequence[HbaError], message: str | None = None
    ) -> None:
        self.file_name = file_name
        self.errors = tuple(errors)
        lines = [message or f'could not load authentication file "{file_name}"']
        lines += [str(e) for e in self.errors]
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------------
# Tokenizing (hba.c's tokenize_auth_file, next_field_expand, next_token)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HbaToken:
    """One value of a field; ``quoted`` if it began with a double quote.

    Quoting matters for keywords: ``all``, ``replication``, ``samehost`` and
    ``+group`` are keywords only unquoted.
    """

    string: str
    quoted: bool = False

    def is_keyword(self, keyword: str) -> bool:
        return not self.quoted and self.string == keyword


@dataclass(frozen=True, slots=True)
class TokenizedLine:
    """A non-empty line: its fields, each a tuple of the comma-separated tokens."""

    file_name: str
    line_number: int
    raw_line: str
    fields: tuple[tuple[HbaToken, ...], ...]


def _next_token(line: str, pos: int) -> tuple[HbaToken | None, int, bool]:
    """The next token at or after ``pos``.

    Returns the token (None at the end of the line), the position after it,
    and whether a comma ends it (the field then has another value).
    """
    n = len(line)
    # Skip blanks and commas before the token.
    while pos < n and (line[pos] in _BLANKS or line[pos] == ","):
        pos += 1
    buf: list[str] = []
    in_quote = was_quote = saw_quote = initial_quote = False
    comma = False
    while pos < n and (line[pos] not in _BLANKS or in_quote):
        c = line[pos]
        if c == "#" and not in_quote:
            pos = n  # a comment runs to the end of the line
            break
        if c == "," and not in_quote:
            comma = True
            break  # the comma is left for the next call to skip
        if c != '"' or was_quote:
            buf.append(c)
        # A literal double quote is two double quotes.
        was_quote = (not was_quote) if (in_quote and c == '"') else False
        if c == '"':
            in_quote = not in_quote
            saw_quote = True
            if not buf:
                initial_quote = True
        pos += 1
    if saw_quote or buf:
        return HbaToken("".join(buf), initial_quote), pos, comma
    return None, pos, False


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """(line number, line) with backslash continuations joined, as PostgreSQL does."""
    physical = text.split("\n")
    if physical[-1] == "":
        physical.pop()  # the line break that ends the last line starts none
    i = 0
    number = 1
    while i < len(physical):
        buf = ""
        last_backslash = 0
        continuations = 0
        while i < len(physical):
            buf = (buf + physical[i]).rstrip("\r")
            i += 1
            # The backslash must be past the previous continuation's, or a
            # line ending in "\\" followed by an empty one would continue twice.
            if len(buf) > last_backslash and buf.endswith("\\"):
                buf = buf[:-1]
                last_backslash = len(buf)
                continuations += 1
                continue
            break
        yield number, buf
        number += continuations + 1


def tokenize_hba(text: str, file_name: str) -> list[TokenizedLine]:
    """Split the text into lines of fields of tokens; blank and comment lines are dropped."""
    lines: list[TokenizedLine] = []
    for number, raw in _logical_lines(text):
        fields: list[tuple[HbaToken, ...]] = []
        pos = 0
        while pos < len(raw):
            tokens: list[HbaToken] = []
            while True:
                token, pos, comma = _next_token(raw, pos)
                if token is None:
                    break
                tokens.append(token)
                if not comma:
                    break
            if tokens:
                fields.append(tuple(tokens))
        if fields:
            lines.append(TokenizedLine(file_name, number, raw, tuple(fields)))
    return lines


# ---------------------------------------------------------------------------
# Parsed lines
# ---------------------------------------------------------------------------

InterfaceAddress = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class _Network:
    """An address and a mask, compared as PostgreSQL's pg_range_sockaddr does."""

    family: int
    address: int
    mask: int

    def contains(self, address: IPAddress) -> bool:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        # Only the same family matches: an IPv4-mapped IPv6 client does not
        # match an IPv4 line, in PostgreSQL as here.
        return family == self.family and ((int(address) ^ self.address) & self.mask) == 0


@dataclass(frozen=True, slots=True)
class HbaLine:
    """One parsed line of the file."""

    file_name: str
    line_number: int
    raw_line: str
    conntype: ConnType
    databases: tuple[HbaToken, ...]
    roles: tuple[HbaToken, ...]
    # "all", "samehost", "samenet", or "mask" with network set; None for local.
    address: Literal["all", "samehost", "samenet", "mask"] | None
    network: _Network | None
    method: Method
    options: Mapping[str, str] = field(default_factory=dict)
    clientcert: Literal["verify-ca", "verify-full"] | None = None
    _role_patterns: tuple[re.Pattern[str] | None, ...] = ()

    def _matches_connection(
        self, facts: ConnectionFacts, interfaces: Sequence[InterfaceAddress]
    ) -> bool:
        if self.conntype == "local":
            return facts.address is None
        if facts.address is None:
            return False
        if self.conntype == "hostssl" and not facts.ssl:
            return False
        if self.conntype == "hostnossl" and facts.ssl:
            return False
        if self.conntype == "hostgssenc":
            return False  # no GSSAPI encryption in walstream
        if self.address == "all":
            return True
        if self.address == "mask":
            assert self.network is not None
            return self.network.contains(facts.address)
        for interface in interfaces:
            if interface.version != facts.address.version:
                continue
            if self.address == "samehost":
                if interface.ip == facts.address:
                    return True
            elif (int(interface.ip) ^ int(facts.address)) & int(interface.netmask) == 0:
                return True
        return False

    def _matches_database(self) -> bool:
        # A physical walsender matches only the replication keyword.
        return any(t.is_keyword("replication") for t in self.databases)

    def _matches_role(self, user: str) -> bool:
        for token, pattern in zip(self.roles, self._role_patterns, strict=True):
            if token.is_keyword("all"):
                return True
            if pattern is not None:
                if pattern.search(user):
                    return True
            elif token.string == user:
                return True
        return False

    def matches(self, facts: ConnectionFacts, interfaces: Sequence[InterfaceAddress] = ()) -> bool:
        return (
            self._matches_connection(facts, interfaces)
            and self._matches_database()
            and self._matches_role(facts.user)
        )


@dataclass(frozen=True, slots=True)
class ConnectionFacts:
    """What the lines are matched against, as the shell knows it.

    ``address`` is the client's IP address, or None on a Unix-domain socket;
    ``ssl`` whether TLS is in use.
    """

    user: str
    address: IPAddress | None
    ssl: bool = False

    @property
    def host(self) -> str:
        """The client as PostgreSQL's messages show it (getnameinfo NI_NUMERICHOST)."""
        if self.address is None:
            return "[local]"
        family = socket.AF_INET if self.address.version == 4 else socket.AF_INET6
        # inet_ntop, not str(): glibc writes an IPv4-mapped address as
        # ::ffff:127.0.0.1 where ipaddress writes ::ffff:7f00:1.
        text = socket.inet_ntop(family, self.address.packed)
        scope = getattr(self.address, "scope_id", None)
        return f"{text}%{scope}" if scope else text


def rejection_message(facts: ConnectionFacts, *, explicit: bool) -> str:
    """PostgreSQL's FATAL (SQLSTATE 28000) for a physical replication connection refused by pg_hba.

    ``explicit`` for a matching ``reject`` line, else there was no matching line.
    """
    encryption = "SSL encryption" if facts.ssl else "no encryption"
    if explicit:
        return (
            f'pg_hba.conf rejects replication connection for host "{facts.host}", '
            f'user "{facts.user}", {encryption}'
        )
    return (
        f'no pg_hba.conf entry for replication connection from host "{facts.host}", '
        f'user "{facts.user}", {encryption}'
    )


@dataclass(frozen=True)
class HbaRules:
    """The parsed lines of one file, in order."""

    file_name: str
    lines: tuple[HbaLine, ...]

    def match(
        self, facts: ConnectionFacts, interfaces: Sequence[InterfaceAddress] = ()
    ) -> HbaLine | None:
        """The first line that matches, or None (an implicit rejection).

        ``interfaces`` are the server's own addresses with their netmasks,
        needed only by ``samehost`` and ``samenet`` lines
        (:func:`walstream.sender.hostinfo.interface_addresses` gathers them).
        """
        for line in self.lines:
            if line.matches(facts, interfaces):
                return line
        return None

    @property
    def needs_interfaces(self) -> bool:
        """Whether any line is ``samehost`` or ``samenet``."""
        return any(line.address in ("samehost", "samenet") for line in self.lines)

    def warnings(self, *, ssl_enabled: bool) -> list[HbaError]:
        """Lines that load but can never match, with PostgreSQL's words for them."""
        found: list[HbaError] = []
        for line in self.lines:
            if line.conntype == "hostssl" and not ssl_enabled:
                found.append(
                    HbaError(
                        line.file_name,
                        line.line_number,
                        "hostssl record cannot match because SSL is disabled",
                        hint="Give the sender a certificate and key to enable TLS.",
                    )
                )
            elif line.conntype == "hostgssenc":
                found.append(
                    HbaError(
                        line.file_name,
                        line.line_number,
                        "hostgssenc record cannot match because GSSAPI is not supported by "
                        "this build",
                    )
                )
        return found


# ---------------------------------------------------------------------------
# Parsing (hba.c's parse_hba_line)
# ---------------------------------------------------------------------------


class _LineError(Exception):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def _numeric_address(text: str) -> tuple[int, int] | None:
    """(family, address as int) of a numeric host, None for a host name.

    Raises _LineError for the other getaddrinfo failures, as PostgreSQL does.
    """
    try:
        infos = socket.getaddrinfo(text, None, flags=socket.AI_NUMERICHOST)
    except socket.gaierror as e:
        if e.errno == socket.EAI_NONAME:
            return None
        raise _LineError(f'invalid IP address "{text}": {e.strerror}') from None
    family, _, _, _, sockaddr = infos[0]
    packed = socket.inet_pton(family, str(sockaddr[0]).split("%")[0])
    return int(family), int.from_bytes(packed, "big")


def _cidr_mask(bits_text: str, family: int) -> int | None:
    """PostgreSQL's pg_sockaddr_cidr_mask: strtol rules, then a range check."""
    match = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?[0-9]+)", bits_text)
    if match is None:
        return None
    bits = int(match[1])
    width = 32 if family == socket.AF_INET else 128
    if not 0 <= bits <= width:
        return None
    return ((1 << bits) - 1) << (width - bits) if bits else 0


def _parse_address(fields: list[tuple[HbaToken, ...]]) -> tuple[str, _Network | None]:
    """Consume the address (and mask) fields; return the comparison and the network."""
    if not fields:
        raise _LineError("end-of-line before IP address specification")
    tokens = fields.pop(0)
    if len(tokens) > 1:
        raise _LineError(
            "multiple values specified for host address", "Specify one address range per line."
        )
    token = tokens[0]
    for keyword in ("all", "samehost", "samenet"):
        if token.is_keyword(keyword):
            return keyword, None
    text, slash, bits = token.string.partition("/")
    numeric = _numeric_address(text)
    if numeric is None:
        if slash:
            raise _LineError(
                f'specifying both host name and CIDR mask is invalid: "{token.string}"'
            )
        raise _LineError(
            f'host name "{text}" in the address field is not supported by walstream',
            "Use an IP address range, all, samehost or samenet.",
        )
    family, address = numeric
    if slash:
        mask = _cidr_mask(bits, family)
        if mask is None:
            raise _LineError(f'invalid CIDR mask in address "{token.string}"')
        return "mask", _Network(family, address, mask)
    if not fields:
        raise _LineError(
            "end-of-line before netmask specification",
            "Specify an address range in CIDR notation, or provide a separate netmask.",
        )
    tokens = fields.pop(0)
    if len(tokens) > 1:
        raise _LineError("multiple values specified for netmask")
    mask_text = tokens[0].string
    try:
        infos = socket.getaddrinfo(mask_text, None, flags=socket.AI_NUMERICHOST)
    except socket.gaierror as e:
        raise _LineError(f'invalid IP mask "{mask_text}": {e.strerror}') from None
    mask_family, _, _, _, sockaddr = infos[0]
    if mask_family != family:
        raise _LineError("IP address and mask do not match")
    packed = socket.inet_pton(mask_family, str(sockaddr[0]).split("%")[0])
    return "mask", _Network(family, address, int.from_bytes(packed, "big"))


def _compile_role(token: HbaToken) -> re.Pattern[str] | None:
    if token.is_keyword("all"):
        return None
    if token.string.startswith("+") and not token.quoted:
        raise _LineError(
            f'group membership "{token.string}" is not supported by walstream: '
            "it knows no role memberships",
            "List the roles by name, or match them with a regular expression (/regex).",
        )
    if not token.string.startswith("/"):
        return None
    try:
        return re.compile(token.string[1:])
    except re.error as e:
        raise _LineError(f'invalid regular expression "{token.string[1:]}": {e.msg}') from None


def _check_database(token: HbaToken) -> None:
    # Never matched by a physical walsender, but a bad regular expression is
    # still an error at load in PostgreSQL 16.
    if token.string.startswith("/") and not token.is_keyword("all"):
        try:
            re.compile(token.string[1:])
        except re.error as e:
            raise _LineError(f'invalid regular expression "{token.string[1:]}": {e.msg}') from None


def _parse_method(token: HbaToken, conntype: str) -> Method:
    name = token.string
    if name == "ident" and conntype == "local":
        name = "peer"  # PostgreSQL's backwards compatibility
    if name in _UNSUPPORTED_METHODS:
        raise _LineError(f'invalid authentication method "{name}": not supported by this build')
    if name not in METHODS:
        raise _LineError(f'invalid authentication method "{name}"')
    method: Method = name
    if conntype != "local" and method == "peer":
        raise _LineError("peer authentication is only supported on local sockets")
    if conntype != "hostssl" and method == "cert":
        raise _LineError("cert authentication is only supported on hostssl connections")
    return method


def _parse_option(
    name: str, value: str, conntype: str, method: Method, options: dict[str, str]
) -> None:
    if name == "map":
        if method not in ("peer", "cert"):
            raise _LineError(
                f'authentication option "map" is only valid for authentication methods '
                f"{_MAP_METHODS}"
            )
        raise _LineError(
            'authentication option "map" is not supported by walstream: it has no pg_ident.conf',
            "Without map, the system user name must equal the role name.",
        )
    if name == "clientcert":
        if conntype != "hostssl":
            raise _LineError('clientcert can only be configured for "hostssl" rows')
        if value == "verify-ca" and method == "cert":
            raise _LineError(
                'clientcert can only be set to "verify-full" when using "cert" authentication'
            )
        if value not in ("verify-ca", "verify-full"):
            raise _LineError(f'invalid value for clientcert: "{value}"')
    elif name == "clientname":
        if conntype != "hostssl":
            raise _LineError('clientname can only be configured for "hostssl" rows')
        if value not in ("CN", "DN"):
            raise _LineError(f'invalid value for clientname: "{value}"')
        if value == "DN":
            raise _LineError('clientname "DN" is not supported by walstream', "Use clientname=CN.")
    elif name in _FOREIGN_OPTIONS:
        raise _LineError(
            f'authentication option "{name}" is only valid for authentication methods '
            f"{_FOREIGN_OPTIONS[name]}"
        )
    else:
        raise _LineError(f'unrecognized authentication option name: "{name}"')
    options[name] = value


def _parse_line(tok: TokenizedLine) -> HbaLine:
    # PostgreSQL expands "@file" while tokenizing, in any field.
    for tokens in tok.fields:
        for token in tokens:
            if token.string.startswith("@") and len(token.string) > 1 and not token.quoted:
                raise _include_refused(token.string)
    fields = list(tok.fields)
    kind = fields.pop(0)
    if len(kind) > 1:
        raise _LineError(
            "multiple values specified for connection type",
            "Specify exactly one connection type per line.",
        )
    conntype_text = kind[0].string
    if conntype_text not in _CONN_TYPES:
        raise _LineError(f'invalid connection type "{conntype_text}"')
    conntype: ConnType = conntype_text  # type: ignore[assignment]

    if not fields:
        raise _LineError("end-of-line before database specification")
    databases = fields.pop(0)
    for token in databases:
        _check_database(token)

    if not fields:
        raise _LineError("end-of-line before role specification")
    roles = fields.pop(0)
    patterns = tuple(_compile_role(t) for t in roles)

    address: Literal["all", "samehost", "samenet", "mask"] | None = None
    network: _Network | None = None
    if conntype != "local":
        cmp, network = _parse_address(fields)
        address = cmp  # type: ignore[assignment]

    if not fields:
        raise _LineError("end-of-line before authentication method")
    method_tokens = fields.pop(0)
    if len(method_tokens) > 1:
        raise _LineError(
            "multiple values specified for authentication type",
            "Specify exactly one authentication type per line.",
        )
    method = _parse_method(method_tokens[0], conntype)

    options: dict[str, str] = {}
    for tokens in fields:
        for token in tokens:
            name, eq, value = token.string.partition("=")
            if not eq:
                raise _LineError(f"authentication option not in name=value format: {token.string}")
            _parse_option(name, value, conntype, method, options)
    clientcert = options.get("clientcert")
    if method == "cert":
        clientcert = "verify-full"  # cert implies a verified certificate naming the role
    return HbaLine(
        file_name=tok.file_name,
        line_number=tok.line_number,
        raw_line=tok.raw_line,
        conntype=conntype,
        databases=databases,
        roles=roles,
        address=address,
        network=network,
        method=method,
        options=options,
        clientcert=clientcert,  # type: ignore[arg-type]
        _role_patterns=patterns,
    )


def _include_refused(token: str) -> _LineError:
    return _LineError(
        f'file inclusion "{token}" is not supported by walstream',
        "Write the names into pg_hba.conf itself.",
    )


_INCLUDE_DIRECTIVES: Final = ("include", "include_if_exists", "include_dir")


def parse_hba(text: str, file_name: str) -> HbaRules:
    """Parse a pg_hba.conf; :class:`HbaFileError` lists every bad line.

    Like PostgreSQL, it parses the whole file before giving up, so one run
    shows all the errors, and a file without a single line is an error.
    """
    lines: list[HbaLine] = []
    errors: list[HbaError] = []
    for tok in tokenize_hba(text, file_name):
        if len(tok.fields) == 2 and tok.fields[0][0].string in _INCLUDE_DIRECTIVES:
            errors.append(
                HbaError(
                    file_name,
                    tok.line_number,
                    f'"{tok.fields[0][0].string}" directives are not supported by walstream',
                    hint="Write the included lines into the file itself.",
                )
            )
            continue
        try:
            lines.append(_parse_line(tok))
        except _LineError as e:
            errors.append(HbaError(file_name, tok.line_number, e.message, hint=e.hint))
    if errors:
        raise HbaFileError(file_name, errors)
    if not lines:
        raise HbaFileError(file_name, (), f'configuration file "{file_name}" contains no entries')
    return HbaRules(file_name, tuple(lines))


def default_hba_rules() -> HbaRules:
    """The rules without a file: the local socket and loopback, trusted."""
    return parse_hba(DEFAULT_HBA, "(built-in default)")


def read_hba_file(path: str | Path) -> HbaRules:
    """Read and parse a pg_hba.conf file."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise HbaFileError(name, (), f'could not open file "{name}": {e.strerror}') from e
    # surrogateescape: PostgreSQL compares bytes, so a non-UTF-8 name still
    # round-trips instead of failing the whole file.
    return parse_hba(raw.decode("utf-8", errors="surrogateescape"), name)
