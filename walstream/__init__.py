"""walstream: PostgreSQL physical streaming replication in pure-Python asyncio."""

from walstream.errors import (
    ConnectError,
    ConnInfoError,
    Error,
    LocalProtocolError,
    ProtocolViolation,
    ServerError,
)
from walstream.lsn import INVALID_LSN, LSN

__all__ = [
    "INVALID_LSN",
    "LSN",
    "ConnInfoError",
    "ConnectError",
    "Error",
    "LocalProtocolError",
    "ProtocolViolation",
    "ServerError",
]

__version__ = "0.1.0.dev0"
