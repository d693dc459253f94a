"""``walstream waldump --stats`` over long ranges: parallel parts, joined only where exact."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from walstream.cli.waldump.format import _Stats
from walstream.cli.waldump.options import _PART_MIN, _Config, _Fatal
from walstream.cli.waldump.read import _feeds, _find
from walstream.lsn import LSN
from walstream.storage.reader import WalReader
from walstream.wal import kernel
from walstream.wal.decoder import RecordStats, WalDecoder
from walstream.wal.segment import (
    segment_name,
)

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
    # A part must be worth a process: with the compiled kernel one process
    # scans 64 MB in about 40 ms, less than a fork and its join cost.
    part_min = _PART_MIN if kernel.FASTSCAN is None else 4 * _PART_MIN
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
