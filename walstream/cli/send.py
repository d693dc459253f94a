"""``walstream send`` (``python -m walstream.sender``): serve WAL to standbys and receivers.

The sender's command line: flags onto :class:`~walstream.sender.server.SenderOptions`,
SIGINT and SIGTERM onto ``sender.stop()`` (what each client may still have
is sent and its stream ended cleanly; exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from walstream.cli.args import PgArgumentParser, run_loop, version_line
from walstream.errors import Error

if TYPE_CHECKING:
    from walstream.sender.server import WalSender

__all__ = ["main"]

PROGNAME: Final = "walstream send"

_DESCRIPTION = """\
walstream send serves write-ahead log from a walstream or pg_receivewal
directory to PostgreSQL standbys, pg_receivewal and walstream receivers, as a
primary's walsender does: point a standby's primary_conninfo at it. It follows
a directory a receiver is still writing, and timelines as they appear.
"""


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, "5433"
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'invalid port in "{text}"')
    return host, int(port)


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _parser() -> PgArgumentParser:
    p = PgArgumentParser(
        prog=PROGNAME,
        description=_DESCRIPTION,
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 after SIGINT or SIGTERM (clean stop); 1 on a fatal error.",
    )
    o = p.add_argument_group("Options")
    o.add_argument("-D", "--directory", metavar="DIR", help="the WAL directory to serve")
    o.add_argument(
        "--listen", metavar="HOST:PORT", action="append", help="TCP address to listen on "
        "(repeatable; default 127.0.0.1:5433; port 0: any free port)",
    )  # fmt: skip
    o.add_argument("--unix-socket-dir", metavar="DIR",
                   help="also listen on DIR/.s.PGSQL.PORT, as libpq looks for it")  # fmt: skip
    o.add_argument("--max-wal-senders", metavar="N", type=int, default=10,
                   help="connections served at once (default 10)")  # fmt: skip
    o.add_argument("--max-replication-slots", metavar="N", type=int, default=10,
                   help="replication slots (default 10)")  # fmt: skip
    o.add_argument("--wal-sender-timeout", metavar="SECONDS", type=_seconds, default=60.0,
                   help="drop a client silent for this long (default 60; 0: never)")  # fmt: skip
    o.add_argument("--authentication-timeout", metavar="SECONDS", type=_seconds, default=60.0,
                   help="drop a client that has not finished logging in (default 60)")  # fmt: skip
    o.add_argument("-v", "--verbose", action="count", default=0,
                   help="log connections and streams (-vv: more)")  # fmt: skip
    o.add_argument(
        "-V", "--version", action="store_true", help="output version information, then exit"
    )
    o.add_argument("-?", "--help", action="help", help="show this help, then exit")
    a = p.add_argument_group("Access (as PostgreSQL's pg_hba.conf and pg_authid)")
    a.add_argument("--hba", metavar="FILE", help="pg_hba.conf lines (default: local and "
                   "loopback replication connections trusted, as initdb's default)")  # fmt: skip
    a.add_argument("--passwords", metavar="FILE", help="role:verifier lines, the verifiers "
                   "as pg_authid.rolpassword holds them (see walstream passwd)")  # fmt: skip
    a.add_argument("--ssl-cert", metavar="FILE", help="TLS certificate (enables SSLRequest)")
    a.add_argument("--ssl-key", metavar="FILE", help="its private key")
    a.add_argument("--ssl-ca", metavar="FILE",
                   help="CA for client certificates (hba method cert, clientcert=)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    from walstream.sender.server import SenderError, SenderOptions, WalSender

    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        print(version_line(PROGNAME))
        return 0
    level = logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format=f"{PROGNAME}: %(message)s", stream=sys.stderr)

    def fail(message: str) -> int:
        print(f"{PROGNAME}: error: {message}", file=sys.stderr)
        return 1

    if not args.directory:
        parser.error("no directory specified (-D)")
    try:
        listen = tuple(_listen(text) for text in (args.listen or ["127.0.0.1:5433"]))
        options = SenderOptions(
            directory=Path(args.directory),
            listen=listen,
            unix_socket_dir=Path(args.unix_socket_dir) if args.unix_socket_dir else None,
            hba_file=Path(args.hba) if args.hba else None,
            passwords_file=Path(args.passwords) if args.passwords else None,
            ssl_cert=Path(args.ssl_cert) if args.ssl_cert else None,
            ssl_key=Path(args.ssl_key) if args.ssl_key else None,
            ssl_ca=Path(args.ssl_ca) if args.ssl_ca else None,
            max_wal_senders=args.max_wal_senders,
            max_replication_slots=args.max_replication_slots,
            wal_sender_timeout=args.wal_sender_timeout,
            authentication_timeout=args.authentication_timeout,
        )
    except (ValueError, Error) as e:
        return fail(str(e))
    sender = WalSender(options)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _interrupted, sender)
        await sender.serve()

    try:
        run_loop(serve())
    except (SenderError, Error, OSError) as e:
        return fail(str(e))
    return 0


def _interrupted(sender: WalSender) -> None:
    logging.getLogger("walstream.sender").warning("received interrupt signal, stopping")
    sender.stop()
