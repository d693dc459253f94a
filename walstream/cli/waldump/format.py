"""``walstream waldump``'s output: pg_waldump's record lines and ``--stats`` tables, and JSON."""

from __future__ import annotations

import json
from typing import Final, TextIO

from walstream.errors import WalCorruption
from walstream.lsn import LSN
from walstream.wal.decoder import FORK_NAMES, Record, RecordStats
from walstream.wal.rmgr import (
    RMGR_NAMES,
    CheckPoint,
    EndOfRecovery,
    OverwriteContrecord,
    RestorePoint,
    RunningXacts,
    XactRecord,
    record_type_name,
    rmgr_name,
)

_XACT_END: Final = frozenset({0x00, 0x20, 0x30, 0x40})  # COMMIT, ABORT, *_PREPARED


def _lsn_text(lsn: int) -> str:
    """LSNs as pg_waldump prints them in record lines (low half zero-padded)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:08X}"


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def _timestamp_text(payload_time: object) -> str:
    from datetime import datetime

    if isinstance(payload_time, datetime):
        return payload_time.strftime("%Y-%m-%d %H:%M:%S.%f UTC")
    return "(invalid)"


_WAL_LEVELS: Final = {0: "minimal", 1: "replica", 2: "logical"}


def _describe(rec: Record) -> str:
    """The text after the record type: pg_waldump's wording for the types walstream decodes."""
    if rec.rmid == 0 and rec.info & 0xF0 == 0xE0 and rec.version >= 17 and rec.main_len >= 4:
        # CHECKPOINT_REDO (17+) carries the wal_level.
        redo_level = int.from_bytes(rec.main_data[:4], "little", signed=True)
        return f"wal_level {_WAL_LEVELS.get(redo_level, '?')}"
    try:
        payload = rec.payload()
    except WalCorruption:
        return ""
    if isinstance(payload, CheckPoint):
        level = (
            f"wal_level {_WAL_LEVELS.get(payload.wal_level, '?')}; "
            if payload.wal_level is not None
            else ""
        )
        return (
            f"redo {payload.redo}; tli {payload.timeline}; prev tli {payload.prev_timeline}; "
            f"fpw {'true' if payload.full_page_writes else 'false'}; {level}"
            f"xid {payload.next_xid >> 32}:{payload.next_xid & 0xFFFFFFFF}; "
            f"oid {payload.next_oid}; multi {payload.next_multi}; "
            f"offset {payload.next_multi_offset}; oldest xid {payload.oldest_xid} in DB "
            f"{payload.oldest_xid_db}; oldest multi {payload.oldest_multi} in DB "
            f"{payload.oldest_multi_db}; oldest/newest commit timestamp xid: "
            f"{payload.oldest_commit_ts_xid}/{payload.newest_commit_ts_xid}; oldest running xid "
            f"{payload.oldest_active_xid}; {'shutdown' if payload.shutdown else 'online'}"
        )
    if isinstance(payload, RestorePoint):
        return payload.name
    if isinstance(payload, EndOfRecovery):
        text = (
            f"tli {payload.timeline}; prev tli {payload.prev_timeline}; "
            f"time {_timestamp_text(payload.time)}"
        )
        if payload.wal_level is not None:
            text += f"; wal_level {_WAL_LEVELS.get(payload.wal_level, '?')}"
        return text
    if isinstance(payload, OverwriteContrecord):
        return f"lsn {payload.overwritten_lsn}; time {_timestamp_text(payload.time)}"
    if isinstance(payload, XactRecord):
        if payload.kind == "PREPARE":
            return f"gid {payload.gid}: {_timestamp_text(payload.xact_time)}"
        text = ""
        if payload.twophase_xid is not None:
            text = f"{payload.twophase_xid}: "
        text += _timestamp_text(payload.xact_time)
        if payload.subxacts:
            text += "; subxacts: " + " ".join(str(x) for x in payload.subxacts)
        return text
    if isinstance(payload, RunningXacts):
        text = (
            f"nextXid {payload.next_xid} latestCompletedXid {payload.latest_completed_xid} "
            f"oldestRunningXid {payload.oldest_running_xid}"
        )
        if payload.xids:
            text += f"; {len(payload.xids)} xacts: " + " ".join(str(x) for x in payload.xids)
        if payload.subxids:
            text += f"; {len(payload.subxids)} subxacts: " + " ".join(
                str(x) for x in payload.subxids
            )
        if payload.subxid_overflow:
            text += "; subxid overflowed"
        return text
    return ""


def _block_text(rec: Record, detailed: bool) -> str:
    parts = []
    for b in rec.blocks:
        fork = FORK_NAMES[b.fork] if b.fork < len(FORK_NAMES) else str(b.fork)
        if detailed:
            text = f"\tblkref #{b.id}: rel {b.spc}/{b.db}/{b.rel} fork {fork} blk {b.blk}"
            if b.has_image:
                verification = "" if b.apply_image else " for WAL verification"
                text += (
                    f" (FPW{verification}); hole: offset: {b.hole_offset}, length: {b.hole_length}"
                )
                if b.compression is not None:
                    saved = 8192 - b.hole_length - b.image_len
                    text += f", compression saved: {saved}, method: {b.compression}"
            parts.append("\n" + text)
        else:
            fork_part = f" fork {fork}" if b.fork else ""
            text = f", blkref #{b.id}: rel {b.spc}/{b.db}/{b.rel}{fork_part} blk {b.blk}"
            if b.has_image:
                text += " FPW" if b.apply_image else " FPW for WAL verification"
            parts.append(text)
    return "".join(parts)


def _record_line(rec: Record, detailed: bool) -> str:
    return (
        f"rmgr: {rmgr_name(rec.rmid):<11} len (rec/tot): {rec.rec_len:6}/{rec.tot_len:6}, "
        f"tx: {rec.xid:10}, lsn: {_lsn_text(rec.lsn)}, prev {_lsn_text(rec.prev)}, "
        f"desc: {record_type_name(rec.rmid, rec.info, rec.version)} {_describe(rec)}"
        f"{_block_text(rec, detailed)}"
    )


def _record_json(rec: Record) -> str:
    obj: dict[str, object] = {
        "lsn": _lsn_text(rec.lsn),
        "end_lsn": _lsn_text(rec.end_lsn),
        "prev": _lsn_text(rec.prev),
        "xid": rec.xid,
        "rmgr": rmgr_name(rec.rmid),
        "type": record_type_name(rec.rmid, rec.info, rec.version),
        "info": rec.info,
        "rec_len": rec.rec_len,
        "fpi_len": rec.fpi_len,
        "tot_len": rec.tot_len,
        "blocks": [
            {
                "id": b.id,
                "spc": b.spc,
                "db": b.db,
                "rel": b.rel,
                "fork": FORK_NAMES[b.fork] if b.fork < len(FORK_NAMES) else b.fork,
                "blk": b.blk,
                "image": b.has_image,
            }
            for b in rec.blocks
        ],
    }
    if rec.rmid == 1 and rec.info & 0x70 in _XACT_END:
        try:
            payload = rec.payload()
        except WalCorruption:
            payload = None
        if isinstance(payload, XactRecord) and payload.xact_time is not None:
            obj["xact_time"] = payload.xact_time.isoformat()
            if payload.kind.endswith("_PREPARED"):
                obj["twophase_xid"] = payload.twophase_xid
    return json.dumps(obj, separators=(",", ":"))


class _Stats:
    """XLogRecStoreStats and XLogDumpDisplayStats.

    The counters are the decoder's :class:`RecordStats` (per header
    ``info | rmid << 8``), which :meth:`WalDecoder.scan_stats` fills without
    building records; pg_waldump's per record type and per rmgr rows are sums
    computed from them when the table is printed.
    """

    def __init__(self) -> None:
        self.counts = RecordStats()
        self.start: int | None = None
        self.end: int | None = None

    def add(self, rec: Record) -> None:
        self.counts.add(rec)
        self.end = rec[1]

    @property
    def count(self) -> int:
        return self.counts.total

    @property
    def record(self) -> dict[int, list[int]]:
        """rmid << 4 | recid -> [n, rec_len, fpi_len], as pg_waldump keys its rows."""
        rows: dict[int, list[int]] = {}
        for rmid, info, n, tot_len, fpi_len in self.counts.items():
            # Transaction records keep a flag in the high bit of the opcode nibble.
            key = (rmid << 4) | ((info >> 4) & 0x07 if rmid == 1 else info >> 4)
            row = rows.setdefault(key, [0, 0, 0])
            row[0] += n
            row[1] += tot_len - fpi_len
            row[2] += fpi_len
        return rows

    @property
    def rmgr(self) -> dict[int, list[int]]:
        sums: dict[int, list[int]] = {}
        for key, (n, rec_len, fpi_len) in self.record.items():  # (display computes it once)
            row = sums.setdefault(key >> 4, [0, 0, 0])
            row[0] += n
            row[1] += rec_len
            row[2] += fpi_len
        return sums

    def display(self, out: TextIO, per_record: bool, version: int) -> None:
        if self.end is None or self.start is None:
            return
        per_type = self.record
        per_rmgr = self.rmgr
        total_count = sum(r[0] for r in per_rmgr.values())
        total_rec = sum(r[1] for r in per_rmgr.values())
        total_fpi = sum(r[2] for r in per_rmgr.values())
        total = total_rec + total_fpi
        out.write(f"WAL statistics between {LSN(self.start)} and {LSN(self.end)}:\n")
        out.write(
            f"{'Type':<27} {'N':>20} {'(%)':>8} {'Record size':>20} {'(%)':>8} "
            f"{'FPI size':>20} {'(%)':>8} {'Combined size':>20} {'(%)':>8}\n"
            f"{'----':<27} {'-':>20} {'---':>8} {'-----------':>20} {'---':>8} "
            f"{'--------':>20} {'---':>8} {'-------------':>20} {'---':>8}\n"
        )

        def pct(part: int, whole: int) -> float:
            return 100 * part / whole if whole else 0.0

        def row(name: str, n: int, rec_len: int, fpi_len: int) -> None:
            tot = rec_len + fpi_len
            out.write(
                f"{name:<27} {n:>20} ({pct(n, total_count):6.2f}) "
                f"{rec_len:>20} ({pct(rec_len, total_rec):6.2f}) "
                f"{fpi_len:>20} ({pct(fpi_len, total_fpi):6.2f}) "
                f"{tot:>20} ({pct(tot, total):6.2f})\n"
            )

        rmids = list(range(len(RMGR_NAMES))) + sorted(r for r in per_rmgr if r >= 128)
        for rmid in rmids:
            if not per_record:
                n, rec_len, fpi_len = per_rmgr.get(rmid, (0, 0, 0))
                row(rmgr_name(rmid), n, rec_len, fpi_len)
                continue
            for recid in range(16):
                stats = per_type.get(rmid << 4 | recid)
                if stats is None:
                    continue
                name = record_type_name(rmid, recid << 4, version)
                row(f"{rmgr_name(rmid)}/{name}", *stats)
        out.write(
            f"{'':<27} {'--------':>20} {'':>8} {'--------':>20} {'':>8} "
            f"{'--------':>20} {'':>8} {'--------':>20}\n"
        )
        rec_pct = f"[{pct(total_rec, total):.2f}%]"
        fpi_pct = f"[{pct(total_fpi, total):.2f}%]"
        out.write(
            f"{'Total':<27} {self.count:>20} {'':<9}{total_rec:>20} {rec_pct:<9}"
            f"{total_fpi:>20} {fpi_pct:<9}{total:>20} {'[100%]':<6}\n"
        )
