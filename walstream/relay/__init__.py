"""The relay: a receiver and a sender in one process over one directory (see :mod:`.service`).

``WalRelay(RelayOptions(receiver=ReceiverOptions(...), sender=SenderOptions(...)))``,
``await relay.run()``, ``relay.stop()``, ``relay.status()``. Its command line
is :mod:`walstream.cli.relay` (``python -m walstream.relay``, ``walstream relay``).
"""

from walstream.relay.service import RelayError, RelayOptions, RelayStatus, WalRelay

__all__ = ["RelayError", "RelayOptions", "RelayStatus", "WalRelay"]
