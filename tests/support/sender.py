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
from typing import Any

from walstream.lsn import LSN

from .cluster import TestCluster


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

    def start(self) -> SenderProcess:
        cmd = [sys.executable, "-m", "walstream.sender", "-D", str(self.directory),
               "--listen", f"127.0.0.1:{self.port}", "-v", *self.args]  # fmt: skip
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, stderr=log, stdout=log, text=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the sender did not start:\n{self.log_text()}") from None
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

    def __enter__(self) -> SenderProcess:
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
    """``python -m walstream.relay`` from a primary: served on a port, its /status on another."""

    def __init__(self, directory: Path, conninfo: str, *args: str, port: int | None = None) -> None:
        super().__init__(directory, *args, port=port)
        self.conninfo_upstream = conninfo
        self.http = free_port()

    def start(self) -> RelayProcess:
        cmd = [sys.executable, "-m", "walstream.relay", "-D", str(self.directory),
               "-d", self.conninfo_upstream, "--listen", f"127.0.0.1:{self.port}",
               "--http", f"127.0.0.1:{self.http}", "-v", *self.args]  # fmt: skip
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, stderr=log, stdout=log, text=True)
        deadline = time.monotonic() + 60
        while True:  # serving once the primary's first WAL is there
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the relay did not start:\n{self.log_text()}") from None
                time.sleep(0.05)

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/status", timeout=10) as r:
            status: dict[str, Any] = json.load(r)
        return status
