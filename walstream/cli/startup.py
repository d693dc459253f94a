"""``walstream startup`` (``python -m walstream.startup``): replay a WAL directory.

The startup role's command line: flags onto
:class:`~walstream.startup.StartupOptions`, SIGINT/SIGTERM onto
``service.stop()``, the final state printed (``--json`` for machines).
``walstream startup waldump ...`` runs ``walstream waldump``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from datetime import datetime
from pathlib import Path

from walstream.cli.args import PgArgumentParser
from walstream.cli.recovery_target import add_target_arguments, target_from_arguments
from walstream.errors import Error
from walstream.lsn import LSN
from walstream.startup import StartupOptions, StartupService, StartupStatus

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = PgArgumentParser(
        prog="walstream startup",
        description="Replay the WAL of a walstream or pg_receivewal directory the way a "
        "standby's startup process does, without page redo: decode and CRC-verify every "
        "record in LSN order across timelines, track the replay position, the last "
        "transaction and checkpoint, and stop at a recovery target. With --follow it keeps "
        "waiting for new WAL, as a standby does. 'python -m walstream.startup waldump ...' "
        "inspects WAL like pg_waldump.",
        epilog="Exit status: 0 at the end of the WAL, at the recovery target, or on SIGINT/"
        "SIGTERM; 1 on corrupt WAL, a target the WAL ends before, or another error. "
        "To replay while receiving, in one process: python -m walstream.receiver --replay.",
    )
    parser.add_argument(
        "-D", "--directory", required=True, type=Path, help="the WAL directory to replay"
    )
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="at the end of the WAL, wait for more (a receiver is writing the directory)",
    )
    parser.add_argument(
        "-s",
        "--start",
        metavar="LSN",
        help="start at this record or segment start (default: the first segment in the directory)",
    )
    parser.add_argument(
        "--recovery-target-timeline",
        metavar="latest|current|N",
        default="latest",
        help="the timeline to recover along (default latest: the highest history file)",
    )
    add_target_arguments(parser)
    parser.add_argument(
        "--backup-start",
        metavar="LSN",
        help="START WAL LOCATION of the base backup this WAL applies to (its backup_label): "
        "no target may stop before that backup's end, and --recovery-target immediate stops "
        "there",
    )
    parser.add_argument(
        "--poll-interval", type=float, default=0.2, metavar="SECONDS",
        help="with --follow, how often to look for new WAL (default 0.2)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the final state as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    return parser


def _summary(status: StartupStatus) -> dict[str, object]:
    def text(value: object) -> object:
        if isinstance(value, datetime):
            return value.isoformat()
        return str(value) if isinstance(value, LSN) else value

    reached = status.target_reached
    return {
        "state": status.state,
        "replay_lsn": text(status.replay_lsn),
        "timeline": status.timeline,
        "last_xact_time": text(status.last_xact_time),
        "last_checkpoint": text(status.last_checkpoint),
        "last_checkpoint_redo": text(status.last_checkpoint_redo),
        "target_reached": None if reached is None else reached.message,
        "error": status.error,
    }


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["waldump"]:
        from walstream.cli.waldump import main as waldump

        return waldump(args_list[1:])
    args = _parser().parse_args(args_list)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="walstream startup: %(message)s",
        stream=sys.stderr,
    )
    prog = "walstream startup"
    try:
        start = LSN.parse(args.start) if args.start else None
        backup_start = LSN.parse(args.backup_start) if args.backup_start else None
        target = target_from_arguments(args)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    options = StartupOptions(
        args.directory, follow=args.follow, start=start, target=target,
        backup_start=backup_start, poll_interval=args.poll_interval,
    )  # fmt: skip
    service = StartupService(options)

    async def run() -> StartupStatus:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, service.stop)
        return await service.run()

    try:
        status = asyncio.run(run())
        code = 0
    except Error as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        status = service.status()
        code = 1
    summary = _summary(status)
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            if value is not None:
                print(f"{key}: {value}")
    return code
