"""``/status``: a :class:`Snapshot` as JSON, ``{"upstream": {...}, "clients": [...]}``.

Pure functions, no I/O. ``upstream`` is the receiver's side (null where no
receiver runs): state, server, timeline, write/flush/apply positions, the
server's end of WAL and the lag in bytes and seconds. ``clients`` holds one
object per walsender connection whose keys are pg_stat_replication's column
names, in its order, then walstream's own (``slot_name``, ``bytes_sent``).
As PostgreSQL shows them: LSNs as ``X/X`` text, times as ISO 8601 with
their offset, NULL as null; lags (an interval there) in seconds.
``usesysid`` and ``client_hostname`` are always null: there is no catalog
of roles, and no reverse lookup (PostgreSQL's own default, log_hostname off).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from walstream.lsn import LSN
from walstream.monitor.snapshot import Snapshot
from walstream.receiver import ReceiverStatus

if TYPE_CHECKING:
    # Types only: a receiver with --http need not import the sender role.
    from walstream.sender.walsender import WalSenderStatus

__all__ = ["CONTENT_TYPE", "PG_STAT_REPLICATION_COLUMNS", "document", "render"]

CONTENT_TYPE: Final = "application/json"

# pg_stat_replication's columns on PostgreSQL 15 to 18 (the same on each:
# tests/test_monitor_pg.py checks them against the real view).
PG_STAT_REPLICATION_COLUMNS: Final = (
    "pid", "usesysid", "usename", "application_name", "client_addr", "client_hostname",
    "client_port", "backend_start", "backend_xmin", "state", "sent_lsn", "write_lsn",
    "flush_lsn", "replay_lsn", "write_lag", "flush_lag", "replay_lag", "sync_priority",
    "sync_state", "reply_time",
)  # fmt: skip


def _lsn(value: LSN | None) -> str | None:
    return None if value is None else str(LSN(value))


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def upstream_object(up: ReceiverStatus) -> dict[str, Any]:
    return {
        "state": up.state,
        "host": up.host,
        "timeline": up.timeline,
        "write_lsn": _lsn(up.write),
        "flush_lsn": _lsn(up.flush),
        "apply_lsn": _lsn(up.apply),
        "server_wal_end_lsn": _lsn(up.server_wal_end),
        "lag_bytes": up.lag_bytes,
        "lag_seconds": up.lag_seconds,
        "bytes_per_second": up.bytes_per_second,
        "bytes_received": up.bytes_received,
        "segments_completed": up.segments_completed,
        "errors": up.errors,
        "synced": up.synced,
    }


def client_row(row: WalSenderStatus) -> dict[str, Any]:
    return {
        "pid": row.pid,
        "usesysid": None,
        "usename": row.usename,
        "application_name": row.application_name,
        "client_addr": row.client_addr,
        "client_hostname": None,
        "client_port": row.client_port,
        "backend_start": _time(row.backend_start),
        "backend_xmin": row.backend_xmin,
        "state": row.state,
        "sent_lsn": _lsn(row.sent_lsn),
        "write_lsn": _lsn(row.write_lsn),
        "flush_lsn": _lsn(row.flush_lsn),
        "replay_lsn": _lsn(row.replay_lsn),
        "write_lag": row.write_lag,
        "flush_lag": row.flush_lag,
        "replay_lag": row.replay_lag,
        "sync_priority": row.sync_priority,
        "sync_state": row.sync_state,
        "reply_time": _time(row.reply_time),
        "slot_name": row.slot_name,
        "bytes_sent": row.bytes_sent,
    }


def document(snapshot: Snapshot) -> dict[str, Any]:
    """The ``/status`` object (``clients`` is empty where no sender runs)."""
    return {
        "upstream": None if snapshot.upstream is None else upstream_object(snapshot.upstream),
        "clients": [client_row(row) for row in snapshot.clients or ()],
    }


def render(snapshot: Snapshot) -> str:
    """The ``/status`` body: :func:`document` as JSON (floats as JSON numbers, no NaN)."""
    return json.dumps(document(snapshot), indent=2, allow_nan=False) + "\n"
