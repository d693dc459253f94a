"""synchronous_standby_names and the choice of synchronous standbys: the rules, one by one.

The same rules are checked against real servers in test_sender_syncrep_oracle.py;
the expectations here are the wordings those servers gave (15, 16 and 18 agree).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from walstream.lsn import LSN
from walstream.sender.syncrep import (
    SyncRepConfig,
    SyncRepMethod,
    SyncRepRelease,
    SyncRepStandby,
    SyncStandbyNamesError,
    WaitMode,
    parse_synchronous_standby_names,
    sync_standbys,
    sync_states,
    synced_positions,
    wait_mode,
)

FIRST = SyncRepMethod.PRIORITY
ANY = SyncRepMethod.QUORUM


@pytest.mark.parametrize(
    ("value", "num_sync", "method", "members"),
    [
        ("a", 1, FIRST, ("a",)),
        ("s1, s2", 1, FIRST, ("s1", "s2")),
        ("2 (s1, s2, s3)", 2, FIRST, ("s1", "s2", "s3")),
        ("FIRST 2 (s1, s2)", 2, FIRST, ("s1", "s2")),
        ("first 1 (s1)", 1, FIRST, ("s1",)),
        ("ANY 2 (s1,s2)", 2, ANY, ("s1", "s2")),
        ("aNy 1 (*)", 1, ANY, ("*",)),
        ("*", 1, FIRST, ("*",)),
        ('"*"', 1, FIRST, ("*",)),
        ("MixedCase", 1, FIRST, ("MixedCase",)),  # kept as written, compared without case
        ('"with space", "a""b", ""', 1, FIRST, ("with space", 'a"b', "")),
        ('""""', 1, FIRST, ('"',)),
        ('ANY 1 ("any", "FIRST")', 1, ANY, ("any", "FIRST")),
        ("anyone, firstly", 1, FIRST, ("anyone", "firstly")),
        ("1, 2", 1, FIRST, ("1", "2")),
        ("1", 1, FIRST, ("1",)),
        ("1 (2)", 1, FIRST, ("2",)),
        ("3 (a, b)", 3, FIRST, ("a", "b")),  # more than listed: accepted, never satisfied
        ("a, a", 1, FIRST, ("a", "a")),
        ("_x$1, é", 1, FIRST, ("_x$1", "é")),
        ("\ta ,\r\n\fb\v", 1, FIRST, ("a", "b")),
        ("007 (a)", 7, FIRST, ("a",)),
        ("4294967297 (a)", 1, FIRST, ("a",)),  # C's atoi keeps the low 32 bits
    ],
)
def test_accepted_values(
    value: str, num_sync: int, method: SyncRepMethod, members: tuple[str, ...]
) -> None:
    assert parse_synchronous_standby_names(value) == SyncRepConfig(num_sync, method, members)


def test_empty_means_no_synchronous_standbys() -> None:
    assert parse_synchronous_standby_names("") is None


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("  ", "syntax error at end of input"),
        ("first", "syntax error at end of input"),
        ("ANY", "syntax error at end of input"),
        ("a,", "syntax error at end of input"),
        ("FIRST 1 (a", "syntax error at end of input"),
        (",", 'syntax error at or near ","'),
        ("a,,b", 'syntax error at or near ","'),
        ("a b", 'syntax error at or near "b"'),
        ("1abc", 'syntax error at or near "abc"'),
        ("1e5", 'syntax error at or near "e5"'),
        ("$a", 'syntax error at or near "$"'),
        ("a-b", 'syntax error at or near "-"'),
        ("-1 (a)", 'syntax error at or near "-"'),
        ("(a)", 'syntax error at or near "("'),
        ("ANY (a)", 'syntax error at or near "("'),
        ("first(a)", 'syntax error at or near "("'),
        ("FIRST1 (a)", 'syntax error at or near "("'),
        ("first 1 ()", 'syntax error at or near ")"'),
        ("a)", 'syntax error at or near ")"'),
        ("FIRST 1 (a) b", 'syntax error at or near "b"'),
        ("FIRST 1 (a), b", 'syntax error at or near ","'),
        ("ANY 1 (any)", 'syntax error at or near "any"'),
        ("any any (a)", 'syntax error at or near "any"'),
        ("a.b", 'syntax error at or near "."'),
        ("x;", 'syntax error at or near ";"'),
        ("a'b", 'syntax error at or near "\'"'),
        ("a ä", 'syntax error at or near "ä"'),
        # After a quoted name the scanner's last match is its closing quote.
        ('a "b"', 'syntax error at or near """'),
        ('"a" "b"', 'syntax error at or near """'),
        ('a ""', 'syntax error at or near """'),
        ('"a""b" c', 'syntax error at or near "c"'),
        ('"a"(', 'syntax error at or near "("'),
        ('"unterminated', "unterminated quoted identifier at end of input"),
        ('"a""', "unterminated quoted identifier at end of input"),
        # The scanner reports an unterminated quote when the parser asks for
        # that token, so an earlier syntax error wins and a later one loses.
        ('a, "b', "unterminated quoted identifier at end of input"),
        ('a "b', "unterminated quoted identifier at end of input"),
        ('a b "c', 'syntax error at or near "b"'),
        ('ANY 1 (a), "q', 'syntax error at or near ","'),
    ],
)
def test_syntax_errors(value: str, detail: str) -> None:
    with pytest.raises(SyncStandbyNamesError) as info:
        parse_synchronous_standby_names(value)
    assert info.value.sqlstate == "42601"
    assert info.value.message == (
        f'invalid value for parameter "synchronous_standby_names": "{value}"'
    )
    assert info.value.detail == detail


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("0 (a)", 0),
        ("FIRST 0 (a)", 0),
        ("ANY 0 (a)", 0),
        ("2147483648 (a)", -2147483648),
        ("99999999999999999999 (a)", -1),  # strtol saturates, the cast keeps 32 bits
    ],
)
def test_number_must_be_positive(value: str, shown: int) -> None:
    with pytest.raises(SyncStandbyNamesError) as info:
        parse_synchronous_standby_names(value)
    assert info.value.sqlstate == "22023"
    assert info.value.message == (
        f"number of synchronous standbys ({shown}) must be greater than zero"
    )
    assert info.value.detail is None


@given(st.text(alphabet=st.sampled_from('ab1 ,()*"$-éAnYfIrSt\t'), max_size=30))
def test_parser_either_parses_or_raises_postgresql_error(value: str) -> None:
    error: SyncStandbyNamesError | None = None
    try:
        config = parse_synchronous_standby_names(value)
    except SyncStandbyNamesError as e:
        error = e
    if error is not None:
        assert error.sqlstate in ("42601", "22023")
    else:
        assert config is None or (config.num_sync > 0 and config.members)


@given(st.lists(st.text(min_size=0, max_size=8), min_size=1, max_size=5))
def test_quoted_names_round_trip(names: list[str]) -> None:
    value = ", ".join('"' + n.replace('"', '""') + '"' for n in names)
    config = parse_synchronous_standby_names(value)
    assert config is not None
    assert config.members == tuple(names)


# -- priorities -------------------------------------------------------------


def test_priority_is_the_first_matching_position_under_first() -> None:
    config = parse_synchronous_standby_names("s1, S2, s1, *, s3")
    assert config is not None
    assert config.priority("s1") == 1
    assert config.priority("s2") == 2  # ASCII letters compare without case
    assert config.priority("S1") == 1
    assert config.priority("s3") == 4  # the wildcard comes first
    assert config.priority("other") == 4


def test_priority_is_one_for_every_listed_name_under_any() -> None:
    config = parse_synchronous_standby_names("ANY 1 (s1, s2)")
    assert config is not None
    assert (config.priority("s1"), config.priority("S2"), config.priority("s3")) == (1, 1, 0)


def test_priority_folds_ascii_only() -> None:
    config = parse_synchronous_standby_names("é, straße")
    assert config is not None
    assert config.priority("É") == 0
    assert config.priority("STRAßE") == 2
    assert config.priority("STRASSE") == 0


def test_empty_quoted_name_matches_an_empty_application_name() -> None:
    config = parse_synchronous_standby_names('a, ""')
    assert config is not None
    assert config.priority("") == 2


# -- choice and states --------------------------------------------------------


def standby(
    index: int, priority: int, flush: int = 0x100, state: str = "streaming", **pos: int
) -> SyncRepStandby:
    return SyncRepStandby(
        index=index,
        state=state,  # type: ignore[arg-type]
        priority=priority,
        write=pos.get("write", flush),
        flush=flush,
        apply=pos.get("apply", flush),
    )


def config(value: str) -> SyncRepConfig:
    parsed = parse_synchronous_standby_names(value)
    assert parsed is not None
    return parsed


def test_first_picks_best_priorities_and_lower_slot_on_ties() -> None:
    c = config("FIRST 2 (a, b, *)")
    standbys = [standby(0, 3), standby(1, 2), standby(2, 3), standby(3, 1)]
    assert [s.index for s in sync_standbys(c, standbys)] == [3, 1]
    assert sync_states(c, standbys) == [
        (3, "potential"),
        (2, "sync"),
        (3, "potential"),
        (1, "sync"),
    ]
    ties = [standby(5, 3), standby(2, 3), standby(7, 3)]
    c = config("FIRST 2 (x, y, *)")
    assert [s.index for s in sync_standbys(c, ties)] == [2, 5]
    assert sync_states(c, ties) == [(3, "sync"), (3, "sync"), (3, "potential")]


def test_first_with_enough_room_takes_every_candidate() -> None:
    standbys = [standby(0, 2), standby(1, 1)]
    assert sync_states(config("FIRST 3 (a, b)"), standbys) == [(2, "sync"), (1, "sync")]


def test_any_takes_every_candidate_as_quorum() -> None:
    c = config("ANY 1 (a, b, c)")
    standbys = [standby(0, 1), standby(1, 1), standby(2, 0)]
    assert sync_states(c, standbys) == [(1, "quorum"), (1, "quorum"), (0, "async")]


@pytest.mark.parametrize("state", ["startup", "catchup", "backup"])
def test_only_streaming_or_stopping_standbys_are_candidates(state: str) -> None:
    c = config("FIRST 1 (a, b)")
    standbys = [standby(0, 1, state=state), standby(1, 2)]
    assert sync_states(c, standbys) == [(1, "potential"), (2, "sync")]
    stopping = [standby(0, 1, state="stopping"), standby(1, 2)]
    assert sync_states(c, stopping) == [(1, "sync"), (2, "potential")]


def test_invalid_flush_is_async_with_priority_zero() -> None:
    c = config("ANY 1 (a, b)")
    standbys = [standby(0, 1, flush=0, write=0x500), standby(1, 1)]
    assert sync_states(c, standbys) == [(0, "async"), (1, "quorum")]


def test_no_configuration_makes_everyone_async() -> None:
    # Without a configuration every priority is 0 (SyncRepGetStandbyPriority).
    standbys = [standby(0, 0), standby(1, 0)]
    assert sync_states(None, standbys) == [(0, "async"), (0, "async")]
    assert sync_standbys(None, standbys) == []


# -- release positions ----------------------------------------------------------


def test_first_releases_the_oldest_positions_of_the_chosen() -> None:
    c = config("FIRST 2 (a, b, c)")
    standbys = [
        standby(0, 1, write=0x900, flush=0x800, apply=0x100),
        standby(1, 2, write=0x700, flush=0x850, apply=0x200),
        standby(2, 3, write=0x100, flush=0x100, apply=0x100),  # potential: ignored
    ]
    assert synced_positions(c, standbys) == (LSN(0x700), LSN(0x800), LSN(0x100))


def test_any_releases_the_nth_newest_of_each_position() -> None:
    c = config("ANY 2 (a, b, c)")
    standbys = [
        standby(0, 1, write=0x900, flush=0x300, apply=0x100),
        standby(1, 1, write=0x700, flush=0x850, apply=0x200),
        standby(2, 1, write=0x800, flush=0x600, apply=0x50),
    ]
    assert synced_positions(c, standbys) == (LSN(0x800), LSN(0x600), LSN(0x100))


def test_too_few_synchronous_standbys_release_nothing() -> None:
    c = config("ANY 2 (a, b)")
    assert synced_positions(c, [standby(0, 1), standby(1, 1, flush=0)]) is None
    assert synced_positions(None, [standby(0, 1)]) is None


def test_release_only_on_a_synchronous_standby_reply_and_never_backwards() -> None:
    c = config("FIRST 1 (a, b)")
    a = standby(0, 1, flush=0x500)
    b = standby(1, 2, flush=0x900)
    release = SyncRepRelease()
    assert not release.standby_replied(c, [a, b], b)  # b is only potential
    assert release.flush == 0
    assert release.standby_replied(c, [a, b], a)
    assert (release.write, release.flush, release.apply) == (0x500, 0x500, 0x500)
    assert release.released(0x500, WaitMode.FLUSH)
    assert not release.released(0x501, WaitMode.FLUSH)
    # a leaves; b becomes synchronous, but nothing moves until b replies.
    assert not release.standby_replied(c, [b], a)
    assert release.standby_replied(c, [b], b)
    assert release.flush == 0x900
    # A synchronous standby that goes back does not take releases back.
    a_behind = standby(0, 1, flush=0x300)
    assert not release.standby_replied(c, [a_behind, b], a_behind)
    assert release.flush == 0x900


def test_release_ignores_a_replier_that_is_not_a_candidate() -> None:
    c = config("ANY 1 (a)")
    release = SyncRepRelease()
    starting = standby(0, 1, state="catchup")
    assert not release.standby_replied(c, [starting], starting)
    assert not release.standby_replied(None, [standby(0, 1)], standby(0, 1))


def test_wait_modes() -> None:
    assert wait_mode("remote_write") is WaitMode.WRITE
    assert wait_mode("on") is WaitMode.FLUSH
    assert wait_mode("remote_apply") is WaitMode.APPLY
    assert wait_mode("local") is None
    assert wait_mode("off") is None
    with pytest.raises(ValueError, match="unknown"):
        wait_mode("yes")
