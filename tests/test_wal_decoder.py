"""The WAL decoder and ``walstream waldump`` against pg_waldump, on real WAL.

Each PostgreSQL version (15, 16, 18) runs the mixed workload of
wal_workload.py once per session; pg_waldump of the same version is the
oracle for every record (position, lengths, xid, prev-link, block references,
images), for the statistics tables, for where and why decoding ends, and for
what a corrupted segment should produce.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walstream.errors import Error, WalCorruption
from walstream.lsn import LSN
from walstream.wal import decoder as decoder_module
from walstream.wal import kernel
from walstream.wal.crc import crc32c
from walstream.wal.decoder import (
    NEED_DATA,
    XLOG_BLCKSZ,
    EndOfWal,
    InvalidRecord,
    Record,
    RecordStats,
    WalDecoder,
    _Bad,
    _body_fpi,
    _parse_body,
)
from walstream.wal.replay import ReplayState
from walstream.wal.rmgr import (
    CheckPoint,
    EndOfRecovery,
    OverwriteContrecord,
    RestorePoint,
    RunningXacts,
    XactRecord,
)

from .conftest import require_version
from .wal_workload import SEG_SIZE, WalSample, generate
from .waldump_oracle import (
    ERROR_LINE,
    RECORD_LINE,
    Dump,
    compare,
    error_lsn,
    run_ours,
    run_waldump,
)

VERSIONS = [15, 16, 18]
# scripts/test.sh builds the compiled kernel and sets this: its tests must run, not skip.
REQUIRE_KERNEL = os.environ.get("WALSTREAM_REQUIRE_KERNEL") == "1"


@pytest.fixture(params=["compiled", "pure"])
def scan_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with each implementation of the scans (see walstream.wal.kernel)."""
    if request.param == "pure":
        monkeypatch.setattr(kernel, "FASTSCAN", None)
    elif kernel.FASTSCAN is None:
        message = f"no compiled kernel: {kernel.reason()}"
        if REQUIRE_KERNEL:
            pytest.fail(message)
        pytest.skip(message)
    else:
        # The kernel pauses every 20 kB instead of every MiB: pauses happen
        # within these 1 MB segments too.
        monkeypatch.setattr(decoder_module, "_KERNEL_RUN", 20_000)
    return str(request.param)


def seg_name(tli: int, lsn: int) -> str:
    segno = lsn // SEG_SIZE
    return f"{tli:08X}{segno // 4096:08X}{segno % 4096:08X}"


def seg_start(name: str) -> LSN:
    return LSN(int(name[16:], 16) * SEG_SIZE + int(name[8:16], 16) * 0x100000000)


# ---------------------------------------------------------------------------
# Fixtures: WAL per version, and pg_waldump's reading of it
# ---------------------------------------------------------------------------


@dataclass
class Sample:
    wal: WalSample
    t1: Dump  # timeline 1, from the oldest segment to the end of WAL
    t2: Dump  # timeline 2, from the segment holding the switch point
    t1_start: LSN
    t2_start: LSN

    def __repr__(self) -> str:  # keeps failure reports readable
        return f"<WAL sample of PostgreSQL {self.wal.version}>"

    def _repr_pretty_(self, p: object, cycle: bool) -> None:  # Hypothesis' pretty-printer
        p.text(repr(self))  # type: ignore[attr-defined]


@pytest.fixture(scope="session", params=VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
def sample(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Sample:
    version: int = request.param
    require_version(version)
    wal = generate(version, tmp_path_factory.mktemp(f"wal{version}"))
    t1_start = seg_start(wal.first_segment)
    t2_start = seg_start(wal.switch_segment)
    t1 = run_waldump(wal.bindir, "-b", "-p", str(wal.waldir), "-s", str(t1_start))
    t2 = run_waldump(wal.bindir, "-b", "-p", str(wal.waldir), "-t", "2", "-s", str(t2_start))
    assert len(t1.records) > 10000
    assert len(t2.records) > 100
    return Sample(wal, t1, t2, t1_start, t2_start)


def decode_files(
    waldir: Path, tli: int, start: int, *, prev: int | None = None, chunk: int | None = None
) -> tuple[list[Record], WalDecoder]:
    """Decode the segment files of ``tli`` from ``start`` until decoding stops."""
    decoder = WalDecoder(start, SEG_SIZE, prev_lsn=prev)
    records: list[Record] = []
    pos = start - start % SEG_SIZE
    while decoder.outcome is None:
        path = waldir / seg_name(tli, pos)
        if not path.exists():
            break
        data = path.read_bytes()
        step = chunk or len(data)
        for i in range(0, len(data), step):
            decoder.feed(pos + i, data[i : i + step])
            records.extend(decoder.records())
        pos += SEG_SIZE
    return records, decoder


# ---------------------------------------------------------------------------
# Record by record
# ---------------------------------------------------------------------------


def test_every_record_matches_pg_waldump(sample: Sample) -> None:
    for tli, dump, start in ((1, sample.t1, sample.t1_start), (2, sample.t2, sample.t2_start)):
        records, decoder = decode_files(sample.wal.waldir, tli, start)
        compare(records, dump)
        # Decoding ends where pg_waldump's does, for the same reason.
        assert dump.error is not None
        outcome = decoder.outcome
        assert isinstance(outcome, EndOfWal), outcome
        assert outcome.lsn == error_lsn(dump.error)
        assert outcome.reason.split(":")[0] == dump.error.split(":")[0]
        assert decoder.last_lsn == records[-1].lsn
        assert decoder.position == records[-1].end_lsn == outcome.lsn


def test_end_lsn_is_what_the_server_reported(sample: Sample) -> None:
    """end_lsn is EndRecPtr: XLogInsert's return value (pg_create_restore_point's result)."""
    records, _ = decode_files(sample.wal.waldir, 1, sample.t1_start)
    by_end = {r.end_lsn: r for r in records}
    rp = by_end[sample.wal.facts["restore_point"]]
    assert rp.type_name == "RESTORE_POINT"
    payload = rp.payload()
    assert isinstance(payload, RestorePoint)
    assert payload.name == "walstream_rp"
    message = by_end[sample.wal.facts["message"]]
    assert (message.rmgr, message.tot_len > 8192) == ("LogicalMessage", True)
    for a, b in itertools.pairwise(records):
        if a.type_name == "SWITCH":
            assert a.end_lsn % SEG_SIZE == 0
            assert b.lsn == a.end_lsn + 40
        elif a.end_lsn % 8192 == 0:
            assert b.lsn - a.end_lsn in (24, 40) or b.type_name == "OVERWRITE_CONTRECORD"
        else:
            assert b.lsn == a.end_lsn or b.type_name == "OVERWRITE_CONTRECORD"


def test_workload_covers_the_hard_cases(sample: Sample) -> None:
    """The real WAL exercises what the decoder must get right (else the comparison is weak)."""
    records, _ = decode_files(sample.wal.waldir, 1, sample.t1_start)
    t2, _ = decode_files(sample.wal.waldir, 2, sample.t2_start)
    names = {f"{r.rmgr}/{r.type_name}" for r in records + t2}
    for expected in (
        "XLOG/CHECKPOINT_ONLINE",
        "XLOG/CHECKPOINT_SHUTDOWN",
        "XLOG/SWITCH",
        "XLOG/RESTORE_POINT",
        "XLOG/OVERWRITE_CONTRECORD",
        "XLOG/END_OF_RECOVERY",
        "XLOG/FPI",
        "Transaction/COMMIT",
        "Transaction/ABORT",
        "Transaction/PREPARE",
        "Transaction/COMMIT_PREPARED",
        "Transaction/ABORT_PREPARED",
        "Transaction/ASSIGNMENT",
        "Standby/RUNNING_XACTS",
        "Heap/INSERT",
        "Btree/INSERT_LEAF",
        "Hash/INSERT",
        "Sequence/LOG",
        "LogicalMessage/MESSAGE",
    ):
        assert expected in names, expected
    assert {r.rmgr for r in records} >= {"Gin", "Gist", "SPGist", "BRIN", "Hash", "Storage"}
    # Records whose 24-byte header is split across two pages, records crossing
    # pages and segments, images with and without holes, each compression.
    assert any(r.lsn % 8192 > 8192 - 24 for r in records)
    assert any(r.lsn // SEG_SIZE != (r.end_lsn - 1) // SEG_SIZE for r in records)
    assert any(r.tot_len > 3 * 8192 for r in records)
    images = [b for r in records for b in r.blocks if b.has_image]
    assert {b.compression for b in images} >= {None, *(set(sample.wal.compressions) - {"off"})}
    assert any(b.hole_length for b in images)
    assert any(not b.hole_length for b in images)


def test_payloads_for_replay_tracking(sample: Sample) -> None:
    records, _ = decode_files(sample.wal.waldir, 1, sample.t1_start)
    t2, _ = decode_files(sample.wal.waldir, 2, sample.t2_start)
    facts = sample.wal.facts
    dumped = {d.lsn: d for d in sample.t1.records + sample.t2.records}
    kinds: set[str] = set()
    for rec in records + t2:
        payload = rec.payload()
        desc = dumped[rec.lsn].desc
        if isinstance(payload, XactRecord):
            kinds.add(payload.kind)
            assert payload.xact_time is not None
            stamp = payload.xact_time.strftime("%Y-%m-%d %H:%M:%S.%f UTC")
            assert stamp in desc, desc
            if payload.kind in ("COMMIT_PREPARED", "ABORT_PREPARED"):
                assert rec.xid == 0
                assert desc.startswith(f"{payload.xid}: ")
            if payload.kind == "PREPARE":
                assert desc.startswith(f"gid {payload.gid}: ")
                assert payload.xid == rec.xid
            m = re.search(r"; subxacts: ([\d ]+)", desc)
            assert payload.subxacts == (tuple(int(x) for x in m.group(1).split()) if m else ())
        elif isinstance(payload, CheckPoint):
            assert f"redo {payload.redo}; tli {payload.timeline}; " in desc
            assert desc.endswith("shutdown" if payload.shutdown else "online")
            assert f"oldest running xid {payload.oldest_active_xid};" in desc
        elif isinstance(payload, RunningXacts):
            assert desc.startswith(
                f"nextXid {payload.next_xid} latestCompletedXid "
                f"{payload.latest_completed_xid} oldestRunningXid {payload.oldest_running_xid}"
            )
        elif isinstance(payload, OverwriteContrecord):
            kinds.add("OVERWRITE")
            assert desc.startswith(f"lsn {payload.overwritten_lsn};")
            # The abandoned record is the one after the overwrite record's xl_prev.
            assert payload.overwritten_lsn > rec.prev
        elif isinstance(payload, EndOfRecovery):
            kinds.add("END_OF_RECOVERY")
            assert (payload.timeline, payload.prev_timeline) == (2, 1)
            assert rec.lsn == sample.wal.switchpoint
    assert kinds >= {"COMMIT", "ABORT", "PREPARE", "COMMIT_PREPARED", "ABORT_PREPARED"}
    assert kinds >= {"OVERWRITE", "END_OF_RECOVERY"}
    prepared = {
        p.kind: p.xid
        for r in records
        if isinstance(p := r.payload(), XactRecord) and p.kind.endswith("_PREPARED")
    }
    assert prepared == {
        "COMMIT_PREPARED": facts["prepared_xid_committed"],
        "ABORT_PREPARED": facts["prepared_xid_aborted"],
    }


# ---------------------------------------------------------------------------
# Feeding and starting positions
# ---------------------------------------------------------------------------


def _window(sample: Sample, segments: int = 2) -> tuple[LSN, bytes]:
    """Segments around the first XLOG_SWITCH: crossing records, a zero tail, a new segment."""
    switch = next(d for d in sample.t1.records if d.type_name == "SWITCH")
    start = LSN(switch.lsn - switch.lsn % SEG_SIZE)
    data = b"".join(
        (sample.wal.waldir / seg_name(1, start + i * SEG_SIZE)).read_bytes()
        for i in range(segments)
    )
    return start, data


def _decode_bytes(start: int, data: bytes, **kwargs: object) -> tuple[list[Record], object]:
    decoder = WalDecoder(start, SEG_SIZE, **kwargs)  # type: ignore[arg-type]
    decoder.feed(start, data)
    records = list(decoder.records())
    return records, decoder.outcome or NEED_DATA


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cuts=st.lists(st.integers(min_value=1, max_value=2 * SEG_SIZE - 1), max_size=40))
def test_any_chunking_gives_the_same_records(sample: Sample, cuts: list[int]) -> None:
    start, data = _window(sample)
    whole, whole_end = _decode_bytes(start, data)
    decoder = WalDecoder(start, SEG_SIZE)
    got: list[Record] = []
    bounds = sorted({0, len(data), *cuts})
    for a, b in itertools.pairwise(bounds):
        decoder.feed(start + a, data[a:b])
        while True:
            rec = decoder.next_record()  # the one-at-a-time API, against records()
            if not isinstance(rec, Record):
                break
            got.append(rec)
        assert rec is NEED_DATA
    assert [(r.lsn, r.end_lsn, r.raw.tobytes()) for r in got] == [
        (r.lsn, r.end_lsn, r.raw.tobytes()) for r in whole
    ]
    assert whole_end is NEED_DATA
    assert decoder.position == whole[-1].end_lsn


def test_byte_at_a_time_across_a_multi_page_record(sample: Sample) -> None:
    """Tiny feeds through page headers, a split record header and a 20 kB record."""
    records, _ = decode_files(sample.wal.waldir, 1, sample.t1_start)
    big = next(r for r in records if r.rmgr == "LogicalMessage" and r.tot_len > 8192)
    split = next(r for r in records if r.lsn % 8192 > 8192 - 24)
    for target in (big, split):
        index = records.index(target)
        first = records[index - 2]
        start = first.lsn
        seg = (sample.wal.waldir / seg_name(1, start)).read_bytes()
        seg += (sample.wal.waldir / seg_name(1, start + SEG_SIZE)).read_bytes()
        base = start - start % SEG_SIZE
        decoder = WalDecoder(start, SEG_SIZE, prev_lsn=first.prev)
        got: list[Record] = []
        pos = start
        while len(got) < 4:
            step = 1 if pos < target.end_lsn else 997
            decoder.feed(pos, seg[pos - base : pos - base + step])
            pos += step
            got.extend(decoder.records())
            assert decoder.outcome is None
        assert [r.raw.tobytes() for r in got[:4]] == [
            r.raw.tobytes() for r in records[index - 2 : index + 2]
        ]


def test_start_at_a_record_or_a_page(sample: Sample) -> None:
    records, _ = decode_files(sample.wal.waldir, 1, sample.t1_start)
    dumped = sample.t1.records
    for rec in records[1000:30000:2311]:
        # At a record: fed from its segment start, or from the record itself.
        for feed_from in (rec.lsn - rec.lsn % SEG_SIZE, rec.lsn):
            seg = (sample.wal.waldir / seg_name(1, rec.lsn)).read_bytes()
            base = rec.lsn - rec.lsn % SEG_SIZE
            decoder = WalDecoder(rec.lsn, SEG_SIZE, prev_lsn=rec.prev)
            decoder.feed(feed_from, seg[feed_from - base :])
            got = list(decoder.records())
            assert got[0].raw.tobytes() == rec.raw.tobytes()
            assert got[1].lsn == records[records.index(rec) + 1].lsn
        # A wrong prev_lsn is caught, as PostgreSQL's sequential reading does.
        decoder = WalDecoder(rec.lsn, SEG_SIZE, prev_lsn=rec.prev + 8)
        decoder.feed(rec.lsn - rec.lsn % 8192, seg[(rec.lsn % SEG_SIZE) - rec.lsn % 8192 :])
        outcome = decoder.next_record()
        assert isinstance(outcome, InvalidRecord)
        assert "prev-link" in outcome.reason
    # At page starts, including ones that begin with the tail of a longer
    # record (skipped with xlp_rem_len): pg_waldump -s finds the same record.
    big = next(r for r in records if r.tot_len > 3 * 8192)
    for page in (big.lsn - big.lsn % 8192 + 8192, big.lsn - big.lsn % 8192 + 16384):
        seg = b"".join(
            (sample.wal.waldir / seg_name(1, page + i * SEG_SIZE)).read_bytes() for i in range(2)
        )
        decoder = WalDecoder(page, SEG_SIZE)
        decoder.feed(page, seg[page % SEG_SIZE :])
        first = decoder.next_record()
        assert isinstance(first, Record)
        expected = next(d for d in dumped if d.lsn >= page)
        assert first.lsn == expected.lsn == big.end_lsn


# ---------------------------------------------------------------------------
# walstream waldump against pg_waldump
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["--stats", "--stats=record"])
def test_stats_tables_are_identical(sample: Sample, mode: str, scan_path: str) -> None:
    waldir = str(sample.wal.waldir)
    for args in (
        ("-p", waldir, "-s", str(sample.t1_start)),
        ("-p", waldir, "-t", "2", "-s", str(sample.t2_start)),
        ("-p", waldir, sample.wal.first_segment),
        ("-p", waldir, "-s", str(sample.t1_start + 5 * SEG_SIZE + 12345), "-n", "777"),
        ("-p", waldir, "-s", str(sample.t1_start), "-r", "Heap", "-r", "transaction"),
    ):
        theirs = run_waldump(sample.wal.bindir, mode, *args)
        code, out, err = run_ours(mode, *args)
        assert out == theirs.stdout or out == _drop_info_lines(theirs.stdout)
        assert code == (1 if theirs.error else 0)
        if theirs.error:
            ours_error = ERROR_LINE.search(err)
            assert ours_error is not None
            assert error_lsn(ours_error.group(2)) == error_lsn(theirs.error)


def _drop_info_lines(text: str) -> str:
    # pg_waldump 15 prints "first record is after ..." on stdout, later versions on stderr.
    return "".join(line for line in text.splitlines(True) if not line.startswith("first record"))


def _essentials(line: str) -> str:
    """A record line without the rmgr-specific description (not reproduced)."""
    m = RECORD_LINE.match(line)
    assert m, line
    blocks = re.findall(r", blkref #\d+: rel [\d/]+(?: fork \w+)? blk \d+(?: FPW)?", line)
    return line[: m.start(8)] + "".join(blocks)


def test_text_output_matches(sample: Sample) -> None:
    waldir = str(sample.wal.waldir)
    facts = sample.wal.facts
    switch_seg = seg_name(1, sample.t1.records[len(sample.t1.records) // 2].lsn)
    for args in (
        ("-p", waldir, switch_seg),
        ("-p", waldir, "-t", "2", sample.wal.switch_segment),
        ("-p", waldir, "-s", str(sample.t1_start + 3 * SEG_SIZE + 5), "-e",
         str(sample.t1_start + 4 * SEG_SIZE + 4000)),
        ("-p", waldir, "-s", str(sample.t1_start), "-x", str(facts["prepared_xid_aborted"])),
        ("-p", waldir, "-s", str(sample.t1_start), "-r", "XLOG", "-n", "40"),
        ("-p", waldir, "-s", str(sample.t1_start), "-w", "-n", "50"),
    ):  # fmt: skip
        theirs = run_waldump(sample.wal.bindir, *args)
        code, out, _ = run_ours(*args)
        mine = [line for line in out.splitlines() if line.startswith("rmgr")]
        expected = [r.line for r in theirs.records]
        assert [_essentials(x) for x in mine] == [_essentials(x) for x in expected], args
        assert code == (1 if theirs.error else 0)
        # Full lines, descriptions included, for the records walstream describes.
        for a, b in zip(mine, expected, strict=True):
            if re.search(
                r"desc: (CHECKPOINT_\w+|RESTORE_POINT|SWITCH|END_OF_RECOVERY|"
                r"OVERWRITE_CONTRECORD|RUNNING_XACTS|(COMMIT|ABORT)_PREPARED|PREPARE) ",
                b,
            ):
                assert a == b
    # -b: the detailed block lines too.
    args = ("-b", "-p", waldir, "-s", str(sample.t1_start), "-w", "-n", "300")
    theirs = run_waldump(sample.wal.bindir, *args)
    _, out, _ = run_ours(*args)
    assert [b for b in out.splitlines() if b.startswith("\t")] == [
        b for b in theirs.stdout.splitlines() if b.startswith("\t")
    ]


def test_json_output(sample: Sample) -> None:
    import json

    waldir = str(sample.wal.waldir)
    code, out, _ = run_ours("--json", "-p", waldir, "-s", str(sample.t1_start))
    assert code == 1  # the WAL ends with an error, as with pg_waldump
    objects = [json.loads(line) for line in out.splitlines()]
    assert len(objects) == len(sample.t1.records)
    for obj, d in zip(objects, sample.t1.records, strict=True):
        assert obj["lsn"] == d.line.split("lsn: ")[1].split(",")[0]
        assert obj["prev"] == d.line.split("prev ")[1].split(",")[0]
        assert (obj["rmgr"], obj["xid"], obj["rec_len"], obj["tot_len"]) == (
            d.rmgr,
            d.xid,
            d.rec_len,
            d.tot_len,
        )
        assert obj["fpi_len"] == d.tot_len - d.rec_len
        assert [
            (b["id"], b["spc"], b["db"], b["rel"], b["fork"], b["blk"], b["image"])
            for b in obj["blocks"]
        ] == [blk[:7] for blk in d.blocks]
        if d.rmgr == "Transaction" and d.type_name in (
            "COMMIT",
            "ABORT",
            "COMMIT_PREPARED",
            "ABORT_PREPARED",
        ):
            stamp = obj["xact_time"]
            assert stamp.endswith("+00:00")
            assert stamp[:-6].replace("T", " ") in d.desc
        else:
            assert "xact_time" not in obj
        assert set(obj) >= {"lsn", "end_lsn", "prev", "xid", "rmgr", "info", "rec_len",
                            "fpi_len", "tot_len", "blocks"}  # fmt: skip


def test_cli_errors_like_pg_waldump(sample: Sample, tmp_path: Path) -> None:
    waldir = str(sample.wal.waldir)
    code, _, err = run_ours("-p", waldir)
    assert code == 1
    assert "no start WAL location given" in err
    code, _, err = run_ours("-p", waldir, "-r", "nosuch", "-s", "0/1")
    assert code == 1
    assert 'resource manager "nosuch" does not exist' in err
    code, out, _ = run_ours("-r", "list")
    assert code == 0
    assert out.split() == run_waldump(sample.wal.bindir, "-r", "list").stdout.split()
    # A missing segment in the middle of the range.
    partial = tmp_path / "wal"
    partial.mkdir()
    for name in sorted(os.listdir(waldir))[:3]:
        if name.startswith("00000001"):
            shutil.copy(sample.wal.waldir / name, partial / name)
    # (pg_waldump says 'could not find file "...": No such file or directory' too, after
    # retrying for five seconds in case the server is about to create it.)
    code, _, err = run_ours("-p", str(partial), "-s", str(sample.t1_start))
    assert code == 1
    assert 'could not find file "00000001' in err
    assert "No such file or directory" in err


# ---------------------------------------------------------------------------
# Corruption: pg_waldump decides what must be detected, and where
# ---------------------------------------------------------------------------


def _mutate(data: bytes, kind: str, pos: int, value: int) -> bytes:
    if kind == "flip":
        return data[:pos] + bytes([data[pos] ^ (value or 0x5A)]) + data[pos + 1 :]
    return (data[:pos] + bytes([value]) + data[pos:])[: len(data)]  # insert, same size


mutations = st.tuples(
    st.sampled_from(["flip", "insert"]),
    st.integers(min_value=0, max_value=2 * SEG_SIZE - 1),
    st.integers(min_value=0, max_value=255),
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutation=mutations, near_header=st.booleans())
def test_corruption_is_found_where_pg_waldump_finds_it(
    sample: Sample, tmp_path_factory: pytest.TempPathFactory, mutation: tuple[str, int, int],
    near_header: bool,
) -> None:  # fmt: skip
    kind, pos, value = mutation
    if near_header:
        pos = pos - pos % 8192 + pos % 48  # a page header or the record after it
    start, data = _window(sample)
    bad = _mutate(data, kind, pos, value)
    waldir = tmp_path_factory.mktemp("bad")
    for i in range(2):
        (waldir / seg_name(1, start + i * SEG_SIZE)).write_bytes(
            bad[i * SEG_SIZE : (i + 1) * SEG_SIZE]
        )
    first, last = seg_name(1, start), seg_name(1, start + SEG_SIZE)
    theirs = run_waldump(sample.wal.bindir, "-b", "-p", str(waldir), first, last)
    # pg_waldump knows its version's page magic; so does a standby (from its server).
    decoder = WalDecoder(start, SEG_SIZE, magic=int.from_bytes(data[:2], "little"))
    decoder.feed(start, bad)
    ours = list(decoder.records())
    assert [r.lsn for r in ours] == [d.lsn for d in theirs.records]
    compare(ours, theirs)
    if theirs.error is None and theirs.code:
        # pg_waldump refused the first file outright (it takes the segment
        # size from its long header): nothing decodes for us either.
        assert not theirs.records
        assert not ours
        assert isinstance(decoder.outcome, InvalidRecord)
        assert decoder.outcome.lsn == start
    elif theirs.error is None:
        assert decoder.outcome is None  # stopped for want of data, as pg_waldump at ENDSEG
    else:
        assert isinstance(decoder.outcome, WalCorruption)
        where = error_lsn(theirs.error)
        if where is not None:  # (15 sometimes gives no reason)
            assert decoder.outcome.lsn == where, (theirs.error, decoder.outcome)
    shutil.rmtree(waldir)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutation=mutations, near_header=st.booleans(), chunk=st.sampled_from([None, 8192, 3001]))
def test_corruption_never_passes_silently(
    sample: Sample, mutation: tuple[str, int, int], near_header: bool, chunk: int | None
) -> None:
    """Every record returned is intact; every record wholly before the damage is returned."""
    kind, pos, value = mutation
    if near_header:
        pos = pos - pos % 8192 + pos % 48
    start, data = _window(sample)
    original, _ = _decode_bytes(start, data)
    bad = _mutate(data, kind, pos, value)
    if bad == data:
        return
    decoder = WalDecoder(start, SEG_SIZE)
    got: list[Record] = []
    step = chunk or len(bad)
    try:
        for i in range(0, len(bad), step):
            decoder.feed(start + i, bad[i : i + step])
            got.extend(decoder.records())
    except Error:
        pytest.fail("the decoder raised instead of returning an outcome")
    damaged = start + pos
    by_lsn = {r.lsn: i for i, r in enumerate(original)}
    indexes = [by_lsn.get(r.lsn) for r in got]
    # Every record returned is one of the original records, intact, in order.
    assert None not in indexes
    assert indexes == list(range(indexes[0], indexes[0] + len(indexes))) if indexes else True
    for rec in got:
        assert rec.raw.tobytes() == original[by_lsn[rec.lsn]].raw.tobytes()
        assert rec.blocks == original[by_lsn[rec.lsn]].blocks
    if pos >= 40:
        # Records ending before the damaged byte's page survive (damage to the
        # first page header may move the start: its xlp_rem_len is what skips
        # the record continued from the previous segment).
        intact = [r for r in original if r.end_lsn <= damaged - damaged % 8192]
        assert indexes[: len(intact)] == list(range(len(intact)))
    if decoder.outcome is not None:
        assert decoder.outcome.lsn >= (got[-1].end_lsn if got else start)


def test_switch_tail_is_never_read(sample: Sample) -> None:
    start, data = _window(sample)
    records, _ = _decode_bytes(start, data)
    switch = next(r for r in records if r.type_name == "SWITCH")
    tail_from = switch.lsn + 24 - start
    garbage = bytes(range(256)) * ((SEG_SIZE - tail_from % SEG_SIZE) // 256 + 1)
    bad = data[:tail_from] + garbage[: SEG_SIZE - tail_from % SEG_SIZE] + data[SEG_SIZE:]
    assert len(bad) == len(data)
    again, _ = _decode_bytes(start, bad)
    assert [r.raw.tobytes() for r in again] == [r.raw.tobytes() for r in records]


def test_recycled_segment_is_end_of_wal(sample: Sample) -> None:
    """A segment still holding older WAL (a recycled file): EndOfWal at its first page."""
    start, data = _window(sample)
    older = (sample.wal.waldir / sample.wal.first_segment).read_bytes()
    records, _ = _decode_bytes(start, data[:SEG_SIZE] + older)
    decoder = WalDecoder(start, SEG_SIZE)
    decoder.feed(start, data[:SEG_SIZE] + older)
    got = list(decoder.records())
    assert got == records[: len(got)]
    assert isinstance(decoder.outcome, EndOfWal)
    assert decoder.outcome.lsn == start + SEG_SIZE
    assert "unexpected pageaddr" in decoder.outcome.reason


def test_system_identifier_and_timeline_checks(sample: Sample) -> None:
    start, data = _window(sample)
    sysid = int.from_bytes(data[24:32], "little")
    records, _ = _decode_bytes(start, data, system_identifier=sysid)
    assert records
    _, outcome = _decode_bytes(start, data, system_identifier=sysid + 1)
    assert isinstance(outcome, InvalidRecord)
    assert "different database system" in outcome.reason
    _, outcome = _decode_bytes(start, data, timeline=1)
    assert outcome is NEED_DATA
    # Timeline 2's copy of the switch segment: pages before the switch point
    # still carry timeline 1, later ones timeline 2.
    t2_start = seg_start(sample.wal.switch_segment)
    t2 = b"".join(
        (sample.wal.waldir / seg_name(2, t2_start + i * SEG_SIZE)).read_bytes() for i in range(2)
    )
    recs, outcome = _decode_bytes(t2_start, t2, timeline=2)
    assert isinstance(outcome, EndOfWal)
    assert any(r.lsn >= sample.wal.switchpoint for r in recs)
    assert any(r.lsn < sample.wal.switchpoint for r in recs)
    _, outcome = _decode_bytes(t2_start, t2, timeline=1)
    assert isinstance(outcome, InvalidRecord)
    assert "unexpected timeline ID 2" in outcome.reason
    assert outcome.lsn > sample.wal.switchpoint


def test_api_misuse_is_a_local_error() -> None:
    from walstream.errors import LocalProtocolError

    decoder = WalDecoder(0x1000028, SEG_SIZE)
    with pytest.raises(LocalProtocolError):
        decoder.feed(0x1000030, b"\0" * 16)
    decoder.feed(0x1000000, b"\0" * 16)
    with pytest.raises(LocalProtocolError):
        decoder.feed(0x1000020, b"\0")
    with pytest.raises(ValueError, match="power of two"):
        WalDecoder(0, 3 * 1024 * 1024)
    with pytest.raises(ValueError, match="aligned"):
        WalDecoder(0x1000029, SEG_SIZE)
    assert decoder.next_record() is NEED_DATA


# ---------------------------------------------------------------------------
# scan_stats: the statistics fast path against the general decoder
# ---------------------------------------------------------------------------


def _state(decoder: WalDecoder) -> tuple[object, ...]:
    outcome = decoder.outcome
    return (
        decoder.position,
        decoder.last_lsn,
        None if outcome is None else (type(outcome), outcome.lsn, outcome.reason),
    )


def _scan_both(
    start: int, data: bytes, bounds: list[int], **kwargs: object
) -> tuple[list[Record], RecordStats]:
    """Feed ``data`` in pieces to a general and a scanning decoder; equal after every piece."""
    general = WalDecoder(start, SEG_SIZE, **kwargs)  # type: ignore[arg-type]
    scanning = WalDecoder(start, SEG_SIZE, **kwargs)  # type: ignore[arg-type]
    expected = RecordStats()
    got = RecordStats()
    records: list[Record] = []
    for a, b in itertools.pairwise(bounds):
        general.feed(start + a, data[a:b])
        scanning.feed(start + a, data[a:b])
        recs = list(general.records())
        for rec in recs:
            expected.add(rec)
        records += recs
        scanning.scan_stats(got)
        assert _state(scanning) == _state(general)
        assert got.acc == expected.acc
        assert got.fpi == expected.fpi
    return records, got


def test_scan_stats_counts_what_records_yields(
    sample: Sample, monkeypatch: pytest.MonkeyPatch, scan_path: str
) -> None:
    """Whole timelines, segment by segment: same counts, same end, same reason."""
    general_steps = 0
    step = WalDecoder._step

    def counting_step(self: WalDecoder) -> Record | None:
        nonlocal general_steps
        general_steps += 1
        return step(self)

    monkeypatch.setattr(WalDecoder, "_step", counting_step)
    for tli, dump, start in ((1, sample.t1, sample.t1_start), (2, sample.t2, sample.t2_start)):
        general = WalDecoder(start, SEG_SIZE)
        scanning = WalDecoder(start, SEG_SIZE)
        expected = RecordStats()
        got = RecordStats()
        pos = start - start % SEG_SIZE
        while (sample.wal.waldir / seg_name(tli, pos)).exists():
            data = (sample.wal.waldir / seg_name(tli, pos)).read_bytes()
            general.feed(pos, data)
            scanning.feed(pos, data)
            for rec in general.records():
                expected.add(rec)
            scanning.scan_stats(got)
            assert _state(scanning) == _state(general)
            pos += SEG_SIZE
        assert list(got.items()) == list(expected.items())
        assert got.total == len(dump.records)
        assert isinstance(scanning.outcome, EndOfWal)
    # Both decoders leave only a few records to the general path (so the
    # comparison is really of the scan's fast path).
    assert general_steps < 0.1 * (len(sample.t1.records) + len(sample.t2.records))


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cuts=st.lists(st.integers(min_value=1, max_value=2 * SEG_SIZE - 1), max_size=40))
def test_scan_stats_any_chunking(sample: Sample, scan_path: str, cuts: list[int]) -> None:
    """Equal after every feed, whatever the pieces: record by record at the cut points."""
    start, data = _window(sample)
    records, got = _scan_both(start, data, sorted({0, len(data), *cuts}))
    assert got.total == len(records)


def test_scan_stats_small_feeds(sample: Sample, scan_path: str) -> None:
    """Feeds of a few bytes to a few pages: every page and record boundary case."""
    start, data = _window(sample)
    for step in (8192, 3001, 777):
        _scan_both(start, data[: SEG_SIZE // 4], list(range(0, SEG_SIZE // 4 + 1, step)))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutation=mutations, near_header=st.booleans(), chunk=st.sampled_from([None, 8192, 3001]))
def test_scan_stats_finds_corruption_where_records_does(
    sample: Sample,
    scan_path: str,
    mutation: tuple[str, int, int],
    near_header: bool,
    chunk: int | None,
) -> None:
    """Damaged WAL: the same records counted, the same outcome at the same LSN."""
    kind, pos, value = mutation
    if near_header:
        pos = pos - pos % 8192 + pos % 48
    start, data = _window(sample)
    bad = _mutate(data, kind, pos, value)
    step = chunk or len(bad)
    _scan_both(start, bad, [*range(0, len(bad), step), len(bad)])


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    index=st.integers(min_value=0),
    at=st.integers(min_value=24, max_value=90),
    value=st.integers(min_value=0, max_value=255),
    v15=st.booleans(),
)
def test_body_checks_match_parse_body(
    sample: Sample, index: int, at: int, value: int, v15: bool
) -> None:
    """_body_fpi accepts exactly what _parse_body accepts (the headers of a damaged record)."""
    start, data = _window(sample)
    records, _ = _decode_bytes(start, data)
    raw = bytearray(records[index % len(records)].raw.tobytes())
    for body in (bytes(raw), None):
        if body is None:
            if at >= len(raw):
                return
            raw[at] = value
            body = bytes(raw)
        main_len = -1
        try:
            _, _, _, _, main_len, fpi = _parse_body(body, 0, len(body), v15, True)
        except _Bad:
            fpi = -1
        assert _body_fpi(body, 0, len(body), v15, True) == fpi
        if kernel.FASTSCAN is not None:
            # The compiled kernel's checks, its two shortcut shapes included.
            scanner = kernel.FASTSCAN.Scanner(SEG_SIZE)
            scanner.v15 = v15
            scanner.top_ok = True
            assert scanner._shape(body, 0, len(body)) == fpi
            if fpi >= 0:
                assert scanner.main_len == main_len


def test_scan_stats_shape_checks_with_valid_crc(sample: Sample, scan_path: str) -> None:
    """Block headers made inconsistent but with a correct CRC: only the shape checks see it."""
    start, whole = _window(sample)
    records, _ = _decode_bytes(start, whole)

    def in_page(r: Record) -> bool:
        return r.lsn % 8192 + r.tot_len <= 8192

    one_block = next(
        r
        for r in records
        if in_page(r) and len(r.blocks) == 1 and r.blocks[0].id == 0 and not r.blocks[0].has_image
        and not r.blocks[0].flags & 0x80 and r.main_len and r.tot_len == 46 + r.blocks[0].data_len
        + r.main_len
    )  # fmt: skip
    main_only = next(r for r in records if in_page(r) and not r.blocks and 0 < r.main_len < 256)
    cases = [(one_block, 25, v) for v in range(256)]  # fork_flags
    cases += [(one_block, at, v) for at in (24, 26, 27, 44, 45) for v in (0, 1, 2, 252, 253, 255)]
    cases += [(main_only, at, v) for at in (24, 25) for v in (0, 1, 2, 3, 252, 253, 254, 255)]
    for rec, at, value in cases:
        off = rec.lsn - start
        data = whole[: off + 16384 - off % 8192]  # (decoding the window 330 times is slow)
        bad = bytearray(data)
        bad[off + at] = value
        body = bytes(bad[off : off + rec.tot_len])
        fixed = crc32c(body[:20], crc32c(body[24:]))
        bad[off + 20 : off + 24] = fixed.to_bytes(4, "little")
        _scan_both(start, bytes(bad), [0, len(bad)])


# ---------------------------------------------------------------------------
# Replay: the compiled kernel's path against the pure path
# ---------------------------------------------------------------------------


@pytest.fixture
def compiled_kernel() -> None:
    if kernel.FASTSCAN is None:
        message = f"no compiled kernel: {kernel.reason()}"
        if REQUIRE_KERNEL:
            pytest.fail(message)
        pytest.skip(message)


def _replay_view(state: ReplayState) -> tuple[object, ...]:
    stopped = state.stopped
    return (
        state.replay_lsn,
        None if stopped is None else (type(stopped), stopped.lsn, stopped.reason),
        state.last_xact_time,
        list(state.xacts.items()),
        state.last_checkpoint,
        state.last_checkpoint_redo,
        state.timeline,
        state.decoder.position,
        state.decoder.last_lsn,
    )


def _replay_both(
    monkeypatch: pytest.MonkeyPatch, start: int, feeds: list[tuple[int, bytes, int]]
) -> ReplayState:
    """Feed (lsn, data, durable) to a compiled and a pure ReplayState; equal after every step."""
    compiled = ReplayState(start, SEG_SIZE)
    assert compiled._sink is not None
    with monkeypatch.context() as m:
        m.setattr(kernel, "FASTSCAN", None)
        pure = ReplayState(start, SEG_SIZE)
    assert pure._sink is None
    for lsn, data, durable in feeds:
        views = []
        for state in (compiled, pure):
            try:
                state.feed(lsn, data)
                state.advance(durable)
            except WalCorruption as e:  # a payload the replay refuses: both must
                views.append(("refused", e.lsn, e.reason))
                continue
            views.append(_replay_view(state))
        assert views[0] == views[1]
        if views[0][0] == "refused":
            break
    return compiled


def _end_of_record(lsn: int, tot_len: int) -> int:
    """xlogreader's EndRecPtr: the record's bytes laid out page by page, each page it
    continues onto starting with a page header (long on a segment's first page), then
    MAXALIGNed. Whether the last record crosses a page depends on the run's WAL."""
    pos, left = lsn, tot_len
    while True:
        take = min(left, XLOG_BLCKSZ - pos % XLOG_BLCKSZ)
        pos, left = pos + take, left - take
        if not left:
            return (pos + 7) & ~7
        pos += 40 if pos % SEG_SIZE == 0 else 24


def test_end_of_record_counts_the_page_headers_it_crosses() -> None:
    assert _end_of_record(0x184FFE0, 114) == 0x1850070  # 32 bytes, a short header, 82 bytes
    assert _end_of_record(0x184FF00, 114) == 0x184FF78  # within a page
    assert _end_of_record(0x1FFFFE0, 114) == 0x2000080  # onto a segment's first page


def test_replay_paths_agree_on_whole_timelines(
    sample: Sample, monkeypatch: pytest.MonkeyPatch, compiled_kernel: None
) -> None:
    """Segment by segment, each piece made durable one feed later (as the receiver offers WAL)."""
    for tli, dump, start in ((1, sample.t1, sample.t1_start), (2, sample.t2, sample.t2_start)):
        feeds = []
        pos = start - start % SEG_SIZE
        while (sample.wal.waldir / seg_name(tli, pos)).exists():
            data = (sample.wal.waldir / seg_name(tli, pos)).read_bytes()
            for i in range(0, SEG_SIZE, 300_000):  # not at page or record boundaries
                feeds.append((pos + i, data[i : i + 300_000], pos + i))
            pos += SEG_SIZE
        feeds.append((pos, b"", pos))
        state = _replay_both(monkeypatch, start, feeds)
        last = dump.records[-1]
        assert state.replay_lsn == _end_of_record(last.lsn, last.tot_len)
        assert isinstance(state.stopped, EndOfWal)
    # The kernel leaves only a few records to the general path (so the
    # comparison is really of the kernel).
    general_steps = 0
    step = WalDecoder._step

    def counting_step(self: WalDecoder) -> Record | None:
        nonlocal general_steps
        general_steps += 1
        return step(self)

    monkeypatch.setattr(WalDecoder, "_step", counting_step)
    state = ReplayState(sample.t1_start, SEG_SIZE)
    pos = sample.t1_start
    while (sample.wal.waldir / seg_name(1, pos)).exists():
        state.feed(pos, (sample.wal.waldir / seg_name(1, pos)).read_bytes())
        pos += SEG_SIZE
        state.advance(pos)
    assert general_steps < 0.05 * len(sample.t1.records)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=2 * SEG_SIZE - 1), max_size=30),
    lags=st.lists(st.integers(min_value=0, max_value=40_000), min_size=1, max_size=5),
    mutation=st.none() | mutations,
    run=st.sampled_from([1 << 20, 8192, 30_000]),
)
def test_replay_paths_agree_whatever_the_feeds_and_damage(
    sample: Sample,
    monkeypatch: pytest.MonkeyPatch,
    compiled_kernel: None,
    cuts: list[int],
    lags: list[int],
    mutation: tuple[str, int, int] | None,
    run: int,
) -> None:
    """Any pieces, durable positions lagging into the middle of records, damaged or not."""
    monkeypatch.setattr(decoder_module, "_KERNEL_RUN", run)  # (how often the kernel pauses)
    start, data = _window(sample)
    if mutation is not None:
        data = _mutate(data, *mutation)
    bounds = sorted({0, len(data), *cuts})
    feeds = [
        (start + a, data[a:b], start + max(0, b - lags[k % len(lags)]))
        for k, (a, b) in enumerate(itertools.pairwise(bounds))
    ]
    feeds.append((start + len(data), b"", start + len(data)))
    _replay_both(monkeypatch, start, feeds)


def test_replay_paths_agree_on_damaged_transaction_ends(
    sample: Sample, monkeypatch: pytest.MonkeyPatch, compiled_kernel: None
) -> None:
    """Commits and aborts changed but with a valid CRC: parsed by the kernel or refused alike."""
    records, _ = decode_files(sample.wal.waldir, 1, sample.t1_start)
    ends = [
        r
        for r in records
        if r.rmid == 1
        and r.info & 0x70 in (0x00, 0x20, 0x30, 0x40)
        and r.lsn % 8192 + r.tot_len <= 8192
        and r.lsn % SEG_SIZE > 8192
    ]
    chosen = ends[:2] + [r for r in ends if r.info & 0x80 and r.main_len > 16][:4]
    assert len(chosen) >= 4
    for rec in chosen:
        start = rec.lsn - rec.lsn % SEG_SIZE
        off = rec.lsn - start
        main_at = rec.tot_len - rec.main_len
        data = (sample.wal.waldir / seg_name(1, start)).read_bytes()[: off + 8192 - off % 8192]
        for at in range(main_at + 8, min(rec.tot_len, main_at + 24)):
            for value in (0x00, 0x01, 0x7F, 0x80, 0xFF):
                bad = bytearray(data)
                bad[off + at] = value
                body = bytes(bad[off : off + rec.tot_len])
                fixed = crc32c(body[:20], crc32c(body[24:]))
                bad[off + 20 : off + 24] = fixed.to_bytes(4, "little")
                _replay_both(monkeypatch, start, [(start, bytes(bad), start + len(bad))])


# ---------------------------------------------------------------------------
# waldump --stats in parallel parts against the serial scan
# ---------------------------------------------------------------------------


def _stats_both(monkeypatch: pytest.MonkeyPatch, *args: str) -> list[bool]:
    """Serial and parallel --stats give the same output; returns the join decisions made."""
    import walstream.cli.waldump.parallel as waldump

    joins: list[bool] = []
    decide = waldump._joins

    def recording(*a: object) -> bool:
        joins.append(decide(*a))  # type: ignore[arg-type]
        return joins[-1]

    monkeypatch.setattr(waldump, "_joins", recording)
    monkeypatch.setenv("WALSTREAM_WALDUMP_JOBS", "1")
    serial = run_ours(*args)
    for jobs in ("3", "8"):
        monkeypatch.setenv("WALSTREAM_WALDUMP_JOBS", jobs)
        assert run_ours(*args) == serial, jobs
    return joins


@pytest.mark.parametrize("mode", ["--stats", "--stats=record"])
def test_parallel_stats_are_the_serial_stats(
    sample: Sample, mode: str, monkeypatch: pytest.MonkeyPatch, scan_path: str
) -> None:
    waldir = str(sample.wal.waldir)
    joins = _stats_both(monkeypatch, mode, "-p", waldir, "-s", str(sample.t1_start))
    assert joins.count(True) >= 6  # (of 2 + 7: a part may start mid-record, where the crash was)
    _stats_both(monkeypatch, mode, "-p", waldir, "-t", "2", "-s", str(sample.t2_start))
    end = sample.t1_start + 9 * SEG_SIZE + 4321
    _stats_both(monkeypatch, mode, "-p", waldir, "-s", str(sample.t1_start), "-e", str(end))


def _damaged_copy(sample: Sample, directory: Path, segments: int, at: int, value: int) -> None:
    for i in range(segments):
        name = seg_name(1, sample.t1_start + i * SEG_SIZE)
        data = bytearray((sample.wal.waldir / name).read_bytes())
        if at // SEG_SIZE == i:
            data[at % SEG_SIZE] ^= value or 0x5A
        (directory / name).write_bytes(bytes(data))


def test_parallel_stats_with_damage_at_part_boundaries(
    sample: Sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scan_path: str
) -> None:
    """Damage where the parts meet: the join must refuse it and read on serially."""
    segments = 8
    joins = []
    for seg in range(1, segments):
        boundary = sample.t1_start + seg * SEG_SIZE
        first = next(r.lsn for r in sample.t1.records if r.lsn >= boundary) - sample.t1_start
        offsets = [seg * SEG_SIZE + off for off in (0, 5, 17, 30, 8192 + 17)]
        offsets += [first + 4, first + 9, first + 16]  # the first record a part reads
        for at in offsets:
            directory = tmp_path / f"{at}"
            directory.mkdir()
            _damaged_copy(sample, directory, segments, at, 0x21)
            joins += _stats_both(
                monkeypatch, "--stats", "-p", str(directory), "-s", str(sample.t1_start)
            )
            shutil.rmtree(directory)
    assert True in joins
    assert False in joins  # (so the serial fallback ran too)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    at=st.integers(min_value=0, max_value=8 * SEG_SIZE - 1),
    value=st.integers(min_value=0, max_value=255),
)
def test_parallel_stats_with_damage_anywhere(
    sample: Sample,
    scan_path: str,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    at: int,
    value: int,
) -> None:
    directory = tmp_path_factory.mktemp("damaged")
    _damaged_copy(sample, directory, 8, at, value)
    _stats_both(monkeypatch, "--stats", "-p", str(directory), "-s", str(sample.t1_start))
    shutil.rmtree(directory)
