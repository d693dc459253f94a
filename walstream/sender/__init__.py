"""The walsender role: serve WAL from a walstream directory to standbys and receivers.

Will be built on :mod:`walstream.protocol.server`. Until then this module only
reserves the role's place in the layout.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    print("walstream send: not implemented yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
