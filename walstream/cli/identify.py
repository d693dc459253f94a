"""``walstream identify``: connect as a standby would and print what IDENTIFY_SYSTEM says."""

from __future__ import annotations

import asyncio
import sys

from walstream.cli.args import PgArgumentParser
from walstream.client import connect
from walstream.errors import Error

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Connect like a standby would and print what IDENTIFY_SYSTEM says."""
    parser = PgArgumentParser(
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
