"""Batched gRPC subscriptions (``max_batch``) against a served sidecar on real PostgreSQL.

A batched subscription must deliver exactly what an unbatched one does (every matching event once,
in order, across the switch from catch-up to live), never more events per message than asked for
or than the server's limit, and leave subscribers that do not ask for batches unchanged.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest

from k1s0_event_store import EventEnvelope, GrpcEventStore
from k1s0_event_store.protocol import event_store_pb2 as pb
from k1s0_event_store.protocol import event_store_pb2_grpc as pb_grpc
from k1s0_sidecar._subscriptions import BATCH_LIMIT
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar


def any_version(**fields: Any) -> pb.AppendEventsRequest:
    """An append at whatever version the stream is at: these tests append to streams that already
    have events, and an unset expected_version means version 0."""
    return pb.AppendEventsRequest(**fields, expected_version=pb.EXPECTED_VERSION_ANY)

DEADLINE = 60.0


def events(n: int, start: int = 0) -> list[pb.EventData]:
    return [pb.EventData(event_type="E", payload_json=json.dumps({"i": start + i}).encode()) for i in range(n)]


async def committed(dsn: str, schema: str, prefix: str) -> list[tuple[int, str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            f'SELECT sequence, stream_id, version FROM "{schema}".events WHERE stream_id ^@ $1 ORDER BY sequence',
            prefix,
        )
    finally:
        await conn.close()
    return [(r[0], r[1], r[2]) for r in rows]


async def notes_until(call: Any, count: int) -> list[pb.EventNotification]:
    """Notifications until ``count`` events have arrived in them (batched or not)."""
    got: list[pb.EventNotification] = []
    seen = 0
    try:
        async for note in call:
            got.append(note)
            seen += len(note.events) or int(note.HasField("event"))
            if seen >= count:
                return got
    finally:
        call.cancel()
    raise AssertionError(f"the subscription ended after {seen} of {count} events")


@pytest.fixture
def prefix() -> str:
    return f"b{uuid.uuid4().hex[:10]}-"


def subscribe(stub: pb_grpc.EventStoreServiceStub, rpc: str, stream: str, prefix: str, max_batch: int) -> Any:
    """``rpc`` ("stream" or "all") from the beginning: the one stream, or every stream under ``prefix``."""
    if rpc == "stream":
        return stub.SubscribeToStream(pb.SubscribeToStreamRequest(stream_id=stream, max_batch=max_batch))
    return stub.SubscribeToAll(pb.SubscribeToAllRequest(stream_prefixes=[prefix], max_batch=max_batch))


async def test_batched_subscriber_gets_every_event_once_in_order_across_catch_up_and_live(
    sidecar: ServedSidecar, stub: pb_grpc.EventStoreServiceStub, pg: LocalPostgres, prefix: str
) -> None:
    # history first: the catch-up hands the subscription pages far larger than max_batch
    for k in range(6):
        await stub.AppendEvents(any_version(stream_id=f"{prefix}h", events=events(50, 50 * k)))
    writers, appends, per = 6, 25, 10
    total = 300 + writers * appends * per
    call = stub.SubscribeToAll(pb.SubscribeToAllRequest(stream_prefixes=[prefix], max_batch=7))
    reader = asyncio.create_task(notes_until(call, total))

    async def writer(w: int) -> None:  # real concurrent appenders while the subscriber catches up
        for a in range(appends):
            await stub.AppendEvents(any_version(stream_id=f"{prefix}w{w}", events=events(per, a * per)))

    await asyncio.gather(*(writer(w) for w in range(writers)))
    notes = await asyncio.wait_for(reader, DEADLINE)

    assert all(not n.HasField("event") and 1 <= len(n.events) <= 7 for n in notes)
    assert max(len(n.events) for n in notes) == 7
    got = [(e.sequence, e.stream_id, e.version) for n in notes for e in n.events]
    assert got == await committed(pg.dsn, sidecar.schema, prefix)


@pytest.mark.parametrize("rpc", ["stream", "all"])
@pytest.mark.parametrize("max_batch", [0, 1])
async def test_without_batching_every_notification_carries_one_event(
    stub: pb_grpc.EventStoreServiceStub, prefix: str, max_batch: int, rpc: str
) -> None:
    await stub.AppendEvents(any_version(stream_id=f"{prefix}s", events=events(40)))
    call = subscribe(stub, rpc, f"{prefix}s", prefix, max_batch)
    notes = await asyncio.wait_for(notes_until(call, 40), DEADLINE)
    assert len(notes) == 40
    assert all(n.HasField("event") and not n.events for n in notes)
    assert [n.event.version for n in notes] == list(range(1, 41))


@pytest.mark.parametrize("rpc", ["stream", "all"])
async def test_max_batch_above_the_limit_is_clamped_to_it(
    stub: pb_grpc.EventStoreServiceStub, prefix: str, rpc: str
) -> None:
    n = 2 * BATCH_LIMIT + 50  # one catch-up page (500) is more than one limit's worth
    for k in range(0, n, 100):
        await stub.AppendEvents(any_version(stream_id=f"{prefix}s", events=events(min(100, n - k), k)))
    call = subscribe(stub, rpc, f"{prefix}s", prefix, 1_000_000)
    notes = await asyncio.wait_for(notes_until(call, n), DEADLINE)
    sizes = [len(x.events) for x in notes]
    assert max(sizes) == BATCH_LIMIT
    assert [e.version for x in notes for e in x.events] == list(range(1, n + 1))


async def test_batched_stream_subscription_catch_up_then_live(stub: pb_grpc.EventStoreServiceStub, prefix: str) -> None:
    stream = f"{prefix}one"
    for k in (0, 60):
        await stub.AppendEvents(any_version(stream_id=stream, events=events(60, k)))
    call = stub.SubscribeToStream(pb.SubscribeToStreamRequest(stream_id=stream, after_version=15, max_batch=32))
    reader = asyncio.create_task(notes_until(call, 120 - 15 + 200))
    for k in range(20):
        await stub.AppendEvents(any_version(stream_id=stream, events=events(10, 120 + 10 * k)))
    notes = await asyncio.wait_for(reader, DEADLINE)
    assert all(not x.HasField("event") and 1 <= len(x.events) <= 32 for x in notes)
    assert [e.version for x in notes for e in x.events] == list(range(16, 321))
    assert json.loads(notes[-1].events[-1].payload_json) == {"i": 319}


async def test_the_client_library_subscribes_through_batches(sidecar: ServedSidecar, prefix: str) -> None:
    client = GrpcEventStore(sidecar.grpc_target, timeout=10)
    try:
        stream = f"{prefix}lib"
        for k in range(0, 300, 100):  # at most 100 events an append
            await client.append(stream, [EventEnvelope("E", {"i": i}) for i in range(k, k + 100)])
        seen: list[tuple[int, int]] = []

        async def consume() -> None:
            async for e in client.subscribe_to_all(stream_prefixes=[prefix]):
                seen.append((e.version or 0, e.payload["i"]))
                if len(seen) == 400:
                    return

        task = asyncio.create_task(consume())
        await client.append(stream, [EventEnvelope("E", {"i": i}) for i in range(300, 400)])
        await asyncio.wait_for(task, DEADLINE)
        assert seen == [(i + 1, i) for i in range(400)]
    finally:
        await client.close()


class _OldSidecar(pb_grpc.EventStoreServiceServicer):
    """A sidecar from before ``max_batch``: it ignores the field and sends one ``event`` per message."""

    async def SubscribeToAll(  # type: ignore[override]
        self, request: pb.SubscribeToAllRequest, context: Any
    ) -> AsyncIterator[pb.EventNotification]:
        for i in range(1, 6):
            yield pb.EventNotification(event=pb.StoredEvent(
                stream_id="order-1", sequence=request.after_sequence + i, event_type="E", version=i,
                payload_json=b'{"i": %d}' % i, occurred_at="2026-01-01T00:00:00.000+00:00",
                stored_at="2026-01-01T00:00:00.000+00:00", event_id=str(uuid.UUID(int=i)),
            ))


async def test_the_client_still_reads_one_event_per_message_from_an_older_sidecar() -> None:
    server = grpc.aio.server()
    pb_grpc.add_EventStoreServiceServicer_to_server(_OldSidecar(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = GrpcEventStore(f"127.0.0.1:{port}", timeout=10)
    try:
        got = []
        async for e in client.subscribe_to_all(after_sequence=10):
            got.append((e.sequence, e.payload))
            if len(got) == 5:
                break
        assert got == [(10 + i, {"i": i}) for i in range(1, 6)]
    finally:
        await client.close()
        await server.stop(None)
