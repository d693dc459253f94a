"""``walstream passwd ROLE``: a line of the sender's --passwords file, from a password typed.

The verifier is what PostgreSQL itself stores in ``pg_authid.rolpassword``
(SCRAM-SHA-256 with a random salt and 4096 iterations, or MD5 with
``--md5``), so the line can sit beside ones copied from a primary::

    psql -XAtc "SELECT rolname || ':' || rolpassword FROM pg_authid
                WHERE rolreplication AND rolpassword IS NOT NULL" > passwords
"""

from __future__ import annotations

import sys
from typing import Final

from walstream.cli.args import PgArgumentParser, ask_password, version_line

__all__ = ["main"]

PROGNAME: Final = "walstream passwd"


def main(argv: list[str] | None = None) -> int:
    from walstream.sender.passwords import (
        Verifier,
        format_password_line,
        make_md5_verifier,
        make_scram_verifier,
    )

    p = PgArgumentParser(
        prog=PROGNAME,
        description="Print a line for walstream send --passwords: ROLE:VERIFIER, the verifier "
        "made from a password read without echo, as PostgreSQL stores it.",
        add_help=False,
    )
    p.add_argument("role", metavar="ROLE", nargs="?", help="the role (user) name")
    p.add_argument("--md5", action="store_true", help="an MD5 verifier (default SCRAM-SHA-256)")
    p.add_argument(
        "-V", "--version", action="store_true", help="output version information, then exit"
    )
    p.add_argument("-?", "--help", action="help", help="show this help, then exit")
    args = p.parse_args(argv)
    if args.version:
        print(version_line(PROGNAME))
        return 0
    if not args.role:
        p.error("no role name specified")
    try:
        password = ask_password("Enter password: ")
        again = ask_password("Enter it again: ")
    except KeyboardInterrupt:
        return 130
    if password != again:
        print(f"{PROGNAME}: error: passwords didn't match", file=sys.stderr)
        return 1
    if not password:
        print(f"{PROGNAME}: error: empty password", file=sys.stderr)
        return 1
    verifier: Verifier = (
        make_md5_verifier(password, args.role) if args.md5 else make_scram_verifier(password)
    )
    print(format_password_line(args.role, verifier))
    return 0
