"""The gRPC client store against a served sidecar process that is killed and restarted."""

from __future__ import annotations

import asyncio

from k1s0_event_store import EventEnvelope, GrpcEventStore, StreamId
from tests.conftest import create_schema, drop_schema
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar


async def test_subscription_resumes_after_the_sidecar_is_killed(pg: LocalPostgres) -> None:
    schema = await create_schema(pg.dsn, "cl")
    served = ServedSidecar(pg.dsn, schema).start()
    client = GrpcEventStore(served.grpc_target, timeout=5, retries=20)
    stream = StreamId("order", "resume")
    try:
        await client.append(stream, [EventEnvelope("E", {"i": i}) for i in range(10)])
        seen: list[int] = []
        got_ten = asyncio.Event()
        all_done = asyncio.Event()

        async def consume() -> None:
            async for event in client.subscribe_to_stream(stream, reconnect_delay=0.2):
                seen.append(event.version or 0)
                if len(seen) == 10:
                    got_ten.set()
                if len(seen) == 20:
                    all_done.set()
                    return

        task = asyncio.create_task(consume())
        await asyncio.wait_for(got_ten.wait(), 30)
        served.kill()  # the connection drops mid-subscription
        served.start()  # same ports; the client reconnects on its own
        # Appends retry safely through the outage window: every event carries an id.
        await client.append(stream, [EventEnvelope("E", {"i": i}) for i in range(10, 20)])
        await asyncio.wait_for(all_done.wait(), 60)
        await task
        assert seen == list(range(1, 21)), "resumed right after the last delivered event"
        assert [e.version for e in await client.load(stream)] == list(range(1, 21))
    finally:
        await client.close()
        served.stop()
        await drop_schema(pg.dsn, schema)
