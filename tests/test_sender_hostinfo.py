"""What the sender asks the operating system and the TLS layer about a connection."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import socket
import ssl
from pathlib import Path

import pytest

from walstream.sender.auth import ClientCertificate
from walstream.sender.hostinfo import client_certificate, interface_addresses, peer_user

from .pgcluster import make_test_ca


def test_interface_addresses_include_loopback() -> None:
    found = interface_addresses()
    assert ipaddress.ip_interface("127.0.0.1/8") in found
    assert all(i.version in (4, 6) for i in found)


@pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="no SO_PEERCRED here")
def test_peer_user_of_a_unix_socket() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert peer_user(left) == pwd.getpwuid(os.getuid()).pw_name


@pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="no SO_PEERCRED here")
def test_peer_user_of_a_tcp_socket_is_unknown() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        # Linux answers SO_PEERCRED on TCP with uid -1: no user.
        assert peer_user(client) is None


def _handshake(tmp_path: Path, *, send_cert: bool) -> ssl.SSLObject:
    files = make_test_ca(tmp_path, client_user="replicator")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    server_ctx.load_verify_locations(files.ca_cert)
    server_ctx.verify_mode = ssl.CERT_OPTIONAL
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(files.ca_cert)
    if send_cert:
        client_ctx.load_cert_chain(files.client_cert, files.client_key)
    bios = [ssl.MemoryBIO() for _ in range(4)]
    server = server_ctx.wrap_bio(bios[0], bios[1], server_side=True)
    client = client_ctx.wrap_bio(bios[2], bios[3], server_hostname="localhost")
    for _ in range(10):
        for obj in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
        bios[0].write(bios[3].read())
        bios[2].write(bios[1].read())
    return server


def test_client_certificate_names(tmp_path: Path) -> None:
    assert client_certificate(_handshake(tmp_path / "a", send_cert=True)) == ClientCertificate(
        "replicator"
    )
    assert client_certificate(_handshake(tmp_path / "b", send_cert=False)) is None
