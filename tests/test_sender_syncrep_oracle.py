"""synchronous_standby_names against real primaries (15, 16, 18).

* The grammar: every value, fixed and generated, is given to ALTER SYSTEM;
  the server's verdict (accepted, or SQLSTATE, message and DETAIL) must be
  ours.
* The choice: walstream clients under different application_names stream
  from the primary and report chosen positions; for each value,
  pg_stat_replication's sync_priority and sync_state must be what
  walstream.sender.syncrep computes for every connection.
* The release: commits under synchronous_commit remote_write, on and
  remote_apply wait on the primary while the clients report positions in
  steps around their commit LSNs; each commit must complete exactly at the
  step where our release position reaches it.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

import walstream
from walstream import LSN, ServerError
from walstream.client import ReplicationConnection
from walstream.sender.syncrep import (
    SyncRepRelease,
    SyncRepStandby,
    SyncStandbyNamesError,
    parse_synchronous_standby_names,
    sync_states,
    wait_mode,
)

from .conftest import require_version
from .pgcluster import VERSIONS, PgCluster
from .standby_probe import StandbyProbe, sql_connection

TIMEOUT = 60.0


@pytest.fixture(scope="module", params=VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
def primary(request: pytest.FixtureRequest) -> Iterator[PgCluster]:
    """A primary of its own: these tests change synchronous_standby_names and make commits wait."""
    require_version(request.param)
    cluster = PgCluster.create(request.param)
    try:
        cluster.psql("CREATE TABLE release_probe (mode text)")
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
async def sql(primary: PgCluster) -> AsyncIterator[ReplicationConnection]:
    conn = await sql_connection(primary.conninfo("postgres"))
    try:
        yield conn
    finally:
        await conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
        await conn.execute("SELECT pg_reload_conf()")
        await conn.close()


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def rows(sql: ReplicationConnection, query: str) -> list[tuple[str | None, ...]]:
    return (await sql.execute(query)).rows


async def poll(
    sql: ReplicationConnection, query: str, done: Callable[[list[tuple[str | None, ...]]], bool]
) -> list[tuple[str | None, ...]]:
    """Repeat a query until its rows are what ``done`` wants (the server acts on its own time)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            found = await rows(sql, query)
            if done(found):
                return found
            await asyncio.sleep(0.02)


# -- the grammar ------------------------------------------------------------------

FIXED_VALUES = [
    "", "a", "s1, s2", "2 (s1, s2, s3)", "FIRST 2 (s1, s2)", "first 1 (s1)", "ANY 2 (s1,s2)",
    "aNy 1 (*)", "*", '"*"', "MixedCase", '"with space", "a""b", ""', '""""',
    'ANY 1 ("any", "FIRST")', "anyone, firstly", "1, 2", "1", "1 (2)", "3 (a, b)", "a, a",
    "_x$1, é", "\ta ,\r\fb\v", "007 (a)", "4294967297 (a)", "  ", "first", "ANY", "a,",
    "FIRST 1 (a", ",", "a,,b", "a b", "1abc", "1e5", "$a", "a-b", "-1 (a)", "(a)", "ANY (a)",
    "first(a)", "FIRST1 (a)", "first 1 ()", "a)", "FIRST 1 (a) b", "FIRST 1 (a), b",
    "ANY 1 (any)", "any any (a)", "a.b", "x;", "a'b", "a ä", 'a "b"', '"a" "b"', 'a ""',
    '"a""b" c', '"a"(', '"unterminated', '"a""', 'a, "b', 'a "b', 'a b "c', 'ANY 1 (a), "q',
    "0 (a)", "FIRST 0 (a)", "ANY 0 (a)", "2147483648 (a)", "99999999999999999999 (a)",
    "a\x01", "a\\b", "a\n b", "a,\nb", "ANY 1 (a)\n",
]  # fmt: skip

# Generated values: fragments that matter to the scanner and the parser.
_ATOMS = [
    "a", "B", "s1", "any", "ANY", "first", "First", "*", '"', '""', '"x"', '"a""b"', "1", "2",
    "0", "10", "(", ")", ",", " ", "\t", "$", "-", ";", "é", "_", "é1", "\\", "'",
]  # fmt: skip


def generated_values(count: int) -> list[str]:
    rng = random.Random(151618)
    return ["".join(rng.choice(_ATOMS) for _ in range(rng.randint(1, 9))) for _ in range(count)]


def our_verdict(value: str) -> tuple[str, str, str | None] | None:
    try:
        parse_synchronous_standby_names(value)
    except SyncStandbyNamesError as e:
        return (e.sqlstate, e.message, e.detail)
    return None


async def server_verdict(
    sql: ReplicationConnection, value: str
) -> tuple[str, str, str | None] | None:
    try:
        await sql.execute(f"ALTER SYSTEM SET synchronous_standby_names = {literal(value)}")
    except ServerError as e:
        if e.message == "parameter value for ALTER SYSTEM must not contain a newline":
            return None  # ALTER SYSTEM's own rule, checked after the parameter's
        return (e.sqlstate, e.message, e.detail)
    return None


async def test_grammar_matches_the_server(sql: ReplicationConnection) -> None:
    values = FIXED_VALUES + generated_values(300)
    mismatches = []
    for value in values:
        theirs = await server_verdict(sql, value)
        ours = our_verdict(value)
        if theirs != ours:
            mismatches.append((value, theirs, ours))
    assert not mismatches
    accepted = sum(our_verdict(v) is None for v in values)
    assert 50 < accepted < len(values) - 50  # both outcomes are well represented


# -- the choice of synchronous standbys -------------------------------------------

# (application_name, (write, flush, apply) as distances back from where it
# started, None: never reported; None instead of them: never starts). Behind
# the start, because the primary's release positions only ever advance and a
# later test needs commits that wait.
CLIENTS: list[tuple[str, tuple[int | None, int | None, int | None] | None]] = [
    ("s1", (0x100, 0x200, 0x300)),
    ("S2", (0x400, 0x400, 0x400)),
    ("s3", (0x200, 0x200, None)),
    ("s4", (0x50, None, None)),  # no flush position (pg_receivewal without --synchronous)
    ("other", (0x10, 0x10, 0x10)),
    ("any", (0x500, 0x500, 0x500)),
    ("with space", (0x20, 0x20, 0x20)),
    ('q"uote', (0x600, 0x600, 0x600)),
    ("dup", (0x30, 0x30, 0x30)),
    ("dup", (0x40, 0x40, 0x40)),
    ("s5", None),  # connected, never starts streaming: state "startup"
]

CONFIGS = [
    "",
    "s1",
    "s1, s2, s3",
    "FIRST 2 (s3, S1, s2)",
    "2 (s2, s1)",
    "ANY 2 (s1, s2, s4)",
    "*",
    "FIRST 3 (s1, *)",
    "ANY 1 (*)",
    '"S1", "s2"',
    '"with space", "q""uote", "any"',
    "dup, s1",
    "FIRST 2 (dup, s1)",
    "s1, s1, s2",
    "FIRST 5 (s1, s2, s3)",
    "ANY 4 (s1, s2)",
    '"*"',
    "FIRST 1 (nobody)",
    "4294967297 (s2, s1)",
    "ANY 2 (dup, s3, s4, s5)",
    "FIRST 2 (s5, s4, s3)",
]


async def configure(sql: ReplicationConnection, value: str, probes: list[StandbyProbe]) -> None:
    """Set the value and return once the primary and every walsender use it.

    The postmaster signals every process when it reloads; once this
    session shows the new value, the walsenders have been signalled too, and
    a walsender reloads before it handles the next message it reads: the
    reply that each probe then sends and has answered.
    """
    await sql.execute(f"ALTER SYSTEM SET synchronous_standby_names = {literal(value)}")
    await sql.execute("SELECT pg_reload_conf()")
    await poll(sql, "SHOW synchronous_standby_names", lambda r: r == [(value,)])
    for probe in probes:
        await probe.reply(*probe.reported)


async def no_walsenders(sql: ReplicationConnection) -> None:
    await poll(sql, "SELECT count(*) FROM pg_stat_replication", lambda r: r == [("0",)])


async def test_sync_priority_and_state_match_the_server(
    primary: PgCluster, sql: ReplicationConnection
) -> None:
    await no_walsenders(sql)  # so the clients take walsender slots 0, 1, 2... in order
    conninfo = primary.conninfo("postgres")
    probes: list[StandbyProbe] = []
    idle: list[ReplicationConnection] = []
    # Per client, in connection order: (application_name, pid, probe or None).
    clients: list[tuple[str, int, StandbyProbe | None]] = []
    try:
        for name, offsets in CLIENTS:
            if offsets is None:
                conn = await walstream.connect(conninfo, replication="true", application_name=name)
                idle.append(conn)
                assert conn.backend_pid is not None
                clients.append((name, conn.backend_pid, None))
                continue
            probe = await StandbyProbe.start(conninfo, name, behind_flush=False)
            start = probe.stream.start
            await probe.reply(*(0 if back is None else start - back for back in offsets))
            probes.append(probe)
            clients.append((name, probe.pid, probe))
        slot_order = await rows(sql, "SELECT pid FROM pg_stat_get_wal_senders()")
        assert [int(r[0] or 0) for r in slot_order] == [pid for _, pid, _ in clients]
        streaming = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        await poll(sql, streaming, lambda r: r == [(str(len(probes)),)])
        seen: set[str] = set()
        for value in CONFIGS:
            await configure(sql, value, probes)
            config = parse_synchronous_standby_names(value)
            server = {
                int(r[0] or 0): r[1:]
                for r in await rows(
                    sql,
                    "SELECT pid, state, flush_lsn, sync_priority, sync_state "
                    "FROM pg_stat_replication",
                )
            }
            standbys = []
            for index, (name, pid, probe) in enumerate(clients):
                state, flush, _, _ = server[pid]
                reported = probe.reported if probe is not None else (LSN(0), LSN(0), LSN(0))
                assert (LSN.parse(flush) if flush else LSN(0)) == reported[1]
                standbys.append(
                    SyncRepStandby(
                        index=index,
                        state=state,  # type: ignore[arg-type]
                        priority=0 if config is None else config.priority(name),
                        write=reported[0],
                        flush=reported[1],
                        apply=reported[2],
                    )
                )
            ours = sync_states(config, standbys)
            theirs = [(int(server[pid][2] or 0), server[pid][3]) for _, pid, _ in clients]
            assert theirs == ours, f"synchronous_standby_names = {value!r}"
            seen.update(state for _, state in ours)
        assert seen == {"async", "potential", "sync", "quorum"}
    finally:
        for probe in probes:
            await probe.close()
        for conn in idle:
            conn.abort()


# -- the release of waiting commits -----------------------------------------------


def psql_program(primary: PgCluster) -> Path:
    psql = primary.bindir / "psql"
    return psql if psql.exists() else Path("/usr/lib/postgresql/15/bin/psql")


class Commit:
    """A commit under one synchronous_commit level, waiting on the primary."""

    def __init__(self, mode: str, process: asyncio.subprocess.Process) -> None:
        self.mode = mode
        self.wait_mode = wait_mode(mode)
        self.process = process
        self.pid = 0
        self.lsn = LSN(0)


async def start_commit(primary: PgCluster, sql: ReplicationConnection, mode: str) -> Commit:
    process = await asyncio.create_subprocess_exec(
        str(psql_program(primary)),
        "-h", str(primary.socket_dir), "-p", str(primary.port), "-U", "postgres",
        "-d", "postgres", "-XAtq", "-v", "ON_ERROR_STOP=1",
        "-c", f"INSERT INTO release_probe VALUES ('{mode}')",
        env={**os.environ, "PGAPPNAME": f"commit_{mode}",
             "PGOPTIONS": f"-c synchronous_commit={mode}"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    commit = Commit(mode, process)
    query = (
        "SELECT pid FROM pg_stat_activity "
        f"WHERE application_name = 'commit_{mode}' AND wait_event = 'SyncRep'"
    )

    def waiting(found: list[tuple[str | None, ...]]) -> bool:
        assert process.returncode is None, f"the {mode} commit did not wait"
        return bool(found)

    found = await poll(sql, query, waiting)
    commit.pid = int(found[0][0] or 0)
    # SyncRepWaitForLSN puts the LSN it waits for in the process title.
    cmdline = await asyncio.to_thread(Path(f"/proc/{commit.pid}/cmdline").read_bytes)
    title = cmdline.decode(errors="replace")
    match = re.search(r"waiting for ([0-9A-F]+/[0-9A-F]+)", title)
    assert match, title
    commit.lsn = LSN.parse(match.group(1))
    return commit


async def still_waiting(sql: ReplicationConnection, commit: Commit) -> bool:
    found = await rows(sql, f"SELECT wait_event FROM pg_stat_activity WHERE pid = {commit.pid}")
    return commit.process.returncode is None and found == [("SyncRep",)]


# Steps: (client, reported write flush apply), in terms of the commits' LSNs.
# Each level is first reported one byte short, then released exactly at its LSN.
RELEASE_STEPS = {
    "FIRST 2 (r1, r2, r3)": [
        ("r3", "la la la"),  # r3 is only potential: nothing
        ("r1", "lw lf la"),  # r2, also synchronous, is still at the start: nothing
        ("r2", "lw-1 lf-1 la-1"),  # the oldest of the two is one byte short: nothing
        ("r2", "lw lf-1 la-1"),  # remote_write
        ("r2", "lw lf la-1"),  # on
        ("r2", "lw lf la"),  # remote_apply
    ],
    "ANY 2 (r1, r2, r3)": [
        ("r3", "la la la"),  # one is no quorum of two: nothing
        ("r1", "lw-1 lf-1 la-1"),  # the second newest is one byte short: nothing
        ("r2", "lw lf-1 start"),  # remote_write
        ("r1", "lw-1 lf la-1"),  # on
        ("r2", "lw lf-1 la"),  # remote_apply
    ],
}


def positions(text: str, lsns: dict[str, int]) -> tuple[int, int, int]:
    def one(word: str) -> int:
        name, _, minus = word.partition("-")
        return lsns[name] - int(minus or 0)

    w, f, a = (one(word) for word in text.split())
    return w, f, a


@pytest.mark.parametrize("value", list(RELEASE_STEPS))
async def test_commits_are_released_exactly_at_our_release_position(
    primary: PgCluster, sql: ReplicationConnection, value: str
) -> None:
    conninfo = primary.conninfo("postgres")
    names = ["r1", "r2", "r3"]
    probes = {n: await StandbyProbe.start(conninfo, n, behind_flush=False) for n in names}
    commits: list[Commit] = []
    try:
        start = max(p.stream.start for p in probes.values())
        for p in probes.values():
            p.reported = (start, start, start)
        await configure(sql, value, list(probes.values()))
        config = parse_synchronous_standby_names(value)
        assert config is not None
        slot_order = await rows(sql, "SELECT pid FROM pg_stat_get_wal_senders()")
        slots = {int(r[0] or 0): i for i, r in enumerate(slot_order)}
        for mode in ("remote_write", "on", "remote_apply"):
            commits.append(await start_commit(primary, sql, mode))
        lsns = {"start": start, "lw": commits[0].lsn, "lf": commits[1].lsn, "la": commits[2].lsn}
        assert start < lsns["lw"] < lsns["lf"] < lsns["la"]

        release = SyncRepRelease()
        for name, text in RELEASE_STEPS[value]:
            await probes[name].reply(*positions(text, lsns))
            standbys = [
                SyncRepStandby(slots[p.pid], "streaming", config.priority(n), *p.reported)
                for n, p in probes.items()
            ]
            release.standby_replied(config, standbys, standbys[names.index(name)])
            for commit in commits:
                assert commit.wait_mode is not None
                if release.released(commit.lsn, commit.wait_mode):
                    # Released before the walsender answered: the backend returns.
                    async with asyncio.timeout(TIMEOUT):
                        assert await commit.process.wait() == 0
                else:
                    # Not released: it waits, whatever happens later. (A release
                    # we failed to predict shows here unless the backend has
                    # not yet woken; the next steps look again.)
                    assert await still_waiting(sql, commit), (
                        f"{name} reported {text}: the {commit.mode} commit at {commit.lsn} "
                        f"returned, ours would wait (released up to {release.positions})"
                    )
        assert all(c.process.returncode == 0 for c in commits)
    finally:
        for p in probes.values():
            await p.close()
        for c in commits:
            if c.process.returncode is None:
                c.process.kill()
                await c.process.wait()
