"""``walstream receive`` (``python -m walstream.receiver``): pg_receivewal's command line.

Same flags, files, messages and exit codes as pg_receivewal, plus
``--primary``, ``--application-name``, ``-Z zstd``, ``--replay`` (the
receiver and the startup role in one process: :mod:`walstream.standby`),
recovery targets and ``--on-segment-complete``. The flags map onto
:class:`~walstream.receiver.ReceiverOptions`; SIGINT and SIGTERM stop cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import re
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from walstream.cli.args import (
    PgArgumentParser,
    ask_password,
    needs_password,
    run_loop,
    version_line,
)
from walstream.cli.http import add_http_argument, serving_http
from walstream.cli.recovery_target import add_target_arguments, target_from_arguments
from walstream.client import connect
from walstream.errors import AuthenticationError, Error, ServerError
from walstream.lsn import LSN
from walstream.receiver import ReceiverOptions, WalReceiver
from walstream.storage.compression import Compression
from walstream.storage.directory import check_directory
from walstream.wal.recovery import RecoveryTarget

if TYPE_CHECKING:
    from walstream.standby import Standby

__all__ = ["main"]

log = logging.getLogger("walstream.receiver")

PROGNAME: Final = "walstream receive"

_DESCRIPTION = """\
walstream receive streams write-ahead log from a PostgreSQL server into a
directory, as pg_receivewal does (same options, files and exit codes), and can
be a synchronous standby. It resumes from what the directory holds, follows
timeline switches and, with several hosts in the connection string, failovers.
"""


def _status_interval(text: str) -> int:
    """-s as pg_receivewal parses it: whole seconds, 0 (no periodic updates) to INT_MAX/1000."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'invalid value "{text}"') from None
    if not 0 <= value <= 2147483:
        raise argparse.ArgumentTypeError("must be in range 0..2147483")
    return value


def _parser() -> argparse.ArgumentParser:
    p = PgArgumentParser(
        prog=PROGNAME,
        description=_DESCRIPTION,
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 after --endpos, SIGINT or SIGTERM (clean stop); 1 on a fatal error.",
    )
    add_receiver_arguments(p, relay=False)
    add_target_arguments(p)
    return p


def add_receiver_arguments(p: argparse.ArgumentParser, *, relay: bool) -> None:
    """The receiver's flags; ``relay``: those ``walstream relay`` takes too (it has its own -D)."""
    o = p.add_argument_group("Receiving options" if relay else "Options")
    if not relay:
        o.add_argument(
            "-D", "--directory", metavar="DIR",
            help="receive write-ahead log files into this directory",
        )  # fmt: skip
        o.add_argument(
            "-E", "--endpos", metavar="LSN", help="exit after receiving the specified LSN"
        )
        o.add_argument(
            "--if-not-exists",
            action="store_true",
            help="do not error if slot already exists when creating a slot",
        )
    o.add_argument("-n", "--no-loop", action="store_true", help="do not loop on connection lost")
    if not relay:  # a relay serves only what is durable: it always syncs
        o.add_argument(
            "--no-sync",
            action="store_true",
            help="do not wait for changes to be written safely to disk",
        )
    o.add_argument(
        "-s",
        "--status-interval",
        metavar="SECS",
        type=_status_interval,
        default=10,
        help="time between status packets sent to server (default: 10; 0: none but replies)",
    )
    o.add_argument("-S", "--slot", metavar="SLOTNAME", help="replication slot to use")
    o.add_argument(
        "--synchronous",
        action="store_true",
        help="flush write-ahead log immediately after writing"
        + (" (a relay always does: it serves only what is flushed)" if relay else ""),
    )
    if not relay:
        add_common_arguments(o)
    o.add_argument(
        "-Z",
        "--compress",
        metavar="METHOD[:DETAIL]",
        default="none",
        help="compress as specified: gzip[:1-9], lz4[:1-12], zstd[:1-22], none, or a gzip level",
    )
    add_http_argument(o)
    c = p.add_argument_group("Connection options")
    c.add_argument(
        "-d",
        "--dbname",
        metavar="CONNSTR",
        default="",
        help="connection string or postgresql:// URI (several hosts: failover)",
    )
    c.add_argument(
        "-h", "--host", metavar="HOSTNAME", help="database server host or socket directory"
    )
    c.add_argument("-p", "--port", metavar="PORT", help="database server port number")
    c.add_argument("-U", "--username", metavar="NAME", help="connect as specified database user")
    c.add_argument("-w", "--no-password", action="store_true", help="never prompt for password")
    c.add_argument("-W", "--password", action="store_true", help="force password prompt")
    c.add_argument(
        "--primary", metavar="HOST[:PORT]", help="the primary to stream from (shorthand for -h/-p)"
    )
    c.add_argument(
        "--application-name",
        metavar="NAME",
        help="application_name, as named in synchronous_standby_names",
    )
    a = p.add_argument_group("Optional actions")
    if not relay:
        a.add_argument(
            "--create-slot",
            action="store_true",
            help="create a new replication slot (for the slot's name see --slot), then exit",
        )
        a.add_argument(
            "--drop-slot",
            action="store_true",
            help="drop the replication slot (for the slot's name see --slot), then exit",
        )
    a.add_argument(
        "--on-segment-complete",
        metavar="CMD",
        help="run CMD after each completed segment is durable (%%p: path, %%f: file "
        "name, %%%%: a percent sign); running commands are waited for at exit",
    )
    if not relay:
        a.add_argument(
            "--replay",
            action="store_true",
            help="decode and verify received WAL in-process and report its replay (apply) "
            "position, so synchronous_commit = remote_apply works. Only flushed WAL is "
            "replayed, as on a standby: with --synchronous that is every batch, otherwise "
            "each completed segment",
        )


def add_common_arguments(group: argparse._ArgumentGroup) -> None:
    """-v, -V and -?, as PostgreSQL's programs spell them."""
    group.add_argument("-v", "--verbose", action="count", default=0, help="output verbose messages")
    group.add_argument(
        "-V", "--version", action="store_true", help="output version information, then exit"
    )
    group.add_argument("-?", "--help", action="help", help="show this help, then exit")


def setup_logging(prog: str, verbose: int) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format=f"{prog}: %(message)s",
    )


def _connect_params(args: argparse.Namespace) -> dict[str, str]:
    params: dict[str, str] = {}
    if args.primary:
        host, sep, port = args.primary.rpartition(":")
        if sep and port.isdigit() and not host.endswith("]"):
            params["host"], params["port"] = host.strip("[]"), port
        else:
            params["host"] = args.primary.strip("[]")
    if args.host:
        params["host"] = args.host
    if args.port:
        params["port"] = args.port
    if args.username:
        params["user"] = args.username
    if args.application_name:
        params["application_name"] = args.application_name
    return params


_hook_tasks: set[asyncio.Future[None]] = set()  # keeps running hook commands referenced


def _segment_hook(
    command: str, *, on_success: Callable[[Path], None] | None = None
) -> Callable[[Path], None]:
    """--on-segment-complete's runner; ``on_success`` hears of each command that exited 0."""

    def run(path: Path) -> None:
        # One pass, as archive_command's: %p and %f (shell-quoted), %% a percent sign.
        values = {"%p": shlex.quote(str(path)), "%f": shlex.quote(path.name), "%%": "%"}
        cmd = re.sub("%[pf%]", lambda m: values[m.group()], command)

        async def spawn() -> None:
            proc = await asyncio.create_subprocess_shell(cmd)
            rc = await proc.wait()
            if rc != 0:
                log.warning("--on-segment-complete command failed with exit code %d: %s", rc, cmd)
            elif on_success is not None:
                on_success(path)

        task = asyncio.ensure_future(spawn())
        _hook_tasks.add(task)
        task.add_done_callback(_hook_tasks.discard)

    return run


async def _wait_for_hooks() -> None:
    """Let running --on-segment-complete commands finish, so their failures are logged.

    Hooks are not run again on restart (an upload would be missed), so they
    are waited for; a command that hangs must not keep the receiver from
    ever exiting, so a signal during the wait ends it.
    """
    if not _hook_tasks:
        return
    running = len(_hook_tasks)
    waiting = asyncio.gather(*_hook_tasks, return_exceptions=True)
    gave_up = asyncio.Event()

    def give_up() -> None:
        gave_up.set()
        waiting.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, give_up)
    log.info(
        "waiting for %d --on-segment-complete command(s) to finish "
        "(SIGINT or SIGTERM: exit without waiting)",
        running,
    )
    try:
        await waiting
    except asyncio.CancelledError:
        if not gave_up.is_set():
            raise  # this task itself was cancelled
        log.warning("exiting with --on-segment-complete command(s) still running")


async def _slot_action(args: argparse.Namespace, params: dict[str, str]) -> None:
    conn = await connect(
        args.dbname, replication="true", fallback_application_name="walstream", **params
    )
    async with conn:
        if args.create_slot:
            log.info('creating replication slot "%s"', args.slot)
            try:
                await conn.create_replication_slot(args.slot)
            except ServerError as e:
                if not (args.if_not_exists and e.sqlstate == "42710"):
                    raise
                log.info('replication slot "%s" already exists', args.slot)
        else:
            log.info('dropping replication slot "%s"', args.slot)
            await conn.drop_replication_slot(args.slot)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # SIGINT before streaming's own handlers are installed (a slot action,
        # the password prompt): end as the default handler would, without a
        # traceback. While streaming, SIGINT is a clean stop (exit 0).
        return 128 + signal.SIGINT


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        print(version_line(PROGNAME))
        return 0
    setup_logging(PROGNAME, args.verbose)
    params = _connect_params(args)
    if args.password:
        params["password"] = ask_password()
    # As pg_receivewal: without -W or -w, ask once when the server wants a password.
    may_ask = not (args.password or args.no_password)

    def fail(message: str) -> int:
        print(f"{PROGNAME}: error: {message}", file=sys.stderr)
        return 1

    if (args.create_slot or args.drop_slot) and not args.slot:
        return fail("replication slot needed with action --create-slot or --drop-slot")
    if args.create_slot and args.drop_slot:
        return fail("cannot use --create-slot together with --drop-slot")
    if args.synchronous and args.no_sync:
        return fail("cannot use --synchronous together with --no-sync")
    try:
        target = target_from_arguments(args)
    except ValueError as e:
        return fail(str(e))
    if target.is_set and not args.replay:
        return fail("a recovery target needs --replay")
    try:
        if args.create_slot or args.drop_slot:
            try:
                asyncio.run(_slot_action(args, params))
            except AuthenticationError as e:
                if not (may_ask and needs_password(e)):
                    raise
                params["password"] = ask_password()
                may_ask = False
                asyncio.run(_slot_action(args, params))
            return 0  # as pg_receivewal: the action, then exit
        if not args.directory:
            return fail("no target directory specified")
        directory = Path(args.directory)
        check_directory(directory)
        options = ReceiverOptions(
            directory=directory,
            conninfo=args.dbname,
            connect_params=params,
            slot=args.slot,
            synchronous=args.synchronous,
            sync=not args.no_sync,
            status_interval=args.status_interval,
            endpos=LSN.parse(args.endpos) if args.endpos else None,
            loop=not args.no_loop,
            compression=Compression.parse(args.compress),
            on_segment_complete=_segment_hook(args.on_segment_complete)
            if args.on_segment_complete
            else None,
        )
    except (ValueError, Error) as e:
        return fail(str(e))
    replay = _Replay(args.replay, target if target.is_set else None)
    rc = run_loop(_run_cli(options, replay, may_ask=may_ask, http=args.http))
    if rc is None:  # the first connection needs a password: nothing was received yet
        options = dataclasses.replace(
            options, connect_params={**options.connect_params, "password": ask_password()}
        )
        rc = run_loop(_run_cli(options, replay, may_ask=False, http=args.http))
    assert rc is not None
    return rc


def _keep_heap() -> None:
    """Stop glibc from handing freed heap back to the kernel after every read.

    Each read's WAL messages (128 kB each) are freed once written; with
    glibc's default thresholds the top of the heap was trimmed and faulted in
    again on the next read, about 100,000 page faults per GiB streamed
    (measured). The heap stays bounded by the read-ahead limit either way.
    """
    if sys.platform != "linux" or not hasattr(os, "confstr"):
        return
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-1, 64 * 1024 * 1024)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD (setting one fixes both)
    except (OSError, ValueError, AttributeError):
        pass


@dataclasses.dataclass(frozen=True)
class _Replay:
    """--replay: the startup role replays beside the receiver (a Standby), up to ``target``."""

    enabled: bool
    target: RecoveryTarget | None


async def _run_cli(
    options: ReceiverOptions,
    replay: _Replay,
    *,
    may_ask: bool = False,
    http: tuple[str, int] | None = None,
) -> int | None:
    """The exit code; None when the first connection wants a password we may ask for."""
    _keep_heap()
    service: WalReceiver | Standby
    if replay.enabled:
        # Imported here: the startup role and the decoder are only needed with
        # --replay, and the receiver's start-up is part of every run's cost.
        from walstream.standby import Standby

        service = Standby(options, target=replay.target)
        receiver = service.receiver
    else:
        service = receiver = WalReceiver(options)
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        log.warning("received interrupt signal, exiting")  # pg_receivewal's words
        receiver.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted)
    try:
        try:
            async with serving_http(http, receiver=receiver):
                await service.run()
        finally:
            await _wait_for_hooks()
    except (Error, OSError) as e:
        if may_ask and not receiver.connected and needs_password(e):
            return None
        print(f"{PROGNAME}: error: {e}", file=sys.stderr)
        if not options.loop and receiver.connected:
            # pg_receivewal -n ends every lost session with this line.
            print(f"{PROGNAME}: error: disconnected", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0
