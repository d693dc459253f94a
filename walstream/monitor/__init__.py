"""Observability: ``/metrics`` (Prometheus) and ``/status`` (JSON) over HTTP for every role.

:mod:`.snapshot` gathers the roles' status objects (the receiver's
:class:`~walstream.receiver.ReceiverStatus`, the sender's
pg_stat_replication rows, the disk's fsync histogram) into one
:class:`Snapshot`; :mod:`.metrics` and :mod:`.status` render it (pure
functions); :mod:`.http` serves both on the service's event loop::

    server = MonitorServer("127.0.0.1", 9187, collector(receiver=receiver))
    await server.start()
    ...
    server.close()

A composition of the roles' status types: it imports the roles, and
nothing but the command lines imports it.
"""

from walstream.monitor.http import MonitorError, MonitorServer
from walstream.monitor.snapshot import SenderStatusSource, Snapshot, collector

__all__ = ["MonitorError", "MonitorServer", "SenderStatusSource", "Snapshot", "collector"]
