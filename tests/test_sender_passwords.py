"""The sender's password verifiers and passwords file, without a server.

The real-server checks (verifiers copied from pg_authid, verifiers we make
accepted by PostgreSQL and libpq) are in test_sender_auth_pg.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from walstream.sender.passwords import (
    Md5Verifier,
    PasswordsFileError,
    ScramVerifier,
    format_password_line,
    load_passwords,
    make_md5_verifier,
    make_scram_verifier,
    parse_passwords,
    parse_verifier,
    pg_b64_decode,
    pg_saslprep,
)

# A verifier PostgreSQL 16 stored for the password "scrampass" (SELECT rolpassword
# FROM pg_authid), and the MD5 hash it stores for "md5pass" of role md5_user.
PG_SCRAM = (
    "SCRAM-SHA-256$4096:cGFqcGZ5c3ZxeHhqcWJ6aA==$"
    "Dk6SBnmv2Q0oiYBnkDQqwHBXdeDaiHHJVpyc3mTBDIg=:"
    "ZxsBGQIdrfYCBPyyZ6ku+gdrkbbbv5Q3yIdhfXTRFqE="
)


def test_scram_verifier_round_trips() -> None:
    verifier = make_scram_verifier("secret", salt=b"0123456789abcdef")
    assert isinstance(verifier, ScramVerifier)
    assert verifier.iterations == 4096
    assert len(verifier.salt) == 16
    text = str(verifier)
    assert text.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert parse_verifier(text) == verifier
    assert verifier.verify_password("secret")
    assert not verifier.verify_password("Secret")


def test_scram_verifier_follows_rfc_5802() -> None:
    # The keys from first principles: SaltedPassword = PBKDF2(SHA-256).
    verifier = make_scram_verifier("pencil", salt=b"salt" * 4, iterations=4096)
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", b"salt" * 4, 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    assert verifier.stored_key == hashlib.sha256(client_key).digest()
    assert verifier.server_key == hmac.digest(salted, b"Server Key", "sha256")


def test_salt_is_random_and_injectable() -> None:
    assert make_scram_verifier("x").salt != make_scram_verifier("x").salt
    fixed = make_scram_verifier("x", random_bytes=lambda n: b"\x01" * n)
    assert fixed.salt == b"\x01" * 16


def test_md5_verifier() -> None:
    verifier = make_md5_verifier("md5pass", "md5_user")
    assert str(verifier) == "md5" + hashlib.md5(b"md5passmd5_user").hexdigest()
    assert parse_verifier(str(verifier)) == verifier
    assert verifier.verify_password("md5pass", "md5_user")
    assert not verifier.verify_password("md5pass", "other")
    salt = b"\x01\x02\x03\x04"
    inner = hashlib.md5(b"md5passmd5_user").hexdigest().encode()
    assert (
        verifier.expected_response(salt) == b"md5" + hashlib.md5(inner + salt).hexdigest().encode()
    )


@pytest.mark.parametrize(
    "text",
    [
        "md5" + "A" * 32,  # PostgreSQL's MD5 charset is lower case only
        "md5" + "a" * 31,
        "plaintext",
        "SCRAM-SHA-256$4096:c2FsdA==$AAAA:BBBB",  # keys not 32 bytes
        "SCRAM-SHA-256$x:c2FsdA==$" + "A" * 44 + ":" + "A" * 44,
        "SCRAM-SHA-256$0:c2FsdA==$" + base64.b64encode(bytes(32)).decode() * 2,
        "SCRAM-SHA-256$4096:!!$" + base64.b64encode(bytes(32)).decode() + ":x",
        "SCRAM-SHA-1$4096:c2FsdA==$AAAA:BBBB",
    ],
)
def test_not_verifiers(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each carries its own reason
        parse_verifier(text)


def test_pg_verifier_parses() -> None:
    verifier = parse_verifier(PG_SCRAM)
    assert isinstance(verifier, ScramVerifier)
    assert verifier.iterations == 4096
    assert str(verifier) == PG_SCRAM


@given(st.binary(max_size=64))
def test_pg_b64_decode_agrees_with_base64(data: bytes) -> None:
    encoded = base64.b64encode(data).decode()
    assert pg_b64_decode(encoded) == data


@pytest.mark.parametrize("text", ["A", "AB", "ABC", "A===", "AB=", "AB*=", "ABC=ABC", "AB C"])
def test_pg_b64_decode_rejects(text: str) -> None:
    assert pg_b64_decode(text) is None


@pytest.mark.parametrize(
    ("password", "prepared"),
    [
        (b"plain ascii \x07", b"plain ascii \x07"),  # ASCII is returned untouched
        ("I\u00adX".encode(), b"IX"),  # soft hyphen maps to nothing
        ("\u00aa".encode(), b"a"),  # NFKC
        ("\u2168".encode(), b"IX"),  # ROMAN NUMERAL NINE
        ("a\u00a0b".encode(), b"a b"),  # non-ASCII space maps to a space
        ("caf\u00e9".encode(), "caf\u00e9".encode()),
        ("\u00ad".encode(), None),  # nothing left: PostgreSQL uses the raw bytes
        ("\u00e9\x07".encode(), None),  # a control character
        ("\u0627a".encode(), None),  # right-to-left mixed with left-to-right
        ("\u0627\u0628".encode(), "\u0627\u0628".encode()),
        (b"\xff\xfe", None),  # not UTF-8
        ("\u0221x\u00e9".encode(), None),  # unassigned in Unicode 3.2
    ],
)
def test_saslprep_as_postgresql(password: bytes, prepared: bytes | None) -> None:
    assert pg_saslprep(password) == prepared


def test_unpreparable_password_hashes_raw_bytes() -> None:
    raw = "\u00e9\x07".encode()
    verifier = make_scram_verifier(raw, salt=bytes(16))
    salted = hashlib.pbkdf2_hmac("sha256", raw, bytes(16), 4096)
    assert verifier.server_key == hmac.digest(salted, b"Server Key", "sha256")


# -- the passwords file ---------------------------------------------------------


def test_passwords_file(tmp_path: Path) -> None:
    md5 = make_md5_verifier("pw", "alice")
    text = f"""
# replication roles, copied from the primary
alice:{md5}
  bob:{PG_SCRAM}

"odd:name":{PG_SCRAM}
\"\"\"quoted\"\" one":{md5}
"""
    path = tmp_path / "passwords"
    path.write_text(text)
    verifiers = load_passwords(path)
    assert verifiers == {
        "alice": md5,
        "bob": parse_verifier(PG_SCRAM),
        "odd:name": parse_verifier(PG_SCRAM),
        '"quoted" one': md5,
    }


@pytest.mark.parametrize(
    "role", ["plain", "with:colon", '"starts with quote', "#hash", " padded ", "mid dle", "é", ""]
)
def test_format_then_parse(role: str) -> None:
    verifier = make_md5_verifier("pw", role or "x")
    line = format_password_line(role, verifier)
    if role == "":
        with pytest.raises(PasswordsFileError, match="empty role name"):
            parse_passwords(line, "f")
        return
    assert parse_passwords(line, "f") == {role: verifier}
    if role == "plain":
        assert line == f"plain:{verifier}"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("alice:md5abc", 1, "not a password verifier"),
        ("# c\n\nalice", 3, 'expected "role:verifier"'),
        ('"alice:md5', 1, "unterminated quoted role name"),
        ('"alice"md5', 1, 'expected ":" after the quoted role name'),
        (f"a:{PG_SCRAM}\na:{PG_SCRAM}", 2, 'role "a" appears more than once'),
        (":" + PG_SCRAM, 1, "empty role name"),
    ],
)
def test_passwords_file_errors(text: str, line: int, message: str) -> None:
    with pytest.raises(PasswordsFileError) as info:
        parse_passwords(text, "/etc/walstream/passwords")
    assert info.value.line_number == line
    assert message in str(info.value)
    assert f'(line {line} of passwords file "/etc/walstream/passwords")' in str(info.value)


def test_missing_passwords_file(tmp_path: Path) -> None:
    with pytest.raises(PasswordsFileError, match="could not read file"):
        load_passwords(tmp_path / "nope")


def test_md5_verifier_type() -> None:
    assert isinstance(parse_verifier("md5" + "0" * 32), Md5Verifier)
