"""The sender's access control against the real thing: PostgreSQL 15, 16 and 18, and libpq.

Each real cluster gets the same pg_hba.conf and roles as a minimal test-only
walstream server (ServerConnection + the sender's hba, passwords and
authenticator, below; not part of the package), whose verifiers are copied
from the cluster's pg_authid. Then:

* every line of a corpus of pg_hba.conf lines gets the error (or none) that
  the cluster's pg_hba_file_rules view reports, except where walstream
  refuses on purpose;
* Debian's psql 15 connects to both with the same conninfo and must succeed
  on both or print the same error (the port and socket path aside);
* hand-made SCRAM messages, valid and malformed, get the same SQLSTATE,
  message and detail from both;
* verifiers we make are stored as they are by ALTER ROLE, and psql logs in
  with them.

PostgreSQL 16 and 18 come from wheels built without OpenSSL, so everything
about TLS is compared against 15 only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import os
import socket
import ssl
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from walstream.protocol import messages as m
from walstream.protocol.client import ClientConnection, ConnectionClosed
from walstream.protocol.server import ServerConnection, ServerEvent
from walstream.sender import hostinfo
from walstream.sender.auth import (
    AuthFailure,
    AuthRequest,
    AuthStep,
    ServerAuthenticator,
    encode_step,
    tls_server_end_point_from_pem,
)
from walstream.sender.hba import ConnectionFacts, HbaFileError, HbaRules, parse_hba
from walstream.sender.passwords import (
    ScramVerifier,
    Verifier,
    format_password_line,
    make_md5_verifier,
    make_scram_verifier,
    parse_passwords,
)

from .conftest import require_version
from .pgcluster import VERSIONS, PgCluster, SslFiles

PSQL = Path("/usr/lib/postgresql/15/bin/psql")
pytestmark = pytest.mark.skipif(not PSQL.exists(), reason="Debian's psql 15 is not installed")

# Roles the scenarios use beyond the harness's own (trust_user, md5_user,
# scram_user, tls_scram_user): name -> password (None: no password).
EXTRA_ROLES: Mapping[str, str | None] = {
    "root": None,  # psql runs as root: peer authentication as itself
    "rej_user": None,
    "pw_user": "pw secret",  # SCRAM verifier made by walstream, on a password line
    "pw_md5": "md5 secret",  # MD5 verifier made by walstream, on a password line
    "md5_scram": "scram on md5",  # SCRAM verifier on an md5 line
    "uni_user": "p\u00e4ss\u2168\u00adw\u00f6rd",  # SASLprep at work
    "cert_other": None,
}


def scenario_hba(tls: bool) -> str:
    lines = [
        "local all postgres trust",
        "local replication postgres trust",
        "host all postgres 127.0.0.1/32 trust",
        "host replication postgres 127.0.0.1/32 trust",
        "local replication root peer",
        "local replication trust_user peer",
        "local replication rej_user reject",
        "host replication rej_user 127.0.0.1/32 reject",
        "host replication trust_user 127.0.0.1/32 trust",
        "host replication scram_user 127.0.0.1/32 scram-sha-256",
        "host replication md5_user 127.0.0.1/32 md5",
        "host replication md5_scram 127.0.0.1/32 md5",
        "host replication pw_user,pw_md5 127.0.0.1/32 password",
        "host replication uni_user 127.0.0.1/32 scram-sha-256",
        "host replication ghost 127.0.0.1/32 scram-sha-256",  # no such role: mock SCRAM
    ]
    if tls:
        lines += [
            "hostssl replication tls_scram_user 127.0.0.1/32 cert",
            "hostssl replication cert_other 127.0.0.1/32 cert",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class Oracle:
    """A real cluster set up for the scenarios, and what walstream needs to mirror it."""

    cluster: PgCluster
    rules: HbaRules
    verifiers: dict[str, Verifier]
    hba_text: str

    @property
    def tls(self) -> SslFiles | None:
        return self.cluster.ssl


def _write_datadir_file(cluster: PgCluster, name: str, text: str) -> None:
    path = cluster.datadir / name
    path.write_text(text)
    st = os.stat(cluster.datadir)
    os.chown(path, st.st_uid, st.st_gid)
    path.chmod(0o600)


@pytest.fixture(scope="module", params=VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
def oracle(request: pytest.FixtureRequest) -> Iterator[Oracle]:
    version: int = request.param
    require_version(version)
    cluster = PgCluster.create(version, ssl=version == 15)
    try:
        statements = []
        for role, password in EXTRA_ROLES.items():
            made: Verifier | None = None
            if password is not None:
                made = (
                    make_md5_verifier(password, role)
                    if role == "pw_md5"
                    else make_scram_verifier(password)
                )
            pw = f" PASSWORD '{made}'" if made is not None else ""
            statements.append(f"CREATE ROLE {role} LOGIN REPLICATION{pw};")
        cluster.psql(" ".join(statements))
        hba_text = scenario_hba(cluster.ssl is not None)
        _write_datadir_file(cluster, "pg_hba.conf", hba_text)
        cluster.restart()  # a restart, not a reload: the new rules are surely in force
        # The passwords file, as an operator would make it: one query on the primary.
        rows = cluster.psql(
            "SELECT rolname || '|' || rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL"
        ).splitlines()
        from walstream.sender.passwords import parse_verifier

        text = "".join(
            format_password_line(name, parse_verifier(value)) + "\n"
            for name, value in (row.split("|", 1) for row in rows)
        )
        yield Oracle(
            cluster, parse_hba(hba_text, "pg_hba.conf"), parse_passwords(text, "p"), hba_text
        )
    finally:
        cluster.destroy()


# ---------------------------------------------------------------------------
# A minimal walstream server, for the tests only
# ---------------------------------------------------------------------------


class MiniSender:
    """ServerConnection + the sender's authentication, answering IDENTIFY_SYSTEM."""

    def __init__(self, oracle: Oracle, socket_dir: Path) -> None:
        self.rules = oracle.rules
        self.verifiers = oracle.verifiers
        self.socket_dir = socket_dir
        self.ssl_context: ssl.SSLContext | None = None
        self.end_point: bytes | None = None
        if oracle.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(oracle.tls.server_cert, oracle.tls.server_key)
            ctx.load_verify_locations(oracle.tls.ca_cert)
            ctx.verify_mode = ssl.CERT_OPTIONAL  # as PostgreSQL with ssl_ca_file
            self.ssl_context = ctx
            self.end_point = tls_server_end_point_from_pem(oracle.tls.server_cert.read_text())
        self.port = 0
        self.failures: list[AuthFailure] = []
        self._servers: list[asyncio.Server] = []

    async def __aenter__(self) -> MiniSender:
        tcp = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = tcp.sockets[0].getsockname()[1]
        unix = await asyncio.start_unix_server(
            self._handle, path=str(self.socket_dir / f".s.PGSQL.{self.port}")
        )
        self._servers = [tcp, unix]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ServerConnection()
        pending: deque[ServerEvent] = deque()

        async def next_event() -> ServerEvent:
            while not pending:
                data = await reader.read(65536)
                pending.extend(conn.receive_data(data) if data else conn.receive_eof())
            return pending.popleft()

        sock = writer.get_extra_info("socket")
        peer = writer.get_extra_info("peername")
        local = sock.family == socket.AF_UNIX
        tls = False
        while True:
            event = await next_event()
            if isinstance(event, m.SSLRequest):
                accept = self.ssl_context is not None
                writer.write(conn.encryption_response(accept))
                await writer.drain()
                if accept:
                    assert self.ssl_context is not None
                    await writer.start_tls(self.ssl_context)
                    tls = True
            elif isinstance(event, m.GSSENCRequest):
                writer.write(conn.encryption_response(False))
            elif isinstance(event, m.StartupMessage):
                break
            else:
                return
        user = event.parameters.get("user", "")
        facts = ConnectionFacts(user, None if local else ipaddress.ip_address(peer[0]), ssl=tls)
        ssl_object = writer.get_extra_info("ssl_object") if tls else None
        auth = ServerAuthenticator(
            facts,
            self.rules.match(facts),
            self.verifiers.get(user),
            tls_end_point=self.end_point if tls else None,
            client_certificate=None
            if ssl_object is None
            else hostinfo.client_certificate(ssl_object),
            client_ca_loaded=self.ssl_context is not None,
            peer_user=hostinfo.peer_user(sock) if local else None,
        )
        step: AuthStep = auth.start()
        while True:
            writer.write(encode_step(conn, step))
            await writer.drain()
            if isinstance(step, AuthFailure):
                self.failures.append(step)
                return
            if not isinstance(step, AuthRequest):
                break
            answer = await next_event()
            if isinstance(answer, ConnectionClosed):
                return
            step = auth.receive(answer)
        for name, value in (
            ("server_version", "15.0 (walstream test)"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
            ("session_authorization", user),
        ):
            writer.write(conn.parameter_status(name, value))
        writer.write(conn.backend_key_data(4242, b"\0\0\0\1"))
        writer.write(conn.ready_for_query())
        await writer.drain()
        while True:
            event = await next_event()
            if isinstance(event, m.Query):
                out = conn.row_description(
                    [
                        "systemid",
                        m.FieldDescription("timeline", type_oid=23, type_size=4),
                        "xlogpos",
                        "dbname",
                    ]
                )
                out += conn.data_row(["7000000000000000001", "1", "0/1000000", None])
                out += conn.command_complete("IDENTIFY_SYSTEM")
                writer.write(out + conn.ready_for_query())
                await writer.drain()
            else:
                return  # Terminate or end of stream


@pytest.fixture
async def walstream_server(oracle: Oracle) -> AsyncIterator[MiniSender]:
    with tempfile.TemporaryDirectory(prefix="wsa-", dir="/tmp") as socket_dir:
        async with MiniSender(oracle, Path(socket_dir)) as server:
            yield server


# ---------------------------------------------------------------------------
# psql against both
# ---------------------------------------------------------------------------


async def psql(conninfo: str, password: str | None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSFILE"] = "/nonexistent/pgpass"
    env["PGCONNECT_TIMEOUT"] = "20"
    if password is not None:
        env["PGPASSWORD"] = password
    proc = await asyncio.create_subprocess_exec(
        str(PSQL),
        conninfo,
        "-XAtq",
        "-c",
        "IDENTIFY_SYSTEM",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def normalized(text: str, port: int, socket_dir: str) -> str:
    text = text.replace(f"port {port} failed", "port PORT failed")
    return text.replace(f'"{socket_dir}/.s.PGSQL.{port}"', '"SOCKET"')


@dataclass(frozen=True)
class Scenario:
    user: str
    password: str | None = None
    local: bool = False
    options: str = "sslmode=disable"
    tls_only: bool = False
    succeeds: bool = False
    expect: str | None = None  # a fragment of the error both must print


SCENARIOS: dict[str, Scenario] = {
    "trust": Scenario("trust_user", succeeds=True),
    "scram": Scenario("scram_user", "scrampass", succeeds=True),
    "scram-wrong": Scenario(
        "scram_user", "nope", expect='password authentication failed for user "scram_user"'
    ),
    "md5": Scenario("md5_user", "md5pass", succeeds=True),
    "md5-wrong": Scenario("md5_user", "nope", expect="password authentication failed"),
    "md5-line-scram-secret": Scenario("md5_scram", "scram on md5", succeeds=True),
    "password-scram-secret": Scenario("pw_user", "pw secret", succeeds=True),
    "password-md5-secret": Scenario("pw_md5", "md5 secret", succeeds=True),
    "password-wrong": Scenario("pw_user", "nope", expect="password authentication failed"),
    "saslprep": Scenario("uni_user", "p\u00e4ssIXw\u00f6rd", succeeds=True),  # NFKC of the stored
    "no-such-role": Scenario(
        "ghost", "boo", expect='password authentication failed for user "ghost"'
    ),
    "reject": Scenario("rej_user", expect="pg_hba.conf rejects replication connection"),
    "no-entry": Scenario("nobody", expect="no pg_hba.conf entry for replication connection"),
    "local-peer": Scenario("root", local=True, succeeds=True),
    "local-peer-wrong": Scenario("trust_user", local=True, expect="Peer authentication failed"),
    "local-reject": Scenario("rej_user", local=True, expect='for host "[local]"'),
    "local-no-entry": Scenario("scram_user", local=True, expect='from host "[local]"'),
    # TLS, against PostgreSQL 15 only.
    "tls-channel-binding": Scenario(
        "scram_user",
        "scrampass",
        options="sslmode=require channel_binding=require",
        tls_only=True,
        succeeds=True,
    ),
    "tls-channel-binding-wrong": Scenario(
        "scram_user",
        "nope",
        options="sslmode=require channel_binding=require",
        tls_only=True,
        expect="password authentication failed",
    ),
    "tls-binding-disabled": Scenario(
        "scram_user",
        "scrampass",
        options="sslmode=require channel_binding=disable",
        tls_only=True,
        succeeds=True,
    ),
    "tls-binding-required-trust": Scenario(
        "trust_user",
        options="sslmode=require channel_binding=require",
        tls_only=True,
        expect="channel binding required, but server authenticated client without channel binding",
    ),
    "tls-md5-binding-required": Scenario(
        "md5_user",
        "md5pass",
        options="sslmode=require channel_binding=require",
        tls_only=True,
        expect="channel binding required but not supported by server's authentication request",
    ),
    "tls-reject": Scenario(
        "rej_user", options="sslmode=require", tls_only=True, expect=", SSL encryption"
    ),
    "tls-no-entry": Scenario(
        "nobody", options="sslmode=require", tls_only=True, expect=", SSL encryption"
    ),
    "cert": Scenario(
        "tls_scram_user", options="sslmode=require {client_cert}", tls_only=True, succeeds=True
    ),
    "cert-other-user": Scenario(
        "cert_other",
        options="sslmode=require {client_cert}",
        tls_only=True,
        expect='certificate authentication failed for user "cert_other"',
    ),
    "cert-missing": Scenario(
        "tls_scram_user",
        options="sslmode=require",
        tls_only=True,
        expect="connection requires a valid client certificate",
    ),
    "tls-verify-full": Scenario(
        "scram_user",
        "scrampass",
        options="sslmode=verify-full sslrootcert={ca} channel_binding=require",
        tls_only=True,
        succeeds=True,
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_psql_sees_the_same_server(
    oracle: Oracle, walstream_server: MiniSender, name: str
) -> None:
    scenario = SCENARIOS[name]
    if scenario.tls_only and oracle.tls is None:
        pytest.skip("this PostgreSQL build has no TLS")
    options = scenario.options
    if oracle.tls is not None:
        client_cert = f"sslcert={oracle.tls.client_cert} sslkey={oracle.tls.client_key}"
        options = options.format(client_cert=client_cert, ca=oracle.tls.ca_cert)
    outputs = []
    for port, socket_dir in (
        (oracle.cluster.port, str(oracle.cluster.socket_dir)),
        (walstream_server.port, str(walstream_server.socket_dir)),
    ):
        host = socket_dir if scenario.local else "127.0.0.1"
        conninfo = f"host={host} port={port} user={scenario.user} replication=true {options}"
        code, err = await psql(conninfo, scenario.password)
        outputs.append((code, normalized(err, port, socket_dir)))
    real, ours = outputs
    assert ours == real
    if scenario.succeeds:
        assert real[0] == 0, real[1]
    else:
        assert real[0] != 0
        assert scenario.expect is not None
        assert scenario.expect in real[1]


def test_refusal_messages_are_postgresqls(oracle: Oracle) -> None:
    # Direct check of the words against the server for each refusal kind.
    from walstream.sender.hba import rejection_message

    cases = [
        (ConnectionFacts("rej_user", ipaddress.ip_address("127.0.0.1")), True),
        (ConnectionFacts("nobody", ipaddress.ip_address("127.0.0.1")), False),
        (ConnectionFacts("rej_user", None), True),
        (ConnectionFacts("nobody", None), False),
    ]
    for facts, explicit in cases:
        host = str(oracle.cluster.socket_dir) if facts.address is None else "127.0.0.1"
        env_conninfo = (
            f"host={host} port={oracle.cluster.port} user={facts.user} replication=true "
            "sslmode=disable"
        )
        code, err = asyncio.run(psql(env_conninfo, None))
        assert code != 0
        assert f"FATAL:  {rejection_message(facts, explicit=explicit)}\n" in err


# ---------------------------------------------------------------------------
# Verifiers
# ---------------------------------------------------------------------------


def test_pg_authid_verifiers_parse(oracle: Oracle) -> None:
    rows = oracle.cluster.psql(
        "SELECT rolname || '|' || rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL"
    ).splitlines()
    assert len(rows) >= 6
    stored = dict(row.split("|", 1) for row in rows)
    for name, verifier in oracle.verifiers.items():
        assert str(verifier) == stored[name]  # round-trips byte for byte
    assert oracle.verifiers["md5_user"] == make_md5_verifier("md5pass", "md5_user")
    scram = oracle.verifiers["scram_user"]
    assert isinstance(scram, ScramVerifier)
    assert scram.verify_password("scrampass")


def test_alter_role_stores_our_verifier(oracle: Oracle) -> None:
    for password in ("plain", "caf\u00e9 \u00bd", "\u00e9\x07raw"):  # the last is not SASLprep-able
        verifier = make_scram_verifier(password)
        oracle.cluster.psql(f"ALTER ROLE pw_user PASSWORD '{verifier}'")
        assert oracle.cluster.psql(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'pw_user'"
        ) == str(verifier)
        conninfo = (
            f"host=127.0.0.1 port={oracle.cluster.port} user=pw_user replication=true "
            "sslmode=disable"
        )
        code, err = asyncio.run(psql(conninfo, password))
        assert code == 0, err
    # Leave the role as the scenarios expect it.
    original = oracle.verifiers["pw_user"]
    oracle.cluster.psql(f"ALTER ROLE pw_user PASSWORD '{original}'")


def test_postgresql_makes_the_verifiers_we_make(oracle: Oracle) -> None:
    # Same password and salt: PostgreSQL's own secret must equal ours. The
    # salt is fixed by reading PostgreSQL's and recomputing with it.
    for password in ("plain", "p\u00e4ss\u2168\u00adw\u00f6rd", "\u00e9\x07raw", "\u0627\u0628"):
        oracle.cluster.psql(
            "SET password_encryption = 'scram-sha-256'; "
            f"ALTER ROLE cert_other PASSWORD '{password}'"
        )
        stored = oracle.cluster.psql(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'cert_other'"
        )
        from walstream.sender.passwords import parse_verifier

        theirs = parse_verifier(stored)
        assert make_scram_verifier(password, salt=theirs.salt) == theirs  # type: ignore[union-attr]
    oracle.cluster.psql("SET password_encryption = 'md5'; ALTER ROLE cert_other PASSWORD 'x y'")
    stored = oracle.cluster.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'cert_other'")
    assert stored == str(make_md5_verifier("x y", "cert_other"))
    oracle.cluster.psql("ALTER ROLE cert_other PASSWORD NULL")


# ---------------------------------------------------------------------------
# Hand-made SCRAM messages: the same verdict from both
# ---------------------------------------------------------------------------

PROOF = base64.b64encode(bytes(32)).decode()


def _nonce(server_first: bytes) -> str:
    return server_first.decode().split(",")[0][2:]


def _final(template: str) -> Callable[[bytes], bytes]:
    return lambda server_first: template.format(nonce=_nonce(server_first), proof=PROOF).encode()


@dataclass(frozen=True)
class Sasl:
    mechanism: str
    first: bytes
    final: Callable[[bytes], bytes] | None = None
    tls: bool = False
    user: str = "scram_user"


SASL_CASES: dict[str, Sasl] = {
    "empty": Sasl("SCRAM-SHA-256", b""),
    "nul": Sasl("SCRAM-SHA-256", b"n,,n=\0,r=abc"),
    "bad-flag": Sasl("SCRAM-SHA-256", b"x,,n=,r=abc"),
    "no-comma": Sasl("SCRAM-SHA-256", b"n"),
    "no-comma-2": Sasl("SCRAM-SHA-256", b"n;,n=,r=abc"),
    "authzid": Sasl("SCRAM-SHA-256", b"n,a=someone,n=,r=abc"),
    "junk-authzid": Sasl("SCRAM-SHA-256", b"n,x,n=,r=abc"),
    "extension": Sasl("SCRAM-SHA-256", b"n,,m=ext,n=,r=abc"),
    "no-user": Sasl("SCRAM-SHA-256", b"n,,r=abc"),
    "user-no-equals": Sasl("SCRAM-SHA-256", b"n,,n,r=abc"),
    "no-nonce": Sasl("SCRAM-SHA-256", b"n,,n="),
    "nonprintable-nonce": Sasl("SCRAM-SHA-256", b"n,,n=,r=a\x01bc"),
    "bad-extension": Sasl("SCRAM-SHA-256", b"n,,n=,r=abc,1=x"),
    "extension-no-value": Sasl("SCRAM-SHA-256", b"n,,n=,r=abc,x"),
    "binding-without-plus": Sasl("SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=abc"),
    "final-wrong-binding": Sasl(
        "SCRAM-SHA-256", b"n,,n=,r=abc", _final("c=eSws,r={nonce},p={proof}")
    ),
    "final-no-nonce": Sasl("SCRAM-SHA-256", b"n,,n=,r=abc", _final("c=biws")),
    "final-no-proof": Sasl("SCRAM-SHA-256", b"n,,n=,r=abc", _final("c=biws,r={nonce}")),
    "final-short-proof": Sasl("SCRAM-SHA-256", b"n,,n=,r=abc", _final("c=biws,r={nonce},p=AAAA")),
    "final-garbage": Sasl(
        "SCRAM-SHA-256", b"n,,n=,r=abc", _final("c=biws,r={nonce},p={proof},x=1")
    ),
    "final-nonce-mismatch": Sasl(
        "SCRAM-SHA-256", b"n,,n=,r=abc", _final("c=biws,r=abcX,p={proof}")
    ),
    "final-wrong-proof": Sasl(
        "SCRAM-SHA-256", b"n,,n=,r=abc", _final("c=biws,r={nonce},p={proof}")
    ),
    "final-extension-then-proof": Sasl(
        "SCRAM-SHA-256", b"n,,n=,r=abc", _final("c=biws,r={nonce},x=y,p={proof}")
    ),
    "final-empty": Sasl("SCRAM-SHA-256", b"n,,n=,r=abc", _final("")),
    "y-flag-plain": Sasl("SCRAM-SHA-256", b"y,,n=,r=abc", _final("c=eSws,r={nonce},p={proof}")),
    "mock-role": Sasl(
        "SCRAM-SHA-256", b"n,,n=,r=abc", _final("c=biws,r={nonce},p={proof}"), user="ghost"
    ),
    # Over TLS (PostgreSQL 15).
    "y-flag-over-tls": Sasl("SCRAM-SHA-256", b"y,,n=,r=abc", tls=True),
    "plus-without-binding": Sasl("SCRAM-SHA-256-PLUS", b"n,,n=,r=abc", tls=True),
    "plus-y-flag": Sasl("SCRAM-SHA-256-PLUS", b"y,,n=,r=abc", tls=True),
    "plus-tls-unique": Sasl("SCRAM-SHA-256-PLUS", b"p=tls-unique,,n=,r=abc", tls=True),
    "plus-wrong-data": Sasl(
        "SCRAM-SHA-256-PLUS",
        b"p=tls-server-end-point,,n=,r=abc",
        _final(
            "c="
            + base64.b64encode(b"p=tls-server-end-point,," + bytes(32)).decode()
            + ",r={nonce},p={proof}"
        ),
        tls=True,
    ),
    "plus-biws": Sasl(
        "SCRAM-SHA-256-PLUS",
        b"p=tls-server-end-point,,n=,r=abc",
        _final("c=biws,r={nonce},p={proof}"),
        tls=True,
    ),
}


def _read_until(
    conn: ClientConnection, sock: socket.socket | ssl.SSLSocket, kinds: tuple[type, ...]
) -> object:
    while True:
        data = sock.recv(65536)
        events = conn.receive_data(data) if data else [ConnectionClosed()]
        for ev in events:
            if isinstance(ev, (*kinds, m.ErrorResponse, ConnectionClosed)):
                return ev


def real_sasl(cluster: PgCluster, case: Sasl) -> dict[str, str] | str:
    """Drive a real server through the hand-made exchange; its error fields, or how far it got."""
    conn = ClientConnection()
    raw = socket.create_connection(("127.0.0.1", cluster.port), timeout=30)
    sock: socket.socket | ssl.SSLSocket = raw
    try:
        if case.tls:
            raw.sendall(conn.ssl_request())
            assert raw.recv(1) == b"S"
            conn.receive_data(b"S")
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(raw)
        sock.sendall(conn.startup({"user": case.user, "replication": "true"}))
        ev = _read_until(conn, sock, (m.AuthenticationSASL,))
        assert isinstance(ev, m.AuthenticationSASL), ev
        sock.sendall(
            conn.authentication_response(m.SASLInitialResponse(case.mechanism, case.first))
        )
        ev = _read_until(conn, sock, (m.AuthenticationSASLContinue,))
        if isinstance(ev, m.ErrorResponse):
            return dict(ev.fields)
        assert isinstance(ev, m.AuthenticationSASLContinue), ev
        if case.final is None:
            return "continue"
        sock.sendall(conn.authentication_response(m.SASLResponse(case.final(ev.data))))
        ev = _read_until(conn, sock, (m.AuthenticationSASLFinal,))
        if isinstance(ev, m.ErrorResponse):
            return dict(ev.fields)
        return type(ev).__name__
    finally:
        sock.close()


def our_sasl(oracle: Oracle, case: Sasl) -> dict[str, str] | str:
    facts = ConnectionFacts(case.user, ipaddress.ip_address("127.0.0.1"), ssl=case.tls)
    end_point = None
    if case.tls:
        assert oracle.tls is not None
        end_point = tls_server_end_point_from_pem(oracle.tls.server_cert.read_text())
    auth = ServerAuthenticator(
        facts, oracle.rules.match(facts), oracle.verifiers.get(case.user), tls_end_point=end_point
    )
    auth.start()
    step = auth.receive(m.SASLInitialResponse(case.mechanism, case.first))
    if isinstance(step, AuthFailure):
        return step.fields()
    assert isinstance(step, AuthRequest)
    assert isinstance(step.message, m.AuthenticationSASLContinue)
    if case.final is None:
        return "continue"
    step = auth.receive(m.SASLResponse(case.final(step.message.data)))
    if isinstance(step, AuthFailure):
        return step.fields()
    return "AuthenticationSASLFinal"


@pytest.mark.parametrize("name", list(SASL_CASES))
def test_scram_messages_get_postgresqls_verdict(oracle: Oracle, name: str) -> None:
    case = SASL_CASES[name]
    if case.tls and oracle.tls is None:
        pytest.skip("this PostgreSQL build has no TLS")
    real = real_sasl(oracle.cluster, case)
    ours = our_sasl(oracle, case)
    if isinstance(real, dict):
        assert isinstance(ours, dict), ours
        keys = ("S", "C", "M", "D")
        assert {k: ours.get(k) for k in keys} == {k: real.get(k) for k in keys}
    else:
        assert ours == real


# ---------------------------------------------------------------------------
# pg_hba.conf: our errors are pg_hba_file_rules' errors
# ---------------------------------------------------------------------------

SAME = "same"  # ours equals the server's verdict, error or not

# line -> SAME, or the start of walstream's own refusal where it differs on purpose.
HBA_CORPUS: dict[str, str] = {
    "local replication": SAME,
    "local": SAME,
    "host replication all": SAME,
    "host replication all 127.0.0.1/32": SAME,
    "host replication all 127.0.0.1/33 trust": SAME,
    "host replication all ::1/129 trust": SAME,
    "host replication all 127.0.0.1/-1 trust": SAME,
    "host replication all 127.0.0.1/+8 trust": SAME,
    "host replication all 127.0.0.1/8x trust": SAME,
    "host replication all 127.0.0.1/ trust": SAME,
    "host replication all 127.0.0.1 trust": SAME,
    "host replication all 127.0.0.1 255.255.255.0": SAME,
    "host replication all 127.0.0.1 255.255.255.0 trust": SAME,
    "host replication all 127.0.0.1 255.255.255.0x trust": SAME,
    'host replication all 127.0.0.1 "" trust': SAME,
    "host replication all 127.0.0.1 ffff:: trust": SAME,
    "host replication all 127.0.0.1 0.0.0.0 trust": SAME,
    "host replication all 127.1 255.0.0.0 trust": SAME,
    "host replication all fe80::1%lo/64 trust": SAME,
    "host replication all ::ffff:127.0.0.1/128 trust": SAME,
    "host replication all foo.example.com/24 trust": SAME,
    "hast replication all 127.0.0.1/32 trust": SAME,
    "local,host replication all trust": SAME,
    "host replication all 127.0.0.1/32,::1/128 trust": SAME,
    "host replication all 127.0.0.1/32 trust,md5": SAME,
    "host replication all 127.0.0.1/32 foo": SAME,
    'host replication all 127.0.0.1/32 "trust"': SAME,
    '"host" replication all 127.0.0.1/32 trust': SAME,
    "host replication all 127.0.0.1/32 peer": SAME,
    "host replication all 127.0.0.1/32 sspi": SAME,
    "host replication all 127.0.0.1/32 bsd": SAME,
    "host replication all 127.0.0.1/32 trust foo": SAME,
    "host replication all 127.0.0.1/32 trust map": SAME,
    "host replication all 127.0.0.1/32 trust foo=bar": SAME,
    "host replication all 127.0.0.1/32 trust =x": SAME,
    "host replication all 127.0.0.1 255.255.255.0 trust extra": SAME,
    "host replication all 127.0.0.1/32 trust clientcert=verify-ca": SAME,
    "host replication all 127.0.0.1/32 trust clientcert=": SAME,
    "host replication all 127.0.0.1/32 scram-sha-256 clientcert=verify-full": SAME,
    "host replication all 127.0.0.1/32 trust clientname=CN": SAME,
    "host replication all 127.0.0.1/32 md5 ldapserver=x": SAME,
    "host replication all 127.0.0.1/32 md5 krb_realm=x": SAME,
    "local replication all ident": SAME,
    'host "replication" all 127.0.0.1/32 trust': SAME,
    'host "" "" 127.0.0.1/32 trust': SAME,
    "host replication all 127.0.0.1/32 trust # comment": SAME,
    "host replication all samehost trust": SAME,
    "host replication all samenet md5": SAME,
    "hostnossl replication all 127.0.0.1/32 password": SAME,
    "hostnogssenc replication all all scram-sha-256": SAME,
    "local replication all scram-sha-256": SAME,
    # walstream refuses what it cannot honour; PostgreSQL accepts these.
    "host replication +grp 127.0.0.1/32 trust": 'group membership "+grp"',
    "host replication all 1.2.3.4.5 trust": 'host name "1.2.3.4.5"',
    'host replication all "all" trust': 'host name "all"',
    'host replication all "" trust': 'host name ""',
    "host replication all 127.0.0.1/32 ident": 'invalid authentication method "ident": not',
    "local replication all peer map=x": 'authentication option "map" is not supported',
    # walstream's words for an inclusion; PostgreSQL's are its open error.
    "host replication @users 127.0.0.1/32 trust": 'file inclusion "@users"',
}

# Where the server's answer depends on how it was built (TLS, LDAP, PAM, GSSAPI)
# or on its version: compared only with the servers named.
HBA_CORPUS_SOME: dict[str, tuple[tuple[int, ...], str]] = {
    "host replication all 127.0.0.1/32 cert": ((15,), SAME),
    "local replication all cert": ((15,), SAME),
    "hostssl replication all 127.0.0.1/32 trust": ((15,), SAME),
    "hostssl replication all 127.0.0.1/32 cert clientcert=verify-ca": ((15,), SAME),
    "hostssl replication all 127.0.0.1/32 scram-sha-256 clientcert=verify-full": ((15,), SAME),
    "hostssl replication all 127.0.0.1/32 md5 clientcert=verify-ca clientname=CN": ((15,), SAME),
    # PostgreSQL forgets to say why (the view's error is empty); walstream
    # says what its log says.
    "hostssl replication all 127.0.0.1/32 trust clientcert=verify-xx": (
        (15,),
        'invalid value for clientcert: "verify-xx"',
    ),
    "hostssl replication all 127.0.0.1/32 trust clientname=XX": (
        (15,),
        'invalid value for clientname: "XX"',
    ),
    "host replication all 127.0.0.1/32 trust map=foo": ((18,), SAME),  # 18 lists oauth too
    "host replication /( 127.0.0.1/32 trust": ((16, 18), 'invalid regular expression "(": '),
    "host /( all 127.0.0.1/32 trust": ((16, 18), 'invalid regular expression "(": '),
    "host replication all 127.0.0.1/32 pam": ((16, 18), SAME),
    "host replication all 127.0.0.1/32 ldap": ((16, 18), SAME),
    "host replication all 127.0.0.1/32 gss": ((16, 18), SAME),
    "host replication all 127.0.0.1/32 radius": ((), 'invalid authentication method "radius": not'),
}


def server_verdicts(cluster: PgCluster, lines: list[str]) -> dict[int, tuple[str | None, bool]]:
    """line number -> (error, parsed) from pg_hba_file_rules for a file of ``lines``.

    The view reads the file on disk, so the file is swapped in and out again
    without a reload: the server keeps the rules it runs with.
    """
    path = cluster.datadir / "pg_hba.conf"
    original = path.read_text()
    try:
        _write_datadir_file(cluster, "pg_hba.conf", "\n".join(lines) + "\n")
        rows = cluster.psql(
            "SELECT line_number || '|' || coalesce(error, '<none>') || '|' || coalesce(type, '') "
            "FROM pg_hba_file_rules ORDER BY line_number"
        ).splitlines()
    finally:
        _write_datadir_file(cluster, "pg_hba.conf", original)
    verdicts: dict[int, tuple[str | None, bool]] = {}
    for row in rows:
        number, error, kind = row.split("|", 2)
        verdicts[int(number)] = (None if error == "<none>" else error, bool(kind))
    return verdicts


def our_verdict(line: str) -> str | None:
    try:
        parse_hba(line + "\n", "pg_hba.conf")
    except HbaFileError as e:
        (error,) = e.errors
        return error.message
    return None


def test_hba_errors_are_pg_hba_file_rules_errors(oracle: Oracle) -> None:
    version = oracle.cluster.version
    corpus = dict(HBA_CORPUS)
    for line, (versions, expectation) in HBA_CORPUS_SOME.items():
        if version in versions or not versions:
            corpus[line] = expectation
    lines = list(corpus)
    verdicts = server_verdicts(oracle.cluster, lines)
    mismatches = []
    for number, line in enumerate(lines, start=1):
        error, parsed = verdicts[number]
        if error is None and not parsed:
            error = "<the server failed the line without a message>"
        ours = our_verdict(line)
        expectation = corpus[line]
        if expectation == SAME:
            if ours != error:
                mismatches.append((line, error, ours))
        elif ours is None or not ours.startswith(expectation):
            mismatches.append((line, expectation, ours))
    assert mismatches == []


def test_hba_valid_lines_read_the_same(oracle: Oracle) -> None:
    # Lines both accept: the view's address and netmask are ours too.
    lines = [
        "host replication all 127.1 255.0.0.0 trust",
        "host replication all 10.0.0.1/8 md5",
        "host replication all fe80::1%lo/64 trust",
        "host replication all ::ffff:127.0.0.1/128 trust",
        "host replication all 192.168.1.1 255.255.0.255 trust",
    ]
    path = oracle.cluster.datadir / "pg_hba.conf"
    original = path.read_text()
    try:
        _write_datadir_file(oracle.cluster, "pg_hba.conf", "\n".join(lines) + "\n")
        rows = oracle.cluster.psql(
            "SELECT address || '|' || netmask FROM pg_hba_file_rules ORDER BY line_number"
        ).splitlines()
    finally:
        _write_datadir_file(oracle.cluster, "pg_hba.conf", original)
    for line, row in zip(lines, rows, strict=True):
        (parsed,) = parse_hba(line + "\n", "f").lines
        assert parsed.network is not None
        family = parsed.network.family
        address, netmask = row.split("|")
        width = 32 if family == socket.AF_INET else 128
        version_of = ipaddress.IPv4Address if width == 32 else ipaddress.IPv6Address
        assert str(version_of(parsed.network.address)) == str(ipaddress.ip_address(address))
        assert str(version_of(parsed.network.mask)) == str(ipaddress.ip_address(netmask))


def test_continuation_lines_as_the_server_numbers_them(oracle: Oracle) -> None:
    lines = [
        "host replication all \\",
        "   127.0.0.1/32 \\",
        "   trust",
        "host replication all 127.0.0.1/33 \\",
        "   trust",
    ]
    verdicts = server_verdicts(oracle.cluster, lines)
    assert sorted(verdicts) == [1, 4]
    with pytest.raises(HbaFileError) as info:
        parse_hba("\n".join(lines) + "\n", "f")
    (error,) = info.value.errors
    assert (error.line_number, error.message) == (4, verdicts[4][0])
