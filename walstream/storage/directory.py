"""Writing a pg_receivewal-compatible WAL directory: every disk decision of the receiver.

The files are byte for byte what pg_receivewal 15+ writes, so either tool
can resume a directory the other wrote:

* segments are written as ``NAME[.gz|.lz4|.zst].partial`` and renamed only
  when their last byte is written; uncompressed ones are first filled with
  zeros to full size (so a ``.partial`` is always full size), compressed ones
  are not;
* compressed files (:mod:`~walstream.storage.compression`) get a sync flush
  only when syncing and a final block on every close;
* fsync rules: a new file and its directory after creation; at completion
  the file, the rename, the new name and the directory (``durable_rename``);
  on close without rename the file and the directory; ``--no-sync`` does
  none of it. Each ``fsync(2)`` is timed into ``fsync_latency`` when the
  caller gives one (:mod:`~walstream.storage.latency`, for monitoring).

Where pg_receivewal is fragile, this module is not: a ``.partial`` left short
by a crash during pre-padding is padded again instead of failing forever; a
reopened compressed ``.partial`` is rewritten from its start instead of
accumulating trailing garbage, into ``NAME.partial.tmp`` that replaces it only
once it durably holds as much WAL (a rewrite cut short is dropped, one left
by a crash is kept if it holds more, so the directory never holds less than
before); WAL of another system identifier is refused.

Threading contract: a WalDirectory is used by one thread at a time (the
receiver runs all of it in one dedicated disk thread); ``written`` and
``flushed`` may be read from any thread.

Errors: :class:`DiskError` (a file operation failed; names the file and
the cause), :class:`DirectoryMismatch` (WAL of another system).
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from walstream.errors import Error
from walstream.lsn import LSN
from walstream.storage.compression import (
    Compression,
    Compressor,
    decompress_file,
    make_compressor,
)
from walstream.storage.latency import LatencyHistogram
from walstream.wal.segment import (
    LONG_PAGE_HEADER_SIZE,
    LongPageHeader,
    check_seg_size,
    history_file_name,
    parse_segment_name,
    segment_name,
)

__all__ = [
    "DirectoryMismatch",
    "DiskError",
    "WalDirectory",
    "check_directory",
]

log = logging.getLogger("walstream.storage.directory")

_ZEROS: Final = bytes(1024 * 1024)  # pre-padding buffer (segments are multiples of 1 MiB)
_IOV_MAX: Final = 1024  # Linux's limit on buffers per pwritev
_PWRITEV: Final = hasattr(os, "pwritev")


class DiskError(Error):
    """A file operation failed; the message names the file and the cause."""


class DirectoryMismatch(Error):
    """The directory holds WAL that cannot belong to this stream."""


def _write_all(fd: int, data: bytes | memoryview, offset: int | None = None) -> None:
    """Write every byte: a filling disk can return a short count before it raises ENOSPC."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(28, os.strerror(28))  # ENOSPC: no progress
        view = view[n:]
        if offset is not None:
            offset += n


@dataclass
class _Segment:
    timeline: int
    segno: int
    fd: int
    path: Path  # the .partial being written
    final: Path  # its name once complete
    pos: int  # uncompressed bytes written
    compressor: Compressor | None
    # A compressed .partial being rewritten goes to a temporary file first;
    # the old one stays until the new one holds at least as much WAL.
    replaces: Path | None = None
    replaces_size: int = 0  # the old file's uncompressed bytes


def check_directory(path: Path) -> None:
    """Fail as pg_receivewal does on a -D that is missing, a file, or unreadable."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
    except OSError as e:
        raise DiskError(f'could not open directory "{path}": {e.strerror or e}') from e


class WalDirectory:
    """The directory a receiver writes WAL into, with pg_receivewal's layout and rules."""

    def __init__(
        self,
        path: Path | str,
        seg_size: int,
        *,
        compression: Compression | None = None,
        sync: bool = True,
        file_mode: int = 0o600,
        system_identifier: int | None = None,
        on_segment_complete: Callable[[Path, int, int], None] | None = None,
        synchronous: bool = False,
        fsync_latency: LatencyHistogram | None = None,
    ) -> None:
        self.path = Path(path)
        self.seg_size = check_seg_size(seg_size)
        self.compression = compression or Compression()
        self.sync_enabled = sync
        self.file_mode = file_mode
        self.system_identifier = system_identifier
        self.on_segment_complete = on_segment_complete
        # Every fsync(2) of a file or of the directory is timed into it (monitoring).
        self.fsync_latency = fsync_latency
        # How the zeros of a new segment get there (the bytes are the same):
        # fallocate where fsyncs are rare, written zeros when the caller
        # fsyncs after every small write (--synchronous), where writing into
        # allocated-but-unwritten extents would make each fsync commit metadata.
        self.zero_fill = sync and synchronous
        self.written = LSN(0)
        self.flushed = LSN(0)
        self._seg: _Segment | None = None
        check_directory(self.path)

    # -- the resume scan ------------------------------------------------------

    def find_start(self) -> tuple[LSN, int] | None:
        """Where to resume streaming, as pg_receivewal's FindStreamingStart decides.

        The highest segment number wins, then the highest timeline; a completed
        segment beats a partial one (resume at the next segment), a partial one
        resumes at its own start. Completed files of the wrong size are skipped
        with a warning. Also checks the system identifier of what it resumes from.
        """
        for leftover in self.path.glob("*.partial.tmp"):
            self._settle_rewrite(leftover.with_suffix(""))
        best: tuple[int, int, bool, Path, str] | None = None  # segno, tli, completed
        for entry in sorted(os.scandir(self.path), key=lambda e: e.name):
            name = parse_segment_name(entry.name, self.seg_size)
            if name is None or not entry.is_file():
                continue
            path = Path(entry.path)
            if not name.partial and not self._complete_size_ok(path, name.compression):
                continue
            key = (name.segno, name.timeline, not name.partial)
            if best is None or key > best[:3]:
                best = (*key, path, name.compression)
        if best is None:
            return None
        segno, tli, completed, path, method = best
        self._check_system(path, method)
        start = segno + 1 if completed else segno
        return LSN(start * self.seg_size), tli

    def _complete_size_ok(self, path: Path, method: str) -> bool:
        if method == "":
            size = path.stat().st_size
        elif method == ".gz":
            # gzip's ISIZE trailer: the uncompressed size modulo 2**32.
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() < 4:
                    size = -1
                else:
                    f.seek(-4, os.SEEK_END)
                    size = struct.unpack("<I", f.read(4))[0]
            if size == self.seg_size % 2**32:
                return True
        else:
            size = self._held(path, method)
            if size < 0:  # a damaged file: skip it like a wrong size
                return False
        if size != self.seg_size:
            log.warning('segment file "%s" has incorrect size %d, skipping', path.name, size)
            return False
        return True

    def _check_system(self, path: Path, method: str) -> None:
        if self.system_identifier is None:
            return
        try:
            head = LongPageHeader.parse(decompress_file(path, method, LONG_PAGE_HEADER_SIZE))
        except Exception:
            return  # an unreadable partial is rewritten anyway
        if head is None or not head.is_long:
            return
        sysid = head.system_identifier
        if sysid and sysid != self.system_identifier:
            raise DirectoryMismatch(
                f'WAL file "{path}" belongs to database system {sysid}, but the server is '
                f"system {self.system_identifier}: use another directory"
            )

    # -- writing --------------------------------------------------------------

    def write(self, lsn: int, data: bytes, timeline: int) -> None:
        """Write WAL received at ``lsn``; segments open, pad and complete as needed."""
        view = memoryview(data)
        while view:
            segno, offset = divmod(lsn, self.seg_size)
            seg = self._seg
            if seg is None or seg.segno != segno or seg.timeline != timeline:
                if seg is not None:
                    self.close()
                if offset != 0:
                    raise DiskError(
                        f"received WAL at {LSN(lsn)}, in the middle of a segment with no file open"
                    )
                seg = self._open(timeline, segno)
            elif offset != seg.pos:
                raise DiskError(
                    f'got WAL data offset {offset:08x}, expected {seg.pos:08x} in "{seg.path}"'
                )
            n = min(len(view), self.seg_size - offset)
            chunk = view[:n]
            self._write_chunk(seg, chunk)
            seg.pos += n
            lsn += n
            view = view[n:]
            self.written = LSN(lsn)
            if seg.pos == self.seg_size:
                self._complete(seg)

    def write_chunks(self, lsn: int, chunks: Sequence[bytes], timeline: int) -> None:
        """Write contiguous pieces of WAL starting at ``lsn``, as :meth:`write` would.

        Inside the open uncompressed segment this is one ``pwrite`` or
        ``pwritev`` of the pieces as received: no joined copy of the batch
        (measured: the copy and its allocation were a visible part of
        catch-up CPU time), and none of :meth:`write`'s segment bookkeeping,
        which a synchronous standby would pay before every commit's fsync.
        """
        total = sum(map(len, chunks))
        if 0 < len(chunks) <= _IOV_MAX and self.fits(lsn, total, timeline):
            seg = self._seg
            assert seg is not None
            try:
                if len(chunks) == 1:
                    n = os.pwrite(seg.fd, chunks[0], seg.pos)
                else:
                    n = os.pwritev(seg.fd, chunks, seg.pos) if _PWRITEV else 0
                if n < total:  # a short write (filling disk): finish piece by piece
                    _write_all(seg.fd, memoryview(b"".join(chunks))[n:], seg.pos + n)
            except OSError as e:
                raise self._disk_error("could not write to file", seg.path, e) from e
            seg.pos += total
            self.written = LSN(lsn + total)
            return
        if len(chunks) > _IOV_MAX:
            chunks = [b"".join(chunks)]
        for chunk in chunks:
            self.write(lsn, chunk, timeline)
            lsn += len(chunk)

    def fits(self, lsn: int, nbytes: int, timeline: int) -> bool:
        """Whether writing ``nbytes`` at ``lsn`` is a plain write into the open segment.

        True when no segment opens, completes or compresses on the way: such a
        write only copies into the page cache (no fsync, rename or padding), so
        the caller may do it without a thread hand-off.
        """
        seg = self._seg
        if seg is None or seg.compressor is not None or seg.timeline != timeline:
            return False
        segno, offset = divmod(lsn, self.seg_size)
        return segno == seg.segno and offset == seg.pos and offset + nbytes < self.seg_size

    def _write_chunk(self, seg: _Segment, chunk: memoryview) -> None:
        try:
            if seg.compressor is None:
                _write_all(seg.fd, chunk, seg.pos)
            else:
                _write_all(seg.fd, seg.compressor.compress(bytes(chunk)))
        except OSError as e:
            raise self._disk_error("could not write to file", seg.path, e) from e

    def _open(self, timeline: int, segno: int) -> _Segment:
        name = segment_name(timeline, segno, self.seg_size) + self.compression.suffix
        final = self.path / name
        path = self.path / (name + ".partial")
        compressor = make_compressor(self.compression)
        replaces, replaces_size = None, 0
        if compressor is not None:
            self._settle_rewrite(path)
            if path.exists():
                # Rewritten from the segment's start (a compressed stream cannot
                # be continued in place), into a new file: writing over this one
                # would leave trailing garbage, truncating it would lose its WAL
                # if the new stream ends sooner.
                replaces, path = path, path.with_name(path.name + ".tmp")
                replaces_size = max(0, self._held(replaces, self.compression.suffix))
        fd = -1
        try:
            if compressor is None:
                fd = self._open_plain(path)
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self.file_mode)
                os.fchmod(fd, self.file_mode)
                _write_all(fd, compressor.start())
            if self.sync_enabled:
                self._fsync(fd)
                self._fsync_dir()
        except OSError as e:
            if fd >= 0:
                os.close(fd)
            raise self._disk_error("could not create file", path, e) from e
        self._seg = _Segment(
            timeline, segno, fd, path, final, 0, compressor, replaces, replaces_size
        )
        return self._seg

    def _settle_rewrite(self, partial: Path) -> None:
        """A rewrite cut short by a crash left ``partial`` + ".tmp": keep whichever holds more.

        Both hold a prefix of the same segment's WAL; without this the longer
        rewrite would be ignored by the resume scan and then truncated.
        """
        tmp = partial.with_name(partial.name + ".tmp")
        name = parse_segment_name(partial.name, self.seg_size)
        if name is None or not name.partial or not tmp.is_file():
            return
        try:
            if self._held(tmp, name.compression) <= self._held(partial, name.compression):
                os.unlink(tmp)
            else:
                if self.sync_enabled:  # durable before it replaces a durable file
                    self._fsync_file(tmp)
                os.rename(tmp, partial)
                log.info('kept "%s" from an interrupted rewrite: it held more WAL', partial.name)
            if self.sync_enabled:
                self._fsync_dir()
        except OSError as e:
            raise self._disk_error("could not settle rewrite", tmp, e) from e

    def _replace_if_caught_up(self, seg: _Segment, *, ended: bool) -> None:
        """Put a rewritten .partial in the old one's place once it holds as much, durably.

        Called after a sync point (the new file is durable up to ``seg.pos``)
        or once the file is finished (``ended``): a rewrite that ends short
        of the old file is dropped and the old file kept.
        """
        if seg.replaces is None or (seg.pos < seg.replaces_size and not ended):
            return
        if seg.pos < seg.replaces_size:
            os.unlink(seg.path)
        else:
            os.rename(seg.path, seg.replaces)
            seg.path = seg.replaces
        seg.replaces = None
        if self.sync_enabled:
            self._fsync_dir()

    def _open_plain(self, path: Path) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, self.file_mode)
        try:
            os.fchmod(fd, self.file_mode)
            size = os.fstat(fd).st_size
            if size == self.seg_size:
                return fd  # reopened: rewritten in place from the start
            if size != 0:
                # pg_receivewal fails forever here ("should be 0 or WalSegSz"):
                # a crash during pre-padding left this. Streaming restarts at the
                # segment's start, so padding again loses nothing.
                log.warning(
                    'segment file "%s" has %d bytes, should be 0 or %d: padding it again',
                    path.name,
                    size,
                    self.seg_size,
                )
                os.ftruncate(fd, 0)  # allocated afresh below: nothing old remains
            if not self.zero_fill and hasattr(os, "posix_fallocate"):
                try:
                    # The same full-size file of zeros, without writing 16 MB of
                    # zeros: the fsync after it commits metadata only, so each
                    # segment costs one data write instead of two (measured).
                    os.posix_fallocate(fd, 0, self.seg_size)
                    return fd
                except OSError as e:
                    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
            # Real zeros, as pg_receivewal's page-at-a-time loop writes them, in
            # far fewer system calls: fdatasync after a small write into blocks
            # that already hold data commits no metadata (--synchronous).
            for offset in range(0, self.seg_size, len(_ZEROS)):
                _write_all(fd, _ZEROS, offset)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _complete(self, seg: _Segment) -> None:
        """Close, make durable and rename a segment whose last byte is written."""
        self._seg = None
        try:
            self._finish_file(seg)
            os.rename(seg.path, seg.final)
            if self.sync_enabled:
                self._fsync_file(seg.final)
                self._fsync_dir()
                self.flushed = LSN((seg.segno + 1) * self.seg_size)
            if seg.replaces is not None:  # the complete file holds all it had
                os.unlink(seg.replaces)
        except OSError as e:
            raise self._disk_error("could not complete segment", seg.path, e) from e
        if self.on_segment_complete is not None:
            self.on_segment_complete(seg.final, seg.timeline, seg.segno)

    def _finish_file(self, seg: _Segment) -> None:
        """End the compressed stream, fsync (unless --no-sync) and close; the fd is gone after."""
        try:
            if seg.compressor is not None:
                _write_all(seg.fd, seg.compressor.finish())
            if self.sync_enabled:
                self._fsync(seg.fd)
        finally:
            os.close(seg.fd)

    def sync(self) -> LSN:
        """Make everything written durable (a sync point for compressors); return flushed."""
        seg = self._seg
        if not self.sync_enabled:
            return self.flushed
        if seg is not None:
            try:
                if seg.compressor is not None:
                    _write_all(seg.fd, seg.compressor.flush())
                self._fsync(seg.fd)
                self._replace_if_caught_up(seg, ended=False)
            except OSError as e:
                raise self._disk_error("could not fsync file", seg.path, e) from e
        self.flushed = self.written
        return self.flushed

    def rewind(self, lsn: int) -> None:
        """Continue at ``lsn``, before what was written: the server's history forked there.

        Files already written stay as they are; only the positions come back.
        """
        if self._seg is not None:
            raise RuntimeError("rewind with a segment open")  # our bug: close() first
        self.written = LSN(min(self.written, lsn))
        self.flushed = LSN(min(self.flushed, lsn))

    def close(self) -> None:
        """Close the open segment without renaming it (it stays ``.partial``)."""
        seg, self._seg = self._seg, None
        if seg is None:
            return
        try:
            self._finish_file(seg)
            self._replace_if_caught_up(seg, ended=True)
            if self.sync_enabled:
                self._fsync_dir()
                self.flushed = self.written
        except OSError as e:
            raise self._disk_error("could not close file", seg.path, e) from e

    # -- history files --------------------------------------------------------

    def has_history(self, timeline: int) -> bool:
        name = history_file_name(timeline)
        return (self.path / name).exists() or (
            self.path / (name + self.compression.suffix)
        ).exists()

    def write_history(self, timeline: int, content: bytes) -> None:
        """Write ``%08X.history`` as pg_receivewal does: ``.tmp`` first, then a durable rename."""
        final = self.path / (history_file_name(timeline) + self.compression.suffix)
        tmp = final.with_name(final.name + ".tmp")
        compressor = make_compressor(self.compression)
        data = (
            content
            if compressor is None
            else compressor.start() + compressor.compress(content) + compressor.finish()
        )
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self.file_mode)
            try:
                os.fchmod(fd, self.file_mode)
                _write_all(fd, data)
                if self.sync_enabled:
                    self._fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            if self.sync_enabled:
                self._fsync_dir()
        except OSError as e:
            raise self._disk_error("could not write timeline history file", final, e) from e

    # -- helpers --------------------------------------------------------------

    @staticmethod
    def _held(path: Path, method: str) -> int:
        """Uncompressed bytes a compressed segment file holds; -1 if it cannot be read."""
        try:
            return len(decompress_file(path, method))
        except Exception as e:  # damaged or gone: it holds nothing to keep
            log.warning('could not decompress "%s": %s', path, e)
            return -1

    def _fsync(self, fd: int) -> None:
        """fsync(2), timed into :attr:`fsync_latency` when there is one."""
        histogram = self.fsync_latency
        if histogram is None:
            os.fsync(fd)
            return
        started = time.perf_counter()
        os.fsync(fd)
        histogram.observe(time.perf_counter() - started)

    def _fsync_file(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def _fsync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _disk_error(what: str, path: Path, e: OSError) -> DiskError:
        return DiskError(f'{what} "{path}": {e.strerror or e}')
