"""TLS against a real PostgreSQL 15 with a throwaway CA: sslmode and channel binding."""

from __future__ import annotations

from pathlib import Path

import pytest

import walstream
from walstream import AuthenticationError, ConnectError

from .pgcluster import PgCluster


def _tls(server: PgCluster, host: str = "localhost", **extra: str) -> str:
    assert server.ssl is not None
    return server.conninfo(
        "tls_scram_user", "tlspass", host=host, sslrootcert=str(server.ssl.ca_cert), **extra
    )


async def test_verify_full_accepts_the_certificate_host(pg15_tls: PgCluster) -> None:
    async with await walstream.connect(_tls(pg15_tls, sslmode="verify-full")) as conn:
        assert conn.tls_in_use
        assert (await conn.identify_system()).timeline >= 1


async def test_verify_full_accepts_an_ip_san(pg15_tls: PgCluster) -> None:
    async with await walstream.connect(_tls(pg15_tls, host="127.0.0.1", sslmode="verify-full")):
        pass


async def test_verify_full_rejects_another_name(pg15_tls: PgCluster) -> None:
    conninfo = _tls(pg15_tls, host="wrong.example", hostaddr="127.0.0.1", sslmode="verify-full")
    with pytest.raises(ConnectError) as info:
        await walstream.connect(conninfo)
    assert 'server certificate for "' in str(info.value)
    assert 'does not match host name "wrong.example"' in str(info.value)


async def test_verify_ca_ignores_the_name(pg15_tls: PgCluster) -> None:
    conninfo = _tls(pg15_tls, host="wrong.example", hostaddr="127.0.0.1", sslmode="verify-ca")
    async with await walstream.connect(conninfo) as conn:
        assert conn.tls_in_use


async def test_verify_ca_rejects_an_unknown_ca(pg15_tls: PgCluster, tmp_path: Path) -> None:
    from .pgcluster import make_test_ca

    other = make_test_ca(tmp_path)
    conninfo = pg15_tls.conninfo(
        "tls_scram_user",
        "tlspass",
        host="localhost",
        sslmode="verify-ca",
        sslrootcert=str(other.ca_cert),
    )
    with pytest.raises(ConnectError, match="certificate verify failed"):
        await walstream.connect(conninfo)


async def test_missing_root_certificate_is_explained(pg15_tls: PgCluster) -> None:
    conninfo = pg15_tls.conninfo(
        "tls_scram_user",
        "tlspass",
        host="localhost",
        sslmode="verify-full",
        sslrootcert="/nonexistent/root.crt",
    )
    with pytest.raises(
        ConnectError, match=r'root certificate file "/nonexistent/root\.crt" does not exist'
    ):
        await walstream.connect(conninfo)


async def test_hostssl_user_needs_tls(pg15_tls: PgCluster) -> None:
    conninfo = pg15_tls.conninfo("tls_scram_user", "tlspass", sslmode="disable")
    with pytest.raises(walstream.ServerError) as info:
        await walstream.connect(conninfo)
    assert info.value.sqlstate == "28000"


async def test_prefer_uses_tls_and_allow_starts_plain(pg15_tls: PgCluster) -> None:
    async with await walstream.connect(
        pg15_tls.conninfo("scram_user", "scrampass", sslmode="prefer")
    ) as c:
        assert c.tls_in_use
    async with await walstream.connect(
        pg15_tls.conninfo("scram_user", "scrampass", sslmode="allow")
    ) as c:
        assert not c.tls_in_use
    # allow falls back to TLS when the server insists (hostssl line only).
    async with await walstream.connect(
        pg15_tls.conninfo("tls_scram_user", "tlspass", sslmode="allow")
    ) as c:
        assert c.tls_in_use


async def test_channel_binding_require_over_tls(pg15_tls: PgCluster) -> None:
    conninfo = _tls(pg15_tls, sslmode="verify-full", channel_binding="require")
    async with await walstream.connect(conninfo) as conn:
        assert conn.auth_method == "SCRAM-SHA-256-PLUS"


async def test_channel_binding_prefer_binds_when_it_can(pg15_tls: PgCluster) -> None:
    async with await walstream.connect(_tls(pg15_tls, sslmode="require")) as conn:
        assert conn.auth_method == "SCRAM-SHA-256-PLUS"
    async with await walstream.connect(
        _tls(pg15_tls, sslmode="require", channel_binding="disable")
    ) as conn:
        assert conn.auth_method == "SCRAM-SHA-256"


async def test_channel_binding_require_refuses_trust(pg15_tls: PgCluster) -> None:
    conninfo = pg15_tls.conninfo("trust_user", None, sslmode="require", channel_binding="require")
    with pytest.raises(
        AuthenticationError, match="server authenticated client without channel binding"
    ):
        await walstream.connect(conninfo)


async def test_channel_binding_require_refuses_md5(pg15_tls: PgCluster) -> None:
    conninfo = pg15_tls.conninfo(
        "md5_user", "md5pass", sslmode="require", channel_binding="require"
    )
    with pytest.raises(AuthenticationError, match="channel binding required"):
        await walstream.connect(conninfo)
