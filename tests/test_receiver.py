"""The receiver against pg_receivewal, the primary and pg_stat_replication as oracles."""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from walstream import LSN

from .pgcluster import PgCluster, wait_until

VERSIONS = [15, 16, 18]
IDS = [f"pg{v}" for v in VERSIONS]


def _receiver_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "walstream.receiver", *args]


def _receivewal_cmd(cluster: PgCluster, *args: str) -> list[str]:
    return [str(cluster.program("pg_receivewal")), *args]


def _generate_wal(cluster: PgCluster, segments: int) -> LSN:
    """Real WAL across several segments: rows, and segment switches with zero tails."""
    cluster.psql("CREATE TABLE IF NOT EXISTS gen(x int, pad text)")
    for i in range(segments):
        cluster.psql(
            f"INSERT INTO gen SELECT g, repeat('w', 300) FROM generate_series(1, {500 + i}) g"
        )
        if i % 2:
            cluster.psql("SELECT pg_switch_wal()")
    return LSN.parse(cluster.current_lsn())


def _gunzip_partial(data: bytes) -> bytes:
    """Decompress a gzip stream that may not be finished (an open .gz.partial)."""
    return zlib.decompressobj(31).decompress(data)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _modes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()}


@contextlib.contextmanager
def _running(cmd: list[str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def _run_both(
    cluster: PgCluster,
    tmp_path: Path,
    *extra: str,
    segments: int = 6,
    endpos_in_backlog: bool = False,
) -> tuple[Path, Path, LSN]:
    """Stream one range with pg_receivewal and with walstream, from slots made at the same point.

    ``endpos_in_backlog``: endpos 100 bytes before a segment boundary two
    segments short of the end, so that both tools stop in the middle of WAL
    that arrives in large batches.
    """
    ours, theirs = tmp_path / "walstream", tmp_path / "pg_receivewal"
    ours.mkdir()
    theirs.mkdir()
    for d in (ours, theirs):
        d.chmod(0o777)  # pg_receivewal runs as root here anyway; keep it simple
    slots = {"ws_ours": ours, "ws_theirs": theirs}
    for slot in slots:
        cluster.psql(f"SELECT pg_create_physical_replication_slot('{slot}', true)")
    try:
        endpos = _generate_wal(cluster, segments)
        if endpos_in_backlog:
            seg_size = int(
                cluster.psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
            )
            endpos = LSN((endpos // seg_size - 2) * seg_size - 100)
        # Both tools stop once past endpos: give them WAL beyond it now rather
        # than waiting for the server's next background record.
        cluster.psql("INSERT INTO gen VALUES (0, 'past endpos')")
        conninfo = cluster.conninfo("scram_user", "scrampass")
        common = ["-n", "-E", str(endpos), "--no-sync", *extra]
        mine = subprocess.run(
            _receiver_cmd("-d", conninfo, "-D", str(ours), "-S", "ws_ours", *common),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert mine.returncode == 0, mine.stderr
        assert 'replication slot "ws_ours" will not advance' in mine.stderr  # --no-sync
        ref = subprocess.run(
            _receivewal_cmd(cluster, "-d", conninfo, "-D", str(theirs), "-S", "ws_theirs", *common),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert ref.returncode == 0, ref.stderr
    finally:
        for slot in slots:
            cluster.psql(f"SELECT pg_drop_replication_slot('{slot}')")
    return ours, theirs, endpos


def _assert_same_directories(ours: Path, theirs: Path, endpos: LSN, seg_size: int) -> None:
    a, b = _files(ours), _files(theirs)
    assert sorted(a) == sorted(b)
    assert _modes(ours) == _modes(theirs)
    for name in a:
        if ".partial" not in name:
            assert a[name] == b[name], f"{name} differs"
            continue
        # The open segment holds whole XLogData messages past endpos, and how
        # far past depends on timing; up to endpos the bytes must agree.
        x, y = a[name], b[name]
        if name.endswith(".gz.partial"):
            x, y = _gunzip_partial(x), _gunzip_partial(y)
        upto = endpos % seg_size
        assert x[:upto] == y[:upto], f"{name} differs before endpos"
        assert len(a[name]) == len(b[name]) or name.endswith(".gz.partial")


def test_endpos_inside_a_backlog_stops_where_pg_receivewal_does(pg_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The message that passes endpos is the last written, cut at the segment boundary after it."""
    cluster: PgCluster = pg_factory(15, wal_segsize_mb=1)
    ours, theirs, endpos = _run_both(cluster, tmp_path, endpos_in_backlog=True)
    _assert_same_directories(ours, theirs, endpos, 1024 * 1024)
    last = max(p.name for p in ours.iterdir())
    assert last == f"00000001{0:08X}{endpos // (1024 * 1024):08X}"  # complete, nothing after it


@pytest.mark.parametrize("version", VERSIONS, ids=IDS)
def test_directory_equals_pg_receivewal(pg_factory, tmp_path: Path, version: int) -> None:  # type: ignore[no-untyped-def]
    cluster: PgCluster = pg_factory(version, wal_segsize_mb=1)
    ours, theirs, endpos = _run_both(cluster, tmp_path)
    _assert_same_directories(ours, theirs, endpos, 1024 * 1024)
    completed = [p for p in ours.iterdir() if ".partial" not in p.name]
    assert len(completed) >= 3
    for path in completed:
        on_primary = cluster.datadir / "pg_wal" / path.name
        if on_primary.exists():
            assert path.read_bytes() == on_primary.read_bytes(), f"{path.name} != primary's"


@pytest.mark.parametrize("version", VERSIONS, ids=IDS)
def test_gzip_directory_equals_pg_receivewal(pg_factory, tmp_path: Path, version: int) -> None:  # type: ignore[no-untyped-def]
    cluster: PgCluster = pg_factory(version, wal_segsize_mb=1)
    ours, theirs, endpos = _run_both(cluster, tmp_path, "-Z", "gzip:5")
    _assert_same_directories(ours, theirs, endpos, 1024 * 1024)
    assert any(p.name.endswith(".gz") for p in ours.iterdir())


def test_sixteen_megabyte_segments(pg_server: PgCluster, tmp_path: Path) -> None:
    ours, theirs, endpos = _run_both(pg_server, tmp_path, segments=2)
    _assert_same_directories(ours, theirs, endpos, 16 * 1024 * 1024)


def _replication_row(cluster: PgCluster, app: str) -> list[str]:
    row = cluster.psql(
        "SELECT state, sync_state, write_lsn, flush_lsn FROM pg_stat_replication "
        f"WHERE application_name = '{app}'"
    )
    return row.split("|") if row else []


@pytest.mark.parametrize("version", VERSIONS, ids=IDS)
def test_synchronous_standby(pg_factory, tmp_path: Path, version: int) -> None:  # type: ignore[no-untyped-def]
    app = "ws_sync"
    cluster: PgCluster = pg_factory(version, wal_segsize_mb=1)
    cluster.set_conf(synchronous_standby_names=f"FIRST 1 ({app})")
    conninfo = cluster.conninfo("scram_user", "scrampass")
    cmd = _receiver_cmd(
        "-d", conninfo, "-D", str(tmp_path), "--synchronous", "--application-name", app
    )
    with _running(cmd) as proc:
        wait_until(
            lambda: _replication_row(cluster, app)[:2] == ["streaming", "sync"], what="sync state"
        )
        cluster.psql("CREATE TABLE t(x int); INSERT INTO t VALUES (1)")  # returns: we fsynced it
        _, _, write, flush = _replication_row(cluster, app)
        assert LSN.parse(flush) <= LSN.parse(write)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0

    # Without the standby a commit waits ...
    done = threading.Event()

    def commit() -> None:
        cluster.psql("INSERT INTO t VALUES (2)")
        done.set()

    waiter = threading.Thread(target=commit, daemon=True)
    waiter.start()
    assert not done.wait(2), "a synchronous commit completed with no synchronous standby"
    # ... and completes once the receiver is back (resuming from its directory).
    with _running(cmd):
        assert done.wait(60), "the waiting commit did not complete after the receiver came back"
    assert any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def _run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _receiver_cmd(*args), capture_output=True, text=True, timeout=timeout, check=False
    )


def test_errors_exit_1_with_a_clear_message(pg_server: PgCluster, tmp_path: Path) -> None:
    bad_password = _run_cli(
        "-d", pg_server.conninfo("scram_user", "wrong"), "-D", str(tmp_path), "-n"
    )
    assert bad_password.returncode == 1
    assert 'password authentication failed for user "scram_user"' in bad_password.stderr

    unreachable = _run_cli("-d", "host=127.0.0.1 port=1 user=x", "-D", str(tmp_path), "-n")
    assert unreachable.returncode == 1
    assert "Connection refused" in unreachable.stderr

    missing_dir = _run_cli("-d", pg_server.conninfo("trust_user"), "-D", str(tmp_path / "nope"))
    assert missing_dir.returncode == 1
    assert "nope" in missing_dir.stderr

    no_slot = _run_cli(
        "-d", pg_server.conninfo("trust_user"), "-D", str(tmp_path), "-S", "nosuch", "-n"
    )
    assert no_slot.returncode == 1
    assert '"nosuch" does not exist' in no_slot.stderr

    no_repl = _run_cli("-d", pg_server.conninfo("norepl_user"), "-D", str(tmp_path), "-n")
    assert no_repl.returncode == 1
    assert "replication" in no_repl.stderr.lower()
    assert not list(tmp_path.iterdir())


def test_create_and_drop_slot(pg_server: PgCluster) -> None:
    conninfo = pg_server.conninfo("trust_user")
    assert _run_cli("-d", conninfo, "-S", "ws_cli_slot", "--create-slot").returncode == 0
    again = _run_cli("-d", conninfo, "-S", "ws_cli_slot", "--create-slot")
    assert again.returncode == 1
    assert (
        _run_cli("-d", conninfo, "-S", "ws_cli_slot", "--create-slot", "--if-not-exists").returncode
        == 0
    )
    assert _run_cli("-d", conninfo, "-S", "ws_cli_slot", "--drop-slot").returncode == 0
    assert (
        pg_server.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ws_cli_slot'")
        == "0"
    )


def test_slot_actions_exit_even_with_a_directory(pg_server: PgCluster, tmp_path: Path) -> None:
    """As pg_receivewal: --create-slot and --drop-slot do their action, then exit 0."""
    conninfo = pg_server.conninfo("trust_user")
    for action in ("--create-slot", "--drop-slot"):
        done = _run_cli("-d", conninfo, "-S", "ws_cli_slot_d", "-D", str(tmp_path), action)
        assert done.returncode == 0, done.stderr
    assert not list(tmp_path.iterdir())  # nothing streamed
    assert pg_server.psql(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ws_cli_slot_d'"
    ) == "0"  # fmt: skip


def test_a_slot_still_in_use_is_retried_after_the_first_connection(  # type: ignore[no-untyped-def]
    pg_factory, tmp_path: Path
) -> None:
    """Only a failed first connection is fatal: a busy slot waits (pg_receivewal retries too)."""
    cluster: PgCluster = pg_factory(15, wal_segsize_mb=1)
    cluster.psql("SELECT pg_create_physical_replication_slot('busy', true)")
    conninfo = cluster.conninfo("trust_user")
    holder_dir, ours = tmp_path / "holder", tmp_path / "ours"
    holder_dir.mkdir()
    ours.mkdir()
    holder = subprocess.Popen(
        _receivewal_cmd(cluster, "-d", conninfo, "-D", str(holder_dir), "-S", "busy"),
        stderr=subprocess.DEVNULL,
    )
    active = "SELECT active FROM pg_replication_slots WHERE slot_name = 'busy'"
    try:
        wait_until(lambda: cluster.psql(active) == "t", what="the slot held by pg_receivewal")
        once = _run_cli("-d", conninfo, "-D", str(ours), "-S", "busy", "-n")
        assert once.returncode == 1
        assert "is active for PID" in once.stderr
        assert "error: disconnected" in once.stderr  # pg_receivewal -n's last line
        with _running(_receiver_cmd("-d", conninfo, "-D", str(ours), "-S", "busy", "-v")) as proc:
            time.sleep(1.5)  # a few failed attempts on the busy slot
            assert proc.poll() is None, "gave up on a slot that is only busy"
            holder.terminate()
            holder.wait(30)
            wait_until(
                lambda: cluster.psql(
                    "SELECT application_name FROM pg_stat_replication"
                ) == "walstream",
                what="the receiver streaming once the slot was free",
            )  # fmt: skip
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    finally:
        holder.kill()
        holder.wait()


def test_help_explains_itself() -> None:
    out = _run_cli("--help")
    assert out.returncode == 0
    for flag in (
        "--directory",
        "--endpos",
        "--synchronous",
        "--no-sync",
        "--slot",
        "--compress",
        "--primary",
    ):
        assert flag in out.stdout


def test_lz4_directory_equals_pg_receivewal(pg_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Debian's PostgreSQL 15 pg_receivewal is built with lz4 (the 16/18 wheels are not)."""
    pytest.importorskip("lz4.frame")
    cluster: PgCluster = pg_factory(15, wal_segsize_mb=1)
    ours, theirs, _ = _run_both(cluster, tmp_path, "-Z", "lz4")
    a, b = _files(ours), _files(theirs)
    assert sorted(a) == sorted(b)
    completed = [n for n in a if n.endswith(".lz4")]
    assert completed
    for name in completed:
        assert a[name] == b[name], f"{name} differs"


def test_quorum_standby(pg_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """ANY 1 (...): the receiver is listed as 'quorum' and commits wait for it."""
    app = "ws_any"
    cluster: PgCluster = pg_factory(15, wal_segsize_mb=1)
    cluster.set_conf(synchronous_standby_names=f"ANY 1 ({app}, nobody_else)")
    conninfo = cluster.conninfo("scram_user", "scrampass")
    cmd = _receiver_cmd(
        "-d", conninfo, "-D", str(tmp_path), "--synchronous", "--application-name", app
    )
    with _running(cmd) as proc:
        wait_until(
            lambda: _replication_row(cluster, app)[:2] == ["streaming", "quorum"], what="quorum"
        )
        cluster.psql("CREATE TABLE q(x int); INSERT INTO q VALUES (1)")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


@pytest.mark.parametrize("mode", ["synchronous", "plain"])
def test_keepalive_replies_keep_wal_sender_timeout_away(  # type: ignore[no-untyped-def]
    pg_factory, tmp_path: Path, mode: str
) -> None:
    """With status updates every 10 s and wal_sender_timeout 1 s, only the answers to the
    keepalives that ask for a reply keep the walsender from dropping the connection.

    In synchronous mode an idle stream's keepalive is answered in the read callback
    (nothing is left to fsync), otherwise by the receive loop.
    """
    app = f"ws_keepalive_{mode}"
    cluster: PgCluster = pg_factory(15, wal_segsize_mb=1)
    cluster.set_conf(wal_sender_timeout="1s")
    extra = ["--synchronous"] if mode == "synchronous" else []
    cmd = _receiver_cmd("-d", f"{cluster.conninfo('trust_user')} application_name={app}",
                        "-D", str(tmp_path), "-s", "10", *extra)  # fmt: skip
    query = f"SELECT pid, reply_time FROM pg_stat_replication WHERE application_name = '{app}'"
    with _running(cmd) as proc:
        wait_until(lambda: cluster.psql(query) != "", what="streaming")
        cluster.psql("CREATE TABLE k(x int); INSERT INTO k VALUES (1)")  # a batch, then idle
        pid, first_reply = cluster.psql(query).split("|")
        replies = {first_reply}
        deadline = time.monotonic() + 5  # five timeouts of idle stream
        while time.monotonic() < deadline:
            row = cluster.psql(query)
            assert row.split("|")[0] == pid, f"the walsender dropped the connection: {row!r}"
            replies.add(row.split("|")[1])
            time.sleep(0.2)
        assert len(replies) >= 4, replies  # answered about every wal_sender_timeout / 2
        assert proc.poll() is None
    assert "replication timeout" not in cluster.log_path.read_text()


def _backlog(pg_factory: Callable[..., PgCluster], slot: str) -> tuple[PgCluster, LSN]:
    """A 1 MB-segment server whose slot holds a few segments of WAL; WAL past the end too."""
    cluster = pg_factory(15, wal_segsize_mb=1)
    cluster.psql(f"SELECT pg_create_physical_replication_slot('{slot}', true)")
    endpos = _generate_wal(cluster, 4)
    cluster.psql("INSERT INTO gen VALUES (0, 'past endpos')")
    return cluster, endpos


def test_on_segment_complete_runs_for_each_segment_and_is_waited_for(  # type: ignore[no-untyped-def]
    pg_factory, tmp_path: Path
) -> None:
    """%p and %f (quoted), %% a percent sign; failures logged; the receiver waits for them."""
    cluster, endpos = _backlog(pg_factory, "hooked")
    wal, log = tmp_path / "wal %f dir", tmp_path / "hook.log"  # %p holds a space and a %f
    wal.mkdir()
    hook = f"test -f %p && echo %f 100%% >> {shlex.quote(str(log))}; sleep 1; exit 3"
    done = _run_cli(
        "-d", cluster.conninfo("trust_user"), "-D", str(wal), "-S", "hooked", "-n", "-v",
        "-E", str(endpos), "--on-segment-complete", hook,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    completed = sorted(p.name for p in wal.iterdir() if ".partial" not in p.name)
    assert len(completed) >= 2
    # Every hook ran to its end before the receiver exited: each line is there.
    assert sorted(log.read_text().splitlines()) == [f"{name} 100%" for name in completed]
    assert done.stderr.count("--on-segment-complete command failed with exit code 3") == len(
        completed
    )
    for name in completed:  # pg_receivewal -v's line for each
        end = LSN((int(name[16:], 16) + 1) << 20)
        assert f"finished segment at {end} (timeline 1)" in done.stderr


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "no-sync"])
async def test_library_status_snapshot_and_segment_hook(  # type: ignore[no-untyped-def]
    pg_factory, tmp_path: Path, sync: bool
) -> None:
    """The embedded receiver's snapshot: state, host, timeline, positions, rate and lag."""
    import asyncio

    from walstream.receiver import ReceiverOptions, WalReceiver

    cluster: PgCluster = pg_factory(15, wal_segsize_mb=1)
    completed: list[Path] = []
    receiver = WalReceiver(
        ReceiverOptions(
            directory=tmp_path,
            conninfo=cluster.conninfo("trust_user"),
            sync=sync,
            status_interval=1.0,
            on_segment_complete=completed.append,
        )
    )
    task = asyncio.create_task(receiver.run())

    async def until(what: str, predicate: Callable[[], bool]) -> None:
        for _ in range(600):
            if predicate():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {receiver.status()}")

    try:
        await until("streaming", lambda: receiver.status().state == "streaming")
        end = await asyncio.to_thread(_generate_wal, cluster, 3)
        await until("the WAL written", lambda: receiver.status().write >= end)
        status = receiver.status()
        assert status.host == f"127.0.0.1:{cluster.port}"
        assert status.timeline == 1
        assert status.synced is sync
        assert status.server_wal_end >= end
        assert status.bytes_per_second > 0  # measured while it arrived
        assert status.segments_completed >= 1
        if sync:
            # Default fsync rules: durable per completed segment, as pg_receivewal.
            seg = 1 << 20
            await until("flushed", lambda: receiver.status().flush >= end // seg * seg)
            assert receiver.status().lag_bytes < seg
        else:
            assert status.flush == 0  # nothing is durable without fsync
            await until("no lag", lambda: receiver.status().lag_bytes == 0)  # what is written
        assert len(completed) == receiver.status().segments_completed  # each, once
        assert all(p.is_file() and p.stat().st_size == 1 << 20 for p in completed)
        await until("the rate going idle", lambda: receiver.status().bytes_per_second == 0)
    finally:
        receiver.stop()
        await asyncio.wait_for(task, 30)
    assert receiver.status().state == "stopped"


def test_a_hung_hook_does_not_keep_the_receiver_from_exiting(  # type: ignore[no-untyped-def]
    pg_factory, tmp_path: Path
) -> None:
    """Hooks are waited for at exit; a signal during that wait ends it."""
    cluster, endpos = _backlog(pg_factory, "hung")
    wal, pids = tmp_path / "wal", tmp_path / "hook.pids"
    wal.mkdir()
    hook = f"echo $$ >> {pids}; exec sleep 300 </dev/null >/dev/null 2>&1"
    cmd = _receiver_cmd(
        "-d", cluster.conninfo("trust_user"), "-D", str(wal), "-S", "hung", "-n", "-v",
        "-E", str(endpos), "--on-segment-complete", hook,
    )  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        wait_until(
            lambda: any("--on-segment-complete command(s) to finish" in line for line in lines),
            what="the receiver waiting for its hook at exit",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, "".join(lines)
        reader.join(15)
        assert any("still running" in line for line in lines), lines
    finally:
        proc.kill()
        proc.wait()
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def test_through_endpos_follows_pg_receivewals_stop_rule() -> None:
    """Checked after each message and at each segment boundary inside one."""
    from walstream.protocol.replication import XLogData
    from walstream.receiver.policy import through_endpos as _through_endpos

    seg = 1 << 20

    def msgs(*spans: tuple[int, int]) -> list[XLogData]:
        return [XLogData(LSN(a), LSN(0), 0, bytes(b - a)) for a, b in spans]

    def spans(chunks: list[XLogData]) -> list[tuple[int, int]]:
        return [(c.data_start, c.data_end) for c in chunks]

    batch = msgs((seg - 300, seg - 100), (seg - 100, seg + 5000), (seg + 5000, seg + 9000))
    # endpos before a boundary inside a message: that message is cut at the boundary.
    assert spans(_through_endpos(batch, LSN(seg - 50), seg)) == [
        (seg - 300, seg - 100), (seg - 100, seg)
    ]  # fmt: skip
    # endpos exactly on the boundary: not yet past it there, so the whole message.
    assert spans(_through_endpos(batch, LSN(seg), seg)) == [
        (seg - 300, seg - 100), (seg - 100, seg + 5000)
    ]  # fmt: skip
    # endpos at a message's end: the next message is the one that passes it.
    assert spans(_through_endpos(batch, LSN(seg - 100), seg)) == [
        (seg - 300, seg - 100), (seg - 100, seg)
    ]  # fmt: skip
    # A message spanning two boundaries past endpos stops at the first of them.
    long = msgs((seg - 10, 2 * seg + 10))
    assert spans(_through_endpos(long, LSN(seg - 20), seg)) == [(seg - 10, seg)]
    assert spans(_through_endpos(batch, LSN(seg + 9000), seg)) == spans(batch)  # not reached


def test_a_start_already_past_endpos_receives_nothing(pg_server: PgCluster, tmp_path: Path) -> None:
    """As pg_receivewal, which checks endpos before every START_REPLICATION."""
    pg_server.psql("SELECT pg_switch_wal()")
    pg_server.psql("SELECT pg_logical_emit_message(false, 'past', 'a segment start')")
    end = LSN.parse(pg_server.current_lsn())
    seg = int(pg_server.psql("SHOW wal_segment_size").removesuffix("MB")) << 20
    before = LSN(end // seg * seg - 1)  # the start (this segment's) is past it
    tools = {"ours": _receiver_cmd, "theirs": functools.partial(_receivewal_cmd, pg_server)}
    for name, cmd in tools.items():
        directory = tmp_path / name
        directory.mkdir()
        args = ["-d", pg_server.conninfo("trust_user"), "-D", str(directory), "-n"]
        done = subprocess.run(
            cmd(*args, "-E", str(before)),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert not list(directory.iterdir()), name
