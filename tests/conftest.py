"""Fixtures that start real PostgreSQL servers (15, 16, 18) for the tests.

A version whose binaries are missing is skipped, unless
WALSTREAM_REQUIRE_ALL_PG=1 (set by scripts/test.sh, hence by CI), where it
fails: CI must prove every supported version.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.pgcluster import VERSIONS, PgCluster, find_bindir

REQUIRE_ALL = os.environ.get("WALSTREAM_REQUIRE_ALL_PG") == "1"

# What makes a test need a real server: these fixtures, or code that starts one.
SERVER_FIXTURES = frozenset({"pg_server", "pg_factory", "pg15_tls"})
_STARTS_A_SERVER = ("PgCluster.create", "PgCluster.from_backup", "make_standby", "require_version(")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pg: needs real PostgreSQL servers (marked automatically; -m 'not pg' skips)"
    )
    if config.getoption("markexpr", "") == "not pg":
        # A test that starts a server without being marked fails loudly
        # (tests/support/cluster.py), so the unit run stays a unit run.
        os.environ["WALSTREAM_NO_PG"] = "1"


@functools.cache
def _source(func: Callable[..., Any]) -> str:
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return ""


def _needs_server(item: pytest.Item) -> bool:
    if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    funcs = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    if info is not None:
        funcs += [d.func for defs in info.name2fixturedefs.values() for d in defs]
    return any(f is not None and any(w in _source(f) for w in _STARTS_A_SERVER) for f in funcs)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _needs_server(item):
            item.add_marker(pytest.mark.pg)


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
