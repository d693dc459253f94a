"""walstream: PostgreSQL physical streaming replication in pure-Python asyncio.

The connection API (``connect``, ``ReplicationConnection``, ...) is imported
on first use: ``walstream waldump`` and the startup role never open a
connection and should not pay for asyncio, ssl and the protocol codec at
start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from walstream.client import ReplicationConnection, ReplicationStream, connect
    from walstream.client.conninfo import parse_conninfo
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

_LAZY = {
    "ReplicationConnection": "walstream.client",
    "ReplicationStream": "walstream.client",
    "connect": "walstream.client",
    "parse_conninfo": "walstream.client.conninfo",
    "PrimaryKeepalive": "walstream.protocol.replication",
    "XLogData": "walstream.protocol.replication",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'walstream' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
