"""The client side: connecting to a walsender the way libpq does, and streaming from it.

:func:`connect` (libpq's conninfo strings, URIs, PG* variables, ``.pgpass``,
every ``sslmode``, several hosts) gives a :class:`ReplicationConnection`
with the replication commands and :meth:`~ReplicationConnection.start_replication`'s
:class:`ReplicationStream`. Under it: :mod:`.conninfo`, :mod:`.pgpass`,
:mod:`.tls` (libpq's conventions), :mod:`.wire` (the asyncio shell around
the sans-IO state machines, shared with the sender's server side) and
:mod:`.connect` (connection setup).
"""

from walstream.client.connect import connect, connect_params
from walstream.client.connection import ReplicationConnection, ReplicationStream, StreamEvent

__all__ = ["ReplicationConnection", "ReplicationStream", "StreamEvent", "connect", "connect_params"]
