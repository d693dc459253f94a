"""``--http HOST:PORT``, as every long-running command takes it: ``/metrics`` and ``/status``.

For a command's parser, :func:`add_http_argument`; around its service,
``async with serving_http(args.http, receiver=..., sender=...)``, which
listens before the service starts (a taken port is an error at start, not
later) and stops listening when it ends. ``walstream receive`` passes its
receiver, ``walstream send`` its sender, the relay both. walstream.monitor
is imported only when ``--http`` is given (it costs about 7 ms of start-up).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from walstream.monitor import MonitorServer, SenderStatusSource
    from walstream.receiver import WalReceiver

__all__ = ["add_http_argument", "http_address", "serving_http"]


def http_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6addr]:PORT`` or ``:PORT`` (all addresses); port 0 takes any free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f'invalid HTTP address "{text}": expected HOST:PORT')
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in host and not text.startswith("["):
        raise argparse.ArgumentTypeError(f'invalid HTTP address "{text}": write [ADDR]:PORT')
    return host, int(port)


def add_http_argument(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--http",
        metavar="HOST:PORT",
        type=http_address,
        help="serve /metrics (Prometheus) and /status (JSON) over HTTP on this address "
        "(an empty HOST: every address)",
    )


@contextlib.asynccontextmanager
async def serving_http(
    address: tuple[str, int] | None,
    *,
    receiver: WalReceiver | None = None,
    sender: SenderStatusSource | None = None,
    segments_removed: Callable[[], int] | None = None,
) -> AsyncIterator[MonitorServer | None]:
    """Serve these roles' status on ``address`` (nothing when None) for the block's duration.

    Raises :class:`~walstream.monitor.MonitorError` if the address cannot be listened on.
    """
    if address is None:
        yield None
        return
    from walstream.monitor import MonitorServer, collector

    host, port = address
    collect = collector(receiver=receiver, sender=sender, segments_removed=segments_removed)
    server = MonitorServer(host, port, collect)
    await server.start()
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()
