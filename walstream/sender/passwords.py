"""Password verifiers exactly as ``pg_authid.rolpassword`` holds them, and the ``--passwords`` file.

A verifier is what PostgreSQL stores instead of a password: a SCRAM-SHA-256
secret (``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``) or an
MD5 hash (``md5`` + 32 hex digits of md5(password + role name)). Because the
sender accepts the same strings, an operator copies the primary's replication
roles with ``SELECT rolname, rolpassword FROM pg_authid`` and the same
credentials work against walstream; :func:`make_scram_verifier` and
:func:`make_md5_verifier` produce what PostgreSQL itself would store, for
``walstream passwd``.

The ``--passwords`` file holds one ``role:verifier`` per line. Blank lines and
lines whose first non-blank character is ``#`` are ignored, as is white space
around a line. A role name that contains ``:``, begins with ``"`` or ``#``, or
begins or ends with white space is written in double quotes, with a double
quote inside doubled (SQL's identifier quoting): ``"a:b":SCRAM-SHA-256$...``.
:func:`format_password_line` quotes exactly when needed. The verifier never
needs quoting: it runs to the end of the line.

Everything here is pure computation; :func:`load_passwords` is the one
function that reads a file.

Errors: :class:`PasswordsFileError`, naming the file and line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from walstream.errors import Error

__all__ = [
    "SCRAM_ITERATIONS_DEFAULT",
    "SCRAM_SALT_LENGTH",
    "Md5Verifier",
    "PasswordsFileError",
    "ScramVerifier",
    "Verifier",
    "format_password_line",
    "load_passwords",
    "make_md5_verifier",
    "make_scram_verifier",
    "parse_passwords",
    "parse_verifier",
    "pg_b64_decode",
    "pg_saslprep",
]

# PostgreSQL's SCRAM_SHA_256_DEFAULT_ITERATIONS (the scram_iterations
# setting's default from 16 on) and SCRAM_DEFAULT_SALT_LEN.
SCRAM_ITERATIONS_DEFAULT: Final = 4096
SCRAM_SALT_LENGTH: Final = 16
SCRAM_KEY_LENGTH: Final = 32  # SHA-256

_MD5_PREFIX: Final = "md5"
_MD5_HEX: Final = frozenset("0123456789abcdef")  # PostgreSQL's MD5_PASSWD_CHARSET: lower case only
_SCRAM_PREFIX: Final = "SCRAM-SHA-256$"
_BAD_SCRAM: Final = "malformed SCRAM-SHA-256 verifier"


class PasswordsFileError(Error, ValueError):
    """A line of the passwords file is malformed; names the file and the line."""

    def __init__(self, file_name: str, line_number: int, message: str) -> None:
        self.file_name = file_name
        self.line_number = line_number
        self.message = message
        super().__init__(f'{message} (line {line_number} of passwords file "{file_name}")')


# ---------------------------------------------------------------------------
# base64 and SASLprep as PostgreSQL does them
# ---------------------------------------------------------------------------

_B64_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64: Final = {c: i for i, c in enumerate(_B64_ALPHABET)}


def pg_b64_decode(text: str) -> bytes | None:
    """Decode base64 as PostgreSQL's pg_b64_decode does, or None where it fails.

    Input comes in whole quanta of four; white space is an error. One quirk
    is kept because a verifier or a SCRAM proof that PostgreSQL accepts must
    be accepted here too: after the first "=" padding, further quanta decode
    with the same number of bytes dropped instead of failing.
    """
    out = bytearray()
    acc = 0
    pos = 0  # characters in the current quantum
    end = 0  # 1 or 2 once "=" padding was seen: bytes to drop from each quantum
    for ch in text.encode("utf-8"):
        if ch == 0x3D:  # "="
            if not end:
                if pos == 2:
                    end = 1
                elif pos == 3:
                    end = 2
                else:
                    return None
            value = 0
        else:
            found = _B64.get(ch)
            if found is None:
                return None
            value = found
        acc = (acc << 6) | value
        pos += 1
        if pos == 4:
            out.append((acc >> 16) & 0xFF)
            if end != 1:
                out.append((acc >> 8) & 0xFF)
            if end == 0:
                out.append(acc & 0xFF)
            acc = pos = 0
    if pos:
        return None  # truncated, or missing its padding
    return bytes(out)


def _prohibited(ch: str) -> bool:
    # PostgreSQL's prohibited_output_ranges: stringprep C.1.2 and C.2 to C.9.
    return (
        stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
    )


def pg_saslprep(password: bytes) -> bytes | None:
    """SASLprep as PostgreSQL's pg_saslprep applies it; None where it gives up.

    Where PostgreSQL gives up (not UTF-8, a prohibited character, nothing
    left after mapping) it hashes the raw bytes instead, so callers do that.
    Two of its choices differ from RFC 4013 and from scramp's ``saslprep``,
    and are followed here because the verifier must come out byte for byte
    as PostgreSQL would store it: pure ASCII is returned unchanged without
    any check, and the prohibited-character and bidirectional checks look at
    the mapped input *before* NFKC normalization.
    """
    if password.isascii():
        return password
    try:
        text = password.decode("utf-8")
    except UnicodeDecodeError:
        return None
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    if not mapped:
        return None  # PostgreSQL refuses an empty password here
    for ch in mapped:
        if _prohibited(ch) or stringprep.in_table_a1(ch):
            return None
    if any(stringprep.in_table_d1(ch) for ch in mapped):
        if any(stringprep.in_table_d2(ch) for ch in mapped):
            return None
        if not (stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1])):
            return None
    return unicodedata.normalize("NFKC", mapped).encode("utf-8")


def _prepared(password: str | bytes) -> bytes:
    raw = password.encode("utf-8") if isinstance(password, str) else password
    prepared = pg_saslprep(raw)
    return raw if prepared is None else prepared


# ---------------------------------------------------------------------------
# Verifiers
# ---------------------------------------------------------------------------


def _scram_keys(password: str | bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """StoredKey and ServerKey for a password (RFC 5802 section 3)."""
    salted = hashlib.pbkdf2_hmac("sha256", _prepared(password), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return stored_key, server_key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class ScramVerifier:
    """A SCRAM-SHA-256 secret: what SCRAM authentication needs, not the password."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def __str__(self) -> str:
        return (
            f"{_SCRAM_PREFIX}{self.iterations}:{_b64(self.salt)}"
            f"${_b64(self.stored_key)}:{_b64(self.server_key)}"
        )

    def verify_password(self, password: str | bytes) -> bool:
        """Check a cleartext password, as PostgreSQL's scram_verify_plain_password."""
        _, server_key = _scram_keys(password, self.salt, self.iterations)
        return hmac.compare_digest(server_key, self.server_key)


@dataclass(frozen=True, slots=True)
class Md5Verifier:
    """An MD5 hash: ``md5`` + md5hex(password + role name)."""

    digest: str  # the 32 lower-case hex digits after "md5"

    def __str__(self) -> str:
        return _MD5_PREFIX + self.digest

    def verify_password(self, password: str | bytes, role: str) -> bool:
        """Check a cleartext password (PostgreSQL's plain_crypt_verify)."""
        raw = password.encode("utf-8") if isinstance(password, str) else password
        computed = hashlib.md5(raw + role.encode("utf-8")).hexdigest()
        return hmac.compare_digest(computed, self.digest)

    def expected_response(self, salt: bytes) -> bytes:
        """What a client that knows the password answers to AuthenticationMD5Password."""
        return b"md5" + hashlib.md5(self.digest.encode("ascii") + salt).hexdigest().encode("ascii")


Verifier = ScramVerifier | Md5Verifier

_SCRAM_RE: Final = re.compile(r"SCRAM-SHA-256\$([0-9]+):([^$:]+)\$([^$:]+):([^$:]+)")


def parse_verifier(text: str) -> Verifier:
    """Parse a ``pg_authid.rolpassword`` value; ValueError says why it is not one.

    The checks are PostgreSQL's get_password_type and parse_scram_secret:
    MD5 is exactly ``md5`` and 32 lower-case hex digits; SCRAM's salt must be
    base64 and its keys base64 of 32 bytes each.
    """
    if text.startswith(_MD5_PREFIX) and len(text) == 35 and set(text[3:]) <= _MD5_HEX:
        return Md5Verifier(text[3:])
    if text.startswith(_SCRAM_PREFIX):
        match = _SCRAM_RE.fullmatch(text)
        if match is None:
            raise ValueError(
                f"{_BAD_SCRAM}: expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
            )
        iterations = int(match[1])
        salt = pg_b64_decode(match[2])
        stored_key = pg_b64_decode(match[3])
        server_key = pg_b64_decode(match[4])
        if iterations <= 0:
            raise ValueError(f"{_BAD_SCRAM}: the iteration count must be positive")
        if not salt:
            raise ValueError(f"{_BAD_SCRAM}: the salt is not base64")
        if stored_key is None or len(stored_key) != SCRAM_KEY_LENGTH:
            raise ValueError(f"{_BAD_SCRAM}: StoredKey is not 32 bytes of base64")
        if server_key is None or len(server_key) != SCRAM_KEY_LENGTH:
            raise ValueError(f"{_BAD_SCRAM}: ServerKey is not 32 bytes of base64")
        return ScramVerifier(iterations, salt, stored_key, server_key)
    raise ValueError(
        "not a password verifier: expected SCRAM-SHA-256$... or md5 followed by "
        "32 hex digits, as pg_authid.rolpassword holds them"
    )


def make_scram_verifier(
    password: str | bytes,
    *,
    iterations: int = SCRAM_ITERATIONS_DEFAULT,
    salt: bytes | None = None,
    random_bytes: Callable[[int], bytes] = secrets.token_bytes,
) -> ScramVerifier:
    """The SCRAM-SHA-256 secret PostgreSQL stores for ``password`` (pg_be_scram_build_secret).

    SASLprep as PostgreSQL applies it, a 16-byte random salt, 4096
    iterations unless told otherwise.
    """
    if iterations <= 0:
        raise ValueError("the iteration count must be positive")
    if salt is None:
        salt = random_bytes(SCRAM_SALT_LENGTH)
    stored_key, server_key = _scram_keys(password, salt, iterations)
    return ScramVerifier(iterations, salt, stored_key, server_key)


def make_md5_verifier(password: str | bytes, role: str) -> Md5Verifier:
    """The MD5 hash PostgreSQL stores for ``password`` of ``role`` (pg_md5_encrypt)."""
    raw = password.encode("utf-8") if isinstance(password, str) else password
    return Md5Verifier(hashlib.md5(raw + role.encode("utf-8")).hexdigest())


# ---------------------------------------------------------------------------
# The passwords file
# ---------------------------------------------------------------------------


def _needs_quotes(role: str) -> bool:
    return (
        not role
        or ":" in role
        or role[0] in '"#'
        or role != role.strip()
        or "\n" in role
        or "\r" in role
    )


def format_password_line(role: str, verifier: Verifier) -> str:
    """One line of the passwords file (without the line break)."""
    if "\n" in role or "\r" in role:
        raise ValueError("a role name with a line break cannot be written to the passwords file")
    name = '"' + role.replace('"', '""') + '"' if _needs_quotes(role) else role
    return f"{name}:{verifier}"


def _split_line(line: str) -> tuple[str, str]:
    """``role`` and ``verifier`` of one stripped, non-comment line."""
    if line.startswith('"'):
        i = 1
        name: list[str] = []
        while True:
            end = line.find('"', i)
            if end < 0:
                raise ValueError("unterminated quoted role name")
            name.append(line[i:end])
            if line.startswith('"', end + 1):
                name.append('"')
                i = end + 2
                continue
            rest = line[end + 1 :]
            break
        if not rest.startswith(":"):
            raise ValueError('expected ":" after the quoted role name')
        return "".join(name), rest[1:]
    role, sep, verifier = line.partition(":")
    if not sep:
        raise ValueError('expected "role:verifier"')
    return role, verifier


def parse_passwords(text: str, file_name: str) -> dict[str, Verifier]:
    """The role -> verifier map of a passwords file's contents."""
    verifiers: dict[str, Verifier] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            role, verifier_text = _split_line(line)
            if not role:
                raise ValueError("empty role name")
            verifier = parse_verifier(verifier_text.strip())
        except ValueError as e:
            raise PasswordsFileError(file_name, number, str(e)) from None
        if role in verifiers:
            raise PasswordsFileError(file_name, number, f'role "{role}" appears more than once')
        verifiers[role] = verifier
    return verifiers


def load_passwords(path: str | Path) -> dict[str, Verifier]:
    """Read and parse a passwords file."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise PasswordsFileError(name, 0, f"could not read file: {e.strerror}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise PasswordsFileError(name, line, "invalid UTF-8") from None
    return parse_passwords(text, name)
