"""Password lookup in a ``.pgpass`` file, with libpq's matching rules.

Users keep replication passwords in ``~/.pgpass`` so that they stay out of
command lines, environment variables and configuration files. libpq looks a
password up there per host, at connect time, only when none was given
explicitly; :func:`lookup_password` is that lookup, and the connector calls
it for each host it tries.

File format: one ``hostname:port:database:username:password`` entry per
line; ``#`` at the start of a line makes a comment; ``\\`` escapes the next
character (so ``\\:`` and ``\\\\`` stand for ``:`` and ``\\``); ``*`` as a whole
field matches anything; the first matching line wins.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from typing import Final

from walstream.client.conninfo import default_socket_dir

__all__ = ["lookup_password"]

logger: Final = logging.getLogger("walstream.pgpass")

_LOCALHOST: Final = "localhost"


def lookup_password(
    passfile: str,
    host: str,
    port: int,
    dbname: str,
    user: str,
    *,
    replication: bool = False,
) -> str | None:
    """Return the password ``passfile`` holds for this connection, or None.

    ``host`` is the host as the user spelled it (libpq's ``PQhost()``: the
    host name, or ``hostaddr`` when no host name was given). An empty host
    and the default Unix-socket directory both match ``localhost`` entries,
    because that is how libpq lets one line cover local connections; any
    other socket directory must be written out literally.

    ``replication=True`` marks a physical replication connection: the
    database field is then matched against ``replication`` (the name the
    walreceiver and ``pg_receivewal`` pass), whatever ``dbname`` says.

    As in libpq, nothing is looked up when the database or user name is
    empty; a missing or unreadable file is silently ignored; a file that is
    not a regular file, or (except on Windows) that grants any group or
    other permission, is ignored with a warning on the ``walstream.pgpass``
    logger, because a readable password file has leaked its secrets.
    """
    database = "replication" if replication else dbname
    if not database or not user:
        return None

    if not host or (host[:1] in ("/", "@") and host == default_socket_dir()):
        host = _LOCALHOST

    try:
        st = os.stat(passfile)
    except (OSError, ValueError):
        return None
    if sys.platform != "win32":
        if not stat.S_ISREG(st.st_mode):
            logger.warning('password file "%s" is not a plain file', passfile)
            return None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning(
                'password file "%s" has group or world access;'
                " permissions should be u=rw (0600) or less",
                passfile,
            )
            return None
    try:
        with open(passfile, "rb") as f:
            data = f.read()
    except OSError:
        return None

    fields = (host, str(port), database, user)
    for raw in data.split(b"\n"):
        if raw.startswith(b"#"):
            continue
        line = raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
        if not line:
            continue
        pos = _match_fields(line, fields)
        if pos is not None:
            return _unescape_password(line, pos)
    return None


def _match_fields(line: str, tokens: tuple[str, ...]) -> int | None:
    """Match the leading fields against ``tokens``; return where the password starts."""
    pos = 0
    for token in tokens:
        next_pos = _match_field(line, pos, token)
        if next_pos is None:
            return None
        pos = next_pos
    return pos


def _match_field(line: str, pos: int, token: str) -> int | None:
    """Match one ``:``-terminated field at ``pos``; return where the next starts.

    Mirrors libpq's pwdfMatchesString(): ``*`` is a wildcard only as the
    whole field, a backslash makes the next character literal, and a field
    must be followed by ``:`` (so a line needs all five fields to match).
    """
    if line.startswith("*:", pos):
        return pos + 2
    n = len(line)
    t = 0
    while pos < n:
        escaped = line[pos] == "\\"
        if escaped:
            pos += 1
            if pos >= n:
                return None
        c = line[pos]
        if c == ":" and t == len(token) and not escaped:
            return pos + 1
        if t == len(token) or c != token[t]:
            return None
        pos += 1
        t += 1
    return None


def _unescape_password(line: str, pos: int) -> str:
    """The password field: up to the next unescaped ``:``, backslashes removed."""
    out: list[str] = []
    n = len(line)
    while pos < n and line[pos] != ":":
        if line[pos] == "\\" and pos + 1 < n:
            pos += 1
        out.append(line[pos])
        pos += 1
    return "".join(out)
