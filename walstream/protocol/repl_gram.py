"""The replication command language, server side (PostgreSQL's repl_scanner.l and repl_gram.y).

:func:`parse_command` turns the text of a simple Query on a physical
replication connection into a typed command, or raises
:class:`ReplicationCommandError` carrying the SQLSTATE and the exact message a
walsender of the claimed version answers. :func:`check_command` then applies
the checks a walsender makes before it touches any state (option lists, slot
names, logical decoding), in PostgreSQL's order, so that a sender refuses what
PostgreSQL refuses with PostgreSQL's words. Both are pure functions of their
text and the claimed ``server_version`` (``PG_VERSION_NUM`` style, 150000 to
189999). Everything here is checked against real 15, 16 and 18 walsenders
(tests/test_repl_gram_oracle.py).

How a walsender reads a Query, as measured:

* Only the first token decides whether the text is a replication command (a
  keyword such as ``IDENTIFY_SYSTEM``; keywords are case-sensitive). Anything
  else, the empty query and ``identify_system`` included, is SQL, which a
  physical walsender refuses: 0A000 "cannot execute SQL commands in WAL sender
  for physical replication". ``ALTER_REPLICATION_SLOT`` and ``UPLOAD_MANIFEST``
  are keywords only from 17, so 15 and 16 call them SQL.
* Every grammar error is 42601 "syntax error"; the scanner's is 42601
  "unterminated quoted string", and a zero timeline 42601 "invalid timeline
  0". Tokens are read one at a time, so whichever comes first wins:
  ``IDENTIFY_SYSTEM x "abc`` is a syntax error, ``IDENTIFY_SYSTEM "abc`` an
  unterminated string, ``TIMELINE_HISTORY 0 "abc`` an invalid timeline.
* Unquoted identifiers are down-cased (ASCII only), quoted ones kept; both are
  cut to 63 bytes with a NOTICE 42622. A doubled ``""`` inside a quoted
  identifier is one quote on 18.6 but ends the identifier on 15.18 and 16.2
  (a minor-release fix, see ``doubled_quotes``). ``\\v`` is whitespace from 17.
* Numbers are C's ``strtoul`` stored in 32 bits: ``TIMELINE_HISTORY
  4294967297`` asks for timeline 1, and each half of an ``X/X`` LSN likewise.

What real clients send (logged with log_replication_commands=on, 15.18, 16.2
and 18.6, and read from their sources; identical unless noted):

* pg_receivewal: ``SHOW data_directory_mode``, ``IDENTIFY_SYSTEM``, then
  either ``CREATE_REPLICATION_SLOT "s" PHYSICAL`` (no RESERVE_WAL) or
  ``DROP_REPLICATION_SLOT "s"`` and exit; or to stream: ``SHOW
  wal_segment_size``, ``IDENTIFY_SYSTEM``, with --slot ``READ_REPLICATION_SLOT
  s`` (unquoted before 18.6, quoted in 18.6), ``IDENTIFY_SYSTEM``, on a
  timeline > 1 without its history file ``TIMELINE_HISTORY n``, then
  ``START_REPLICATION [SLOT "s" ]X/X TIMELINE n`` (no PHYSICAL). After an end
  of timeline: ``TIMELINE_HISTORY n`` if missing, ``START_REPLICATION`` again
  on the same connection.
* A standby's walreceiver: ``IDENTIFY_SYSTEM``; ``TIMELINE_HISTORY n`` for
  every timeline above 1 up to the server's that it lacks; with
  wal_receiver_create_temp_slot and no primary_slot_name
  ``CREATE_REPLICATION_SLOT "pg_walreceiver_<backend pid>" TEMPORARY PHYSICAL
  (RESERVE_WAL)``; ``START_REPLICATION [SLOT "s" ]X/X TIMELINE n`` at a
  segment start. No SHOW. At the end of a timeline it reads the next_tli row
  and fetches the new history file; the startup process then restarted it
  (seen on 16), so the next timeline came on a fresh connection, same
  sequence. (Were it to loop on the same connection, its temporary slot's
  CREATE would be sent again and a walsender answers 42710 "already exists".)
* pg_basebackup (-X stream): ``SHOW data_directory_mode``, ``SHOW
  wal_segment_size``, ``IDENTIFY_SYSTEM``, ``BASE_BACKUP (...)``; its WAL
  stream connection ``SHOW data_directory_mode``,
  ``CREATE_REPLICATION_SLOT "pg_basebackup_<pid>" TEMPORARY PHYSICAL (
  RESERVE_WAL)``, ``IDENTIFY_SYSTEM``, ``START_REPLICATION SLOT ... TIMELINE
  n``. A sender without a data directory can only refuse BASE_BACKUP.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from walstream.errors import Error
from walstream.lsn import LSN
from walstream.protocol.messages import error_fields

__all__ = [
    "NAMEDATALEN",
    "AlterReplicationSlotCmd",
    "BaseBackupCmd",
    "CreateReplicationSlotCmd",
    "CreateSlotOptions",
    "DropReplicationSlotCmd",
    "IdentifySystemCmd",
    "Notice",
    "Option",
    "ParsedCommand",
    "ReadReplicationSlotCmd",
    "ReplicationCommand",
    "ReplicationCommandError",
    "ReplicationKind",
    "ShowCmd",
    "StartReplicationCmd",
    "TimelineHistoryCmd",
    "UploadManifestCmd",
    "alter_slot_options",
    "check_command",
    "check_slot_name",
    "create_slot_options",
    "logical_decoding_error",
    "parse_command",
    "physical_slot_alter_error",
]

# PostgreSQL's NAMEDATALEN: identifiers and slot names hold at most 63 bytes.
NAMEDATALEN: Final = 64

_SQL_REFUSED: Final = "cannot execute SQL commands in WAL sender for physical replication"
_SLOT_NAME_HINT: Final = (
    "Replication slot names may only contain lower case letters, numbers, "
    "and the underscore character."
)


# -- errors and notices ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notice:
    """A NOTICE the walsender sends while reading the command (identifier truncation)."""

    sqlstate: str
    message: str

    def fields(self) -> dict[str, str]:
        return error_fields("NOTICE", self.sqlstate, self.message)


class ReplicationCommandError(Error):
    """The ERROR a walsender answers to a command, with its SQLSTATE and wording.

    ``notices`` are those sent before the error (an identifier cut to 63
    bytes is announced while the text is scanned, even if a syntax error
    follows). Send them, then :meth:`fields` as an ErrorResponse.
    """

    def __init__(
        self,
        sqlstate: str,
        message: str,
        *,
        detail: str | None = None,
        hint: str | None = None,
        notices: tuple[Notice, ...] = (),
    ) -> None:
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint
        self.notices = notices
        super().__init__(message)

    def fields(self, severity: str = "ERROR") -> dict[str, str]:
        return error_fields(
            severity, self.sqlstate, self.message, detail=self.detail, hint=self.hint
        )

    def __repr__(self) -> str:
        return f"ReplicationCommandError({self.sqlstate!r}, {self.message!r})"


def _syntax_error(message: str = "syntax error") -> ReplicationCommandError:
    return ReplicationCommandError("42601", message)  # ERRCODE_SYNTAX_ERROR


# -- commands ------------------------------------------------------------------


class ReplicationKind(enum.Enum):
    PHYSICAL = "physical"
    LOGICAL = "logical"


OptionValue = str | int | bool | None


@dataclass(frozen=True, slots=True)
class Option:
    """One option, as PostgreSQL's DefElem: a name and a string, integer, boolean or no value.

    Parenthesized options give strings (a quoted literal, or an identifier,
    down-cased) or integers; the old space-separated keywords give the
    boolean True (RESERVE_WAL, TWO_PHASE) or the string of SNAPSHOT.
    """

    name: str
    value: OptionValue = None


@dataclass(frozen=True, slots=True)
class IdentifySystemCmd:
    pass


@dataclass(frozen=True, slots=True)
class ShowCmd:
    name: str  # as written after scanning: down-cased unless quoted, dotted parts joined


@dataclass(frozen=True, slots=True)
class TimelineHistoryCmd:
    timeline: int


@dataclass(frozen=True, slots=True)
class CreateReplicationSlotCmd:
    slot_name: str
    temporary: bool
    kind: ReplicationKind
    plugin: str | None = None  # logical only
    options: tuple[Option, ...] = ()


@dataclass(frozen=True, slots=True)
class ReadReplicationSlotCmd:
    slot_name: str


@dataclass(frozen=True, slots=True)
class DropReplicationSlotCmd:
    slot_name: str
    wait: bool = False


@dataclass(frozen=True, slots=True)
class AlterReplicationSlotCmd:
    """17+."""

    slot_name: str
    options: tuple[Option, ...]


@dataclass(frozen=True, slots=True)
class StartReplicationCmd:
    kind: ReplicationKind
    start: LSN
    slot_name: str | None = None
    timeline: int | None = None  # physical only; None when not given
    options: tuple[Option, ...] = ()  # logical only: plugin options, string or no value


@dataclass(frozen=True, slots=True)
class BaseBackupCmd:
    options: tuple[Option, ...] = ()


@dataclass(frozen=True, slots=True)
class UploadManifestCmd:
    """17+."""


ReplicationCommand = (
    IdentifySystemCmd
    | ShowCmd
    | TimelineHistoryCmd
    | CreateReplicationSlotCmd
    | ReadReplicationSlotCmd
    | DropReplicationSlotCmd
    | AlterReplicationSlotCmd
    | StartReplicationCmd
    | BaseBackupCmd
    | UploadManifestCmd
)


@dataclass(frozen=True, slots=True)
class ParsedCommand:
    """A parsed command and the NOTICEs to send before answering it."""

    command: ReplicationCommand
    notices: tuple[Notice, ...] = ()


# -- scanner -------------------------------------------------------------------

_KEYWORDS_15: Final = frozenset(
    {
        "BASE_BACKUP",
        "IDENTIFY_SYSTEM",
        "READ_REPLICATION_SLOT",
        "SHOW",
        "TIMELINE",
        "START_REPLICATION",
        "CREATE_REPLICATION_SLOT",
        "DROP_REPLICATION_SLOT",
        "TIMELINE_HISTORY",
        "PHYSICAL",
        "RESERVE_WAL",
        "LOGICAL",
        "SLOT",
        "TEMPORARY",
        "TWO_PHASE",
        "EXPORT_SNAPSHOT",
        "NOEXPORT_SNAPSHOT",
        "USE_SNAPSHOT",
        "WAIT",
    }
)
_KEYWORDS_17: Final = _KEYWORDS_15 | {"ALTER_REPLICATION_SLOT", "UPLOAD_MANIFEST"}
_COMMANDS_15: Final = frozenset(
    {
        "IDENTIFY_SYSTEM",
        "BASE_BACKUP",
        "START_REPLICATION",
        "CREATE_REPLICATION_SLOT",
        "DROP_REPLICATION_SLOT",
        "READ_REPLICATION_SLOT",
        "TIMELINE_HISTORY",
        "SHOW",
    }
)
_COMMANDS_17: Final = _COMMANDS_15 | {"ALTER_REPLICATION_SLOT", "UPLOAD_MANIFEST"}
# repl_gram.y's ident_or_keyword lists every keyword but READ_REPLICATION_SLOT.
_NOT_AN_OPTION_NAME: Final = "READ_REPLICATION_SLOT"

_SPACE_15: Final = frozenset(" \t\n\r\f")
_SPACE_17: Final = _SPACE_15 | {"\v"}  # PostgreSQL commit ae6d06f09684 (17)
_DIGITS: Final = frozenset("0123456789")
_HEX: Final = frozenset("0123456789ABCDEFabcdef")
_ASCII_LETTERS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_ULONG_MAX: Final = 2**64 - 1
# The options of the old, unparenthesized CREATE_REPLICATION_SLOT syntax.
_LEGACY_OPTIONS: Final = {
    "EXPORT_SNAPSHOT": Option("snapshot", "export"),
    "NOEXPORT_SNAPSHOT": Option("snapshot", "nothing"),
    "USE_SNAPSHOT": Option("snapshot", "use"),
    "RESERVE_WAL": Option("reserve_wal", True),
    "TWO_PHASE": Option("two_phase", True),
}


def _ident_start(ch: str) -> bool:
    # [A-Za-z\200-\377_]: every byte of a multibyte UTF-8 character is >= 0x80.
    return ch in _ASCII_LETTERS or ch >= "\x80"


def _ident_cont(ch: str) -> bool:
    return ch in _ASCII_LETTERS or ch in _DIGITS or ch == "$" or ch >= "\x80"


def _uint32(digits: str, base: int) -> int:
    """C's strtoul (saturating at ULONG_MAX on LP64) stored in a uint32, as the scanner does."""
    return min(int(digits, base), _ULONG_MAX) & 0xFFFFFFFF


class _Tok(enum.Enum):
    KEYWORD = "keyword"
    IDENT = "identifier"
    SCONST = "string"
    UCONST = "integer"
    RECPTR = "LSN"
    CHAR = "character"
    EOF = "end of input"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Tok
    text: str = ""  # keyword name, identifier or string value, or the character
    number: int = 0  # UCONST value, or RECPTR as a 64-bit position


_EOF_TOKEN: Final = _Token(_Tok.EOF)


def _clip(ident: str, notices: list[Notice]) -> str:
    """truncate_identifier(): at most NAMEDATALEN - 1 bytes, cut on a character boundary."""
    raw = ident.encode()
    if len(raw) < NAMEDATALEN:
        return ident
    # Dropping the bytes of a character cut in two is what pg_mbcliplen() does.
    clipped = raw[: NAMEDATALEN - 1].decode(errors="ignore")
    notices.append(Notice("42622", f'identifier "{ident}" will be truncated to "{clipped}"'))
    return clipped


class _Scanner:
    """repl_scanner.l: one token at a time, so errors surface in reading order."""

    def __init__(self, text: str, *, keywords: frozenset[str], space: frozenset[str],
                 doubled_quotes: bool) -> None:  # fmt: skip
        # The server reads a C string: nothing past a NUL exists for it.
        self.text = text.split("\0", 1)[0]
        self.pos = 0
        self.keywords = keywords
        self.space = space
        self.doubled_quotes = doubled_quotes
        self.notices: list[Notice] = []

    def error(self, exc: ReplicationCommandError) -> ReplicationCommandError:
        exc.notices = tuple(self.notices)
        return exc

    def next(self) -> _Token:
        text, n = self.text, len(self.text)
        i = self.pos
        while i < n and text[i] in self.space:
            i += 1
        if i >= n:
            self.pos = i
            return _EOF_TOKEN
        ch = text[i]
        if ch == "'":
            value, self.pos = self._quoted(i + 1, "'", doubled=True)
            return _Token(_Tok.SCONST, value)
        if ch == '"':
            value, self.pos = self._quoted(i + 1, '"', doubled=self.doubled_quotes)
            return _Token(_Tok.IDENT, _clip(value, self.notices))
        # flex takes the longest match; RECPTR always outruns UCONST and identifiers
        # when it matches, because an identifier cannot contain '/'.
        j = i
        while j < n and text[j] in _HEX:
            j += 1
        if j > i and j < n and text[j] == "/":
            k = j + 1
            while k < n and text[k] in _HEX:
                k += 1
            if k > j + 1:
                self.pos = k
                hi, lo = _uint32(text[i:j], 16), _uint32(text[j + 1 : k], 16)
                return _Token(_Tok.RECPTR, text[i:k], (hi << 32) | lo)
        if ch in _DIGITS:
            j = i
            while j < n and text[j] in _DIGITS:
                j += 1
            self.pos = j
            return _Token(_Tok.UCONST, text[i:j], _uint32(text[i:j], 10))
        if _ident_start(ch):
            j = i + 1
            while j < n and _ident_cont(text[j]):
                j += 1
            self.pos = j
            word = text[i:j]
            if word in self.keywords:  # on equal length the keyword rules come first
                return _Token(_Tok.KEYWORD, word)
            lowered = "".join(c.lower() if "A" <= c <= "Z" else c for c in word)
            return _Token(_Tok.IDENT, _clip(lowered, self.notices))
        self.pos = i + 1
        return _Token(_Tok.CHAR, ch)

    def _quoted(self, start: int, quote: str, *, doubled: bool) -> tuple[str, int]:
        text = self.text
        parts: list[str] = []
        i = start
        while True:
            end = text.find(quote, i)
            if end < 0:
                raise self.error(_syntax_error("unterminated quoted string"))
            parts.append(text[i:end])
            if doubled and text.startswith(quote, end + 1):
                parts.append(quote)
                i = end + 2
                continue
            return "".join(parts), end + 1


# -- parser --------------------------------------------------------------------


class _Parser:
    """repl_gram.y as recursive descent; it asks for a token only where bison reads one."""

    def __init__(self, scanner: _Scanner, first: _Token) -> None:
        self.scanner = scanner
        self.lookahead: _Token | None = first

    def peek(self) -> _Token:
        if self.lookahead is None:
            self.lookahead = self.scanner.next()
        return self.lookahead

    def take(self) -> _Token:
        tok = self.peek()
        self.lookahead = None
        return tok

    def fail(self, message: str = "syntax error") -> ReplicationCommandError:
        return self.scanner.error(_syntax_error(message))

    def is_keyword(self, name: str) -> bool:
        tok = self.peek()
        return tok.kind is _Tok.KEYWORD and tok.text == name

    def is_char(self, ch: str) -> bool:
        tok = self.peek()
        return tok.kind is _Tok.CHAR and tok.text == ch

    def char(self, ch: str) -> None:
        if not self.is_char(ch):
            raise self.fail()
        self.take()

    def ident(self) -> str:
        tok = self.take()
        if tok.kind is not _Tok.IDENT:
            raise self.fail()
        return tok.text

    def timeline(self) -> int:
        tok = self.take()
        if tok.kind is not _Tok.UCONST:
            raise self.fail()
        # The grammar action runs as soon as the number is read, before any
        # further token: "TIMELINE_HISTORY 0 garbage" is an invalid timeline.
        if tok.number == 0:
            raise self.fail(f"invalid timeline {tok.number}")
        return tok.number

    def lsn(self) -> LSN:
        tok = self.take()
        if tok.kind is not _Tok.RECPTR:
            raise self.fail()
        return LSN(tok.number)

    def parse(self) -> ReplicationCommand:
        rules: dict[str, Callable[[], ReplicationCommand]] = {
            "IDENTIFY_SYSTEM": IdentifySystemCmd,
            "SHOW": lambda: ShowCmd(self.var_name()),
            "READ_REPLICATION_SLOT": lambda: ReadReplicationSlotCmd(self.var_name()),
            "TIMELINE_HISTORY": lambda: TimelineHistoryCmd(self.timeline()),
            "BASE_BACKUP": self.base_backup,
            "UPLOAD_MANIFEST": UploadManifestCmd,
            "CREATE_REPLICATION_SLOT": self.create_replication_slot,
            "DROP_REPLICATION_SLOT": self.drop_replication_slot,
            "ALTER_REPLICATION_SLOT": self.alter_replication_slot,
            "START_REPLICATION": self.start_replication,
        }
        command = rules[self.take().text]()
        if self.is_char(";"):
            self.take()
        if self.peek().kind is not _Tok.EOF:
            raise self.fail()
        return command

    def var_name(self) -> str:
        name = self.ident()
        while self.is_char("."):
            self.take()
            name += "." + self.ident()
        return name

    def base_backup(self) -> BaseBackupCmd:
        if self.is_char("("):
            self.take()
            return BaseBackupCmd(self.generic_options())
        return BaseBackupCmd()

    def create_replication_slot(self) -> CreateReplicationSlotCmd:
        name = self.ident()
        temporary = self.is_keyword("TEMPORARY")
        if temporary:
            self.take()
        if self.is_keyword("PHYSICAL"):
            self.take()
            kind, plugin = ReplicationKind.PHYSICAL, None
        elif self.is_keyword("LOGICAL"):
            self.take()
            kind, plugin = ReplicationKind.LOGICAL, self.ident()
        else:
            raise self.fail()
        return CreateReplicationSlotCmd(name, temporary, kind, plugin, self.create_slot_options())

    def create_slot_options(self) -> tuple[Option, ...]:
        if self.is_char("("):
            self.take()
            return self.generic_options()
        options: list[Option] = []
        while True:
            tok = self.peek()
            legacy = _LEGACY_OPTIONS.get(tok.text) if tok.kind is _Tok.KEYWORD else None
            if legacy is None:
                return tuple(options)
            self.take()
            options.append(legacy)

    def generic_options(self) -> tuple[Option, ...]:
        """generic_option_list ')' (the '(' is already read)."""
        options = [self.generic_option()]
        while self.is_char(","):
            self.take()
            options.append(self.generic_option())
        self.char(")")
        return tuple(options)

    def generic_option(self) -> Option:
        tok = self.take()
        if tok.kind is _Tok.IDENT:
            name = tok.text
        elif tok.kind is _Tok.KEYWORD and tok.text != _NOT_AN_OPTION_NAME:
            name = tok.text.lower()
        else:
            raise self.fail()
        value = self.peek()
        if value.kind in (_Tok.IDENT, _Tok.SCONST):
            self.take()
            return Option(name, value.text)
        if value.kind is _Tok.UCONST:
            self.take()
            # makeInteger() takes an int: a uint32 above 2^31 - 1 turns negative.
            number = value.number - 2**32 if value.number >= 2**31 else value.number
            return Option(name, number)
        return Option(name)

    def drop_replication_slot(self) -> DropReplicationSlotCmd:
        name = self.ident()
        wait = self.is_keyword("WAIT")
        if wait:
            self.take()
        return DropReplicationSlotCmd(name, wait)

    def alter_replication_slot(self) -> AlterReplicationSlotCmd:
        name = self.ident()
        self.char("(")
        return AlterReplicationSlotCmd(name, self.generic_options())

    def start_replication(self) -> StartReplicationCmd:
        slot: str | None = None
        if self.is_keyword("SLOT"):
            self.take()
            slot = self.ident()
            if self.is_keyword("LOGICAL"):
                self.take()
                start = self.lsn()
                return StartReplicationCmd(
                    ReplicationKind.LOGICAL, start, slot, None, self.plugin_options()
                )
        if self.is_keyword("PHYSICAL"):
            self.take()
        start = self.lsn()
        timeline: int | None = None
        if self.is_keyword("TIMELINE"):
            self.take()
            timeline = self.timeline()
        return StartReplicationCmd(ReplicationKind.PHYSICAL, start, slot, timeline)

    def plugin_options(self) -> tuple[Option, ...]:
        if not self.is_char("("):
            return ()
        self.take()
        options = [self.plugin_option()]
        while self.is_char(","):
            self.take()
            options.append(self.plugin_option())
        self.char(")")
        return tuple(options)

    def plugin_option(self) -> Option:
        name = self.ident()
        if self.peek().kind is _Tok.SCONST:
            return Option(name, self.take().text)
        return Option(name)


def _major(server_version: int) -> int:
    if not 150000 <= server_version < 190000:
        raise ValueError(
            f"server_version {server_version} is not a PostgreSQL 15 to 18 version number "
            "(PG_VERSION_NUM style, such as 160000)"
        )
    return server_version // 10000


def parse_command(
    text: str, *, server_version: int, doubled_quotes: bool | None = None
) -> ParsedCommand:
    """Parse one Query as a physical walsender of ``server_version`` does.

    Raises :class:`ReplicationCommandError` with PostgreSQL's SQLSTATE and
    message for text a walsender would refuse while parsing: 42601 for syntax
    errors, 0A000 for anything that is not a replication command (SQL, the
    empty query). ``doubled_quotes`` says whether ``""`` inside a quoted
    identifier stands for one quote; by default as measured: not on 15.18 and
    16.2 (nor assumed on 17), yes on 18.6 (a fix released in 18's minors).
    """
    major = _major(server_version)
    scanner = _Scanner(
        text,
        keywords=_KEYWORDS_17 if major >= 17 else _KEYWORDS_15,
        space=_SPACE_17 if major >= 17 else _SPACE_15,
        doubled_quotes=major >= 18 if doubled_quotes is None else doubled_quotes,
    )
    first = scanner.next()
    commands = _COMMANDS_17 if major >= 17 else _COMMANDS_15
    if first.kind is not _Tok.KEYWORD or first.text not in commands:
        # PostgreSQL would run it as SQL, which needs a database connection.
        raise scanner.error(ReplicationCommandError("0A000", _SQL_REFUSED))
    command = _Parser(scanner, first).parse()
    return ParsedCommand(command, tuple(scanner.notices))


# -- what a walsender checks before acting ----------------------------------------


def check_slot_name(name: str) -> None:
    """ReplicationSlotValidateName(): what CREATE_REPLICATION_SLOT accepts as a name.

    Only creation checks names; DROP, READ and START look the name up and
    answer "does not exist" (READ: a row of NULLs) for anything else.
    """
    if not name:
        raise ReplicationCommandError("42602", f'replication slot name "{name}" is too short')
    if len(name.encode()) >= NAMEDATALEN:
        # Unreachable from a command (the scanner cuts identifiers to 63 bytes).
        raise ReplicationCommandError("42622", f'replication slot name "{name}" is too long')
    if any(not ("a" <= c <= "z" or "0" <= c <= "9" or c == "_") for c in name):
        raise ReplicationCommandError(
            "42602",
            f'replication slot name "{name}" contains invalid character',
            hint=_SLOT_NAME_HINT,
        )


def _redundant() -> ReplicationCommandError:
    return ReplicationCommandError("42601", "conflicting or redundant options")


def _unrecognized(option: Option) -> ReplicationCommandError:
    # elog(ERROR), hence ERRCODE_INTERNAL_ERROR.
    return ReplicationCommandError("XX000", f"unrecognized option: {option.name}")


def _option_string(option: Option) -> str:
    """defGetString()."""
    value = option.value
    if value is None:
        raise ReplicationCommandError("42601", f"{option.name} requires a parameter")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _option_boolean(option: Option) -> bool:
    """defGetBoolean(): no value, 0, 1, or true/false/on/off in any case."""
    value = option.value
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value in (0, 1):
            return bool(value)
    else:
        word = value.lower()
        if word in ("true", "on"):
            return True
        if word in ("false", "off"):
            return False
    raise ReplicationCommandError("42601", f"{option.name} requires a Boolean value")


@dataclass(frozen=True, slots=True)
class CreateSlotOptions:
    """CREATE_REPLICATION_SLOT's options after parseCreateReplSlotOptions()."""

    reserve_wal: bool = False
    snapshot: str = "export"  # logical: export, nothing or use
    two_phase: bool = False
    failover: bool = False  # 17+


def create_slot_options(cmd: CreateReplicationSlotCmd, *, server_version: int) -> CreateSlotOptions:
    """Check CREATE_REPLICATION_SLOT's options as parseCreateReplSlotOptions() does.

    An option of the other slot kind, or one given twice, is "conflicting or
    redundant options"; an unknown one is XX000 "unrecognized option: NAME".
    ``failover`` is an option from 17 (unknown before).
    """
    major = _major(server_version)
    logical = cmd.kind is ReplicationKind.LOGICAL
    seen: set[str] = set()
    result = CreateSlotOptions()
    for option in cmd.options:
        name = option.name
        if name == "snapshot":
            if name in seen or not logical:
                raise _redundant()
            action = _option_string(option)
            seen.add(name)
            if action not in ("export", "nothing", "use"):
                raise ReplicationCommandError(
                    "22023",
                    f'unrecognized value for CREATE_REPLICATION_SLOT option "{name}": "{action}"',
                )
            result = replace(result, snapshot=action)
        elif name == "reserve_wal":
            if name in seen or logical:
                raise _redundant()
            seen.add(name)
            result = replace(result, reserve_wal=_option_boolean(option))
        elif name == "two_phase" or (name == "failover" and major >= 17):
            if name in seen or not logical:
                raise _redundant()
            seen.add(name)
            if name == "two_phase":
                result = replace(result, two_phase=_option_boolean(option))
            else:
                result = replace(result, failover=_option_boolean(option))
        else:
            raise _unrecognized(option)
    return result


def alter_slot_options(cmd: AlterReplicationSlotCmd, *, server_version: int) -> dict[str, bool]:
    """ALTER_REPLICATION_SLOT's options (17: failover; 18 adds two_phase), checked."""
    known = ("failover", "two_phase") if _major(server_version) >= 18 else ("failover",)
    result: dict[str, bool] = {}
    for option in cmd.options:
        if option.name not in known:
            raise _unrecognized(option)
        if option.name in result:
            raise _redundant()
        result[option.name] = _option_boolean(option)
    return result


def logical_decoding_error(*, server_version: int, wal_level: str) -> ReplicationCommandError:
    """CheckLogicalDecodingRequirements() on a physical connection (55000).

    ``wal_level`` is the level the sender claims for its WAL's origin: below
    ``logical`` that is the first complaint, otherwise the missing database
    connection (a physical connection never has one). The GUC names are
    quoted from 18 (measured; 17 untested, assumed as 18).
    """
    if wal_level != "logical":
        if _major(server_version) >= 17:
            message = 'logical decoding requires "wal_level" >= "logical"'
        else:
            message = "logical decoding requires wal_level >= logical"
    else:
        message = "logical decoding requires a database connection"
    return ReplicationCommandError("55000", message)


def physical_slot_alter_error() -> ReplicationCommandError:
    """ALTER_REPLICATION_SLOT on an existing physical slot (the only kind a sender has)."""
    return ReplicationCommandError(
        "0A000", "cannot use ALTER_REPLICATION_SLOT with a physical replication slot"
    )


def check_command(
    command: ReplicationCommand, *, server_version: int, wal_level: str = "replica"
) -> None:
    """The walsender's checks between parsing and touching any state, in its order.

    CREATE_REPLICATION_SLOT: options, then (logical) the logical decoding
    requirements, then the slot name. START_REPLICATION ... LOGICAL: the
    logical decoding requirements. ALTER_REPLICATION_SLOT: options. What
    passes may still fail on state (a slot that exists or not), which is the
    sender's to answer.
    """
    if isinstance(command, CreateReplicationSlotCmd):
        create_slot_options(command, server_version=server_version)
        if command.kind is ReplicationKind.LOGICAL:
            raise logical_decoding_error(server_version=server_version, wal_level=wal_level)
        check_slot_name(command.slot_name)
    elif isinstance(command, StartReplicationCmd):
        if command.kind is ReplicationKind.LOGICAL:
            raise logical_decoding_error(server_version=server_version, wal_level=wal_level)
    elif isinstance(command, AlterReplicationSlotCmd):
        alter_slot_options(command, server_version=server_version)
