"""The compiled WAL-scan kernel's parts against their pure-Python counterparts.

The decoder and replay tests (test_wal_decoder.py) run both paths on real
WAL; these check the pieces where the kernel re-implements something the
pure path takes elsewhere (CRC-32C, the record counters, the transaction
end parser, the replay queue), on inputs real WAL rarely has.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections import OrderedDict
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walstream.wal import kernel
from walstream.wal.crc import crc32c, crc32c_python
from walstream.wal.decoder import RecordStats
from walstream.wal.rmgr import XactRecord, decode_payload

REQUIRE_KERNEL = os.environ.get("WALSTREAM_REQUIRE_KERNEL") == "1"


@pytest.fixture(scope="module")
def fastscan() -> ModuleType:
    if kernel.FASTSCAN is None:
        message = f"no compiled kernel: {kernel.reason()}"
        if REQUIRE_KERNEL:
            pytest.fail(message)
        pytest.skip(message)
    return kernel.FASTSCAN


def _implementation(**env: str) -> str:
    code = "from walstream.wal import kernel; print(kernel.implementation())"
    environ = {k: v for k, v in os.environ.items() if k != "WALSTREAM_PURE_PYTHON"}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**environ, **env}, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return out.stdout.strip()


def test_implementation_follows_the_environment(fastscan: ModuleType) -> None:
    assert _implementation() == "compiled"
    assert _implementation(WALSTREAM_PURE_PYTHON="1") == "pure"
    assert _implementation(WALSTREAM_PURE_PYTHON="0") == "compiled"
    assert kernel.implementation() == "compiled"
    assert fastscan.__file__ in kernel.reason()


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=700), start=st.integers(0, 700), crc=st.integers(0, 2**32 - 1))
def test_table_crc_is_crc32c(fastscan: ModuleType, data: bytes, start: int, crc: int) -> None:
    start = min(start, len(data))
    expected = crc32c_python(data[start:], crc)
    assert fastscan.crc32c_table(data, start, len(data), crc) == expected
    assert crc32c(data[start:], crc) == expected


@pytest.mark.parametrize("tot_len", [24, 25, 31, 32, 200, 255, 256, 257, 258, 1000, 8192, 70000])
def test_record_crc_on_both_sides_of_the_table_limit(fastscan: ModuleType, tot_len: int) -> None:
    record = bytes((i * 7 + 3) & 0xFF for i in range(tot_len + 13))
    for at in (0, 5, 13):
        body = record[at : at + tot_len]
        expected = crc32c(body[:20], crc32c(body[24:]))
        assert fastscan._record_crc(record, at, tot_len) == expected


def test_counts_do_not_wrap(fastscan: ModuleType) -> None:
    """More than 2**15 records of one type in one scan: count << 48 must not wrap in i64."""
    counts = fastscan.Counts()
    stats = RecordStats()
    for _ in range(100_000):
        counts.add(0x0A00, 70, 0)
    counts.add(5, 8000, 7000)
    counts.flush(stats.acc, stats.fpi, 1 << 48)
    counts.add(0x0A00, 30, 0)
    counts.flush(stats.acc, stats.fpi, 1 << 48)
    assert sorted(stats.items()) == [(0, 5, 1, 8000, 7000), (10, 0, 100_001, 7_000_030, 0)]
    assert stats.total == 100_002


# Commit and abort main data: xact_time, then what xl_info and xinfo say is there.
_XACT_OPS = (0x00, 0x20, 0x30, 0x40)


@st.composite
def xact_main_data(draw: st.DrawFn) -> tuple[int, bytes]:
    info = draw(st.sampled_from(_XACT_OPS)) | draw(st.sampled_from([0, 0x80]))
    parts = [struct.pack("<q", draw(st.integers(-(2**63), 2**63 - 1)))]
    if info & 0x80:
        xinfo = draw(st.integers(0, 0x1FF))
        parts.append(struct.pack("<I", xinfo))
        for flag, size in ((0x01, 8), (0x02, 4), (0x04, 12), (0x100, 12), (0x08, 16)):
            if xinfo & flag:
                if flag == 0x01:
                    parts.append(draw(st.binary(min_size=8, max_size=8)))
                    continue
                n = draw(st.integers(-2, 4))
                parts.append(struct.pack("<i", n))
                parts.append(draw(st.binary(min_size=0, max_size=max(0, n) * size + 8)))
        if xinfo & 0x10:
            parts.append(struct.pack("<I", draw(st.integers(0, 2**32 - 1))))
            if xinfo & 0x80:
                parts.append(draw(st.binary(max_size=12)))
        if xinfo & 0x20:
            parts.append(draw(st.binary(min_size=0, max_size=20)))
    data = b"".join(parts)
    if draw(st.booleans()):  # cut it short, or leave garbage after
        data = data[: draw(st.integers(0, len(data)))]
    return info, data


@settings(max_examples=500, deadline=None)
@given(xact=xact_main_data(), version=st.sampled_from([15, 16, 18]), pad=st.integers(0, 9))
def test_xact_end_parser_agrees_with_decode_payload(
    fastscan: ModuleType, xact: tuple[int, bytes], version: int, pad: int
) -> None:
    """Where the kernel parses a commit or abort itself, decode_payload reads the same."""
    info, main = xact
    buf = b"\xaa" * pad + main + b"\xbb" * 5
    got = fastscan._xact_end(buf, pad, pad + len(main), info, version)
    if got == -1:
        return  # left to decode_payload
    payload = decode_payload(1, info, 12345, main, 0, version)  # (must not raise)
    assert isinstance(payload, XactRecord)
    assert payload.xid == (12345 if got == -2 else got)
    assert payload.xact_time_raw == struct.unpack_from("<q", main)[0]
    assert (
        payload.kind
        == ("COMMIT", "", "ABORT", "COMMIT_PREPARED", "ABORT_PREPARED")[(info & 0x70) >> 4]
    )


@settings(max_examples=200, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(["end", "payload", "xact"]), max_size=60),
    durables=st.lists(st.integers(0, 70 * 8), max_size=12),
)
def test_replay_sink_replays_in_order_up_to_durable(
    fastscan: ModuleType, kinds: list[str], durables: list[int]
) -> None:
    """The sink against a plain model of ReplayState's queue: same order, same positions."""
    wanted = bytearray(65536)
    wanted[0x0110] = fastscan.WANT_PAYLOAD
    xacts: OrderedDict[int, str] = OrderedDict()
    sink = fastscan.ReplaySink(bytes(wanted), xacts, 3)
    model: list[tuple[int, str, int]] = []  # (end, kind, xid)
    for k, kind in enumerate(kinds):
        end = 8 * (k + 1)
        if kind == "end":
            sink.add_end(end)
        elif kind == "payload":
            sink.add(end, 0x0110, k, b"m%d" % k, end - 8)
        else:
            sink.add_xact_end(end, k, 2, 1000 + k)
        model.append((end, kind, k))
    model_xacts: OrderedDict[int, str] = OrderedDict()
    replayed = xact_time = 0
    for durable in [*sorted(durables), 10**30]:
        while True:
            entry = sink.pop_due(durable)
            due = [m for m in model if m[0] <= durable]
            # Everything before the first payload record in ``due`` is replayed now.
            stop = next((i for i, m in enumerate(due) if m[1] == "payload"), len(due))
            for end, kind, xid in due[:stop]:
                replayed = end
                if kind == "xact":
                    model_xacts[xid] = "ABORT"
                    if len(model_xacts) > 3:
                        model_xacts.popitem(last=False)
                    xact_time = 1000 + xid
            assert sink.replayed == replayed
            assert sink.xact_time == xact_time
            assert list(xacts.items()) == list(model_xacts.items())
            del model[:stop]
            if entry is None:
                assert stop == len(due)
                break
            end, rmid, info, xid, main, lsn = entry
            assert (end, rmid, info, main, lsn) == (model[0][0], 1, 0x10, b"m%d" % xid, end - 8)
            replayed = end
            del model[0]
        assert len(sink) == len(model)
