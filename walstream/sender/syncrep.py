"""synchronous_standby_names and the choice of synchronous standbys, as PostgreSQL makes it.

Sans-IO: text and positions in, decisions out. What a walstream sender needs
to list its clients in pg_stat_replication's ``sync_priority`` and
``sync_state`` columns as a primary would, and what a relay needs to know how
far its synchronous standbys have confirmed, so that it can report that (and
no more) upstream as its own position.

The facts come from PostgreSQL's syncrep_scanner.l, syncrep_gram.y, syncrep.c
and walsender.c, and every wording and decision is checked against real 15,
16 and 18 servers (tests/test_sender_syncrep_oracle.py); the three agree.

* Grammar: ``name [, ...]`` (which is ``FIRST 1 (...)``), ``N (...)``
  (also FIRST), ``FIRST N (...)``, ``ANY N (...)``. A name is an identifier
  (``[A-Za-z_]`` or any non-ASCII character, then also digits and ``$``),
  kept as written (not down-cased), a number, ``*``, or a double-quoted
  name with ``""`` for a quote (a quoted ``"*"`` is a wildcard too, and
  ``""`` an empty name). ``ANY`` and ``FIRST`` are keywords in any case, so
  a standby named ``any`` or ``first`` must be quoted. ``N`` is read with C's
  atoi: ``4294967297`` is 1, ``2147483648`` is -2147483648.
* Errors are the GUC check's: 42601 ``invalid value for parameter
  "synchronous_standby_names": "<value>"`` with DETAIL ``syntax error at or
  near "<token>"`` (for a quoted name the token text is its closing quote),
  ``syntax error at end of input`` or ``unterminated quoted identifier at end
  of input``; and 22023 ``number of synchronous standbys (N) must be greater
  than zero``. An empty value means no synchronous replication; blanks
  alone are a syntax error.
* Priority (sync_priority): the 1-based position of the first member equal
  to the standby's application_name (ASCII letters compared without case) or
  ``*``; 1 for every listed standby under ANY; 0 when not listed.
  pg_stat_replication shows 0 for a standby without a valid flush position.
* Synchronous standbys: candidates are the walsenders streaming or stopping,
  with a priority and a valid flush position. FIRST takes the ``num_sync``
  best priorities, a tie going to the lower walsender slot (the order in
  which the connections took their slots; PostgreSQL calls this arbitrary,
  and its regression tests rely on it); ANY takes all candidates.
* sync_state: ``async`` (priority 0 as shown), ``sync`` (chosen under FIRST),
  ``quorum`` (chosen under ANY), else ``potential``.
* Release: with at least ``num_sync`` chosen, FIRST releases up to the
  oldest write/flush/apply among them, ANY up to the ``num_sync``-th newest
  of each; synchronous_commit remote_write waits for write, on for flush,
  remote_apply for apply. Positions only advance, and only when one of the
  chosen standbys replies.

Errors: :class:`SyncStandbyNamesError`, with PostgreSQL's SQLSTATE, message and detail.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from walstream.errors import Error
from walstream.lsn import LSN

__all__ = [
    "SyncRepConfig",
    "SyncRepMethod",
    "SyncRepRelease",
    "SyncRepStandby",
    "SyncStandbyNamesError",
    "WaitMode",
    "WalSndState",
    "parse_synchronous_standby_names",
    "sync_standbys",
    "sync_states",
    "synced_positions",
    "wait_mode",
]

PARAMETER: Final = "synchronous_standby_names"

WalSndState = Literal["startup", "catchup", "streaming", "backup", "stopping"]
"""A walsender's state as pg_stat_replication.state shows it."""


class SyncRepMethod(enum.Enum):
    PRIORITY = "FIRST"  # SYNC_REP_PRIORITY
    QUORUM = "ANY"  # SYNC_REP_QUORUM


class WaitMode(enum.IntEnum):
    """Which reported position a waiting commit needs (SYNC_REP_WAIT_*)."""

    WRITE = 0
    FLUSH = 1
    APPLY = 2


_WAIT_MODES: Final[dict[str, WaitMode | None]] = {
    "remote_write": WaitMode.WRITE,
    "on": WaitMode.FLUSH,
    "remote_apply": WaitMode.APPLY,
    "local": None,
    "off": None,
}


def wait_mode(synchronous_commit: str) -> WaitMode | None:
    """What a commit under this synchronous_commit waits for; None: it does not wait."""
    try:
        return _WAIT_MODES[synchronous_commit]
    except KeyError:
        raise ValueError(f'unknown synchronous_commit "{synchronous_commit}"') from None


class SyncStandbyNamesError(Error, ValueError):
    """A value PostgreSQL refuses, with its SQLSTATE, message and DETAIL."""

    def __init__(self, sqlstate: str, message: str, detail: str | None = None) -> None:
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        super().__init__(message + (f"\nDETAIL:  {detail}" if detail else ""))


_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _fold(name: str) -> str:
    # pg_strcasecmp folds ASCII letters only (high-bit bytes only in
    # single-byte locales, which a UTF-8 cluster is not).
    return name.translate(_ASCII_LOWER)


@dataclass(frozen=True, slots=True)
class SyncRepConfig:
    """A parsed synchronous_standby_names (PostgreSQL's SyncRepConfigData)."""

    num_sync: int
    method: SyncRepMethod
    members: tuple[str, ...]

    def priority(self, application_name: str) -> int:
        """sync_standby_priority of a walsender whose client has this application_name.

        PostgreSQL computes it when the walsender starts and when the
        configuration is reloaded, with the application_name as the server
        keeps it (non-printable and non-ASCII characters already replaced).
        """
        wanted = _fold(application_name)
        for position, name in enumerate(self.members, 1):
            if name == "*" or _fold(name) == wanted:
                return position if self.method is SyncRepMethod.PRIORITY else 1
        return 0


# -- scanner (syncrep_scanner.l) ---------------------------------------------

_SPACE: Final = frozenset(" \t\n\r\f\v")
_IDENT_START: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_IDENT_CONT: Final = _IDENT_START | frozenset("0123456789$")
_DIGITS: Final = frozenset("0123456789")


class _Token:
    __slots__ = ("kind", "text", "value")

    def __init__(self, kind: str, text: str, value: str = "") -> None:
        self.kind = kind  # NAME, NUM, ANY, FIRST, ",", "(", ")", JUNK or EOF
        self.text = text  # what the scanner matched last: the error's "at or near"
        self.value = value


class _LexError(Exception):
    pass


def _is_ident(ch: str, chars: frozenset[str]) -> bool:
    # flex's [\200-\377]: every byte of a non-ASCII character is an identifier byte.
    return ch in chars or ch >= "\x80"


def _tokens(text: str) -> Iterable[_Token]:
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _SPACE:
            i += 1
        if i == n:
            yield _Token("EOF", "")
            return
        ch = text[i]
        if _is_ident(ch, _IDENT_START):
            j = i + 1
            while j < n and _is_ident(text[j], _IDENT_CONT):
                j += 1
            word = text[i:j]
            # Equal length: the keyword rules come first and win; a longer
            # identifier ("anyone") is a name.
            keyword = _fold(word)
            kind = "ANY" if keyword == "any" else "FIRST" if keyword == "first" else "NAME"
            yield _Token(kind, word, word)
            i = j
        elif ch in _DIGITS:
            j = i + 1
            while j < n and text[j] in _DIGITS:
                j += 1
            yield _Token("NUM", text[i:j], text[i:j])
            i = j
        elif ch == '"':
            parts: list[str] = []
            j = i + 1
            while True:
                k = text.find('"', j)
                if k < 0:
                    raise _LexError("unterminated quoted identifier at end of input")
                parts.append(text[j:k])
                if text.startswith('""', k):
                    parts.append('"')
                    j = k + 2
                else:
                    i = k + 1
                    break
            yield _Token("NAME", '"', "".join(parts))
        elif ch == "*":
            yield _Token("NAME", "*", "*")
            i += 1
        elif ch in ",()":
            yield _Token(ch, ch)
            i += 1
        else:
            yield _Token("JUNK", ch)
            i += 1


# -- parser (syncrep_gram.y) -------------------------------------------------


class _SyntaxError(Exception):
    def __init__(self, token: _Token) -> None:
        where = f'at or near "{token.text}"' if token.text else "at end of input"
        super().__init__(f"syntax error {where}")


class _Parser:
    """Reads tokens one at a time, as bison does, so the first error is PostgreSQL's."""

    def __init__(self, text: str) -> None:
        self._tokens = iter(_tokens(text))
        self._token = next(self._tokens)

    def _advance(self) -> None:
        self._token = next(self._tokens)

    def _expect(self, *kinds: str) -> _Token:
        token = self._token
        if token.kind not in kinds:
            raise _SyntaxError(token)
        if token.kind != "EOF":
            self._advance()
        return token

    def _names(self, end: str) -> list[str]:
        names = [self._expect("NAME", "NUM").value]
        while self._expect(",", end).kind == ",":
            names.append(self._expect("NAME", "NUM").value)
        return names

    def parse(self) -> tuple[str, SyncRepMethod, list[str]]:
        first = self._expect("NAME", "NUM", "ANY", "FIRST")
        if first.kind in ("ANY", "FIRST"):
            num = self._expect("NUM").value
            self._expect("(")
            names = self._names(")")
            self._expect("EOF")
            method = SyncRepMethod.QUORUM if first.kind == "ANY" else SyncRepMethod.PRIORITY
            return num, method, names
        if first.kind == "NUM" and self._token.kind == "(":
            self._advance()
            names = self._names(")")
            self._expect("EOF")
            return first.value, SyncRepMethod.PRIORITY, names
        names = [first.value]
        while self._expect(",", "EOF").kind == ",":
            names.append(self._expect("NAME", "NUM").value)
        return "1", SyncRepMethod.PRIORITY, names


def _atoi(digits: str) -> int:
    # atoi is (int) strtol: strtol saturates at LONG_MAX, the cast keeps 32 bits.
    value = min(int(digits), 2**63 - 1) & 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value


def parse_synchronous_standby_names(value: str) -> SyncRepConfig | None:
    """Parse a synchronous_standby_names value; None for "" (no synchronous standbys).

    Raises :class:`SyncStandbyNamesError` where PostgreSQL refuses the value.
    """
    if value == "":
        return None
    try:
        num, method, names = _Parser(value).parse()
    except (_SyntaxError, _LexError) as e:
        raise SyncStandbyNamesError(
            "42601", f'invalid value for parameter "{PARAMETER}": "{value}"', str(e)
        ) from None
    num_sync = _atoi(num)
    if num_sync <= 0:
        raise SyncStandbyNamesError(
            "22023", f"number of synchronous standbys ({num_sync}) must be greater than zero"
        )
    return SyncRepConfig(num_sync, method, tuple(names))


# -- choosing the synchronous standbys (syncrep.c, walsender.c) ----------------


@dataclass(frozen=True, slots=True)
class SyncRepStandby:
    """What the choice needs to know of one walsender.

    ``index`` is its slot among the walsenders (PostgreSQL's WalSndCtl
    index: a new connection takes the lowest free one); ``priority`` is
    :meth:`SyncRepConfig.priority` of its application_name, as computed when
    the configuration was last loaded; positions are its last reported
    write, flush and apply (0 before any report).
    """

    index: int
    state: WalSndState
    priority: int
    write: int = 0
    flush: int = 0
    apply: int = 0


def _is_candidate(standby: SyncRepStandby) -> bool:
    return (
        standby.state in ("streaming", "stopping") and standby.priority != 0 and standby.flush != 0
    )


def sync_standbys(
    config: SyncRepConfig | None, standbys: Iterable[SyncRepStandby]
) -> list[SyncRepStandby]:
    """The standbys considered synchronous now (SyncRepGetCandidateStandbys).

    May be fewer than ``num_sync``: then no commit is released.
    """
    if config is None:
        return []
    chosen = sorted((s for s in standbys if _is_candidate(s)), key=lambda s: s.index)
    if config.method is SyncRepMethod.PRIORITY and len(chosen) > config.num_sync:
        chosen.sort(key=lambda s: (s.priority, s.index))
        del chosen[config.num_sync :]
    return chosen


def sync_states(
    config: SyncRepConfig | None, standbys: Sequence[SyncRepStandby]
) -> list[tuple[int, str]]:
    """pg_stat_replication's (sync_priority, sync_state) for each standby, in order."""
    chosen = {s.index for s in sync_standbys(config, standbys)}
    rows: list[tuple[int, str]] = []
    for s in standbys:
        # A client that never reports a flush position (pg_receivewal
        # without --synchronous, pg_basebackup) is shown as asynchronous.
        priority = s.priority if s.flush != 0 else 0
        if priority == 0:
            state = "async"
        elif s.index in chosen:
            assert config is not None
            state = "sync" if config.method is SyncRepMethod.PRIORITY else "quorum"
        else:
            state = "potential"
        rows.append((priority, state))
    return rows


def synced_positions(
    config: SyncRepConfig | None, standbys: Iterable[SyncRepStandby]
) -> tuple[LSN, LSN, LSN] | None:
    """Write, flush and apply confirmed by the synchronous standbys (SyncRepGetSyncRecPtr).

    None when fewer than ``num_sync`` standbys are synchronous.
    """
    if config is None:
        return None
    chosen = sync_standbys(config, standbys)
    if len(chosen) < config.num_sync:
        return None
    if config.method is SyncRepMethod.PRIORITY:
        return (
            LSN(min(s.write for s in chosen)),
            LSN(min(s.flush for s in chosen)),
            LSN(min(s.apply for s in chosen)),
        )
    nth = config.num_sync - 1
    return (
        LSN(sorted((s.write for s in chosen), reverse=True)[nth]),
        LSN(sorted((s.flush for s in chosen), reverse=True)[nth]),
        LSN(sorted((s.apply for s in chosen), reverse=True)[nth]),
    )


class SyncRepRelease:
    """How far commits waiting for synchronous standbys are released (WalSndCtl->lsn[]).

    Feed it every standby reply; a commit whose WAL ends at ``lsn`` may
    return once :meth:`released` says so. The positions never go back: a
    commit acknowledged once stays acknowledged, whoever is synchronous next.
    """

    __slots__ = ("positions",)

    def __init__(self) -> None:
        self.positions = [LSN(0), LSN(0), LSN(0)]

    @property
    def write(self) -> LSN:
        return self.positions[WaitMode.WRITE]

    @property
    def flush(self) -> LSN:
        return self.positions[WaitMode.FLUSH]

    @property
    def apply(self) -> LSN:
        return self.positions[WaitMode.APPLY]

    def standby_replied(
        self,
        config: SyncRepConfig | None,
        standbys: Iterable[SyncRepStandby],
        replier: SyncRepStandby,
    ) -> bool:
        """After ``replier``'s reply was recorded in ``standbys``: advance (SyncRepReleaseWaiters).

        Only a synchronous standby's reply releases anything. Returns whether
        a position advanced.
        """
        if config is None or not _is_candidate(replier):
            return False
        chosen = sync_standbys(config, standbys)
        if replier.index not in {s.index for s in chosen}:
            return False
        positions = synced_positions(config, chosen)
        if positions is None:
            return False
        advanced = False
        for mode, lsn in enumerate(positions):
            if self.positions[mode] < lsn:
                self.positions[mode] = lsn
                advanced = True
        return advanced

    def released(self, lsn: int, mode: WaitMode) -> bool:
        """Whether a commit waiting in ``mode`` for WAL up to ``lsn`` may return."""
        return lsn <= self.positions[mode]
