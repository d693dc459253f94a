"""walstream.pgpass: libpq's .pgpass rules, checked against libpq where loadable.

libpq looks the password up while it sets up a connection, so the oracle
starts a non-blocking connection (``PQconnectStartParams``) towards an address
that cannot answer at once, reads ``PQpass()``, and closes it again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from pathlib import Path

import pytest

from walstream.client import pgpass
from walstream.client.conninfo import default_socket_dir
from walstream.client.pgpass import lookup_password

_UNREACHABLE = "192.0.2.1"  # TEST-NET-1: connect() only gets as far as EINPROGRESS


class LibPQPassword:
    """libpq's passwordFromFile(), reached through a connection it starts."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        lib.PQconnectStartParams.restype = ctypes.c_void_p
        lib.PQconnectStartParams.argtypes = (
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
        )
        lib.PQpass.restype = ctypes.c_char_p
        lib.PQpass.argtypes = (ctypes.c_void_p,)
        lib.PQfinish.argtypes = (ctypes.c_void_p,)

    def lookup(self, passfile: str, host: str, port: int, dbname: str, user: str) -> str | None:
        pairs = [("passfile", passfile), ("port", str(port)), ("dbname", dbname), ("user", user)]
        if host and not host.startswith("/"):
            pairs += [("host", host), ("hostaddr", _UNREACHABLE)]
        elif host:
            pairs.append(("host", host))
        keywords = (ctypes.c_char_p * (len(pairs) + 1))(*[k.encode() for k, _ in pairs], None)
        values = (ctypes.c_char_p * (len(pairs) + 1))(*[v.encode() for _, v in pairs], None)
        conn = self.lib.PQconnectStartParams(keywords, values, 0)
        try:
            password = self.lib.PQpass(conn)
        finally:
            self.lib.PQfinish(conn)
        # PQpass() gives "" when nothing was found.
        return password.decode("utf-8", "surrogateescape") if password else None


def _load() -> LibPQPassword | None:
    for name in (ctypes.util.find_library("pq"), "libpq.so.5"):
        if name:
            try:
                return LibPQPassword(ctypes.CDLL(name))
            except OSError:
                continue
    return None


_LIBPQ = _load()


@pytest.fixture(autouse=True)
def _no_pg_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq would take PGPASSWORD & co. from the real environment."""
    for name in list(os.environ):
        if name.startswith("PG"):
            monkeypatch.delenv(name)


def _write(path: Path, content: str | bytes, mode: int = 0o600) -> str:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)
    return str(path)


# (file, host, port, dbname, user, expected password)
CASES = [
    pytest.param("h:5432:db:u:pw\n", "h", 5432, "db", "u", "pw", id="exact"),
    pytest.param("h:5432:db:u:pw\n", "h", 5433, "db", "u", None, id="port-mismatch"),
    pytest.param("h:5432:db:u:pw\n", "other", 5432, "db", "u", None, id="host-mismatch"),
    pytest.param("h:5432:db:u:pw\n", "h", 5432, "db2", "u", None, id="db-mismatch"),
    pytest.param("h:5432:db:u:pw\n", "h", 5432, "db", "u2", None, id="user-mismatch"),
    pytest.param("*:*:*:*:pw\n", "anything", 1, "d", "u", "pw", id="all-wildcards"),
    pytest.param("h:*:db:u:pw\n", "h", 5433, "db", "u", "pw", id="port-wildcard"),
    pytest.param("h*:5432:db:u:pw\n", "hx", 5432, "db", "u", None, id="partial-star-no-wildcard"),
    pytest.param("h*:5432:db:u:pw\n", "h*", 5432, "db", "u", "pw", id="partial-star-literal"),
    pytest.param("\\*:5432:db:u:pw\n", "h", 5432, "db", "u", None, id="escaped-star-no-wildcard"),
    pytest.param("\\*:5432:db:u:pw\n", "*", 5432, "db", "u", "pw", id="escaped-star-literal"),
    pytest.param(
        "h:5432:db:u:first\n*:*:*:*:second\n", "h", 5432, "db", "u", "first", id="first-wins"
    ),
    pytest.param("#h:5432:db:u:pw\n*:*:*:*:other\n", "h", 5432, "db", "u", "other", id="comment"),
    pytest.param(" #h:5432:db:u:pw\n", " #h", 5432, "db", "u", "pw", id="indented-hash-is-data"),
    pytest.param("h:5432:db:us\\:er:pw\n", "h", 5432, "db", "us:er", "pw", id="escaped-colon"),
    pytest.param("h:5432:db:u\\\\:pw\n", "h", 5432, "db", "u\\", "pw", id="escaped-backslash"),
    pytest.param("h:5432:db:u:p\\:w\n", "h", 5432, "db", "u", "p:w", id="escaped-colon-password"),
    pytest.param("h:5432:db:u:p\\\\w\n", "h", 5432, "db", "u", "p\\w", id="escaped-bs-password"),
    pytest.param("h:5432:db:u:pw\\\n", "h", 5432, "db", "u", "pw\\", id="trailing-backslash"),
    pytest.param("h:5432:db:u:pw:extra\n", "h", 5432, "db", "u", "pw", id="extra-field"),
    pytest.param("h:5432:db:u:pw\r\n", "h", 5432, "db", "u", "pw", id="crlf"),
    pytest.param("\n\n\nh:5432:db:u:pw", "h", 5432, "db", "u", "pw", id="blank-lines-no-eol"),
    pytest.param("h:5432:db:u\n", "h", 5432, "db", "u", None, id="no-password-field"),
    pytest.param("h:5432:db\n", "h", 5432, "db", "u", None, id="short-line"),
    pytest.param("localhost:5432:db:u:pw\n", "", 5432, "db", "u", "pw", id="empty-host-localhost"),
    pytest.param(
        "localhost:5432:db:u:pw\n", "/nonexistent/sock", 5432, "db", "u", None, id="other-socket"
    ),
    pytest.param(
        "/nonexistent/sock:5432:db:u:pw\n",
        "/nonexistent/sock",
        5432,
        "db",
        "u",
        "pw",
        id="socket-dir-literal",
    ),
    pytest.param("h:5432:db:u:pässwörd\n", "h", 5432, "db", "u", "pässwörd", id="utf8"),
]


@pytest.mark.parametrize(("content", "host", "port", "dbname", "user", "expected"), CASES)
def test_lookup(
    tmp_path: Path,
    content: str,
    host: str,
    port: int,
    dbname: str,
    user: str,
    expected: str | None,
) -> None:
    passfile = _write(tmp_path / "pgpass", content)
    assert lookup_password(passfile, host, port, dbname, user) == expected
    if _LIBPQ is not None:
        assert _LIBPQ.lookup(passfile, host, port, dbname, user) == expected


def test_default_socket_directory_matches_localhost(tmp_path: Path) -> None:
    passfile = _write(tmp_path / "pgpass", "localhost:5432:db:u:pw\n")
    assert lookup_password(passfile, default_socket_dir(), 5432, "db", "u") == "pw"


def test_default_socket_directory_is_looked_up_at_call_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passfile = _write(tmp_path / "pgpass", "localhost:5432:db:u:pw\n")
    monkeypatch.setattr(pgpass, "default_socket_dir", lambda: "/custom/dir")
    assert lookup_password(passfile, "/custom/dir", 5432, "db", "u") == "pw"
    assert lookup_password(passfile, "/tmp", 5432, "db", "u") is None


def test_empty_password_field(tmp_path: Path) -> None:
    passfile = _write(tmp_path / "pgpass", "h:5432:db:u:\n")
    assert lookup_password(passfile, "h", 5432, "db", "u") == ""


def test_non_utf8_password_round_trips(tmp_path: Path) -> None:
    passfile = _write(tmp_path / "pgpass", b"h:5432:db:u:p\xffw\n")
    password = lookup_password(passfile, "h", 5432, "db", "u")
    assert password is not None
    assert password.encode("utf-8", "surrogateescape") == b"p\xffw"


# --------------------------------------------------------------------------
# Replication connections
# --------------------------------------------------------------------------

REPLICATION_FILE = "h:5432:replication:rep:rpw\nh:5432:*:rep:anydb\n"


def test_replication_matches_the_replication_database(tmp_path: Path) -> None:
    passfile = _write(tmp_path / "pgpass", REPLICATION_FILE)
    assert lookup_password(passfile, "h", 5432, "postgres", "rep", replication=True) == "rpw"
    assert lookup_password(passfile, "h", 5432, "postgres", "rep") == "anydb"
    # Even with no database name at all, as for a walreceiver connection.
    assert lookup_password(passfile, "h", 5432, "", "rep", replication=True) == "rpw"
    if _LIBPQ is not None:
        # What the walreceiver and pg_receivewal ask libpq for.
        assert _LIBPQ.lookup(passfile, "h", 5432, "replication", "rep") == "rpw"


def test_replication_ignores_lines_for_other_databases(tmp_path: Path) -> None:
    passfile = _write(tmp_path / "pgpass", "h:5432:mydb:rep:pw\n")
    assert lookup_password(passfile, "h", 5432, "mydb", "rep", replication=True) is None
    assert lookup_password(passfile, "h", 5432, "mydb", "rep") == "pw"


def test_replication_wildcard_database(tmp_path: Path) -> None:
    passfile = _write(tmp_path / "pgpass", "*:*:*:rep:pw\n")
    assert lookup_password(passfile, "h", 5432, "mydb", "rep", replication=True) == "pw"


@pytest.mark.parametrize(("dbname", "user"), [("", "u"), ("db", "")])
def test_needs_database_and_user(tmp_path: Path, dbname: str, user: str) -> None:
    passfile = _write(tmp_path / "pgpass", "*:*:*:*:pw\n")
    assert lookup_password(passfile, "h", 5432, dbname, user) is None


# --------------------------------------------------------------------------
# The file itself
# --------------------------------------------------------------------------


def test_missing_file_is_silent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="walstream.pgpass"):
        assert lookup_password(str(tmp_path / "absent"), "h", 5432, "db", "u") is None
    assert caplog.records == []


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o610, 0o601, 0o660, 0o644])
def test_group_or_world_access_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    passfile = _write(tmp_path / "pgpass", "*:*:*:*:pw\n", mode)
    with caplog.at_level(logging.WARNING, logger="walstream.pgpass"):
        assert lookup_password(passfile, "h", 5432, "db", "u") is None
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            "walstream.pgpass",
            logging.WARNING,
            f'password file "{passfile}" has group or world access;'
            " permissions should be u=rw (0600) or less",
        )
    ]


def test_permission_warning_text_is_libpqs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    if _LIBPQ is None:
        pytest.skip("libpq (libpq.so.5) cannot be loaded: no oracle to compare with")
    passfile = _write(tmp_path / "pgpass", "*:*:*:*:pw\n", 0o640)
    assert _LIBPQ.lookup(passfile, "h", 5432, "db", "u") is None
    libpq_stderr = capfd.readouterr().err
    with caplog.at_level(logging.WARNING, logger="walstream.pgpass"):
        lookup_password(passfile, "h", 5432, "db", "u")
    assert libpq_stderr == f"WARNING: {caplog.records[0].getMessage()}\n"


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_private_file_is_used(tmp_path: Path, mode: int) -> None:
    passfile = _write(tmp_path / "pgpass", "*:*:*:*:pw\n", mode)
    assert lookup_password(passfile, "h", 5432, "db", "u") == "pw"


def test_not_a_plain_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "pgpass"
    directory.mkdir(mode=0o700)
    with caplog.at_level(logging.WARNING, logger="walstream.pgpass"):
        assert lookup_password(str(directory), "h", 5432, "db", "u") is None
    assert [r.getMessage() for r in caplog.records] == [
        f'password file "{directory}" is not a plain file'
    ]


def test_symlink_to_private_file_is_followed(tmp_path: Path) -> None:
    target = _write(tmp_path / "real", "*:*:*:*:pw\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    os.chmod(target, 0o600)
    assert lookup_password(str(link), "h", 5432, "db", "u") == "pw"
