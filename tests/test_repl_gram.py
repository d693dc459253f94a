"""The replication command grammar without a server (its oracle: test_repl_gram_oracle.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from walstream import LSN
from walstream.protocol import commands
from walstream.protocol.repl_gram import (
    AlterReplicationSlotCmd,
    BaseBackupCmd,
    CreateReplicationSlotCmd,
    CreateSlotOptions,
    DropReplicationSlotCmd,
    IdentifySystemCmd,
    Notice,
    Option,
    ReadReplicationSlotCmd,
    ReplicationCommand,
    ReplicationCommandError,
    ReplicationKind,
    ShowCmd,
    StartReplicationCmd,
    TimelineHistoryCmd,
    UploadManifestCmd,
    check_command,
    check_slot_name,
    create_slot_options,
    logical_decoding_error,
    parse_command,
)

V15, V16, V17, V18 = 150000, 160000, 170000, 180000
PHYSICAL, LOGICAL = ReplicationKind.PHYSICAL, ReplicationKind.LOGICAL
SQL_REFUSED = ("0A000", "cannot execute SQL commands in WAL sender for physical replication")


def parse(text: str, version: int = V16) -> ReplicationCommand:
    return parse_command(text, server_version=version).command


def verdict(text: str, version: int = V16) -> ReplicationCommandError | None:
    """The error a walsender answers before touching any state, or None."""
    try:
        parsed = parse_command(text, server_version=version)
        check_command(parsed.command, server_version=version)
    except ReplicationCommandError as exc:
        return exc
    return None


def refusal(text: str, version: int = V16) -> tuple[str, str]:
    error = verdict(text, version)
    assert error is not None, f"{text!r} was accepted"
    return error.sqlstate, error.message


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("IDENTIFY_SYSTEM", IdentifySystemCmd()),
        ("  IDENTIFY_SYSTEM ;", IdentifySystemCmd()),
        ("SHOW wal_segment_size", ShowCmd("wal_segment_size")),
        ("SHOW DateStyle", ShowCmd("datestyle")),
        ('SHOW "DateStyle"', ShowCmd("DateStyle")),
        ("SHOW a . b.c", ShowCmd("a.b.c")),
        ("TIMELINE_HISTORY 2", TimelineHistoryCmd(2)),
        ("TIMELINE_HISTORY 4294967297", TimelineHistoryCmd(1)),  # strtoul into a uint32
        ("TIMELINE_HISTORY 99999999999999999999999", TimelineHistoryCmd(0xFFFFFFFF)),
        ("READ_REPLICATION_SLOT s1", ReadReplicationSlotCmd("s1")),
        ('READ_REPLICATION_SLOT "S-1"', ReadReplicationSlotCmd("S-1")),
        ("DROP_REPLICATION_SLOT s", DropReplicationSlotCmd("s")),
        ('DROP_REPLICATION_SLOT "s" WAIT', DropReplicationSlotCmd("s", wait=True)),
        (
            'CREATE_REPLICATION_SLOT "s" PHYSICAL',
            CreateReplicationSlotCmd("s", False, PHYSICAL),
        ),
        (
            "CREATE_REPLICATION_SLOT S TEMPORARY PHYSICAL RESERVE_WAL",
            CreateReplicationSlotCmd("s", True, PHYSICAL, options=(Option("reserve_wal", True),)),
        ),
        (
            "CREATE_REPLICATION_SLOT s TEMPORARY PHYSICAL ( RESERVE_WAL)",
            CreateReplicationSlotCmd("s", True, PHYSICAL, options=(Option("reserve_wal"),)),
        ),
        (
            "CREATE_REPLICATION_SLOT s PHYSICAL (reserve_wal 'on', Two_Phase FALSE, x 7)",
            CreateReplicationSlotCmd(
                "s",
                False,
                PHYSICAL,
                options=(
                    Option("reserve_wal", "on"),
                    Option("two_phase", "false"),
                    Option("x", 7),
                ),
            ),
        ),
        (
            "CREATE_REPLICATION_SLOT l LOGICAL Pgoutput EXPORT_SNAPSHOT TWO_PHASE",
            CreateReplicationSlotCmd(
                "l",
                False,
                LOGICAL,
                "pgoutput",
                (Option("snapshot", "export"), Option("two_phase", True)),
            ),
        ),
        (
            "START_REPLICATION 16/B374D848",
            StartReplicationCmd(PHYSICAL, LSN(0x16B374D848)),
        ),
        (
            'START_REPLICATION SLOT "s" PHYSICAL 0/3000000 TIMELINE 2;',
            StartReplicationCmd(PHYSICAL, LSN(0x3000000), "s", 2),
        ),
        (
            "START_REPLICATION 0/00000000",
            StartReplicationCmd(PHYSICAL, LSN(0)),
        ),
        (
            "START_REPLICATION 100000001/0",  # each half is strtoul into a uint32
            StartReplicationCmd(PHYSICAL, LSN(0x1_0000_0000)),
        ),
        (
            "START_REPLICATION SLOT l LOGICAL 0/0 (proto_version '4', binary)",
            StartReplicationCmd(
                LOGICAL,
                LSN(0),
                "l",
                options=(Option("proto_version", "4"), Option("binary")),
            ),
        ),
        ("BASE_BACKUP", BaseBackupCmd()),
        (
            "BASE_BACKUP ( LABEL 'x',  PROGRESS, WAIT 0, MANIFEST 'yes')",
            BaseBackupCmd(
                (
                    Option("label", "x"),
                    Option("progress"),
                    Option("wait", 0),
                    Option("manifest", "yes"),
                )
            ),
        ),
    ],
)
def test_parses(text: str, command: ReplicationCommand) -> None:
    for version in (V15, V16, V17, V18):
        assert parse(text, version) == command


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("IDENTIFY_SYSTEM x", "syntax error"),
        ("SHOW", "syntax error"),
        ("SHOW SHOW", "syntax error"),  # a keyword is not a name
        ("IDENTIFY_SYSTEM; IDENTIFY_SYSTEM", "syntax error"),
        ("IDENTIFY_SYSTEM;;", "syntax error"),
        ("IDENTIFY_SYSTEM --comment", "syntax error"),  # no comments in this language
        ('IDENTIFY_SYSTEM "abc', "unterminated quoted string"),
        ("IDENTIFY_SYSTEM 'abc", "unterminated quoted string"),
        # Tokens are read lazily: the first bad one decides.
        ('IDENTIFY_SYSTEM x "abc', "syntax error"),
        ('TIMELINE_HISTORY 0 "abc', "invalid timeline 0"),
        ("TIMELINE_HISTORY 4294967296", "invalid timeline 0"),
        ("START_REPLICATION 0/0 TIMELINE 0 x", "invalid timeline 0"),
        ("TIMELINE_HISTORY -1", "syntax error"),
        ("START_REPLICATION 0/1/2", "syntax error"),
        ("START_REPLICATION LOGICAL 0/0", "syntax error"),
        ("START_REPLICATION PHYSICAL SLOT s 0/0", "syntax error"),
        ("CREATE_REPLICATION_SLOT s PHYSICAL TEMPORARY", "syntax error"),
        ("CREATE_REPLICATION_SLOT s PHYSICAL ()", "syntax error"),
        ("CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL,)", "syntax error"),
        ("CREATE_REPLICATION_SLOT s PHYSICAL (READ_REPLICATION_SLOT)", "syntax error"),
        ("CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL 0/0)", "syntax error"),
        ("DROP_REPLICATION_SLOT s NOWAIT", "syntax error"),
        ("BASE_BACKUP ()", "syntax error"),
    ],
)
def test_syntax_errors(text: str, message: str) -> None:
    for version in (V15, V16, V17, V18):
        assert refusal(text, version) == ("42601", message)


@pytest.mark.parametrize(
    "text",
    ["", "   ", ";", "identify_system", "Identify_System", "SELECT 1", '"abc"', "0/0", "$",
     "IDENTIFY_SYSTEMx", "IDENTIFY_SYSTEM\xa0", "\x0bIDENTIFY_SYSTEM"],
)  # fmt: skip
def test_not_a_replication_command_is_sql(text: str) -> None:
    assert refusal(text, V15) == SQL_REFUSED


def test_version_differences() -> None:
    # ALTER_REPLICATION_SLOT and UPLOAD_MANIFEST are keywords from 17.
    assert refusal("UPLOAD_MANIFEST", V16) == SQL_REFUSED
    assert parse("UPLOAD_MANIFEST", V17) == UploadManifestCmd()
    assert refusal("UPLOAD_MANIFEST x", V18) == ("42601", "syntax error")
    assert refusal("ALTER_REPLICATION_SLOT s (FAILOVER)", V15) == SQL_REFUSED
    assert parse("ALTER_REPLICATION_SLOT s (FAILOVER)", V17) == AlterReplicationSlotCmd(
        "s", (Option("failover"),)
    )
    assert parse("SHOW UPLOAD_MANIFEST", V16) == ShowCmd("upload_manifest")
    assert refusal("SHOW UPLOAD_MANIFEST", V17) == ("42601", "syntax error")
    # \v is whitespace from 17.
    assert refusal("\x0bIDENTIFY_SYSTEM\x0c", V16) == SQL_REFUSED
    assert parse("\x0bIDENTIFY_SYSTEM\x0c", V17) == IdentifySystemCmd()
    # "" inside a quoted identifier: one quote on 18.6, the end of the identifier before.
    assert refusal('READ_REPLICATION_SLOT "a""b"', V16) == ("42601", "syntax error")
    assert parse('READ_REPLICATION_SLOT "a""b"', V18) == ReadReplicationSlotCmd('a"b')
    text = 'READ_REPLICATION_SLOT "a""b"'
    assert parse_command(text, server_version=V16, doubled_quotes=True).command == (
        ReadReplicationSlotCmd('a"b')
    )
    # FAILOVER is a (logical) slot option from 17.
    physical_failover = "CREATE_REPLICATION_SLOT s PHYSICAL (FAILOVER)"
    assert refusal(physical_failover, V16) == ("XX000", "unrecognized option: failover")
    assert refusal(physical_failover, V17) == ("42601", "conflicting or redundant options")
    # The GUC names in the logical decoding refusal are quoted from 17.
    assert refusal("START_REPLICATION SLOT s LOGICAL 0/0", V16) == (
        "55000",
        "logical decoding requires wal_level >= logical",
    )
    assert refusal("START_REPLICATION SLOT s LOGICAL 0/0", V18) == (
        "55000",
        'logical decoding requires "wal_level" >= "logical"',
    )
    error = logical_decoding_error(server_version=V18, wal_level="logical")
    assert error.message == "logical decoding requires a database connection"


def test_long_identifiers_are_cut_with_a_notice() -> None:
    long = "Ab" * 40
    parsed = parse_command(f"READ_REPLICATION_SLOT {long}", server_version=V15)
    assert parsed.command == ReadReplicationSlotCmd(long.lower()[:63])
    assert parsed.notices == (
        Notice("42622", f'identifier "{long.lower()}" will be truncated to "{long.lower()[:63]}"'),
    )
    # Quoted: not down-cased; cut on a character boundary (62 bytes here, not 63).
    quoted = "É" * 40  # two bytes each: byte 63 would split the 32nd
    parsed = parse_command(f'READ_REPLICATION_SLOT "{quoted}"', server_version=V15)
    assert parsed.command == ReadReplicationSlotCmd(quoted[:31])
    assert len(quoted[:31].encode()) == 62
    # The NOTICE goes out even when the command then fails.
    with pytest.raises(ReplicationCommandError) as info:
        parse_command(f"CREATE_REPLICATION_SLOT {long} x", server_version=V15)
    assert info.value.message == "syntax error"
    assert [n.sqlstate for n in info.value.notices] == ["42622"]
    with pytest.raises(ReplicationCommandError) as info:
        parse_command(long, server_version=V15)
    assert info.value.sqlstate == "0A000"
    assert len(info.value.notices) == 1


def test_slot_names() -> None:
    check_slot_name("a_1")
    for name, sqlstate, message in [
        ("", "42602", 'replication slot name "" is too short'),
        ("A", "42602", 'replication slot name "A" contains invalid character'),
        ("a-b", "42602", 'replication slot name "a-b" contains invalid character'),
        ("é", "42602", 'replication slot name "é" contains invalid character'),
        ("a" * 64, "42622", f'replication slot name "{"a" * 64}" is too long'),
    ]:
        with pytest.raises(ReplicationCommandError) as info:
            check_slot_name(name)
        assert (info.value.sqlstate, info.value.message) == (sqlstate, message)
        if sqlstate == "42602" and name:
            assert info.value.hint == (
                "Replication slot names may only contain lower case letters, numbers, "
                "and the underscore character."
            )
    # Only creation checks names.
    check_command(parse('DROP_REPLICATION_SLOT "A-B"'), server_version=V16)
    assert refusal('CREATE_REPLICATION_SLOT "A-B" PHYSICAL')[0] == "42602"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("", CreateSlotOptions()),
        ("RESERVE_WAL", CreateSlotOptions(reserve_wal=True)),
        ("(RESERVE_WAL)", CreateSlotOptions(reserve_wal=True)),
        ("(reserve_wal 1)", CreateSlotOptions(reserve_wal=True)),
        ("(reserve_wal 4294967297)", CreateSlotOptions(reserve_wal=True)),
        ("(reserve_wal 'ON')", CreateSlotOptions(reserve_wal=True)),
        ("(reserve_wal False)", CreateSlotOptions(reserve_wal=False)),
        ("(reserve_wal 0)", CreateSlotOptions(reserve_wal=False)),
        ("(reserve_wal off)", CreateSlotOptions(reserve_wal=False)),
    ],
)
def test_physical_slot_options(options: str, expected: CreateSlotOptions) -> None:
    cmd = parse(f"CREATE_REPLICATION_SLOT s PHYSICAL {options}")
    assert isinstance(cmd, CreateReplicationSlotCmd)
    assert create_slot_options(cmd, server_version=V16) == expected


@pytest.mark.parametrize(
    ("options", "sqlstate", "message"),
    [
        ("(RESERVE_WAL, RESERVE_WAL)", "42601", "conflicting or redundant options"),
        ("RESERVE_WAL RESERVE_WAL", "42601", "conflicting or redundant options"),
        ("(SNAPSHOT 'export')", "42601", "conflicting or redundant options"),
        ("TWO_PHASE", "42601", "conflicting or redundant options"),
        ("(foo)", "XX000", "unrecognized option: foo"),
        ("(SHOW)", "XX000", "unrecognized option: show"),
        ("(reserve_wal maybe)", "42601", "reserve_wal requires a Boolean value"),
        ("(reserve_wal 2)", "42601", "reserve_wal requires a Boolean value"),
        ("(reserve_wal 2147483648)", "42601", "reserve_wal requires a Boolean value"),
    ],
)
def test_physical_slot_option_errors(options: str, sqlstate: str, message: str) -> None:
    # Options are checked before the name: "A" would be an invalid one.
    assert refusal(f'CREATE_REPLICATION_SLOT "A" PHYSICAL {options}') == (sqlstate, message)


def test_logical_slot_options_are_checked_before_the_refusal() -> None:
    assert refusal("CREATE_REPLICATION_SLOT l LOGICAL p (RESERVE_WAL)") == (
        "42601",
        "conflicting or redundant options",
    )
    assert refusal("CREATE_REPLICATION_SLOT l LOGICAL p (SNAPSHOT 'x')") == (
        "22023",
        'unrecognized value for CREATE_REPLICATION_SLOT option "snapshot": "x"',
    )
    assert refusal("CREATE_REPLICATION_SLOT l LOGICAL p (SNAPSHOT)") == (
        "42601",
        "snapshot requires a parameter",
    )
    cmd = parse("CREATE_REPLICATION_SLOT l LOGICAL p (SNAPSHOT 'use', TWO_PHASE, FAILOVER 0)", V17)
    assert isinstance(cmd, CreateReplicationSlotCmd)
    assert create_slot_options(cmd, server_version=V17) == CreateSlotOptions(
        snapshot="use", two_phase=True, failover=False
    )


def test_alter_slot_options() -> None:
    assert refusal("ALTER_REPLICATION_SLOT s (FOO)", V18) == ("XX000", "unrecognized option: foo")
    assert refusal("ALTER_REPLICATION_SLOT s (FAILOVER, FAILOVER 0)", V18) == (
        "42601",
        "conflicting or redundant options",
    )
    assert refusal("ALTER_REPLICATION_SLOT s (TWO_PHASE)", V17) == (
        "XX000",
        "unrecognized option: two_phase",
    )
    check_command(parse("ALTER_REPLICATION_SLOT s (TWO_PHASE)", V18), server_version=V18)


@pytest.mark.parametrize("version", [V15, V16, V17, V18])
@pytest.mark.parametrize("temporary", [False, True])
@pytest.mark.parametrize("reserve_wal", [False, True])
def test_the_clients_own_command_text_parses_back(
    version: int, temporary: bool, reserve_wal: bool
) -> None:
    text = commands.create_replication_slot(
        "my_slot", temporary=temporary, reserve_wal=reserve_wal, server_version=version
    )
    cmd = parse(text, version)
    assert isinstance(cmd, CreateReplicationSlotCmd)
    assert (cmd.slot_name, cmd.temporary, cmd.kind) == ("my_slot", temporary, PHYSICAL)
    assert create_slot_options(cmd, server_version=version).reserve_wal == reserve_wal
    start = LSN(0x16B374D848)
    assert parse(commands.start_replication(start, timeline=3, slot="s"), version) == (
        StartReplicationCmd(PHYSICAL, start, "s", 3)
    )
    assert parse(commands.read_replication_slot("s"), version) == ReadReplicationSlotCmd("s")
    assert parse(commands.drop_replication_slot("s", wait=True), version) == (
        DropReplicationSlotCmd("s", wait=True)
    )


def test_server_version_must_be_a_version_number() -> None:
    for bad in (16, 140000, 190000):
        with pytest.raises(ValueError, match="server_version"):
            parse_command("IDENTIFY_SYSTEM", server_version=bad)


def test_text_after_a_nul_does_not_exist() -> None:
    assert parse("IDENTIFY_SYSTEM\0garbage") == IdentifySystemCmd()


_WORDS = st.sampled_from(
    ["IDENTIFY_SYSTEM", "SHOW", "TIMELINE_HISTORY", "START_REPLICATION", "SLOT", "PHYSICAL",
     "LOGICAL", "TIMELINE", "CREATE_REPLICATION_SLOT", "TEMPORARY", "RESERVE_WAL", "WAIT",
     "UPLOAD_MANIFEST", "ALTER_REPLICATION_SLOT", "BASE_BACKUP", "x", "Ab", '"q"', '"a""b"',
     '"', "'s'", "'", "0", "1", "4294967297", "0/0", "FF/1", "(", ")", ",", ";", ".", "-", "é"]
)  # fmt: skip


@given(
    st.lists(_WORDS, max_size=8),
    st.lists(st.sampled_from([" ", "", "\t", "\v", "\n"]), min_size=8, max_size=8),
    st.sampled_from([V15, V16, V17, V18]),
)
def test_token_soup_never_crashes(words: list[str], gaps: list[str], version: int) -> None:
    text = "".join(w + g for w, g in zip(words, gaps, strict=False))
    error = verdict(text, version)
    assert error is None or error.sqlstate in {
        "42601", "0A000", "42602", "42622", "XX000", "22023", "55000"
    }  # fmt: skip


@given(st.text(max_size=200), st.sampled_from([V15, V16, V17, V18]))
def test_any_text_gets_a_verdict(text: str, version: int) -> None:
    error = verdict(text, version)
    assert error is None or error.fields()["C"] == error.sqlstate
