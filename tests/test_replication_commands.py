"""Replication commands against real PostgreSQL 15, 16 and 18, with the server as oracle."""

from __future__ import annotations

import asyncio
import time

import pytest

import walstream
from walstream import LSN, ServerError
from walstream.client import ReplicationConnection, ReplicationStream
from walstream.protocol.replication import PrimaryKeepalive, XLogData

from .pgcluster import PgCluster

VERSIONS = [15, 16, 18]


def _connect(server: PgCluster, **extra: str) -> str:
    return server.conninfo("scram_user", "scrampass", **extra)


def _segment_file(server: PgCluster, timeline: int, lsn: int, seg_size: int) -> bytes:
    segno = lsn // seg_size
    per_id = 0x100000000 // seg_size
    name = f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"
    return (server.datadir / "pg_wal" / name).read_bytes()


async def test_identify_system_matches_pg_control(pg_server: PgCluster) -> None:
    sysid = int(pg_server.psql("SELECT system_identifier FROM pg_control_system()"))
    before = LSN.parse(pg_server.psql("SELECT pg_current_wal_flush_lsn()"))
    async with await walstream.connect(_connect(pg_server)) as conn:
        system = await conn.identify_system()
    after = LSN.parse(pg_server.psql("SELECT pg_current_wal_flush_lsn()"))
    assert system.systemid == sysid
    assert system.timeline == 1
    assert before <= system.xlogpos <= after


async def test_show(pg_server: PgCluster) -> None:
    async with await walstream.connect(_connect(pg_server)) as conn:
        assert await conn.show("wal_segment_size") == pg_server.psql("SHOW wal_segment_size")
        assert await conn.show("data_directory_mode") == pg_server.psql("SHOW data_directory_mode")
        with pytest.raises(ServerError) as info:
            await conn.show("no_such_setting")
        assert info.value.sqlstate == "42704"
        # The connection survives an ERROR.
        assert (await conn.identify_system()).timeline == 1


async def test_sql_is_refused_on_a_physical_connection(pg_server: PgCluster) -> None:
    async with await walstream.connect(_connect(pg_server)) as conn:
        with pytest.raises(ServerError) as info:
            await conn.execute("SELECT 1")
        assert info.value.sqlstate == "0A000"


async def test_slot_lifecycle(pg_server: PgCluster) -> None:
    name = f"ws_slot_{pg_server.version}"
    async with await walstream.connect(_connect(pg_server)) as conn:
        slot = await conn.create_replication_slot(name)
        assert slot.slot_name == name
        assert (
            pg_server.psql(
                "SELECT slot_type, restart_lsn IS NULL FROM pg_replication_slots "
                f"WHERE slot_name = '{name}'"
            )
            == "physical|t"
        )
        position = await conn.read_replication_slot(name)
        assert position is not None
        assert position.slot_type == "physical"
        assert position.restart_lsn is None
        assert position.restart_tli is None

        with pytest.raises(ServerError) as info:
            await conn.create_replication_slot(name)
        assert info.value.sqlstate == "42710"
        await conn.drop_replication_slot(name, wait=True)
        assert await conn.read_replication_slot(name) is None
        with pytest.raises(ServerError) as info:
            await conn.drop_replication_slot(name)
        assert info.value.sqlstate == "42704"

        reserved = await conn.create_replication_slot(name, reserve_wal=True)
        assert reserved.slot_name == name
        position = await conn.read_replication_slot(name)
        assert position is not None
        assert position.restart_tli == 1
        server_restart = pg_server.psql(
            f"SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{name}'"
        )
        assert position.restart_lsn == LSN.parse(server_restart)
        await conn.drop_replication_slot(name)


async def test_temporary_slot_goes_away_with_the_connection(pg_server: PgCluster) -> None:
    name = f"ws_temp_{pg_server.version}"
    conn = await walstream.connect(_connect(pg_server))
    await conn.create_replication_slot(name, temporary=True, reserve_wal=True)
    assert (
        pg_server.psql(f"SELECT temporary FROM pg_replication_slots WHERE slot_name = '{name}'")
        == "t"
    )
    await conn.close()
    for _ in range(100):
        if not pg_server.psql(f"SELECT 1 FROM pg_replication_slots WHERE slot_name = '{name}'"):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("temporary slot outlived its connection")


async def _stream_until(
    conn: ReplicationConnection, start: LSN, timeline: int, target: LSN
) -> tuple[bytes, ReplicationStream]:
    stream = await conn.start_replication(start, timeline=timeline)
    received = bytearray()
    position = start
    deadline = time.monotonic() + 30
    while position < target:
        assert time.monotonic() < deadline, f"stalled at {position}, waiting for {target}"
        for event in await stream.read():
            if isinstance(event, XLogData):
                assert event.data_start == position, "XLogData must be contiguous"
                received += event.data
                position = event.data_end
    return bytes(received), stream


async def test_start_replication_streams_the_servers_wal(pg_server: PgCluster) -> None:
    app = f"ws_stream_{pg_server.version}"
    async with await walstream.connect(_connect(pg_server, application_name=app)) as conn:
        system = await conn.identify_system()
        seg_size = int(
            pg_server.psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
        )
        start = LSN(system.xlogpos - system.xlogpos % seg_size)
        pg_server.psql(
            "CREATE TABLE IF NOT EXISTS ws_rows(x int);"
            "INSERT INTO ws_rows SELECT generate_series(1, 2000)"
        )
        target = LSN.parse(pg_server.psql("SELECT pg_current_wal_flush_lsn()"))
        # Keep the target inside the start segment so the file on disk is the oracle.
        if target // seg_size != start // seg_size:
            target = LSN(start + seg_size)
        data, stream = await _stream_until(conn, start, system.timeline, target)
        on_disk = _segment_file(pg_server, system.timeline, start, seg_size)
        assert data[: target - start] == on_disk[: target - start]

        position = LSN(start + len(data))
        stream.send_status(position, position, 0)
        row = ""
        for _ in range(200):
            row = pg_server.psql(
                "SELECT state, write_lsn, flush_lsn, replay_lsn IS NULL "
                f"FROM pg_stat_replication WHERE application_name = '{app}'"
            )
            if row.startswith("streaming|") and LSN.parse(row.split("|")[1]) == position:
                break
            await asyncio.sleep(0.02)
        state, write, flush, _ = row.split("|")
        assert state == "streaming"
        assert LSN.parse(write) == position
        assert LSN.parse(flush) == position

        # A status update that asks for a reply gets a keepalive back.
        stream.send_status(position, position, 0, reply_requested=True)
        got_keepalive = False
        for _ in range(50):
            events = await asyncio.wait_for(stream.read(), 10)
            if any(isinstance(e, PrimaryKeepalive) for e in events):
                got_keepalive = True
                break
        assert got_keepalive

        assert await stream.end() is None
        # Back to idle: commands work again on the same connection.
        assert (await conn.identify_system()).systemid == system.systemid


async def test_start_replication_past_the_end_is_the_servers_error(pg_server: PgCluster) -> None:
    async with await walstream.connect(_connect(pg_server)) as conn:
        system = await conn.identify_system()
        ahead = LSN(system.xlogpos + 0x100000000)
        stream = await conn.start_replication(ahead, timeline=system.timeline)

        async def drain() -> None:
            while await stream.read():
                pass

        with pytest.raises(ServerError) as info:
            await drain()
        assert "ahead of the WAL flush position" in info.value.message
        assert (await conn.identify_system()).systemid == system.systemid


@pytest.mark.parametrize("version", VERSIONS, ids=[f"pg{v}" for v in VERSIONS])
async def test_timeline_history_and_end_of_timeline(pg_factory, version: int) -> None:  # type: ignore[no-untyped-def]
    primary: PgCluster = pg_factory(version, wal_segsize_mb=1)
    primary.psql("CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 1000)")
    standby: PgCluster = primary.make_standby()
    primary.psql("INSERT INTO t SELECT generate_series(1, 1000)")
    standby.wait_for_replay(LSN.parse(primary.psql("SELECT pg_current_wal_flush_lsn()")))
    standby.promote()
    standby.psql("INSERT INTO t VALUES (1)")
    seg_size = 1024 * 1024

    async with await walstream.connect(_connect(standby)) as conn:
        system = await conn.identify_system()
        assert system.timeline == 2
        history = await conn.timeline_history(2)
        assert history.filename == "00000002.history"
        assert history.content == (standby.datadir / "pg_wal" / "00000002.history").read_bytes()
        parent, switch_text, _reason = history.content.decode().splitlines()[0].split("\t")
        assert parent == "1"
        switch = LSN.parse(switch_text)

        with pytest.raises(ServerError) as info:
            await conn.timeline_history(3)
        assert info.value.sqlstate == "58P01"

        # Streaming the old timeline ends at the switch point with the next timeline.
        seg_start = LSN(switch - switch % seg_size)
        stream = await conn.start_replication(seg_start, timeline=1)
        position = seg_start
        while events := await stream.read():
            for event in events:
                if isinstance(event, XLogData):
                    assert event.data_start == position
                    position = event.data_end
        assert position == switch
        next_timeline = await stream.end()
        assert next_timeline is not None
        assert (next_timeline.timeline, next_timeline.start) == (2, switch)

        # Exactly at the switch point the server answers without entering COPY.
        stream = await conn.start_replication(switch, timeline=1)
        assert stream.server_ended
        assert await stream.read() == []
        next_timeline = await stream.end()
        assert next_timeline is not None
        assert (next_timeline.timeline, next_timeline.start) == (2, switch)

        # And the new timeline streams from there.
        stream = await conn.start_replication(seg_start, timeline=2)
        events = await stream.read()
        assert any(isinstance(e, XLogData) for e in events)
        await stream.end()
