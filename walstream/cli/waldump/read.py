"""Feeding ``walstream waldump``'s decoder from the segment files, a bounded piece at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from walstream.cli.waldump.options import _READ_CHUNK, _Config, _Fatal
from walstream.storage.reader import WalReader
from walstream.wal.decoder import Record, WalDecoder
from walstream.wal.segment import (
    segment_name,
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
