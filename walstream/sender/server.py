"""The sender's asyncio shell: listeners, one wire per connection, the source's pulse.

``WalSender(SenderOptions(...))``; ``await sender.serve()`` until
``sender.stop()``; ``sender.status()`` gives pg_stat_replication's rows.

Each accepted connection gets a :class:`~walstream.client.wire.Wire` (the
client's asyncio wire, over the server's state machine) and a
:class:`~walstream.sender.walsender.WalSenderSession`; one task per
connection feeds the session what the wire decoded, writes what the session
says, runs the TLS handshakes it asks for (after SSLRequest, or at once for
PostgreSQL 17's direct TLS: a first byte of 0x16 and ALPN ``postgresql``)
and arms its one timer. A poller asks the source for new WAL every
``poll_interval`` (a directory that a receiver writes) and offers it to
every streaming session whose client is keeping up: a slow client's
transport buffer pauses only that client (asyncio's write flow control),
so it never delays another or makes the sender buffer without bound.

What many clients read is read once. On plain TCP, WAL in completed,
uncompressed segments is not read at all: the kernel sends it from the page
cache, which every client shares (``os.sendfile`` on the socket while the
transport has nothing queued, XLogData's 30-byte header just before it with
``MSG_MORE``). When the socket is full, a page of what is left goes through
the transport, whose drain calls the client back, and the rest waits in the
client's queue (one offer's worth at most). Everything else (TLS, Unix
sockets, the ``.partial`` being written, compressed segments) is read
through a small cache of recent chunks, keyed by where walsender.c's cutting
puts chunk boundaries (128 kB steps from a segment start), which every
client shares, and written as the header and the bytes read (no copy to
frame or join them).

Errors: :class:`SenderError` for what stops the sender from starting (a
listen address, a bad pg_hba or passwords file, TLS files).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from walstream.client.wire import Wire
from walstream.errors import ConnectError, Error, ProtocolViolation
from walstream.lsn import LSN
from walstream.pgtypes import pg_time_from_unix
from walstream.protocol.server import ServerEvent
from walstream.sender.auth import tls_server_end_point_from_pem
from walstream.sender.hba import HbaRules, default_hba_rules, read_hba_file
from walstream.sender.hostinfo import client_certificate, interface_addresses, peer_user
from walstream.sender.passwords import Verifier, load_passwords
from walstream.sender.source import FileRegion, RegionSource, SourceError, WalSource
from walstream.sender.syncrep import SyncStandbyNamesError, parse_synchronous_standby_names
from walstream.sender.walsender import (
    OutputPiece,
    ReplicationSlots,
    SenderCore,
    SenderSettings,
    Slot,
    WalSenderSession,
    WalSenderStatus,
)
from walstream.storage.slots import SavedSlot, SlotStore
from walstream.wal.segment import HistoryEntry

__all__ = ["SenderError", "SenderOptions", "WalSender"]

log = logging.getLogger("walstream.sender")

_TLS_HANDSHAKE_BYTE: Final = 0x16  # a TLS record of type handshake: PostgreSQL 17's direct TLS
_WRITE_HIGH_WATER: Final = 1024 * 1024  # per client: a slow client stops being offered WAL
# A direct client's transport holds at most what did not fit in the socket
# (one page of a region, or the bytes before it): any of it pauses the
# client until the socket drains.
_DIRECT_FALLBACK: Final = 8192
_CACHE_CHUNKS: Final = 128  # 128 kB each: 16 MB of recently read WAL shared by every client
_STOP_GRACE: Final = 10.0  # seconds a stopping sender waits for clients to take what is left
# How often a slot whose restart_lsn moved is written (two fsyncs, about 0.7 ms):
# PostgreSQL writes a physical slot's progress at checkpoints only; a creation
# or a drop is written at once.
_SLOT_SAVE_INTERVAL: Final = 1.0


class SenderError(Error):
    """The sender cannot start: a listen address, a configuration file, TLS files."""


@dataclass(frozen=True)
class SenderOptions:
    """What to serve, where, and to whom.

    ``directory`` is a walstream or pg_receivewal directory (or give
    ``source``: the relay serves a receiver's WAL directly). ``listen``:
    (host, port) pairs, port 0 for any; ``unix_socket_dir``: where
    ``.s.PGSQL.PORT`` goes (the first listen port's number). ``hba_file``
    None means local and loopback ``trust`` only, initdb's default.
    """

    directory: Path | None = None
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 5433),)
    unix_socket_dir: Path | None = None
    hba_file: Path | None = None
    passwords_file: Path | None = None
    ssl_cert: Path | None = None
    ssl_key: Path | None = None
    ssl_ca: Path | None = None
    max_wal_senders: int = 10
    max_replication_slots: int = 10
    wal_sender_timeout: float = 60.0
    authentication_timeout: float = 60.0
    poll_interval: float = 0.05
    synchronous_standby_names: str = ""  # the relay: which clients are synchronous
    source: WalSource | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.directory is None and self.source is None:
            raise SenderError("no WAL directory to serve")
        if (self.ssl_cert is None) != (self.ssl_key is None):
            raise SenderError("a TLS certificate and its key go together")


class _CachedSource:
    """The source, with the last chunks read kept for the next client asking for the same."""

    def __init__(self, source: WalSource) -> None:
        self.source = source
        self._chunks: collections.OrderedDict[tuple[int, int, int], bytes] = (
            collections.OrderedDict()
        )

    def read(self, timeline: int, start: LSN, size: int) -> bytes:
        key = (timeline, int(start), size)
        data = self._chunks.get(key)
        if data is not None:
            self._chunks.move_to_end(key)
            return data
        data = self.source.read(timeline, start, size)
        if len(data) == size:  # a short read may grow: never cache it
            self._chunks[key] = data
            if len(self._chunks) > _CACHE_CHUNKS:
                self._chunks.popitem(last=False)
        return data

    def forget(self) -> None:
        self._chunks.clear()


class _SharedSource:
    """What sessions see of the source: everything passes through, reads through the cache."""

    def __init__(self, cached: _CachedSource) -> None:
        self._cached = cached
        self._source = cached.source

    @property
    def seg_size(self) -> int:
        return self._source.seg_size

    @property
    def system_identifier(self) -> int:
        return self._source.system_identifier

    @property
    def server_version(self) -> int:
        return self._source.server_version

    def refresh(self) -> bool:
        return self._source.refresh()

    def timeline(self) -> int:
        return self._source.timeline()

    def end_of_wal(self) -> LSN:
        return self._source.end_of_wal()

    def history(self, timeline: int) -> list[HistoryEntry]:
        return self._source.history(timeline)

    def history_file(self, timeline: int) -> tuple[str, bytes]:
        return self._source.history_file(timeline)

    def read(self, timeline: int, start: LSN, size: int) -> bytes:
        return self._cached.read(timeline, start, size)


@dataclass(eq=False)
class _Client:
    session: WalSenderSession
    wire: Wire[ServerEvent]
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    # Plain TCP: what is written goes straight to the socket (see _send_direct).
    sock: socket.socket | None = None
    direct: bool = False
    pending: collections.deque[OutputPiece] = field(default_factory=collections.deque)


class WalSender:
    """A walsender for real standbys, pg_receivewal and walstream receivers."""

    def __init__(self, options: SenderOptions) -> None:
        self.options = options
        self._stop = asyncio.Event()
        self._clients: set[_Client] = set()
        self._servers: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._starting: set[asyncio.Task[None]] = set()
        self._core: SenderCore | None = None
        self._cache: _CachedSource | None = None
        self._ssl: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self.addresses: list[tuple[str, int]] = []  # bound (host, port), port 0 resolved
        self.unix_socket: Path | None = None
        # Called when a client's positions, feedback or state change (the relay's hook).
        self.on_progress: Callable[[], None] | None = None
        self._store: SlotStore | None = None
        self._saved_slots: set[str] = set()
        self._dirty_slots: dict[str, Slot] = {}

    # -- public API ---------------------------------------------------------------------

    def stop(self) -> None:
        """Stop accepting; send each client what it may still have, end the streams, return."""
        self._stop.set()

    def notify(self) -> None:
        """The source has more WAL (for a source that says so, as the relay's receiver does)."""
        self._wake.set()

    def synced_positions(self) -> tuple[LSN, LSN, LSN] | None:
        """What the synchronous clients confirmed (write, flush, apply); None: too few connected."""
        return None if self._core is None else self._core.synced_positions()

    def oldest_feedback(self) -> tuple[int, int, int, int] | None:
        """The oldest hot-standby feedback of the clients (xmin, epoch, catalog_xmin, epoch)."""
        return None if self._core is None else self._core.oldest_feedback()

    def needed(self) -> tuple[list[LSN], list[LSN]]:
        """What must be kept: every slot's restart_lsn, and every streaming client's position.

        May be called from another thread (the relay's writer, between two
        segments): the sessions and slots are copied first (each copy one step
        under the GIL), and each position read is one a client had.
        """
        core = self._core
        if core is None:
            return [], []
        slots = [s.restart_lsn for s in core.slots if s.restart_lsn is not None]
        clients = [s.sent for s in list(core.sessions.values()) if s.streaming]
        return slots, clients

    def status(self) -> list[WalSenderStatus]:
        """pg_stat_replication: one row per walsender connection past authentication."""
        if self._core is None:
            return []
        now = pg_time_from_unix(time.time())
        return [
            s.status(now)
            for s in sorted(self._core.sessions.values(), key=lambda s: s.pid)
            if s.state.value != "connecting"
        ]

    async def serve(self) -> None:
        """Serve until :meth:`stop`; raise :class:`SenderError` if it cannot start."""
        self._loop = asyncio.get_running_loop()
        core = self._core = self._make_core()
        try:
            self._listen()
            log.info(
                "serving WAL of database system %d (PostgreSQL %d, timeline %d, up to %s) on %s",
                core.source.system_identifier,
                core.server_version // 10000,
                core.source.timeline(),
                core.source.end_of_wal(),
                ", ".join(
                    [f"{h}:{p}" for h, p in self.addresses]
                    + ([str(self.unix_socket)] if self.unix_socket else [])
                ),
            )
            poller = asyncio.ensure_future(self._poll())
            try:
                await self._stop.wait()
            finally:
                poller.cancel()
            log.info("stopping: no new connections; ending the streams")
        finally:
            await self._shutdown()

    # -- set-up -----------------------------------------------------------------------------

    def _make_core(self) -> SenderCore:
        o = self.options
        source = o.source
        if source is None:
            from walstream.sender.source import DirectorySource

            assert o.directory is not None
            try:
                source = DirectorySource(o.directory)
                source.refresh()
            except (OSError, SourceError) as e:
                raise SenderError(f'cannot serve "{o.directory}": {e}') from e
        self._cache = _CachedSource(source)
        tls_end_point = None
        client_ca = False
        if o.ssl_cert is not None and o.ssl_key is not None:
            self._ssl, tls_end_point, client_ca = self._tls_context()
        try:
            hba: HbaRules = default_hba_rules() if o.hba_file is None else read_hba_file(o.hba_file)
            verifiers: dict[str, Verifier] = (
                {} if o.passwords_file is None else load_passwords(o.passwords_file)
            )
        except (OSError, Error) as e:
            raise SenderError(str(e)) from e
        for warning in hba.warnings(ssl_enabled=self._ssl is not None):
            log.warning("%s", warning)
        interfaces = tuple(interface_addresses()) if hba.needs_interfaces else ()
        try:
            sync_config = parse_synchronous_standby_names(o.synchronous_standby_names)
        except SyncStandbyNamesError as e:
            detail = f" ({e.detail})" if e.detail else ""
            raise SenderError(f"{e.message}{detail}") from e
        settings = SenderSettings(
            hba=hba,
            verifiers=verifiers,
            max_wal_senders=o.max_wal_senders,
            max_replication_slots=o.max_replication_slots,
            wal_sender_timeout=o.wal_sender_timeout,
            authentication_timeout=o.authentication_timeout,
            tls=self._ssl is not None,
            tls_end_point=tls_end_point,
            client_ca_loaded=client_ca,
            interfaces=interfaces,
            version_text=f"walstream {_version()}",
            sync_config=sync_config,
        )
        saved: dict[str, LSN | None] = {}
        if o.directory is not None:
            self._store = SlotStore(o.directory)
            try:
                loaded = self._store.load()
            except (OSError, Error) as e:
                raise SenderError(f"could not read the replication slots: {e}") from e
            saved = {name: slot.restart_lsn for name, slot in loaded.items()}
            self._saved_slots = set(saved)
        slots = ReplicationSlots(
            saved, max_slots=o.max_replication_slots, on_change=self._slot_changed
        )
        # Regions are not cached: the page cache is the cache.
        regions = source if isinstance(source, RegionSource) else None
        core = SenderCore(_SharedSource(self._cache), settings, slots, regions=regions)
        core.on_progress = self.on_progress
        return core

    def _slot_changed(self, name: str, slot: Slot | None) -> None:
        """Keep the slots across restarts: a new or dropped one at once, progress now and then."""
        store = self._store
        if store is None:
            return
        try:
            if slot is None:
                self._dirty_slots.pop(name, None)
                if name in self._saved_slots:
                    store.drop(name)
                    self._saved_slots.discard(name)
            elif name not in self._saved_slots:
                store.save(SavedSlot(name, slot.restart_lsn))
                self._saved_slots.add(name)
                slot.dirty = False
            else:
                self._dirty_slots[name] = slot
        except (OSError, KeyError, Error) as e:
            log.warning('could not save replication slot "%s": %s', name, e)

    def _save_slots(self) -> None:
        store = self._store
        dirty, self._dirty_slots = self._dirty_slots, {}
        for name, slot in dirty.items():
            if store is None or name not in self._saved_slots:
                continue
            try:
                store.save(SavedSlot(name, slot.restart_lsn))
                slot.dirty = False
            except (OSError, Error) as e:
                log.warning('could not save replication slot "%s": %s', name, e)
                self._dirty_slots[name] = slot

    def _tls_context(self) -> tuple[ssl.SSLContext, bytes, bool]:
        o = self.options
        assert o.ssl_cert is not None
        assert o.ssl_key is not None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # PostgreSQL's ssl_min_protocol_version
        try:
            ctx.load_cert_chain(o.ssl_cert, o.ssl_key)
            end_point = tls_server_end_point_from_pem(o.ssl_cert.read_text())
            if o.ssl_ca is not None:
                ctx.load_verify_locations(o.ssl_ca)
                ctx.verify_mode = ssl.CERT_OPTIONAL  # PostgreSQL asks, and checks what is sent
        except (OSError, ssl.SSLError, ValueError) as e:
            raise SenderError(f"could not load the TLS certificate or key: {e}") from e
        ctx.set_alpn_protocols(["postgresql"])
        return ctx, end_point, o.ssl_ca is not None

    def _listen(self) -> None:
        loop = self._loop
        assert loop is not None
        for host, port in self.options.listen:
            try:
                infos = socket.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
                )
            except socket.gaierror as e:
                raise SenderError(f'could not translate host name "{host}": {e.strerror}') from e
            for family, kind, proto, _, addr in infos:
                sock = socket.socket(family, kind, proto)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind(addr)
                    sock.listen(128)
                except OSError as e:
                    sock.close()
                    raise SenderError(
                        f'could not listen on "{host}" port {port}: {e.strerror}'
                    ) from e
                sock.setblocking(False)
                self._servers.append(sock)
                bound = sock.getsockname()
                self.addresses.append((bound[0], bound[1]))
        socket_dir = self.options.unix_socket_dir
        if socket_dir is not None:
            port = self.addresses[0][1] if self.addresses else 5433
            path = socket_dir / f".s.PGSQL.{port}"
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(str(path))
                os.chmod(path, 0o777)  # PostgreSQL's unix_socket_permissions default
                sock.listen(128)
            except OSError as e:
                sock.close()
                raise SenderError(f'could not create Unix socket "{path}": {e.strerror}') from e
            sock.setblocking(False)
            self._servers.append(sock)
            self.unix_socket = path
        for sock in self._servers:
            self._accepting.append(asyncio.ensure_future(self._accept(sock)))

    # -- connections ----------------------------------------------------------------------------

    async def _accept(self, server: socket.socket) -> None:
        loop = self._loop
        assert loop is not None
        while not self._stop.is_set():
            try:
                sock, addr = await loop.sock_accept(server)
            except OSError as e:
                if self._stop.is_set():
                    return
                log.warning("could not accept a connection: %s", e)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.ensure_future(self._connection(sock, addr))
            self._starting.add(task)  # referenced until it has registered itself
            task.add_done_callback(self._starting.discard)

    async def _connection(self, sock: socket.socket, addr: object) -> None:
        loop = self._loop
        core = self._core
        assert loop is not None
        assert core is not None
        unix = sock.family == socket.AF_UNIX
        address = None if unix else ipaddress.ip_address(str(addr[0]).split("%")[0])  # type: ignore[index]
        port = None if unix else int(addr[1])  # type: ignore[index]
        if not unix:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = WalSenderSession(
            core,
            address=address,
            port=port,
            now=loop.time(),
            wall_clock=time.time(),
            peer_user=peer_user(sock) if unix else None,
        )
        wire: Wire[ServerEvent] = Wire(session.conn, peer="client", abort_on_error=False)
        client = _Client(session, wire)
        try:
            direct = not unix and self._ssl is not None and await self._starts_with_tls(sock)
            await loop.connect_accepted_socket(lambda: wire, sock)
        except (OSError, TimeoutError):
            sock.close()
            return
        assert wire.transport is not None
        if not unix and not direct:
            client.sock, client.direct = sock, True
            session.zero_copy = core.regions is not None
            wire.transport.set_write_buffer_limits(high=0)
        else:
            wire.transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        wire.on_drained = lambda: self._drained(client)
        self._clients.add(client)
        client.task = asyncio.current_task()
        # authentication_timeout runs from the accept, as PostgreSQL's covers the
        # startup packet: a client that never completes a message is dropped too.
        self._arm(client)
        log.debug("connection %d from %s", session.pid, session.client_text)
        try:
            if direct and not await self._tls(client, direct=True):
                return
            await self._serve(client)
        finally:
            self._clients.discard(client)
            if client.timer is not None:
                client.timer.cancel()
            if not session.closing:
                session.receive_eof(loop.time())
            await wire.close()
            if session.state.value != "closed" or session.user:
                log.info(
                    "replication connection %d ended: %s",
                    session.pid,
                    session.close_reason or "closed",
                )

    async def _starts_with_tls(self, sock: socket.socket) -> bool:
        """PostgreSQL 17's direct TLS: the first byte is a TLS handshake record, not a packet."""
        loop = self._loop
        assert loop is not None
        ready: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(sock.fileno(), readable)
        try:
            async with asyncio.timeout(self.options.authentication_timeout):
                await ready
        finally:
            loop.remove_reader(sock.fileno())
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        return first[:1] == bytes([_TLS_HANDSHAKE_BYTE])

    async def _serve(self, client: _Client) -> None:
        loop = self._loop
        assert loop is not None
        session, wire = client.session, client.wire
        while not session.closing:
            try:
                events = await wire.next_batch()
            except ProtocolViolation as e:
                session.protocol_violation(e)
                self._flush(client)
                return
            except (ConnectError, OSError):
                session.receive_eof(loop.time())
                return
            if not events:
                continue  # interrupted: the sender is stopping, or a flush is due
            session.handle(events, loop.time())
            if session.want_tls:
                wire.pause_reading()  # the ClientHello must reach the TLS layer, not us
                self._end_direct(client)
                self._flush(client)
                if not await self._tls(client, direct=False):
                    return
            if session.streaming:
                self._offer_wal(client)
            self._flush(client)

    async def _tls(self, client: _Client, *, direct: bool) -> bool:
        session, wire = client.session, client.wire
        assert self._ssl is not None
        try:
            obj = await asyncio.wait_for(
                wire.start_tls(self._ssl, server_side=True),
                self.options.authentication_timeout,
            )
        except (OSError, ssl.SSLError, ConnectError, TimeoutError) as e:
            log.info("connection %d: TLS handshake failed: %s", session.pid, e)
            return False
        if direct and obj.selected_alpn_protocol() != "postgresql":
            # PostgreSQL requires the ALPN of direct TLS (a defence against
            # cross-protocol attacks) and drops the connection without it.
            log.info("connection %d: direct TLS without ALPN postgresql", session.pid)
            return False
        session.tls_established(client_certificate(obj) if self.options.ssl_ca else None)
        return True

    def _flush(self, client: _Client) -> None:
        """Write what the session has to say; re-arm its timer; close it once it is done."""
        session, wire = client.session, client.wire
        if session.closing and client.direct:
            self._end_direct(client)  # the transport sends what is left before it closes
        pieces = session.pieces_to_send()
        if pieces and not wire.is_closing:
            if client.direct:
                client.pending.extend(pieces)
                self._send_direct(client)
            else:
                assert wire.transport is not None
                data = self._as_bytes(client, pieces)
                if data is not None:
                    wire.transport.writelines(data)
        self._arm(client)
        if (
            session.closing
            and client.task is not None
            and client.task is not asyncio.current_task()
        ):
            wire.interrupt()  # the connection task ends it

    def _arm(self, client: _Client) -> None:
        loop = self._loop
        assert loop is not None
        deadline = client.session.deadline()
        timer = client.timer
        if timer is not None and (deadline is None or timer.when() != deadline):
            timer.cancel()
            client.timer = None
        if deadline is not None and client.timer is None:
            client.timer = loop.call_at(deadline, self._on_timer, client)

    def _on_timer(self, client: _Client) -> None:
        loop = self._loop
        assert loop is not None
        client.timer = None
        client.session.timer(loop.time())
        self._flush(client)

    def _send_direct(self, client: _Client) -> None:
        """Write the client's queue to its socket ourselves, regions with ``os.sendfile``.

        Only while the transport holds nothing (it would go first). What the
        socket does not take stays queued, but for a little of it handed to
        the transport, which pauses the client (its high-water mark is 0)
        and calls :meth:`_drained` once the socket has taken it.
        """
        pending, transport, sock = client.pending, client.wire.transport, client.sock
        assert transport is not None
        assert sock is not None
        while pending and not transport.get_write_buffer_size():
            piece = pending[0]
            try:
                if isinstance(piece, FileRegion):
                    sent = os.sendfile(sock.fileno(), piece.fileno, piece.offset, piece.size)
                    if sent == piece.size:
                        pending.popleft()
                        continue
                    if sent:
                        piece = pending[0] = piece.tail(sent)
                else:
                    run: list[bytes | memoryview] = []
                    for p in pending:
                        if isinstance(p, FileRegion):
                            break
                        run.append(p)
                    # MSG_MORE: the WAL after a header follows at once, in the same segment.
                    more = socket.MSG_MORE if len(run) < len(pending) else 0
                    sent = sock.sendmsg(run, (), more)
                    for p in run:
                        if sent < len(p):
                            if sent:
                                piece = pending[0] = memoryview(p)[sent:]
                            break
                        sent -= len(p)
                        pending.popleft()
                    else:
                        continue
            except BlockingIOError:
                pass
            except OSError:
                # Reset or broken: the transport meets the same error and reports it.
                self._end_direct(client)
                return
            # The socket is full: a little goes to the transport, the rest waits.
            rest: OutputPiece | None = None
            if isinstance(piece, FileRegion) and piece.size > _DIRECT_FALLBACK:
                rest = piece.tail(_DIRECT_FALLBACK)
                piece = FileRegion(piece.file, piece.offset, _DIRECT_FALLBACK)
            data = self._as_bytes(client, [piece])
            if data is None:
                return
            if rest is None:
                pending.popleft()
            else:
                pending[0] = rest
            transport.writelines(data)

    def _end_direct(self, client: _Client) -> None:
        """From now on the transport writes everything, starting with the client's queue."""
        if not client.direct:
            return
        client.direct = False
        client.session.zero_copy = False
        pending, transport = client.pending, client.wire.transport
        if pending and transport is not None and not transport.is_closing():
            data = self._as_bytes(client, list(pending))
            if data is not None:
                transport.writelines(data)
        pending.clear()
        if transport is not None:
            transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)

    def _as_bytes(
        self, client: _Client, pieces: list[OutputPiece]
    ) -> list[bytes | memoryview] | None:
        """The pieces, regions read; None (and the client dropped) if a region cannot be."""
        try:
            return [p.read() if isinstance(p, FileRegion) else p for p in pieces]
        except (OSError, SourceError) as e:
            # Its header may be out already: the stream cannot go on (the client reconnects).
            log.warning("connection %d: %s", client.session.pid, e)
            client.pending.clear()
            client.wire.abort()
            return None

    def _drained(self, client: _Client) -> None:
        """The transport has written what it held: the queue, then more WAL."""
        if client.direct and client.pending and not client.wire.is_closing:
            self._send_direct(client)
        self._offer_wal(client)

    def _offer_wal(self, client: _Client) -> None:
        loop = self._loop
        assert loop is not None
        session, wire = client.session, client.wire
        # Until the client's socket or transport buffer is full (writing then
        # pauses, and the drain offers again) or the WAL there is, is sent.
        while (
            not wire.write_paused
            and not client.pending
            and not wire.is_closing
            and session.wants_wal
        ):
            session.wal_available(loop.time())
            self._flush(client)
            if not session.more_to_send:
                break

    async def _poll(self) -> None:
        """Look at the source now and then; offer new WAL to every client keeping up."""
        core = self._core
        loop = self._loop
        assert core is not None
        assert loop is not None
        next_save = loop.time()
        while True:
            try:
                changed = core.source.refresh()
            except (OSError, Error) as e:
                log.warning("could not read the WAL directory: %s", e)
                changed = False
            if changed and self._cache is not None:
                self._cache.forget()  # short reads are never cached; completed ones stay valid
            for client in list(self._clients):
                if client.session.streaming:
                    self._offer_wal(client)
            now = loop.time()
            if self._dirty_slots and now >= next_save:
                self._save_slots()
                next_save = now + _SLOT_SAVE_INTERVAL
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.options.poll_interval)

    # -- shutdown ---------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        loop = self._loop
        assert loop is not None
        for task in self._accepting:
            task.cancel()
        for sock in self._servers:
            sock.close()
        if self.unix_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self.unix_socket.unlink()
        if self._core is not None:
            self._core.stopping = True
        for client in list(self._clients):
            client.session.shutdown(loop.time())
            self._flush(client)
            client.wire.interrupt()
        deadline = loop.time() + _STOP_GRACE
        while self._clients and loop.time() < deadline:
            for client in list(self._clients):
                if client.session.streaming:
                    self._offer_wal(client)
            await asyncio.sleep(0.02)
        for client in list(self._clients):
            client.wire.abort()
        tasks = [c.task for c in list(self._clients) if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        self._save_slots()
        close = getattr(self._cache.source if self._cache else None, "close", None)
        if close is not None and self.options.source is None:
            close()


def _version() -> str:
    from walstream import __version__

    return __version__
