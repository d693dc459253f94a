"""pg_hba.conf for the sender, without a server: tokenizing, matching, refusals.

The comparison of every error message with what real PostgreSQL 15, 16 and
18 report in pg_hba_file_rules is in test_sender_auth_pg.py.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from walstream.sender.hba import (
    ConnectionFacts,
    HbaFileError,
    HbaToken,
    default_hba_rules,
    parse_hba,
    read_hba_file,
    rejection_message,
    tokenize_hba,
)

LOOPBACK = ipaddress.ip_address("127.0.0.1")
LOOPBACK6 = ipaddress.ip_address("::1")


def facts(
    user: str = "alice", address: str | None = "127.0.0.1", ssl: bool = False
) -> ConnectionFacts:
    return ConnectionFacts(user, None if address is None else ipaddress.ip_address(address), ssl)


def first_line(text: str, who: ConnectionFacts, interfaces: list[str] | None = None) -> int | None:
    rules = parse_hba(text, "hba.conf")
    found = rules.match(who, [ipaddress.ip_interface(i) for i in interfaces or []])
    return None if found is None else found.line_number


# -- tokenizing -----------------------------------------------------------------


def fields_of(text: str) -> list[list[list[tuple[str, bool]]]]:
    return [
        [[(t.string, t.quoted) for t in field] for field in line.fields]
        for line in tokenize_hba(text, "f")
    ]


def test_tokens_quotes_and_comments() -> None:
    assert fields_of('host "my db",x "a ""b"" c"  # comment "x"\n') == [
        [[("host", False)], [("my db", True), ("x", False)], [('a "b" c', True)]]
    ]


def test_comma_lists_follow_postgresql() -> None:
    # A comma ends a value and the field goes on; blanks before a comma end
    # the field (PostgreSQL's tokenizer does exactly this).
    assert fields_of("a,b, c d ,e\n") == [
        [[("a", False), ("b", False), ("c", False)], [("d", False)], [("e", False)]]
    ]


def test_quoted_keyword_is_not_a_keyword() -> None:
    (line,) = tokenize_hba('host "all" all\n', "f")
    assert line.fields[1][0] == HbaToken("all", quoted=True)
    assert not line.fields[1][0].is_keyword("all")
    assert line.fields[2][0].is_keyword("all")


def test_line_continuation_and_numbers() -> None:
    text = (
        "# header\nhost replication all \\\n   127.0.0.1/32 \\\n trust\n"
        "local replication all trust\r\n"
    )
    lines = tokenize_hba(text, "f")
    assert [line.line_number for line in lines] == [2, 5]
    assert [len(line.fields) for line in lines] == [5, 4]
    assert lines[0].raw_line == "host replication all    127.0.0.1/32  trust"
    rules = parse_hba(text, "f")
    assert [line.line_number for line in rules.lines] == [2, 5]


def test_double_backslash_continues_once() -> None:
    # "\\" then two line ends: the second backslash continues, the first stays.
    lines = tokenize_hba("a \\\\\n\nb\n", "f")
    assert [(line.line_number, line.raw_line) for line in lines] == [(1, "a \\"), (3, "b")]


def test_blank_and_comment_lines_are_dropped() -> None:
    assert tokenize_hba("\n   \n# x\n\t# y\n", "f") == []


# -- matching -------------------------------------------------------------------


def test_first_match_wins() -> None:
    text = """
host replication alice 127.0.0.1/32 reject
host replication all   127.0.0.1/32 trust
"""
    assert first_line(text, facts("alice")) == 2
    assert first_line(text, facts("bob")) == 3
    assert parse_hba(text, "f").match(facts("alice")).method == "reject"  # type: ignore[union-attr]


def test_only_the_replication_keyword_matches() -> None:
    text = """
host all           all 127.0.0.1/32 trust
host "replication" all 127.0.0.1/32 trust
host alice,/rep    all 127.0.0.1/32 trust
host sameuser      all 127.0.0.1/32 trust
host db,replication all 127.0.0.1/32 md5
"""
    rules = parse_hba(text, "f")
    line = rules.match(facts())
    assert line is not None
    assert (line.line_number, line.method) == (6, "md5")


def test_users() -> None:
    text = """
host replication alice,"bob"   127.0.0.1/32 trust
host replication "all"         127.0.0.1/32 md5
host replication /^svc_[0-9]+$ 127.0.0.1/32 password
host replication /x,"/a,b"     127.0.0.1/32 reject
host replication all           ::1/128      trust
"""
    assert first_line(text, facts("alice")) == 2
    assert first_line(text, facts("bob")) == 2
    assert first_line(text, facts("all")) == 3  # a quoted "all" is a name
    assert first_line(text, facts("svc_12")) == 4
    assert first_line(text, facts("svc_12b")) is None
    assert first_line(text, facts("maxi")) == 5  # a regex searches, unanchored
    assert first_line(text, facts("a,b")) == 5  # quoted: the comma is part of the pattern
    assert first_line(text, facts("Alice")) is None  # names are case-sensitive
    assert first_line(text, facts("carol", "::1")) == 6


def test_addresses() -> None:
    text = """
host replication all 10.1.0.0/16            trust
host replication all 192.168.1.1 255.255.0.255 md5
host replication all fd00::/8               password
host replication all ::ffff:127.0.0.1/128   reject
"""
    assert first_line(text, facts(address="10.1.200.3")) == 2
    assert first_line(text, facts(address="10.2.0.1")) is None
    assert first_line(text, facts(address="192.168.77.1")) == 3  # a non-contiguous mask
    assert first_line(text, facts(address="192.168.77.2")) is None
    assert first_line(text, facts(address="fd12::1")) == 4
    # Families never mix: the IPv4-mapped line does not match 127.0.0.1 and
    # an IPv4-mapped client does not match an IPv4 line.
    assert first_line(text, facts(address="127.0.0.1")) is None
    assert first_line(text, facts(address="::ffff:10.1.0.1")) is None
    assert first_line(text, facts(address="::ffff:127.0.0.1")) == 5


def test_all_samehost_samenet() -> None:
    interfaces = ["127.0.0.1/8", "192.0.2.2/24", "fd00::2/64"]
    text = "host replication all samehost trust\nhost replication all samenet md5\n"
    assert first_line(text, facts(address="192.0.2.2"), interfaces) == 1
    assert first_line(text, facts(address="192.0.2.9"), interfaces) == 2
    assert first_line(text, facts(address="fd00::77"), interfaces) == 2
    assert first_line(text, facts(address="198.51.100.1"), interfaces) is None
    assert first_line(text, facts(address="192.0.2.9"), []) is None
    assert parse_hba(text, "f").needs_interfaces
    assert first_line("host replication all all trust\n", facts(address="203.0.113.9")) == 1


def test_connection_types() -> None:
    text = """
local        replication all                trust
hostnossl    replication all 127.0.0.1/32   md5
hostssl      replication all 127.0.0.1/32   scram-sha-256
hostgssenc   replication all 0.0.0.0/0      reject
hostnogssenc replication all 0.0.0.0/0      password
"""
    assert first_line(text, facts(address=None)) == 2
    assert first_line(text, facts()) == 3
    assert first_line(text, facts(ssl=True)) == 4
    # hostgssenc never matches: no GSSAPI encryption; hostnogssenc always can.
    assert first_line(text, facts(address="10.0.0.1", ssl=True)) == 6


def test_local_ident_means_peer() -> None:
    rules = parse_hba("local replication all ident\n", "f")
    assert rules.lines[0].method == "peer"


def test_options() -> None:
    rules = parse_hba(
        "hostssl replication all all scram-sha-256 clientcert=verify-full clientname=CN\n"
        "hostssl replication all all cert\n"
        "hostssl replication all all md5 clientcert=verify-ca\n",
        "f",
    )
    assert [line.clientcert for line in rules.lines] == ["verify-full", "verify-full", "verify-ca"]


def test_default_rules() -> None:
    rules = default_hba_rules()
    assert [line.method for line in rules.lines] == ["trust"] * 3
    assert rules.match(facts(address=None)) is not None
    assert rules.match(facts()) is not None
    assert rules.match(facts(address="::1")) is not None
    assert rules.match(facts(address="192.0.2.1")) is None


# -- errors ---------------------------------------------------------------------


def test_every_bad_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "pg_hba.conf"
    path.write_text(
        "local replication all trust\n"
        "host replication all 127.0.0.1/33 trust\n"
        "# fine\n"
        "host replication all 127.0.0.1/32 ldap\n"
    )
    with pytest.raises(HbaFileError) as info:
        read_hba_file(path)
    errors = info.value.errors
    assert [(e.line_number, e.message) for e in errors] == [
        (2, 'invalid CIDR mask in address "127.0.0.1/33"'),
        (4, 'invalid authentication method "ldap": not supported by this build'),
    ]
    text = str(info.value)
    assert f'(line 2 of configuration file "{path}")' in text
    assert f'(line 4 of configuration file "{path}")' in text


def test_hints_are_postgresqls() -> None:
    with pytest.raises(HbaFileError) as info:
        parse_hba("host replication all 127.0.0.1\n", "f")
    (error,) = info.value.errors
    assert error.message == "end-of-line before netmask specification"
    assert error.hint == "Specify an address range in CIDR notation, or provide a separate netmask."
    assert "HINT:  Specify an address range" in str(error)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("host replication +admins 127.0.0.1/32 trust", 'group membership "+admins"'),
        ("host replication @users 127.0.0.1/32 trust", 'file inclusion "@users"'),
        ("host @dbs all 127.0.0.1/32 trust", 'file inclusion "@dbs"'),
        ("include other.conf", '"include" directives are not supported'),
        ("include_dir conf.d", '"include_dir" directives are not supported'),
        ("host replication all db.example.com trust", 'host name "db.example.com"'),
        ("local replication all peer map=omicron", 'authentication option "map" is not supported'),
        ("hostssl replication all all cert clientname=DN", 'clientname "DN" is not supported'),
        ("host replication all 127.0.0.1/32 ident", 'invalid authentication method "ident": not'),
        ("host replication all 127.0.0.1/32 gss", 'invalid authentication method "gss": not'),
    ],
)
def test_refused_clearly(line: str, message: str) -> None:
    with pytest.raises(HbaFileError) as info:
        parse_hba(line + "\n", "f")
    (error,) = info.value.errors
    assert error.message.startswith(message)
    assert error.line_number == 1


def test_quoted_plus_and_at_are_names() -> None:
    rules = parse_hba('host replication "+admins","@users" 127.0.0.1/32 trust\n', "f")
    assert rules.match(facts("+admins")) is not None
    assert rules.match(facts("@users")) is not None


def test_empty_file() -> None:
    with pytest.raises(HbaFileError, match='configuration file "f" contains no entries'):
        parse_hba("# nothing\n", "f")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HbaFileError, match="could not open file"):
        read_hba_file(tmp_path / "nope")


def test_warnings() -> None:
    rules = parse_hba(
        "hostssl replication all all trust\nhostgssenc replication all all trust\n", "f"
    )
    assert [(w.line_number, w.message) for w in rules.warnings(ssl_enabled=False)] == [
        (1, "hostssl record cannot match because SSL is disabled"),
        (2, "hostgssenc record cannot match because GSSAPI is not supported by this build"),
    ]
    assert len(rules.warnings(ssl_enabled=True)) == 1


# -- refusal messages -----------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "explicit", "message"),
    [
        (
            facts("bob"),
            False,
            'no pg_hba.conf entry for replication connection from host "127.0.0.1", '
            'user "bob", no encryption',
        ),
        (
            facts("bob", ssl=True),
            False,
            'no pg_hba.conf entry for replication connection from host "127.0.0.1", '
            'user "bob", SSL encryption',
        ),
        (
            facts("bob", address=None),
            True,
            'pg_hba.conf rejects replication connection for host "[local]", '
            'user "bob", no encryption',
        ),
        (
            facts("bob", address="::ffff:127.0.0.1"),
            True,
            'pg_hba.conf rejects replication connection for host "::ffff:127.0.0.1", '
            'user "bob", no encryption',
        ),
    ],
)
def test_rejection_messages(who: ConnectionFacts, explicit: bool, message: str) -> None:
    assert rejection_message(who, explicit=explicit) == message
