#!/usr/bin/env python3
"""A floor for any pure-Python synchronous standby: not a receiver, a bound.

Run by ``bench/sync_tps.py --floor`` (as ``sync_floor.py -d CONNINFO -D DIR
--synchronous``). After a handshake through walstream's sans-IO client
(trust authentication over TCP), a blocking loop does the least a
synchronous standby must do per batch: ``recv_into``, frame the CopyData
messages, ``pwritev`` the XLogData payloads into one preallocated file,
``fsync``, send the status update. No event loop, no state machine after
the handshake, no checks, no segment files (the WAL is written modulo
256 MB). A real receiver only adds work to this, so it shows how far less
Python goes. It is no strict bound: with the receivers pinned to a core of
their own (``sync_tps.py --pin``) it ran slower than walstream (see
bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import time
from pathlib import Path

from walstream.client.conninfo import parse_conninfo
from walstream.protocol import messages as m
from walstream.protocol.client import ClientConnection, ClientState

_WRAP = 256 << 20
_FRAME = struct.Struct("!ci").unpack_from
_STATUS = struct.Struct("!cicQQQq?").pack  # CopyData 'r': write, flush, apply, time, reply


def _until_idle(sock: socket.socket, client: ClientConnection) -> list[m.DataRow]:
    rows = []
    while client.state is not ClientState.IDLE:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("server closed the connection")
        for ev in client.receive_data(data):
            if isinstance(ev, m.ErrorResponse):
                raise SystemExit(f"server error: {ev}")
            if isinstance(ev, m.DataRow):
                rows.append(ev)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--dbname", required=True)
    parser.add_argument("-D", "--directory", type=Path, required=True)
    parser.add_argument("--synchronous", action="store_true")
    args = parser.parse_args()
    opts = parse_conninfo(args.dbname)
    sock = socket.create_connection((opts.get("host", "127.0.0.1"), int(opts.get("port", 5432))))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = ClientConnection()
    params = {"user": opts["user"], "database": "replication", "replication": "true"}
    params["application_name"] = opts.get("application_name", "sync_floor")
    sock.sendall(client.startup(params))
    _until_idle(sock, client)
    sock.sendall(client.query("IDENTIFY_SYSTEM"))
    (row,) = _until_idle(sock, client)
    tli, xlogpos = (v.decode() if isinstance(v, bytes) else str(v) for v in row.values[1:3])
    high, low = xlogpos.split("/")
    start = ((int(high, 16) << 32) | int(low, 16)) & ~0xFFFFFF

    fd = os.open(args.directory / "wal", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    zeros = bytes(1 << 20)
    for offset in range(0, _WRAP, len(zeros)):  # written zeros, as pg_receivewal pads
        os.pwrite(fd, zeros, offset)
    os.fsync(fd)
    sock.sendall(
        client.query(f"START_REPLICATION {start >> 32:X}/{start & 0xFFFFFFFF:X} TIMELINE {tli}")
    )

    buf = bytearray(1 << 22)
    view = memoryview(buf)
    have = 0
    written = start
    while True:
        n = sock.recv_into(view[have:])
        if n == 0:
            return
        have += n
        i = 0
        pieces: list[bytes] = []
        reply = False
        while have - i >= 5:
            kind, length = _FRAME(buf, i)
            if i + 1 + length > have:
                break
            if kind == b"d" and buf[i + 5] == 0x77:  # XLogData: 'w' + 24 header bytes
                pieces.append(bytes(view[i + 30 : i + 1 + length]))
            elif kind == b"d" and buf[i + 5] == 0x6B:  # keepalive: replyRequested last
                reply = reply or buf[i + 22] != 0
            i += 1 + length  # CopyBothResponse and anything else: skipped
        if i:
            buf[: have - i] = view[i:have]
            have -= i
        if pieces:
            os.pwritev(fd, pieces, (written - start) % _WRAP)
            written += sum(map(len, pieces))
            os.fsync(fd)
            reply = True
        if reply:
            now = round((time.time() - 946684800) * 1_000_000)
            sock.sendall(_STATUS(b"d", 38, b"r", written, written, 0, now, False))


if __name__ == "__main__":
    main()
