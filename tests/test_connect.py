"""Connecting to real PostgreSQL 15, 16 and 18: authentication methods and their failures."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from pathlib import Path

import pytest

import walstream
from walstream import AuthenticationError, ConnectError, ServerError
from walstream.client import connect

from .pgcluster import PgCluster, wait_until


@pytest.mark.parametrize(
    ("user", "password"),
    [("trust_user", None), ("md5_user", "md5pass"), ("scram_user", "scrampass")],
)
async def test_authentication_methods(
    pg_server: PgCluster, user: str, password: str | None
) -> None:
    async with await walstream.connect(pg_server.conninfo(user, password)) as conn:
        system = await conn.identify_system()
        assert system.timeline >= 1
        assert system.dbname is None  # a physical walsender has no database
        assert conn.server_parameters["server_version"].startswith(str(pg_server.version))
        assert conn.server_version // 10000 == pg_server.version
        assert conn.backend_pid
    assert conn.closed


async def test_unix_socket(pg_server: PgCluster) -> None:
    async with await walstream.connect(
        pg_server.socket_conninfo("scram_user", "scrampass")
    ) as conn:
        assert (await conn.identify_system()).timeline >= 1
        assert not conn.tls_in_use


@pytest.mark.parametrize(("user", "method"), [("md5_user", "md5"), ("scram_user", "scram")])
async def test_wrong_password(pg_server: PgCluster, user: str, method: str) -> None:
    with pytest.raises(ServerError) as info:
        await walstream.connect(pg_server.conninfo(user, "wrong"))
    err = info.value
    assert err.sqlstate == "28P01"
    assert err.severity == "FATAL"
    assert err.message == f'password authentication failed for user "{user}"'
    assert f'connection to server at "127.0.0.1", port {pg_server.port} failed' in str(err)


async def test_no_pg_hba_entry(pg_server: PgCluster) -> None:
    with pytest.raises(ServerError) as info:
        await walstream.connect(pg_server.conninfo("noentry_user", None))
    assert info.value.sqlstate == "28000"
    assert info.value.message.startswith(
        'no pg_hba.conf entry for replication connection from host "127.0.0.1", user "noentry_user"'
    )


async def test_role_without_replication(pg_server: PgCluster) -> None:
    with pytest.raises(ServerError) as info:
        await walstream.connect(pg_server.conninfo("norepl_user", None))
    assert info.value.sqlstate == "42501"


async def test_no_password_supplied(pg_server: PgCluster, tmp_path: Path) -> None:
    with pytest.raises(AuthenticationError, match="fe_sendauth: no password supplied"):
        await walstream.connect(
            pg_server.conninfo("scram_user", None), passfile=str(tmp_path / "x")
        )


async def test_refused_port_names_the_server() -> None:
    with pytest.raises(ConnectError) as info:
        await walstream.connect("host=127.0.0.1 port=1 user=x connect_timeout=5")
    text = str(info.value)
    assert 'connection to server at "127.0.0.1", port 1 failed: Connection refused' in text
    assert "Is the server running on that host and accepting TCP/IP connections?" in text


async def test_multiple_hosts_falls_through_to_a_live_one(pg_server: PgCluster) -> None:
    conninfo = f"host=127.0.0.1,127.0.0.1 port=1,{pg_server.port} user=trust_user connect_timeout=5"
    async with await walstream.connect(conninfo) as conn:
        assert conn.host.port == pg_server.port


async def test_target_session_attrs(pg_server: PgCluster) -> None:
    async with await walstream.connect(
        pg_server.conninfo("trust_user", None, target_session_attrs="primary")
    ) as conn:
        assert conn.server_parameters["in_hot_standby"] == "off"
    with pytest.raises(ConnectError, match="server is not in hot standby mode"):
        await walstream.connect(
            pg_server.conninfo("trust_user", None, target_session_attrs="standby")
        )


async def test_read_write_passes_over_a_hot_standby(pg_factory) -> None:  # type: ignore[no-untyped-def]
    """As libpq: a hot standby is read-only even with default_transaction_read_only off."""
    primary: PgCluster = pg_factory(15)
    standby = primary.make_standby()
    conninfo = (
        f"host=127.0.0.1,127.0.0.1 port={standby.port},{primary.port} user=trust_user "
        "target_session_attrs=read-write connect_timeout=5"
    )
    async with await walstream.connect(conninfo) as conn:
        assert conn.host.port == primary.port


def test_a_server_shutting_down_sends_us_to_the_next_host(pg_factory) -> None:  # type: ignore[no-untyped-def]
    """57P03 ("cannot connect now"): libpq tries the next host, and so do we."""
    closing: PgCluster = pg_factory(15, name="closing")
    other: PgCluster = pg_factory(15, name="other")
    sleeper = "SELECT pg_sleep(120)"
    session = subprocess.Popen(
        [str(closing.bindir / "psql"), "-h", str(closing.socket_dir), "-p", str(closing.port),
         "-U", "postgres", "-XAtq", "-c", sleeper, "postgres"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    waiting = f"SELECT count(*) FROM pg_stat_activity WHERE query = '{sleeper}'"

    async def port_of(conninfo: str) -> int:
        async with await walstream.connect(conninfo) as conn:
            return conn.host.port

    def cannot_connect_now() -> bool:
        try:
            asyncio.run(port_of(f"host=127.0.0.1 port={closing.port} user=trust_user"))
        except ServerError as e:
            return e.sqlstate == "57P03"
        return False

    try:
        wait_until(lambda: closing.psql(waiting) == "1", what="a session to keep shutdown waiting")
        pg_ctl = [str(closing.bindir / "pg_ctl"), "-D", str(closing.datadir)]
        closing._run([*pg_ctl, "stop", "-m", "smart", "-W"])
        wait_until(cannot_connect_now, what="57P03 from the server shutting down")
        both = f"host=127.0.0.1,127.0.0.1 port={closing.port},{other.port} user=trust_user"
        assert asyncio.run(port_of(both)) == other.port
    finally:
        session.kill()
        session.wait()


async def test_uri_and_keyword_overrides(pg_server: PgCluster) -> None:
    uri = f"postgresql://scram_user:scrampass@127.0.0.1:{pg_server.port}/replication"
    async with await walstream.connect(uri, application_name="uri-test") as conn:
        assert conn.server_parameters["application_name"] == "uri-test"


async def test_environment_variables(pg_server: PgCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGPORT", str(pg_server.port))
    monkeypatch.setenv("PGUSER", "md5_user")
    monkeypatch.setenv("PGPASSWORD", "md5pass")
    monkeypatch.setenv("PGAPPNAME", "from-env")
    async with await walstream.connect() as conn:
        assert conn.server_parameters["application_name"] == "from-env"


def _pgpass(tmp_path: Path, port: int, password: str, mode: int) -> Path:
    path = tmp_path / "pgpass"
    path.write_text(f"# test\n127.0.0.1:{port}:replication:scram_user:{password}\n")
    os.chmod(path, mode)
    return path


async def test_pgpass_is_used(pg_server: PgCluster, tmp_path: Path) -> None:
    path = _pgpass(tmp_path, pg_server.port, "scrampass", 0o600)
    conninfo = pg_server.conninfo("scram_user", None, passfile=str(path))
    async with await walstream.connect(conninfo) as conn:
        assert (await conn.identify_system()).timeline >= 1


async def test_pgpass_wrong_password_is_named(pg_server: PgCluster, tmp_path: Path) -> None:
    path = _pgpass(tmp_path, pg_server.port, "wrong", 0o600)
    with pytest.raises(ServerError) as info:
        await walstream.connect(pg_server.conninfo("scram_user", None, passfile=str(path)))
    assert info.value.sqlstate == "28P01"
    assert str(info.value).endswith(f'password retrieved from file "{path}"')


async def test_group_readable_pgpass_is_ignored(
    pg_server: PgCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _pgpass(tmp_path, pg_server.port, "scrampass", 0o640)
    caplog.set_level(logging.WARNING)
    with pytest.raises(AuthenticationError, match="no password supplied"):
        await walstream.connect(pg_server.conninfo("scram_user", None, passfile=str(path)))
    assert (
        f'password file "{path}" has group or world access; '
        "permissions should be u=rw (0600) or less"
    ) in caplog.text


async def test_channel_binding_require_without_tls(pg_server: PgCluster) -> None:
    with pytest.raises(AuthenticationError, match="channel binding required, but SSL not in use"):
        await walstream.connect(
            pg_server.conninfo(
                "scram_user", "scrampass", sslmode="disable", channel_binding="require"
            )
        )


async def test_connect_is_exported() -> None:
    assert walstream.connect is connect
