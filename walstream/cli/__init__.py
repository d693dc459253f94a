"""The command lines: ``walstream COMMAND``, one module per command.

Only here (and in the demo) do argparse, signals, prompts and exit codes
live; the library takes typed options. Each command's module is imported
only when it runs, so ``walstream waldump`` never pays for asyncio and the
connection code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from walstream import __version__

__all__ = ["main"]


def _command(module: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        import importlib

        main: Callable[[list[str]], int] = importlib.import_module(module).main
        return main(argv)

    return run


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "identify": (_command("walstream.cli.identify"), "connect and print IDENTIFY_SYSTEM"),
    "receive": (_command("walstream.cli.receive"), "stream WAL into a directory (pg_receivewal)"),
    "startup": (_command("walstream.cli.startup"), "decode, verify and track replay of WAL"),
    "waldump": (_command("walstream.cli.waldump"), "decode WAL like pg_waldump (--json, --stats)"),
    "send": (_command("walstream.cli.send"), "serve WAL from a directory to standbys"),
    "relay": (_command("walstream.cli.relay"), "receive from a primary and serve what is durable"),
    "passwd": (_command("walstream.cli.passwd"), "a --passwords line for walstream send"),
    "demo": (_command("walstream.demo"), "watch replication on throwaway servers (--relay)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: walstream COMMAND [options]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<10} {text}")
        print("\nRun 'walstream COMMAND --help' for a command's options.")
        return 0
    if argv[0] in ("-V", "--version"):
        from walstream.wal import kernel

        print(f"walstream {__version__} (WAL scan: {kernel.implementation()}: {kernel.reason()})")
        return 0
    entry = COMMANDS.get(argv[0])
    if entry is None:
        print(f"walstream: unknown command {argv[0]!r} (try --help)", file=sys.stderr)
        return 2
    return entry[0](argv[1:])
