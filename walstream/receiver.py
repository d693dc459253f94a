"""The walreceiver role: stream WAL from a primary into a pg_receivewal-style directory.

Built in issue #3 on top of :mod:`walstream.connection`. Until then this module
only reserves the role's place in the layout, and its CLI says so.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    print("walstream receive: not implemented yet (issue #3)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
