"""The test harness's view of walstream.embedded (kept as a module so tests import one place)."""

import time
from collections.abc import Callable

from walstream.embedded import USERS, VERSIONS, PgCluster, SslFiles, find_bindir, make_test_ca

__all__ = [
    "USERS",
    "VERSIONS",
    "PgCluster",
    "SslFiles",
    "find_bindir",
    "make_test_ca",
    "wait_until",
]


def wait_until(predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    """Poll ``predicate`` until true; raise TimeoutError naming ``what`` (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)
