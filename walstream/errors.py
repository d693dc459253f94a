"""The exceptions walstream raises on purpose.

Three families, because the caller's response differs for each:

* :class:`ServerError`: the server said no (an ErrorResponse). It carries the
  server's SQLSTATE and text so callers can branch on ``sqlstate``.
* :class:`ProtocolViolation`: the peer sent bytes that break the protocol
  (a broken or hostile server or client). Not retryable against the same peer.
* :class:`LocalProtocolError`: walstream's own caller used a state machine
  out of order. That is a bug on our side, never the peer's fault.

Everything raised deliberately derives from :class:`Error`.
"""

from __future__ import annotations

from collections.abc import Mapping

from walstream.lsn import LSN

__all__ = [
    "AuthenticationError",
    "ConnInfoError",
    "ConnectError",
    "Error",
    "LocalProtocolError",
    "ProtocolViolation",
    "RecoveryTargetError",
    "RecoveryTargetUnreachable",
    "ServerError",
    "WalCorruption",
]

# ErrorResponse/NoticeResponse field codes, as documented in "Error and
# Notice Message Fields" of the PostgreSQL protocol chapter.
FIELD_NAMES: Mapping[str, str] = {
    "S": "severity_local",
    "V": "severity",
    "C": "sqlstate",
    "M": "message",
    "D": "detail",
    "H": "hint",
    "P": "position",
    "p": "internal_position",
    "q": "internal_query",
    "W": "context",
    "s": "schema_name",
    "t": "table_name",
    "c": "column_name",
    "d": "data_type_name",
    "n": "constraint_name",
    "F": "source_file",
    "L": "source_line",
    "R": "source_function",
}


class Error(Exception):
    """Base class of every exception walstream raises on purpose."""


class ConnInfoError(Error, ValueError):
    """A malformed conninfo string or URI; the message is libpq's."""


class ConnectError(Error, OSError):
    """No connection could be established (network, TLS, or every host refused)."""


class AuthenticationError(Error):
    """The client refused to authenticate: no password, a required channel
    binding that cannot be had, or a method walstream does not implement.
    (A wrong password is the server's verdict: a :class:`ServerError` 28P01.)
    """


class ProtocolViolation(Error):
    """The peer broke the protocol: malformed, unexpected or oversized messages.

    ``sqlstate`` is what a server reports to the offending client in its FATAL
    ErrorResponse. It defaults to PostgreSQL's ERRCODE_PROTOCOL_VIOLATION
    (08P01), which covers nearly every case; the few that PostgreSQL files
    under another code (an unsupported protocol version is 0A000) say so, so
    a server built on the state machine answers exactly as PostgreSQL would.
    """

    def __init__(self, *args: object, sqlstate: str = "08P01") -> None:
        super().__init__(*args)
        self.sqlstate = sqlstate


class LocalProtocolError(Error):
    """walstream's own code drove a state machine out of order (a bug on our side)."""


class ServerError(Error):
    """An ErrorResponse from the server, with its fields.

    ``str()`` reads like libpq's ``PQerrorMessage``: severity, message, and
    the detail and hint lines where present.
    """

    def __init__(
        self, fields: Mapping[str, str], context: str | None = None, note: str | None = None
    ) -> None:
        self.fields: dict[str, str] = dict(fields)
        self.severity: str = fields.get("V") or fields.get("S") or "ERROR"
        self.sqlstate: str = fields.get("C", "")
        self.message: str = fields.get("M", "")
        self.detail: str | None = fields.get("D")
        self.hint: str | None = fields.get("H")
        self.context = context
        self.note = note  # a line the client adds, as libpq does for .pgpass failures
        super().__init__()

    def __str__(self) -> str:
        return self._format()

    def _format(self) -> str:
        text = f"{self.severity}:  {self.message}"
        if self.detail:
            text += f"\nDETAIL:  {self.detail}"
        if self.hint:
            text += f"\nHINT:  {self.hint}"
        if self.context:
            text = f"{self.context}: {text}"
        if self.note:
            text += f"\n{self.note}"
        return text

    def __repr__(self) -> str:
        return f"ServerError(sqlstate={self.sqlstate!r}, message={self.message!r})"


class WalCorruption(Error):
    """WAL that cannot be decoded: ``lsn`` is where, ``reason`` says why.

    The WAL decoder's outcomes (:class:`walstream.wal.decoder.EndOfWal`,
    :class:`walstream.wal.decoder.InvalidRecord`) derive from it, so a reader
    that expects more WAL can simply raise what the decoder returned.
    """

    def __init__(self, lsn: int, reason: str) -> None:
        self.lsn = LSN(lsn)
        self.reason = reason
        super().__init__(f"{reason} (at {self.lsn})")


class RecoveryTargetError(Error, ValueError):
    """A recovery target setting PostgreSQL would refuse; the wording is the server's.

    ``setting`` names the offending parameter, ``value`` is its text,
    ``detail`` PostgreSQL's DETAIL line where it gives one.
    """

    def __init__(
        self, setting: str, value: str, detail: str | None = None, *, message: str | None = None
    ) -> None:
        self.setting = setting
        self.value = value
        self.detail = detail
        self.message = message or f'invalid value for parameter "{setting}": "{value}"'
        super().__init__(self.message + (f"\nDETAIL:  {detail}" if detail else ""))


class RecoveryTargetUnreachable(Error):
    """Recovery cannot end at its configured target: PostgreSQL's FATAL at the end of redo.

    Either the WAL ended first ("recovery ended before configured recovery
    target was reached", 13+) or the target lies before the point where the
    restored backup becomes consistent ("requested recovery stop point is
    before consistent recovery point"). Not a :class:`WalCorruption`: the
    WAL is fine, and a caller that treats corruption as "wait for more WAL"
    must not wait here; the remedy is more WAL or another target. ``lsn`` is
    where replay ended.
    """

    def __init__(self, lsn: int, message: str) -> None:
        self.lsn = LSN(lsn)
        self.message = message
        super().__init__(message)
