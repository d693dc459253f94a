"""walstream.conninfo checked against libpq itself.

The installed libpq (libpq.so.5) is the oracle: every case in ORACLE_CASES is
parsed by ``PQconninfoParse`` through ctypes and by :func:`parse_conninfo`,
and the results (or error messages) must be identical. Resolution is checked
the same way through ``PQconnectdbParams`` aimed at a socket that does not
exist, which fails fast but only after libpq has merged and validated every
parameter. Where libpq cannot be loaded those comparisons are skipped; the
hard-coded expectations below still run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import locale
import os
import pwd
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import walstream
from walstream.client.conninfo import (
    KEYWORD_ENVVARS,
    KEYWORDS,
    ConnectParams,
    HostSpec,
    default_socket_dir,
    parse_conninfo,
    resolve,
)
from walstream.errors import ConnInfoError

# --------------------------------------------------------------------------
# The libpq oracle
# --------------------------------------------------------------------------


class _Option(ctypes.Structure):
    """PQconninfoOption from libpq-fe.h."""

    _fields_ = (
        ("keyword", ctypes.c_char_p),
        ("envvar", ctypes.c_char_p),
        ("compiled", ctypes.c_char_p),
        ("val", ctypes.c_char_p),
        ("label", ctypes.c_char_p),
        ("dispchar", ctypes.c_char_p),
        ("dispsize", ctypes.c_int),
    )


def _text(raw: bytes) -> str:
    # Percent-decoding can produce non-UTF-8 bytes; walstream keeps them as
    # surrogate escapes, so decode libpq's bytes the same way.
    return raw.decode("utf-8", "surrogateescape")


class LibPQ:
    """The few libpq entry points the tests compare against."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        lib.PQconninfoParse.restype = ctypes.POINTER(_Option)
        lib.PQconninfoParse.argtypes = (ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p))
        lib.PQconndefaults.restype = ctypes.POINTER(_Option)
        lib.PQconninfoFree.argtypes = (ctypes.POINTER(_Option),)
        lib.PQfreemem.argtypes = (ctypes.c_void_p,)
        lib.PQconnectdbParams.restype = ctypes.c_void_p
        lib.PQconnectdbParams.argtypes = (
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
        )
        lib.PQstatus.argtypes = (ctypes.c_void_p,)
        lib.PQerrorMessage.restype = ctypes.c_char_p
        lib.PQerrorMessage.argtypes = (ctypes.c_void_p,)
        lib.PQconninfo.restype = ctypes.POINTER(_Option)
        lib.PQconninfo.argtypes = (ctypes.c_void_p,)
        lib.PQfinish.argtypes = (ctypes.c_void_p,)

    @staticmethod
    def _collect(options: ctypes._Pointer[_Option]) -> dict[str, str]:
        result: dict[str, str] = {}
        i = 0
        while options[i].keyword is not None:
            if options[i].val is not None:
                result[_text(options[i].keyword)] = _text(options[i].val)
            i += 1
        return result

    def parse(self, s: str) -> dict[str, str] | str:
        """PQconninfoParse: the option map, or the error without its newline."""
        errmsg = ctypes.c_void_p()
        options = self.lib.PQconninfoParse(s.encode("utf-8", "surrogateescape"), errmsg)
        if not options:
            assert errmsg.value is not None
            message = _text(ctypes.string_at(errmsg.value))
            self.lib.PQfreemem(errmsg)
            return message.removesuffix("\n")
        try:
            return self._collect(options)
        finally:
            self.lib.PQconninfoFree(options)

    def defaults(self) -> dict[str, tuple[str | None, str | None]]:
        """PQconndefaults: keyword -> (environment variable, compiled default)."""
        options = self.lib.PQconndefaults()
        try:
            result: dict[str, tuple[str | None, str | None]] = {}
            i = 0
            while options[i].keyword is not None:
                env = options[i].envvar
                compiled = options[i].compiled
                result[_text(options[i].keyword)] = (
                    None if env is None else _text(env),
                    None if compiled is None else _text(compiled),
                )
                i += 1
            return result
        finally:
            self.lib.PQconninfoFree(options)

    def connect(self, pairs: Sequence[tuple[str, str]]) -> tuple[str, dict[str, str]]:
        """PQconnectdbParams(expand_dbname=1): (error message, PQconninfo map).

        Callers aim it at a Unix socket that does not exist, so it returns at
        once; a validation failure shows up as the whole error message.
        """
        n = len(pairs)
        keywords = (ctypes.c_char_p * (n + 1))(*[k.encode() for k, _ in pairs], None)
        values = (ctypes.c_char_p * (n + 1))(*[v.encode() for _, v in pairs], None)
        conn = self.lib.PQconnectdbParams(keywords, values, 1)
        try:
            message = _text(self.lib.PQerrorMessage(conn) or b"")
            options = self.lib.PQconninfo(conn)
            try:
                merged = self._collect(options) if options else {}
            finally:
                self.lib.PQconninfoFree(options)
            return message.removesuffix("\n"), merged
        finally:
            self.lib.PQfinish(conn)


def _load_libpq() -> LibPQ | None:
    for name in (ctypes.util.find_library("pq"), "libpq.so.5"):
        if not name:
            continue
        try:
            return LibPQ(ctypes.CDLL(name))
        except OSError:
            continue
    return None


_LIBPQ = _load_libpq()


@pytest.fixture
def libpq() -> LibPQ:
    if _LIBPQ is None:
        pytest.skip("libpq (libpq.so.5) cannot be loaded: no oracle to compare with")
    return _LIBPQ


def ours(s: str) -> dict[str, str] | str:
    try:
        return parse_conninfo(s)
    except ConnInfoError as e:
        return str(e)


# --------------------------------------------------------------------------
# parse_conninfo against PQconninfoParse
# --------------------------------------------------------------------------

ORACLE_CASES = [
    # keyword/value strings
    pytest.param("", id="empty"),
    pytest.param(" \t\n\v\f\r ", id="only-whitespace"),
    pytest.param("host=localhost port=5432 dbname=mydb user=me", id="simple"),
    pytest.param("host = localhost   port= 5432\tdbname =mydb", id="spaces-around-equals"),
    pytest.param("host=a\tport=1\ndbname=d\r\nuser=u", id="tab-and-newline-separators"),
    pytest.param("application_name='my app'", id="quoted-spaces"),
    pytest.param("password=''", id="quoted-empty"),
    pytest.param("host=", id="unquoted-empty-at-end"),
    pytest.param("host= port=5432", id="blank-after-equals-swallows-next-pair"),
    pytest.param(r"password='it\'s'", id="escaped-quote-in-quotes"),
    pytest.param(r"password='a\\b'", id="escaped-backslash-in-quotes"),
    pytest.param(r"password=a\ b", id="escaped-space-unquoted"),
    pytest.param(r"password=a\\b", id="escaped-backslash-unquoted"),
    pytest.param("password=abc\\", id="trailing-backslash-unquoted"),
    pytest.param("password=a'b", id="quote-inside-unquoted"),
    pytest.param("host=a=b", id="equals-inside-value"),
    pytest.param("host=a host=b", id="repeated-keyword-last-wins"),
    pytest.param("host=a host=''", id="repeated-keyword-last-empty-wins"),
    pytest.param("dbname='host=x port=1'", id="dbname-not-expanded"),
    pytest.param("host=/var/run/postgresql port=5433", id="unix-socket-dir"),
    pytest.param("host=h1,h2,h3 port=5432,5433,5434", id="multiple-hosts"),
    pytest.param("requiressl=1", id="requiressl-1"),
    pytest.param("requiressl=0", id="requiressl-0"),
    pytest.param("requiressl=", id="requiressl-empty"),
    pytest.param("bogus=1", id="unknown-keyword"),
    pytest.param("HOST=a", id="keywords-are-case-sensitive"),
    pytest.param("host", id="missing-equals-at-end"),
    pytest.param("host localhost", id="missing-equals-before-word"),
    pytest.param("host='a'b", id="garbage-after-quoted-value"),
    pytest.param("password='abc", id="unterminated-quote"),
    pytest.param("password='abc\\'", id="unterminated-after-escape"),
    pytest.param("=value", id="empty-keyword"),
    pytest.param("postgresql:/host", id="almost-uri"),
    pytest.param("POSTGRESQL://host", id="uri-prefix-is-case-sensitive"),
    # URIs
    pytest.param("postgresql://", id="uri-empty"),
    pytest.param("postgres://", id="uri-short-prefix"),
    pytest.param("postgresql://localhost", id="uri-host"),
    pytest.param("postgresql://localhost:5433", id="uri-host-port"),
    pytest.param("postgresql://localhost/mydb", id="uri-dbname"),
    pytest.param("postgresql://user@localhost", id="uri-user"),
    pytest.param("postgresql://user:secret@localhost:5433/mydb", id="uri-full"),
    pytest.param("postgresql://user:@host", id="uri-empty-password"),
    pytest.param("postgresql://:pw@host", id="uri-empty-user"),
    pytest.param("postgresql://us%40er:p%3Ass@host", id="uri-percent-credentials"),
    pytest.param("postgresql://a@b@c", id="uri-at-in-host"),
    pytest.param("postgresql://u:p@ss@h", id="uri-at-in-password"),
    pytest.param("postgresql://host?user=a@b", id="uri-at-lookahead-ignores-query"),
    pytest.param("postgresql://[::1]:5433/db", id="uri-ipv6"),
    pytest.param("postgresql://[fe80::1%25eth0]/db", id="uri-ipv6-zone"),
    pytest.param("postgresql://[::1", id="uri-ipv6-unterminated"),
    pytest.param("postgresql://[]", id="uri-ipv6-empty"),
    pytest.param("postgresql://[::1]x", id="uri-ipv6-unexpected-char"),
    pytest.param("postgres://u@[::1]:5432x/db", id="uri-garbage-in-port-kept"),
    pytest.param("postgresql://h1:5433,h2", id="uri-multi-host-first-port"),
    pytest.param("postgresql://h1,h2:5434,[::1]:5435/db", id="uri-multi-host-mixed"),
    pytest.param("postgresql://h1,h2", id="uri-multi-host-no-ports"),
    pytest.param("postgresql://[::1],[::2]:5433", id="uri-multi-ipv6"),
    pytest.param("postgresql://,", id="uri-only-comma"),
    pytest.param("postgresql://%2Fvar%2Frun%2Fpostgresql/db", id="uri-socket-percent-encoded"),
    pytest.param("postgresql:///db?host=/tmp", id="uri-socket-in-query"),
    pytest.param("postgresql://host/", id="uri-empty-dbname"),
    pytest.param("postgresql://host:/db", id="uri-empty-port"),
    pytest.param("postgresql://host:abc/db", id="uri-port-not-checked"),
    pytest.param("postgresql://host:5432:1", id="uri-colon-in-port"),
    pytest.param("postgresql://host/db/extra", id="uri-slash-in-dbname"),
    pytest.param("postgresql://host/d%C3%A9", id="uri-utf8-dbname"),
    pytest.param("postgresql://host/%FF", id="uri-non-utf8-byte"),
    pytest.param("postgresql://host/db?sslmode=require&application_name=my%20app", id="uri-query"),
    pytest.param("postgresql://host/db?options=-c%20search_path%3Dfoo", id="uri-query-options"),
    pytest.param("postgresql://host/db?ssl=true", id="uri-ssl-true"),
    pytest.param("postgresql://host/db?ssl=false", id="uri-ssl-false"),
    pytest.param("postgresql://host/db?requiressl=1", id="uri-requiressl"),
    pytest.param("postgresql://host/db?dbname=other", id="uri-query-overrides-path"),
    pytest.param("postgresql://host/db?host=h2&port=1&host=h3", id="uri-query-repeated"),
    pytest.param("postgresql://host/db?sslmode=require&", id="uri-query-trailing-ampersand"),
    pytest.param("postgresql://host/db?foo=bar", id="uri-query-unknown"),
    pytest.param("postgresql://host/db?=x", id="uri-query-empty-key"),
    pytest.param("postgresql://host/db?&", id="uri-query-empty-pair"),
    pytest.param("postgresql://host/db?a=b=c", id="uri-query-extra-equals"),
    pytest.param("postgresql://host/db?sslmode", id="uri-query-missing-equals"),
    pytest.param("postgresql://host/db?%zz=1", id="uri-query-bad-percent-key"),
    pytest.param("postgresql://host/%zz", id="uri-bad-percent"),
    pytest.param("postgresql://host/%4", id="uri-truncated-percent"),
    pytest.param("postgresql://host/a%00b", id="uri-percent-nul"),
    pytest.param("postgresql://h%zz:1,h2", id="uri-bad-percent-in-host-list"),
]


@pytest.mark.parametrize("s", ORACLE_CASES)
def test_parse_matches_libpq(libpq: LibPQ, s: str) -> None:
    assert ours(s) == libpq.parse(s)


def test_oracle_case_count() -> None:
    assert len(ORACLE_CASES) >= 50


# Independent expectations, so the parser is tested even without libpq; the
# oracle confirms each one where it is available.
EXPECTED: list[tuple[str, dict[str, str] | str]] = [
    ("host=a host=", {"host": ""}),
    (r"password=a\ b", {"password": "a b"}),
    (r"password='it\'s'", {"password": "it's"}),
    ("host= port=5432", {"host": "port=5432"}),
    ("requiressl=1", {"sslmode": "require"}),
    ("bogus=1", 'invalid connection option "bogus"'),
    ("host", 'missing "=" after "host" in connection info string'),
    ("password='abc", "unterminated quoted string in connection info string"),
    ("postgresql://h1:5433,h2", {"host": "h1,h2", "port": "5433,"}),
    ("postgresql://h1,h2", {"host": "h1,h2", "port": ","}),
    ("postgresql://%2Ftmp/db", {"host": "/tmp", "dbname": "db"}),
    ("postgresql://[::1]:5433", {"host": "::1", "port": "5433"}),
    ("postgresql://host?user=a@b", {"user": "host?user=a", "host": "b"}),
    ("postgresql://h/?ssl=true", {"host": "h", "sslmode": "require"}),
    ("postgresql://h/db?foo=1", 'invalid URI query parameter: "foo"'),
    ("postgresql://h/%zz", 'invalid percent-encoded token: "%zz"'),
    ("postgresql://h/a%00", 'forbidden value %00 in percent-encoded value: "a%00"'),
    (
        "postgresql://[::1",
        'end of string reached when looking for matching "]" in IPv6 host address in URI:'
        ' "postgresql://[::1"',
    ),
    ("postgresql://[]", 'IPv6 host address may not be empty in URI: "postgresql://[]"'),
    (
        "postgresql://[::1]x",
        'unexpected character "x" at position 19 in URI (expected ":" or "/"):'
        ' "postgresql://[::1]x"',
    ),
    ("postgresql://h?a=b=c", 'extra key/value separator "=" in URI query parameter: "a"'),
    ("postgresql://h?sslmode", 'missing key/value separator "=" in URI query parameter: "sslmode"'),
]


@pytest.mark.parametrize(("s", "expected"), EXPECTED)
def test_parse_expected(s: str, expected: dict[str, str] | str) -> None:
    assert ours(s) == expected
    if _LIBPQ is not None:
        assert _LIBPQ.parse(s) == expected


_FUZZ_ALPHABET = " \t\n='\\%:/?&@,[]aho0129Fzs"
_FUZZ_WORDS = ["host", "port", "dbname", "user", "sslmode", "ssl", "true", "requiressl", "::1"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from(["", "", "postgresql://", "postgres://"]),
    body=st.lists(
        st.one_of(st.text(alphabet=_FUZZ_ALPHABET, max_size=4), st.sampled_from(_FUZZ_WORDS)),
        max_size=10,
    ),
)
def test_parse_matches_libpq_on_generated_strings(prefix: str, body: list[str]) -> None:
    if _LIBPQ is None:
        pytest.skip("libpq (libpq.so.5) cannot be loaded: no oracle to compare with")
    s = prefix + "".join(body)
    assert ours(s) == _LIBPQ.parse(s)


def test_uri_error_position_counts_bytes(libpq: LibPQ) -> None:
    # libpq reports a byte offset; the character itself is printed whole
    # (libpq's %c prints only the first byte of a multi-byte character).
    s = "postgresql://é@[::1]ü"
    with pytest.raises(ConnInfoError) as e:
        parse_conninfo(s)
    assert str(e.value) == (
        f'unexpected character "ü" at position 22 in URI (expected ":" or "/"): "{s}"'
    )
    assert "at position 22 in URI" in str(libpq.parse(s))


def test_non_utf8_percent_decoding_round_trips() -> None:
    value = parse_conninfo("postgresql://h/%FF%FE")["dbname"]
    assert value.encode("utf-8", "surrogateescape") == b"\xff\xfe"


def test_nul_character_is_rejected() -> None:
    with pytest.raises(ConnInfoError):
        parse_conninfo("host=a\0b")


def test_conninfo_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid connection option"):
        parse_conninfo("nope=1")


def test_public_api() -> None:
    assert walstream.parse_conninfo is parse_conninfo
    assert walstream.ConnInfoError is ConnInfoError


# --------------------------------------------------------------------------
# The keyword set
# --------------------------------------------------------------------------


def test_keywords_cover_libpq(libpq: LibPQ) -> None:
    theirs = libpq.defaults()
    assert set(theirs) <= set(KEYWORDS)
    for keyword, (envvar, _compiled) in theirs.items():
        assert KEYWORD_ENVVARS.get(keyword) == envvar, keyword


def test_compiled_defaults_match_libpq(libpq: LibPQ) -> None:
    settings_ = resolve(environ={"HOME": "/nonexistent"}).settings
    for keyword, (_envvar, compiled) in libpq.defaults().items():
        if compiled is not None:
            assert settings_[keyword] == compiled, keyword


# Added after libpq 15, so the installed oracle cannot parse them.
NEWER_KEYWORDS = {
    "servicefile": 18,
    "sslnegotiation": 17,
    "sslkeylogfile": 18,
    "sslcertmode": 16,
    "require_auth": 16,
    "min_protocol_version": 18,
    "max_protocol_version": 18,
    "gssdelegation": 16,
    "load_balance_hosts": 16,
    "scram_client_key": 18,
    "scram_server_key": 18,
    "oauth_issuer": 18,
    "oauth_client_id": 18,
    "oauth_client_secret": 18,
    "oauth_scope": 18,
}


@pytest.mark.parametrize("keyword", sorted(NEWER_KEYWORDS))
def test_keywords_newer_than_libpq_15(keyword: str) -> None:
    assert keyword in KEYWORDS
    assert parse_conninfo(f"{keyword}='x y'") == {keyword: "x y"}
    assert parse_conninfo(f"postgresql://h?{keyword}=x%20y") == {"host": "h", keyword: "x y"}
    if _LIBPQ is not None and keyword not in _LIBPQ.defaults():
        # Why these cannot be in ORACLE_CASES.
        assert _LIBPQ.parse(f"{keyword}=x") == f'invalid connection option "{keyword}"'


def test_requiressl_is_an_alias_not_a_keyword() -> None:
    assert "requiressl" not in KEYWORDS
    assert parse_conninfo("requiressl=1 sslmode=disable") == {"sslmode": "disable"}


def test_parse_returns_keywords_in_libpq_order() -> None:
    assert list(parse_conninfo("port=1 user=u host=h dbname=d")) == [
        "user",
        "dbname",
        "host",
        "port",
    ]


# --------------------------------------------------------------------------
# resolve(): defaults, precedence, expansion
# --------------------------------------------------------------------------

OS_USER = pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with no PG* variables and a private home and sysconfdir."""
    (tmp_path / "etc").mkdir()
    return {"HOME": str(tmp_path), "PGSYSCONFDIR": str(tmp_path / "etc")}


def test_defaults(env: dict[str, str], tmp_path: Path) -> None:
    p = resolve(environ=env)
    assert p.hosts == (HostSpec(default_socket_dir(), None, 5432),)
    assert p.hosts[0].is_unix_socket
    assert p.user == OS_USER
    assert p.dbname == OS_USER
    assert p.password is None
    assert p.passfile == f"{tmp_path}/.pgpass"
    assert p.sslmode == "prefer"
    assert p.channel_binding == "prefer"
    assert p.gssencmode == "prefer"
    assert p.target_session_attrs == "any"
    assert p.load_balance_hosts == "disable"
    assert p.sslsni is True
    assert p.ssl_min_protocol_version == "TLSv1.2"
    assert p.connect_timeout is None
    assert p.application_name is None
    assert p.options is None
    assert p.replication is None
    assert p.startup_parameters() == {"user": OS_USER, "database": OS_USER}


def test_default_socket_dir_prefers_distribution_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os.path, "isdir", lambda path: path == "/var/run/postgresql")
    assert default_socket_dir() == "/var/run/postgresql"
    monkeypatch.setattr(os.path, "isdir", lambda path: False)
    assert default_socket_dir() == "/tmp"


def test_environment_is_used(env: dict[str, str]) -> None:
    env |= {
        "PGHOST": "envhost",
        "PGPORT": "6543",
        "PGUSER": "envuser",
        "PGDATABASE": "envdb",
        "PGPASSWORD": "envpw",
        "PGAPPNAME": "envapp",
        "PGOPTIONS": "-c work_mem=1MB",
        "PGCONNECT_TIMEOUT": "7",
        "PGSSLMODE": "require",
        "PGTARGETSESSIONATTRS": "standby",
        "PGCHANNELBINDING": "disable",
        "PGKRBSRVNAME": "kerb",
    }
    p = resolve(environ=env)
    assert p.hosts == (HostSpec("envhost", None, 6543),)
    assert (p.user, p.dbname, p.password) == ("envuser", "envdb", "envpw")
    assert p.application_name == "envapp"
    assert p.options == "-c work_mem=1MB"
    assert p.connect_timeout == 7.0
    assert p.sslmode == "require"
    assert p.target_session_attrs == "standby"
    assert p.channel_binding == "disable"
    assert p.settings["krbsrvname"] == "kerb"


def test_precedence_params_over_conninfo_over_environment(env: dict[str, str]) -> None:
    env |= {"PGHOST": "envhost", "PGPORT": "1111", "PGUSER": "envuser"}
    p = resolve("host=cihost port=2222", environ=env, port=3333)
    assert p.hosts == (HostSpec("cihost", None, 3333),)
    assert p.user == "envuser"


def test_none_and_empty_params_mean_unset(env: dict[str, str]) -> None:
    env |= {"PGHOST": "envhost"}
    assert resolve("host=ci", environ=env, host=None).hosts[0].host == "ci"
    assert resolve("host=ci", environ=env, host="").hosts[0].host == "ci"
    assert resolve(environ=env, host="").hosts[0].host == "envhost"


def test_explicit_empty_conninfo_value_hides_environment(env: dict[str, str]) -> None:
    # As in PQconnectdb: host='' is set (to nothing), so PGHOST does not apply
    # and the default socket directory is used.
    env |= {"PGHOST": "envhost", "PGAPPNAME": "envapp"}
    p = resolve("host='' application_name=''", environ=env, fallback_application_name="fb")
    assert p.hosts[0].host == default_socket_dir()
    # An empty application_name also suppresses the fallback, as in libpq.
    assert p.application_name is None


def test_param_types(env: dict[str, str]) -> None:
    p = resolve(environ=env, host="h", port=5440, replication=True, keepalives=False)
    assert p.hosts == (HostSpec("h", None, 5440),)
    assert p.replication == "1"
    assert p.settings["keepalives"] == "0"


def test_unknown_keyword_argument(env: dict[str, str]) -> None:
    with pytest.raises(ConnInfoError, match=r'^invalid connection option "hots"$'):
        resolve(environ=env, hots="x")
    with pytest.raises(ConnInfoError, match=r'^invalid connection option "hots"$'):
        resolve(environ=env, hots=None)


def test_malformed_conninfo_raises(env: dict[str, str]) -> None:
    with pytest.raises(
        ConnInfoError, match=r'^missing "=" after "mydb" in connection info string$'
    ):
        resolve("mydb", environ=env)


def test_dbname_expansion(env: dict[str, str]) -> None:
    p = resolve(environ=env, dbname="host=h1 port=5 user=u dbname=realdb")
    assert (p.hosts, p.user, p.dbname) == ((HostSpec("h1", None, 5),), "u", "realdb")
    p = resolve(environ=env, dbname="postgresql://u2@h2:6/db2")
    assert (p.hosts, p.user, p.dbname) == ((HostSpec("h2", None, 6),), "u2", "db2")


def test_dbname_expansion_overrides_earlier_and_loses_to_later(env: dict[str, str]) -> None:
    assert resolve(environ=env, port=1, dbname="port=2").hosts[0].port == 2
    assert resolve(environ=env, dbname="port=2", port=3).hosts[0].port == 3


def test_only_the_first_dbname_is_expanded(env: dict[str, str]) -> None:
    # A non-empty conninfo takes the place of the first dbname.
    p = resolve("host=a", environ=env, dbname="port=5")
    assert (p.hosts[0].host, p.dbname) == ("a", "port=5")
    # A dbname inside a conninfo is never expanded.
    p = resolve("dbname='host=x port=1'", environ=env)
    assert p.dbname == "host=x port=1"
    assert p.hosts[0].host == default_socket_dir()
    # A plain dbname is just a database name.
    assert resolve(environ=env, dbname="mydb").dbname == "mydb"


# --------------------------------------------------------------------------
# Service files
# --------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_service_beats_environment_but_not_explicit(env: dict[str, str], tmp_path: Path) -> None:
    _write(
        tmp_path / ".pg_service.conf",
        "# comment\n[other]\nhost=wrong\n\n  [svc]  \n host=svchost\nport=7000\nport=7001\n"
        "application_name=svc app\n[after]\nuser=wrong\n",
    )
    env |= {"PGSERVICE": "svc", "PGHOST": "envhost", "PGPORT": "1", "PGUSER": "envuser"}
    p = resolve(environ=env)
    assert p.hosts == (HostSpec("svchost", None, 7000),)  # the first value wins
    assert p.application_name == "svc app"
    assert p.user == "envuser"
    assert resolve("host=explicit", environ=env).hosts[0].host == "explicit"
    assert p.settings["service"] == "svc"


def test_service_keyword_and_service_file_variable(env: dict[str, str], tmp_path: Path) -> None:
    service_file = _write(tmp_path / "services", "[a]\nport=6001\n[b]\nport=6002\n")
    env["PGSERVICEFILE"] = str(service_file)
    assert resolve("service=b", environ=env).hosts[0].port == 6002
    assert resolve(environ=env, service="a").hosts[0].port == 6001


def test_servicefile_keyword(env: dict[str, str], tmp_path: Path) -> None:
    service_file = _write(tmp_path / "mine.conf", "[s]\ndbname=fromfile\n")
    p = resolve(f"service=s servicefile={service_file}", environ=env)
    assert p.dbname == "fromfile"


def test_user_service_file_before_system_file(env: dict[str, str], tmp_path: Path) -> None:
    _write(tmp_path / "etc" / "pg_service.conf", "[s]\nport=1\n[sysonly]\nport=2\n")
    _write(tmp_path / ".pg_service.conf", "[s]\nport=3\n")
    assert resolve(environ=env, service="s").hosts[0].port == 3
    assert resolve(environ=env, service="sysonly").hosts[0].port == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[s]\nhost\n", 'syntax error in service file "{f}", line 2'),
        ("[s]\nhost = x\n", 'syntax error in service file "{f}", line 2'),
        ("[s]\nbogus=1\n", 'syntax error in service file "{f}", line 2'),
        (
            "[s]\nservice=t\n",
            'nested service specifications not supported in service file "{f}", line 2',
        ),
        ("[t]\nhost=x\n", 'definition of service "s" not found'),
        ("[s]\nhost=" + "x" * 1020 + "\n", 'line 2 too long in service file "{f}"'),
    ],
)
def test_service_file_errors(env: dict[str, str], tmp_path: Path, text: str, message: str) -> None:
    service_file = _write(tmp_path / "services", text)
    env["PGSERVICEFILE"] = str(service_file)
    with pytest.raises(ConnInfoError) as e:
        resolve(environ=env, service="s")
    assert str(e.value) == message.format(f=service_file)


def test_missing_service_file(env: dict[str, str], tmp_path: Path) -> None:
    env["PGSERVICEFILE"] = str(tmp_path / "absent")
    with pytest.raises(ConnInfoError, match=r'^service file ".*absent" not found$'):
        resolve(environ=env, service="s")


def test_no_service_file_anywhere(env: dict[str, str]) -> None:
    with pytest.raises(ConnInfoError, match=r'^definition of service "s" not found$'):
        resolve(environ=env, service="s")


# --------------------------------------------------------------------------
# Hosts and ports
# --------------------------------------------------------------------------


def test_one_port_applies_to_every_host(env: dict[str, str]) -> None:
    p = resolve("host=h1,h2,h3 port=5433", environ=env)
    assert [(h.host, h.port) for h in p.hosts] == [("h1", 5433), ("h2", 5433), ("h3", 5433)]


def test_empty_list_items_take_defaults(env: dict[str, str]) -> None:
    p = resolve("host=h1,,/tmp port=5433,,", environ=env)
    assert p.hosts == (
        HostSpec("h1", None, 5433),
        HostSpec(default_socket_dir(), None, 5432),
        HostSpec("/tmp", None, 5432),
    )


def test_uri_multi_host(env: dict[str, str]) -> None:
    p = resolve("postgresql://h1:5433,h2,[::1]:5435/db", environ=env)
    assert p.hosts == (
        HostSpec("h1", None, 5433),
        HostSpec("h2", None, 5432),
        HostSpec("::1", None, 5435),
    )
    assert not any(h.is_unix_socket for h in p.hosts)


def test_hostaddr(env: dict[str, str]) -> None:
    p = resolve("host=a,b hostaddr=10.0.0.1,", environ=env)
    assert p.hosts == (HostSpec("a", "10.0.0.1", 5432), HostSpec("b", None, 5432))
    # Without a host name, host reports the address, as PQhost() does.
    (only,) = resolve("hostaddr=10.0.0.2", environ=env).hosts
    assert only == HostSpec("10.0.0.2", "10.0.0.2", 5432)
    assert not only.is_unix_socket
    # hostaddr wins over a socket directory as the address to connect to.
    assert not resolve("host=/tmp hostaddr=127.0.0.1", environ=env).hosts[0].is_unix_socket


@pytest.mark.parametrize(
    ("s", "message"),
    [
        ("host=a,b,c port=1,2", "could not match 2 port numbers to 3 hosts"),
        ("host=a port=1,2", "could not match 2 port numbers to 1 hosts"),
        ("hostaddr=1.1.1.1,2.2.2.2 host=a", "could not match 1 host names to 2 hostaddr values"),
        ("hostaddr=1.1.1.1 host=a,b", "could not match 2 host names to 1 hostaddr values"),
        ("port=x", 'invalid integer value "x" for connection option "port"'),
        ("port=5432x", 'invalid integer value "5432x" for connection option "port"'),
        ("port=0", 'invalid port number: "0"'),
        ("port=65536", 'invalid port number: "65536"'),
        ("host=a,b port=5432,-1", 'invalid port number: "-1"'),
    ],
)
def test_host_and_port_errors(env: dict[str, str], s: str, message: str) -> None:
    with pytest.raises(ConnInfoError) as e:
        resolve(s, environ=env)
    assert str(e.value) == message


def test_port_allows_surrounding_whitespace(env: dict[str, str]) -> None:
    assert resolve("port=' 5433 '", environ=env).hosts[0].port == 5433


def test_host_spec() -> None:
    assert HostSpec("/tmp", None, 5433).socket_path() == "/tmp/.s.PGSQL.5433"
    assert HostSpec("@abstract", None, 5432).is_unix_socket
    assert not HostSpec("db.example", None, 5432).is_unix_socket
    assert not HostSpec("/tmp", "127.0.0.1", 5432).is_unix_socket


# --------------------------------------------------------------------------
# connect_timeout
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("10", 10.0), ("2", 2.0), ("1", 2.0), ("0", None), ("-5", None), (" 7 ", 7.0), ("+3", 3.0)],
)
def test_connect_timeout(env: dict[str, str], value: str, expected: float | None) -> None:
    assert resolve(environ=env, connect_timeout=value).connect_timeout == expected


@pytest.mark.parametrize("value", ["1.5", "abc", "", "10s", "99999999999"])
def test_connect_timeout_must_be_an_integer(env: dict[str, str], value: str) -> None:
    # An explicitly empty value is still parsed (and refused), as in libpq.
    with pytest.raises(ConnInfoError) as e:
        resolve(f"connect_timeout='{value}'", environ=env)
    expected = f'invalid integer value "{value}" for connection option "connect_timeout"'
    assert str(e.value) == expected


def test_connect_timeout_from_environment(env: dict[str, str]) -> None:
    env["PGCONNECT_TIMEOUT"] = "1"
    assert resolve(environ=env).connect_timeout == 2.0


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s", "message"),
    [
        ("sslmode=foo", 'invalid sslmode value: "foo"'),
        ("sslmode=Require", 'invalid sslmode value: "Require"'),
        ("target_session_attrs=foo", 'invalid target_session_attrs value: "foo"'),
        ("channel_binding=foo", 'invalid channel_binding value: "foo"'),
        ("load_balance_hosts=foo", 'invalid load_balance_hosts value: "foo"'),
        ("gssencmode=foo", 'invalid gssencmode value: "foo"'),
        (
            "gssencmode=require",
            'gssencmode value "require" invalid when GSSAPI support is not compiled in',
        ),
        ("sslcertmode=foo", 'invalid sslcertmode value: "foo"'),
        ("sslnegotiation=foo", 'invalid sslnegotiation value: "foo"'),
        (
            "sslnegotiation=direct sslmode=prefer",
            'weak sslmode "prefer" may not be used with sslnegotiation=direct'
            ' (use "require", "verify-ca", or "verify-full")',
        ),
        (
            "sslrootcert=system sslmode=require",
            'weak sslmode "require" may not be used with sslrootcert=system (use "verify-full")',
        ),
        ("ssl_min_protocol_version=TLSv9", 'invalid ssl_min_protocol_version value: "TLSv9"'),
        ("ssl_max_protocol_version=SSLv3", 'invalid ssl_max_protocol_version value: "SSLv3"'),
        (
            "ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2",
            "invalid SSL protocol version range",
        ),
        (
            "ssl_min_protocol_version=TLSv1.1 ssl_max_protocol_version=TLSv1",
            "invalid SSL protocol version range",
        ),
        ("min_protocol_version=2.0", 'invalid min_protocol_version value: "2.0"'),
        ("require_auth=foo", 'invalid require_auth value: "foo"'),
        (
            "require_auth=password,!md5",
            'negative require_auth method "!md5" cannot be mixed with non-negative methods',
        ),
        (
            "require_auth=!password,md5",
            'require_auth method "md5" cannot be mixed with negative methods',
        ),
        ("require_auth=md5,md5", 'require_auth method "md5" is specified more than once'),
        ("require_auth=!md5,!md5", 'require_auth method "!md5" is specified more than once'),
        ("require_auth=none,none", 'require_auth method "none" is specified more than once'),
    ],
)
def test_validation_messages(env: dict[str, str], s: str, message: str) -> None:
    with pytest.raises(ConnInfoError) as e:
        resolve(s, environ=env)
    assert str(e.value) == message


@pytest.mark.parametrize(
    "s",
    [
        "sslmode=verify-full sslnegotiation=direct",
        "ssl_min_protocol_version=tlsv1.2 ssl_max_protocol_version=TLSv1.3",
        "ssl_min_protocol_version=TLSv1 ssl_max_protocol_version=TLSv1",
        "ssl_min_protocol_version='' ssl_max_protocol_version=TLSv1",
        "require_auth=scram-sha-256,none",
        "require_auth=!password,!md5,!none",
        "require_auth=gss,sspi",
        "require_auth=!gss,!sspi",
        "min_protocol_version=3.0 max_protocol_version=latest",
        "sslcertmode=require",
    ],
)
def test_valid_combinations(env: dict[str, str], s: str) -> None:
    resolve(s, environ=env)


def test_sslrootcert_system_defaults_sslmode_to_verify_full(env: dict[str, str]) -> None:
    assert resolve("sslrootcert=system", environ=env).sslmode == "verify-full"
    env["PGSSLMODE"] = "require"
    with pytest.raises(ConnInfoError, match="weak sslmode"):
        resolve("sslrootcert=system", environ=env)


def test_pgrequiressl(env: dict[str, str]) -> None:
    env["PGREQUIRESSL"] = "1"
    assert resolve(environ=env).sslmode == "require"
    env["PGSSLMODE"] = "disable"
    assert resolve(environ=env).sslmode == "disable"


def test_sslsni(env: dict[str, str]) -> None:
    assert resolve(environ=env).sslsni is True
    assert resolve("sslsni=0", environ=env).sslsni is False


# --------------------------------------------------------------------------
# Credentials, replication, startup packet
# --------------------------------------------------------------------------


def test_password_and_passfile(env: dict[str, str], tmp_path: Path) -> None:
    assert resolve("password=''", environ=env).password is None
    env |= {"PGPASSWORD": "envpw", "PGPASSFILE": "/env/pgpass"}
    p = resolve(environ=env)
    assert (p.password, p.passfile) == ("envpw", "/env/pgpass")
    p = resolve("password=mine passfile=/my/pgpass", environ=env)
    assert (p.password, p.passfile) == ("mine", "/my/pgpass")
    assert "mine" not in repr(p)
    assert resolve(environ={"HOME": str(tmp_path)}).passfile == f"{tmp_path}/.pgpass"


def test_physical_replication_uses_replication_as_dbname(env: dict[str, str]) -> None:
    env["PGDATABASE"] = "envdb"  # tools pass dbname=replication explicitly
    p = resolve("replication=true", environ=env)
    assert (p.dbname, p.physical_replication) == ("replication", True)
    assert p.startup_parameters()["database"] == "replication"
    assert resolve("replication=on dbname=x", environ=env).dbname == "x"


def test_logical_replication_keeps_dbname(env: dict[str, str]) -> None:
    p = resolve("replication=database user=u", environ=env)
    assert (p.dbname, p.physical_replication) == ("u", False)
    assert resolve("replication=false user=u", environ=env).dbname == "u"


@pytest.mark.parametrize(
    ("value", "physical"),
    [
        ("true", True),
        ("t", True),
        ("YES", True),
        ("on", True),
        ("1", True),
        ("database", False),
        ("false", False),
        ("off", False),
        ("o", False),
        ("0", False),
        ("maybe", False),
    ],
)
def test_physical_replication_values(env: dict[str, str], value: str, physical: bool) -> None:
    assert resolve(environ=env, replication=value).physical_replication is physical


def test_startup_parameters_order(env: dict[str, str]) -> None:
    env |= {"PGDATESTYLE": "ISO", "PGTZ": "UTC", "PGGEQO": "default"}
    p = resolve(
        "user=u dbname=d options='-c x=1' client_encoding=UTF8",
        environ=env,
        replication="true",
        fallback_application_name="walstream",
    )
    assert list(p.startup_parameters().items()) == [
        ("user", "u"),
        ("database", "d"),
        ("replication", "true"),
        ("options", "-c x=1"),
        ("application_name", "walstream"),
        ("client_encoding", "UTF8"),
        ("datestyle", "ISO"),
        ("timezone", "UTC"),
    ]


def test_application_name_beats_fallback(env: dict[str, str]) -> None:
    env["PGAPPNAME"] = "envapp"
    assert resolve(environ=env, fallback_application_name="fb").application_name == "envapp"
    assert resolve("application_name=mine", environ=env).application_name == "mine"


@pytest.mark.parametrize(
    ("ctype", "codeset", "expected"),
    [
        ("C", "ANSI_X3.4-1968", "SQL_ASCII"),
        ("POSIX", "ANSI_X3.4-1968", "SQL_ASCII"),
        ("en_US.UTF-8", "UTF-8", "UTF8"),
        ("de_DE@euro", "ISO-8859-15", "LATIN9"),
        ("ru_RU.KOI8-R", "KOI8-R", "KOI8R"),
        ("xx_XX", "SOMETHING-ELSE", None),
    ],
)
def test_client_encoding_auto(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    ctype: str,
    codeset: str,
    expected: str | None,
) -> None:
    monkeypatch.setattr(locale, "setlocale", lambda category, value=None: ctype)
    monkeypatch.setattr(locale, "nl_langinfo", lambda item: codeset)
    p = resolve("client_encoding=auto", environ=env)
    assert p.client_encoding == expected
    assert ("client_encoding" in p.startup_parameters()) is (expected is not None)


def test_client_encoding_auto_does_not_change_the_locale(env: dict[str, str]) -> None:
    before = locale.setlocale(locale.LC_CTYPE)
    assert resolve("client_encoding=auto", environ=env).client_encoding != "auto"
    assert locale.setlocale(locale.LC_CTYPE) == before


def test_settings_is_the_full_read_only_map(env: dict[str, str]) -> None:
    p = resolve("sslcompression=1", environ=env | {"PGGSSLIB": "gssapi"})
    assert p.settings["sslcompression"] == "1"
    assert p.settings["gsslib"] == "gssapi"
    assert p.settings["port"] == "5432"
    with pytest.raises(TypeError):
        p.settings["port"] = "1"  # type: ignore[index]


def test_connect_params_are_hashable_and_comparable(env: dict[str, str]) -> None:
    a = resolve("host=h", environ=env)
    b = resolve("host=h", environ=env)
    assert a == b
    assert hash(a) == hash(b)
    assert isinstance(a, ConnectParams)


# --------------------------------------------------------------------------
# resolve() against PQconnectdbParams
# --------------------------------------------------------------------------


class ProcessEnv:
    """The real process environment (libpq reads it), changed only via monkeypatch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
        self._monkeypatch = monkeypatch
        self.path = path

    def set(self, **variables: str) -> None:
        for name, value in variables.items():
            self._monkeypatch.setenv(name, value)


@pytest.fixture
def process_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ProcessEnv:
    """Clear PG* variables from the real environment, which libpq reads."""
    for name in list(os.environ):
        if name.startswith("PG"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "etc").mkdir()
    monkeypatch.setenv("PGSYSCONFDIR", str(tmp_path / "etc"))
    return ProcessEnv(monkeypatch, tmp_path)


_COMPARED = ("host", "hostaddr", "port", "options", "application_name", "sslmode", "password")


def _compare_with_libpq(
    libpq: LibPQ, conninfo_text: str, **params: str | int | None
) -> ConnectParams:
    """Resolve the same input both ways; both must merge to the same values.

    libpq gets ``dbname=<conninfo>`` first, then the keyword arguments, with
    dbname expansion on: the call :func:`resolve` models.
    """
    pairs = [("dbname", conninfo_text)] if conninfo_text else []
    pairs += [(k, str(v)) for k, v in params.items() if v is not None]
    message, theirs = libpq.connect(pairs)
    mine = resolve(conninfo_text, environ=None, **params)
    # libpq got as far as trying to connect, so it accepted the parameters.
    assert "connection to server on socket" in message, message
    for keyword in _COMPARED:
        assert mine.settings.get(keyword) == theirs.get(keyword), keyword
    assert mine.user == theirs["user"]
    assert mine.dbname == theirs["dbname"]
    if "passfile" in theirs:  # libpq computes it only when it needs it
        assert mine.passfile == theirs["passfile"]
    assert mine.connect_timeout == _timeout(theirs.get("connect_timeout"))
    return mine


def _timeout(value: str | None) -> float | None:
    if value is None or int(value) <= 0:
        return None
    return float(max(int(value), 2))


def test_libpq_precedence_environment(libpq: LibPQ, process_env: ProcessEnv) -> None:
    sock = str(process_env.path / "nosock")
    process_env.set(PGHOST=sock, PGPORT="6543", PGUSER="envuser")
    process_env.set(PGDATABASE="envdb", PGAPPNAME="envapp", PGOPTIONS="-c a=b")
    process_env.set(PGPASSWORD="pw", PGCONNECT_TIMEOUT="1", PGSSLMODE="disable")
    _compare_with_libpq(libpq, "")


def test_libpq_precedence_conninfo_and_params(libpq: LibPQ, process_env: ProcessEnv) -> None:
    sock = str(process_env.path / "nosock")
    process_env.set(PGHOST="/elsewhere", PGPORT="6543", PGUSER="envuser")
    conninfo_text = f"host={sock} port=7000 user=ciuser application_name=''"
    _compare_with_libpq(libpq, conninfo_text, port="7001")


def test_libpq_precedence_service(libpq: LibPQ, process_env: ProcessEnv) -> None:
    sock = str(process_env.path / "nosock")
    service_file = _write(
        process_env.path / "services", f"[svc]\nhost={sock}\nport=7100\nport=7200\nuser=svcuser\n"
    )
    process_env.set(PGSERVICEFILE=str(service_file), PGSERVICE="svc")
    process_env.set(PGPORT="6543", PGUSER="envuser", PGDATABASE="envdb")
    mine = _compare_with_libpq(libpq, "user=ciuser")
    assert (mine.hosts[0].port, mine.user, mine.dbname) == (7100, "ciuser", "envdb")


def test_libpq_dbname_expansion_order(libpq: LibPQ, process_env: ProcessEnv) -> None:
    sock = str(process_env.path / "nosock")
    params: dict[str, str | int | None] = {
        "host": sock,
        "port": "1111",
        "dbname": "port=2222 dbname=x",
        "user": "u",
    }
    _, theirs = libpq.connect([(k, str(v)) for k, v in params.items()])
    mine = resolve(environ=None, **params)
    assert (mine.hosts[0].port, mine.dbname, mine.user) == (2222, "x", "u")
    assert (theirs["port"], theirs["dbname"], theirs["user"]) == ("2222", "x", "u")


def test_libpq_empty_conninfo_value_hides_environment(
    libpq: LibPQ, process_env: ProcessEnv
) -> None:
    process_env.set(PGHOST=str(process_env.path / "nosock"), PGAPPNAME="envapp")
    sock = str(process_env.path / "other")
    _compare_with_libpq(libpq, f"host={sock} application_name=")


@pytest.fixture
def listener() -> Iterator[str]:
    """A TCP port that accepts connections and never answers.

    libpq parses connect_timeout only once a connection attempt is under
    way, so the connect-time checks need something to connect to.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"hostaddr=127.0.0.1 port={sock.getsockname()[1]}"


@pytest.mark.parametrize(
    "s",
    [
        "sslmode=foo",
        "target_session_attrs=foo",
        "channel_binding=foo",
        "gssencmode=foo",
        "ssl_min_protocol_version=TLSv9",
        "ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2",
        "host=/a,/b,/c port=1,2",
        "host=/a hostaddr=127.0.0.1,127.0.0.2",
        "host=/nowhere port=x",
        "host=/nowhere port=0",
        "host=/nowhere port=99999",
        "{listener} connect_timeout=abc",
        "{listener} connect_timeout=1.5",
        "{listener} connect_timeout=''",
    ],
)
def test_libpq_validation_messages(
    libpq: LibPQ, process_env: ProcessEnv, listener: str, s: str
) -> None:
    s = s.format(listener=listener)
    message, _ = libpq.connect([("dbname", s)])
    with pytest.raises(ConnInfoError) as e:
        resolve(s)
    # Connect-time errors follow libpq's "connection to server ... failed: ".
    assert message == str(e.value) or message.endswith(f" failed: {e.value}"), message
