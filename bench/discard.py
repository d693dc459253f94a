#!/usr/bin/env python3
"""The physical limit of catch-up: receive a range of WAL from a walsender and discard it.

Run by ``bench/catchup.py`` (as ``discard.py -d CONNINFO --start LSN -E LSN``); alone:
``python bench/discard.py -d 'host=127.0.0.1 port=5432 user=u' --start 0/1000000 -E 0/4000000``.

The least a receiver can do with the stream: after a trust-authenticated
handshake written here by hand, ``START_REPLICATION``, then a loop of
``recv_into`` a reused 4 MiB buffer that reads only each message's header
(CopyData, the XLogData start, a keepalive's reply flag) and drops the bodies,
until the XLogData reaches ``-E``, as ``pg_receivewal -E`` stops. Nothing is
written, nothing is checked, no message object is built.

Why this and not something else:

* The walsender is the bottleneck when its consumer is cheaper than it: it
  reads each 128 kB message out of the WAL files and sends it, and the
  consumer only pays the kernel's copy out of the socket. Python adds about
  a microsecond of interpreter time per ``recv_into``, and each call returns
  tens to hundreds of kB here, so a C loop of the same system calls would be
  no faster in any way this bench can see; the interpreter's start-up is
  kept small by importing nothing but the standard library (walstream's
  sans-IO client would add about 0.25 s of imports to every run).
* A libpq client (``pg_receivewal``, or ``psql``, which cannot run
  START_REPLICATION's COPY BOTH at all) copies every message twice: into
  libpq's buffer, then into the one ``PQgetCopyData`` allocates.
* The copy out of the socket is kept in the default mode because every
  receiver pays it: it must hold the bytes to write them. ``--truncate``
  drops even that (``recv(MSG_TRUNC)`` discards TCP data in the kernel, see
  tcp(7)): a bound on the walsender and the loopback alone, below anything
  a receiver can reach.

Authentication must be trust (the bench clusters' ``trust_user``). Exit 0 at
the end position, 1 on anything unexpected.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time

_BUFFER = 4 << 20
_FRAME = struct.Struct("!ci").unpack_from
_U64 = struct.Struct("!Q").unpack_from
_STATUS = struct.Struct("!cicQQQq?").pack  # CopyData 'r': write, flush, apply, time, reply
_EPOCH_2000 = 946684800
# A CopyData's first 23 bytes hold what is read: 'w' + dataStart, or 'k' + walEnd,
# sendTime and replyRequested.
_HEAD = 23


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _conninfo(text: str) -> dict[str, str]:
    """Keyword/value conninfo without quoting (what the bench clusters hand out)."""
    if "'" in text or "\\" in text:
        raise SystemExit("discard.py: quoted conninfo values are not supported")
    return dict(item.split("=", 1) for item in text.split())


def _message(sock: socket.socket, pending: bytearray) -> tuple[bytes, bytes]:
    """One whole backend message (type, body) during the handshake."""
    while True:
        if len(pending) >= 5:
            kind, length = _FRAME(pending, 0)
            if len(pending) >= 1 + length:
                body = bytes(pending[5 : 1 + length])
                del pending[: 1 + length]
                return kind, body
        data = sock.recv(65536)
        if not data:
            raise SystemExit("discard.py: the server closed the connection")
        pending += data


def _expect(sock: socket.socket, pending: bytearray, until: bytes) -> None:
    while True:
        kind, body = _message(sock, pending)
        if kind == b"E":
            raise SystemExit(f"discard.py: server error: {body!r}")
        if kind == b"R" and body[:4] != b"\0\0\0\0":
            raise SystemExit("discard.py: the server asks for a password: use a trust user")
        if kind == until:
            return


def _string(text: str) -> bytes:
    return text.encode() + b"\0"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-d", "--dbname", required=True, help="conninfo (host, port, user)")
    parser.add_argument("--start", required=True, help="start LSN (a segment's start)")
    parser.add_argument("-E", "--endpos", required=True, help="stop once WAL reaches this LSN")
    parser.add_argument("--timeline", type=int, default=1)
    parser.add_argument(
        "--truncate",
        action="store_true",
        help="discard message bodies in the kernel (MSG_TRUNC) instead of copying them out",
    )
    args = parser.parse_args()
    opts = _conninfo(args.dbname)
    start, endpos = _lsn(args.start), _lsn(args.endpos)

    sock = socket.create_connection((opts.get("host", "127.0.0.1"), int(opts.get("port", "5432"))))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    params = [("user", opts["user"]), ("database", "replication"), ("replication", "true"),
              ("application_name", opts.get("application_name", "bench_discard"))]  # fmt: skip
    body = struct.pack("!i", 196608) + b"".join(_string(k) + _string(v) for k, v in params) + b"\0"
    sock.sendall(struct.pack("!i", 4 + len(body)) + body)
    pending = bytearray()
    _expect(sock, pending, b"Z")
    command = f"START_REPLICATION PHYSICAL {start >> 32:X}/{start & 0xFFFFFFFF:X} "
    command += f"TIMELINE {args.timeline}"
    query = _string(command)
    sock.sendall(b"Q" + struct.pack("!i", 4 + len(query)) + query)
    _expect(sock, pending, b"W")

    buf = bytearray(_BUFFER)
    view = memoryview(buf)
    have = len(pending)  # what came after CopyBothResponse in the same read
    buf[:have] = pending
    skip = 0  # bytes of the current message's body still to drop
    received = start  # the end of the last XLogData received whole
    at_end_of_skip = start  # the end of the XLogData whose body is being dropped
    while received < endpos:
        if skip and args.truncate:
            n = sock.recv_into(view, min(skip, _BUFFER), socket.MSG_TRUNC)
            if n == 0:
                raise SystemExit("discard.py: the server closed the connection")
            skip -= n
            if not skip:
                received = at_end_of_skip
            continue
        n = sock.recv_into(view[have:])
        if n == 0:
            raise SystemExit("discard.py: the server closed the connection")
        have += n
        i = 0
        if skip:
            i = min(skip, have)
            skip -= i
            if not skip:
                received = at_end_of_skip
        reply = False
        while have - i >= 5:
            kind, length = _FRAME(buf, i)
            whole = 1 + length
            if kind != b"d":
                if have - i < whole:
                    break  # small messages (an error, a notice): wait for all of it
                if kind == b"E":
                    raise SystemExit(
                        f"discard.py: server error: {bytes(view[i + 5 : i + whole])!r}"
                    )
                i += whole
                continue
            if have - i < min(whole, _HEAD):
                break
            sub = buf[i + 5]
            end = received
            if sub == 0x77:  # XLogData: its end is dataStart + the bytes after 4 + 'w' + 3 * 8
                end = _U64(buf, i + 6)[0] + length - 29
            elif sub == 0x6B and buf[i + 22]:  # keepalive asking for a reply
                reply = True
            if i + whole > have:
                skip = i + whole - have
                at_end_of_skip = end
                i = have
            else:
                received = end
                i += whole
        left = have - i
        if left:
            buf[:left] = view[i:have]
        have = left
        if reply:
            now = round((time.time() - _EPOCH_2000) * 1_000_000)
            sock.sendall(_STATUS(b"d", 38, b"r", received, received, 0, now, False))
    sock.sendall(b"c\0\0\0\4X\0\0\0\4")  # CopyDone, Terminate
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
