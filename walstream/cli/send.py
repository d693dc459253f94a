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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from walstream.cli.args import PgArgumentParser, run_loop, version_line
from walstream.cli.http import add_http_argument, serving_http
from walstream.cli.receive import add_common_arguments, setup_logging
from walstream.errors import Error

if TYPE_CHECKING:
    from walstream.sender.server import SenderOptions

__all__ = ["add_sender_arguments", "main", "sender_options"]

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
        raise argparse.ArgumentTypeError(f'invalid port in "{text}"')
    return host, int(port)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'invalid value "{text}"') from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def add_sender_arguments(p: argparse.ArgumentParser, *, relay: bool) -> None:
    """The sender's flags; ``relay``: those ``walstream relay`` takes too (it has its own -D)."""
    o = p.add_argument_group("Serving options" if relay else "Options")
    if not relay:
        o.add_argument("-D", "--directory", metavar="DIR", help="the WAL directory to serve")
    o.add_argument(
        "--listen", metavar="HOST:PORT", action="append", type=_listen,
        help="TCP address to listen on (repeatable; default 127.0.0.1:5433; port 0: any)",
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
    if not relay:
        add_http_argument(o)
        add_common_arguments(o)
    a = p.add_argument_group("Access (as PostgreSQL's pg_hba.conf and pg_authid)")
    a.add_argument("--hba", metavar="FILE", help="pg_hba.conf lines (default: local and "
                   "loopback replication connections trusted, as initdb's default)")  # fmt: skip
    a.add_argument("--passwords", metavar="FILE", help="role:verifier lines, the verifiers "
                   "as pg_authid.rolpassword holds them (see walstream passwd)")  # fmt: skip
    a.add_argument("--ssl-cert", metavar="FILE", help="TLS certificate (enables SSLRequest)")
    a.add_argument("--ssl-key", metavar="FILE", help="its private key")
    a.add_argument("--ssl-ca", metavar="FILE",
                   help="CA for client certificates (hba method cert, clientcert=)")  # fmt: skip


def sender_options(
    args: argparse.Namespace, directory: Path, *, synchronous_standby_names: str = ""
) -> SenderOptions:
    """The SenderOptions the flags say, serving ``directory``."""
    from walstream.sender.server import SenderOptions

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    return SenderOptions(
        directory=directory,
        listen=tuple(args.listen or [("127.0.0.1", 5433)]),
        unix_socket_dir=path(args.unix_socket_dir),
        hba_file=path(args.hba),
        passwords_file=path(args.passwords),
        ssl_cert=path(args.ssl_cert),
        ssl_key=path(args.ssl_key),
        ssl_ca=path(args.ssl_ca),
        max_wal_senders=args.max_wal_senders,
        max_replication_slots=args.max_replication_slots,
        wal_sender_timeout=args.wal_sender_timeout,
        authentication_timeout=args.authentication_timeout,
        synchronous_standby_names=synchronous_standby_names,
    )


def main(argv: list[str] | None = None) -> int:
    from walstream.sender.server import SenderError, WalSender

    parser = PgArgumentParser(
        prog=PROGNAME,
        description=_DESCRIPTION,
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 after SIGINT or SIGTERM (clean stop); 1 on a fatal error.",
    )
    add_sender_arguments(parser, relay=False)
    args = parser.parse_args(argv)
    if args.version:
        print(version_line(PROGNAME))
        return 0
    setup_logging(PROGNAME, args.verbose)
    if not args.directory:
        parser.error("no directory specified (-D)")
    try:
        options = sender_options(args, Path(args.directory))
    except (ValueError, Error) as e:
        print(f"{PROGNAME}: error: {e}", file=sys.stderr)
        return 1
    sender = WalSender(options)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _interrupted, sender.stop)
        async with serving_http(args.http, sender=sender):
            await sender.serve()

    try:
        run_loop(serve())
    except (SenderError, Error, OSError) as e:
        print(f"{PROGNAME}: error: {e}", file=sys.stderr)
        return 1
    return 0


def _interrupted(stop: Callable[[], None]) -> None:
    logging.getLogger("walstream.sender").warning("received interrupt signal, stopping")
    stop()
