"""``walstream relay`` (``python -m walstream.relay``): a primary's standby and a walsender in one.

Every receiver flag (as ``walstream receive``) and every sender flag (as
``walstream send``), over one directory, plus what joins them:
``--synchronous-standby-names`` (synchronous replication through the
cascade) and ``--wal-keep-size`` (retention). SIGINT and SIGTERM stop both
cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from walstream.cli.args import (
    PgArgumentParser,
    ask_password,
    needs_password,
    run_loop,
    version_line,
)
from walstream.cli.http import serving_http
from walstream.cli.receive import (
    _connect_params,
    _keep_heap,
    _segment_hook,
    _wait_for_hooks,
    add_common_arguments,
    add_receiver_arguments,
    setup_logging,
)
from walstream.cli.send import add_sender_arguments, sender_options
from walstream.errors import Error
from walstream.storage.compression import Compression
from walstream.storage.directory import check_directory

if TYPE_CHECKING:
    from walstream.relay import RelayOptions, WalRelay
    from walstream.sender.walsender import WalSenderStatus

__all__ = ["main"]

PROGNAME: Final = "walstream relay"
log = logging.getLogger("walstream.relay")

_DESCRIPTION = """\
walstream relay streams write-ahead log from a primary into a directory, as
walstream receive does, and serves what it has made durable to standbys and
receivers, as walstream send does: a WAL server between a primary and its
standbys. With --synchronous-standby-names, what it confirms to the primary is
what its own synchronous standbys confirmed: synchronous replication through
the cascade. Hot-standby feedback from its standbys is forwarded upstream.
"""


def _parser() -> PgArgumentParser:
    p = PgArgumentParser(
        prog=PROGNAME,
        description=_DESCRIPTION,
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 after SIGINT or SIGTERM (clean stop); 1 on a fatal error.",
    )
    r = p.add_argument_group("Relay options")
    r.add_argument("-D", "--directory", metavar="DIR",
                   help="the WAL directory: received into, served from")  # fmt: skip
    r.add_argument(
        "--synchronous-standby-names", metavar="LIST", default="",
        help="which of the relay's clients are synchronous, in PostgreSQL's syntax "
        "('s1, s2', 'FIRST n (...)', 'ANY n (...)', '*'): what they confirmed is what "
        "the relay confirms to the primary (use with --synchronous)",
    )  # fmt: skip
    r.add_argument(
        "--wal-keep-size", metavar="MB", type=int,
        help="remove completed segments older than this (and than every slot and connected "
        "client; with --on-segment-complete, only once its command succeeded); default: keep "
        "everything",
    )  # fmt: skip
    add_common_arguments(r)
    add_receiver_arguments(p, relay=True)
    add_sender_arguments(p, relay=True)
    return p


def main(argv: list[str] | None = None) -> int:
    from walstream.receiver import ReceiverOptions
    from walstream.relay import RelayOptions

    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        print(version_line(PROGNAME))
        return 0
    setup_logging(PROGNAME, args.verbose)

    def fail(message: str) -> int:
        print(f"{PROGNAME}: error: {message}", file=sys.stderr)
        return 1

    if not args.directory:
        parser.error("no directory specified (-D)")
    if args.wal_keep_size is not None and args.wal_keep_size < 0:
        return fail("--wal-keep-size must be 0 or more")
    params = _connect_params(args)
    if args.password:
        params["password"] = ask_password()
    may_ask = not (args.password or args.no_password)
    directory = Path(args.directory)
    relay_box: list[WalRelay] = []

    def hook_done(path: Path) -> None:
        if relay_box:
            relay_box[0].hook_succeeded(path)

    try:
        check_directory(directory)
        options = RelayOptions(
            receiver=ReceiverOptions(
                directory=directory,
                conninfo=args.dbname,
                connect_params=params,
                slot=args.slot,
                synchronous=args.synchronous,
                status_interval=args.status_interval,
                loop=not args.no_loop,
                compression=Compression.parse(args.compress),
                on_segment_complete=_segment_hook(args.on_segment_complete, on_success=hook_done)
                if args.on_segment_complete
                else None,
            ),
            sender=sender_options(
                args, directory, synchronous_standby_names=args.synchronous_standby_names
            ),
            wal_keep_size=None if args.wal_keep_size is None else args.wal_keep_size << 20,
            hooks=bool(args.on_segment_complete),
        )
    except (ValueError, Error) as e:
        return fail(str(e))
    rc = run_loop(_run(options, relay_box, args.http, may_ask=may_ask))
    if rc is None:  # the first connection needs a password
        receiver = dataclasses.replace(
            options.receiver,
            connect_params={**options.receiver.connect_params, "password": ask_password()},
        )
        relay_box.clear()
        rc = run_loop(
            _run(dataclasses.replace(options, receiver=receiver), relay_box, args.http,
                 may_ask=False)
        )  # fmt: skip
    assert rc is not None
    return rc


class _Clients:
    """The relay's downstream rows, for the monitor (its sender exists once WAL does)."""

    def __init__(self, relay: WalRelay) -> None:
        self._relay = relay

    def status(self) -> list[WalSenderStatus]:
        return self._relay.status().clients


async def _run(
    options: RelayOptions,
    relay_box: list[WalRelay],
    http: tuple[str, int] | None,
    *,
    may_ask: bool,
) -> int | None:
    from walstream.relay import WalRelay
    from walstream.sender.server import SenderError

    _keep_heap()
    relay = WalRelay(options)
    relay_box.append(relay)
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        log.warning("received interrupt signal, exiting")
        relay.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted)
    try:
        try:
            async with serving_http(
                http,
                receiver=relay.receiver,
                sender=_Clients(relay),
                segments_removed=lambda: relay.segments_removed,
            ):
                await relay.run()
        finally:
            await _wait_for_hooks()
    except (SenderError, Error, OSError) as e:
        if may_ask and not relay.receiver.connected and needs_password(e):
            return None
        print(f"{PROGNAME}: error: {e}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0
