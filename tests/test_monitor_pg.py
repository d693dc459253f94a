"""/metrics and /status of a real receiver streaming from a real PostgreSQL (15, 16, 18).

The oracles: the receiver's own status object, and the primary's
pg_stat_replication row for it (what the receiver reported is what the
primary shows). The HTTP side is read with the stdlib's HTTP client and
Prometheus's text-format parser, while hostile clients hang on, flood or
send garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from walstream.lsn import LSN
from walstream.monitor import MonitorServer, collector
from walstream.monitor import status as status_doc
from walstream.receiver import ReceiverOptions, WalReceiver

from .pgcluster import PgCluster, wait_until


def fetch(port: int, path: str) -> tuple[int, str, str]:
    """GET with the stdlib's HTTP client: status, content type, body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def metrics(port: int) -> dict[str, float]:
    """Every sample of /metrics, parsed by Prometheus's parser: name{labels} -> value."""
    code, content_type, body = fetch(port, "/metrics")
    assert code == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def replication_row(cluster: PgCluster, application_name: str) -> dict[str, str]:
    columns = ("write_lsn", "flush_lsn", "replay_lsn", "state")
    line = cluster.psql(
        f"SELECT {', '.join(columns)} FROM pg_stat_replication "
        f"WHERE application_name = '{application_name}'"
    )
    return dict(zip(columns, line.split("|"), strict=True)) if line else {}


def as_lsn(text: str) -> int:
    return LSN.parse(text) if text else 0  # NULL (nothing reported) as the receiver's 0


def hostile_clients(port: int) -> list[socket.socket]:
    """Send a huge head and garbage; return a slow loris and a silent connection, still open.

    Blocking: from an event loop, run it in a thread (the server answers on that loop).
    """
    held: list[socket.socket] = []
    loris = socket.create_connection(("127.0.0.1", port))
    loris.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
    held.append(loris)
    held.append(socket.create_connection(("127.0.0.1", port)))  # says nothing
    for junk in (
        b"GET /metrics HTTP/1.1\r\nX-Big: " + b"x" * 1_000_000 + b"\r\n\r\n",
        bytes(range(256)) * 64,
        b"\r\n" * 10_000,
    ):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(30)
            answer = b""
            with contextlib.suppress(OSError):  # refused before all was sent: a reset is fine
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                while chunk := s.recv(65536):
                    answer += chunk
            assert answer == b"" or answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ")), answer
    return held


@contextlib.contextmanager
def holding(sockets: list[socket.socket]) -> Iterator[None]:
    try:
        yield
    finally:
        for s in sockets:
            s.close()


async def _until(what: str, predicate: Callable[[], Awaitable[bool] | bool], detail: Any) -> None:
    for _ in range(1200):
        result = predicate()
        if await result if isinstance(result, Awaitable) else result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {detail()}")


async def test_receiver_metrics_and_status_match_pg_stat_replication(
    pg_server: PgCluster, tmp_path: Path
) -> None:
    cluster = pg_server
    name = f"monitor_{cluster.version}"
    await asyncio.to_thread(cluster.psql, "CREATE TABLE IF NOT EXISTS monitor_rows(x int)")
    receiver = WalReceiver(
        ReceiverOptions(
            directory=tmp_path,
            conninfo=cluster.conninfo("trust_user"),
            connect_params={"application_name": name},
            synchronous=True,  # a reply per flush: the primary's row follows at once
        )
    )
    server = MonitorServer("127.0.0.1", 0, collector(receiver=receiver))
    await server.start()
    port = server.addresses[0][1]
    task = asyncio.create_task(receiver.run())

    async def consistent() -> bool:
        """/metrics, the receiver's status and the primary's row agree (no WAL in between)."""
        seen = await asyncio.to_thread(metrics, port)
        row = await asyncio.to_thread(replication_row, cluster, name)
        st = receiver.status()
        return bool(row) and (
            seen["walstream_upstream_write_lsn_bytes"] == st.write == as_lsn(row["write_lsn"])
            and seen["walstream_upstream_flush_lsn_bytes"] == st.flush == as_lsn(row["flush_lsn"])
            and seen["walstream_upstream_apply_lsn_bytes"] == st.apply == as_lsn(row["replay_lsn"])
            and st.flush == st.server_wal_end  # caught up with what the server said
        )

    def detail() -> object:
        return receiver.status(), replication_row(cluster, name)

    try:
        await _until("streaming", lambda: receiver.status().state == "streaming", detail)
        for _ in range(3):
            await asyncio.to_thread(
                cluster.psql, "INSERT INTO monitor_rows SELECT generate_series(1, 2000)"
            )
        end = LSN.parse(await asyncio.to_thread(cluster.current_lsn))
        await _until("the WAL flushed", lambda: receiver.status().flush >= end, detail)
        await _until("metrics, status and pg_stat_replication agreeing", consistent, detail)

        seen = await asyncio.to_thread(metrics, port)
        st = receiver.status()
        timeline = int(await asyncio.to_thread(
            cluster.psql, "SELECT timeline_id FROM pg_control_checkpoint()"
        ))  # fmt: skip
        assert seen["walstream_upstream_timeline"] == st.timeline == timeline
        assert seen["walstream_upstream_server_wal_end_lsn_bytes"] == st.server_wal_end >= end
        assert seen["walstream_upstream_lag_bytes"] == 0
        assert seen["walstream_upstream_lag_seconds"] == 0.0
        assert seen["walstream_upstream_state{state=streaming}"] == 1
        assert seen["walstream_upstream_state{state=waiting}"] == 0
        assert seen[f"walstream_upstream_server_info{{host=127.0.0.1:{cluster.port}}}"] == 1
        # Received from the start of the segment it began in, to where it is.
        seg = 16 << 20
        assert seen["walstream_upstream_received_bytes_total"] >= st.write - st.write // seg * seg
        assert seen["walstream_upstream_errors_total"] == 0
        # --synchronous: an fsync per batch at least, each counted once.
        fsyncs = seen["walstream_fsync_duration_seconds_count"]
        assert fsyncs >= 3
        assert seen["walstream_fsync_duration_seconds_bucket{le=+Inf}"] == fsyncs
        assert seen["walstream_fsync_duration_seconds_sum"] > 0

        code, content_type, body = await asyncio.to_thread(fetch, port, "/status")
        assert (code, content_type) == (200, "application/json")
        doc = json.loads(body)
        assert doc["clients"] == []
        up = doc["upstream"]
        row = await asyncio.to_thread(replication_row, cluster, name)
        assert LSN.parse(up["flush_lsn"]) == LSN.parse(row["flush_lsn"]) == st.flush
        assert LSN.parse(up["write_lsn"]) == LSN.parse(row["write_lsn"]) == st.write
        assert up["flush_lsn"] == str(st.flush)  # X/X, as PostgreSQL 15 prints it
        assert LSN.parse(up["server_wal_end_lsn"]) == st.server_wal_end
        assert (up["timeline"], up["lag_bytes"], up["lag_seconds"]) == (timeline, 0, 0.0)
        assert up["state"] == "streaming"

        # Hostile clients hang on and send junk: the receiver streams on, and is watched.
        with holding(await asyncio.to_thread(hostile_clients, port)):
            await asyncio.to_thread(
                cluster.psql, "INSERT INTO monitor_rows SELECT generate_series(1, 2000)"
            )
            end = LSN.parse(await asyncio.to_thread(cluster.current_lsn))

            async def flushed_in_metrics() -> bool:
                seen = await asyncio.to_thread(metrics, port)
                return seen["walstream_upstream_flush_lsn_bytes"] >= end

            await _until("the new WAL in /metrics", flushed_in_metrics, detail)
            await _until("metrics, status and pg_stat_replication agreeing", consistent, detail)
    finally:
        server.close()
        await server.wait_closed()
        receiver.stop()
        await asyncio.wait_for(task, 30)


def test_status_rows_have_pg_stat_replications_columns(pg_server: PgCluster) -> None:
    """/status's client rows are keyed by the real view's column names, in its order."""
    columns = pg_server.psql(
        "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute "
        "WHERE attrelid = 'pg_stat_replication'::regclass AND attnum > 0"
    ).split(",")
    assert tuple(columns) == status_doc.PG_STAT_REPLICATION_COLUMNS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_receive_cli_serves_http_until_stopped(pg_factory: Any, tmp_path: Path) -> None:
    """``walstream receive --http``: /metrics follows the primary; hostile clients change naught."""
    cluster: PgCluster = pg_factory(16)
    port = _free_port()
    cmd = [
        sys.executable, "-m", "walstream.receiver", "-D", str(tmp_path),
        "-d", cluster.conninfo("trust_user"), "--application-name", "cli_http",
        "--synchronous", "--http", f"127.0.0.1:{port}", "-v",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:

        def up() -> bool:
            assert proc.poll() is None, proc.communicate()
            try:
                return metrics(port)["walstream_upstream_state{state=streaming}"] == 1
            except OSError:
                return False

        wait_until(up, what="the receiver streaming and its /metrics")
        with holding(hostile_clients(port)):
            cluster.psql("CREATE TABLE t AS SELECT generate_series(1, 10000) AS x")
            end = LSN.parse(cluster.current_lsn())

            def agrees() -> bool:
                seen = metrics(port)
                row = replication_row(cluster, "cli_http")
                return bool(row) and (
                    seen["walstream_upstream_flush_lsn_bytes"] >= end
                    and seen["walstream_upstream_flush_lsn_bytes"] == as_lsn(row["flush_lsn"])
                )

            wait_until(agrees, what="/metrics agreeing with pg_stat_replication")
        code, _, body = fetch(port, "/status")
        assert code == 200
        assert LSN.parse(json.loads(body)["upstream"]["flush_lsn"]) >= end
        assert fetch(port, "/nothing")[0] == 404
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert f"serving /metrics and /status on http://127.0.0.1:{port}/" in stderr
        with pytest.raises(urllib.error.URLError, match="refused"):
            fetch(port, "/metrics")  # stopped with the receiver
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def test_receive_cli_refuses_a_taken_http_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "walstream.receiver", "-D", str(tmp_path),
             "-d", "host=/nonexistent", "--http", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith(
        f'walstream receive: error: could not listen for HTTP on "127.0.0.1" port {port}:'
    )
    assert not list(tmp_path.iterdir())  # nothing received: it never connected
