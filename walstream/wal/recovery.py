"""Recovery targets: the settings, their text forms, and where recovery stops.

PostgreSQL's startup process checks two things around every record it
replays (``recoveryStopsBefore`` and ``recoveryStopsAfter`` in
``xlogrecovery.c``); the rules below are those, verified against the 15 to
18 sources and, in tests/test_recovery_targets.py, against real recoveries:

==========  =====================================================================
target      stops
==========  =====================================================================
lsn         inclusive: after the first record whose start is >= the target;
            exclusive: before it. Any record counts, not only commits.
xid         at the COMMIT, ABORT, COMMIT PREPARED or ABORT PREPARED record of
            exactly that transaction (for the *_PREPARED ones the xid is in the
            payload); PREPARE TRANSACTION records never count. Inclusive:
            after it, exclusive: before it.
time        always *before* a record: the first commit or abort (prepared or
            not; aborts count too) whose xact_time is > the target (inclusive)
            or >= the target (exclusive). Restore points never count.
name        after the first RESTORE_POINT with exactly that name (inclusive
            has no effect).
immediate   as soon as recovery is consistent (after the base backup's
            XLOG_BACKUP_END record).
==========  =====================================================================

Details that matter for what a paused server reports:

* stopping *before* a record means it is not replayed: pg_last_wal_replay_lsn()
  is the end of the record before, and its commit time is not the last
  transaction time;
* the last transaction time is updated in the "after" check, but only once
  the restore-point and LSN checks have not already stopped: an inclusive
  LSN target that lands exactly on a commit record replays the commit yet
  reports the previous transaction's time (PostgreSQL does exactly that).

This module holds the immutable settings (:class:`RecoveryTarget`, built by
:meth:`RecoveryTarget.from_settings` from PostgreSQL's text forms), the
description of where recovery stopped (:class:`TargetReached`, with the
server's log line and history-file reason) and the parsers. The per-record
checks live in :class:`walstream.wal.replay.ReplayState`, next to the replay
they interleave with.
"""

from __future__ import annotations

import re
import struct
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final, Literal, cast

from walstream import pgtypes
from walstream.errors import RecoveryTargetError
from walstream.lsn import LSN

__all__ = [
    "MAX_NAME_BYTES",
    "RecoveryTarget",
    "TargetAction",
    "TargetKind",
    "TargetReached",
    "TargetTimeline",
    "format_timestamptz",
    "parse_bool",
    "parse_lsn",
    "parse_name",
    "parse_timeline",
    "parse_timestamptz",
    "parse_xid",
]

TargetKind = Literal["unset", "immediate", "lsn", "xid", "time", "name"]
TargetAction = Literal["pause", "promote", "shutdown"]
TargetTimeline = int | Literal["latest", "current"]

MAX_NAME_BYTES: Final = 63  # MAXFNAMELEN - 1: a restore point name's limit
_SETTINGS: Final = (
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_xid",
    "recovery_target_time",
    "recovery_target_name",
)
_KIND_OF_SETTING: Final[dict[str, TargetKind]] = {
    "recovery_target": "immediate",
    "recovery_target_lsn": "lsn",
    "recovery_target_xid": "xid",
    "recovery_target_time": "time",
    "recovery_target_name": "name",
}


_KNOWN: Final = (*_SETTINGS, *(f"recovery_target_{k}" for k in ("inclusive", "action", "timeline")))
_ALIASES: Final = {"target": "recovery_target"} | {
    k: f"recovery_target_{k}"
    for k in ("lsn", "xid", "time", "name", "inclusive", "action", "timeline")
}


def _invalid(setting: str, value: str, detail: str | None = None) -> RecoveryTargetError:
    return RecoveryTargetError(setting, value, detail)


# ---------------------------------------------------------------------------
# The settings
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecoveryTarget:
    """Where recovery should stop, and what the startup service does then.

    ``value`` depends on ``kind``: an :class:`~walstream.lsn.LSN` for
    ``lsn``, a 32-bit transaction id for ``xid``, an aware datetime for
    ``time`` (microsecond precision, as PostgreSQL's TimestampTz), a name of
    at most 63 bytes (UTF-8) for ``name``, None for ``immediate`` and
    ``unset``. ``inclusive`` is recovery_target_inclusive (it changes lsn,
    xid and time targets only).

    ``action`` (recovery_target_action) and ``timeline``
    (recovery_target_timeline) are carried for the startup service, which
    acts on them; :class:`~walstream.wal.replay.ReplayState` only stops.
    ``unset`` is a valid kind so that a standby without a target can still
    carry its timeline choice; ReplayState treats it as no target at all.
    """

    kind: TargetKind
    value: int | datetime | str | None = None
    inclusive: bool = True
    action: TargetAction = "pause"
    timeline: TargetTimeline = "latest"

    def __post_init__(self) -> None:
        kind, value = self.kind, self.value
        if kind in ("unset", "immediate"):
            ok = value is None
        elif kind == "lsn":
            ok = isinstance(value, int) and 0 <= value <= 0xFFFFFFFFFFFFFFFF
            if ok and not isinstance(value, LSN):
                object.__setattr__(self, "value", LSN(cast(int, value)))
        elif kind == "xid":
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32
        elif kind == "time":
            ok = isinstance(value, datetime) and value.utcoffset() is not None
        elif kind == "name":
            ok = isinstance(value, str) and 0 < len(value.encode()) <= MAX_NAME_BYTES
        else:
            raise ValueError(f"unknown recovery target kind {kind!r}")
        if not ok:
            raise ValueError(f"invalid value for a recovery target of kind {kind!r}: {value!r}")
        if self.action not in ("pause", "promote", "shutdown"):
            raise ValueError(f"invalid recovery target action {self.action!r}")
        tl = self.timeline
        if not (tl in ("latest", "current") or (isinstance(tl, int) and 0 < tl < 2**32)):
            raise ValueError(f"invalid recovery target timeline {tl!r}")

    # -- constructors -------------------------------------------------------

    @classmethod
    def at_lsn(cls, lsn: int | str, *, inclusive: bool = True) -> RecoveryTarget:
        return cls("lsn", parse_lsn(lsn) if isinstance(lsn, str) else LSN(lsn), inclusive)

    @classmethod
    def at_xid(cls, xid: int | str, *, inclusive: bool = True) -> RecoveryTarget:
        return cls("xid", parse_xid(xid) if isinstance(xid, str) else xid, inclusive)

    @classmethod
    def at_time(cls, when: datetime | str, *, inclusive: bool = True) -> RecoveryTarget:
        return cls("time", parse_timestamptz(when) if isinstance(when, str) else when, inclusive)

    @classmethod
    def at_name(cls, name: str) -> RecoveryTarget:
        return cls("name", parse_name(name))

    @classmethod
    def immediate(cls) -> RecoveryTarget:
        return cls("immediate")

    @classmethod
    def from_settings(
        cls,
        settings: Mapping[str, str | None] | None = None,
        /,
        *,
        timezone: tzinfo = UTC,
        **more: str | None,
    ) -> RecoveryTarget:
        """Build a target from PostgreSQL's settings in their text forms.

        Keys are the GUC names (``recovery_target``, ``recovery_target_lsn``,
        ``recovery_target_xid``, ``recovery_target_time``,
        ``recovery_target_name``, ``recovery_target_inclusive``,
        ``recovery_target_action``, ``recovery_target_timeline``), given as a
        mapping and/or keywords; the keywords may drop the ``recovery_target_``
        prefix (``lsn=``, ``xid=``, ``time=``, ``name=``, ``inclusive=``,
        ``action=``, ``timeline=``; ``target=`` for recovery_target, the CLI
        flags' names). None or an empty string means "not set", as
        in postgresql.conf. At most one target may be set (PostgreSQL's
        "multiple recovery targets specified"). ``timezone`` is what a time
        without a zone is read in (PostgreSQL uses the server's ``timezone``
        setting). Returns kind ``unset`` when no target is set.

        Raises :class:`~walstream.errors.RecoveryTargetError` (a ValueError)
        with PostgreSQL's wording for anything it would refuse.
        """
        given: dict[str, str | None] = {}
        for key, text in {**(settings or {}), **more}.items():
            full = key if key.startswith("recovery_target") else _ALIASES.get(key, key)
            if full not in _KNOWN:
                raise RecoveryTargetError(
                    key, "", message=f'unrecognized configuration parameter "{key}"'
                )
            if text and given.get(full) and given[full] != text:
                raise RecoveryTargetError(full, text, message=f'"{full}" is given twice')
            given[full] = text or given.get(full)
        chosen = [k for k in _SETTINGS if given.get(k)]
        if len(chosen) > 1:
            raise RecoveryTargetError(
                chosen[1],
                given[chosen[1]] or "",
                "At most one of recovery_target, recovery_target_lsn, recovery_target_name, "
                "recovery_target_time, recovery_target_xid may be set.",
                message="multiple recovery targets specified",
            )
        inclusive = True
        if text := given.get("recovery_target_inclusive"):
            inclusive = parse_bool(text, "recovery_target_inclusive")
        action: TargetAction = "pause"
        if text := given.get("recovery_target_action"):
            lowered = text.lower()
            if lowered not in ("pause", "promote", "shutdown"):
                raise _invalid(
                    "recovery_target_action",
                    text,
                    "Available values: pause, promote, shutdown.",
                )
            action = cast(TargetAction, lowered)
        timeline: TargetTimeline = "latest"
        if text := given.get("recovery_target_timeline"):
            timeline = parse_timeline(text)
        if not chosen:
            return cls("unset", None, inclusive, action, timeline)
        key = chosen[0]
        text = cast(str, given[key])
        kind = _KIND_OF_SETTING[key]
        value: int | datetime | str | None
        if kind == "immediate":
            if text != "immediate":
                raise _invalid(key, text, 'The only allowed value is "immediate".')
            value = None
        elif kind == "lsn":
            value = parse_lsn(text)
        elif kind == "xid":
            value = parse_xid(text)
        elif kind == "time":
            value = parse_timestamptz(text, timezone)
        else:
            value = parse_name(text)
        return cls(kind, value, inclusive, action, timeline)

    # -- views --------------------------------------------------------------

    @property
    def is_set(self) -> bool:
        return self.kind != "unset"

    @property
    def lsn(self) -> LSN:
        if self.kind != "lsn":
            raise AttributeError(f"a {self.kind} target has no LSN")
        return cast(LSN, self.value)

    @property
    def xid(self) -> int:
        if self.kind != "xid":
            raise AttributeError(f"a {self.kind} target has no xid")
        return cast(int, self.value)

    @property
    def time(self) -> datetime:
        if self.kind != "time":
            raise AttributeError(f"a {self.kind} target has no time")
        return cast(datetime, self.value)

    @property
    def name(self) -> str:
        if self.kind != "name":
            raise AttributeError(f"a {self.kind} target has no name")
        return cast(str, self.value)

    def settings(self) -> dict[str, str]:
        """The target as postgresql.conf settings (what from_settings reads back)."""
        out: dict[str, str] = {}
        if self.kind == "immediate":
            out["recovery_target"] = "immediate"
        elif self.kind == "lsn":
            out["recovery_target_lsn"] = str(self.value)
        elif self.kind == "xid":
            out["recovery_target_xid"] = str(self.value)
        elif self.kind == "time":
            out["recovery_target_time"] = format_timestamptz(cast(datetime, self.value))
        elif self.kind == "name":
            out["recovery_target_name"] = cast(str, self.value)
        if self.kind in ("lsn", "xid", "time"):
            out["recovery_target_inclusive"] = "on" if self.inclusive else "off"
        out["recovery_target_action"] = self.action
        out["recovery_target_timeline"] = str(self.timeline)
        return out

    def __str__(self) -> str:
        if self.kind in ("unset", "immediate"):
            return self.kind
        shown = format_timestamptz(self.value) if isinstance(self.value, datetime) else self.value
        incl = "" if self.kind == "name" or self.inclusive else " (exclusive)"
        return f"{self.kind} {shown}{incl}"


# ---------------------------------------------------------------------------
# Where recovery stopped
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetReached:
    """Where :class:`~walstream.wal.replay.ReplayState` stopped for its target.

    ``lsn``/``end_lsn`` delimit the record recovery stopped at; ``after``
    says whether that record was replayed (PostgreSQL's recoveryStopAfter).
    ``replay_lsn`` is then what pg_last_wal_replay_lsn() reports. ``xid``
    and ``time`` are the stop record's transaction and its commit/abort time
    (restore point time for a name target), ``name`` the restore point's;
    ``commit`` says whether an xid/time stop record is a commit.
    ``consistent`` is False when the stop lies before the base backup's end,
    which PostgreSQL refuses (see :meth:`ReplayState.finish`).
    """

    target: RecoveryTarget
    after: bool
    lsn: LSN
    end_lsn: LSN
    replay_lsn: LSN
    xid: int | None = None
    time: datetime | None = None
    time_raw: int | None = None  # TimestampTz of ``time`` (exact, even out of range)
    name: str | None = None
    commit: bool | None = None
    consistent: bool = True

    @property
    def message(self) -> str:
        """The server's LOG line for this stop (times printed in UTC)."""
        kind = self.target.kind
        when = "after" if self.after else "before"
        if kind == "immediate":
            return "recovery stopping after reaching consistency"
        if kind == "lsn":
            return f'recovery stopping {when} WAL location (LSN) "{self.lsn}"'
        if kind == "name":
            return f'recovery stopping at restore point "{self.name}", time {self._time()}'
        what = "commit" if self.commit else "abort"
        return f"recovery stopping {when} {what} of transaction {self.xid}, time {self._time()}"

    @property
    def reason(self) -> str:
        """The reason PostgreSQL writes into the new timeline's history file.

        Copied in form, including the newline PostgreSQL appends after time and
        LSN reasons (its history files then hold an empty line).
        """
        kind = self.target.kind
        when = "after" if self.after else "before"
        if kind == "xid":
            return f"{when} transaction {self.xid}"
        if kind == "time":
            return f"{when} {self._time()}\n"
        if kind == "lsn":
            return f"{when} LSN {self.lsn}\n"
        if kind == "name":
            return f'at restore point "{self.name}"'
        return "reached consistency"

    def _time(self) -> str:
        if self.time is not None:
            return format_timestamptz(self.time)
        return "infinity" if (self.time_raw or 0) > 0 else "-infinity"


# ---------------------------------------------------------------------------
# Text forms
# ---------------------------------------------------------------------------

_HEX8: Final = re.compile(r"[0-9A-Fa-f]{1,8}")


def parse_lsn(text: str, setting: str = "recovery_target_lsn") -> LSN:
    """pg_lsn's input form exactly: ``X/X``, 1 to 8 hex digits each, nothing around."""
    high, sep, low = text.partition("/")
    if not sep or not _HEX8.fullmatch(high) or not _HEX8.fullmatch(low):
        raise _invalid(setting, text)
    return LSN((int(high, 16) << 32) | int(low, 16))


_XID: Final = re.compile(r"\s*(0[xX][0-9A-Fa-f]+|0[0-7]*|[1-9][0-9]*)\s*")


def parse_xid(text: str, setting: str = "recovery_target_xid") -> int:
    """A transaction id as strtoul(base 0) reads it: decimal, 0x hex or 0 octal.

    Values up to 2^64 - 1 are accepted and, as PostgreSQL casts them to a
    TransactionId, only the low 32 bits kept (a FullTransactionId such as
    txid_current() returns therefore works). Stricter than PostgreSQL,
    which ignores trailing text and reads text without digits as xid 0
    (a target that can never be reached): both are errors here, as are
    signs.
    """
    m = _XID.fullmatch(text)
    if m is None:
        raise _invalid(setting, text)
    digits = m.group(1)
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    if value > 0xFFFFFFFFFFFFFFFF:
        raise _invalid(setting, text)
    return value & 0xFFFFFFFF


def parse_name(text: str, setting: str = "recovery_target_name") -> str:
    """A restore point name: at most 63 bytes (PostgreSQL's limit counts bytes)."""
    if not text:
        raise _invalid(setting, text)
    if len(text.encode()) > MAX_NAME_BYTES:
        raise _invalid(
            setting,
            text,
            f"recovery_target_name is too long (maximum {MAX_NAME_BYTES} characters).",
        )
    if "\0" in text:
        raise _invalid(setting, text)
    return text


def parse_bool(text: str, setting: str = "recovery_target_inclusive") -> bool:
    """A boolean setting as the server reads it (:func:`walstream.pgtypes.parse_bool`)."""
    value = pgtypes.parse_bool(text)
    if value is not None:
        return value
    raise RecoveryTargetError(
        setting, text, message=f'parameter "{setting}" requires a Boolean value'
    )


def parse_timeline(text: str, setting: str = "recovery_target_timeline") -> TargetTimeline:
    """``latest``, ``current`` (exact, lower case, as PostgreSQL compares) or a number."""
    if text in ("latest", "current"):
        return cast(Literal["latest", "current"], text)
    m = re.fullmatch(r"\s*(0[xX][0-9A-Fa-f]+|[0-9]+)", text)
    value = int(m.group(1), 0 if m.group(1)[:2].lower() == "0x" else 10) if m else 0
    if not 0 < value < 2**32:
        raise _invalid(setting, text, "recovery_target_timeline is not a valid number.")
    return value


_TIMESTAMP: Final = re.compile(
    r"\s*(?P<y>\d{4,})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})"
    r"(?:(?:[Tt]|\s+)(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.(?P<f>\d+))?)?)?"
    r"\s*(?P<zone>.*?)\s*"
)
_OFFSET: Final = re.compile(r"([+-])(\d{1,2})(?::?(\d{2}))?(?::?(\d{2}))?")
_SPECIAL: Final = ("now", "today", "tomorrow", "yesterday", "epoch", "infinity", "-infinity")


def parse_timestamptz(text: str, default_tz: tzinfo = UTC) -> datetime:
    """A timestamp with time zone, in the ISO forms PostgreSQL accepts.

    Accepted: ``YYYY-MM-DD``, optionally followed (after a space or ``T``)
    by ``HH:MM``, ``HH:MM:SS`` or ``HH:MM:SS.fraction``, optionally followed
    (with or without a space) by a zone: ``Z``, ``UTC``, ``GMT``, a numeric
    ISO offset (``+HH``, ``+HHMM``, ``+HH:MM``, ``+HH:MM:SS``, east of UTC
    positive, as PostgreSQL reads them) or a full IANA zone name
    (``Europe/Paris``). Without a zone ``default_tz`` applies. Fractions
    beyond microseconds are rounded half to even, as PostgreSQL rounds.
    Not accepted (PostgreSQL accepts some of them): other date orders,
    month names, zone abbreviations (``CET``, ``PST``), ``BC``, the special
    values (now, today, epoch, infinity; PostgreSQL itself refuses now,
    today, tomorrow and yesterday here).
    """
    setting = "recovery_target_time"
    if text.strip().lower() in _SPECIAL:
        raise _invalid(setting, text)
    m = _TIMESTAMP.fullmatch(text)
    if m is None:
        raise _invalid(setting, text)
    zone = m.group("zone")
    tz: tzinfo
    if not zone:
        tz = default_tz
    elif zone.upper() in ("Z", "UTC", "GMT", "ZULU"):
        tz = UTC
    elif om := _OFFSET.fullmatch(zone):
        hours, minutes, seconds = (int(g) if g else 0 for g in om.groups()[1:])
        if hours > 15 or minutes > 59 or seconds > 59:
            raise _invalid(setting, text, f'time zone displacement out of range: "{text}"')
        offset = timedelta(hours=hours, minutes=minutes, seconds=seconds)
        tz = timezone(-offset if om.group(1) == "-" else offset)
    elif "/" in zone:
        try:
            tz = zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise _invalid(setting, text, f'time zone "{zone}" not recognized') from None
    else:
        raise _invalid(setting, text, f'time zone "{zone}" not recognized')
    try:
        when = datetime(
            int(m.group("y")),
            int(m.group("mo")),
            int(m.group("d")),
            int(m.group("h") or 0),
            int(m.group("mi") or 0),
            int(m.group("s") or 0),
            tzinfo=tz,
        )
    except ValueError:
        raise _invalid(setting, text, f'date/time field value out of range: "{text}"') from None
    if frac := m.group("f"):
        usecs = int(Decimal("0." + frac).scaleb(6).quantize(Decimal(1), ROUND_HALF_EVEN))
        when += timedelta(microseconds=usecs)
    return when


def format_timestamptz(when: datetime) -> str:
    """timestamptz_to_str's form in UTC: ``2026-12-01 10:00:00.123+00``.

    PostgreSQL prints in the server's ``timezone`` setting; walstream prints
    UTC (the tests run the servers with timezone = UTC to compare lines).
    Trailing zeros of the fraction are dropped, as PostgreSQL drops them.
    """
    utc = when.astimezone(UTC)
    text = f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d} "
    text += f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "+00"


_Q: Final = struct.Struct("<Q")


def backup_end_start(main_data: bytes) -> int | None:
    """The backup start an XLOG_BACKUP_END record closes (its payload), if well-formed."""
    if len(main_data) < 8:
        return None
    return int(_Q.unpack_from(main_data)[0])


def restore_point_name(main_data: bytes) -> bytes:
    """A RESTORE_POINT's name as stored (up to the first NUL of rp_name)."""
    return main_data[8:72].split(b"\0", 1)[0]
