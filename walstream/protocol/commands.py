"""Replication commands: their text, and typed views of their results.

Kept apart from the connection so that the exact command syntax (which
changes with the server version) and the parsing of result rows can be unit
tested without a server, and reused by the sender, which answers the same
commands.
"""

from __future__ import annotations

from dataclasses import dataclass

from walstream.errors import ProtocolViolation
from walstream.lsn import LSN

__all__ = [
    "IdentifySystem",
    "QueryResult",
    "ReplicationSlot",
    "SlotPosition",
    "TimelineHistory",
    "create_replication_slot",
    "drop_replication_slot",
    "quote_ident",
    "read_replication_slot",
    "start_replication",
]


@dataclass(frozen=True, slots=True)
class QueryResult:
    """One result set of a simple query: column names, rows (raw bytes), command tag."""

    columns: tuple[str, ...]
    raw_rows: tuple[tuple[bytes | None, ...], ...]
    command_tag: str

    @property
    def rows(self) -> list[tuple[str | None, ...]]:
        return [tuple(None if v is None else v.decode() for v in row) for row in self.raw_rows]

    def single_row(self, command: str, min_columns: int) -> tuple[bytes | None, ...]:
        """The one row a command must return, checked like PostgreSQL's walreceiver does."""
        if len(self.raw_rows) != 1 or len(self.columns) < min_columns:
            raise ProtocolViolation(
                f"could not parse {command} result: got {len(self.raw_rows)} rows and "
                f"{len(self.columns)} fields, expected 1 row and {min_columns} or more fields"
            )
        return self.raw_rows[0]


def _text(value: bytes | None, what: str) -> str:
    if value is None:
        raise ProtocolViolation(f"unexpected NULL {what}")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise ProtocolViolation(f"{what} is not valid UTF-8") from None


def _int(value: bytes | None, what: str) -> int:
    text = _text(value, what)
    try:
        return int(text)
    except ValueError:
        raise ProtocolViolation(f"invalid {what}: {text!r}") from None


def _lsn(value: bytes | None, what: str) -> LSN:
    text = _text(value, what)
    try:
        return LSN.parse(text)
    except ValueError:
        raise ProtocolViolation(f"invalid {what}: {text!r}") from None


def quote_ident(name: str) -> str:
    """Double-quote a slot name as the replication grammar accepts it."""
    if "\0" in name:
        raise ValueError("identifier contains a NUL byte")
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class IdentifySystem:
    systemid: int
    timeline: int
    xlogpos: LSN
    dbname: str | None

    @classmethod
    def from_result(cls, result: QueryResult) -> IdentifySystem:
        row = result.single_row("IDENTIFY_SYSTEM", 3)
        dbname = row[3] if len(row) > 3 else None
        return cls(
            systemid=_int(row[0], "system identifier"),
            timeline=_int(row[1], "timeline"),
            xlogpos=_lsn(row[2], "WAL position"),
            dbname=None if dbname is None else _text(dbname, "dbname"),
        )


@dataclass(frozen=True, slots=True)
class TimelineHistory:
    filename: str
    content: bytes

    @classmethod
    def from_result(cls, result: QueryResult, timeline: int) -> TimelineHistory:
        row = result.single_row("TIMELINE_HISTORY", 2)
        filename = _text(row[0], "history file name")
        expected = f"{timeline:08X}.history"
        if filename != expected:
            # A walreceiver refuses a name that could write outside its directory.
            raise ProtocolViolation(
                f"server sent history file name {filename!r} for timeline {timeline}, "
                f"expected {expected!r}"
            )
        if row[1] is None:
            raise ProtocolViolation("unexpected NULL history file content")
        return cls(filename, row[1])


@dataclass(frozen=True, slots=True)
class ReplicationSlot:
    """What CREATE_REPLICATION_SLOT returns (physical slots: consistent_point 0/0)."""

    slot_name: str
    consistent_point: LSN | None
    snapshot_name: str | None
    output_plugin: str | None

    @classmethod
    def from_result(cls, result: QueryResult) -> ReplicationSlot:
        row = result.single_row("CREATE_REPLICATION_SLOT", 4)
        return cls(
            slot_name=_text(row[0], "slot name"),
            consistent_point=None if row[1] is None else _lsn(row[1], "consistent point"),
            snapshot_name=None if row[2] is None else _text(row[2], "snapshot name"),
            output_plugin=None if row[3] is None else _text(row[3], "output plugin"),
        )


@dataclass(frozen=True, slots=True)
class SlotPosition:
    """What READ_REPLICATION_SLOT returns for an existing slot."""

    slot_type: str
    restart_lsn: LSN | None  # None when the slot has not reserved WAL
    restart_tli: int | None

    @classmethod
    def from_result(cls, result: QueryResult) -> SlotPosition | None:
        row = result.single_row("READ_REPLICATION_SLOT", 3)
        if row[0] is None:
            return None  # no such slot
        return cls(
            slot_type=_text(row[0], "slot type"),
            restart_lsn=None if row[1] is None else _lsn(row[1], "restart_lsn"),
            restart_tli=None if row[2] is None else _int(row[2], "restart_tli"),
        )


def create_replication_slot(
    name: str, *, temporary: bool = False, reserve_wal: bool = False, server_version: int
) -> str:
    """CREATE_REPLICATION_SLOT in the syntax the server prefers (options in parentheses from 15)."""
    parts = ["CREATE_REPLICATION_SLOT", quote_ident(name)]
    if temporary:
        parts.append("TEMPORARY")
    parts.append("PHYSICAL")
    if reserve_wal:
        parts.append("(RESERVE_WAL)" if server_version >= 150000 else "RESERVE_WAL")
    return " ".join(parts)


def read_replication_slot(name: str) -> str:
    return f"READ_REPLICATION_SLOT {quote_ident(name)}"


def drop_replication_slot(name: str, *, wait: bool = False) -> str:
    return f"DROP_REPLICATION_SLOT {quote_ident(name)}" + (" WAIT" if wait else "")


def start_replication(start: LSN, *, timeline: int | None = None, slot: str | None = None) -> str:
    parts = ["START_REPLICATION"]
    if slot is not None:
        parts += ["SLOT", quote_ident(slot)]
    parts += ["PHYSICAL", str(start)]
    if timeline is not None:
        parts += ["TIMELINE", str(timeline)]
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class NextTimeline:
    """The result row after a timeline ends: where the next timeline starts."""

    timeline: int
    start: LSN

    @classmethod
    def from_result(cls, result: QueryResult) -> NextTimeline:
        row = result.single_row("end-of-streaming result", 2)
        return cls(_int(row[0], "next timeline"), _lsn(row[1], "next timeline start position"))
