"""A full disk: a clear error and exit 1, nothing stored is damaged, and streaming resumes."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from walstream import LSN
from walstream.protocol.replication import XLogData
from walstream.receiver import ReceiverOptions, WalReceiver
from walstream.storage.directory import DiskError
from walstream.wal.segment import parse_segment_name

from .pgcluster import PgCluster

SEG = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _receive(cluster: PgCluster, directory: Path, *until: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "walstream.receiver", "-d", cluster.conninfo("trust_user"),
           "-D", str(directory), "-S", "diskfull", "-n", *until]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


# --synchronous with no end position: small batches are written and fsynced
# in the read callback itself (the inline path), so the error comes from there.
@pytest.mark.parametrize("first_run", ["endpos", "synchronous"])
def test_disk_full_then_resume(
    pg_factory, small_disk: Path, tmp_path: Path, first_run: str
) -> None:  # type: ignore[no-untyped-def]
    cluster: PgCluster = pg_factory(15, wal_segsize_mb=1)
    cluster.psql("SELECT pg_create_physical_replication_slot('diskfull', true)")
    cluster.psql("CREATE TABLE t(x int, pad text)")
    for _ in range(6):
        cluster.psql("INSERT INTO t SELECT g, repeat('d', 500) FROM generate_series(1, 1500) g")
        cluster.psql("SELECT pg_switch_wal()")
    endpos = LSN.parse(cluster.current_lsn())
    cluster.psql("INSERT INTO t VALUES (0, 'past endpos')")

    until = ["-E", str(endpos)]
    full = _receive(cluster, small_disk, *(until if first_run == "endpos" else ["--synchronous"]))
    assert full.returncode == 1
    assert "No space left on device" in full.stderr
    assert "Traceback" not in full.stderr, full.stderr
    assert str(small_disk) in full.stderr  # names the file
    completed = [p for p in small_disk.iterdir() if ".partial" not in p.name]
    assert completed, "some segments fit before the disk filled"
    for path in completed:
        assert path.read_bytes() == (cluster.datadir / "pg_wal" / path.name).read_bytes()

    # Make room: move everything to a bigger disk and run again there.
    roomy = tmp_path / "roomy"
    shutil.copytree(small_disk, roomy)
    again = _receive(cluster, roomy, *until)
    assert again.returncode == 0, again.stderr
    segnos = sorted(
        n.segno for p in roomy.iterdir() if (n := parse_segment_name(p.name, SEG)) is not None
    )
    assert segnos == list(range(segnos[0], segnos[-1] + 1)), f"gap: {segnos}"
    assert segnos[-1] == endpos // SEG
    for path in roomy.iterdir():
        if ".partial" not in path.name:
            assert path.read_bytes() == (cluster.datadir / "pg_wal" / path.name).read_bytes()


def test_a_batch_that_fails_after_completing_a_segment_still_ends_in_the_disk_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segment 5 completes (durable), creating segment 6 fails: the positions stay consistent.

    The directory's flush position was then ahead of the write position the
    receiver had been told of, and closing the directory after the error
    raised a ValueError over the DiskError.
    """
    real = os.posix_fallocate
    calls = []

    def fallocate(fd: int, offset: int, length: int) -> None:
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)

    async def run() -> WalReceiver:
        receiver = WalReceiver(ReceiverOptions(directory=tmp_path, slot="s"))
        directory = receiver._open_directory(SEG, 1, "0700")
        base = LSN(5 * SEG)
        receiver.policy.expected = base
        await receiver._write(directory, [XLogData(base, base, 0, b"\1" * (SEG - 8192))], 1)
        tail = LSN(base + SEG - 8192)
        batch = [
            XLogData(tail, tail, 0, b"\2" * 8192),
            XLogData(LSN(tail + 8192), tail, 0, b"\3" * 8192),
        ]
        with pytest.raises(DiskError, match="No space left on device"):
            await receiver._write(directory, batch, 1)
        await receiver._close_directory()  # what a session does after the error
        return receiver

    receiver = asyncio.run(run())
    assert receiver.policy.flush == receiver.policy.write == 6 * SEG
    assert (tmp_path / "000000010000000000000005").stat().st_size == SEG
