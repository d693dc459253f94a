"""``walstream waldump``'s options, and where the WAL they name is, as pg_waldump finds it."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from walstream.cli.args import PgArgumentParser
from walstream.lsn import LSN
from walstream.storage.reader import WalReader
from walstream.wal.decoder import FORK_NAMES, XLOG_BLCKSZ
from walstream.wal.rmgr import (
    rmgr_id,
)
from walstream.wal.segment import (
    LongPageHeader,
    check_seg_size,
    is_segment_file_name,
    parse_segment_name,
)

PROGNAME: Final = "walstream waldump"
_READ_CHUNK: Final = 16 * 1024 * 1024
_PART_MIN: Final = 64 * 1024 * 1024  # WAL per process when --stats scans in parallel


class _Fatal(Exception):
    """pg_waldump's pg_fatal: print "error: ..." and exit 1."""


class _BadArgument(Exception):
    """A usage error: print it and the --help hint, exit 1."""


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
    p = PgArgumentParser(
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
