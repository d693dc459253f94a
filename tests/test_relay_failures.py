"""The relay under failure: a failover upstream, SIGKILL under synchronous load, retention.

primary -> ``walstream relay`` -> real hot standby on 15, 16 and 18, every hop a real
process. The oracles are PostgreSQL's: the new primary's pg_wal and history
file (what the relay and the standby behind it must end up with), pg_waldump
on the primary's pg_wal (where each acknowledged commit record ends), the
standby's own pg_last_wal_receive_lsn (what it ever received), a real
primary's error for a removed segment, and Prometheus's text-format parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import walstream
from walstream import LSN
from walstream.errors import ServerError
from walstream.wal.segment import parse_segment_name, segment_name

from .pgcluster import VERSIONS, PgCluster, wait_until
from .support.sender import RelayProcess, standby_behind
from .test_receiver_crash import _commit_ends

SEG = 1024 * 1024


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
    with RelayProcess(directory, conninfo) as relay:
        standby = standby_behind(primary, relay, "behind")
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


# -- SIGKILL under a synchronous load -------------------------------------------------------

KILLS = 12


class _DirectoryEnd:
    """Where the gap-free WAL of a relay's directory ends, every byte checked against the
    primary's pg_wal (timeline 1; a completed segment is checked once, it never changes)."""

    def __init__(self, directory: Path, primary_wal: Path) -> None:
        self.directory = directory
        self.primary_wal = primary_wal
        self._checked: set[str] = set()

    def __call__(self) -> LSN:
        by_segno = {s: files for s, files in _segments(self.directory).items()}
        if not by_segno:
            return LSN(0)
        segnos = sorted(by_segno)
        assert segnos == list(range(segnos[0], segnos[-1] + 1)), f"gap in segments: {segnos}"
        end = LSN(0)
        for segno in segnos:
            ((tli, path, partial),) = by_segno[segno]
            assert tli == 1
            theirs_path = self.primary_wal / path.name.removesuffix(".partial")
            if not partial:
                if path.name not in self._checked:
                    assert path.read_bytes() == theirs_path.read_bytes(), f"{path.name} differs"
                    self._checked.add(path.name)
                end = LSN((segno + 1) * SEG)
                continue
            assert segno == segnos[-1], f"{path.name}: a .partial before the last segment"
            ours, theirs = path.read_bytes(), theirs_path.read_bytes()
            if len(ours) < SEG:
                # Killed between creating the file and the end of its pre-padding
                # (pg_receivewal can be too): zeros only, padded again on restart.
                assert not any(ours), f"{path.name} is short and holds more than padding"
                return LSN(segno * SEG)
            assert len(ours) == SEG, f"{path.name} has {len(ours)} bytes"
            # Received WAL, then the zeros of pre-padding: where they stop matching the
            # primary's file is where the received WAL ends.
            same = next((i for i in range(SEG) if ours[i] != theirs[i]), SEG)
            assert not any(ours[same:]), f"{path.name}: bytes after {same:#x} not the primary's"
            end = LSN(segno * SEG + same)
        return end

    def completed_end(self) -> LSN:
        """The end of the newest completed segment (0 if none)."""
        done = [s for s, files in _segments(self.directory).items() if not files[0][2]]
        return LSN((max(done) + 1) * SEG if done else 0)


class _CommitLoad:
    """Synchronous commits through one psql session; (monotonic time acknowledged, xid).

    One statement each, in autocommit: its result row comes only with
    CommandComplete, which PostgreSQL sends after the commit (and its wait for
    the synchronous standby) is done.
    """

    def __init__(self, cluster: PgCluster) -> None:
        psql = cluster.program("psql")
        if not psql.exists():
            psql = Path("/usr/lib/postgresql/15/bin/psql")  # as PgCluster.psql
        self.proc = subprocess.Popen(
            [str(psql), "-h", str(cluster.socket_dir), "-p", str(cluster.port), "-U", "postgres",
             "-XAtq", "-v", "ON_ERROR_STOP=1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        self.acked: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None
        assert stdout is not None
        try:
            i = 0
            while not self.stop.is_set():
                i += 1
                stdin.write(
                    f"WITH w AS (INSERT INTO crash SELECT {i}, repeat('c', 1000) "
                    "FROM generate_series(1, 10) RETURNING 1) SELECT txid_current() FROM w "
                    "LIMIT 1;\n"
                )
                if i % 50 == 0:
                    stdin.write("SELECT pg_switch_wal();\n")  # segment ends at odd moments
                stdin.flush()
                line = stdout.readline()
                self.acked.append((time.monotonic(), int(line)))
                if i % 50 == 0:
                    stdout.readline()
        except BaseException as e:
            self.error = e

    def __enter__(self) -> _CommitLoad:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(60)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _received(standby: PgCluster) -> LSN:
    """Everything the standby ever received: pg_last_wal_receive_lsn once no walreceiver streams.

    A walreceiver that loses its connection flushes what it wrote before it
    exits (WalRcvDie), and the position never goes back on one timeline (a
    new walreceiver keeps it: RequestXLogStreaming), so read with none
    streaming it is the end of all the WAL the standby ever got.
    """
    try:
        wait_until(
            lambda: standby.psql(
                "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'"
            ) == "0",
            what="the standby's walreceiver to notice the relay is gone",
        )  # fmt: skip
    except TimeoutError as e:
        row = standby.psql("SELECT * FROM pg_stat_wal_receiver")
        raise AssertionError(f"{e}: {row}{standby.log_tail()}") from None
    return LSN.parse(standby.psql("SELECT pg_last_wal_receive_lsn()"))


@pytest.mark.parametrize("version", VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
def test_sigkill_under_synchronous_load_loses_no_commit_and_serves_nothing_early(  # type: ignore[no-untyped-def]
    pg_factory, tmp_path: Path, version: int
) -> None:
    """SIGKILL the relay at random moments while the primary waits on it for every commit.

    The primary's synchronous_standby_names names the relay; the relay's names
    the standby behind it, so a commit is acknowledged only once both have it.
    At each kill, with the relay dead:

    * every commit the primary acknowledged before the kill ends (pg_waldump
      on the primary's pg_wal) within the WAL of the relay's directory, checked
      byte for byte against the primary's files, and within what the standby
      received: the cascade lost no acknowledged commit;
    * what the standby ever received (pg_last_wal_receive_lsn, read once its
      walreceiver is gone: it never goes back) ends within the relay's
      directory: no standby ever had WAL the relay did not hold when it died.

    That much a process crash can show; the page cache survives it, so it
    cannot tell written from fsynced. The relay therefore runs with a ledger
    (tests/support/relay_ledger.py) of every position its directory declared
    flushed after an fsync and every XLogData its walsender framed: no message
    may hold WAL past what an fsync covered before it (what survives a crash of
    the machine). Across restarts the completed segments count as fsynced (they
    are renamed only after their fsync).
    """
    primary: PgCluster = pg_factory(version, wal_segsize_mb=1)
    primary.psql("CREATE TABLE crash(id int, pad text)")
    directory = tmp_path / "relay"
    directory.mkdir()
    ledger = tmp_path / "ledger"
    relay = RelayProcess(
        directory,
        primary.conninfo("scram_user", "scrampass", application_name="relay"),
        "--synchronous-standby-names", "s1",
        ledger=ledger,
    )  # fmt: skip
    ends_of = _DirectoryEnd(directory, primary.datadir / "pg_wal")
    rng = random.Random(20261124)
    kills: list[tuple[float, LSN, LSN]] = []  # (time, directory's end, standby's received)
    with relay:
        standby = standby_behind(primary, relay, "s1")
        primary.set_conf(synchronous_standby_names="relay")
        wait_until(
            lambda: primary.psql(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'relay'"
            ) == "sync",
            what="the relay as the primary's synchronous standby",
        )  # fmt: skip
        start = LSN.parse(primary.current_lsn())
        with _CommitLoad(primary) as load:
            wait_until(lambda: len(load.acked) > 20, what="the load to start")
            for _ in range(KILLS):
                time.sleep(rng.uniform(0.05, 0.8))
                kill_time = time.monotonic()
                relay.stop(signal.SIGKILL)
                kills.append((kill_time, ends_of(), _received(standby)))
                with open(ledger, "a") as f:
                    f.write(f"B {int(ends_of.completed_end())}\n")
                relay.start()
            acked_before = len(load.acked)
            wait_until(lambda: len(load.acked) > acked_before + 20, what="the load after restarts")
        assert load.error is None, load.error
        assert not load.thread.is_alive(), "the load is stuck: a commit never returned"
        want = primary.psql("SELECT count(*), sum(id) FROM crash")
        wait_until(lambda: standby.psql("SELECT count(*), sum(id) FROM crash") == want,
                   what="the standby to replay every commit")  # fmt: skip
        assert relay.stop(signal.SIGTERM) == 0, relay.log_text()

    ends = _commit_ends(primary, LSN(start - start % SEG))
    acked = load.acked
    assert len(acked) > 3 * KILLS, "the load barely ran"
    checked = 0
    for kill_time, dir_end, received in kills:
        assert received <= dir_end, (
            f"the standby received WAL up to {received}, past the end of the relay's "
            f"directory when it was killed ({dir_end})"
        )
        for ack_time, xid in acked:
            if ack_time < kill_time:
                assert xid in ends, f"commit of xid {xid} not found by pg_waldump"
                assert ends[xid] <= dir_end, (
                    f"xid {xid} was acknowledged before a SIGKILL, its commit record ends at "
                    f"{ends[xid]}, the relay's directory at {dir_end}"
                )
                assert ends[xid] <= received, (
                    f"xid {xid} was acknowledged before a SIGKILL, its commit record ends at "
                    f"{ends[xid]}, the standby behind the relay had only {received}"
                )
                checked += 1
    assert checked

    durable = sent = messages = 0
    for number, line in enumerate(ledger.read_text().splitlines(), 1):
        kind, *values = line.split()
        if kind in ("F", "B"):
            durable = max(durable, int(values[0]))
        elif kind == "S":
            sent = int(values[1])
            messages += 1
            assert sent <= durable, (
                f"ledger line {number}: WAL up to {LSN(sent)} sent, durable only {LSN(durable)}"
            )
    assert messages > KILLS, "the ledger saw almost no WAL sent"


# -- retention ----------------------------------------------------------------------------------

KEEP_MB = 4
_MB_OF_WAL = "INSERT INTO t SELECT g, repeat('r', 150) FROM generate_series(1, 5000) g"


class _DirectorySize:
    """The largest the relay's directory got, sampled from a thread while a load runs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.most_files = 0
        self.most_bytes = 0
        self.at_most: list[str] = []  # the segment files when there were the most
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            files = sizes = 0
            names = []
            for entry in os.scandir(self.directory):
                if parse_segment_name(entry.name, SEG) is not None:
                    with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                        sizes += entry.stat().st_size
                        files += 1
                        names.append(entry.name)
            if files > self.most_files:
                self.most_files, self.at_most = files, sorted(names)
            self.most_bytes = max(self.most_bytes, sizes)
            time.sleep(0.005)

    def __enter__(self) -> _DirectorySize:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _completed(directory: Path) -> list[int]:
    return sorted(s for s, files in _segments(directory).items() if not files[0][2])


def _removed_error_line(standby: PgCluster, since: int) -> str:
    """The standby's log line for a removed segment, without its time stamp and pid."""
    text = standby.log_path.read_text(errors="replace")[since:]
    lines = [line for line in text.splitlines() if "has already been removed" in line]
    assert lines, text[-3000:]
    return lines[0].split("]", 1)[1].strip()


async def _stream_error(conninfo: str, start: LSN) -> ServerError:
    """The error START_REPLICATION at ``start`` (timeline 1) ends with."""
    async with await walstream.connect(conninfo) as conn:
        try:
            stream = await conn.start_replication(start, timeline=1)
            while await stream.read():
                pass
            await stream.end()
        except ServerError as e:
            return e
    raise AssertionError(f"START_REPLICATION at {start} streamed without an error")


async def _create_slot(conninfo: str, name: str) -> LSN:
    """A physical slot that reserves WAL at once; its restart_lsn."""
    async with await walstream.connect(conninfo) as conn:
        await conn.create_replication_slot(name, reserve_wal=True)
        position = await conn.read_replication_slot(name)
    assert position is not None
    assert position.restart_lsn is not None
    return position.restart_lsn


async def _drop_slot(conninfo: str, name: str) -> None:
    async with await walstream.connect(conninfo) as conn:
        await conn.drop_replication_slot(name)


def _segments_removed(relay: RelayProcess) -> tuple[float, int]:
    """walstream_segments_removed_total from /metrics, and the relay's log lines for removals."""
    value = None
    for family in text_string_to_metric_families(relay.get("/metrics")):
        for sample in family.samples:
            if sample.name == "walstream_segments_removed_total":
                value = sample.value
    assert value is not None
    return value, relay.log_text().count("removing write-ahead log file")


@pytest.mark.parametrize("version", VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
def test_retention_bounds_the_directory_keeps_what_is_needed_and_cuts_off_a_late_standby(  # type: ignore[no-untyped-def]
    pg_factory, tmp_path: Path, version: int
) -> None:
    """--wal-keep-size under a long load, with a slot, a stalled client and a standby away.

    1. Under a load, the directory never holds more than the keep size plus
       the segment being written (sampled every few ms).
    2. A slot (RESERVE_WAL) and a connected client that stopped reading
       (pg_receivewal, SIGSTOP) keep every segment from theirs on; the
       client, resumed, gets all of them.
    3. The slot dropped and the client gone, the directory shrinks back; the
       removals are counted in /metrics.
    4. A standby stopped before 2. without a slot comes back behind the keep
       size: it gets "requested WAL segment ... has already been removed",
       the line it logs for a real primary that removed the segment, and the
       SQLSTATE is 58P01 from both.
    """
    primary: PgCluster = pg_factory(version, wal_segsize_mb=1)
    primary.psql("CREATE TABLE t(x int, pad text)")
    directory = tmp_path / "relay"
    directory.mkdir()
    relay = RelayProcess(
        directory, primary.conninfo("trust_user", application_name="relay"),
        "--wal-keep-size", str(KEEP_MB), "--wal-sender-timeout", "0",
    )  # fmt: skip
    with relay:
        # 1. Bounded. Nobody downstream yet: a connected client's position is
        # kept however far behind it is (2.), which is not the bound's to judge.
        first = _completed(directory)
        with _DirectorySize(directory) as size:
            for _ in range(3 * KEEP_MB):
                primary.psql(_MB_OF_WAL)
            end = LSN.parse(primary.current_lsn())
            wait_until(
                lambda: LSN.parse(relay.status()["upstream"]["flush_lsn"]) >= end,
                what="the relay to receive the load",
            )
        assert _completed(directory)[0] > (first or [0])[0], "nothing was ever removed"
        assert size.most_files <= KEEP_MB + 1, f"{size.most_files} segment files: {size.at_most}"
        assert size.most_bytes <= (KEEP_MB + 1) * SEG, f"{size.most_bytes} bytes at once"

        away = standby_behind(primary, relay, "away")
        steady = standby_behind(primary, relay, "steady")

        # 2. What a slot and a connected client need stays; a standby away is cut off.
        away.stop()
        slot = asyncio.run(_create_slot(relay.conninfo(), "keep"))
        slow_dir = tmp_path / "slow"
        slow_dir.mkdir()
        slow = subprocess.Popen(
            [str(primary.program("pg_receivewal")), "-d", relay.conninfo(application_name="slow"),
             "-D", str(slow_dir), "-n", "--no-sync"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_until(lambda: any(slow_dir.iterdir()), what="pg_receivewal streaming")
            slow.send_signal(signal.SIGSTOP)
            for _ in range(4 * KEEP_MB):
                primary.psql(_MB_OF_WAL)
            primary.psql("SELECT pg_switch_wal()")
            end = LSN.parse(primary.current_lsn())
            steady.wait_for_replay(end)
            (row,) = [r for r in relay.status()["clients"] if r["application_name"] == "slow"]
            stalled = LSN.parse(row["sent_lsn"])
            assert stalled // SEG + KEEP_MB < end // SEG, "the stalled client is not behind"
            kept = _completed(directory)
            assert kept[0] <= min(slot, stalled) // SEG, (kept, slot, stalled)
            assert kept == list(range(kept[0], kept[-1] + 1)), f"a gap: {kept}"
            slow.send_signal(signal.SIGCONT)
            last = (end - 1) // SEG
            wait_until(lambda: last in _completed(slow_dir), what="the resumed client catching up")
        finally:
            slow.send_signal(signal.SIGCONT)
            slow.send_signal(signal.SIGINT)
            _, slow_err = slow.communicate(timeout=30)
        assert "error" not in slow_err, slow_err
        for segno in _completed(slow_dir):
            name = segment_name(1, segno, SEG)
            theirs = (primary.datadir / "pg_wal" / name).read_bytes()
            assert (slow_dir / name).read_bytes() == theirs, f"{name} differs"

        # 3. Nothing holds old segments any more: back within the keep size at the next
        # segment, the removals counted in /metrics.
        asyncio.run(_drop_slot(relay.conninfo(), "keep"))
        primary.psql(_MB_OF_WAL)
        primary.psql("SELECT pg_switch_wal()")
        steady.wait_for_replay(LSN.parse(primary.current_lsn()))
        wait_until(
            lambda: len(_segments(directory)) <= KEEP_MB + 1,
            what=f"the directory back within the keep size: {sorted(_segments(directory))}",
        )
        wait_until(
            lambda: _segments_removed(relay)[0] == _segments_removed(relay)[1] > 0,
            what=f"/metrics counting the removals: {_segments_removed(relay)}",
        )

        # 4. The standby away comes back too late, without a slot: cut off as by a primary.
        offset = away.log_path.stat().st_size
        away.start()
        relay_line = _removed_error_line(away, offset)
        removed = parse_segment_name(relay_line.split("segment ")[1].split()[0], SEG)
        assert removed is not None, relay_line
        assert removed.segno < _completed(directory)[0]
        position = LSN(removed.segno * SEG)
        from_relay = asyncio.run(_stream_error(relay.conninfo(), position))

        # The real primary, asked for the same segment once it removed it too.
        primary.set_conf(wal_keep_size="0")
        primary.psql("SELECT pg_switch_wal()")
        primary.psql("CHECKPOINT")
        assert not (primary.datadir / "pg_wal" / segment_name(1, removed.segno, SEG)).exists()
        from_primary = asyncio.run(_stream_error(primary.conninfo("trust_user"), position))
        assert (from_relay.severity, from_relay.sqlstate, from_relay.message) == (
            from_primary.severity, from_primary.sqlstate, from_primary.message,
        )  # fmt: skip
        assert from_relay.sqlstate == "58P01"
        away.set_conf(primary_conninfo=primary.conninfo("trust_user", application_name="away"))
        away.stop()
        offset = away.log_path.stat().st_size
        away.start()
        assert _removed_error_line(away, offset) == relay_line
        assert relay.stop(signal.SIGTERM) == 0, relay.log_text()


# -- /metrics and /status -------------------------------------------------------------------


def _metric_samples(relay: RelayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the relay's /metrics, read by Prometheus's own parser."""
    samples = {}
    for family in text_string_to_metric_families(relay.get("/metrics")):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


@pytest.mark.parametrize("version", VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
def test_metrics_parse_and_status_lists_the_relays_downstream(  # type: ignore[no-untyped-def]
    pg_factory, tmp_path: Path, version: int
) -> None:
    """/status's clients are the relay's downstream as the downstream sees itself.

    Two hot standbys (one with hot_standby_feedback) and pg_receivewal behind
    the relay, at rest: each has one row under pg_stat_replication's column
    names (the real view's, read from the primary's catalog), with the flush
    and replay positions the standby itself reports, the sync state a primary
    gives ``FIRST 1 (s1, s2)``, and the feedback xmin the primary shows for the
    relay. /metrics, read by Prometheus's parser, says the same per client and
    upstream.
    """
    primary: PgCluster = pg_factory(version, wal_segsize_mb=1)
    primary.psql("CREATE TABLE t(x int, pad text)")
    directory = tmp_path / "relay"
    directory.mkdir()
    relay = RelayProcess(
        directory, primary.conninfo("trust_user", application_name="relay"),
        "--synchronous-standby-names", "FIRST 1 (s1, s2)",
    )  # fmt: skip
    with relay:
        s1 = standby_behind(primary, relay, "s1")
        s2 = standby_behind(primary, relay, "s2", hot_standby_feedback="on")
        rw_dir = tmp_path / "rw"
        rw_dir.mkdir()
        rw = subprocess.Popen(
            [str(primary.program("pg_receivewal")), "-d", relay.conninfo(application_name="rw"),
             "-D", str(rw_dir), "-n", "-s", "1"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            primary.psql(_FILL)
            end = LSN.parse(primary.current_lsn())
            standbys = {"s1": s1, "s2": s2}

            def at_rest() -> bool:
                rows = {r["application_name"]: r for r in relay.status()["clients"]}
                if set(rows) != {"s1", "s2", "rw"}:
                    return False
                sent = rows["rw"]["sent_lsn"]  # NULL until its START_REPLICATION, as on a primary
                if sent is None or LSN.parse(sent) < end:
                    return False
                for name, standby in standbys.items():
                    mine = standby.psql(
                        "SELECT pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()"
                    ).split("|")
                    if (
                        LSN.parse(mine[0]) < end
                        or [rows[name]["flush_lsn"], rows[name]["replay_lsn"]] != mine
                    ):
                        return False
                return True

            wait_until(at_rest, what=f"the downstream at rest: {relay.status()['clients']}")
            status = relay.status()
            rows = {r["application_name"]: r for r in status["clients"]}
            columns = primary.psql(
                "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute "
                "WHERE attrelid = 'pg_stat_replication'::regclass AND attnum > 0"
            ).split(",")
            for name, row in rows.items():
                assert list(row)[: len(columns)] == columns, name
                assert row["state"] == "streaming"
                assert row["usename"] == "trust_user"
                assert row["client_addr"] == "127.0.0.1"
                assert LSN.parse(row["sent_lsn"]) >= end
            for name, standby in standbys.items():
                receiver = standby.psql(
                    "SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver"
                )
                assert receiver == f"streaming|127.0.0.1|{relay.port}", name
            sync = [(rows[n]["sync_priority"], rows[n]["sync_state"]) for n in ("s1", "s2", "rw")]
            assert sync == [(1, "sync"), (2, "potential"), (0, "async")]
            assert rows["s1"]["backend_xmin"] is None
            assert rows["rw"]["backend_xmin"] is None

            def s2_xmin() -> str:
                (row,) = [r for r in relay.status()["clients"] if r["application_name"] == "s2"]
                return str(row["backend_xmin"])

            wait_until(
                lambda: primary.psql(
                    "SELECT backend_xmin FROM pg_stat_replication WHERE application_name = 'relay'"
                ) == s2_xmin() != "None",
                what="the primary showing s2's feedback xmin for the relay",
            )  # fmt: skip

            def metrics_say_the_same() -> bool:
                """/metrics between two /status reads that agree (WAL may still trickle in)."""
                before = relay.status()
                samples = _metric_samples(relay)
                if relay.status()["clients"] != before["clients"]:
                    return False
                assert samples["walstream_sender_connections", ()] == 3
                for row in before["clients"]:
                    name = row["application_name"]
                    labels = (("application_name", name), ("client_addr", "127.0.0.1"),
                              ("pid", str(row["pid"])))  # fmt: skip
                    for column in ("sent_lsn", "write_lsn", "flush_lsn", "replay_lsn"):
                        key = f"walstream_client_{column}_bytes", labels
                        if row[column] is None:
                            assert key not in samples, (name, column)  # NULL: no sample
                        else:
                            assert samples[key] == LSN.parse(row[column]), (name, column)
                    state = tuple(sorted((*labels, ("sync_state", row["sync_state"]))))
                    assert samples["walstream_client_sync_state", state] == 1
                    assert samples["walstream_client_sync_priority", labels] == row["sync_priority"]
                return True

            wait_until(metrics_say_the_same, what="two /status reads that agree")
            samples = _metric_samples(relay)
            upstream = status["upstream"]
            assert upstream["timeline"] == 1
            assert samples["walstream_upstream_flush_lsn_bytes", ()] >= end
            assert LSN.parse(upstream["flush_lsn"]) >= end
            wait_until(
                lambda: primary.psql(
                    "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'relay'"
                ) == relay.status()["upstream"]["flush_lsn"],
                what="the primary showing the relay's flush position",
            )  # fmt: skip
        finally:
            rw.send_signal(signal.SIGINT)
            rw.communicate(timeout=30)
        assert relay.stop(signal.SIGTERM) == 0, relay.log_text()
