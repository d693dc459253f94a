"""Running `walstream send` and walstream's receiver as the tests' peers do: real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Self

from walstream.lsn import LSN

from .cluster import TestCluster

_ROOT = Path(__file__).resolve().parents[2]  # where `python -m tests.support...` runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def receive(cluster: TestCluster, directory: Path, end: str | LSN, *args: str) -> None:
    """walstream's receiver into ``directory`` up to ``end`` (-E), from the first segment seeded."""
    done = subprocess.run(
        [sys.executable, "-m", "walstream.receiver", "-d", cluster.conninfo("trust_user"),
         "-D", str(directory), "-E", str(end), "-n", *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def seed(directory: Path, segment: str) -> None:
    """An empty ``.partial``: pg_receivewal and walstream both resume at that segment."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{segment}.partial").touch()


class SenderProcess:
    """``python -m walstream.sender`` on a port of its own, stopped by signal, its log kept."""

    def __init__(self, directory: Path, *args: str, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.args = args
        self.log = directory.parent / f"sender-{self.port}.log"
        self.proc: subprocess.Popen[str] | None = None

    what = "sender"
    cwd: Path | None = None  # where the command runs (None: the test's own directory)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "walstream.sender", "-D", str(self.directory),
                "--listen", f"127.0.0.1:{self.port}", "-v", *self.args]  # fmt: skip

    def start(self) -> Self:
        """Start it; return once it accepts connections."""
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                self.command(), stderr=log, stdout=log, text=True, cwd=self.cwd
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the {self.what} did not start:\n{self.log_text()}"
                    ) from None
                time.sleep(0.05)

    def conninfo(self, user: str = "trust_user", **extra: str) -> str:
        words = [f"host=127.0.0.1 port={self.port} user={user}"]
        words += [f"{k}={v}" for k, v in extra.items()]
        return " ".join(words)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal it and wait; its exit status."""
        proc = self.proc
        assert proc is not None
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class RelayProcess(SenderProcess):
    """``python -m walstream.relay`` from a primary: WAL on a port, /status and /metrics on another.

    ``start()`` returns once it listens, which it does once the upstream's
    first WAL is in its directory. With ``ledger``, it runs through
    tests/support/relay_ledger.py, which records what it made durable.
    """

    def __init__(
        self,
        directory: Path,
        conninfo: str,
        *args: str,
        port: int | None = None,
        ledger: Path | None = None,
    ) -> None:
        super().__init__(directory, *args, port=port)
        self.conninfo_upstream = conninfo
        self.http = free_port()
        self.log = directory.parent / f"relay-{self.port}.log"
        self.ledger = ledger

    what = "relay"
    cwd = _ROOT  # `python -m tests.support.relay_ledger` is found from the checkout

    def command(self) -> list[str]:
        program = ["-m", "walstream.relay"]
        if self.ledger is not None:
            program = ["-m", "tests.support.relay_ledger", str(self.ledger)]
        return [sys.executable, *program, "-D", str(self.directory),
                "-d", self.conninfo_upstream, "--listen", f"127.0.0.1:{self.port}",
                "--http", f"127.0.0.1:{self.http}", "-v", *self.args]  # fmt: skip

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=30) as r:
            body: bytes = r.read()
        return body.decode()

    def status(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.get("/status"))
        return document


def standby_behind(
    primary: TestCluster, server: SenderProcess, name: str, **conf: str
) -> TestCluster:
    """A hot standby made with pg_basebackup from ``primary``, streaming from ``server``.

    ``server`` is a walstream sender or relay; the standby's application_name
    is ``name``; it follows timelines and retries quickly. ``conf`` adds settings.
    """
    backup = primary.base_backup(primary.base / f"{name}.backup", "-X", "none")
    standby = TestCluster.from_backup(
        primary.version,
        backup,
        primary.base,
        name=name,
        conf={
            "primary_conninfo": f"'{server.conninfo(application_name=name)}'",
            "hot_standby": "on",
            "recovery_target_timeline": "latest",
            "wal_receiver_status_interval": "1s",
            "wal_retrieve_retry_interval": "200ms",
            **conf,
        },
        signal="standby",
    )
    primary.standbys.append(standby)  # destroyed with the primary
    standby.start()
    return standby
