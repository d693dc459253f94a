"""The one place tests import their clusters from (tests/support/cluster.py's, named PgCluster)."""

import time
from collections.abc import Callable

from tests.support.cluster import USERS, SslFiles, make_test_ca
from tests.support.cluster import TestCluster as PgCluster
from walstream.embedded import VERSIONS, find_bindir

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
