"""One walsender connection, server side, without I/O: bytes in, bytes and decisions out.

A :class:`WalSenderSession` is what PostgreSQL's walsender process is to a
physical replication connection: the startup packet and encryption
requests, pg_hba and authentication (:mod:`.hba`, :mod:`.auth`), the
replication commands (:mod:`walstream.protocol.repl_gram` and the result
encoders of :mod:`walstream.protocol.commands`), and the COPY of
START_REPLICATION (XLogData cut as walsender.c cuts it, keepalives, standby
replies, hot-standby feedback, the end of a timeline, wal_sender_timeout).

It does no I/O: the shell (:mod:`.server`) feeds it the client's bytes
(:meth:`~WalSenderSession.receive_data`), tells it the time, runs the TLS
handshake it asks for, calls it back when the source has more WAL or its
timer (:meth:`~WalSenderSession.deadline`) fires, and writes out what
:meth:`~WalSenderSession.pieces_to_send` returns: protocol bytes, and WAL
as the source gave it, never copied to be framed (on plain TCP, where the
shell sets :attr:`~WalSenderSession.zero_copy`, as file regions the shell
has the kernel send). WAL comes through the
:class:`~walstream.sender.source.WalSource` interface of the shared
:class:`SenderCore`, and pg_stat_replication's row through :meth:`status`.

Where PostgreSQL says something, this says it in the same words and with
the same SQLSTATE, for the version of PostgreSQL that wrote the WAL.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from walstream.errors import Error, LocalProtocolError, ProtocolViolation
from walstream.lsn import LSN
from walstream.pgtypes import datetime_from_pg, parse_bool, pg_time_from_unix
from walstream.protocol import commands as c
from walstream.protocol import messages as m
from walstream.protocol import repl_gram as g
from walstream.protocol.client import ConnectionClosed
from walstream.protocol.replication import HotStandbyFeedback, StandbyStatusUpdate
from walstream.protocol.server import ServerConnection, ServerEvent, ServerState
from walstream.sender.auth import (
    AuthFailure,
    AuthRequest,
    AuthSuccess,
    ClientCertificate,
    ServerAuthenticator,
    encode_step,
)
from walstream.sender.hba import ConnectionFacts, HbaRules, InterfaceAddress, rejection_message
from walstream.sender.lag import LagTracker
from walstream.sender.passwords import Verifier
from walstream.sender.source import (
    FileRegion,
    RegionSource,
    SegmentRemoved,
    SourceError,
    WalSource,
)
from walstream.sender.syncrep import (
    SyncRepConfig,
    SyncRepStandby,
    WalSndState,
    sync_states,
    synced_positions,
)
from walstream.wal.segment import timeline_of

__all__ = [
    "MAX_SEND_SIZE",
    "OutputPiece",
    "ReplicationSlots",
    "SenderCore",
    "SenderSettings",
    "SessionState",
    "Slot",
    "WalSenderSession",
    "WalSenderStatus",
]

log = logging.getLogger("walstream.sender")

XLOG_BLCKSZ: Final = 8192
MAX_SEND_SIZE: Final = XLOG_BLCKSZ * 16  # walsender.c: at most 128 kB of WAL per message
_NEGOTIABLE_MINOR: Final = 0  # protocol 3.0; a 3.2 client is told so, as PostgreSQL 17 does
# What the session has ready before it stops producing XLogData until the
# shell has written it: 4 messages (walsender.c sends one and checks the socket).
_OUTPUT_LIMIT: Final = 4 * MAX_SEND_SIZE
_XLOGDATA_FRAME: Final = 30  # 'd', length, 'w', dataStart, walEnd, sendTime

# What the shell writes, in order: protocol bytes, and WAL as the source gave it
# (bytes, or a FileRegion the shell sends from the file).
OutputPiece = bytes | memoryview | FileRegion


class SessionState(enum.Enum):
    """pg_stat_replication's state, plus the phases before a walsender exists."""

    CONNECTING = "connecting"  # startup packet, encryption, authentication
    STARTUP = "startup"  # authenticated: commands, not streaming
    CATCHUP = "catchup"
    STREAMING = "streaming"
    STOPPING = "stopping"
    CLOSED = "closed"


_WALSND_STATES: Final[dict[SessionState, WalSndState]] = {
    SessionState.STARTUP: "startup",
    SessionState.CATCHUP: "catchup",
    SessionState.STREAMING: "streaming",
    SessionState.STOPPING: "stopping",
}


@dataclass(frozen=True)
class SenderSettings:
    """How the sender answers: its pg_hba, roles, limits and timeouts."""

    hba: HbaRules
    verifiers: Mapping[str, Verifier]
    max_wal_senders: int = 10
    max_replication_slots: int = 10
    wal_sender_timeout: float = 60.0  # seconds; 0 disables
    authentication_timeout: float = 60.0
    tls: bool = False  # a certificate is loaded: SSLRequest is accepted
    tls_end_point: bytes | None = None  # tls-server-end-point hash of our certificate
    client_ca_loaded: bool = False
    interfaces: tuple[InterfaceAddress, ...] = ()
    version_text: str = "walstream"  # appended to server_version: "16.0 (walstream 0.2)"
    # synchronous_standby_names (the relay): which clients are synchronous, and
    # what they confirmed is what the relay may confirm upstream.
    sync_config: SyncRepConfig | None = None


# -- replication slots ---------------------------------------------------------


@dataclass
class Slot:
    """A physical replication slot: it keeps WAL from ``restart_lsn`` (the client's flush)."""

    name: str
    restart_lsn: LSN | None
    temporary: bool = False
    active_pid: int | None = None
    dirty: bool = False  # restart_lsn moved since the slot was last saved


class ReplicationSlots:
    """The sender's slots, with PostgreSQL's rules and words; persistence is the shell's.

    ``on_change`` is called with a slot whose saved state must change (created
    persistent, or restart_lsn moved) and with ``(name, None)`` when a
    persistent slot is dropped.
    """

    def __init__(
        self,
        saved: Mapping[str, LSN | None] = {},
        *,
        max_slots: int = 10,
        on_change: Callable[[str, Slot | None], None] | None = None,
    ) -> None:
        self.max_slots = max_slots
        self.on_change = on_change
        self._slots = {name: Slot(name, lsn) for name, lsn in saved.items()}

    def __iter__(self) -> Iterator[Slot]:
        return iter(list(self._slots.values()))

    def get(self, name: str) -> Slot | None:
        return self._slots.get(name)

    def create(self, name: str, *, temporary: bool, restart_lsn: LSN | None, pid: int) -> Slot:
        if name in self._slots:
            raise g.ReplicationCommandError("42710", f'replication slot "{name}" already exists')
        if len(self._slots) >= self.max_slots:
            raise g.ReplicationCommandError(
                "53400",
                "all replication slots are in use",
                hint="Free one or increase max_replication_slots.",
            )
        # A new slot is acquired by its creator until the command ends (a
        # temporary one until the connection ends).
        slot = Slot(name, restart_lsn, temporary, pid if temporary else None)
        self._slots[name] = slot
        if not temporary:
            self._changed(slot)
        return slot

    def acquire(self, name: str, pid: int) -> Slot:
        slot = self._slots.get(name)
        if slot is None:
            raise g.ReplicationCommandError("42704", f'replication slot "{name}" does not exist')
        if slot.active_pid is not None and slot.active_pid != pid:
            raise g.ReplicationCommandError(
                "55006", f'replication slot "{name}" is active for PID {slot.active_pid}'
            )
        slot.active_pid = pid
        return slot

    def release(self, slot: Slot) -> None:
        if not slot.temporary:
            slot.active_pid = None

    def drop(self, name: str, pid: int) -> None:
        slot = self.acquire(name, pid)
        del self._slots[name]
        if not slot.temporary:
            self._notify(name, None)

    def drop_temporary(self, pid: int) -> None:
        """The connection ``pid`` ended: its temporary slots go, its others are released."""
        for slot in list(self._slots.values()):
            if slot.active_pid == pid:
                if slot.temporary:
                    del self._slots[slot.name]
                else:
                    slot.active_pid = None

    def confirm(self, slot: Slot, flush: LSN) -> None:
        """A client on ``slot`` reported ``flush``: the slot need keep nothing before it."""
        if flush and (slot.restart_lsn is None or flush > slot.restart_lsn):
            slot.restart_lsn = flush
            if not slot.temporary:
                self._changed(slot)

    def oldest_restart_lsn(self) -> LSN | None:
        kept = [s.restart_lsn for s in self._slots.values() if s.restart_lsn is not None]
        return min(kept) if kept else None

    def _changed(self, slot: Slot) -> None:
        slot.dirty = True
        self._notify(slot.name, slot)

    def _notify(self, name: str, slot: Slot | None) -> None:
        if self.on_change is not None:
            self.on_change(name, slot)


# -- what sessions share ---------------------------------------------------------


class SenderCore:
    """The state every connection of one sender shares: source, settings, slots, pids."""

    def __init__(
        self,
        source: WalSource,
        settings: SenderSettings,
        slots: ReplicationSlots,
        *,
        first_pid: int = 10000,
        regions: RegionSource | None = None,
    ) -> None:
        self.source = source
        # Where the source's WAL is in files, for sessions whose shell sends
        # from files (WalSenderSession.zero_copy); the same WAL as source.read.
        self.regions = regions
        self.settings = settings
        self.slots = slots
        self.sessions: dict[int, WalSenderSession] = {}  # walsenders (past the startup packet)
        self._next_pid = first_pid
        self.stopping = False  # shutting down: streams end once caught up
        # Called when a client's reported positions, feedback or state change
        # (the relay recomputes what it confirms upstream).
        self.on_progress: Callable[[], None] | None = None

    def progressed(self) -> None:
        if self.on_progress is not None:
            self.on_progress()

    def slot_index(self) -> int:
        """The lowest free walsender slot, as PostgreSQL gives a new walsender (ties in FIRST)."""
        taken = {s.index for s in self.sessions.values()}
        return next(i for i in range(len(taken) + 1) if i not in taken)

    def _sync_standbys(self) -> list[SyncRepStandby]:
        config = self.settings.sync_config
        rows = []
        for s in sorted(self.sessions.values(), key=lambda s: s.index):
            state = _WALSND_STATES.get(s.state)
            if state is None:
                continue  # not a walsender yet (authenticating), or gone
            write, flush, apply = s.positions
            priority = config.priority(s.application_name) if config else 0
            rows.append(SyncRepStandby(s.index, state, priority, write, flush, apply))
        return rows

    def sync_states(self) -> dict[int, tuple[int, str]]:
        """pg_stat_replication's (sync_priority, sync_state) of each walsender, by index."""
        standbys = self._sync_standbys()
        rows = sync_states(self.settings.sync_config, standbys)
        return {s.index: row for s, row in zip(standbys, rows, strict=True)}

    def synced_positions(self) -> tuple[LSN, LSN, LSN] | None:
        """Write, flush, apply the synchronous standbys confirmed (None: too few of them)."""
        return synced_positions(self.settings.sync_config, self._sync_standbys())

    def oldest_feedback(self) -> tuple[int, int, int, int] | None:
        """The oldest xmin and catalog_xmin (with epochs) the clients reported, None if none."""
        xmins = []
        catalog = []
        for s in self.sessions.values():
            xmin, epoch, cxmin, cepoch = s.feedback
            if xmin:
                xmins.append((epoch, xmin))
            if cxmin:
                catalog.append((cepoch, cxmin))
        if not xmins and not catalog:
            return None
        oldest = min(xmins) if xmins else (0, 0)
        oldest_catalog = min(catalog) if catalog else (0, 0)
        return oldest[1], oldest[0], oldest_catalog[1], oldest_catalog[0]

    def new_pid(self) -> int:
        """A distinct, stable id per connection (BackendKeyData; temporary slot names use it)."""
        pid = self._next_pid
        self._next_pid = 10000 if pid >= 2**31 - 1 else pid + 1
        return pid

    @property
    def server_version(self) -> int:
        return self.source.server_version

    def settings_shown(self) -> dict[str, str]:
        """What ``SHOW`` answers (names as PostgreSQL spells them)."""
        major = self.server_version // 10000
        return {
            "wal_segment_size": c.wal_segment_size_text(self.source.seg_size),
            "data_directory_mode": c.data_directory_mode_text(0o700),
            "server_version": self.server_version_text(),
            "server_version_num": str(major * 10000),
            "server_encoding": "UTF8",
            "client_encoding": "UTF8",
            "integer_datetimes": "on",
            "max_wal_senders": str(self.settings.max_wal_senders),
            "max_replication_slots": str(self.settings.max_replication_slots),
            "wal_sender_timeout": _ms(self.settings.wal_sender_timeout),
            "wal_block_size": str(XLOG_BLCKSZ),
            "block_size": "8192",
            "wal_level": "replica",
            "TimeZone": "UTC",
            "DateStyle": "ISO, MDY",
        }

    def server_version_text(self) -> str:
        return f"{self.server_version // 10000}.0 ({self.settings.version_text})"


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms" if seconds % 1 else f"{int(seconds)}s"


# -- status ------------------------------------------------------------------------


@dataclass(frozen=True)
class WalSenderStatus:
    """One row of pg_stat_replication, for a walstream sender's connection."""

    pid: int
    usename: str
    application_name: str
    client_addr: str | None
    client_port: int | None  # -1 for a Unix socket, as PostgreSQL shows it
    backend_start: datetime
    backend_xmin: int | None
    state: str
    sent_lsn: LSN | None
    write_lsn: LSN | None
    flush_lsn: LSN | None
    replay_lsn: LSN | None
    write_lag: float | None  # seconds
    flush_lag: float | None
    replay_lag: float | None
    sync_priority: int
    sync_state: str
    reply_time: datetime | None
    slot_name: str | None
    bytes_sent: int = 0  # WAL bytes sent on this connection (not in pg_stat_replication)


# -- one connection ---------------------------------------------------------------


@dataclass
class _Stream:
    """The COPY of one START_REPLICATION."""

    timeline: int
    start: LSN
    end: LSN | None  # where the timeline ends (a historic one), None for the newest
    next_timeline: int | None = None
    done_sending: bool = False  # our CopyDone (end of timeline) is sent
    client_done: bool = False  # the client's CopyDone arrived


@dataclass
class _Peer:
    address: IPv4Address | IPv6Address | None  # None: a Unix-domain socket
    port: int | None
    peer_user: str | None = None  # the OS user of a Unix-socket client (SO_PEERCRED)
    client_certificate: ClientCertificate | None = None
    ssl: bool = False


@dataclass
class _Positions:
    write: LSN = field(default_factory=lambda: LSN(0))
    flush: LSN = field(default_factory=lambda: LSN(0))
    apply: LSN = field(default_factory=lambda: LSN(0))
    reply_time: int | None = None  # the client's clock, PostgreSQL microseconds
    xmin: int = 0
    xmin_epoch: int = 0
    catalog_xmin: int = 0
    catalog_xmin_epoch: int = 0


class WalSenderSession:
    """One physical replication connection, from the first byte to the close."""

    def __init__(
        self,
        core: SenderCore,
        *,
        address: IPv4Address | IPv6Address | None,
        port: int | None,
        now: float,
        wall_clock: float,
        peer_user: str | None = None,
    ) -> None:
        self.core = core
        self.conn = ServerConnection()
        self.peer = _Peer(address, port, peer_user)
        self.pid = core.new_pid()
        self.index = 0  # the walsender slot, once registered
        self.state = SessionState.CONNECTING
        self.user = ""
        self.application_name = ""
        self.backend_start = wall_clock
        self._started_monotonic = now
        self.want_tls = False  # the shell must run the TLS handshake before feeding more
        self.closing = False  # the shell closes the connection once pieces_to_send is sent
        self.close_reason: str | None = None  # for the shell's log line
        self._out = bytearray()  # protocol messages not yet in _pieces
        self._pieces: list[OutputPiece] = []
        self._queued = 0  # bytes in _pieces
        # The shell can send FileRegions (plain TCP: os.sendfile); set by the
        # shell, cleared by a TLS handshake.
        self.zero_copy = False
        # The rest of the segment being sent, as the source's region of its file
        # (which never changes), and where it starts and ends: one region() per
        # segment instead of one per message (4.7 us each, a tenth of the sender's CPU).
        self._run: FileRegion | None = None
        self._run_start = self._run_end = 0
        self._run_timeline = 0
        self._auth: ServerAuthenticator | None = None
        self._auth_deadline = now + core.settings.authentication_timeout
        self._registered = False
        self._stream: _Stream | None = None
        self._sent = LSN(0)  # sentPtr: where the next XLogData starts
        self._stream_slot: Slot | None = None
        self._positions = _Positions()
        self._lag = LagTracker()
        self._last_reply = now  # the last message from the client while streaming
        self._ping_sent = False
        self.bytes_sent = 0
        self._caught_up = False
        self._more = False

    # -- input from the shell --------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Bytes from the client (decrypted after a handshake): decoded by :attr:`conn`, handled."""
        if self.closing:
            return
        try:
            events = self.conn.receive_data(data)
        except ProtocolViolation as e:
            self.protocol_violation(e)
            return
        self.handle(events, now)

    def handle(self, events: list[ServerEvent], now: float) -> None:
        """Events :attr:`conn` decoded (a shell that feeds it the bytes itself calls this)."""
        for ev in events:
            if self.closing:
                break
            try:
                self._handle(ev, now)
            except LocalProtocolError:
                if not self.conn.closed:
                    raise  # our bug
                # The client pipelined a Terminate after what we were answering:
                # what the command did is done (a slot created stays), the answer
                # has nobody to go to.
                self._close("client closed the connection")

    def protocol_violation(self, e: ProtocolViolation) -> None:
        """The client broke the protocol: tell it why (as PostgreSQL does) and hang up."""
        with contextlib.suppress(Error):  # already closed: nothing more may be said
            self._out += self.conn.error(m.error_fields("FATAL", e.sqlstate, str(e)))
        self._close(f"protocol violation: {e}")

    def receive_eof(self, now: float) -> None:
        try:
            self.conn.receive_eof()
        except ProtocolViolation as e:
            log.debug("connection %d: %s", self.pid, e)
        self._close("client closed the connection")

    def tls_established(self, client_certificate: ClientCertificate | None) -> None:
        """The shell finished the handshake it was asked for (:attr:`want_tls`)."""
        self.want_tls = False
        self.zero_copy = False  # TLS encrypts in user space: bytes only
        self.peer.ssl = True
        self.peer.client_certificate = client_certificate

    def wal_available(self, now: float) -> None:
        """The source may have more WAL: stream what there is."""
        if self._stream is not None and not self.closing:
            self._send_wal(now)

    def timer(self, now: float) -> None:
        """The deadline passed (authentication_timeout, wal_sender_timeout, a keepalive)."""
        if self.closing:
            return
        if self.state is SessionState.CONNECTING:
            if now >= self._auth_deadline:
                # PostgreSQL just exits (no message: the client may be anyone).
                self._close("authentication timeout", quiet=True)
            return
        if self._stream is None or self._stream.done_sending:
            return
        timeout = self.core.settings.wal_sender_timeout
        if not timeout:
            return
        if now >= self._last_reply + timeout:
            # walsender.c: "terminating walsender process due to replication
            # timeout", logged; the client gets no message.
            self._close("terminating walsender process due to replication timeout", quiet=True)
            return
        if not self._ping_sent and now >= self._last_reply + timeout / 2:
            self._keepalive(now, reply_requested=True)
            self._ping_sent = True

    def shutdown(self, now: float) -> None:
        """The sender is stopping: streams end once what the source has is sent."""
        if self.conn.closed:
            return  # the client's Terminate is decoded, not yet handled: nothing more to say
        if self._stream is not None:
            self.state = SessionState.STOPPING
            self._send_wal(now)
        elif self.state in (SessionState.STARTUP,) and self.conn.state is ServerState.READY:
            self._fatal("57P01", "terminating connection due to administrator command")

    # -- output for the shell ----------------------------------------------------------

    def pieces_to_send(self) -> list[OutputPiece]:
        """What to write now, in order; FileRegions only when :attr:`zero_copy` is set.

        WAL comes as the source returned it (XLogData's header is a piece of
        its own), so that it is never copied to be framed or joined.
        """
        if self._out:
            self._pieces.append(bytes(self._out))
            self._out.clear()
        pieces, self._pieces = self._pieces, []
        self._queued = 0
        return pieces

    def data_to_send(self) -> bytes:
        """What to write now, as one bytes object."""
        return b"".join(p.read() if isinstance(p, FileRegion) else p for p in self.pieces_to_send())

    @property
    def sent(self) -> LSN:
        """sentPtr: where the next XLogData would start (the WAL this client still needs)."""
        return self._sent

    @property
    def streaming(self) -> bool:
        stream = self._stream  # read once: the relay's writer thread asks too (WalSender.needed)
        return stream is not None and not stream.done_sending

    def deadline(self) -> float | None:
        """When :meth:`timer` must be called next, if ever."""
        if self.closing:
            return None
        if self.state is SessionState.CONNECTING:
            return self._auth_deadline
        timeout = self.core.settings.wal_sender_timeout
        if self._stream is None or self._stream.done_sending or not timeout:
            return None
        if not self._ping_sent:
            return self._last_reply + timeout / 2
        return self._last_reply + timeout

    def status(self, now_pg: int) -> WalSenderStatus:
        """pg_stat_replication's row for this connection."""
        p = self._positions
        streaming = self._stream is not None
        lag = self._lag

        def seconds(usecs: int | None) -> float | None:
            return None if usecs is None else usecs / 1_000_000

        sync = self.core.sync_states().get(self.index, (0, "async"))

        return WalSenderStatus(
            pid=self.pid,
            usename=self.user,
            application_name=self.application_name,
            client_addr=None if self.peer.address is None else str(self.peer.address),
            client_port=-1 if self.peer.address is None else self.peer.port,
            backend_start=datetime.fromtimestamp(self.backend_start, UTC),
            backend_xmin=p.xmin or None,
            state=self.state.value,
            sent_lsn=self._sent if streaming or self._sent else None,
            write_lsn=p.write if p.reply_time is not None else None,
            flush_lsn=p.flush if p.reply_time is not None else None,
            replay_lsn=p.apply if p.reply_time is not None else None,
            write_lag=seconds(lag.write_lag),
            flush_lag=seconds(lag.flush_lag),
            replay_lag=seconds(lag.replay_lag),
            sync_priority=sync[0],
            sync_state=sync[1],
            reply_time=None if p.reply_time is None else datetime_from_pg(p.reply_time),
            slot_name=None if self._stream_slot is None else self._stream_slot.name,
            bytes_sent=self.bytes_sent,
        )

    @property
    def positions(self) -> tuple[LSN, LSN, LSN]:
        """The client's last reported write, flush and apply (0 before its first reply)."""
        p = self._positions
        return p.write, p.flush, p.apply

    @property
    def feedback(self) -> tuple[int, int, int, int]:
        """Hot-standby feedback: xmin, its epoch, catalog_xmin, its epoch (0: none)."""
        p = self._positions
        return p.xmin, p.xmin_epoch, p.catalog_xmin, p.catalog_xmin_epoch

    # -- dispatch ----------------------------------------------------------------------

    def _handle(self, ev: object, now: float) -> None:
        if isinstance(ev, m.SSLRequest):
            accept = self.core.settings.tls
            self._out += self.conn.encryption_response(accept)
            self.want_tls = accept
        elif isinstance(ev, m.GSSENCRequest):
            self._out += self.conn.encryption_response(False)  # no GSSAPI here
        elif isinstance(ev, m.CancelRequest):
            self._close("cancel request", quiet=True)  # nothing to cancel: a walsender waits
        elif isinstance(ev, m.StartupMessage):
            self._startup(ev, now)
        elif isinstance(ev, m.PasswordMessage | m.SASLInitialResponse | m.SASLResponse):
            self._authenticate(ev, now)
        elif isinstance(ev, m.Query):
            self._query(ev.sql, now)
        elif isinstance(ev, StandbyStatusUpdate):
            self._reply(ev, now)
        elif isinstance(ev, HotStandbyFeedback):
            self._last_reply, self._ping_sent = now, False
            p = self._positions
            p.xmin, p.xmin_epoch = ev.xmin, ev.xmin_epoch
            p.catalog_xmin, p.catalog_xmin_epoch = ev.catalog_xmin, ev.catalog_xmin_epoch
            self.core.progressed()
        elif isinstance(ev, m.CopyDone):
            self._client_copy_done(now)
        elif isinstance(ev, m.Terminate | ConnectionClosed):
            self._close("client closed the connection")
        # CopyData/CopyFail outside COPY: PostgreSQL's main loop ignores them.

    # -- startup and authentication ------------------------------------------------------

    def _startup(self, msg: m.StartupMessage, now: float) -> None:
        params = dict(msg.parameters)
        minor = msg.protocol & 0xFFFF
        options = [k for k in params if k.startswith("_pq_.")]
        if minor > _NEGOTIABLE_MINOR or options:
            self._out += self.conn.negotiate_protocol_version(_NEGOTIABLE_MINOR, options)
        user = params.get("user", "")
        if not user:
            self._fatal("28000", "no PostgreSQL user name specified in startup packet")
            return
        self.user = user
        self.application_name = params.get("application_name", "")
        database = params.get("database") or user
        replication = params.get("replication")
        physical = replication is not None and parse_bool(replication) is True
        if (
            replication is not None
            and replication.lower() != "database"
            and parse_bool(replication) is None
        ):
            self._fatal("22023", f'invalid value for parameter "replication": "{replication}"')
            return
        facts = ConnectionFacts(user, self.peer.address, self.peer.ssl)
        if not physical:
            # Only physical replication is served; a pg_hba.conf here never
            # admits a database connection (or a logical walsender).
            encryption = "SSL encryption" if self.peer.ssl else "no encryption"
            self._fatal(
                "28000",
                f'no pg_hba.conf entry for host "{facts.host}", user "{user}", '
                f'database "{database}", {encryption}',
            )
            return
        settings = self.core.settings
        if len(self.core.sessions) >= settings.max_wal_senders:
            # Checked before authentication, as PostgreSQL reserves a walsender
            # when the process starts: a connection waiting for its password counts.
            # PostgreSQL quotes the setting's name from 17 (measured on 18, and 15
            # and 16 without; 17 assumed as 18, as repl_gram's GUC names are).
            name = "max_wal_senders"
            if self.core.server_version >= 170000:
                name = f'"{name}"'
            self._fatal(
                "53300",
                f"number of requested standby connections exceeds {name} "
                f"(currently {settings.max_wal_senders})",
            )
            return
        self.index = self.core.slot_index()
        self.core.sessions[self.pid] = self
        self._registered = True
        line = settings.hba.match(facts, settings.interfaces)
        if line is None or line.method == "reject":
            self._fatal("28000", rejection_message(facts, explicit=line is not None))
            return
        self._auth = ServerAuthenticator(
            facts,
            line,
            settings.verifiers.get(user),
            tls_end_point=settings.tls_end_point,
            client_certificate=self.peer.client_certificate,
            client_ca_loaded=settings.client_ca_loaded,
            peer_user=self.peer.peer_user,
        )
        self._auth_step(self._auth.start(), now)

    def _authenticate(self, msg: m.PasswordMessage | m.SASLInitialResponse | m.SASLResponse,
                      now: float) -> None:  # fmt: skip
        if self._auth is None:
            self.protocol_violation(ProtocolViolation("unexpected authentication response"))
            return
        self._auth_step(self._auth.receive(msg), now)

    def _auth_step(self, step: AuthRequest | AuthSuccess | AuthFailure, now: float) -> None:
        if isinstance(step, AuthFailure):
            if step.log_detail:
                log.info("connection %d: %s (%s)", self.pid, step.message, step.log_detail)
            self._out += encode_step(self.conn, step)
            self._close(step.message, quiet=True)
            return
        self._out += encode_step(self.conn, step)
        if isinstance(step, AuthSuccess):
            self._admitted(now)

    def _admitted(self, now: float) -> None:
        """Authenticated: the walsender says hello and waits for commands."""
        self.state = SessionState.STARTUP
        for name, value in self._parameters().items():
            self._out += self.conn.parameter_status(name, value)
        self._out += self.conn.backend_key_data(self.pid, self.pid.to_bytes(4, "big"))
        self._out += self.conn.ready_for_query()
        log.info(
            "replication connection %d authorized: user=%s application_name=%s from %s",
            self.pid,
            self.user,
            self.application_name or '""',
            self.client_text,
        )

    def _parameters(self) -> dict[str, str]:
        """The ParameterStatus a walsender of the WAL's version sends after authentication."""
        major = self.core.server_version // 10000
        params = {
            "application_name": self.application_name,
            "client_encoding": "UTF8",
            "DateStyle": "ISO, MDY",
            "default_transaction_read_only": "on",
            # Like a cascading standby: this server takes no writes.
            "in_hot_standby": "on",
            "integer_datetimes": "on",
            "IntervalStyle": "postgres",
            "is_superuser": "off",
            "server_encoding": "UTF8",
            "server_version": self.core.server_version_text(),
            "session_authorization": self.user,
            "standard_conforming_strings": "on",
            "TimeZone": "UTC",
        }
        if major >= 16:
            params["scram_iterations"] = "4096"
        if major >= 18:
            params["search_path"] = '"$user", public'
        return params

    # -- commands ----------------------------------------------------------------------

    def _query(self, sql: str, now: float) -> None:
        version = self.core.server_version
        try:
            parsed = g.parse_command(sql, server_version=version)
            for notice in parsed.notices:
                self._out += self.conn.notice(notice.fields())
            g.check_command(parsed.command, server_version=version)
            self._command(parsed.command, now)
        except g.ReplicationCommandError as e:
            for notice in e.notices:
                self._out += self.conn.notice(notice.fields())
            self._error(e.fields())
        except SourceError as e:
            self._error(m.error_fields("ERROR", "XX000", str(e)))

    def _error(self, fields: dict[str, str]) -> None:
        """An ERROR ends the command (and any COPY); the connection goes on."""
        self._out += self.conn.error(fields)
        if self._stream is not None:
            self._end_stream()
        self._ready()

    def _ready(self) -> None:
        if self.conn.state is ServerState.QUERY:
            self._out += self.conn.ready_for_query()

    def _command(self, cmd: g.ReplicationCommand, now: float) -> None:
        source = self.core.source
        version = self.core.server_version
        if isinstance(cmd, g.IdentifySystemCmd):
            source.refresh()
            result = c.IdentifySystem(
                source.system_identifier, source.timeline(), source.end_of_wal(), None
            ).to_result(server_version=version)
            self._out += result.encode()
        elif isinstance(cmd, g.ShowCmd):
            self._out += c.show_result(cmd.name, self.core.settings_shown()).encode()
        elif isinstance(cmd, g.TimelineHistoryCmd):
            try:
                name, content = source.history_file(cmd.timeline)
            except FileNotFoundError:
                self._out += self.conn.row_description(c.timeline_history_fields(version))
                raise c.timeline_history_missing(cmd.timeline) from None
            self._out += c.TimelineHistory(name, content).to_result(server_version=version).encode()
        elif isinstance(cmd, g.CreateReplicationSlotCmd):
            self._create_slot(cmd)
        elif isinstance(cmd, g.ReadReplicationSlotCmd):
            self._read_slot(cmd)
        elif isinstance(cmd, g.DropReplicationSlotCmd):
            self.core.slots.drop(cmd.slot_name, self.pid)
            self._out += c.command_complete("DROP_REPLICATION_SLOT").encode()
        elif isinstance(cmd, g.AlterReplicationSlotCmd):
            self.core.slots.acquire(cmd.slot_name, self.pid)  # 42704/55006 first, as PostgreSQL
            raise g.physical_slot_alter_error()
        elif isinstance(cmd, g.StartReplicationCmd):
            self._start_replication(cmd, now)
            return
        else:  # BASE_BACKUP, UPLOAD_MANIFEST: there is no data directory to back up
            raise g.ReplicationCommandError(
                "0A000", f"{_command_name(cmd)} is not supported by walstream: it has no data "
                "directory (take base backups from the primary)",
            )  # fmt: skip
        self._ready()

    def _create_slot(self, cmd: g.CreateReplicationSlotCmd) -> None:
        version = self.core.server_version
        if cmd.kind is g.ReplicationKind.LOGICAL:
            raise g.logical_decoding_error(server_version=version, wal_level="replica")
        options = g.create_slot_options(cmd, server_version=version)
        g.check_slot_name(cmd.slot_name)
        restart = None
        if options.reserve_wal:
            self.core.source.refresh()
            end = self.core.source.end_of_wal()
            restart = LSN(end - end % self.core.source.seg_size)
        self.core.slots.create(
            cmd.slot_name, temporary=cmd.temporary, restart_lsn=restart, pid=self.pid
        )
        self._out += c.ReplicationSlot(cmd.slot_name, LSN(0), None, None).to_result().encode()

    def _read_slot(self, cmd: g.ReadReplicationSlotCmd) -> None:
        slot = self.core.slots.get(cmd.slot_name)
        if slot is None:
            self._out += c.read_replication_slot_result(None).encode()
            return
        tli = None
        if slot.restart_lsn is not None:
            source = self.core.source
            newest = source.timeline()
            tli = timeline_of(slot.restart_lsn, source.history(newest), newest)
        position = c.SlotPosition("physical", slot.restart_lsn, tli)
        self._out += c.read_replication_slot_result(position).encode()

    # -- START_REPLICATION ------------------------------------------------------------------

    def _start_replication(self, cmd: g.StartReplicationCmd, now: float) -> None:
        source = self.core.source
        if cmd.kind is g.ReplicationKind.LOGICAL:
            raise g.logical_decoding_error(server_version=self.core.server_version,
                                           wal_level="replica")  # fmt: skip
        slot = None
        if cmd.slot_name is not None:
            slot = self.core.slots.acquire(cmd.slot_name, self.pid)
        try:
            source.refresh()
            newest = source.timeline()
            timeline = cmd.timeline or newest
            end: LSN | None = None
            next_tli: int | None = None
            if timeline != newest:
                history = source.history(newest)
                for i, entry in enumerate(history):
                    if entry.parent_tli == timeline:
                        end = entry.switchpoint
                        next_tli = history[i + 1].parent_tli if i + 1 < len(history) else newest
                        break
                else:
                    raise g.ReplicationCommandError(
                        "XX000", f"requested timeline {timeline} is not in this server's history"
                    )
                if cmd.start > end:
                    raise g.ReplicationCommandError(
                        "XX000",
                        f"requested starting point {cmd.start} on timeline {timeline} is not in "
                        "this server's history",
                        detail=f"This server's history forked from timeline {timeline} at {end}.",
                    )
        except BaseException:
            if slot is not None:
                self.core.slots.release(slot)
            raise
        self._stream_slot = slot
        self._stream = _Stream(timeline, cmd.start, end, next_tli)
        if end is not None and cmd.start == end:
            # Exactly at the switch point: nothing to stream, no COPY at all.
            self._finish_stream_result()
            return
        self._out += self.conn.copy_both_response()
        self.state = SessionState.CATCHUP
        self._last_reply, self._ping_sent = now, False
        if end is None:
            flush = source.end_of_wal()
            if cmd.start > flush:
                self._error(
                    m.error_fields(
                        "ERROR",
                        "XX000",
                        f"requested starting point {cmd.start} is ahead of the WAL flush "
                        f"position of this server {flush}",
                    )
                )
                return
        self._sent = cmd.start
        log.info(
            "connection %d: starting stream at %s on timeline %d%s",
            self.pid,
            cmd.start,
            timeline,
            f' (slot "{slot.name}")' if slot is not None else "",
        )
        self._send_wal(now)

    def _send_wal(self, now: float) -> None:
        """XLogData for what the source has, as walsender.c's XLogSendPhysical cuts it."""
        stream = self._stream
        if stream is None or stream.done_sending or self.closing:
            return
        self._more = False
        source = self.core.source
        if stream.end is None and source.timeline() != stream.timeline:
            self._became_historic(stream)
        request = source.end_of_wal() if stream.end is None else stream.end
        pg_now = self._pg_time(now)
        self._lag.record(request, pg_now)
        regions = self.core.regions if self.zero_copy else None
        seg_size = source.seg_size
        timeline = stream.timeline
        pieces = self._pieces
        while self._sent < request:
            start = self._sent
            end = min(int(request), start + MAX_SEND_SIZE)
            if end < request:
                end -= end % XLOG_BLCKSZ  # whole pages, unless this reaches the request
            end = min(end, start - start % seg_size + seg_size)
            payload: OutputPiece
            try:
                region = None if regions is None else self._region(regions, timeline, start, end)
                if region is None:
                    payload = source.read(timeline, start, end - start)
                    size = len(payload)
                else:
                    payload, size = region, region.size
            except SegmentRemoved as e:
                self._error(m.error_fields("ERROR", "58P01", str(e)))
                return
            except SourceError as e:
                self._error(m.error_fields("ERROR", "XX000", str(e)))
                return
            if not size:
                break  # the source cannot return it yet (a file still being made durable)
            if self._out:
                pieces.append(bytes(self._out))
                self._queued += len(self._out)
                self._out.clear()
            pieces.append(self.conn.xlog_data_header(start, request, pg_now, size))
            pieces.append(payload)
            self._queued += size + _XLOGDATA_FRAME
            self._sent = LSN(start + size)
            self.bytes_sent += size
            if self._queued >= _OUTPUT_LIMIT:
                self._more = True  # let the shell write it, then call again
                return
        if self._sent >= request:
            if not self._caught_up:
                self._caught_up = True
                if self.state is SessionState.CATCHUP:
                    self.state = SessionState.STREAMING
                    self.core.progressed()
            if stream.end is not None:
                # The end of a historic timeline: CopyDone, then the next
                # timeline's row once the client's CopyDone comes.
                self._out += self.conn.copy_done()
                stream.done_sending = True
                if stream.client_done:
                    self._finish_stream_result()
            elif self.state is SessionState.STOPPING:
                # Shutting down: everything sent; ask for a last reply and end
                # COPY with CommandComplete, as a walsender at shutdown does.
                self._keepalive(now, reply_requested=True)
                self._out += self.conn.command_complete("COPY 0")
                self._close("shutting down", quiet=True)

    def _region(
        self, regions: RegionSource, timeline: int, start: int, end: int
    ) -> FileRegion | None:
        """``[start, end)`` as a region of its file, from the run of its segment if known."""
        run = self._run
        if (
            run is None
            or timeline != self._run_timeline
            or not self._run_start <= start < self._run_end
        ):
            seg_end = start - start % self.core.source.seg_size + self.core.source.seg_size
            run = regions.region(timeline, LSN(start), seg_end - start)
            self._run = run
            if run is None:
                return None
            self._run_start, self._run_end, self._run_timeline = start, start + run.size, timeline
        skip = start - self._run_start
        return FileRegion(run.file, run.offset + skip, min(end, self._run_end) - start)

    def _became_historic(self, stream: _Stream) -> None:
        """The timeline being streamed ended upstream (a promotion): stop at its switch point.

        As a cascading walsender does: the new timeline's history says where
        ours forked off; what is sent ends there with CopyDone, and the client
        is told the next timeline when it ends the COPY.
        """
        newest = self.core.source.timeline()
        history = self.core.source.history(newest)
        for i, entry in enumerate(history):
            if entry.parent_tli == stream.timeline:
                stream.end = entry.switchpoint
                stream.next_timeline = history[i + 1].parent_tli if i + 1 < len(history) else newest
                log.info(
                    "connection %d: timeline %d ends at %s; timeline %d follows",
                    self.pid,
                    stream.timeline,
                    stream.end,
                    stream.next_timeline,
                )
                return
        # A new timeline that did not come from ours: nothing more is ours to send.
        stream.end, stream.next_timeline = self._sent, newest

    @property
    def wants_wal(self) -> bool:
        """Streaming and not blocked on our own output: the shell should offer it WAL."""
        return self.streaming and self._queued + len(self._out) < _OUTPUT_LIMIT

    @property
    def more_to_send(self) -> bool:
        """The last offer stopped at the output limit with WAL left: offer again once written."""
        return self._more and self.streaming

    def _keepalive(self, now: float, *, reply_requested: bool) -> None:
        stream = self._stream
        if stream is None or stream.done_sending or self.conn.state is not ServerState.COPY_BOTH:
            return
        wal_end = stream.end if stream.end is not None else self.core.source.end_of_wal()
        self._out += self.conn.keepalive(wal_end, self._pg_time(now), reply_requested)

    def _reply(self, ev: StandbyStatusUpdate, now: float) -> None:
        self._last_reply, self._ping_sent = now, False
        p = self._positions
        p.write, p.flush, p.apply, p.reply_time = ev.write, ev.flush, ev.apply, ev.send_time
        self._lag.reply(ev.write, ev.flush, ev.apply, sent=self._sent, now=self._pg_time(now))
        if self._stream_slot is not None:
            self.core.slots.confirm(self._stream_slot, ev.flush)
        self.core.progressed()
        if ev.reply_requested:
            self._keepalive(now, reply_requested=False)

    def _client_copy_done(self, now: float) -> None:
        stream = self._stream
        if stream is None:
            return
        stream.client_done = True
        if not stream.done_sending:
            # The client ends streaming: answer CopyDone, then the command's result
            # (with the next timeline's row if the timeline was a historic one,
            # as walsender.c sends it whether or not its end was reached).
            self._out += self.conn.copy_done()
            stream.done_sending = True
        self._finish_stream_result()

    def _finish_stream_result(self) -> None:
        """After COPY (or instead of it): the next timeline's row if a timeline ended, the tags."""
        stream = self._stream
        assert stream is not None
        next_timeline = None
        if stream.next_timeline is not None and stream.end is not None:
            next_timeline = c.NextTimeline(stream.next_timeline, stream.end)
        for result in c.start_replication_end(next_timeline):
            self._out += result.encode()
        self._end_stream()
        self._ready()

    def _end_stream(self) -> None:
        self._run = None  # its file need not stay open
        if self._stream_slot is not None:
            self.core.slots.release(self._stream_slot)
        self._stream = None
        self._stream_slot = None
        self._caught_up = False
        if self.state in (SessionState.CATCHUP, SessionState.STREAMING):
            self.state = SessionState.STARTUP

    # -- ending --------------------------------------------------------------------------

    def _fatal(self, sqlstate: str, message: str) -> None:
        self._out += self.conn.error(m.error_fields("FATAL", sqlstate, message))
        self._close(message, quiet=True)

    def _close(self, reason: str, *, quiet: bool = False) -> None:
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        self.conn.close()
        if self._stream_slot is not None:
            self.core.slots.release(self._stream_slot)
            self._stream_slot = None
        self.core.slots.drop_temporary(self.pid)
        self._stream = None
        self.state = SessionState.CLOSED
        if self._registered:
            del self.core.sessions[self.pid]
            self._registered = False
            self.core.progressed()

    def _pg_time(self, now: float) -> int:
        """PostgreSQL microseconds for the monotonic ``now``.

        Times sent to clients (XLogData sendTime, keepalives) and the lag
        tracker's samples are wall-clock timestamps; the session keeps the
        wall clock of its start and moves it with the monotonic time the
        shell passes, so no clock is read here.
        """
        return pg_time_from_unix(self.backend_start + (now - self._started_monotonic))

    @property
    def client_text(self) -> str:
        """The client as a log line names it: ``address:port``, or ``[local]``."""
        if self.peer.address is None:
            return "[local]"
        return f"{self.peer.address}:{self.peer.port}"


def _command_name(cmd: object) -> str:
    return {
        "BaseBackupCmd": "BASE_BACKUP",
        "UploadManifestCmd": "UPLOAD_MANIFEST",
    }.get(type(cmd).__name__, type(cmd).__name__)
