"""Resource managers: their names, their record types, and the payloads replay tracking needs.

Names are pg_waldump's exactly (``rm_name`` and each rmgr's ``rm_identify``),
because ``walstream waldump`` prints them and users grep for them. They were
taken from pg_waldump's own ``--stats=record`` output over WAL holding one
record of every (rmgr, info) pair, for PostgreSQL 15, 16 and 18 (the tests
regenerate that WAL and compare). 15 and 16 agree; 17 renamed the Heap2 prune
records and added XLOG/CHECKPOINT_REDO, so the table is chosen by the page
magic.

Only the payloads that a replica needs to follow replay are decoded:
checkpoints (redo pointer, timelines), segment switches, restore points,
end-of-recovery and overwrite-contrecord records, transaction completion
(commit/abort, prepared or not, with their timestamps and subtransactions)
and running-transactions snapshots. Heap, index and other page-level
payloads change shape between versions and are left as bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from walstream.errors import WalCorruption
from walstream.lsn import LSN
from walstream.pgtypes import datetime_from_pg

__all__ = [
    "MAGIC_VERSIONS",
    "RMGR_NAMES",
    "CheckPoint",
    "EndOfRecovery",
    "OverwriteContrecord",
    "RestorePoint",
    "RunningXacts",
    "XactRecord",
    "decode_payload",
    "record_type_name",
    "rmgr_id",
    "rmgr_name",
    "version_of_magic",
]

# XLOG_PAGE_MAGIC of each major version (release builds; development
# snapshots use other values).
MAGIC_VERSIONS: Final[dict[int, int]] = {
    0xD097: 10,
    0xD098: 11,
    0xD101: 12,
    0xD106: 13,
    0xD10D: 14,
    0xD110: 15,
    0xD113: 16,
    0xD116: 17,
    0xD118: 18,
}


def version_of_magic(magic: int) -> int | None:
    """The PostgreSQL major version that writes pages with ``magic``, if known."""
    return MAGIC_VERSIONS.get(magic)


# Resource manager ids (identical from 13 to 18).
RM_XLOG: Final = 0
RM_XACT: Final = 1
RM_STANDBY: Final = 8
RM_MAX_BUILTIN: Final = 21

RMGR_NAMES: Final[tuple[str, ...]] = (
    "XLOG",
    "Transaction",
    "Storage",
    "CLOG",
    "Database",
    "Tablespace",
    "MultiXact",
    "RelMap",
    "Standby",
    "Heap2",
    "Heap",
    "Btree",
    "Hash",
    "Gin",
    "Gist",
    "Sequence",
    "SPGist",
    "BRIN",
    "CommitTs",
    "ReplicationOrigin",
    "Generic",
    "LogicalMessage",
)

_RMGR_IDS: Final = {name.lower(): i for i, name in enumerate(RMGR_NAMES)}


def rmgr_name(rmid: int) -> str:
    """pg_waldump's name for a resource manager (``custom###`` for ids 128-255)."""
    if rmid <= RM_MAX_BUILTIN:
        return RMGR_NAMES[rmid]
    if rmid >= 128:
        return f"custom{rmid:03d}"
    return f"UNKNOWN ({rmid})"


def rmgr_id(name: str) -> int | None:
    """The id of a resource manager named as pg_waldump names it (case-insensitive)."""
    lowered = name.lower()
    if lowered.startswith("custom") and lowered[6:].isdigit():
        rmid = int(lowered[6:])
        return rmid if 128 <= rmid <= 255 else None
    return _RMGR_IDS.get(lowered)


_N = None  # no name: pg_waldump prints "UNKNOWN (xx)"

# Record types by the high four bits of xl_info, as pg_waldump 15 and 16 name them.
_IDENTIFY_15: Final[tuple[tuple[str | None, ...], ...]] = (
    (  # XLOG
        "CHECKPOINT_SHUTDOWN",
        "CHECKPOINT_ONLINE",
        "NOOP",
        "NEXTOID",
        "SWITCH",
        "BACKUP_END",
        "PARAMETER_CHANGE",
        "RESTORE_POINT",
        "FPW_CHANGE",
        "END_OF_RECOVERY",
        "FPI_FOR_HINT",
        "FPI",
        _N,
        "OVERWRITE_CONTRECORD",
        _N,
        _N,
    ),
    (  # Transaction: only three bits are the opcode (0x80 is XLOG_XACT_HAS_INFO)
        "COMMIT",
        "PREPARE",
        "ABORT",
        "COMMIT_PREPARED",
        "ABORT_PREPARED",
        "ASSIGNMENT",
        "INVALIDATION",
        _N,
    )
    * 2,
    (_N, "CREATE", "TRUNCATE") + (_N,) * 13,  # Storage
    ("ZEROPAGE", "TRUNCATE") + (_N,) * 14,  # CLOG
    ("CREATE_FILE_COPY", "CREATE_WAL_LOG", "DROP") + (_N,) * 13,  # Database
    ("CREATE", "DROP") + (_N,) * 14,  # Tablespace
    ("ZERO_OFF_PAGE", "ZERO_MEM_PAGE", "CREATE_ID", "TRUNCATE_ID") + (_N,) * 12,  # MultiXact
    ("UPDATE",) + (_N,) * 15,  # RelMap
    ("LOCK", "RUNNING_XACTS", "INVALIDATIONS") + (_N,) * 13,  # Standby
    (  # Heap2
        "REWRITE",
        "PRUNE",
        "VACUUM",
        "FREEZE_PAGE",
        "VISIBLE",
        "MULTI_INSERT",
        "LOCK_UPDATED",
        "NEW_CID",
        _N,
        _N,
        _N,
        _N,
        _N,
        "MULTI_INSERT+INIT",
        _N,
        _N,
    ),
    (  # Heap
        "INSERT",
        "DELETE",
        "UPDATE",
        "TRUNCATE",
        "HOT_UPDATE",
        "HEAP_CONFIRM",
        "LOCK",
        "INPLACE",
        "INSERT+INIT",
        _N,
        "UPDATE+INIT",
        _N,
        "HOT_UPDATE+INIT",
        _N,
        _N,
        _N,
    ),
    (  # Btree
        "INSERT_LEAF",
        "INSERT_UPPER",
        "INSERT_META",
        "SPLIT_L",
        "SPLIT_R",
        "INSERT_POST",
        "DEDUP",
        "DELETE",
        "UNLINK_PAGE",
        "UNLINK_PAGE_META",
        "NEWROOT",
        "MARK_PAGE_HALFDEAD",
        "VACUUM",
        "REUSE_PAGE",
        "META_CLEANUP",
        _N,
    ),
    (  # Hash
        "INIT_META_PAGE",
        "INIT_BITMAP_PAGE",
        "INSERT",
        "ADD_OVFL_PAGE",
        "SPLIT_ALLOCATE_PAGE",
        "SPLIT_PAGE",
        "SPLIT_COMPLETE",
        "MOVE_PAGE_CONTENTS",
        "SQUEEZE_PAGE",
        "DELETE",
        "SPLIT_CLEANUP",
        "UPDATE_META_PAGE",
        "VACUUM_ONE_PAGE",
        _N,
        _N,
        _N,
    ),
    (  # Gin
        _N,
        "CREATE_PTREE",
        "INSERT",
        "SPLIT",
        "VACUUM_PAGE",
        "DELETE_PAGE",
        "UPDATE_META_PAGE",
        "INSERT_LISTPAGE",
        "DELETE_LISTPAGE",
        "VACUUM_DATA_LEAF_PAGE",
    )
    + (_N,) * 6,
    ("PAGE_UPDATE", "DELETE", "PAGE_REUSE", "PAGE_SPLIT", _N, _N, "PAGE_DELETE", "ASSIGN_LSN")
    + (_N,) * 8,  # Gist
    ("LOG",) + (_N,) * 15,  # Sequence
    (  # SPGist
        _N,
        "ADD_LEAF",
        "MOVE_LEAFS",
        "ADD_NODE",
        "SPLIT_TUPLE",
        "PICKSPLIT",
        "VACUUM_LEAF",
        "VACUUM_ROOT",
        "VACUUM_REDIRECT",
    )
    + (_N,) * 7,
    (  # BRIN
        "CREATE_INDEX",
        "INSERT",
        "UPDATE",
        "SAMEPAGE_UPDATE",
        "REVMAP_EXTEND",
        "DESUMMARIZE",
        _N,
        _N,
        _N,
        "INSERT+INIT",
        "UPDATE+INIT",
    )
    + (_N,) * 5,
    ("ZEROPAGE", "TRUNCATE") + (_N,) * 14,  # CommitTs
    ("SET", "DROP") + (_N,) * 14,  # ReplicationOrigin
    ("Generic",) * 16,  # Generic
    ("MESSAGE",) + (_N,) * 15,  # LogicalMessage
)


def _with(table: tuple[str | None, ...], changes: dict[int, str]) -> tuple[str | None, ...]:
    return tuple(changes.get(i, name) for i, name in enumerate(table))


# 17 split heap pruning three ways and added CHECKPOINT_REDO; 18 kept 17's names.
_IDENTIFY_17: Final = (
    _with(_IDENTIFY_15[0], {0xE: "CHECKPOINT_REDO"}),
    *_IDENTIFY_15[1:9],
    _with(
        _IDENTIFY_15[9],
        {1: "PRUNE_ON_ACCESS", 2: "PRUNE_VACUUM_SCAN", 3: "PRUNE_VACUUM_CLEANUP"},
    ),
    *_IDENTIFY_15[10:],
)
assert all(len(t) == 16 for t in _IDENTIFY_15)
assert len(_IDENTIFY_15) == RM_MAX_BUILTIN + 1


def record_type_name(rmid: int, info: int, version: int = 18) -> str:
    """pg_waldump's name for a record type (``rm_identify``), e.g. ``INSERT+INIT``.

    ``info`` is xl_info; its low four bits (XLR_INFO_MASK) are ignored, as
    pg_waldump ignores them. Unknown types read ``UNKNOWN (xx)`` like
    pg_waldump's, with the info's high bits in hex.
    """
    name = None
    if rmid <= RM_MAX_BUILTIN:
        table = _IDENTIFY_17 if version >= 17 else _IDENTIFY_15
        name = table[rmid][info >> 4]
    return name if name is not None else f"UNKNOWN ({info & 0xF0:x})"


# ---------------------------------------------------------------------------
# Payloads
# ---------------------------------------------------------------------------


def _unix_time(seconds: int) -> datetime | None:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class CheckPoint:
    """XLOG CHECKPOINT_SHUTDOWN/ONLINE: where redo starts and the timeline it is on."""

    redo: LSN
    timeline: int
    prev_timeline: int
    full_page_writes: bool
    next_xid: int  # FullTransactionId (epoch << 32 | xid)
    next_oid: int
    next_multi: int
    next_multi_offset: int
    oldest_xid: int
    oldest_xid_db: int
    oldest_multi: int
    oldest_multi_db: int
    time: datetime | None
    oldest_commit_ts_xid: int
    newest_commit_ts_xid: int
    oldest_active_xid: int
    wal_level: int | None  # 18+
    shutdown: bool


@dataclass(frozen=True, slots=True)
class RestorePoint:
    """XLOG RESTORE_POINT, the target of recovery_target_name."""

    time: datetime | None
    name: str


@dataclass(frozen=True, slots=True)
class EndOfRecovery:
    """XLOG END_OF_RECOVERY: a promotion switched to ``timeline``."""

    time: datetime | None
    timeline: int
    prev_timeline: int
    wal_level: int | None  # 18+


@dataclass(frozen=True, slots=True)
class OverwriteContrecord:
    """XLOG OVERWRITE_CONTRECORD: the record at ``overwritten_lsn`` was abandoned."""

    overwritten_lsn: LSN
    time: datetime | None


# xl_xact_xinfo bits.
XACT_XINFO_HAS_DBINFO: Final = 0x01
XACT_XINFO_HAS_SUBXACTS: Final = 0x02
XACT_XINFO_HAS_RELFILELOCATORS: Final = 0x04
XACT_XINFO_HAS_INVALS: Final = 0x08
XACT_XINFO_HAS_TWOPHASE: Final = 0x10
XACT_XINFO_HAS_ORIGIN: Final = 0x20
XACT_XINFO_HAS_AE_LOCKS: Final = 0x40
XACT_XINFO_HAS_GID: Final = 0x80
XACT_XINFO_HAS_DROPPED_STATS: Final = 0x100
XLOG_XACT_HAS_INFO: Final = 0x80

XACT_COMMIT: Final = 0x00
XACT_PREPARE: Final = 0x10
XACT_ABORT: Final = 0x20
XACT_COMMIT_PREPARED: Final = 0x30
XACT_ABORT_PREPARED: Final = 0x40


@dataclass(frozen=True, slots=True)
class XactRecord:
    """A transaction's commit, abort or prepare.

    ``xid`` is the transaction the record completes: the record's xl_xid, or
    for COMMIT/ABORT PREPARED (whose xl_xid is 0) the prepared transaction's
    id from the payload, which is what recovery_target_xid matches.
    ``xact_time`` is the commit/abort time (the preparation time for PREPARE).
    """

    kind: str  # COMMIT, ABORT, PREPARE, COMMIT_PREPARED, ABORT_PREPARED
    xid: int
    xact_time: datetime | None
    xact_time_raw: int
    xinfo: int
    db_id: int | None
    ts_id: int | None
    subxacts: tuple[int, ...]
    nrels: int
    twophase_xid: int | None
    gid: str | None
    origin_lsn: LSN | None
    origin_time: datetime | None


@dataclass(frozen=True, slots=True)
class RunningXacts:
    """Standby RUNNING_XACTS: the snapshot a hot standby starts from."""

    next_xid: int
    oldest_running_xid: int
    latest_completed_xid: int
    subxid_overflow: bool
    xids: tuple[int, ...]
    subxids: tuple[int, ...]


_CHECKPOINT: Final = struct.Struct("<QIIB3xIQIIIIIIIxxxxqIII")
_I32: Final = struct.Struct("<i")
_U32: Final = struct.Struct("<I")
_QQ: Final = struct.Struct("<qq")


def _need(data: bytes, size: int, lsn: int, what: str) -> None:
    if len(data) < size:
        raise WalCorruption(lsn, f"{what} record at {LSN(lsn)} is too short ({len(data)} bytes)")


def _checkpoint(data: bytes, lsn: int, version: int, shutdown: bool) -> CheckPoint:
    _need(data, _CHECKPOINT.size, lsn, "checkpoint")
    (
        redo,
        tli,
        prev_tli,
        fpw,
        wal_level,
        next_xid,
        next_oid,
        next_multi,
        next_multi_off,
        oldest_xid,
        oldest_xid_db,
        oldest_multi,
        oldest_multi_db,
        time,
        oldest_cts,
        newest_cts,
        oldest_active,
    ) = _CHECKPOINT.unpack_from(data)
    return CheckPoint(
        redo=LSN(redo),
        timeline=tli,
        prev_timeline=prev_tli,
        full_page_writes=bool(fpw),
        next_xid=next_xid,
        next_oid=next_oid,
        next_multi=next_multi,
        next_multi_offset=next_multi_off,
        oldest_xid=oldest_xid,
        oldest_xid_db=oldest_xid_db,
        oldest_multi=oldest_multi,
        oldest_multi_db=oldest_multi_db,
        time=_unix_time(time),
        oldest_commit_ts_xid=oldest_cts,
        newest_commit_ts_xid=newest_cts,
        oldest_active_xid=oldest_active,
        wal_level=wal_level if version >= 18 else None,
        shutdown=shutdown,
    )


def _xact(data: bytes, info: int, xl_xid: int, lsn: int, version: int) -> XactRecord:
    """Parse xl_xact_commit/xl_xact_abort (ParseCommitRecord/ParseAbortRecord)."""
    op = info & 0x70
    kind = {
        XACT_COMMIT: "COMMIT",
        XACT_ABORT: "ABORT",
        XACT_COMMIT_PREPARED: "COMMIT_PREPARED",
        XACT_ABORT_PREPARED: "ABORT_PREPARED",
    }[op]
    commit = op in (XACT_COMMIT, XACT_COMMIT_PREPARED)
    try:
        (xact_time,) = struct.unpack_from("<q", data, 0)
        p = 8
        xinfo = 0
        if info & XLOG_XACT_HAS_INFO:
            (xinfo,) = _U32.unpack_from(data, p)
            p += 4
        db_id = ts_id = None
        if xinfo & XACT_XINFO_HAS_DBINFO:
            db_id, ts_id = struct.unpack_from("<II", data, p)
            p += 8
        subxacts: tuple[int, ...] = ()
        if xinfo & XACT_XINFO_HAS_SUBXACTS:
            (n,) = _I32.unpack_from(data, p)
            subxacts = struct.unpack_from(f"<{n}I", data, p + 4)
            p += 4 + 4 * n
        nrels = 0
        if xinfo & XACT_XINFO_HAS_RELFILELOCATORS:
            (nrels,) = _I32.unpack_from(data, p)
            p += 4 + 12 * nrels
        if xinfo & XACT_XINFO_HAS_DROPPED_STATS:
            (n,) = _I32.unpack_from(data, p)
            # 18 widened the stats object id to 64 bits (objid_lo, objid_hi).
            p += 4 + (16 if version >= 18 else 12) * n
        if commit and xinfo & XACT_XINFO_HAS_INVALS:
            (n,) = _I32.unpack_from(data, p)
            p += 4 + 16 * n
        twophase_xid = None
        gid = None
        if xinfo & XACT_XINFO_HAS_TWOPHASE:
            (twophase_xid,) = _U32.unpack_from(data, p)
            p += 4
            if xinfo & XACT_XINFO_HAS_GID:
                end = data.index(b"\0", p)
                gid = data[p:end].decode("utf-8", "replace")
                p = end + 1
        origin_lsn = origin_time = None
        if xinfo & XACT_XINFO_HAS_ORIGIN:
            o_lsn, o_time = _QQ.unpack_from(data, p)
            origin_lsn, origin_time = LSN(o_lsn & 0xFFFFFFFFFFFFFFFF), datetime_from_pg(o_time)
            p += 16
        if p > len(data) or min(subxacts, default=0) < 0:
            raise ValueError
    except (struct.error, ValueError):
        raise WalCorruption(lsn, f"malformed {kind} record at {LSN(lsn)}") from None
    return XactRecord(
        kind=kind,
        xid=twophase_xid
        if twophase_xid is not None and op in (XACT_COMMIT_PREPARED, XACT_ABORT_PREPARED)
        else xl_xid,
        xact_time=datetime_from_pg(xact_time),
        xact_time_raw=xact_time,
        xinfo=xinfo,
        db_id=db_id,
        ts_id=ts_id,
        subxacts=tuple(subxacts),
        nrels=nrels,
        twophase_xid=twophase_xid,
        gid=gid,
        origin_lsn=origin_lsn,
        origin_time=origin_time,
    )


# xl_xact_prepare, the fixed part of a PREPARE record (15 added the two
# dropped-stats counts).
_PREPARE: Final = struct.Struct("<IIIIqIiiiiiib1xHQq")
_PREPARE_14: Final = struct.Struct("<IIIIqIiiiib1xHQq")


def _prepare(data: bytes, lsn: int, version: int) -> XactRecord:
    layout = _PREPARE if version >= 15 else _PREPARE_14
    try:
        fields = layout.unpack_from(data)
        xid, database, prepared_at, nsubxacts = fields[2], fields[3], fields[4], fields[6]
        gidlen, origin_lsn, origin_time = fields[-3:]
        p = (layout.size + 7) & ~7
        gid = data[p : p + gidlen].split(b"\0", 1)[0].decode("utf-8", "replace")
        p += (gidlen + 7) & ~7
        subxacts = struct.unpack_from(f"<{nsubxacts}I", data, p) if nsubxacts > 0 else ()
    except struct.error:
        raise WalCorruption(lsn, f"malformed PREPARE record at {LSN(lsn)}") from None
    return XactRecord(
        kind="PREPARE",
        xid=xid,
        xact_time=datetime_from_pg(prepared_at),
        xact_time_raw=prepared_at,
        xinfo=0,
        db_id=database,
        ts_id=None,
        subxacts=tuple(subxacts),
        nrels=0,
        twophase_xid=xid,
        gid=gid,
        origin_lsn=LSN(origin_lsn) if origin_lsn else None,
        origin_time=datetime_from_pg(origin_time) if origin_lsn else None,
    )


def _running_xacts(data: bytes, lsn: int) -> RunningXacts:
    try:
        xcnt, subxcnt, overflow, next_xid, oldest, latest = struct.unpack_from("<iiB3xIII", data)
        ids = struct.unpack_from(f"<{xcnt + subxcnt}I", data, 24)
    except struct.error:
        raise WalCorruption(lsn, f"malformed RUNNING_XACTS record at {LSN(lsn)}") from None
    return RunningXacts(
        next_xid=next_xid,
        oldest_running_xid=oldest,
        latest_completed_xid=latest,
        subxid_overflow=bool(overflow),
        xids=tuple(ids[:xcnt]),
        subxids=tuple(ids[xcnt:]),
    )


Payload = (
    CheckPoint | RestorePoint | EndOfRecovery | OverwriteContrecord | XactRecord | RunningXacts
)


def decode_payload(
    rmid: int, info: int, xid: int, main_data: bytes, lsn: int, version: int = 18
) -> Payload | None:
    """The decoded main data of the record types replay tracking uses, else None.

    Raises :class:`~walstream.errors.WalCorruption` for a payload too short
    or inconsistent for its type (a CRC-valid record PostgreSQL would fail
    to replay).
    """
    op = info & 0xF0
    if rmid == RM_XLOG:
        if op in (0x00, 0x10):
            return _checkpoint(main_data, lsn, version, shutdown=op == 0x00)
        if op == 0x70:
            _need(main_data, 72, lsn, "restore point")
            (t,) = struct.unpack_from("<q", main_data)
            name = main_data[8:72].split(b"\0", 1)[0].decode("utf-8", "replace")
            return RestorePoint(datetime_from_pg(t), name)
        if op == 0x90:
            size = 20 if version >= 18 else 16
            _need(main_data, size, lsn, "end-of-recovery")
            t, tli, prev_tli = struct.unpack_from("<qII", main_data)
            wal_level = _I32.unpack_from(main_data, 16)[0] if version >= 18 else None
            return EndOfRecovery(datetime_from_pg(t), tli, prev_tli, wal_level)
        if op == 0xD0:
            _need(main_data, 16, lsn, "overwrite-contrecord")
            over, t = struct.unpack_from("<Qq", main_data)
            return OverwriteContrecord(LSN(over), datetime_from_pg(t))
        return None
    if rmid == RM_XACT:
        xop = info & 0x70
        if xop == XACT_PREPARE:
            return _prepare(main_data, lsn, version)
        if xop in (XACT_COMMIT, XACT_ABORT, XACT_COMMIT_PREPARED, XACT_ABORT_PREPARED):
            return _xact(main_data, info, xid, lsn, version)
        return None
    if rmid == RM_STANDBY and op == 0x10:
        return _running_xacts(main_data, lsn)
    return None
