"""The monitor without PostgreSQL: metrics text, status JSON, fsync histogram, lag clock, HTTP.

The exposition text is read back with prometheus_client's own parser (the
one Prometheus's Python tooling uses) and checked line by line against the
text format 0.0.4's grammar; the HTTP server is driven over real sockets,
including by clients that misbehave.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from walstream.lsn import LSN
from walstream.monitor import MonitorError, MonitorServer, Snapshot
from walstream.monitor import metrics as m
from walstream.monitor import status as s
from walstream.receiver import ReceiverStatus
from walstream.receiver.policy import WalEndClock
from walstream.sender.walsender import WalSenderStatus
from walstream.storage.latency import FSYNC_BUCKETS, LatencyHistogram

NOW = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


def upstream(**kw: object) -> ReceiverStatus:
    values: dict[str, object] = dict(
        state="streaming", host="db1:5432", timeline=2, write=LSN(0x3000100),
        flush=LSN(0x3000000), apply=LSN(0x2000000), server_wal_end=LSN(0x3000200),
        bytes_per_second=1234.5, segments_completed=7, lag_seconds=0.25,
        bytes_received=50_000_000, errors=3,
    )  # fmt: skip
    values.update(kw)
    return ReceiverStatus(**values)  # type: ignore[arg-type]


def client(pid: int = 10001, **kw: object) -> WalSenderStatus:
    values: dict[str, object] = dict(
        pid=pid, usename="repl", application_name="standby1", client_addr="127.0.0.1",
        client_port=40000 + pid % 1000, backend_start=NOW - timedelta(minutes=5),
        backend_xmin=None, state="streaming", sent_lsn=LSN(0x3000200), write_lsn=LSN(0x3000200),
        flush_lsn=LSN(0x3000100), replay_lsn=LSN(0x3000000), write_lag=0.001, flush_lag=0.002,
        replay_lag=0.003, sync_priority=1, sync_state="sync", reply_time=NOW, slot_name=None,
        bytes_sent=4096,
    )  # fmt: skip
    values.update(kw)
    return WalSenderStatus(**values)  # type: ignore[arg-type]


def histogram(*durations: float) -> LatencyHistogram:
    h = LatencyHistogram()
    for d in durations:
        h.observe(d)
    return h


def snapshot(**kw: object) -> Snapshot:
    values: dict[str, object] = dict(
        taken_at=NOW, upstream=upstream(), clients=(client(),),
        fsync=histogram(0.0003, 0.002, 0.7).snapshot(),
    )  # fmt: skip
    values.update(kw)
    return Snapshot(**values)  # type: ignore[arg-type]


# -- the text format -------------------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(
    rf"({_NAME})(\{{(?:[a-zA-Z_][a-zA-Z0-9_]*={_LABEL_VALUE})(?:,[a-zA-Z_][a-zA-Z0-9_]*="
    rf"{_LABEL_VALUE})*\}})? (-?[0-9.e+-]+|\+Inf|-Inf|NaN)"
)
_SUFFIXES = ("_bucket", "_sum", "_count")


def check_grammar(text: str) -> None:
    """Text format 0.0.4 line by line: HELP then TYPE first, each family's samples together."""
    assert text.endswith("\n")
    families: list[str] = []
    kinds: dict[str, str] = {}
    for line in text[:-1].split("\n"):  # \n only: other line breaks are label text
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert re.fullmatch(_NAME, name), line
            assert name not in families, line
            families.append(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == families[-1], line
            assert name not in kinds, line
            assert kind in ("counter", "gauge", "histogram"), line
            assert kind != "counter" or name.endswith("_total"), line
            kinds[name] = kind
        else:
            match = _SAMPLE.fullmatch(line)
            assert match, line
            name, family = match.group(1), families[-1]
            assert name == family or (
                kinds[family] == "histogram" and name in [family + x for x in _SUFFIXES]
            ), f"{line} outside its family {family}"
        assert line.startswith("walstream_") or line.split(" ")[2].startswith("walstream_"), line


def parse(text: str) -> dict[str, Metric]:
    check_grammar(text)
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Metric], name: str, **labels: str) -> float:
    """The one sample named ``name`` (``_total``, ``_sum``... included) with these labels."""
    found = [
        x.value
        for family in families.values()
        for x in family.samples
        if x.name == name and all(x.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_upstream_metrics_are_the_receivers_status() -> None:
    up = upstream()
    families = parse(m.render(snapshot(clients=None), version="0.1"))
    assert value(families, "walstream_build_info", version="0.1") == 1
    assert value(families, "walstream_upstream_write_lsn_bytes") == up.write
    assert value(families, "walstream_upstream_flush_lsn_bytes") == up.flush
    assert value(families, "walstream_upstream_apply_lsn_bytes") == up.apply
    assert value(families, "walstream_upstream_server_wal_end_lsn_bytes") == up.server_wal_end
    assert value(families, "walstream_upstream_lag_bytes") == up.lag_bytes == 0x200
    assert value(families, "walstream_upstream_lag_seconds") == 0.25
    assert value(families, "walstream_upstream_timeline") == 2
    assert value(families, "walstream_upstream_server_info", host="db1:5432") == 1
    assert families["walstream_upstream_received_bytes"].type == "counter"
    assert value(families, "walstream_upstream_received_bytes_total") == 50_000_000
    assert value(families, "walstream_upstream_errors_total") == 3
    assert value(families, "walstream_segments_written_total") == 7
    assert value(families, "walstream_segments_removed_total") == 0
    states = {x.labels["state"]: x.value for x in families["walstream_upstream_state"].samples}
    assert states == {"connecting": 0, "streaming": 1, "waiting": 0, "stopped": 0}
    assert not any(name.startswith("walstream_client") for name in families)


def test_an_unknown_state_is_listed_too_and_nulls_are_left_out() -> None:
    families = parse(m.render(snapshot(upstream=upstream(state="new", host=None, timeline=None))))
    states = {x.labels["state"]: x.value for x in families["walstream_upstream_state"].samples}
    assert states["new"] == 1
    assert sum(states.values()) == 1
    assert "walstream_upstream_timeline" not in families
    assert "walstream_upstream_server_info" not in families


def test_fsync_histogram_is_cumulative_with_sum_and_count() -> None:
    families = parse(m.render(snapshot()))
    h = families["walstream_fsync_duration_seconds"]
    assert h.type == "histogram"
    buckets = [(x.labels["le"], x.value) for x in h.samples if x.name.endswith("_bucket")]
    assert [le for le, _ in buckets] == [*(m.format_value(b) for b in FSYNC_BUCKETS), "+Inf"]
    counts = dict(buckets)
    assert counts["0.00025"] == 0
    assert counts["0.0005"] == 1
    assert counts["0.0025"] == 2
    assert counts["0.5"] == 2
    assert counts["1.0"] == 3
    assert counts["+Inf"] == 3
    assert value(families, "walstream_fsync_duration_seconds_count") == 3
    assert value(families, "walstream_fsync_duration_seconds_sum") == pytest.approx(0.7023)


def test_per_client_series_carry_application_name_pid_and_address() -> None:
    rows = (
        client(10001),
        client(10002, application_name="two", client_addr=None, client_port=-1,
               sync_state="potential", sync_priority=2, write_lag=None, flush_lag=None,
               replay_lag=None, write_lsn=None, flush_lsn=None, replay_lsn=None,
               reply_time=None, backend_xmin=745, bytes_sent=0, state="catchup"),
    )  # fmt: skip
    families = parse(m.render(snapshot(clients=rows, upstream=None, fsync=None)))
    assert "walstream_upstream_state" not in families
    assert value(families, "walstream_sender_connections") == 2
    one = {"application_name": "standby1", "pid": "10001", "client_addr": "127.0.0.1"}
    assert value(families, "walstream_client_sent_lsn_bytes", **one) == 0x3000200
    assert value(families, "walstream_client_write_lsn_bytes", **one) == 0x3000200
    assert value(families, "walstream_client_flush_lsn_bytes", **one) == 0x3000100
    assert value(families, "walstream_client_replay_lsn_bytes", **one) == 0x3000000
    assert value(families, "walstream_client_write_lag_seconds", **one) == 0.001
    assert value(families, "walstream_client_flush_lag_seconds", **one) == 0.002
    assert value(families, "walstream_client_replay_lag_seconds", **one) == 0.003
    assert value(families, "walstream_client_sent_bytes_total", **one) == 4096
    assert families["walstream_client_sent_bytes"].type == "counter"
    assert value(families, "walstream_client_reply_time_seconds", **one) == NOW.timestamp()
    # The Unix-socket client: no address label; its NULLs are no series at all.
    two = {"application_name": "two", "pid": "10002"}
    assert value(families, "walstream_client_sync_priority", **two) == 2
    assert value(families, "walstream_client_backend_xmin", **two) == 745
    for name in ("write_lsn_bytes", "flush_lag_seconds", "reply_time_seconds"):
        samples = families[f"walstream_client_{name}"].samples
        assert [x.labels["pid"] for x in samples] == ["10001"], name
    sync = {
        (x.labels["pid"], x.labels["sync_state"]): x.value
        for x in families["walstream_client_sync_state"].samples
    }
    assert sync[("10001", "sync")] == 1
    assert sync[("10002", "potential")] == 1
    assert sum(sync.values()) == 2
    assert len(sync) == 8
    state = {
        (x.labels["pid"], x.labels["state"]): x.value
        for x in families["walstream_client_state"].samples
    }
    assert state[("10002", "catchup")] == 1
    assert state[("10001", "streaming")] == 1


def test_a_sender_without_clients_still_says_so() -> None:
    families = parse(m.render(snapshot(clients=(), upstream=None, fsync=None)))
    assert value(families, "walstream_sender_connections") == 0
    assert families["walstream_client_flush_lsn_bytes"].samples == []


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=40))
def test_any_application_name_survives_the_label_escaping(name: str) -> None:
    # PostgreSQL takes any string without NUL as application_name (it keeps ASCII only).
    name = name.replace("\x00", "")
    families = parse(m.render(snapshot(clients=(client(application_name=name),))))
    (sample,) = families["walstream_client_sent_lsn_bytes"].samples
    assert sample.labels["application_name"] == name


def test_escaping_rules() -> None:
    assert m.escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert m.escape_help('a\\b"c\nd') == 'a\\\\b"c\\nd'  # quotes stay in HELP
    assert [m.format_value(v) for v in (3, 0.5, 1e-05, float("inf"), float("-inf"))] == [
        "3", "0.5", "1e-05", "+Inf", "-Inf",
    ]  # fmt: skip
    assert m.format_value(float("nan")) == "NaN"


# -- /status -----------------------------------------------------------------------------


def test_status_document_has_pg_stat_replications_columns_and_text_lsns() -> None:
    doc = json.loads(s.render(snapshot()))
    assert list(doc) == ["upstream", "clients"]
    up = doc["upstream"]
    assert up["timeline"] == 2
    assert (up["write_lsn"], up["flush_lsn"]) == ("0/3000100", "0/3000000")
    assert up["apply_lsn"] == "0/2000000"
    assert up["server_wal_end_lsn"] == "0/3000200"
    assert (up["lag_bytes"], up["lag_seconds"]) == (0x200, 0.25)
    (row,) = doc["clients"]
    assert tuple(row)[: len(s.PG_STAT_REPLICATION_COLUMNS)] == s.PG_STAT_REPLICATION_COLUMNS
    assert row["sent_lsn"] == "0/3000200"
    assert row["replay_lsn"] == "0/3000000"
    assert row["reply_time"] == "2025-03-04T05:06:07.890123+00:00"
    assert datetime.fromisoformat(row["backend_start"]) == NOW - timedelta(minutes=5)
    assert (row["write_lag"], row["usesysid"], row["client_hostname"]) == (0.001, None, None)
    assert row["bytes_sent"] == 4096


def test_status_without_roles() -> None:
    assert json.loads(s.render(Snapshot(taken_at=NOW))) == {"upstream": None, "clients": []}
    row = json.loads(s.render(snapshot(clients=(client(sent_lsn=None, reply_time=None),))))
    assert row["clients"][0]["sent_lsn"] is None
    assert row["clients"][0]["reply_time"] is None


# -- the fsync histogram ------------------------------------------------------------------


@given(st.lists(st.floats(min_value=0, max_value=30, allow_nan=False), max_size=200))
def test_histogram_counts_each_duration_at_or_below_each_bound(durations: list[float]) -> None:
    snap = histogram(*durations).snapshot()
    assert snap.count == len(durations)
    assert snap.sum == pytest.approx(sum(durations))
    for bound, count in snap.buckets:
        assert count == sum(1 for d in durations if d <= bound)


def test_histogram_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing"):
        LatencyHistogram((0.1, 0.01))
    with pytest.raises(ValueError, match="increasing"):
        LatencyHistogram(())


# -- the lag clock -------------------------------------------------------------------------


def test_lag_is_how_long_the_first_unstored_wal_has_been_known() -> None:
    clock = WalEndClock(step=0.01)
    clock.seen(1000, now=10.0, stored=0)
    clock.seen(2000, now=11.0, stored=0)
    assert clock.lag(stored=0, wal_end=2000, now=12.0) == 2.0
    assert clock.lag(stored=1000, wal_end=2000, now=12.0) == 1.0  # 1000 is stored: 2000 is next
    assert clock.lag(stored=2000, wal_end=2000, now=12.0) == 0.0  # caught up
    clock.forget()
    assert clock.lag(stored=0, wal_end=2000, now=12.0) == 0.0  # nothing known since the fork


def test_within_a_step_the_last_sample_moves_on_keeping_its_time() -> None:
    clock = WalEndClock(step=0.01)
    clock.seen(1000, now=10.0, stored=0)
    clock.seen(1500, now=10.005, stored=0)  # within the step: (1500, 10.0)
    assert clock.lag(stored=1200, wal_end=1500, now=11.0) == 1.0  # over by 5 ms, never under


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 500), st.floats(0, 0.05)), min_size=1, max_size=60),
    st.integers(2, 8),
    st.data(),
)
def test_lag_is_never_under_and_at_most_a_step_over(
    steps: list[tuple[int, float]], size: int, data: st.DataObject
) -> None:
    """Against every (end, time) kept exactly: never under; at most a step over while not full."""
    step = 0.01
    small, large = WalEndClock(step=step, size=size), WalEndClock(step=step, size=10_000)
    exact: list[tuple[int, float]] = []
    end, now, stored = 0, 0.0, 0
    for grow, dt in steps:
        end, now = end + grow, now + dt
        stored = data.draw(st.integers(stored, end))  # what is stored only moves forward
        for clock in (small, large):
            clock.seen(end, now, stored)
        exact.append((end, now))
        later = now + data.draw(st.floats(0, 1))
        true = next((later - t for e, t in exact if e > stored), 0.0)
        assert small.lag(stored, end, later) >= true - 1e-9
        assert true - 1e-9 <= large.lag(stored, end, later) <= true + step + 1e-9


# -- the HTTP server --------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[Callable[..., MonitorServer]]:
    made: list[MonitorServer] = []

    def make(
        collect: Callable[[], Snapshot] = snapshot, port: int = 0, **kw: float
    ) -> MonitorServer:
        server = MonitorServer("127.0.0.1", port, collect, **kw)  # type: ignore[arg-type]
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("ascii").split("\r\n")
    headers = {k.lower(): v for k, v in (h.split(": ", 1) for h in header_lines)}
    return int(status_line.split(" ")[1]), headers, body


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await exchange(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def test_metrics_and_status_over_http(served: Callable[..., MonitorServer]) -> None:
    server = served()
    await server.start()
    port = server.addresses[0][1]
    code, headers, body = await get(port, "/metrics")
    assert code == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert value(parse(body.decode()), "walstream_upstream_timeline") == 2
    code, headers, body = await get(port, "/status?pretty=1")
    assert (code, headers["content-type"]) == (200, "application/json")
    assert json.loads(body)["upstream"]["flush_lsn"] == "0/3000000"
    code, headers, body = await get(port, "/metrics", "HEAD")
    assert code == 200
    assert body == b""
    assert int(headers["content-length"]) > 0
    assert (await get(port, "/"))[0] == 404
    assert (await get(port, "/metricsx"))[0] == 404
    code, headers, _ = await get(port, "/metrics", "POST")
    assert (code, headers["allow"]) == (405, "GET, HEAD")
    # A request line with LF only is still a request (RFC 9112 tolerates it).
    assert (await exchange(port, b"GET /metrics HTTP/1.0\n\n"))[0] == 200


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200) + b"\r\n\r\n",  # TLS hello
        b"GET\r\n\r\n",
        b"GET /metrics\r\n\r\n",  # HTTP/0.9
        b"GET http://x/metrics HTTP/1.1\r\n\r\n",  # absolute form: not a proxy
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET /metrics HTTP/1.1 extra\r\n\r\n",
        b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
    ],
)
async def test_garbage_is_a_bad_request(
    served: Callable[..., MonitorServer], garbage: bytes
) -> None:
    server = served()
    await server.start()
    port = server.addresses[0][1]
    assert (await exchange(port, garbage))[0] == 400
    assert (await get(port, "/metrics"))[0] == 200


async def test_a_bad_request_line_is_answered_before_the_head_ends(
    served: Callable[..., MonitorServer],
) -> None:
    server = served(read_timeout=600)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.addresses[0][1])
    writer.write(b"\x00\x01garbage\r\nX-More: ")  # the head goes on, never ending
    try:
        assert (await asyncio.wait_for(reader.read(), 30)).startswith(b"HTTP/1.1 400 ")
    finally:
        writer.close()


async def test_a_huge_head_is_refused_without_reading_it_all(
    served: Callable[..., MonitorServer],
) -> None:
    server = served(max_request_bytes=4096)
    await server.start()
    port = server.addresses[0][1]
    one_line = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    many_lines = b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 2000 + b"\r\n"
    for request in (one_line, many_lines):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        # The server answers and closes before taking it all: a reset on our side is fine.
        raw = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 431 "), raw[:80]
    assert (await get(port, "/metrics"))[0] == 200


async def test_slow_and_silent_clients_are_cut_off_and_others_served(
    served: Callable[..., MonitorServer],
) -> None:
    server = served(read_timeout=0.5)
    await server.start()
    port = server.addresses[0][1]
    silent = await asyncio.open_connection("127.0.0.1", port)
    loris = await asyncio.open_connection("127.0.0.1", port)
    loris[1].write(b"GET /metrics HTTP/1.1\r\n")

    async def drip() -> None:
        # A header byte every 50 ms, never the end of the head, until the server hangs up.
        with contextlib.suppress(ConnectionError):
            while True:
                loris[1].write(b"X")
                await loris[1].drain()
                await asyncio.sleep(0.05)

    dripping = asyncio.ensure_future(drip())
    try:
        # Served while both hang.
        assert (await get(port, "/status"))[0] == 200
        for reader, _ in (silent, loris):
            raw = await asyncio.wait_for(reader.read(), 30)  # the server ended it
            assert raw == b"" or raw.startswith(b"HTTP/1.1 408 "), raw[:80]
    finally:
        dripping.cancel()
        for _, writer in (silent, loris):
            writer.close()
    assert (await get(port, "/metrics"))[0] == 200


async def test_connection_flood_is_bounded(served: Callable[..., MonitorServer]) -> None:
    server = served(max_connections=4, read_timeout=30)
    await server.start()
    port = server.addresses[0][1]
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
    try:
        for _ in range(3000):  # let the server take them
            if len(server._handlers) == 4:
                break
            await asyncio.sleep(0.01)
        try:
            code, _, _ = await get(port, "/metrics")
            assert code == 503
        except ConnectionResetError:
            pass  # the 503 was sent, but the unread request made the close a reset
    finally:
        for _, writer in idle:
            writer.close()
    for _ in range(3000):  # the idle ones' handlers end as their sockets close
        if len(server._handlers) == 0:
            break
        await asyncio.sleep(0.01)
    assert (await get(port, "/metrics"))[0] == 200


async def test_a_client_that_does_not_read_a_big_answer_is_dropped(
    served: Callable[..., MonitorServer],
) -> None:
    rows = tuple(client(10000 + i, application_name=f"s{i}") for i in range(5000))
    server = served(lambda: snapshot(clients=rows), read_timeout=0.5)
    await server.start()
    port = server.addresses[0][1]
    _, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
    writer.transport.pause_reading()  # never takes the ~10 MB answer  # type: ignore[attr-defined]
    writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
    try:
        for _ in range(3000):
            if not server._handlers:
                break
            await asyncio.sleep(0.01)
        assert not server._handlers  # given up on it
        code, _, body = await get(port, "/status")
        assert code == 200
        assert len(json.loads(body)["clients"]) == 5000
    finally:
        writer.close()


async def test_a_failing_collect_is_a_500_and_the_server_goes_on(
    served: Callable[..., MonitorServer],
) -> None:
    calls = []

    def collect() -> Snapshot:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return snapshot()

    server = served(collect)
    await server.start()
    port = server.addresses[0][1]
    assert (await get(port, "/metrics"))[0] == 500
    assert (await get(port, "/metrics"))[0] == 200


async def test_close_drops_connections_and_stops_listening(
    served: Callable[..., MonitorServer],
) -> None:
    server = served(read_timeout=60)
    await server.start()
    port = server.addresses[0][1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0)
    server.close()
    await asyncio.wait_for(server.wait_closed(), 30)
    assert await asyncio.wait_for(reader.read(), 30) == b""
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_taken_port_is_an_error_at_start(served: Callable[..., MonitorServer]) -> None:
    first = served()
    await first.start()
    with pytest.raises(MonitorError, match="could not listen for HTTP"):
        await served(port=first.addresses[0][1]).start()


# -- a real walsender session's row ---------------------------------------------------------


def test_a_walsender_sessions_row_in_metrics_and_status() -> None:
    """The sans-IO walsender streaming in memory (tests/test_sender_session.py's pipe)."""
    from walstream.protocol.replication import XLogData

    from .test_sender_session import SEG as SESSION_SEG
    from .test_sender_session import MemorySource, Pipe, _stream, core

    pipe = Pipe(core(MemorySource(3 * SESSION_SEG + 5000)))
    pipe.login(application_name='odd "name"\\')
    sent = [e for e in _stream(pipe, "START_REPLICATION 0/200000 TIMELINE 1")
            if isinstance(e, XLogData)]  # fmt: skip
    row = pipe.session.status(0)
    assert row.bytes_sent == sum(len(e.data) for e in sent) == SESSION_SEG + 5000
    families = parse(m.render(Snapshot(taken_at=NOW, clients=(row,))))
    labels = {"application_name": 'odd "name"\\', "pid": str(row.pid), "client_addr": "127.0.0.1"}
    assert value(families, "walstream_client_sent_lsn_bytes", **labels) == 3 * SESSION_SEG + 5000
    assert value(families, "walstream_client_sent_bytes_total", **labels) == row.bytes_sent
    assert value(families, "walstream_client_state", state="streaming", **labels) == 1
    assert value(families, "walstream_client_sync_state", sync_state="async", **labels) == 1
    assert "walstream_client_flush_lsn_bytes" not in {
        x.name for f in families.values() for x in f.samples
    }  # no reply yet: NULL in pg_stat_replication, no series here
    (doc,) = json.loads(s.render(Snapshot(taken_at=NOW, clients=(row,))))["clients"]
    assert doc["sent_lsn"] == "0/301388"  # 3 MB + 5000, as PostgreSQL 15 writes an LSN
    assert (doc["flush_lsn"], doc["state"], doc["client_port"]) == (None, "streaming", 5555)
