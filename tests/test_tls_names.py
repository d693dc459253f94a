"""libpq's host-name rules for verify-full, on certificate dictionaries."""

from __future__ import annotations

import pytest

from walstream import ConnectError
from walstream.client.tls import check_host_name

SAN = {
    "subject": ((("commonName", "cn.example"),),),
    "subjectAltName": (
        ("DNS", "db.example"),
        ("DNS", "*.pool.example"),
        ("IP Address", "10.0.0.5"),
    ),
}
CN_ONLY = {"subject": ((("commonName", "cn.example"),),)}


@pytest.mark.parametrize(
    ("cert", "host"),
    [
        (SAN, "db.example"),
        (SAN, "DB.EXAMPLE"),
        (SAN, "a.pool.example"),
        (SAN, "10.0.0.5"),
        (CN_ONLY, "cn.example"),
        # An IP host with only dNSName SANs still falls back to the CN.
        (
            {**CN_ONLY, "subjectAltName": (("DNS", "db.example"),)}
            | {"subject": ((("commonName", "10.0.0.9"),),)},
            "10.0.0.9",
        ),
    ],
)
def test_matches(cert: dict[str, object], host: str) -> None:
    check_host_name(cert, host)


@pytest.mark.parametrize(
    ("cert", "host", "message"),
    [
        # The CN is ignored when dNSName SANs exist.
        (SAN, "cn.example", 'server certificate for "db.example" (and 2 other names)'),
        # A wildcard matches one label only.
        (SAN, "a.b.pool.example", "does not match host name"),
        (SAN, "pool.example", "does not match host name"),
        (SAN, "10.0.0.6", "does not match host name"),
        (CN_ONLY, "other.example", 'server certificate for "cn.example" does not match host name'),
    ],
)
def test_mismatches(cert: dict[str, object], host: str, message: str) -> None:
    with pytest.raises(ConnectError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_host_name(cert, host)
