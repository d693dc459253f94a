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

import os
import sys
from typing import TextIO

from walstream.cli.args import usage_error, version_line
from walstream.cli.waldump.format import _record_json, _record_line, _Stats
from walstream.cli.waldump.options import (
    PROGNAME,
    _BadArgument,
    _Config,
    _configure,
    _Fatal,
    _normalize_argv,
    _parser,
)
from walstream.cli.waldump.parallel import _PartEnd, _scan_rest
from walstream.cli.waldump.read import _feeds
from walstream.lsn import LSN
from walstream.wal.decoder import Record, WalDecoder
from walstream.wal.rmgr import RMGR_NAMES

__all__ = ["main"]


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


def main(argv: list[str] | None = None) -> int:
    """Run ``walstream waldump`` with ``argv``; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-V", "--version"):
        print(version_line(PROGNAME, scan=True))
        return 0
    if not argv:
        sys.stderr.write(usage_error(PROGNAME, "no arguments specified"))
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
            print(version_line(PROGNAME, scan=True))
            return 0
        cfg = _configure(args)
        out = sys.stdout
        code = _run(cfg, out)
        out.flush()
        return code
    except _BadArgument as e:
        sys.stderr.write(usage_error(PROGNAME, str(e)))
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
