"""PostgreSQL stopped (``pg_ctl -m immediate``) while a group-commit batch waits inside its
transaction for the append lock: every request of that batch is answered 503 / UNAVAILABLE (never
500), requests during the outage too, the sidecar recovers by itself once PostgreSQL is back, and
no acknowledged event is lost."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import asyncpg
import grpc
import pytest

from k1s0_event_store.schema import migrate
from tests.support.bursts import (
    AppendLock,
    Outcome,
    good_grpc_request,
    good_rest_body,
    grpc_append_raw,
    metric,
    rest_append,
    wait_for,
)
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar


@pytest.mark.slow
async def test_database_stopped_mid_batch_is_503_and_loses_nothing_acknowledged() -> None:
    pg = LocalPostgres(fsync=True)  # a crash test: commits must really be durable
    pg.start()
    schema = "crash"
    conn = await asyncpg.connect(pg.dsn)
    await migrate(conn, schema)
    await conn.close()
    served = ServedSidecar(pg.dsn, schema, env={"EVENTSTORE_DATABASE_CONNECT_TIMEOUT_SECONDS": "1"}).start()
    acknowledged: set[str] = set()
    try:
        async with (aiohttp.ClientSession(base_url=served.base_url) as http,
                    grpc.aio.insecure_channel(served.grpc_target) as channel):

            async def rest(i: int, eid: str) -> Outcome:
                return await rest_append(http, f"crash-r{i}", good_rest_body(eid, i))

            async def grpc_(i: int, eid: str) -> Outcome:
                return await grpc_append_raw(channel, good_grpc_request(f"crash-g{i}", eid, i))

            async def record(outcome: Outcome, eid: str) -> Outcome:
                if outcome.ok:
                    acknowledged.add(eid)
                return outcome

            # 1. Acknowledged writes before the crash.
            for i in range(20):
                for send in (rest, grpc_):
                    eid = str(uuid.uuid4())
                    assert (await record(await send(i, eid), eid)).ok

            # 2. A batch of 10 REST and 10 gRPC appends waits for the lock when PostgreSQL stops.
            async with AppendLock(pg.dsn, schema):
                ids = [str(uuid.uuid4()) for _ in range(20)]
                tasks = [asyncio.create_task(rest(100 + i, ids[i])) for i in range(10)]
                tasks += [asyncio.create_task(grpc_(100 + i, ids[10 + i])) for i in range(10)]

                async def all_waiting() -> bool:
                    return await metric(http, "eventstore_appends_pending") >= 20

                await wait_for(all_waiting, 20, "the batch to wait for the append lock")
                await asyncio.to_thread(pg.stop, "immediate")
                in_batch = await asyncio.gather(*tasks)
            for outcome, eid in zip(in_batch, ids, strict=True):
                await record(outcome, eid)
            statuses = sorted({str(o.status) for o in in_batch})
            codes = {o.code for o in in_batch}
            print(f"batch in flight at the crash: {statuses}, {codes}")
            assert set(statuses) <= {"503", "UNAVAILABLE"} and codes == {"SYS_EVSTORE_UNAVAILABLE"}, in_batch

            # 3. During the outage: 503 / UNAVAILABLE, answered promptly.
            started = time.monotonic()
            during = [await rest(200, str(uuid.uuid4())), await grpc_(200, str(uuid.uuid4()))]
            assert [o.code for o in during] == ["SYS_EVSTORE_UNAVAILABLE"] * 2, during
            assert time.monotonic() - started < 10

            # 4. PostgreSQL comes back; the sidecar recovers without a restart.
            await asyncio.to_thread(pg.start)
            restarted = time.monotonic()

            async def recovered() -> bool:
                eid = str(uuid.uuid4())
                outcome = await record(await rest(300, eid), eid)
                assert outcome.ok or outcome.code == "SYS_EVSTORE_UNAVAILABLE", outcome
                return outcome.ok

            await wait_for(recovered, 30, "appends to succeed again")
            print(f"appends succeeded again {time.monotonic() - restarted:.2f}s after PostgreSQL was back")
            # The refused batch can simply be retried with its event ids.
            retried = await asyncio.gather(*(rest(100 + i, ids[i]) for i in range(10)),
                                           *(grpc_(100 + i, ids[10 + i]) for i in range(10)))
            assert all(o.ok for o in retried), retried
            acknowledged.update(ids)
            assert "internal error" not in served.log(), served.log()
    finally:
        served.stop()
        if pg.pid() is None:
            await asyncio.to_thread(pg.start)
        conn = await asyncpg.connect(pg.dsn)
        try:
            stored = {str(r[0]) for r in await conn.fetch(f'SELECT event_id FROM "{schema}".events')}
        finally:
            await conn.close()
            pg.destroy()
    lost = acknowledged - stored
    print(f"acknowledged {len(acknowledged)}, stored {len(stored)}, lost {len(lost)}")
    assert not lost
