"""pg_waldump as an oracle: run it, parse its output, compare decoded records with it."""

from __future__ import annotations

import io
import os
import re
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from walstream.cli.waldump import main as waldump_main
from walstream.lsn import LSN
from walstream.wal.decoder import Record

SEG_SIZE = 1024 * 1024
FORKS = ("main", "fsm", "vm", "init")
_ENV_UTC = {**os.environ, "TZ": "UTC"}


@dataclass
class DumpRecord:
    rmgr: str
    rec_len: int
    tot_len: int
    xid: int
    lsn: LSN
    prev: LSN
    type_name: str
    desc: str
    line: str
    blocks: list[tuple[object, ...]]


RECORD_LINE = re.compile(
    r"rmgr: (\S+)\s+len \(rec/tot\):\s*(\d+)/\s*(\d+), tx:\s*(\d+), lsn: (\S+), prev (\S+), "
    r"desc: (UNKNOWN \([0-9a-f]+\)|\S+) ?(.*)"
)
_BLOCK = re.compile(
    r"\tblkref #(\d+): rel (\d+)/(\d+)/(\d+) fork (\w+) blk (\d+)"
    r"(?: \(FPW( for WAL verification)?\); hole: offset: (\d+), length: (\d+)"
    r"(?:, compression saved: (\d+), method: (\w+))?)?$"
)


def parse_dump(text: str) -> list[DumpRecord]:
    """pg_waldump -b output: a line per record, then a tab-indented line per block."""
    records: list[DumpRecord] = []
    for line in text.splitlines():
        if line.startswith("rmgr: "):
            m = RECORD_LINE.match(line)
            assert m, line
            records.append(
                DumpRecord(
                    rmgr=m.group(1),
                    rec_len=int(m.group(2)),
                    tot_len=int(m.group(3)),
                    xid=int(m.group(4)),
                    lsn=LSN.parse(m.group(5)),
                    prev=LSN.parse(m.group(6)),
                    type_name=m.group(7),
                    desc=m.group(8),
                    line=line,
                    blocks=[],
                )
            )
        elif line.startswith("\tblkref"):
            m = _BLOCK.match(line)
            assert m, line
            g = m.groups()
            records[-1].blocks.append(
                (
                    int(g[0]),
                    int(g[1]),
                    int(g[2]),
                    int(g[3]),
                    g[4],
                    int(g[5]),
                    g[7] is not None,  # image
                    g[6] is None and g[7] is not None,  # applied (not for verification)
                    int(g[7]) if g[7] else 0,  # hole offset
                    int(g[8]) if g[8] else 0,  # hole length
                    g[10],  # compression
                )
            )
    return records


def blocks_of(rec: Record) -> list[tuple[object, ...]]:
    return [
        (
            b.id,
            b.spc,
            b.db,
            b.rel,
            FORKS[b.fork],
            b.blk,
            b.has_image,
            b.has_image and b.apply_image,
            b.hole_offset,
            b.hole_length,
            b.compression,
        )
        for b in rec.blocks
    ]


ERROR_LINE = re.compile(
    r"(?:error in WAL record at|could not find a valid record after) (\S+?)(?:: (.*))?$", re.M
)


def error_lsn(message: str) -> LSN | None:
    """The position PostgreSQL's reader names in an error message, if it names one."""
    m = re.search(r", LSN ([0-9A-F]+/[0-9A-F]+)", message)
    if m:
        return LSN.parse(m.group(1))
    # 15 names pages by segment file and offset.
    m = re.search(r"in log segment [0-9A-F]{8}([0-9A-F]{8})([0-9A-F]{8}), offset (\d+)", message)
    if m:
        return LSN(
            int(m.group(1), 16) * 0x100000000 + int(m.group(2), 16) * SEG_SIZE + int(m.group(3))
        )
    found = re.findall(r"[0-9A-F]+/[0-9A-F]+", message)
    return LSN.parse(found[-1]) if found else None


@dataclass
class Dump:
    records: list[DumpRecord]
    error: str | None  # the message after "error in WAL record at X: "
    stdout: str
    stderr: str
    code: int = 0


def run_waldump(bindir: Path, *args: str) -> Dump:
    r = subprocess.run(
        [str(bindir / "pg_waldump"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=_ENV_UTC,
        check=False,
    )
    m = ERROR_LINE.search(r.stderr)
    error = (m.group(2) or "") if m else None
    return Dump(parse_dump(r.stdout), error, r.stdout, r.stderr, r.returncode)


def run_ours(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = waldump_main(list(args))
    return code, out.getvalue(), err.getvalue()


def compare(records: list[Record], dump: Dump) -> None:
    assert len(records) == len(dump.records)
    for ours, theirs in zip(records, dump.records, strict=True):
        assert (ours.lsn, ours.rmgr, ours.type_name, ours.rec_len, ours.tot_len) == (
            theirs.lsn,
            theirs.rmgr,
            theirs.type_name,
            theirs.rec_len,
            theirs.tot_len,
        ), theirs.line
        assert (ours.xid, ours.prev) == (theirs.xid, theirs.prev), theirs.line
        assert blocks_of(ours) == theirs.blocks, theirs.line
