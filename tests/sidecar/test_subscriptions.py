"""Subscriptions over real gRPC and real SSE against a served sidecar on real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest

from k1s0_event_store import EncodedEvent, EventEnvelope, EventStoreConfig, PostgresEventStore, StreamId
from k1s0_event_store.protocol import event_store_pb2 as pb
from k1s0_event_store.protocol import event_store_pb2_grpc as pb_grpc
from k1s0_sidecar._errors import error_info_from_call
from k1s0_sidecar._subscriptions import SubscriptionHub
from k1s0_sidecar._wire import sse_frame
from tests.conftest import create_schema, drop_schema
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar, served_schema


def any_version(**fields: Any) -> pb.AppendEventsRequest:
    """An append at whatever version the stream is at: these tests append to streams that already
    have events, and an unset expected_version means version 0."""
    return pb.AppendEventsRequest(**fields, expected_version=pb.EXPECTED_VERSION_ANY)

DEADLINE = 120.0


def batch(kind: str, start: int, n: int) -> list[pb.EventData]:
    return [pb.EventData(event_type=kind, payload_json=json.dumps({"i": start + i}).encode()) for i in range(n)]


async def all_sequences(dsn: str, schema: str) -> list[tuple[int, str, int, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f'SELECT sequence, stream_id, version, event_type FROM "{schema}".events '
                                "ORDER BY sequence")
    finally:
        await conn.close()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


async def collect_all(stub: pb_grpc.EventStoreServiceStub, req: pb.SubscribeToAllRequest, until: asyncio.Event,
                      final: dict[str, int], out: list[int], started: asyncio.Event | None = None) -> None:
    call = stub.SubscribeToAll(req)
    if started is not None:
        started.set()
    try:
        async for note in call:
            out.append(note.event.sequence)
            if until.is_set() and note.event.sequence >= final["head"]:
                return
    finally:
        call.cancel()


@pytest.fixture
async def fresh(pg: LocalPostgres) -> AsyncIterator[ServedSidecar]:
    async with served_schema(pg.dsn, "sub", env={"EVENTSTORE_EVENT_STORE_SUBSCRIPTION_BUFFER": "200"}) as served:
        yield served


@pytest.mark.slow
async def test_16_writers_8_all_subscribers_8_stream_subscribers(fresh: ServedSidecar, pg: LocalPostgres) -> None:
    writers, per_writer, chunk = 16, 2000, 25
    done = asyncio.Event()
    final: dict[str, int] = {"head": 1 << 62}
    async with grpc.aio.insecure_channel(fresh.grpc_target) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        # Some history before anyone subscribes.
        for w in range(writers):
            await stub.AppendEvents(any_version(stream_id=f"w-{w}", events=batch("Pre", 0, 5)))
        all_outs: list[list[int]] = [[] for _ in range(8)]
        starts: list[int] = [0, 0, 3, 40, 0, 0, 0, 0]  # 4..7 start mid-write (4, 5 at a position; 6, 7 from_end)
        tasks = [asyncio.create_task(collect_all(stub, pb.SubscribeToAllRequest(after_sequence=starts[i]), done,
                                                 final, all_outs[i])) for i in range(4)]
        stream_outs: dict[int, list[int]] = {w: [] for w in range(8)}

        async def stream_sub(w: int, after: int) -> None:
            call = stub.SubscribeToStream(pb.SubscribeToStreamRequest(stream_id=f"w-{w}", after_version=after))
            try:
                async for note in call:
                    stream_outs[w].append(note.event.version)
                    if note.event.version >= 5 + per_writer:
                        return
            finally:
                call.cancel()

        tasks += [asyncio.create_task(stream_sub(w, 0 if w < 4 else 2)) for w in range(4)]
        progress = asyncio.Event()
        appended = 0

        async def writer(w: int) -> None:
            nonlocal appended
            for i in range(0, per_writer, chunk):
                await stub.AppendEvents(any_version(stream_id=f"w-{w}", events=batch("Live", i, chunk)))
                appended += chunk
                if appended >= writers * per_writer // 3:
                    progress.set()

        write_tasks = [asyncio.create_task(writer(w)) for w in range(writers)]
        await progress.wait()  # a third is written: start the mid-write subscribers now
        mid = (await stub.ReadAll(pb.ReadAllRequest(after_sequence=0, limit=1))).head_sequence
        starts[4] = starts[5] = mid
        for i in (4, 5):
            tasks.append(asyncio.create_task(collect_all(
                stub, pb.SubscribeToAllRequest(after_sequence=mid), done, final, all_outs[i])))
        from_end_started = [asyncio.Event(), asyncio.Event()]
        for k, i in enumerate((6, 7)):
            tasks.append(asyncio.create_task(collect_all(
                stub, pb.SubscribeToAllRequest(from_end=True), done, final, all_outs[i], from_end_started[k])))
        for w in range(4, 8):
            current = (await stub.ReadEvents(pb.ReadEventsRequest(stream_id=f"w-{w}", page_size=1))).current_version
            tasks.append(asyncio.create_task(stream_sub(w, current)))
            stream_outs[w].append(-current)  # remember where it started
        await asyncio.gather(*write_tasks)
        final["head"] = (await stub.ReadAll(pb.ReadAllRequest(limit=1))).head_sequence
        done.set()
        await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)

    committed = await all_sequences(pg.dsn, fresh.schema)
    seqs = [s for s, *_ in committed]
    assert len(seqs) == writers * (per_writer + 5)
    for i, out in enumerate(all_outs):
        if i in (6, 7):  # from_end: a contiguous suffix of the global order
            k = seqs.index(out[0])
            assert out == seqs[k:], f"subscriber {i}"
            continue
        assert out == [s for s in seqs if s > starts[i]], f"subscriber {i} from {starts[i]}"
    for w, out in stream_outs.items():
        start = -out.pop(0) if w >= 4 else 0
        assert out == list(range(start + 1, 5 + per_writer + 1)), f"stream subscriber w-{w}"


async def test_resume_after_disconnect_gets_exactly_the_rest(sidecar: ServedSidecar, stream: str) -> None:
    async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        await stub.AppendEvents(any_version(stream_id=stream, events=batch("E", 0, 30)))
        first: list[int] = []
        call = stub.SubscribeToStream(pb.SubscribeToStreamRequest(stream_id=stream))
        async for note in call:
            first.append(note.event.version)
            if len(first) == 12:
                break
        call.cancel()
        await stub.AppendEvents(any_version(stream_id=stream, events=batch("E", 30, 10)))
        rest: list[int] = []
        call = stub.SubscribeToStream(pb.SubscribeToStreamRequest(stream_id=stream, after_version=first[-1]))
        async for note in call:
            rest.append(note.event.version)
            if note.event.version == 40:
                break
        call.cancel()
    assert first + rest == list(range(1, 41))


async def _sse_events(resp: aiohttp.ClientResponse, want: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    block: dict[str, str] = {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if "data" in block:
                out.append({"id": block.get("id"), "event": block.get("event", "message"),
                            "data": json.loads(block["data"])})
                if len(out) >= want or block.get("event") == "error":
                    return out
            block = {}
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(": ")
        block[key] = value
    return out


async def test_sse_subscription_and_last_event_id_resume(sidecar: ServedSidecar, http: aiohttp.ClientSession,
                                                         stream: str) -> None:
    for i in range(6):
        await http.post(f"/api/v1/streams/{stream}/events",
                        json={"events": [{"event_type": "E", "payload": {"i": i}}]})
    async with http.get(f"/api/v1/streams/{stream}/subscribe", params={"after_version": 1}) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        got = await asyncio.wait_for(_sse_events(resp, 3), DEADLINE)
    assert [e["data"]["version"] for e in got] == [2, 3, 4]
    assert [int(e["id"]) for e in got] == [e["data"]["sequence"] for e in got]
    assert set(got[0]["data"]) >= {"stream_id", "sequence", "event_type", "version", "payload", "metadata",
                                   "occurred_at", "stored_at"}
    # Reconnect with Last-Event-ID: resumes right after it, live events included.
    async with http.get(f"/api/v1/streams/{stream}/subscribe", headers={"Last-Event-ID": got[-1]["id"]}) as resp:
        await http.post(f"/api/v1/streams/{stream}/events", json={"events": [{"event_type": "E", "payload": {}}]})
        more = await asyncio.wait_for(_sse_events(resp, 3), DEADLINE)
    assert [e["data"]["version"] for e in more] == [5, 6, 7]
    # The all-stream form, filtered, resumed by sequence.
    params = {"stream_prefix": stream, "after_sequence": 0}
    async with http.get("/api/v1/subscribe", params=params, headers={"Last-Event-ID": got[0]["id"]}) as resp:
        rest = await asyncio.wait_for(_sse_events(resp, 5), DEADLINE)
    assert [e["data"]["version"] for e in rest] == [3, 4, 5, 6, 7]


async def test_sse_keepalive_and_bad_parameters(sidecar: ServedSidecar, pg: LocalPostgres) -> None:
    schema = await create_schema(pg.dsn, "ka")
    served = ServedSidecar(pg.dsn, schema, env={"EVENTSTORE_EVENT_STORE_SUBSCRIPTION_KEEPALIVE_SECONDS": "0.2"})
    served.start()
    try:
        async with aiohttp.ClientSession(base_url=served.base_url) as http:
            async with http.get("/api/v1/subscribe", params={"from_end": "true"}) as resp:
                lines = []
                async for raw in resp.content:
                    lines.append(raw.decode())
                    if sum(1 for x in lines if x.startswith(": keep-alive")) >= 2:
                        break
            async with http.get("/api/v1/subscribe", params={"after_sequence": "x"}) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["code"] == "SYS_EVSTORE_VALIDATION_ERROR"
            async with http.get("/api/v1/subscribe", params={"event_type": ""}) as resp:
                assert resp.status == 400
    finally:
        served.stop()
        await drop_schema(pg.dsn, schema)


async def test_filters_by_prefix_and_type(sidecar: ServedSidecar, stream: str) -> None:
    async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        head = (await stub.ReadAll(pb.ReadAllRequest(limit=1))).head_sequence
        await stub.AppendEvents(any_version(stream_id=f"{stream}-a", events=batch("Keep", 0, 2)))
        await stub.AppendEvents(any_version(stream_id=f"{stream}-a", events=batch("Drop", 0, 2)))
        await stub.AppendEvents(any_version(stream_id=f"other-{stream}", events=batch("Keep", 0, 2)))
        await stub.AppendEvents(any_version(stream_id=f"{stream}-b", events=batch("Keep", 2, 1)))
        got: list[tuple[str, str]] = []
        call = stub.SubscribeToAll(pb.SubscribeToAllRequest(after_sequence=head, stream_prefixes=[stream],
                                                            event_types=["Keep"]))
        async for note in call:
            got.append((note.event.stream_id, note.event.event_type))
            if len(got) == 3:
                break
        call.cancel()
    assert got == [(f"{stream}-a", "Keep"), (f"{stream}-a", "Keep"), (f"{stream}-b", "Keep")]


async def test_waits_for_a_new_stream_and_ends_when_it_is_deleted(sidecar: ServedSidecar, stream: str) -> None:
    async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        call = stub.SubscribeToStream(pb.SubscribeToStreamRequest(stream_id=stream))
        await stub.AppendEvents(any_version(stream_id=stream, events=batch("First", 0, 1)))
        note = await call.read()
        assert note.event.version == 1 and note.event.event_type == "First"
        await stub.DeleteStream(pb.DeleteStreamRequest(stream_id=stream))
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call.read()
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
        info = error_info_from_call(exc.value)
        assert info is not None and info.reason == "SYS_EVSTORE_STREAM_NOT_FOUND"


async def test_a_negative_after_version_is_refused_on_grpc_and_a_good_subscription_beside_it_runs(
    sidecar: ServedSidecar, stream: str
) -> None:
    """SubscribeToStream's after_version is an int64: a negative one is a SYS_EVSTORE_VALIDATION_ERROR
    (INVALID_ARGUMENT) naming the field, and a good subscription on the same channel is unaffected.
    (after_sequence is a uint64: no client can send a negative one.)"""
    async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        good = stub.SubscribeToStream(pb.SubscribeToStreamRequest(stream_id=stream))
        bad = stub.SubscribeToStream(pb.SubscribeToStreamRequest(stream_id=stream, after_version=-1))
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await asyncio.wait_for(bad.read(), 10)  # a refusal comes at once; never wait for events
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info_from_call(exc.value)
        assert info is not None and info.reason == "SYS_EVSTORE_VALIDATION_ERROR"
        assert "after_version" in info.metadata and info.metadata["request_id"].startswith("req_")
        await stub.AppendEvents(any_version(stream_id=stream, events=batch("First", 0, 1)))
        note = await good.read()
        assert note.event.version == 1 and note.event.event_type == "First"
        good.cancel()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
async def test_slow_subscriber_is_bounded_and_still_gets_everything(fresh: ServedSidecar) -> None:
    """Buffer 200: a subscriber that reads slowly is sent back to catch-up instead of growing memory."""
    total, payload = 6000, "x" * 2000
    assert fresh.proc is not None
    async with grpc.aio.insecure_channel(fresh.grpc_target) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        received: list[int] = []
        slow_call = stub.SubscribeToAll(pb.SubscribeToAllRequest())

        async def writer(w: int) -> None:
            for _ in range(0, total // 8, 50):
                evs = [pb.EventData(event_type="Big", payload_json=json.dumps({"p": payload}).encode())] * 50
                await stub.AppendEvents(any_version(stream_id=f"slow-{w}", events=evs))

        await stub.AppendEvents(any_version(stream_id="slow-start", events=batch("S", 0, 1)))
        first = await slow_call.read()
        received.append(first.event.sequence)
        started = time.monotonic()
        await asyncio.gather(*(writer(w) for w in range(8)))
        write_seconds = time.monotonic() - started
        behind_when_writers_done = len(received)
        rss_peak = _rss_kib(fresh.proc.pid)
        while len(received) < total + 1:
            note = await asyncio.wait_for(slow_call.read(), DEADLINE)
            received.append(note.event.sequence)
            if len(received) % 500 == 0:
                rss_peak = max(rss_peak, _rss_kib(fresh.proc.pid))
                await asyncio.sleep(0.05)  # the deliberate slowness of this consumer, not synchronisation
        slow_call.cancel()
        async with aiohttp.ClientSession() as http, http.get(f"{fresh.base_url}/metrics") as r:
            metrics = await r.text()
    assert received == sorted(received) and len(set(received)) == len(received) == total + 1
    assert behind_when_writers_done < total, "the writers did not wait for the slow subscriber"
    lagged = next(float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith("eventstore_subscriptions_lagged_total"))
    assert lagged >= 1, "the slow subscriber was sent back to catch-up reads"
    assert rss_peak < 250 * 1024, f"sidecar RSS {rss_peak} KiB"
    print(f"slow subscriber: writers took {write_seconds:.1f}s, peak RSS {rss_peak / 1024:.0f} MiB, lagged {lagged}")


# -- the hub in-process: one rendering per event, batches ---------------------------------------------


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a condition of the hub's own state (not for time to pass)."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def hub(pg: LocalPostgres) -> AsyncIterator[SubscriptionHub]:
    schema = await create_schema(pg.dsn, "hub")
    store = PostgresEventStore(EventStoreConfig(dsn=pg.dsn, schema=schema))
    hub = SubscriptionHub(store, pg.dsn, schema, poll_interval=60.0)  # only NOTIFY wakes it
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()
        await store.close()
        await drop_schema(pg.dsn, schema)


async def test_live_events_are_shared_rendered_once_and_arrive_as_one_batch(hub: SubscriptionHub) -> None:
    calls: list[int] = []

    def render(e: EncodedEvent) -> str:
        calls.append(e.sequence)
        return f"{e.stream_id}@{e.version}"

    subs = [hub.all(from_end=True), hub.all(stream_prefixes=["order-"], from_end=True),
            hub.stream("order-1", from_end=True)]
    firsts = [asyncio.create_task(anext(s)) for s in subs]  # type: ignore[arg-type]
    await _until(lambda: hub.live_subscribers == 3, "three live subscribers")
    await hub.store.append(StreamId("order", "1"), [EventEnvelope("Placed", {"i": i}) for i in range(50)],
                           expected_version=0)
    batches = [await asyncio.wait_for(f, DEADLINE) for f in firsts]
    for batch in batches:
        # everything one commit made visible, handed over at once, in order
        assert batch is not None and [d.version for d in batch] == list(range(1, 51))
    # the three subscribers hold the same objects, and each event is rendered once for all of them
    assert all(a is b is c for a, b, c in zip(*batches, strict=True))
    texts = [[d.render(render) for d in batch] for batch in batches]
    assert texts[0] == texts[1] == texts[2] == [f"order-1@{v}" for v in range(1, 51)]
    assert len(calls) == 50
    assert batches[0][0].render(sse_frame).startswith(f"id: {batches[0][0].sequence}\ndata: {{".encode())
    for s in subs:
        await s.aclose()  # type: ignore[attr-defined]
    assert hub.live_subscribers == 0


async def test_a_batch_stops_at_the_subscribers_buffer_and_the_rest_comes_from_the_database(
    hub: SubscriptionHub,
) -> None:
    hub.buffer = 10
    lagged: list[int] = []
    hub.on_lag = lambda: lagged.append(1)
    sub = hub.all(from_end=True)
    first = asyncio.create_task(anext(sub))  # type: ignore[arg-type]
    await _until(lambda: hub.live_subscribers == 1, "a live subscriber")
    await hub.store.append(StreamId("order", "2"), [EventEnvelope("Placed", {"i": i}) for i in range(30)],
                           expected_version=0)
    got: list[int] = []
    batch = await asyncio.wait_for(first, DEADLINE)
    while True:
        assert batch is not None
        got.extend(d.version for d in batch)
        if len(got) >= 30:
            break
        batch = await asyncio.wait_for(anext(sub), DEADLINE)  # type: ignore[arg-type]
    assert got == list(range(1, 31)) and lagged == [1]
    await sub.aclose()  # type: ignore[attr-defined]


async def test_without_listen_the_hub_polls(pg: LocalPostgres) -> None:
    schema = await create_schema(pg.dsn, "hub")
    store = PostgresEventStore(EventStoreConfig(dsn=pg.dsn, schema=schema))
    # LISTEN goes to a closed port and keeps failing: only the poll timer wakes the reader
    hub = SubscriptionHub(store, "postgresql://postgres@127.0.0.1:1/postgres", schema, poll_interval=0.05)
    await hub.start()
    try:
        assert hub._listener is None
        sub = hub.all(from_end=True)
        first = asyncio.create_task(anext(sub))  # type: ignore[arg-type]
        await _until(lambda: hub.live_subscribers == 1, "a live subscriber")
        await store.append(StreamId("order", "3"), [EventEnvelope("Placed", {"i": i}) for i in range(3)],
                           expected_version=0)
        batch = await asyncio.wait_for(first, DEADLINE)
        assert batch is not None and [d.version for d in batch] == [1, 2, 3]
        await sub.aclose()  # type: ignore[attr-defined]
    finally:
        await hub.stop()
        await store.close()
        await drop_schema(pg.dsn, schema)
