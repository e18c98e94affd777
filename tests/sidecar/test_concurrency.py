"""Real concurrent clients against a served sidecar; group commit; graceful shutdown under load."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import asyncpg
import pytest

from k1s0_event_store import (
    ConcurrencyError,
    EventEnvelope,
    EventStoreConfig,
    PostgresEventStore,
    prepare_append,
)
from k1s0_sidecar._group_commit import GroupCommitter
from tests.conftest import create_schema, drop_schema
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar


async def test_64_rest_clients_race_on_one_stream(sidecar: ServedSidecar, stream: str) -> None:
    target = 80
    wins: list[int] = []
    conflicts = 0
    start = asyncio.Event()

    async def client(i: int) -> None:
        nonlocal conflicts
        async with aiohttp.ClientSession(base_url=sidecar.base_url) as http:
            await start.wait()  # every client starts racing at once
            while True:
                async with http.get(f"/api/v1/streams/{stream}/events", params={"page_size": 1}) as r:
                    seen = (await r.json())["current_version"] if r.status == 200 else 0
                if seen >= target:
                    return
                body = {"events": [{"event_type": "Raced", "payload": {"client": i}}], "expected_version": seen}
                async with http.post(f"/api/v1/streams/{stream}/events", json=body) as r:
                    resp = await r.json()
                    if r.status == 201:
                        wins.append(resp["current_version"])
                    else:
                        assert r.status == 409, resp
                        assert resp["error"]["code"] == "SYS_EVSTORE_VERSION_CONFLICT"
                        conflicts += 1

    tasks = [asyncio.create_task(client(i)) for i in range(64)]
    await asyncio.sleep(0)
    start.set()
    await asyncio.gather(*tasks)
    assert sorted(wins) == list(range(1, target + 1)), "exactly one winner per version"
    assert conflicts > 0
    async with (
        aiohttp.ClientSession(base_url=sidecar.base_url) as http,
        http.get(f"/api/v1/streams/{stream}/events", params={"page_size": 200}) as r,
    ):
        body = await r.json()
    assert [e["version"] for e in body["events"]] == list(range(1, target + 1))


async def test_group_commit_batches_and_conflicts_fail_alone(pg: LocalPostgres) -> None:
    schema = await create_schema(pg.dsn, "gc")
    store = PostgresEventStore(EventStoreConfig(dsn=pg.dsn, schema=schema))
    sizes: list[int] = []
    committer = GroupCommitter(store.append_batch, max_batch=64, on_batch=sizes.append)
    committer.start()
    try:
        await store.append("hot-1", [EventEnvelope("E", {})])
        ok = [prepare_append(f"cold-{i}", [EventEnvelope("E", {"i": i})], 0) for i in range(40)]
        bad = [prepare_append("hot-1", [EventEnvelope("E", {})], 0) for _ in range(5)]  # hot-1 is at 1
        outcomes = await asyncio.gather(*(committer.submit(r) for r in ok + bad), return_exceptions=True)
        assert all(not isinstance(o, BaseException) and o.current_version == 1 for o in outcomes[:40])
        assert all(isinstance(o, ConcurrencyError) for o in outcomes[40:])
        assert max(sizes) > 1, "concurrent appends shared a transaction"
        assert sum(sizes) == 45
        for i in range(40):
            assert await store.current_version(f"cold-{i}") == 1
        assert await store.current_version("hot-1") == 1
    finally:
        await committer.close()
        await store.close()
        await drop_schema(pg.dsn, schema)


@pytest.mark.slow
async def test_sigterm_finishes_in_flight_and_loses_no_acknowledged_append(pg: LocalPostgres) -> None:
    schema = await create_schema(pg.dsn, "term")
    served = ServedSidecar(pg.dsn, schema).start()
    acknowledged: list[str] = []
    stop = asyncio.Event()
    enough = asyncio.Event()

    async def writer(w: int) -> None:
        async with aiohttp.ClientSession(base_url=served.base_url) as http:
            n = 0
            while not stop.is_set():
                eid = str(uuid.uuid4())
                body = {"events": [{"event_type": "E", "payload": {"n": n}, "event_id": eid}]}
                try:
                    async with http.post(f"/api/v1/streams/w-{w}/events", json=body) as r:
                        if r.status == 201:
                            acknowledged.append(eid)
                            if len(acknowledged) >= 300:
                                enough.set()
                except (aiohttp.ClientError, TimeoutError):
                    return  # the server went away: this append was not acknowledged
                n += 1

    writers = [asyncio.create_task(writer(w)) for w in range(16)]
    await enough.wait()
    code = await asyncio.to_thread(served.terminate)
    stop.set()
    await asyncio.gather(*writers)
    assert code == 0, served.log()
    conn = await asyncpg.connect(pg.dsn)
    try:
        stored = {str(r[0]) for r in await conn.fetch(f'SELECT event_id FROM "{schema}".events')}
    finally:
        await conn.close()
    assert set(acknowledged) <= stored, "every acknowledged append is committed"
    await drop_schema(pg.dsn, schema)
