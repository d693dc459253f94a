"""The walreceiver role: stream WAL from a primary into a pg_receivewal-style directory.

``WalReceiver(ReceiverOptions(...))``, ``await receiver.run()``,
``receiver.stop()``, ``receiver.status()``. The command line is
:mod:`walstream.cli.receive` (``python -m walstream.receiver``).
"""

from walstream.receiver.service import (
    ReceiverError,
    ReceiverOptions,
    ReceiverStatus,
    WalConsumer,
    WalReceiver,
)

__all__ = ["ReceiverError", "ReceiverOptions", "ReceiverStatus", "WalConsumer", "WalReceiver"]
