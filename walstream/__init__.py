"""walstream: PostgreSQL physical streaming replication in pure-Python asyncio."""

from walstream.connection import ReplicationConnection, ReplicationStream, connect
from walstream.conninfo import parse_conninfo
from walstream.errors import (
    AuthenticationError,
    ConnectError,
    ConnInfoError,
    Error,
    LocalProtocolError,
    ProtocolViolation,
    ServerError,
)
from walstream.lsn import INVALID_LSN, LSN
from walstream.protocol.replication import PrimaryKeepalive, XLogData

__all__ = [
    "INVALID_LSN",
    "LSN",
    "AuthenticationError",
    "ConnInfoError",
    "ConnectError",
    "Error",
    "LocalProtocolError",
    "PrimaryKeepalive",
    "ProtocolViolation",
    "ReplicationConnection",
    "ReplicationStream",
    "ServerError",
    "XLogData",
    "connect",
    "parse_conninfo",
]

__version__ = "0.1.0.dev0"
