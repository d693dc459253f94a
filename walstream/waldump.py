"""``walstream waldump``: pg_waldump's inspection of WAL files, in Python.

Same options, same record lines and the same ``--stats`` tables as
pg_waldump (so scripts written for it keep working and the two can be
compared line by line), plus ``--json`` for machines: one object per record.

The WAL is read with :class:`walstream.wal.decoder.WalDecoder`, the decoder
the startup role replays with, so this tool doubles as a way to see exactly
what walstream accepts and where it stops. Record descriptions (the text
after the record type) are given for the record types walstream decodes
(checkpoints, transaction ends, restore points, ...); pg_waldump's per-rmgr
descriptions of heap and index records are not reproduced.

Plain ``--stats`` (no filter, no limit) counts records without building them
(:meth:`WalDecoder.scan_stats`), and over long ranges in parallel parts, one
process each, joined only where provably the same as reading on (see
``_parts``). ``WALSTREAM_WALDUMP_JOBS=N`` sets the number of parts; 1 keeps
it to one process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

from walstream.errors import WalCorruption
from walstream.lsn import LSN
from walstream.storage.reader import WalReader
from walstream.wal.decoder import FORK_NAMES, XLOG_BLCKSZ, Record, RecordStats, WalDecoder
from walstream.wal.rmgr import (
    RMGR_NAMES,
    CheckPoint,
    EndOfRecovery,
    OverwriteContrecord,
    RestorePoint,
    RunningXacts,
    XactRecord,
    record_type_name,
    rmgr_id,
    rmgr_name,
)
from walstream.wal.segment import (
    LongPageHeader,
    check_seg_size,
    is_segment_file_name,
    parse_segment_name,
    segment_name,
)

__all__ = ["main"]

PROGNAME: Final = "walstream waldump"
_READ_CHUNK: Final = 16 * 1024 * 1024
_PART_MIN: Final = 64 * 1024 * 1024  # WAL per process when --stats scans in parallel
_XACT_END: Final = frozenset({0x00, 0x20, 0x30, 0x40})  # COMMIT, ABORT, *_PREPARED


class _Fatal(Exception):
    """pg_waldump's pg_fatal: print "error: ..." and exit 1."""


class _BadArgument(Exception):
    """A usage error: print it and the --help hint, exit 1."""


def _lsn_text(lsn: int) -> str:
    """LSNs as pg_waldump prints them in record lines (low half zero-padded)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:08X}"


def _parse_lsn(text: str) -> LSN:
    try:
        return LSN.parse(text)
    except ValueError:
        raise _BadArgument(f'invalid WAL location: "{text}"') from None


def _parse_timeline(text: str) -> int:
    t = text.strip()
    try:
        if t.lower().startswith("0x"):
            value = int(t, 16)
        elif len(t) > 1 and t.startswith("0"):
            value = int(t, 8)
        else:
            value = int(t, 10)
    except ValueError:
        raise _BadArgument(f'invalid value "{text}" for option -t/--timeline') from None
    if not 1 <= value <= 0xFFFFFFFF:
        raise _BadArgument("-t/--timeline must be in range 1..4294967295")
    return value


def _parse_file_name(name: str, seg_size: int) -> tuple[int, int]:
    parsed = parse_segment_name(name, seg_size)
    if parsed is None or parsed.compression or parsed.partial:
        raise _Fatal(f'could not parse WAL file name "{name}"')
    return parsed.timeline, parsed.segno


# ---------------------------------------------------------------------------
# Finding the WAL
# ---------------------------------------------------------------------------


def _segment_size_of(path: Path) -> int:
    head = WalReader(path.parent).read(path, 0, XLOG_BLCKSZ)
    header = LongPageHeader.parse(head)
    if header is None or len(head) != XLOG_BLCKSZ:
        raise _Fatal(f'could not read file "{path.name}": read {len(head)} of {XLOG_BLCKSZ}')
    try:
        return check_seg_size(header.seg_size)
    except ValueError:
        raise _Fatal(
            f'invalid WAL segment size in WAL file "{path.name}" ({header.seg_size} bytes)\n'
            f"{PROGNAME}: detail: The WAL segment size must be a power of two between 1 MB "
            "and 1 GB."
        ) from None


def _search_directory(directory: Path, fname: str | None) -> int | None:
    """The segment size found in ``directory`` (from ``fname`` or any WAL file), or None."""
    if fname is not None:
        path = directory / fname
        return _segment_size_of(path) if path.is_file() else None
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return None
    for name in names:
        if is_segment_file_name(name, plain=True):
            return _segment_size_of(directory / name)
    return None


def _identify_target_directory(waldir: Path | None, fname: str | None) -> tuple[Path, int]:
    """Where the WAL is and its segment size, searched as pg_waldump searches."""
    if waldir is not None:
        candidates = [waldir, waldir / "pg_wal"]
    else:
        candidates = [Path("."), Path("pg_wal")]
        pgdata = os.environ.get("PGDATA")
        if pgdata:
            candidates.append(Path(pgdata) / "pg_wal")
    for directory in candidates:
        seg_size = _search_directory(directory, fname)
        if seg_size is not None:
            return directory, seg_size
    if fname:
        raise _Fatal(f'could not locate WAL file "{fname}"')
    raise _Fatal("could not find any WAL file")


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


@dataclass
class _Config:
    waldir: Path
    seg_size: int
    timeline: int
    start: LSN
    end: LSN | None
    rmgrs: set[int] | None = None
    xid: int | None = None
    relation: tuple[int, int, int] | None = None
    block: int | None = None
    fork: int | None = None
    fullpage: bool = False
    limit: int = -1
    quiet: bool = False
    bkp_details: bool = False
    stats: str | None = None  # None, "rmgr" or "record"
    json: bool = False
    partial: bool = True
    extra: dict[str, object] = field(default_factory=dict)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="walstream waldump",
        add_help=False,
        description="walstream waldump decodes and displays PostgreSQL write-ahead logs for "
        "debugging, like pg_waldump (and with --json, for machines).",
        usage="%(prog)s [OPTION]... [STARTSEG [ENDSEG]]",
    )
    p.add_argument("startseg", nargs="?", metavar="STARTSEG")
    p.add_argument("endseg", nargs="?", metavar="ENDSEG")
    o = p.add_argument_group("Options")
    o.add_argument(
        "-b",
        "--bkp-details",
        action="store_true",
        help="output detailed information about backup blocks",
    )
    o.add_argument("-B", "--block", metavar="N", help="with --relation, only show records that "
                   "modify block N")  # fmt: skip
    o.add_argument("-e", "--end", metavar="RECPTR", help="stop reading at WAL location RECPTR")
    o.add_argument("-F", "--fork", metavar="FORK", help="only show records that modify blocks "
                   "in fork FORK; valid names are main, fsm, vm, init")  # fmt: skip
    o.add_argument("-n", "--limit", metavar="N", help="number of records to display")
    o.add_argument(
        "-p",
        "--path",
        metavar="PATH",
        help="directory in which to find WAL segment files or a directory with a pg_wal "
        "subdirectory containing such files (default: current directory, ./pg_wal, "
        "$PGDATA/pg_wal)",
    )
    o.add_argument("-q", "--quiet", action="store_true", help="do not print any output, except "
                   "for errors")  # fmt: skip
    o.add_argument("-r", "--rmgr", metavar="RMGR", action="append", help="only show records "
                   "generated by resource manager RMGR; use --rmgr=list to list valid resource "
                   "manager names")  # fmt: skip
    o.add_argument("-R", "--relation", metavar="T/D/R", help="only show records that modify "
                   "blocks in relation T/D/R")  # fmt: skip
    o.add_argument("-s", "--start", metavar="RECPTR", help="start reading at WAL location RECPTR")
    o.add_argument("-t", "--timeline", metavar="TLI", help="timeline from which to read WAL "
                   "records (default: 1 or the value used in STARTSEG)")  # fmt: skip
    o.add_argument("-V", "--version", action="store_true", help="output version information, "
                   "then exit")  # fmt: skip
    o.add_argument("-w", "--fullpage", action="store_true", help="only show records with a full "
                   "page write")  # fmt: skip
    o.add_argument("-x", "--xid", metavar="XID", help="only show records with transaction ID XID")
    o.add_argument(
        "-z",
        dest="stats",
        action="store_const",
        const="rmgr",
        help="show statistics instead of records; --stats=record shows per-record statistics",
    )
    o.add_argument("--stats-kind", dest="stats", help=argparse.SUPPRESS)
    o.add_argument("--json", action="store_true", help="print one JSON object per record")
    o.add_argument("-?", "--help", action="help", help="show this help, then exit")
    return p


def _normalize_argv(argv: list[str]) -> list[str]:
    """--stats takes its value only in the --stats=VALUE form, as with getopt_long."""
    out = []
    for arg in argv:
        if arg == "--stats":
            out.append("-z")
        elif arg.startswith("--stats="):
            out += ["--stats-kind", arg.split("=", 1)[1]]
        else:
            out.append(arg)
    return out


def _configure(args: argparse.Namespace) -> _Config:
    if args.stats not in (None, "rmgr", "record"):
        raise _BadArgument(f"unrecognized value for option --stats: {args.stats}")
    rmgrs = None
    if args.rmgr:
        rmgrs = set()
        for name in args.rmgr:
            rmid = rmgr_id(name)
            if rmid is None:
                kind = (
                    "custom resource manager"
                    if name.lower().startswith("custom")
                    else ("resource manager")
                )
                raise _BadArgument(f'{kind} "{name}" does not exist')
            rmgrs.add(rmid)
    xid = None
    if args.xid is not None:
        try:
            xid = int(args.xid)
        except ValueError:
            raise _BadArgument(f'invalid transaction ID specification: "{args.xid}"') from None
    relation = None
    if args.relation is not None:
        m = re.fullmatch(r"(\d+)/(\d+)/(\d+)", args.relation)
        if m is None or m.group(1) == "0" or m.group(3) == "0":
            raise _BadArgument(
                f'invalid relation specification: "{args.relation}"\n{PROGNAME}: detail: '
                'Expecting "tablespace OID/database OID/relation filenode".'
            )
        relation = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    block = None
    if args.block is not None:
        if not args.block.isdigit() or int(args.block) >= 0xFFFFFFFF:
            raise _BadArgument(f'invalid block number: "{args.block}"')
        block = int(args.block)
        if relation is None:
            raise _BadArgument("option -B/--block requires option -R/--relation to be specified")
    fork = None
    if args.fork is not None:
        if args.fork not in FORK_NAMES:
            raise _BadArgument(f'invalid fork name: "{args.fork}"')
        fork = FORK_NAMES.index(args.fork)
    limit = -1
    if args.limit is not None:
        try:
            limit = int(args.limit)
        except ValueError:
            raise _BadArgument(f'invalid value "{args.limit}" for option -n/--limit') from None
    start = _parse_lsn(args.start) if args.start else None
    end = _parse_lsn(args.end) if args.end else None
    timeline = _parse_timeline(args.timeline) if args.timeline else 1

    waldir = Path(args.path) if args.path else None
    if waldir is not None and not waldir.is_dir():
        raise _BadArgument(f'could not open directory "{waldir}": No such file or directory')

    if args.startseg is not None:
        startpath = Path(args.startseg)
        fname = startpath.name
        if waldir is None and str(startpath.parent) != ".":
            waldir = startpath.parent
        directory, seg_size = _identify_target_directory(waldir, fname)
        if not (directory / fname).is_file():
            raise _Fatal(f'could not open file "{fname}"')
        if not is_segment_file_name(fname, plain=True):
            raise _Fatal(f'could not parse WAL file name "{fname}"')
        timeline, segno = _parse_file_name(fname, seg_size)
        if start is None:
            start = LSN(segno * seg_size)
        elif start // seg_size != segno:
            raise _BadArgument(f'start WAL location {start} is not inside file "{fname}"')
        last = segno
        if args.endseg is not None:
            endname = Path(args.endseg).name
            if not (directory / endname).is_file():
                raise _Fatal(f'could not open file "{endname}"')
            timeline, endsegno = _parse_file_name(endname, seg_size)
            if endsegno < segno:
                raise _Fatal(f"ENDSEG {args.endseg} is before STARTSEG {args.startseg}")
            last = endsegno
        if end is None:
            end = LSN((last + 1) * seg_size)
        elif end // seg_size != last and end != (last + 1) * seg_size:
            raise _BadArgument(
                f'end WAL location {end} is not inside file "{args.endseg or args.startseg}"'
            )
    else:
        directory, seg_size = _identify_target_directory(waldir, None)
    if start is None:
        raise _BadArgument("no start WAL location given")
    return _Config(
        waldir=directory,
        seg_size=seg_size,
        timeline=timeline,
        start=start,
        end=end,
        rmgrs=rmgrs,
        xid=xid,
        relation=relation,
        block=block,
        fork=fork,
        fullpage=args.fullpage,
        limit=limit,
        quiet=args.quiet,
        bkp_details=args.bkp_details,
        stats=args.stats,
        json=args.json,
    )


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def _feeds(cfg: _Config, decoder: WalDecoder) -> Iterator[None]:
    """Feed segment files to the decoder as it needs them, pausing after each feed.

    The caller drains the decoder (``records()`` or ``scan_stats()``) at each
    pause. Stops quietly at ``cfg.end`` (records not wholly before it are not
    shown, as with pg_waldump), and raises _Fatal for a missing file.
    """
    pos = cfg.start - cfg.start % 8192
    end = cfg.end
    reader = WalReader(cfg.waldir)
    while decoder.outcome is None:
        fed = decoder.fed_end
        if fed is not None:
            pos = max(fed, decoder.position - decoder.position % 8192)
        if end is not None and pos >= end:
            return
        segno = pos // cfg.seg_size
        path = _find(cfg, segno)
        offset = pos % cfg.seg_size
        want = cfg.seg_size - offset
        if end is not None:
            want = min(want, end - pos)
        while want > 0:
            chunk = reader.read(path, offset, min(want, _READ_CHUNK))
            if not chunk:
                name = segment_name(cfg.timeline, segno, cfg.seg_size)
                raise _Fatal(
                    f'could not read from file "{name}", offset {offset}: read 0 of '
                    f"{min(want, _READ_CHUNK)}"
                )
            decoder.feed(pos, chunk)
            pos += len(chunk)
            offset += len(chunk)
            want -= len(chunk)
            yield
            if decoder.outcome is not None:
                return


def _find(cfg: _Config, segno: int) -> Path:
    """The file of a segment, as pg_waldump looks for it: plain, then (ours) ``.partial``."""
    found = WalReader(cfg.waldir).find(
        cfg.timeline, segno, cfg.seg_size, suffixes=("",), partial=cfg.partial
    )
    if found is None:
        name = segment_name(cfg.timeline, segno, cfg.seg_size)
        raise _Fatal(f'could not find file "{name}": No such file or directory')
    return found.path


def _read_records(cfg: _Config, decoder: WalDecoder) -> Iterator[Record]:
    """The decoder's records, fed from the segment files (see _feeds)."""
    for _ in _feeds(cfg, decoder):
        yield from decoder.records()


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


def _matches(cfg: _Config, rec: Record) -> bool:
    if cfg.rmgrs is not None and rec.rmid not in cfg.rmgrs:
        return False
    if cfg.xid is not None and rec.xid != cfg.xid:
        return False
    if cfg.relation is not None or cfg.block is not None or cfg.fork is not None:
        for b in rec.blocks:
            if (
                (cfg.fork is None or cfg.fork == b.fork)
                and (cfg.relation is None or cfg.relation == (b.spc, b.db, b.rel))
                and (cfg.block is None or cfg.block == b.blk)
            ):
                break
        else:
            return False
    return not (cfg.fullpage and not any(b.has_image for b in rec.blocks))


def _run(cfg: _Config, out: TextIO) -> int:
    """Decode from cfg.start, print records or statistics; raise _Fatal like pg_fatal."""
    decoder = WalDecoder(cfg.start - cfg.start % 8192, cfg.seg_size)
    stats = _Stats() if cfg.stats and not cfg.quiet else None
    shown = 0
    first: int | None = None
    write = out.write
    filtered = (
        cfg.rmgrs is not None
        or cfg.xid is not None
        or cfg.relation is not None
        or cfg.block is not None
        or cfg.fork is not None
        or cfg.fullpage
    )
    # Plain statistics need no Record objects: after the first record the
    # decoder's scan_stats counts the rest (same verification, several times
    # faster).
    scan = stats is not None and not filtered and cfg.limit <= 0
    feeds = _feeds(cfg, decoder)
    for rec in (r for _ in feeds for r in decoder.records()):
        if first is None:
            if rec.lsn < cfg.start:
                continue  # XLogFindNextRecord: the first record at or after the start
            first = rec.lsn
            if first != cfg.start and cfg.start % cfg.seg_size:
                n = first - cfg.start
                print(
                    f"{PROGNAME}: first record is after {cfg.start}, at {LSN(first)}, "
                    f"skipping over {n} byte{'s' if n != 1 else ''}",
                    file=sys.stderr,
                )
            if stats is not None:
                stats.start = first
        if filtered and not _matches(cfg, rec):
            continue
        if not cfg.quiet:
            if stats is not None:
                stats.add(rec)
                if scan:
                    break
            elif cfg.json:
                write(_record_json(rec) + "\n")
            else:
                write(_record_line(rec, cfg.bkp_details) + "\n")
        shown += 1
        if 0 < cfg.limit <= shown:
            break
    else:
        return _finish(cfg, decoder, stats, first, out)
    if scan and stats is not None:
        end = _scan_rest(cfg, decoder, feeds, stats)
        stats.end = end.position
        return _finish(cfg, decoder, stats, first, out, end)
    if stats is not None:
        stats.display(out, cfg.stats == "record", decoder.version)
    return 0


def _finish(
    cfg: _Config,
    decoder: WalDecoder,
    stats: _Stats | None,
    first: int | None,
    out: TextIO,
    end: _PartEnd | None = None,
) -> int:
    """Decoding stopped: print the statistics, and the reason if it was an error."""
    if end is None:
        end = _PartEnd.of(decoder)
    if end.fatal is not None:
        raise _Fatal(end.fatal)
    outcome = end.outcome
    if first is None:
        reason = f": {outcome[1]}" if outcome is not None else ""
        raise _Fatal(f"could not find a valid record after {cfg.start}{reason}")
    if stats is not None:
        stats.display(out, cfg.stats == "record", decoder.version)
    if outcome is not None:
        raise _Fatal(f"error in WAL record at {LSN(end.last_lsn or 0)}: {outcome[1]}")
    return 0


# ---------------------------------------------------------------------------
# Statistics of long WAL ranges in parallel
# ---------------------------------------------------------------------------


@dataclass
class _PartEnd:
    """Where the scan of a part of the WAL ended, and what the next part must agree with."""

    position: int
    last_lsn: int | None
    timeline: int  # of the last page header validated
    magic: int | None
    mid_record: bool
    outcome: tuple[int, str] | None  # (lsn, reason) once decoding stopped
    fatal: str | None = None  # a _Fatal raised while feeding (a missing file)

    @classmethod
    def of(cls, decoder: WalDecoder, fatal: str | None = None) -> _PartEnd:
        outcome = decoder.outcome
        return cls(
            position=decoder.position,
            last_lsn=decoder.last_lsn,
            timeline=decoder.latest_timeline,
            magic=decoder.magic,
            mid_record=decoder.mid_record,
            outcome=None if outcome is None else (outcome.lsn, outcome.reason),
            fatal=fatal,
        )


@dataclass
class _Part:
    """A child's scan of the WAL from a segment boundary (random access)."""

    acc: list[int]
    fpi: list[int]
    first: tuple[int, int, int] | None  # first record's (lsn, xl_prev, page timeline)
    start_info: int  # xlp_info of the part's first page
    end: _PartEnd


def _parts(cfg: _Config, start: int) -> list[int]:
    """Segment boundaries that split a --stats scan from ``start`` among the CPUs (or none).

    Every part is scanned by its own process; each decodes its records from
    its segment start on as pg_waldump would from there, and the parts are
    joined only where the first record of a part is exactly the record the
    part before ended at (same position, xl_prev pointing at its last
    record, same page magic, no timeline going back). Anything else, and any
    part failing to report, falls back to the serial scan.
    """
    import threading

    fork = getattr(os, "fork", None)
    if fork is None or os.environ.get("WALSTREAM_WALDUMP_JOBS") == "1":
        return []
    if threading.active_count() > 1:
        return []  # (forking a threaded process is not safe)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    jobs = min(2 * cpus, 8)  # (more parts than CPUs: the parts differ in work)
    part_min = _PART_MIN  # a part must be worth a process
    if os.environ.get("WALSTREAM_WALDUMP_JOBS", "").isdigit():
        jobs = int(os.environ["WALSTREAM_WALDUMP_JOBS"])
        part_min = 0
    seg = cfg.seg_size
    first = start // seg
    if cfg.end is not None:
        last = (cfg.end - 1) // seg
    else:  # up to the last file of an unbroken run (a stat per segment)
        last = first
        while True:
            name = segment_name(cfg.timeline, last + 1, seg)
            if not ((cfg.waldir / name).is_file() or (cfg.waldir / (name + ".partial")).is_file()):
                break
            last += 1
    segments = last - first + 1
    jobs = min(jobs, segments * seg // part_min) if part_min else jobs
    if jobs < 2 or segments < 2 * jobs:
        return []
    return [(first + segments * k // jobs) * seg for k in range(1, jobs)]


def _scan_part(cfg: _Config, start: int, stop: int | None) -> _Part:
    """Scan [start, stop) from the segment boundary ``start`` (in a child process)."""
    decoder = WalDecoder(start, cfg.seg_size)
    feeds = _feeds(_replace_start(cfg, start), decoder)
    stats = RecordStats()
    first: tuple[int, int, int] | None = None
    fatal = None
    try:
        for _ in feeds:
            found = False
            for rec in decoder.records():
                found = True
                if stop is None or rec[0] < stop:  # (else a record spans the whole part)
                    stats.add(rec)
                    page = rec[0] - rec[0] % 8192
                    first = (rec[0], rec[2], _page_header_fields(cfg, page)[1])
                break
            if found or decoder.outcome is not None:
                break
        if first is not None:
            _scan_to(decoder, stats, stop, feeds)
    except _Fatal as e:
        fatal = str(e)
    info = _page_header_fields(cfg, start)[0] if first is not None else 0
    return _Part(stats.acc, stats.fpi, first, info, _PartEnd.of(decoder, fatal))


def _replace_start(cfg: _Config, start: int) -> _Config:
    from dataclasses import replace

    return replace(cfg, start=LSN(start))


def _page_header_fields(cfg: _Config, page: int) -> tuple[int, int]:
    """(xlp_info, xlp_tli) of the page at ``page`` (its file was just read: it exists)."""
    path = _find(cfg, page // cfg.seg_size)
    head = WalReader(cfg.waldir).read(path, page % cfg.seg_size, 8)
    return int.from_bytes(head[2:4], "little"), int.from_bytes(head[4:8], "little")


def _fork_part(cfg: _Config, start: int, stop: int | None) -> tuple[int, int]:
    """Start a child scanning a part; return (pid, read end of the pipe it answers on)."""
    import pickle

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child (coverage does not follow forks)
        code = 0
        try:
            os.close(r)
            data = pickle.dumps(_scan_part(cfg, start, stop))
            with os.fdopen(w, "wb") as f:
                f.write(data)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _collect(pid: int, r: int) -> _Part | None:
    import pickle

    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        return None
    part = pickle.loads(data)
    return part if isinstance(part, _Part) else None


def _joins(end: _PartEnd, stop: int, part: _Part | None) -> bool:
    """Whether ``part`` continues exactly where the serial scan, ended at ``end``, would go on."""
    if part is None or part.first is None or end.last_lsn is None:
        return False
    lsn, xl_prev, page_tli = part.first
    where = end.position
    if end.position == stop:
        # The part before ended exactly at the segment start (an XLOG_SWITCH):
        # the serial reader validates its page header (as the part did, except
        # that a continuation flag is an error there, not a record to skip).
        where = -1 if part.start_info & 0x0001 else stop + 40  # XLP_FIRST_IS_CONTRECORD
    return (
        end.outcome is None
        and end.fatal is None
        and not end.mid_record
        and end.position >= stop
        and lsn == where
        and xl_prev == end.last_lsn
        and part.end.magic == end.magic
        and page_tli >= end.timeline
    )


def _scan_to(
    decoder: WalDecoder, stats: RecordStats, stop: int | None, feeds: Iterator[None]
) -> None:
    """Count records into ``stats`` up to ``stop`` (or the end), feeding files as needed.

    A record that starts before ``stop`` and crosses it is still read whole.
    """
    decoder.scan_stats(stats, stop)
    for _ in feeds:
        if stop is not None and decoder.position >= stop and not decoder.mid_record:
            break
        decoder.scan_stats(stats, stop)


def _scan_rest(cfg: _Config, decoder: WalDecoder, feeds: Iterator[None], stats: _Stats) -> _PartEnd:
    """Count the remaining records into ``stats``: in parallel parts when worth it."""
    counts = stats.counts
    bounds = _parts(cfg, decoder.position)
    stops: list[int | None] = [*bounds[1:], None] if bounds else []
    children = [_fork_part(cfg, a, b) for a, b in zip(bounds, stops, strict=True)]
    stop = bounds[0] if bounds else None
    try:
        _scan_to(decoder, counts, stop, feeds)
    except _Fatal as e:
        for pid, r in children:
            _collect(pid, r)
        return _PartEnd.of(decoder, str(e))
    end = _PartEnd.of(decoder)
    parts = [_collect(pid, r) for pid, r in children]
    if not parts:
        return end
    # Join the parts while each continues the one before; the first that
    # does not (or the end of the WAL) ends the joined scan.
    joined: list[_Part] = []
    serial_end = end
    for stop_k, part in zip(bounds, parts, strict=True):
        if serial_end.outcome is not None or serial_end.fatal is not None:
            break  # decoding ended before this part: nothing after counts
        if not _joins(serial_end, stop_k, part):
            # Not provably the same as reading on: read on, serially.
            assert stop is not None
            try:
                decoder.scan_stats(counts)
                for _ in feeds:
                    decoder.scan_stats(counts)
            except _Fatal as e:
                return _PartEnd.of(decoder, str(e))
            return _PartEnd.of(decoder)
        assert part is not None
        joined.append(part)
        serial_end = part.end
    for part in joined:
        counts.acc = [a + b for a, b in zip(counts.acc, part.acc, strict=True)]
        counts.fpi = [a + b for a, b in zip(counts.fpi, part.fpi, strict=True)]
    return serial_end


def main(argv: list[str] | None = None) -> int:
    """Run ``walstream waldump`` with ``argv``; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-V", "--version"):
        from walstream import __version__

        print(f"walstream waldump (walstream) {__version__}")
        return 0
    if not argv:
        print(f"{PROGNAME}: error: no arguments specified", file=sys.stderr)
        print(f'{PROGNAME}: hint: Try "walstream waldump --help" for more information.',
              file=sys.stderr)  # fmt: skip
        return 1
    parser = _parser()
    try:
        try:
            args = parser.parse_args(_normalize_argv(argv))
        except SystemExit as e:  # --help, or a usage error argparse has printed
            return e.code if isinstance(e.code, int) else 1
        if args.rmgr and any(r.lower() == "list" for r in args.rmgr):
            print("\n".join(RMGR_NAMES))
            return 0
        if args.version:
            from walstream import __version__

            print(f"walstream waldump (walstream) {__version__}")
            return 0
        cfg = _configure(args)
        out = sys.stdout
        code = _run(cfg, out)
        out.flush()
        return code
    except _BadArgument as e:
        print(f"{PROGNAME}: error: {e}", file=sys.stderr)
        print(f'{PROGNAME}: hint: Try "walstream waldump --help" for more information.',
              file=sys.stderr)  # fmt: skip
        return 1
    except _Fatal as e:
        sys.stdout.flush()
        print(f"{PROGNAME}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `walstream waldump ... | head`: stop quietly, like a C program killed by SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
