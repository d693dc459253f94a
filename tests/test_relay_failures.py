"""The relay under failure: a failover upstream, SIGKILL under synchronous load, retention.

primary -> ``walstream relay`` -> real hot standby, every hop a real
process. The oracles are PostgreSQL's: the new primary's pg_wal and history
file (what the relay and the standby behind it must end up with), pg_waldump
on the primary's pg_wal (where each acknowledged commit record ends), the
standby's own pg_last_wal_receive_lsn (what it ever received), a real
primary's error for a removed segment, and Prometheus's text-format parser.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from walstream import LSN
from walstream.wal.segment import parse_segment_name

from .pgcluster import VERSIONS, PgCluster, wait_until
from .support.sender import SenderProcess, free_port

SEG = 1024 * 1024
_ROOT = Path(__file__).resolve().parents[1]  # where `python -m tests.support...` runs


class _Relay(SenderProcess):
    """``python -m walstream.relay`` streaming from ``upstream``, serving on its own port.

    ``start()`` returns once it listens, which it does once the upstream's
    first WAL is in its directory; /status and /metrics on port ``http``.
    With ``ledger``, it runs through tests/support/relay_ledger.py.
    """

    def __init__(
        self, directory: Path, upstream: str, *args: str, ledger: Path | None = None
    ) -> None:
        super().__init__(directory, *args)
        self.upstream = upstream
        self.http = free_port()
        self.log = directory.parent / f"relay-{self.port}.log"
        self.ledger = ledger

    def start(self) -> _Relay:
        program = ["-m", "walstream.relay"]
        if self.ledger is not None:
            program = ["-m", "tests.support.relay_ledger", str(self.ledger)]
        cmd = [sys.executable, *program, "-D", str(self.directory),
               "-d", self.upstream, "--listen", f"127.0.0.1:{self.port}",
               "--http", f"127.0.0.1:{self.http}", "-v", *self.args]  # fmt: skip
        with open(self.log, "a") as log:
            proc = self.proc = subprocess.Popen(cmd, stderr=log, stdout=log, text=True, cwd=_ROOT)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the relay did not start:\n{self.log_text()}") from None
                time.sleep(0.05)

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=30) as r:
            body: bytes = r.read()
        return body.decode()

    def status(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.get("/status"))
        return document


def _standby_behind(primary: PgCluster, relay: _Relay, name: str, **conf: str) -> PgCluster:
    """A hot standby made with pg_basebackup from the primary, streaming from the relay."""
    backup = primary.base_backup(primary.base / f"{name}.backup", "-X", "none")
    standby = PgCluster.from_backup(
        primary.version,
        backup,
        primary.base,
        name=name,
        conf={
            "primary_conninfo": f"'{relay.conninfo(application_name=name)}'",
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


def _standby_of(primary: PgCluster, name: str) -> PgCluster:
    """A hot standby streaming straight from ``primary`` (make_standby without its slow
    spread checkpoint: pg_basebackup -c fast)."""
    backup = primary.base_backup(primary.base / f"{name}.backup", "-X", "stream")
    standby = PgCluster.from_backup(
        primary.version,
        backup,
        primary.base,
        name=name,
        conf={"primary_conninfo": f"'{primary.conninfo('trust_user', application_name=name)}'"},
        signal="standby",
    )
    primary.standbys.append(standby)
    standby.start()
    return standby


def _segments(directory: Path) -> dict[int, list[tuple[int, Path, bool]]]:
    """segno -> [(timeline, path, partial)] of the segment files in ``directory``."""
    found: dict[int, list[tuple[int, Path, bool]]] = {}
    for path in directory.iterdir():
        n = parse_segment_name(path.name, SEG)
        if n is not None:
            found.setdefault(n.segno, []).append((n.timeline, path, n.partial))
    return found


_FILL = "INSERT INTO t SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 1500) g"
_DIGEST = "SELECT count(*), sum(hashtext(pad)) FROM t"


@pytest.mark.parametrize("version", VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
def test_failover_upstream_reaches_the_standby_behind_the_relay(  # type: ignore[no-untyped-def]
    pg_factory, tmp_path: Path, version: int
) -> None:
    """Primary fails over to its standby: the relay and its standby follow to timeline 2.

    The relay streams from ``host=A,B target_session_attrs=primary``; the
    standby behind it is never reconfigured. It must see timeline 1 end at
    the switch point, fetch the history file through the relay, and go on
    on timeline 2 with every row the new primary writes.
    """
    primary: PgCluster = pg_factory(version, wal_segsize_mb=1)
    upstream = _standby_of(primary, "upstream")
    # WAL in the primary's current segment, which the relay starts at: it serves
    # once that segment's first page is there (an idle primary may not write it for 15 s).
    primary.psql("CREATE TABLE t(x int, pad text)")
    conninfo = (
        f"host=127.0.0.1,127.0.0.1 port={primary.port},{upstream.port} user=scram_user "
        "password=scrampass target_session_attrs=primary connect_timeout=5 "
        "application_name=relay"
    )
    directory = tmp_path / "relay"
    directory.mkdir()
    with _Relay(directory, conninfo) as relay:
        standby = _standby_behind(primary, relay, "behind")
        for _ in range(3):
            primary.psql(_FILL)
        want = primary.psql(_DIGEST)
        wait_until(lambda: standby.psql(_DIGEST) == want, what="timeline 1 rows behind the relay")
        upstream.wait_for_replay(LSN.parse(primary.current_lsn()))
        primary.stop("fast")
        upstream.promote()
        for _ in range(3):
            upstream.psql(_FILL)
        upstream.psql("SELECT pg_switch_wal()")
        upstream.psql(_FILL)
        want = upstream.psql(_DIGEST)
        end = LSN.parse(upstream.current_lsn())
        wait_until(
            lambda: standby.psql(_DIGEST) == want,
            what=f"rows written after the promotion behind the relay\n{relay.log_text()}",
        )
        standby.wait_for_replay(end)
        assert standby.psql("SELECT received_tli FROM pg_stat_wal_receiver") == "2"
        status = relay.status()
        assert status["upstream"]["timeline"] == 2
        assert status["upstream"]["host"] == f"127.0.0.1:{upstream.port}"
        (row,) = status["clients"]
        assert row["application_name"] == "behind"
        assert LSN.parse(row["flush_lsn"]) >= end
        assert relay.stop(signal.SIGTERM) == 0, relay.log_text()
    log = relay.log_text()
    assert "switched to timeline 2" in log, log

    # The history file, as the new primary wrote it: in the relay's directory and on the standby.
    history = (upstream.datadir / "pg_wal" / "00000002.history").read_bytes()
    assert (directory / "00000002.history").read_bytes() == history
    assert (standby.datadir / "pg_wal" / "00000002.history").read_bytes() == history
    switch = LSN.parse(history.decode().split("\t")[1])
    # The relay's WAL: a run of segments with no gap, each complete one equal to the
    # server's that wrote it; the switch segment on timeline 2.
    by_segno = _segments(directory)
    segnos = sorted(by_segno)
    assert segnos == list(range(segnos[0], segnos[-1] + 1)), f"gap: {segnos}"
    assert segnos[-1] == end // SEG
    for segno in segnos:
        for tli, path, partial in by_segno[segno]:
            if partial:
                continue
            server = primary if tli == 1 else upstream
            expected = (server.datadir / "pg_wal" / path.name).read_bytes()
            assert path.read_bytes() == expected, f"{path.name} differs from the server's"
    assert any(tli == 2 for tli, _, _ in by_segno[switch // SEG])
