"""Fixtures that start real PostgreSQL servers (15, 16, 18) for the tests.

A version whose binaries are missing is skipped, unless
WALSTREAM_REQUIRE_ALL_PG=1 (set by scripts/test.sh, hence by CI), where it
fails: CI must prove every supported version.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from walstream.embedded import VERSIONS, PgCluster, find_bindir

REQUIRE_ALL = os.environ.get("WALSTREAM_REQUIRE_ALL_PG") == "1"


def require_version(version: int) -> None:
    if find_bindir(version) is None:
        message = f"PostgreSQL {version} server binaries not found (run scripts/test.sh)"
        if REQUIRE_ALL:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session", params=VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
def pg_server(request: pytest.FixtureRequest) -> Iterator[PgCluster]:
    """One running cluster per version for the whole session (read-mostly tests)."""
    version: int = request.param
    require_version(version)
    cluster = PgCluster.create(version)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def pg15_tls() -> Iterator[PgCluster]:
    """PostgreSQL 15 (Debian's build has OpenSSL) with TLS and a throwaway CA."""
    require_version(15)
    cluster = PgCluster.create(15, ssl=True)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_factory() -> Iterator[Callable[..., PgCluster]]:
    """Fresh clusters for tests that change them (promotion, 1 MB segments, failover)."""
    created: list[PgCluster] = []

    def make(version: int, **kwargs: Any) -> PgCluster:
        require_version(version)
        cluster = PgCluster.create(version, **kwargs)
        created.append(cluster)
        return cluster

    yield make
    for cluster in reversed(created):
        cluster.destroy()
