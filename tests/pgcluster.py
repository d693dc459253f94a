"""The test harness's view of walstream.embedded (kept as a module so tests import one place)."""

from walstream.embedded import USERS, VERSIONS, PgCluster, SslFiles, find_bindir, make_test_ca

__all__ = ["USERS", "VERSIONS", "PgCluster", "SslFiles", "find_bindir", "make_test_ca"]
