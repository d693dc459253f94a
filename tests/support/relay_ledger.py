"""``python -m tests.support.relay_ledger LEDGER RELAY-ARGS...``: the relay, with a ledger.

Runs ``walstream relay`` unchanged except that two facts go to LEDGER, one
line each, in the order they happen (one ``os.write`` to an O_APPEND file
per line, so a SIGKILL loses at most the line being written, never the
order):

* ``F <lsn>``: the WAL directory's ``flushed`` position was set (walstream's
  WalDirectory sets it only once an fsync covering it returned);
* ``S <start> <end>``: the relay's walsender framed an XLogData message
  holding WAL from ``start`` to ``end``.

So a test can check that no message ever held WAL past what an fsync had
made durable before it: what a crash of the machine (not only of the
process) could not take back. Lines are integers (LSNs as byte offsets).
"""

from __future__ import annotations

import os
import sys
from typing import Any


def _install(fd: int) -> None:
    from walstream.protocol.server import ServerConnection
    from walstream.storage.directory import WalDirectory

    def record(line: str) -> None:
        os.write(fd, line.encode())

    class Flushed:
        """``WalDirectory.flushed``, each assignment recorded before it takes effect."""

        def __get__(self, obj: Any, cls: Any = None) -> Any:
            if obj is None:
                return self
            return obj.__dict__["_ledger_flushed"]

        def __set__(self, obj: Any, value: int) -> None:
            record(f"F {int(value)}\n")
            obj.__dict__["_ledger_flushed"] = value

    WalDirectory.flushed = Flushed()  # type: ignore[assignment,method-assign]
    # Every XLogData's header is made here, whether its WAL follows from a
    # buffer or straight from the segment file (sendfile): one hook sees all.
    framed = ServerConnection.xlog_data_header

    def xlog_data_header(
        self: ServerConnection, data_start: int, wal_end: int, send_time: int, size: int
    ) -> bytes:
        record(f"S {int(data_start)} {int(data_start) + size}\n")
        return framed(self, data_start, wal_end, send_time, size)

    ServerConnection.xlog_data_header = xlog_data_header  # type: ignore[method-assign]


def main() -> int:
    ledger, *args = sys.argv[1:]
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    _install(fd)
    from walstream.cli.relay import main as relay_main

    return relay_main(args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
