"""Replication commands: their text, and typed views of their results, in both directions.

Kept apart from the connection so that the exact command syntax (which
changes with the server version) and the parsing of result rows can be unit
tested without a server. The client reads results with the ``from_result``
constructors; the sender builds the same results with ``to_result`` (and the
module functions for results without a dataclass), which produce exactly the
RowDescription, DataRow and CommandComplete messages a real walsender of the
claimed version sends (byte-compared with PostgreSQL 15, 16 and 18 in
tests/test_result_encoding.py). What the server parses is
:mod:`walstream.protocol.repl_gram`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from walstream.errors import ProtocolViolation
from walstream.lsn import LSN
from walstream.protocol import messages as m
from walstream.protocol.repl_gram import ReplicationCommandError

__all__ = [
    "INT4_OID",
    "INT8_OID",
    "TEXT_OID",
    "IdentifySystem",
    "NextTimeline",
    "QueryResult",
    "ReplicationSlot",
    "ResultSet",
    "SlotPosition",
    "TimelineHistory",
    "command_complete",
    "create_replication_slot",
    "data_directory_mode_text",
    "drop_replication_slot",
    "quote_ident",
    "read_replication_slot",
    "read_replication_slot_result",
    "show_result",
    "start_replication",
    "start_replication_end",
    "timeline_history_fields",
    "timeline_history_missing",
    "wal_segment_size_text",
]

# Type OIDs of the columns walsenders send (pg_type.dat).
TEXT_OID: Final = 25
INT4_OID: Final = 23
INT8_OID: Final = 20


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


@dataclass(frozen=True, slots=True)
class ResultSet:
    """One result as a walsender sends it: RowDescription and DataRows (if ``fields``
    is not None), then CommandComplete ``tag``.

    A sender either frames it at once (:meth:`encode`) or feeds ``fields``,
    ``rows`` and ``tag`` to :class:`~walstream.protocol.server.ServerConnection`.
    """

    fields: tuple[m.FieldDescription, ...] | None
    rows: tuple[tuple[bytes | None, ...], ...]
    tag: str

    def messages(self) -> list[m.RowDescription | m.DataRow | m.CommandComplete]:
        out: list[m.RowDescription | m.DataRow | m.CommandComplete] = []
        if self.fields is not None:
            out.append(m.RowDescription(self.fields))
            out += (m.DataRow(row) for row in self.rows)
        out.append(m.CommandComplete(self.tag))
        return out

    def encode(self) -> bytes:
        return b"".join(msg.encode() for msg in self.messages())

    def to_query_result(self) -> QueryResult:
        """What the client side makes of it (for round trips)."""
        names = () if self.fields is None else tuple(f.name for f in self.fields)
        return QueryResult(names, self.rows, self.tag)


def _column(name: str, type_oid: int = TEXT_OID, *, typmod: int = -1) -> m.FieldDescription:
    """A result column as TupleDescInitBuiltinEntry() describes it: no table, text format."""
    size = {TEXT_OID: -1, INT4_OID: 4, INT8_OID: 8}[type_oid]
    return m.FieldDescription(name, 0, 0, type_oid, size, typmod, 0)


def _encode(value: str | int | LSN | None) -> bytes | None:
    return None if value is None else str(value).encode()


def command_complete(tag: str) -> ResultSet:
    """A result without rows: DROP_REPLICATION_SLOT, or START_REPLICATION's last tag."""
    return ResultSet(None, (), tag)


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

    def to_result(self, *, server_version: int) -> ResultSet:
        """IDENTIFY_SYSTEM's answer: the timeline column is int4 up to 15, int8 from 16."""
        timeline_type = INT8_OID if server_version >= 160000 else INT4_OID
        fields = (
            _column("systemid"),
            _column("timeline", timeline_type),
            _column("xlogpos"),
            _column("dbname"),
        )
        row = (
            _encode(self.systemid),
            _encode(self.timeline),
            _encode(self.xlogpos),
            _encode(self.dbname),
        )
        return ResultSet(fields, (row,), "IDENTIFY_SYSTEM")


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

    @classmethod
    def for_timeline(cls, timeline: int, content: bytes) -> TimelineHistory:
        return cls(f"{timeline:08X}.history", content)

    def to_result(self, *, server_version: int) -> ResultSet:
        row = (self.filename.encode(), self.content)
        return ResultSet(timeline_history_fields(server_version), (row,), "TIMELINE_HISTORY")


def timeline_history_fields(server_version: int) -> tuple[m.FieldDescription, ...]:
    """TIMELINE_HISTORY's RowDescription, sent before the file is opened.

    15 builds it by hand with typmod 0; 16 and later describe text columns
    with typmod -1.
    """
    typmod = -1 if server_version >= 160000 else 0
    return (_column("filename", typmod=typmod), _column("content", typmod=typmod))


def timeline_history_missing(timeline: int) -> ReplicationCommandError:
    """The ERROR after the RowDescription when the history file is not there."""
    return ReplicationCommandError(
        "58P01",  # ERRCODE_UNDEFINED_FILE, from errcode_for_file_access()
        f'could not open file "pg_wal/{timeline:08X}.history": No such file or directory',
    )


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

    def to_result(self) -> ResultSet:
        """CREATE_REPLICATION_SLOT's answer (a physical slot: consistent_point 0/0, NULLs)."""
        fields = (
            _column("slot_name"),
            _column("consistent_point"),
            _column("snapshot_name"),
            _column("output_plugin"),
        )
        row = (
            _encode(self.slot_name),
            _encode(self.consistent_point),
            _encode(self.snapshot_name),
            _encode(self.output_plugin),
        )
        return ResultSet(fields, (row,), "CREATE_REPLICATION_SLOT")


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

    def to_result(self) -> ResultSet:
        return read_replication_slot_result(self)


def read_replication_slot_result(position: SlotPosition | None) -> ResultSet:
    """READ_REPLICATION_SLOT's answer; a missing slot is one row of NULLs, not an error."""
    fields = (_column("slot_type"), _column("restart_lsn"), _column("restart_tli", INT8_OID))
    if position is None:
        row: tuple[bytes | None, ...] = (None, None, None)
    else:
        row = (
            _encode(position.slot_type),
            _encode(position.restart_lsn),
            _encode(position.restart_tli),
        )
    return ResultSet(fields, (row,), "READ_REPLICATION_SLOT")


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

    def to_result(self) -> ResultSet:
        """The row after a timeline's COPY ends, tagged START_STREAMING."""
        fields = (_column("next_tli", INT8_OID), _column("next_tli_startpos"))
        row = (_encode(self.timeline), _encode(self.start))
        return ResultSet(fields, (row,), "START_STREAMING")


def start_replication_end(next_timeline: NextTimeline | None) -> tuple[ResultSet, ResultSet]:
    """What follows START_REPLICATION's COPY (or replaces it, for a start at the switch point).

    On an older timeline, the next timeline's row tagged START_STREAMING;
    otherwise (the client ended the stream) only that tag. Then
    START_REPLICATION, the command's own tag.
    """
    first = (
        command_complete("START_STREAMING") if next_timeline is None else next_timeline.to_result()
    )
    return first, command_complete("START_REPLICATION")


def show_result(requested: str, settings: Mapping[str, str]) -> ResultSet:
    """SHOW's answer from ``settings`` (canonical name to value).

    Names compare case-insensitively (ASCII), as GUC names do, and the column
    is named canonically (``SHOW "DATESTYLE"`` answers a ``DateStyle``
    column). An unknown name is 42704 with the name as requested.
    """
    wanted = requested.encode().lower()  # bytes.lower() folds ASCII only, like guc_name_compare
    for name, value in settings.items():
        if name.encode().lower() == wanted:
            return ResultSet((_column(name),), ((value.encode(),),), "SHOW")
    raise ReplicationCommandError("42704", f'unrecognized configuration parameter "{requested}"')


def wal_segment_size_text(size: int) -> str:
    """``SHOW wal_segment_size`` as PostgreSQL prints a byte GUC: the largest exact unit."""
    for unit, factor in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def data_directory_mode_text(mode: int) -> str:
    """``SHOW data_directory_mode``: four octal digits (0700, or 0750 with group access)."""
    return f"{mode & 0o7777:04o}"
