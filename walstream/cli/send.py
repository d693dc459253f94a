"""``walstream send`` (``python -m walstream.sender``): serve WAL to standbys. Not built yet."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    print("walstream send: not implemented yet", file=sys.stderr)
    return 1
