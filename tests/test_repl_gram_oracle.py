"""repl_gram against real walsenders (15, 16, 18): the same verdict, SQLSTATE, words and NOTICEs.

Each command goes to a real physical walsender and through parse_command() +
check_command() with the server's own version number. Where walstream
refuses, the server must refuse identically (SQLSTATE, message, detail, hint,
and the NOTICEs before). Where walstream accepts, the server must not refuse
for a reason walstream's checks cover, and where the server's answer shows
what it parsed (a slot name, a timeline, an LSN echoed in its message) it
must be what walstream parsed.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walstream.protocol import messages as m
from walstream.protocol.repl_gram import (
    AlterReplicationSlotCmd,
    BaseBackupCmd,
    CreateReplicationSlotCmd,
    DropReplicationSlotCmd,
    IdentifySystemCmd,
    ReadReplicationSlotCmd,
    ReplicationCommand,
    ReplicationCommandError,
    ReplicationKind,
    ShowCmd,
    StartReplicationCmd,
    TimelineHistoryCmd,
    UploadManifestCmd,
    check_command,
    parse_command,
)

from .pgcluster import PgCluster
from .rawwire import Frame, RawSession

LONG = "a" * 70

# Commands without lasting effects: every slot that can be created is TEMPORARY,
# every START_REPLICATION fails (no such slot, or far ahead of the server).
CASES = [
    # not replication commands
    "", "   ", ";", "identify_system", "Identify_System", "SELECT 1", '"abc"', "0/0", "$",
    "IDENTIFY_SYSTEMx", "IDENTIFY_SYSTEM1", "IDENTIFY_SYSTEM\xa0", "\x0bIDENTIFY_SYSTEM\x0c",
    "--comment", LONG, "'abc", '"abc',
    # IDENTIFY_SYSTEM
    "IDENTIFY_SYSTEM", "IDENTIFY_SYSTEM;", "\tIDENTIFY_SYSTEM\n", "IDENTIFY_SYSTEM ;;",
    "IDENTIFY_SYSTEM x", "IDENTIFY_SYSTEM; IDENTIFY_SYSTEM", "IDENTIFY_SYSTEM --x",
    'IDENTIFY_SYSTEM "abc', 'IDENTIFY_SYSTEM x "abc', "IDENTIFY_SYSTEM\x1c", "IDENTIFY_SYSTEM -",
    # SHOW
    "SHOW", "SHOW wal_segment_size", "SHOW data_directory_mode", 'SHOW "WAL_SEGMENT_SIZE"',
    "SHOW DateStyle", "SHOW server_version", "SHOW wal_segment_size ;", "SHOW\nwal_segment_size",
    "SHOW SHOW", "SHOW Show", "SHOW TIMELINE", "SHOW UPLOAD_MANIFEST",
    "SHOW ALTER_REPLICATION_SLOT",
    "SHOW a.b.c", "SHOW wal_segment_size . x", "SHOW 'wal_segment_size'", "SHOW 1", "SHOW é",
    "SHOW a$b", "SHOW $a", f"SHOW {LONG}", f"SHOW {LONG} x",
    # TIMELINE_HISTORY
    "TIMELINE_HISTORY", "TIMELINE_HISTORY 0", "TIMELINE_HISTORY 0 x", 'TIMELINE_HISTORY 0 "abc',
    "TIMELINE_HISTORY 1", "TIMELINE_HISTORY 01", "TIMELINE_HISTORY 7", "TIMELINE_HISTORY -1",
    "TIMELINE_HISTORY 1x", "TIMELINE_HISTORY 4294967296", "TIMELINE_HISTORY 4294967297",
    "TIMELINE_HISTORY 18446744073709551617", "TIMELINE_HISTORY 99999999999999999999999",
    # READ_REPLICATION_SLOT
    "READ_REPLICATION_SLOT", "READ_REPLICATION_SLOT nope", 'READ_REPLICATION_SLOT "a-b"',
    "READ_REPLICATION_SLOT a.b", 'READ_REPLICATION_SLOT ""', 'READ_REPLICATION_SLOT "a""b"',
    'READ_REPLICATION_SLOT "a"', f"READ_REPLICATION_SLOT {LONG}", "READ_REPLICATION_SLOT SLOT",
    # CREATE_REPLICATION_SLOT
    "CREATE_REPLICATION_SLOT", "CREATE_REPLICATION_SLOT o1 TEMPORARY PHYSICAL",
    "CREATE_REPLICATION_SLOT O2 TEMPORARY PHYSICAL RESERVE_WAL",
    'CREATE_REPLICATION_SLOT "o3" TEMPORARY PHYSICAL (RESERVE_WAL)',
    "CREATE_REPLICATION_SLOT o4 TEMPORARY PHYSICAL ( RESERVE_WAL false)",
    "CREATE_REPLICATION_SLOT o5 TEMPORARY PHYSICAL (reserve_wal 4294967297)",
    "CREATE_REPLICATION_SLOT o6 TEMPORARY PHYSICAL (reserve_wal 'ON');",
    f"CREATE_REPLICATION_SLOT {LONG} TEMPORARY PHYSICAL", f"CREATE_REPLICATION_SLOT {LONG} x",
    'CREATE_REPLICATION_SLOT "" TEMPORARY PHYSICAL', 'CREATE_REPLICATION_SLOT "A" PHYSICAL',
    'CREATE_REPLICATION_SLOT "a-b" PHYSICAL', 'CREATE_REPLICATION_SLOT "é" PHYSICAL',
    'CREATE_REPLICATION_SLOT "a""b" PHYSICAL',
    "CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL, RESERVE_WAL)",
    "CREATE_REPLICATION_SLOT x PHYSICAL RESERVE_WAL RESERVE_WAL",
    "CREATE_REPLICATION_SLOT x PHYSICAL (FOO)", "CREATE_REPLICATION_SLOT x PHYSICAL (SHOW)",
    "CREATE_REPLICATION_SLOT x PHYSICAL (reserve_wal maybe)",
    "CREATE_REPLICATION_SLOT x PHYSICAL (reserve_wal 2)",
    "CREATE_REPLICATION_SLOT x PHYSICAL (SNAPSHOT 'export')",
    "CREATE_REPLICATION_SLOT x PHYSICAL (TWO_PHASE)",
    "CREATE_REPLICATION_SLOT x PHYSICAL TWO_PHASE",
    "CREATE_REPLICATION_SLOT x PHYSICAL (FAILOVER)",
    "CREATE_REPLICATION_SLOT x PHYSICAL EXPORT_SNAPSHOT",
    'CREATE_REPLICATION_SLOT "A" PHYSICAL (FOO)', "CREATE_REPLICATION_SLOT x PHYSICAL ()",
    "CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL,)",
    "CREATE_REPLICATION_SLOT x PHYSICAL (READ_REPLICATION_SLOT)",
    "CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL 0/0)",
    "CREATE_REPLICATION_SLOT TEMPORARY x PHYSICAL", "CREATE_REPLICATION_SLOT x PHYSICAL TEMPORARY",
    "CREATE_REPLICATION_SLOT x LOGICAL", "CREATE_REPLICATION_SLOT x TEMPORARY LOGICAL pgoutput",
    "CREATE_REPLICATION_SLOT x LOGICAL pgoutput (RESERVE_WAL)",
    "CREATE_REPLICATION_SLOT x LOGICAL pgoutput (SNAPSHOT 'bogus')",
    "CREATE_REPLICATION_SLOT x LOGICAL pgoutput (SNAPSHOT)",
    'CREATE_REPLICATION_SLOT "A" LOGICAL pgoutput',
    # DROP_REPLICATION_SLOT
    "DROP_REPLICATION_SLOT", "DROP_REPLICATION_SLOT nope", 'DROP_REPLICATION_SLOT "" WAIT',
    'DROP_REPLICATION_SLOT "A-B"', "DROP_REPLICATION_SLOT nope NOWAIT",
    "DROP_REPLICATION_SLOT nope WAIT x",
    # ALTER_REPLICATION_SLOT (17+)
    "ALTER_REPLICATION_SLOT nope (FAILOVER)", "ALTER_REPLICATION_SLOT nope (TWO_PHASE false)",
    "ALTER_REPLICATION_SLOT nope (FOO)", "ALTER_REPLICATION_SLOT nope (FAILOVER, FAILOVER)",
    "ALTER_REPLICATION_SLOT nope", "ALTER_REPLICATION_SLOT nope ()",
    # START_REPLICATION
    "START_REPLICATION", "START_REPLICATION PHYSICAL", "START_REPLICATION 0/0 TIMELINE",
    "START_REPLICATION 0/0 TIMELINE 0 x", 'START_REPLICATION 0/0 TIMELINE 0 "abc',
    "START_REPLICATION 0/0 TIMELINE 4294967296", "START_REPLICATION 0/1/2",
    "START_REPLICATION 0//2", "START_REPLICATION LOGICAL 0/0",
    'START_REPLICATION SLOT "nope" 0/0', "START_REPLICATION SLOT Nope PHYSICAL 0/0 TIMELINE 1",
    "START_REPLICATION SLOT nope LOGICAL 0/0", "START_REPLICATION SLOT nope LOGICAL 0/0 (a 'b', c)",
    "START_REPLICATION FFFF/0", "START_REPLICATION PHYSICAL ffff/AbC TIMELINE 1",
    "START_REPLICATION 100000001/0", "START_REPLICATION FFFFFFFFFF/0",
    "START_REPLICATION 1FFFFFFFFFFFFFFFF0/0", "START_REPLICATION 1/0 TIMELINE 7",
    # BASE_BACKUP and UPLOAD_MANIFEST (only forms that fail before doing anything)
    "BASE_BACKUP x", "BASE_BACKUP ()", "BASE_BACKUP (FOO)", "BASE_BACKUP (LABEL 'x', FAST)",
    "UPLOAD_MANIFEST x", "UPLOAD_MANIFEST",
]  # fmt: skip

# The messages walstream's checks produce: a command walstream accepts must
# never get one of these from the server.
_OURS = re.compile(
    r"syntax error|unterminated quoted string|invalid timeline \d+"
    r"|cannot execute SQL commands in WAL sender for physical replication"
    r"|replication slot name .* (is too short|is too long|contains invalid character)"
    r"|conflicting or redundant options|unrecognized option: .*"
    r"|.* requires a (Boolean value|parameter)"
    r"|unrecognized value for CREATE_REPLICATION_SLOT option .*|logical decoding requires .*",
    re.DOTALL,
)


@dataclass
class Answer:
    notices: list[tuple[str, str]]
    error: tuple[str, str, str | None, str | None] | None
    rows: list[tuple[bytes | None, ...]]


def answer(frames: list[Frame]) -> Answer:
    result = Answer([], None, [])
    for frame in frames:
        msg = frame.decode()
        if isinstance(msg, m.NoticeResponse):
            result.notices.append((msg.fields["C"], msg.message))
        elif isinstance(msg, m.ErrorResponse):
            result.error = (msg.sqlstate, msg.message, msg.fields.get("D"), msg.fields.get("H"))
        elif isinstance(msg, m.DataRow):
            result.rows.append(msg.values)
    return result


def _expect_echo(command: ReplicationCommand, got: Answer) -> None:
    """Where the server's answer shows what it parsed, it parsed what we did."""
    message = got.error[1] if got.error else None
    if isinstance(command, IdentifySystemCmd | ReadReplicationSlotCmd):
        assert got.error is None
    elif isinstance(command, ShowCmd):
        if got.error is not None:
            assert message == f'unrecognized configuration parameter "{command.name}"'
    elif isinstance(command, TimelineHistoryCmd):
        # These clusters are on timeline 1: no history file at all.
        path = f"pg_wal/{command.timeline:08X}.history"
        assert message == f'could not open file "{path}": No such file or directory'
    elif isinstance(command, DropReplicationSlotCmd | AlterReplicationSlotCmd):
        assert message == f'replication slot "{command.slot_name}" does not exist'
    elif isinstance(command, CreateReplicationSlotCmd):
        assert got.error is None
        assert got.rows[0][0] == command.slot_name.encode()
    elif isinstance(command, StartReplicationCmd):
        if command.slot_name is not None:
            assert message == f'replication slot "{command.slot_name}" does not exist'
        elif command.timeline not in (None, 1):
            assert (
                message == f"requested timeline {command.timeline} is not in this server's history"
            )
        else:
            assert message is not None
            assert message.startswith(f"requested starting point {command.start} is ahead ")
    else:
        assert isinstance(command, BaseBackupCmd | UploadManifestCmd)
        assert got.error is not None  # (the cases above all fail in the server)


def walstream_verdict(
    text: str, version: int
) -> tuple[ReplicationCommand | None, ReplicationCommandError | None, list[tuple[str, str]]]:
    """(command, None, notices) if walstream accepts ``text``, else (None, error, notices)."""
    try:
        parsed = parse_command(text, server_version=version)
        check_command(parsed.command, server_version=version, wal_level="replica")
    except ReplicationCommandError as exc:
        return None, exc, [(n.sqlstate, n.message) for n in exc.notices]
    return parsed.command, None, [(n.sqlstate, n.message) for n in parsed.notices]


def compare(session: RawSession, text: str, *, echo: bool = True) -> None:
    got = answer(session.query(text, follow_copy=False))
    command, error, notices = walstream_verdict(text, session.server_version)
    assert got.notices == notices, text
    if error is not None:
        ours = (error.sqlstate, error.message, error.detail, error.hint)
        assert got.error == ours, f"{text!r}: server {got.error}, walstream {ours}"
        return
    assert command is not None
    if got.error is not None:
        assert not _OURS.fullmatch(got.error[1]), f"{text!r}: server {got.error}, walstream ok"
    if echo:
        _expect_echo(command, got)


@pytest.fixture
def session(pg_server: PgCluster) -> Iterator[RawSession]:
    with RawSession(pg_server) as s:
        yield s


@pytest.mark.parametrize("text", CASES)
def test_same_verdict_as_the_server(session: RawSession, text: str) -> None:
    compare(session, text)


# -- random token soup, against a cluster of its own ----------------------------------

_WORDS = st.sampled_from(
    ["IDENTIFY_SYSTEM", "SHOW", "TIMELINE_HISTORY", "READ_REPLICATION_SLOT", "START_REPLICATION",
     "CREATE_REPLICATION_SLOT", "DROP_REPLICATION_SLOT", "ALTER_REPLICATION_SLOT",
     "UPLOAD_MANIFEST", "BASE_BACKUP", "SLOT", "PHYSICAL", "LOGICAL", "TIMELINE", "TEMPORARY",
     "RESERVE_WAL", "WAIT", "TWO_PHASE", "FAILOVER", "USE_SNAPSHOT", "show", "x", "Ab", "é", "$",
     '"q"', '"A b"', '"a""b"', '""', '"', "'s'", "'it''s'", "''", "'", "0", "1", "2",
     "4294967297", "0/0", "FF/1", "ffff/0", "0/", "(", ")", ",", ";", ".", "-", "=", LONG]
)  # fmt: skip
_FIRST = st.sampled_from(
    ["IDENTIFY_SYSTEM", "SHOW", "TIMELINE_HISTORY", "READ_REPLICATION_SLOT", "START_REPLICATION",
     "CREATE_REPLICATION_SLOT", "DROP_REPLICATION_SLOT", "ALTER_REPLICATION_SLOT",
     "UPLOAD_MANIFEST", "BASE_BACKUP", "x", '"', ""]
)  # fmt: skip
_GAP = st.sampled_from([" ", " ", "", "\t", "\n", "\x0b", "\x0c"])


@st.composite
def token_soup(draw: Callable[..., Any]) -> str:
    words = [draw(_FIRST), *draw(st.lists(_WORDS, max_size=7))]
    return "".join(w + draw(_GAP) for w in words)


@pytest.mark.parametrize("version", [15, 16, 18])
def test_token_soup_same_verdict_as_the_server(
    version: int, pg_factory: Callable[..., PgCluster]
) -> None:
    # A cluster of its own: a soup may create (and drop) persistent slots.
    cluster = pg_factory(version)
    with RawSession(cluster) as session:

        @settings(
            max_examples=150,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(token_soup())
        def check(text: str) -> None:
            try:
                parsed = parse_command(text, server_version=session.server_version)
            except ReplicationCommandError:
                pass
            else:
                if isinstance(parsed.command, BaseBackupCmd):
                    return  # a real backup: nothing to learn from it here
            compare(session, text, echo=False)

        check()


# -- what real clients send ---------------------------------------------------------

_LOGGED = re.compile(r"received replication command: (.*)")


def test_real_clients_commands_are_understood(
    pg_factory: Callable[..., PgCluster], tmp_path: Path
) -> None:
    """pg_receivewal (create, stream with a slot, drop) and a standby with a temporary slot.

    Every command they send is accepted as the same server version would,
    and SHOW asks only for what the sender must answer.
    """
    for version in (15, 16, 18):
        primary = pg_factory(version, conf={"log_replication_commands": "on"})
        target = tmp_path / f"wal{version}"
        target.mkdir()
        receivewal = [
            str(primary.program("pg_receivewal")), "-d", primary.conninfo("postgres"),
            "-D", str(target), "--slot", "rx",
        ]  # fmt: skip
        subprocess.run([*receivewal, "--create-slot"], check=True, timeout=120)
        primary.psql("SELECT pg_switch_wal()")
        endpos = primary.current_lsn()
        primary.psql("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")  # WAL past endpos
        subprocess.run([*receivewal, "-n", "-E", endpos], check=True, timeout=120)
        subprocess.run([*receivewal, "--drop-slot"], check=True, timeout=120)
        standby = primary.make_standby(wal_receiver_create_temp_slot="on")
        primary.psql("INSERT INTO t VALUES (2)")
        standby.wait_for_replay(primary.current_lsn())
        server_version = int(primary.psql("SHOW server_version_num"))

        logged = _LOGGED.findall(primary.log_path.read_text())
        shown = set()
        for text in logged:
            parsed = parse_command(text, server_version=server_version)
            assert not parsed.notices
            check_command(parsed.command, server_version=server_version)
            if isinstance(parsed.command, ShowCmd):
                shown.add(parsed.command.name)
            if isinstance(parsed.command, CreateReplicationSlotCmd):
                assert parsed.command.kind is ReplicationKind.PHYSICAL
        # pg_basebackup (making the standby) and pg_receivewal ask these two; a walreceiver none.
        assert shown == {"data_directory_mode", "wal_segment_size"}
        assert any(t.startswith('CREATE_REPLICATION_SLOT "pg_walreceiver_') for t in logged)
        assert any(t.startswith("READ_REPLICATION_SLOT") for t in logged)
        assert any(t.startswith("BASE_BACKUP") for t in logged)
