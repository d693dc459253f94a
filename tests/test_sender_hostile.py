"""Hostile and broken clients against ``walstream send``, while a good client streams.

Per version (15, 16, 18): a real primary; a walstream receiver writing its
WAL to a directory throughout; ``python -m walstream.sender`` serving that
directory with the primary's own pg_hba.conf and roles and short timeouts;
and one well-behaved client, the version's pg_receivewal on a slot
(``--synchronous -n``: it reports every flush, and exits if the sender drops
it), streaming from the sender the whole time while the primary keeps
writing. After every test the sender must still run, the good client must
still run and must have received the primary's newest WAL (its slot on the
sender says so); at the end, its completed segments must be byte for byte
the primary's.

Each misbehaviour is also done to the primary itself (configured with the
same max_wal_senders, wal_sender_timeout and authentication_timeout), and
what comes back must be the same; each test says what PostgreSQL does.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import random
import socket
import struct
import subprocess
import sys
import tempfile
import termios
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from walstream.lsn import LSN
from walstream.protocol import messages as m
from walstream.wal.segment import parse_segment_name

from .conftest import require_version
from .pgcluster import VERSIONS, PgCluster, wait_until
from .sender_harness import (
    AUTH_REQUESTS,
    Message,
    Raw,
    SenderProcess,
    errors,
    lsn_free,
)

T = TypeVar("T")
SEG = 16 * 1024 * 1024
MAX_WAL_SENDERS = 4
WAL_SENDER_TIMEOUT = 3  # seconds: keepalives ask for a reply after 1.5 s
AUTHENTICATION_TIMEOUT = 2  # seconds (PostgreSQL's minimum is 1)
BACKLOG_SEGMENTS = 7  # WAL a late client has to catch up: far more than any buffer
GIB = 1 << 30


@dataclass
class Bench:
    cluster: PgCluster
    sender: SenderProcess
    work: Path
    wal: Path  # the directory the walstream receiver fills and the sender serves
    good: subprocess.Popen[str]  # pg_receivewal, from the sender
    good_dir: Path

    @property
    def primary(self) -> tuple[str, int]:
        return (self.cluster.host, self.cluster.port)

    def slot_lsn(self, name: str) -> LSN | None:
        """The slot's restart_lsn on the sender (READ_REPLICATION_SLOT)."""
        with Raw(self.sender.address) as raw:
            raw.login()
            rows = [msg for msg in raw.query(f"READ_REPLICATION_SLOT {name}")
                    if isinstance(msg, m.DataRow)]  # fmt: skip
        (row,) = rows
        value = row.values[1]
        return None if value is None else LSN.parse(value.decode())

    def progress(self, *, switch: bool = False) -> LSN:
        """New WAL on the primary; wait until the good client has it on disk (its slot moves)."""
        sql = "INSERT INTO t VALUES (2)"
        if switch:
            sql = f"SELECT pg_switch_wal(); {sql}"
        self.cluster.psql(sql)
        target = LSN.parse(self.cluster.current_lsn())

        def there() -> bool:
            assert self.good.poll() is None, self.good_failure()
            lsn = self.slot_lsn("good")
            return lsn is not None and lsn >= target

        wait_until(there, what=f"the good client to flush {target}")
        return target

    def good_failure(self) -> str:
        err = self.good.stderr.read() if self.good.stderr else ""
        return f"pg_receivewal exited ({self.good.returncode}): {err}\n{self.sender.log()}"

    def oldest(self) -> LSN:
        """The start of the oldest segment in the served directory."""
        segnos = []
        for path in self.wal.iterdir():
            parsed = parse_segment_name(path.name.removesuffix(".partial"), SEG)
            if parsed is not None:
                segnos.append(parsed.segno)
        return LSN(min(segnos) * SEG)


def _lines_of(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module", params=VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
def bench(request: pytest.FixtureRequest) -> Iterator[Bench]:
    version: int = request.param
    require_version(version)
    cluster = PgCluster.create(version, conf={
        "max_wal_senders": str(MAX_WAL_SENDERS),
        "wal_sender_timeout": f"'{WAL_SENDER_TIMEOUT}s'",
        "authentication_timeout": f"'{AUTHENTICATION_TIMEOUT}s'",
    })  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="wshos-", dir="/tmp"))
    procs: list[subprocess.Popen[str]] = []
    sender: SenderProcess | None = None
    try:
        cluster.psql("CREATE TABLE t (x int)")
        wal = work / "wal"
        wal.mkdir()
        receiver_log = work / "receiver.log"
        with receiver_log.open("w") as log:
            receiver = subprocess.Popen(
                [sys.executable, "-m", "walstream.receiver", "-d", cluster.conninfo("postgres"),
                 "-D", str(wal), "-v"],
                stderr=log, text=True,
            )  # fmt: skip
        procs.append(receiver)
        wait_until(lambda: "starting log streaming" in _lines_of(receiver_log),
                   what="the receiver to stream")  # fmt: skip
        # A backlog: whole segments a client starting at the oldest WAL must be sent.
        cluster.psql("SELECT pg_switch_wal(); INSERT INTO t VALUES (1); " * BACKLOG_SEGMENTS)
        end = cluster.current_lsn()
        hba = work / "hba"
        hba.write_text((cluster.datadir / "pg_hba.conf").read_text())
        passwords = work / "passwords"
        passwords.write_text(cluster.psql(
            "SELECT rolname || ':' || rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL"
        ) + "\n")  # fmt: skip
        sender = SenderProcess(
            wal, "--hba", str(hba), "--passwords", str(passwords),
            "--max-wal-senders", str(MAX_WAL_SENDERS),
            "--wal-sender-timeout", str(WAL_SENDER_TIMEOUT),
            "--authentication-timeout", str(AUTHENTICATION_TIMEOUT),
            log_path=work / "sender.log",
        )  # fmt: skip
        conninfo = f"host=127.0.0.1 port={sender.port} user=trust_user"
        pg_receivewal = str(cluster.program("pg_receivewal"))
        subprocess.run([pg_receivewal, "-d", conninfo, "--create-slot", "-S", "good"],
                       check=True, timeout=60)  # fmt: skip
        good_dir = work / "good"
        good_dir.mkdir()
        good = subprocess.Popen(
            [pg_receivewal, "-d", conninfo, "-D", str(good_dir), "-S", "good",
             "--synchronous", "-n"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(good)
        # The primary keeps writing, so the good client is mid-stream whatever happens.
        loader = subprocess.Popen(
            [str(cluster.program("psql")) if cluster.program("psql").exists()
             else "/usr/lib/postgresql/15/bin/psql",
             "-h", str(cluster.socket_dir), "-p", str(cluster.port), "-U", "postgres", "-Xq",
             "-c", "DO $$ BEGIN LOOP INSERT INTO t VALUES (3); COMMIT; "
                   "PERFORM pg_sleep(0.05); END LOOP; END $$"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        procs.append(loader)
        b = Bench(cluster, sender, work, wal, good, good_dir)
        assert b.progress() > LSN.parse(end)  # the backlog is in the directory
        yield b
        # The good client's WAL is the primary's, byte for byte.
        b.progress(switch=True)
        compared = 0
        for path in sorted(good_dir.iterdir()):
            if path.suffix == ".partial" or parse_segment_name(path.name, SEG) is None:
                continue
            theirs = cluster.datadir / "pg_wal" / path.name
            if theirs.exists():
                assert path.read_bytes() == theirs.read_bytes(), path.name
                compared += 1
        assert compared >= 1
        assert good.poll() is None, b.good_failure()
        assert sender.stop() == 0, sender.log()
    finally:
        if sender is not None:
            sender.stop()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        cluster.destroy()
        subprocess.run(["rm", "-rf", str(work)], check=False)


@pytest.fixture(autouse=True)
def undisturbed(bench: Bench) -> Iterator[None]:
    """After each test: the sender runs, and the good client has received the newest WAL."""
    yield
    assert bench.sender.running(), bench.sender.log()
    bench.progress()


def on_both(bench: Bench, action: Callable[[tuple[str, int]], T]) -> tuple[T, T]:
    """``action`` against the primary and the sender at once (the waits overlap): (real, ours)."""
    with ThreadPoolExecutor(2) as pool:
        real = pool.submit(action, bench.primary)
        ours = pool.submit(action, bench.sender.address)
        return real.result(), ours.result()


def shape(messages: list[Message]) -> list[object]:
    """Messages with what differs between two servers anyway (positions, source lines) taken out."""
    out: list[object] = []
    for msg in messages:
        if isinstance(msg, m.ErrorResponse):
            out.append(("E", {k: lsn_free(v) for k, v in msg.fields.items()
                              if k in ("S", "V", "C", "M", "D", "H")}))  # fmt: skip
        else:
            out.append(type(msg).__name__)
    return out


def _shutdown_write(raw: Raw) -> None:
    """End of our stream: whatever the server waits for will not come."""
    with contextlib.suppress(OSError):  # it may have hung up already
        raw.sock.shutdown(socket.SHUT_WR)


# ---------------------------------------------------------------------------
# Before authentication
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_random_bytes_before_the_startup_packet(bench: Bench, seed: int) -> None:
    """PostgreSQL reads a length word out of range, logs "invalid length of startup packet"
    (COMMERROR: never sent) and closes; so does the sender."""

    def junk(address: tuple[str, int]) -> list[Message]:
        with Raw(address) as raw:
            raw.send(random.Random(seed).randbytes(1000))
            _shutdown_write(raw)
            return raw.rest()

    real, ours = on_both(bench, junk)
    assert shape(ours) == shape(real) == ["Closed"]


def test_a_1gib_startup_packet_is_refused_unread(bench: Bench) -> None:
    """PostgreSQL refuses a startup length above 10000 bytes when it reads the length word
    (logged, not sent) and closes. The sender does too, without buffering a byte of it."""
    before = bench.sender.rss_anon()

    def huge(address: tuple[str, int]) -> list[Message]:
        with Raw(address) as raw:
            raw.send(struct.pack("!i", GIB) + bytes(1 << 20))
            return raw.rest()

    real, ours = on_both(bench, huge)
    assert shape(ours) == shape(real) == ["Closed"]
    assert bench.sender.rss_anon() - before < 64 << 20


def test_a_startup_packet_that_never_finishes(bench: Bench) -> None:
    """PostgreSQL's authentication_timeout covers the startup packet: a client that sends
    nothing, half a packet, or stops in the middle of SCRAM is dropped silently then
    (StartupPacketTimeoutHandler exits; "canceling authentication due to timeout" is
    only logged)."""

    def nothing(address: tuple[str, int]) -> list[Message]:
        with Raw(address) as raw:
            return raw.rest()

    def half(address: tuple[str, int]) -> list[Message]:
        with Raw(address) as raw:
            raw.send(m.StartupMessage({"user": "trust_user", "replication": "true"}).encode()[:20])
            return raw.rest()

    def mid_scram(address: tuple[str, int]) -> list[Message]:
        with Raw(address) as raw:
            answers = raw.startup("scram_user")
            assert isinstance(answers[-1], m.AuthenticationSASL), answers
            return raw.rest()

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(f, a) for f in (nothing, half, mid_scram)
                   for a in (bench.primary, bench.sender.address)]  # fmt: skip
        results = [shape(f.result()) for f in futures]
    assert results == [["Closed"]] * 6


def _hold_until_refused(address: tuple[str, int]) -> tuple[int, list[Message]]:
    """Connections stopped at the SCRAM exchange, until one is refused: (held, its answer)."""
    held: list[Raw] = []
    try:
        for _ in range(MAX_WAL_SENDERS + 2):
            raw = Raw(address)
            held.append(raw)
            answers = raw.startup("scram_user")
            if not isinstance(answers[-1], AUTH_REQUESTS):
                return len(held) - 1, answers
        raise AssertionError("never refused")
    finally:
        for raw in held:
            raw.close()


def test_more_clients_than_max_wal_senders(bench: Bench) -> None:
    """PostgreSQL takes a walsender slot before authentication (InitProcess): with
    max_wal_senders taken, by the good client (the receiver on the primary) and by
    connections waiting for their password, the next gets FATAL 53300, and the quoting
    of "max_wal_senders" depends on the version (quoted from 17)."""
    outcomes: dict[str, tuple[int, list[object]]] = {}

    def settled(name: str, address: tuple[str, int]) -> Callable[[], bool]:
        def attempt() -> bool:
            held, answers = _hold_until_refused(address)
            outcomes[name] = (held, shape(answers))
            # Until the server has noticed the closes of the previous attempt.
            return held == MAX_WAL_SENDERS - 1

        return attempt

    wait_until(settled("real", bench.primary), what="the primary's free walsenders")
    wait_until(settled("ours", bench.sender.address), what="the sender's free walsenders")
    assert outcomes["ours"] == outcomes["real"]
    (error,) = [e for e in outcomes["real"][1] if isinstance(e, tuple)]
    assert error[1]["C"] == "53300"


# ---------------------------------------------------------------------------
# After authentication
# ---------------------------------------------------------------------------

QUERIES = [
    "SELECT 1",  # SQL: 0A000
    "FOO BAR",  # not a replication command: SQL, so 0A000
    "identify_system",  # the keywords are upper case: SQL
    "",
    ";",
    "IDENTIFY_SYSTEM x",  # 42601
    "SHOW",
    "START_REPLICATION",
    "START_REPLICATION PHYSICAL",
    "CREATE_REPLICATION_SLOT",
    "SHOW no_such_setting",  # 42704
    "TIMELINE_HISTORY 7",  # 58P01
    "TIMELINE_HISTORY 0",
    "DROP_REPLICATION_SLOT nope",  # 42704
    "START_REPLICATION SLOT nope 0/0",
    "READ_REPLICATION_SLOT nope",  # a row of NULLs
    "CREATE_REPLICATION_SLOT x LOGICAL pgoutput",  # 55000, wording by version
    'CREATE_REPLICATION_SLOT "Bad Name" PHYSICAL',  # 42602
    "IDENTIFY_SYSTEM",  # and the connection still works
]


def test_sql_and_unknown_commands(bench: Bench) -> None:
    """A physical walsender answers SQL with ERROR 0A000 "cannot execute SQL commands in WAL
    sender for physical replication", a malformed command with 42601 "syntax error", and
    stays ready for the next command; so does the sender, word for word."""

    def ask(address: tuple[str, int]) -> list[list[object]]:
        with Raw(address) as raw:
            raw.login()
            return [[s for s in shape(raw.query(sql)) if s not in ("DataRow", "RowDescription")]
                    for sql in QUERIES]  # fmt: skip

    real, ours = on_both(bench, ask)
    assert dict(zip(QUERIES, ours, strict=True)) == dict(zip(QUERIES, real, strict=True))
    assert real[0] == [("E", {"S": "ERROR", "V": "ERROR", "C": "0A000", "M":
                        "cannot execute SQL commands in WAL sender for physical replication"}),
                       "ReadyForQuery"]  # fmt: skip


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_after_authentication(bench: Bench, seed: int) -> None:
    """Garbage where a message's type byte should be: PostgreSQL says FATAL 08P01 "invalid
    frontend message type N" (or, for a known type with a length out of range, logs and
    closes); the sender answers the same."""
    rng = random.Random(seed)
    junk = bytes([rng.choice(b"abeghjklmnoqrstuvwyz0123456789")]) + rng.randbytes(200)

    def garbage(address: tuple[str, int]) -> list[Message]:
        with Raw(address) as raw:
            raw.login()
            raw.send(junk)
            _shutdown_write(raw)
            return raw.rest()

    real, ours = on_both(bench, garbage)
    assert shape(ours) == shape(real)


def _streaming(raw: Raw) -> None:
    raw.login()
    (row,) = [x for x in raw.query("IDENTIFY_SYSTEM") if isinstance(x, m.DataRow)]
    assert row.values[2] is not None
    answer = raw.query(f"START_REPLICATION {row.values[2].decode()}")
    assert isinstance(answer[-1], m.CopyBothResponse), answer


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_while_streaming(bench: Bench, seed: int) -> None:
    """Garbage in the middle of COPY: PostgreSQL's walsender ends the connection on a message
    type other than CopyData, CopyDone or Terminate (FATAL 08P01 "invalid standby message
    type"), and on a CopyData of a kind it does not know ("unexpected message type",
    logged only). (A reply or feedback message of the wrong size is left out: PostgreSQL
    ignores trailing bytes and answers a short one with an ERROR that ends the COPY, where
    the sender refuses both with a FATAL.)"""
    rng = random.Random(seed)
    if seed % 2:
        kind = rng.choice(b"abcdefgijklmnopqstuvwxyz")  # not r (reply), h (feedback)
        junk = m.CopyData(bytes([kind]) + rng.randbytes(rng.randrange(60))).encode()
    else:
        junk = bytes([rng.choice(b"abeghjklmnoqrstuvwyz")]) + rng.randbytes(200)

    def garbage(address: tuple[str, int]) -> list[Message]:
        with Raw(address) as raw:
            _streaming(raw)
            raw.send(junk)
            _shutdown_write(raw)
            return [x for x in raw.rest() if not isinstance(x, m.CopyData)]

    real, ours = on_both(bench, garbage)
    assert shape(ours) == shape(real)


def test_a_1gib_message_is_refused_unread(bench: Bench) -> None:
    """A Query or a CopyData whose length word says 1 GiB: PostgreSQL's pq_getmessage refuses
    a length above its limit before reading the body ("invalid message length", logged
    only; while streaming "unexpected EOF on standby connection") and the connection
    ends. The sender refuses above its 16 MiB at the length word, before buffering."""
    before = bench.sender.rss_anon()

    def query(address: tuple[str, int]) -> list[Message]:
        with Raw(address) as raw:
            raw.login()
            raw.send(b"Q" + struct.pack("!i", GIB) + bytes(1 << 20))
            return raw.rest()

    def copy_data(address: tuple[str, int]) -> list[Message]:
        with Raw(address) as raw:
            _streaming(raw)
            raw.send(b"d" + struct.pack("!i", GIB) + bytes(1 << 20))
            return [x for x in raw.rest() if not isinstance(x, m.CopyData)]

    for action in (query, copy_data):
        real, ours = on_both(bench, action)
        assert shape(ours) == shape(real) == ["Closed"]
    assert bench.sender.rss_anon() - before < 64 << 20


# ---------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------


def test_start_replication_far_ahead_or_long_gone(bench: Bench) -> None:
    """PostgreSQL: CopyBothResponse, then ERROR XX000 "requested starting point X is ahead
    of the WAL flush position of this server Y" for a start past its flush; ERROR 58P01
    "requested WAL segment NAME has already been removed" for one whose segment is gone;
    the connection stays ready for commands. The sender's flush position is the end of
    the WAL in its directory."""

    def start(lsn: str) -> Callable[[tuple[str, int]], list[object]]:
        def action(address: tuple[str, int]) -> list[object]:
            with Raw(address) as raw:
                raw.login()
                answer = raw.query(f"START_REPLICATION {lsn}")
                if isinstance(answer[-1], m.CopyBothResponse):
                    answer += raw.until(m.ReadyForQuery)
                answer += raw.query("IDENTIFY_SYSTEM")
                return [s for s in shape(answer) if s not in ("DataRow", "RowDescription")]

        return action

    for lsn in ("FFFF/0", "0/0"):
        real, ours = on_both(bench, start(lsn))
        assert ours == real
        (error,) = [e for e in real if isinstance(e, tuple)]
        assert error[1]["C"] == ("XX000" if lsn == "FFFF/0" else "58P01")
    # Just before the oldest segment of the directory: the primary still has it, so
    # there is nothing to compare with; the words are the ones above.
    gone = LSN(bench.oldest() - 1)
    with Raw(bench.sender.address) as raw:
        raw.login()
        answer = raw.query(f"START_REPLICATION {gone}")
        answer += raw.until(m.ReadyForQuery)
    name = f"00000001{gone >> 32:08X}{(gone & 0xFFFFFFFF) // SEG:08X}"
    assert errors(answer) == [
        ("ERROR", "58P01", f"requested WAL segment {name} has already been removed")
    ]


def _keepalive(msg: Message) -> bool | None:
    """reply_requested of a keepalive, None for anything else."""
    if isinstance(msg, m.CopyData) and msg.data[:1] == b"k":
        return bool(msg.data[17])
    return None


def test_a_client_that_stops_replying(bench: Bench) -> None:
    """PostgreSQL asks for a reply at half of wal_sender_timeout, then ends the walsender
    at the timeout ("terminating walsender process due to replication timeout", logged;
    the client gets no message); the slot stays, released for the next client."""

    def silent(address: tuple[str, int]) -> tuple[list[object], str | None]:
        with Raw(address) as raw:
            raw.login()
            raw.query("CREATE_REPLICATION_SLOT quiet PHYSICAL RESERVE_WAL")
            (row,) = [x for x in raw.query("IDENTIFY_SYSTEM") if isinstance(x, m.DataRow)]
            assert row.values[2] is not None
            answer = raw.query(f"START_REPLICATION SLOT quiet {row.values[2].decode()}")
            assert isinstance(answer[-1], m.CopyBothResponse), answer
            rest = raw.rest()  # reading everything, never answering
        asked = [_keepalive(x) for x in rest if _keepalive(x) is not None]
        with Raw(address) as raw:
            raw.login()
            slot = [x for x in raw.query("READ_REPLICATION_SLOT quiet") if isinstance(x, m.DataRow)]
            dropped = shape(raw.query("DROP_REPLICATION_SLOT quiet"))  # not 55006 "active"
        return (
            [True in asked, [x for x in shape(rest) if x != "CopyData"], dropped],
            None if not slot or slot[0].values[0] is None else slot[0].values[0].decode(),
        )

    real, ours = on_both(bench, silent)
    assert ours == real
    assert real == (
        [True, ["Closed"], ["CommandComplete", "ReadyForQuery"]],
        "physical",
    )
    assert "terminating walsender process due to replication timeout" in bench.sender.log()


def _queued(sock: object) -> int:
    """Bytes waiting in a socket's receive queue (FIONREAD)."""
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)  # type: ignore[attr-defined]
    return buf[0]


def test_a_client_that_stops_reading(bench: Bench) -> None:
    """A client that asks for the whole backlog and reads none of it: PostgreSQL's walsender
    blocks in its socket write (one process per client). The sender stops writing to that
    client once its socket buffers and a 1 MiB transport buffer are full: its memory stays
    flat while the WAL it owes that client (the backlog, and more WAL arriving) is far
    beyond any buffer, and the good client keeps streaming meanwhile."""
    oldest = bench.oldest()
    before = bench.sender.rss_anon()
    with Raw(bench.sender.address) as raw:
        raw.login()
        answer = raw.query(f"START_REPLICATION {oldest}")
        assert isinstance(answer[-1], m.CopyBothResponse), answer
        # The kernel's buffers fill up; wait until nothing more arrives.
        samples: list[int] = []

        def full() -> bool:
            samples.append(_queued(raw.sock))
            return len(samples) > 10 and len(set(samples[-10:])) == 1 and samples[-1] > 0

        wait_until(full, what="the stalled client's socket buffers to fill")
        for _ in range(3):
            end = bench.progress(switch=True)  # the good client streams on
        after = bench.sender.rss_anon()
        owed = end - oldest - _queued(raw.sock)
        # Measured: 159 MiB owed and 22 to 24 MiB more memory (mostly the 16 MiB
        # cache of recent chunks filling up); with no pause (a 1 GiB high-water
        # mark) it took 189 MiB more.
        assert owed > 100 << 20
        assert after - before < 48 << 20, (before, after, owed)
