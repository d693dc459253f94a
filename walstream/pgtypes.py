"""PostgreSQL's value conventions that every layer shares: timestamps and booleans.

* ``TimestampTz`` on the wire and in WAL: microseconds since 2000-01-01
  00:00 UTC (PostgreSQL's epoch), as int64.
* ``parse_bool``: how the server reads a boolean setting or startup
  parameter (``replication=yes``, ``recovery_target_inclusive=of``).

Pure functions, no clock: the caller passes the time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = [
    "POSTGRES_EPOCH",
    "POSTGRES_EPOCH_UNIX",
    "datetime_from_pg",
    "parse_bool",
    "pg_time_from_unix",
    "pg_usecs",
    "unix_from_pg_time",
]

POSTGRES_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
POSTGRES_EPOCH_UNIX: Final = 946684800  # 2000-01-01 00:00:00 UTC as a Unix time
_USEC: Final = timedelta(microseconds=1)


def pg_time_from_unix(seconds: float) -> int:
    """Microseconds since the PostgreSQL epoch for a Unix time in seconds."""
    return round((seconds - POSTGRES_EPOCH_UNIX) * 1_000_000)


def unix_from_pg_time(pg_time: int) -> float:
    """A TimestampTz as a Unix time in seconds."""
    return pg_time / 1_000_000 + POSTGRES_EPOCH_UNIX


def datetime_from_pg(pg_time: int) -> datetime | None:
    """A TimestampTz as an aware datetime in UTC.

    None for values a datetime cannot hold (PostgreSQL's -infinity/infinity
    are int64's extremes).
    """
    try:
        return POSTGRES_EPOCH + timedelta(microseconds=pg_time)
    except OverflowError:
        return None


def pg_usecs(when: datetime) -> int:
    """An aware datetime as a TimestampTz: microseconds since 2000-01-01 UTC."""
    return (when - POSTGRES_EPOCH) // _USEC


def parse_bool(text: str) -> bool | None:
    """The server's parse_bool(): any unique prefix of true/false/yes/no, on/off (of), 1/0.

    Case-insensitive; None when the text is none of them.
    """
    t = text.lower()
    if t and ("true".startswith(t) or "yes".startswith(t) or t in ("on", "1")):
        return True
    if t and ("false".startswith(t) or "no".startswith(t) or t in ("of", "off", "0")):
        return False
    return None
