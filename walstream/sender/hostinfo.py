"""Facts about a connection that only the operating system or the TLS layer knows.

The pg_hba and authentication modules are sans-IO and take these as
arguments; the shell gathers them here: the server's interface addresses
(for ``samehost``/``samenet``, as PostgreSQL's pg_foreach_ifaddr finds them
with getifaddrs), the OS user at the other end of a Unix socket (``peer``,
from SO_PEERCRED) and the names in a verified client certificate (``cert``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import os
import pwd
import socket
import ssl
import struct
import sys
from typing import Any, Protocol

from walstream.sender.auth import ClientCertificate
from walstream.sender.hba import InterfaceAddress

__all__ = ["client_certificate", "interface_addresses", "peer_user"]


class _IfAddrs(ctypes.Structure):
    pass


# struct ifaddrs: the same field order on Linux and the BSDs (the union
# ifa_ifu / ifa_dstaddr is a pointer either way).
_IfAddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_IfAddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.c_void_p),
    ("ifa_netmask", ctypes.c_void_p),
    ("ifa_ifu", ctypes.c_void_p),
    ("ifa_data", ctypes.c_void_p),
]

# sockaddr layouts: Linux has a 16-bit family first; the BSDs a length byte
# then an 8-bit family. The address sits at offset 4 (IPv4) or 8 (IPv6) in both.
_LINUX = sys.platform.startswith("linux")


def _family(sockaddr: int) -> int:
    raw = ctypes.string_at(sockaddr, 2)
    if _LINUX:
        return int(struct.unpack("=H", raw)[0])
    return raw[1]


def _address_bytes(sockaddr: int, family: int) -> bytes:
    if family == socket.AF_INET:
        return ctypes.string_at(sockaddr + 4, 4)
    return ctypes.string_at(sockaddr + 8, 16)


def interface_addresses() -> list[InterfaceAddress]:
    """Every IPv4 and IPv6 address of this host's interfaces, with its netmask."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name, use_errno=True)
    head = ctypes.POINTER(_IfAddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"error enumerating network interfaces: {os.strerror(errno)}")
    found: list[InterfaceAddress] = []
    try:
        node = head
        while node:
            entry = node.contents
            if entry.ifa_addr and entry.ifa_netmask:
                family = _family(entry.ifa_addr)
                if family in (socket.AF_INET, socket.AF_INET6):
                    address = _address_bytes(entry.ifa_addr, family)
                    mask = _address_bytes(entry.ifa_netmask, family)
                    prefix = bin(int.from_bytes(mask, "big")).count("1")
                    found.append(ipaddress.ip_interface((address, prefix)))
            node = entry.ifa_next
    finally:
        libc.freeifaddrs(head)
    return found


class _Socket(Protocol):
    """What is needed of a socket: asyncio's TransportSocket will do."""

    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...


def peer_user(sock: _Socket) -> str | None:
    """The OS user name of the process at the other end of a Unix socket, or None.

    None where it cannot be had (no SO_PEERCRED on this platform, a uid
    without a passwd entry): ``peer`` authentication then fails, as in
    PostgreSQL.
    """
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    _, uid, _ = struct.unpack("3i", creds)
    if uid < 0:
        return None  # Linux's answer for a socket that is not AF_UNIX
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def client_certificate(tls: ssl.SSLObject | ssl.SSLSocket) -> ClientCertificate | None:
    """The verified client certificate of a TLS connection, or None if the client sent none.

    Only meaningful when the server's context verifies client certificates
    (CERT_OPTIONAL with a CA): then any certificate present passed
    verification, as PostgreSQL's peer_cert_valid.
    """
    cert: dict[str, Any] = tls.getpeercert() or {}
    if not cert:
        return None
    common_name = None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                common_name = value
                break
        if common_name is not None:
            break  # the first CN, as X509_NAME_get_text_by_NID finds it
    return ClientCertificate(common_name)
