"""Who may connect to ``walstream send``, as psql and pg_receivewal see it, against a real server.

One real primary per version (15, 16, 18) and one ``python -m walstream.sender``
serving the WAL a walstream receiver took from it get the same pg_hba.conf
and the same roles: the sender's --passwords file is the primary's own
``pg_authid`` (``rolname:rolpassword``, copied with one query), plus one line
printed by ``walstream passwd`` whose verifier the primary is given too.
Then Debian's psql 15 (``replication=true``, IDENTIFY_SYSTEM) and each
version's pg_receivewal (``--create-slot``/``--drop-slot``: connect,
IDENTIFY_SYSTEM, SHOW, a command) connect to both with the same conninfo and
must get the same result: success on both, or the same words on stderr (the
port and socket path aside).

TLS (hostssl, ``sslmode=verify-full``, ``channel_binding=require``) is
compared on PostgreSQL 15 only: the 16 and 18 builds here have no OpenSSL,
neither in the server nor in their pg_receivewal.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from walstream.errors import ServerError
from walstream.protocol import messages as m

from .conftest import require_version
from .pgcluster import VERSIONS, PgCluster, SslFiles
from .sender_harness import ROOT, Raw, SenderProcess, errors, fill_directory

PSQL = Path("/usr/lib/postgresql/15/bin/psql")
pytestmark = pytest.mark.skipif(not PSQL.exists(), reason="Debian's psql 15 is not installed")

PASSWD_PASSWORD = "from walstream passwd"


def hba_text(tls: bool) -> str:
    lines = [
        # The harness's own superuser lines first (its psql and the receiver use them).
        "local all postgres trust",
        "local replication postgres trust",
        "host all postgres 127.0.0.1/32 trust",
        "host replication postgres 127.0.0.1/32 trust",
        "local replication root peer",  # psql runs as root: peer authentication as itself
        "local replication peer_user peer",  # ... and not as anyone else
        "local replication trust_user trust",
        "local replication rej_user reject",
        "host replication trust_user 127.0.0.1/32 trust",
        "host replication rej_user 127.0.0.1/32 reject",
        "host replication scram_user 127.0.0.1/32 scram-sha-256",
        "host replication md5_user 127.0.0.1/32 md5",
        "host replication md5_scram 127.0.0.1/32 md5",  # a SCRAM verifier: SCRAM is used
        "host replication passwd_user 127.0.0.1/32 scram-sha-256",
    ]
    if tls:
        lines.append("hostssl replication tls_scram_user 127.0.0.1/32 scram-sha-256")
    # noentry_user has no line at all.
    return "\n".join(lines) + "\n"


@dataclass
class Setup:
    cluster: PgCluster
    sender: SenderProcess
    socket_dir: Path  # the sender's Unix socket directory

    @property
    def tls(self) -> SslFiles | None:
        return self.cluster.ssl


def _write_datadir_file(cluster: PgCluster, name: str, text: str) -> None:
    path = cluster.datadir / name
    path.write_text(text)
    st = os.stat(cluster.datadir)
    os.chown(path, st.st_uid, st.st_gid)
    path.chmod(0o600)


def walstream_passwd(role: str, password: str) -> str:
    """``walstream passwd ROLE``'s line, the password typed twice (on stdin: no terminal here)."""
    result = subprocess.run(
        [sys.executable, "-m", "walstream.cli", "passwd", role],
        input=f"{password}\n{password}\n", capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    return line


@pytest.fixture(scope="module", params=VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    version: int = request.param
    require_version(version)
    cluster = PgCluster.create(version, ssl=version == 15)
    work = Path(tempfile.mkdtemp(prefix="wsacc-", dir="/tmp"))  # short: a socket lives here
    sender: SenderProcess | None = None
    try:
        passwd_line = walstream_passwd("passwd_user", PASSWD_PASSWORD)
        role, _, verifier = passwd_line.partition(":")
        assert role == "passwd_user"
        assert verifier.startswith("SCRAM-SHA-256$4096:")
        cluster.psql(
            "CREATE ROLE root LOGIN REPLICATION; CREATE ROLE rej_user LOGIN REPLICATION; "
            "CREATE ROLE peer_user LOGIN REPLICATION; "
            "SET password_encryption = 'scram-sha-256'; "
            "CREATE ROLE md5_scram LOGIN REPLICATION PASSWORD 'scram on md5'; "
            # PostgreSQL stores a verifier given as the password as it is.
            f"CREATE ROLE passwd_user LOGIN REPLICATION PASSWORD '{verifier}'"
        )
        directory = work / "wal"
        fill_directory(cluster, directory, sql="CREATE TABLE t AS SELECT 1 AS x")
        hba = hba_text(cluster.ssl is not None)
        _write_datadir_file(cluster, "pg_hba.conf", hba)
        cluster.restart()  # not a reload: the new rules are surely in force
        # The passwords file as an operator makes it: the primary's pg_authid, as it is.
        rows = cluster.psql(
            "SELECT rolname || ':' || rolpassword FROM pg_authid "
            "WHERE rolpassword IS NOT NULL AND rolname <> 'passwd_user'"
        )
        (work / "passwords").write_text(rows + "\n" + passwd_line + "\n")
        (work / "hba").write_text(hba)
        socket_dir = work / "s"
        socket_dir.mkdir()
        args = ["--hba", str(work / "hba"), "--passwords", str(work / "passwords"),
                "--unix-socket-dir", str(socket_dir)]  # fmt: skip
        if cluster.ssl is not None:
            args += ["--ssl-cert", str(cluster.ssl.server_cert),
                     "--ssl-key", str(cluster.ssl.server_key),
                     "--ssl-ca", str(cluster.ssl.ca_cert)]  # fmt: skip
        sender = SenderProcess(directory, *args, log_path=work / "sender.log")
        yield Setup(cluster, sender, socket_dir)
        assert sender.running(), sender.log()
        assert sender.stop() == 0, sender.log()
    finally:
        if sender is not None:
            sender.stop()
        cluster.destroy()
        subprocess.run(["rm", "-rf", str(work)], check=False)


# ---------------------------------------------------------------------------
# The clients
# ---------------------------------------------------------------------------


def _client_env(password: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSFILE"] = "/nonexistent/pgpass"
    env["PGCONNECT_TIMEOUT"] = "20"
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def run_psql(conninfo: str, password: str | None) -> tuple[int, str]:
    result = subprocess.run(
        [str(PSQL), f"{conninfo} replication=true", "-XAtqw", "-c", "IDENTIFY_SYSTEM"],
        capture_output=True, text=True, timeout=60, env=_client_env(password),
    )  # fmt: skip
    return result.returncode, result.stderr


def run_pg_receivewal(
    cluster: PgCluster, conninfo: str, password: str | None, slot: str
) -> tuple[int, str]:
    """``--create-slot``, and ``--drop-slot`` once that worked: both must succeed."""
    program = str(cluster.program("pg_receivewal"))
    outputs = []
    for action in ("--create-slot", "--drop-slot"):
        result = subprocess.run(
            [program, "-d", conninfo, "-w", action, "-S", slot],
            capture_output=True, text=True, timeout=60, env=_client_env(password),
        )  # fmt: skip
        outputs.append(result.stderr)
        if result.returncode != 0:
            return result.returncode, "".join(outputs)
    return 0, "".join(outputs)


def normalized(text: str, port: int, socket_dir: Path) -> str:
    text = text.replace(f"port {port} failed", "port PORT failed")
    return text.replace(f'"{socket_dir}/.s.PGSQL.{port}"', '"SOCKET"')


# ---------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    user: str
    password: str | None = None
    options: str = ""
    local: bool = False
    tls: bool = False  # needs a TLS-capable server and client (15 here)
    clients: tuple[str, ...] = ("psql", "pg_receivewal")
    versions: tuple[int, ...] = (15, 16, 18)
    succeeds: bool = False
    expect: str = ""  # a fragment of the refusal both must print


NO_TLS = "sslmode=disable"  # what the refusals below say depends on it where TLS is offered
VERIFY = "sslmode=verify-full sslrootcert={ca}"

SCENARIOS: dict[str, Scenario] = {
    "trust": Scenario("trust_user", options=NO_TLS, succeeds=True),
    "reject": Scenario(
        "rej_user",
        options=NO_TLS,
        expect='FATAL:  pg_hba.conf rejects replication connection for host "127.0.0.1", '
        'user "rej_user", no encryption',
    ),
    "scram": Scenario("scram_user", "scrampass", NO_TLS, succeeds=True),
    "scram-wrong-password": Scenario(
        "scram_user",
        "nope",
        NO_TLS,
        expect='FATAL:  password authentication failed for user "scram_user"',
    ),
    "scram-no-password": Scenario(
        "scram_user", None, NO_TLS, expect="fe_sendauth: no password supplied"
    ),
    "md5": Scenario("md5_user", "md5pass", NO_TLS, succeeds=True),
    "md5-wrong-password": Scenario(
        "md5_user", "nope", NO_TLS, expect='password authentication failed for user "md5_user"'
    ),
    # An md5 line with a SCRAM verifier: PostgreSQL (and walstream) run SCRAM.
    "md5-line-scram-verifier": Scenario("md5_scram", "scram on md5", NO_TLS, succeeds=True),
    # libpq 16+ can insist on a method: SCRAM is what the md5 line ran.
    "md5-line-scram-verifier-require-scram": Scenario(
        "md5_scram",
        "scram on md5",
        "sslmode=disable require_auth=scram-sha-256",
        clients=("pg_receivewal",),
        versions=(16, 18),
        succeeds=True,
    ),
    "md5-line-scram-verifier-require-md5": Scenario(
        "md5_scram",
        "scram on md5",
        "sslmode=disable require_auth=md5",
        clients=("pg_receivewal",),
        versions=(16, 18),
        expect='authentication method requirement "md5" failed: '
        "server requested SASL authentication",
    ),
    "walstream-passwd-line": Scenario("passwd_user", PASSWD_PASSWORD, NO_TLS, succeeds=True),
    "walstream-passwd-line-wrong": Scenario(
        "passwd_user", "nope", NO_TLS, expect="password authentication failed for user"
    ),
    "no-entry": Scenario(
        "noentry_user",
        options=NO_TLS,
        expect='FATAL:  no pg_hba.conf entry for replication connection from host "127.0.0.1", '
        'user "noentry_user", no encryption',
    ),
    # Over TLS (PostgreSQL 15).
    "no-entry-ssl": Scenario(
        "noentry_user",
        options="sslmode=require",
        tls=True,
        expect='user "noentry_user", SSL encryption',
    ),
    # sslmode=prefer: refused over TLS, libpq tries again without, both refusals printed.
    "no-entry-prefer": Scenario(
        "noentry_user", options="sslmode=prefer", tls=True, expect="SSL encryption"
    ),
    "hostssl-without-tls": Scenario(
        "tls_scram_user", "tlspass", NO_TLS, tls=True, expect="no encryption"
    ),
    "hostssl-verify-full": Scenario("tls_scram_user", "tlspass", VERIFY, tls=True, succeeds=True),
    "hostssl-verify-full-wrong-password": Scenario(
        "tls_scram_user", "nope", VERIFY, tls=True, expect="password authentication failed"
    ),
    "channel-binding-required": Scenario(
        "scram_user", "scrampass", VERIFY + " channel_binding=require", tls=True, succeeds=True
    ),
    # SCRAM-SHA-256-PLUS on the md5 line: again SCRAM.
    "channel-binding-md5-line-scram-verifier": Scenario(
        "md5_scram",
        "scram on md5",
        "sslmode=require channel_binding=require",
        tls=True,
        succeeds=True,
    ),
    "channel-binding-required-md5": Scenario(
        "md5_user",
        "md5pass",
        "sslmode=require channel_binding=require",
        tls=True,
        expect="channel binding required but not supported by server's authentication request",
    ),
    "channel-binding-required-trust": Scenario(
        "trust_user",
        None,
        "sslmode=require channel_binding=require",
        tls=True,
        expect="channel binding required, but server authenticated client without channel binding",
    ),
    # A Unix-domain socket (the sender's --unix-socket-dir).
    "local-peer": Scenario("root", local=True, succeeds=True),
    "local-peer-other-user": Scenario(
        "peer_user", local=True, expect='Peer authentication failed for user "peer_user"'
    ),
    "local-trust": Scenario("trust_user", local=True, succeeds=True),
    "local-reject": Scenario("rej_user", local=True, expect='for host "[local]", user "rej_user"'),
    "local-no-entry": Scenario("noentry_user", local=True, expect='from host "[local]"'),
}


def _slot(name: str, client: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", f"acc_{name}_{client}")


@pytest.mark.parametrize("client", ["psql", "pg_receivewal"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_clients_see_the_same_server(setup: Setup, name: str, client: str) -> None:
    scenario = SCENARIOS[name]
    version = setup.cluster.version
    if client not in scenario.clients or version not in scenario.versions:
        pytest.skip(f"{name} is not a case for {client} on PostgreSQL {version}")
    if scenario.tls and setup.tls is None:
        pytest.skip("this PostgreSQL build has no TLS")
    options = scenario.options
    if setup.tls is not None:
        options = options.format(ca=setup.tls.ca_cert)
    outputs = []
    for port, socket_dir in (
        (setup.cluster.port, setup.cluster.socket_dir),
        (setup.sender.port, setup.socket_dir),
    ):
        host = str(socket_dir) if scenario.local else "127.0.0.1"
        conninfo = f"host={host} port={port} user={scenario.user} {options}".strip()
        if client == "psql":
            code, err = run_psql(conninfo, scenario.password)
        else:
            slot = _slot(name, client)
            code, err = run_pg_receivewal(setup.cluster, conninfo, scenario.password, slot)
        outputs.append((code, normalized(err, port, socket_dir)))
    real, ours = outputs
    assert ours == real
    if scenario.succeeds:
        assert real == (0, ""), real
    else:
        assert real[0] != 0
        assert scenario.expect in real[1], real[1]
    assert setup.sender.running(), setup.sender.log()


# ---------------------------------------------------------------------------
# SQLSTATEs, which psql does not print
# ---------------------------------------------------------------------------


def _refusal(address: tuple[str, int] | str, user: str) -> list[tuple[str, str, str]]:
    with Raw(address) as raw:
        return errors(raw.startup(user))


def _md5_wrong_password(address: tuple[str, int]) -> list[tuple[str, str, str]]:
    with Raw(address) as raw:
        answers = raw.startup("md5_user")
        assert isinstance(answers[-1], m.AuthenticationMD5Password), answers
        raw.send(m.PasswordMessage(b"md5" + b"0" * 32).encode())
        return errors(raw.rest())


async def _scram_wrong_password(conninfo: str) -> tuple[str, str]:
    import walstream

    try:
        conn = await walstream.connect(conninfo)
    except ServerError as e:
        return e.sqlstate, str(e.message)
    await conn.close()
    raise AssertionError("a wrong password was accepted")


def test_refusals_carry_postgresqls_sqlstate(setup: Setup) -> None:
    """28000 for pg_hba (no line, a reject line), 28P01 for a wrong password: all FATAL."""
    cluster, sender = setup.cluster, setup.sender
    real_local = str(cluster.socket_dir / f".s.PGSQL.{cluster.port}")
    our_local = str(setup.socket_dir / f".s.PGSQL.{sender.port}")
    for user in ("noentry_user", "rej_user"):
        real = _refusal((cluster.host, cluster.port), user)
        assert real == _refusal(sender.address, user)
        assert [code for _, code, _ in real] == ["28000"]
        assert _refusal(real_local, user) == _refusal(our_local, user)
    real = _md5_wrong_password((cluster.host, cluster.port))
    assert real == [("FATAL", "28P01", 'password authentication failed for user "md5_user"')]
    assert _md5_wrong_password(sender.address) == real
    template = "host=127.0.0.1 port={} user=scram_user password=nope sslmode=disable"
    real_scram = asyncio.run(_scram_wrong_password(template.format(cluster.port)))
    assert real_scram == ("28P01", 'password authentication failed for user "scram_user"')
    assert asyncio.run(_scram_wrong_password(template.format(sender.port))) == real_scram


def test_connections_are_logged_with_who_and_how(setup: Setup) -> None:
    """The sender's log names authorized connections (PostgreSQL's log_connections, in effect)."""
    code, err = run_psql(f"host=127.0.0.1 port={setup.sender.port} user=trust_user "
                         "application_name=accesslog sslmode=disable", None)  # fmt: skip
    assert (code, err) == (0, "")
    assert re.search(
        r"replication connection \d+ authorized: user=trust_user application_name=accesslog "
        r"from 127\.0\.0\.1:\d+",
        setup.sender.log(),
    )
