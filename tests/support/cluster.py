"""The test harness's throwaway clusters: walstream.embedded's, with test roles, TLS and standbys.

Real server binaries, never a mock (see walstream.embedded for where they
come from and how they run as an unprivileged user). Every cluster here gets
the roles of :data:`USERS` (one per authentication method the tests need,
and a few that must be refused), optionally TLS with a throwaway CA, and the
helpers the replication tests use: base backups, standbys, waiting for replay.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from walstream.embedded import PgCluster, _service_account, find_bindir

__all__ = ["USERS", "SslFiles", "TestCluster", "make_test_ca"]

# Roles every cluster gets, for authentication tests: name -> (password, hba method).
USERS: Final[dict[str, tuple[str | None, str]]] = {
    "trust_user": (None, "trust"),
    "md5_user": ("md5pass", "md5"),
    "scram_user": ("scrampass", "scram-sha-256"),
    "norepl_user": (None, "trust"),  # lacks the REPLICATION attribute
    "noentry_user": (None, ""),  # has no pg_hba.conf line at all
    "tls_scram_user": ("tlspass", "scram-sha-256"),  # hostssl only (TLS clusters)
}


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


class TestCluster(PgCluster):
    """A cluster with the test roles (and TLS, standbys, backups)."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(self, version: int, bindir: Path, base: Path, name: str) -> None:
        if os.environ.get("WALSTREAM_NO_PG") == "1":
            raise RuntimeError("a test run with -m 'not pg' started a server: mark the test pg")
        super().__init__(version, bindir, base, name)
        self.ssl: SslFiles | None = None
        self.standbys: list[TestCluster] = []  # made by make_standby; destroyed with us

    def _prepare(self, *, ssl: bool = False, **options: Any) -> dict[str, str]:
        settings = super()._prepare(**options)
        if not ssl:
            return settings
        uid, gid = _service_account()
        self.ssl = make_test_ca(self.base / "ssl")
        for src, dst in (
            (self.ssl.server_cert, "server.crt"),
            (self.ssl.server_key, "server.key"),
            (self.ssl.ca_cert, "ca.crt"),
        ):
            target = self.datadir / dst
            shutil.copy(src, target)
            os.chown(target, uid, gid)
            target.chmod(0o600)
        return settings | {
            "ssl": "on",
            "ssl_cert_file": "'server.crt'",
            "ssl_key_file": "'server.key'",
            "ssl_ca_file": "'ca.crt'",
        }

    def _roles(self) -> Mapping[str, tuple[str | None, str]]:
        return USERS

    def _role_attributes(self, user: str) -> str:
        return "LOGIN" if user == "norepl_user" else "LOGIN REPLICATION"

    def _hba_lines(self, user: str, method: str) -> list[str]:
        if user != "tls_scram_user":
            return super()._hba_lines(user, method)
        kinds = [("hostssl", "127.0.0.1/32"), ("hostssl", "::1/128")] if self.ssl else []
        return [f"{kind} {db} {user} {address} {method}" for kind, address in kinds
                for db in ("replication", "all")]  # fmt: skip

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
    ) -> TestCluster:
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

    # -- replication helpers ------------------------------------------------

    def make_standby(self, name: str = "standby", **conf: str) -> TestCluster:
        """A streaming standby of this cluster (pg_basebackup -R -X stream), started."""
        standby = TestCluster(self.version, self.bindir, self.base, name)
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

    def destroy(self) -> None:
        for standby in self.standbys:
            standby.destroy()
        super().destroy()
