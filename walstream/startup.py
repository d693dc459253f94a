"""The startup role: follow received WAL, decode and verify it, track replay.

Built in issue #4. Until then this module only reserves the role's place.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["waldump"]:
        from walstream.waldump import main as waldump

        return waldump(args[1:])
    print("walstream startup: not implemented yet (issue #4)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
