"""``/metrics``: a :class:`Snapshot` in Prometheus's text exposition format, version 0.0.4.

Pure functions, no I/O: :func:`render` returns the text a scrape gets.
The format's rules followed here: every family has its ``# HELP`` and
``# TYPE`` lines before its samples, and its samples are contiguous;
counters are named ``..._total``; label values escape backslash, double
quote and line feed (``\\\\``, ``\\"``, ``\\n``), HELP text backslash and
line feed; a histogram is cumulative ``_bucket{le="..."}`` samples ending
with ``le="+Inf"``, then ``_sum`` and ``_count``; the text ends with a line
feed. A value PostgreSQL shows as NULL (no reply yet, no lag measured) is
left out rather than exposed as a number that means nothing.

prometheus_client is not used to write this (the tests parse the output
with its parser): its registry of long-lived metric objects does not fit
a snapshot rendered per scrape, and an optional dependency would still
need this stdlib path beside it.

Names: ``walstream_upstream_*`` is what the receiver receives (positions
as byte offsets, the LSN's integer value), ``walstream_client_*`` one
series per downstream connection (labels ``application_name``, ``pid``
and ``client_addr``), as pg_stat_replication's columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Final

from walstream.monitor.snapshot import Snapshot
from walstream.receiver import ReceiverStatus
from walstream.storage.latency import HistogramSnapshot

if TYPE_CHECKING:
    # Types only: a receiver with --http need not import the sender role.
    from walstream.sender.walsender import WalSenderStatus

__all__ = ["CONTENT_TYPE", "escape_help", "escape_label_value", "format_value", "render"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# The states a state-set gauge lists (1 for the current one, 0 for the
# others), so a query can select on the label without knowing which exist.
UPSTREAM_STATES: Final = ("connecting", "streaming", "waiting", "stopped")
CLIENT_STATES: Final = ("startup", "catchup", "streaming", "stopping")
SYNC_STATES: Final = ("async", "potential", "sync", "quorum")  # pg_stat_replication's

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float | int]  # name suffix ("", "_bucket", ...), labels, value


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: integers plainly, +Inf, -Inf, NaN."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels) + "}"


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        self.lines.append(f"# HELP {name} {escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            self.lines.append(f"{name}{suffix}{_labels(labels)} {format_value(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float, labels: Labels = ()) -> None:
        self.family(name, kind, help_text, [("", labels, value)])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _state_set(
    current: str, states: Sequence[str], extra: Labels = (), key: str = "state"
) -> list[Sample]:
    listed = list(states) if current in states else [*states, current]
    return [("", (*extra, (key, s)), int(s == current)) for s in listed]


def render(snapshot: Snapshot, *, version: str | None = None) -> str:
    """The whole ``/metrics`` body for ``snapshot``."""
    out = _Exposition()
    if version is not None:
        out.one("walstream_build_info", "gauge", "walstream's version (always 1)", 1,
                (("version", version),))  # fmt: skip
    if snapshot.upstream is not None:
        _upstream(out, snapshot.upstream, snapshot.segments_removed)
    if snapshot.fsync is not None:
        _histogram(
            out,
            "walstream_fsync_duration_seconds",
            "Duration of each fsync(2) of a WAL file or the WAL directory",
            snapshot.fsync,
        )
    if snapshot.clients is not None:
        _clients(out, snapshot.clients)
    return out.text()


# name (after walstream_upstream_), type, help, value
_UPSTREAM: Final[tuple[tuple[str, str, str, Callable[[ReceiverStatus], float]], ...]] = (
    ("write_lsn_bytes", "gauge", "Position received and written (written_lsn), as a byte offset",
     lambda u: int(u.write)),
    ("flush_lsn_bytes", "gauge",
     "Position received and made durable by fsync (flushed_lsn), as a byte offset",
     lambda u: int(u.flush)),
    ("apply_lsn_bytes", "gauge",
     "Position replayed by an in-process consumer (0 without one), as a byte offset",
     lambda u: int(u.apply)),
    ("server_wal_end_lsn_bytes", "gauge",
     "The server's end of WAL as it last reported it, as a byte offset",
     lambda u: int(u.server_wal_end)),
    ("lag_bytes", "gauge",
     "Bytes of the server's WAL not yet stored here (flushed; written with --no-sync)",
     lambda u: u.lag_bytes),
    ("lag_seconds", "gauge",
     "How long the oldest WAL not yet stored here has been known to exist (0: caught up)",
     lambda u: u.lag_seconds),
    ("received_bytes_total", "counter", "WAL bytes received from the server",
     lambda u: u.bytes_received),
    ("errors_total", "counter",
     "Connection, protocol and server errors of the receiver, retried or fatal",
     lambda u: u.errors),
)  # fmt: skip


def _upstream(out: _Exposition, up: ReceiverStatus, segments_removed: int) -> None:
    out.family("walstream_upstream_state", "gauge",
               "Receiver connection state (1 for the current one)",
               _state_set(up.state, UPSTREAM_STATES))  # fmt: skip
    if up.host is not None:
        out.one("walstream_upstream_server_info", "gauge",
                "The server the receiver streams from (always 1)", 1,
                (("host", up.host),))  # fmt: skip
    if up.timeline is not None:
        out.one("walstream_upstream_timeline", "gauge", "Timeline being received", up.timeline)
    for name, kind, help_text, value in _UPSTREAM:
        out.one(f"walstream_upstream_{name}", kind, help_text, value(up))
    out.one("walstream_segments_written_total", "counter",
            "WAL segments completed, made durable and renamed", up.segments_completed)  # fmt: skip
    out.one("walstream_segments_removed_total", "counter",
            "WAL segments removed by retention", segments_removed)  # fmt: skip


def _histogram(out: _Exposition, name: str, help_text: str, h: HistogramSnapshot) -> None:
    samples: list[Sample] = [
        ("_bucket", (("le", format_value(bound)),), count) for bound, count in h.buckets
    ]
    samples.append(("_sum", (), h.sum))
    samples.append(("_count", (), h.count))
    out.family(name, "histogram", help_text, samples)


def _client_labels(row: WalSenderStatus) -> Labels:
    return (
        ("application_name", row.application_name),
        ("pid", str(row.pid)),
        ("client_addr", row.client_addr or ""),  # "" (no label) for a Unix socket
    )


def _seconds(when: datetime | None) -> float | None:
    return None if when is None else when.timestamp()


def _int(value: int | None) -> int | None:
    return None if value is None else int(value)


# One series per connection: name (after walstream_client_), type, help, value
# (None: left out, as PostgreSQL's NULL).
_PER_CLIENT: Final[tuple[tuple[str, str, str, Callable[[WalSenderStatus], float | None]], ...]] = (
    ("sent_lsn_bytes", "gauge", "Last position sent (sent_lsn), as a byte offset",
     lambda r: _int(r.sent_lsn)),
    ("write_lsn_bytes", "gauge",
     "Position the client reported written (write_lsn), as a byte offset",
     lambda r: _int(r.write_lsn)),
    ("flush_lsn_bytes", "gauge",
     "Position the client reported flushed (flush_lsn), as a byte offset",
     lambda r: _int(r.flush_lsn)),
    ("replay_lsn_bytes", "gauge",
     "Position the client reported replayed (replay_lsn), as a byte offset",
     lambda r: _int(r.replay_lsn)),
    ("write_lag_seconds", "gauge",
     "write_lag: time until the client reported recent WAL written", lambda r: r.write_lag),
    ("flush_lag_seconds", "gauge",
     "flush_lag: time until the client reported recent WAL flushed", lambda r: r.flush_lag),
    ("replay_lag_seconds", "gauge",
     "replay_lag: time until the client reported recent WAL replayed", lambda r: r.replay_lag),
    ("sync_priority", "gauge", "Priority as a synchronous standby (0: asynchronous)",
     lambda r: r.sync_priority),
    ("sent_bytes_total", "counter", "WAL bytes sent on the connection",
     lambda r: r.bytes_sent),
    ("backend_xmin", "gauge",
     "Oldest xmin the client reported in hot-standby feedback (backend_xmin)",
     lambda r: r.backend_xmin),
    ("start_time_seconds", "gauge", "When the connection started (backend_start), as Unix time",
     lambda r: r.backend_start.timestamp()),
    ("reply_time_seconds", "gauge",
     "Client clock of its last status reply (reply_time), as Unix time",
     lambda r: _seconds(r.reply_time)),
)  # fmt: skip


def _clients(out: _Exposition, rows: Sequence[WalSenderStatus]) -> None:
    out.one("walstream_sender_connections", "gauge",
            "Walsender connections past authentication", len(rows))  # fmt: skip
    labelled = [(row, _client_labels(row)) for row in rows]
    out.family("walstream_client_state", "gauge",
               "Walsender state of each connection (1 for the current one)",
               [s for row, lb in labelled
                for s in _state_set(row.state, CLIENT_STATES, lb)])  # fmt: skip
    out.family("walstream_client_sync_state", "gauge",
               "Synchronous state of each connection, as pg_stat_replication.sync_state "
               "(1 for the current one)",
               [s for row, lb in labelled
                for s in _state_set(row.sync_state, SYNC_STATES, lb, "sync_state")])  # fmt: skip
    for name, kind, help_text, value in _PER_CLIENT:
        samples: list[Sample] = []
        for row, labels in labelled:
            v = value(row)
            if v is not None:
                samples.append(("", labels, v))
        out.family(f"walstream_client_{name}", kind, help_text, samples)
