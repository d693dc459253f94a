"""The ``walstream`` command: one entry point, a subcommand per role."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from walstream import __version__

__all__ = ["main"]


def _identify(argv: list[str]) -> int:
    """Connect like a standby would and print what IDENTIFY_SYSTEM says."""
    import asyncio

    from walstream.connection import connect
    from walstream.errors import Error

    parser = argparse.ArgumentParser(
        prog="walstream identify",
        description="Open a physical replication connection and print IDENTIFY_SYSTEM.",
    )
    parser.add_argument(
        "-d", "--dbname", default="", metavar="CONNSTR", help="conninfo string or postgresql:// URI"
    )
    args = parser.parse_args(argv)

    async def run() -> None:
        async with await connect(args.dbname) as conn:
            system = await conn.identify_system()
            print(f"systemid: {system.systemid}")
            print(f"timeline: {system.timeline}")
            print(f"xlogpos:  {system.xlogpos}")
            print(f"server:   {conn.server_parameters.get('server_version', '?')}")

    try:
        asyncio.run(run())
    except Error as e:
        print(f"walstream identify: error: {e}", file=sys.stderr)
        return 1
    return 0


def _role(module: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        import importlib

        main: Callable[[list[str]], int] = importlib.import_module(module).main
        return main(argv)

    return run


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "identify": (_identify, "connect and print IDENTIFY_SYSTEM"),
    "receive": (_role("walstream.receiver"), "stream WAL into a directory (pg_receivewal)"),
    "startup": (_role("walstream.startup"), "decode, verify and track replay of received WAL"),
    "waldump": (_role("walstream.waldump"), "decode WAL files like pg_waldump (--json, --stats)"),
    "send": (_role("walstream.sender"), "serve WAL from a directory to standbys"),
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
        print(f"walstream {__version__}")
        return 0
    entry = COMMANDS.get(argv[0])
    if entry is None:
        print(f"walstream: unknown command {argv[0]!r} (try --help)", file=sys.stderr)
        return 2
    return entry[0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
