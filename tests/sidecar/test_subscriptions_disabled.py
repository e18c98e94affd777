"""A service without a subscription reader: both edges refuse a subscription the same way.

The sidecar always builds its reader; an embedding that builds the edges over a service without one
must get the one error map's answer on REST and gRPC alike (503 / UNAVAILABLE,
SYS_EVSTORE_UNAVAILABLE), while everything else keeps working. Real PostgreSQL, real HTTP, real gRPC.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web

from k1s0_event_store import EventStoreConfig, PostgresEventStore, PostgresSnapshotStore
from k1s0_event_store.protocol import event_store_pb2 as pb
from k1s0_event_store.protocol import event_store_pb2_grpc as pb_grpc
from k1s0_event_store.sidecar_config import EventStoreSection
from k1s0_sidecar._authz import NoAuthenticator
from k1s0_sidecar._errors import error_info_from_call
from k1s0_sidecar._grpc_api import EdgeInterceptor, EventStoreServicer
from k1s0_sidecar._metrics import Metrics
from k1s0_sidecar._rest import RestApi
from k1s0_sidecar._service import EventStoreService


@dataclass
class Edges:
    http: aiohttp.ClientSession
    stub: pb_grpc.EventStoreServiceStub


@pytest.fixture
async def edges(pg_dsn: str, schema: str) -> AsyncIterator[Edges]:
    store = PostgresEventStore(EventStoreConfig(dsn=pg_dsn, schema=schema, min_connections=1))
    snapshots = PostgresSnapshotStore(store.config, pool=await store.pool())
    metrics = Metrics()
    service = EventStoreService(store, snapshots, EventStoreSection(), metrics)  # no subscription reader

    async def ready() -> tuple[bool, dict[str, Any]]:
        return True, {}

    rest = RestApi(service, NoAuthenticator(), metrics, ready, max_body_bytes=65536)
    runner = web.AppRunner(rest.application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server_info: Any = site._server
    rest_port = server_info.sockets[0].getsockname()[1]
    server = grpc.aio.server(interceptors=[EdgeInterceptor(NoAuthenticator(), metrics)])
    pb_grpc.add_EventStoreServiceServicer_to_server(EventStoreServicer(service), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with (
            aiohttp.ClientSession(base_url=f"http://127.0.0.1:{rest_port}") as http,
            grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
        ):
            yield Edges(http, pb_grpc.EventStoreServiceStub(channel))
    finally:
        await server.stop(None)
        await runner.cleanup()
        await store.close()


async def _rest_refusal(http: aiohttp.ClientSession, path: str) -> None:
    async with http.get(path, headers={"X-Request-Id": "req-sub-off"}) as r:
        body = json.loads(await r.text())
        assert r.status == 503, body
    error = body["error"]
    assert error["code"] == "SYS_EVSTORE_UNAVAILABLE" and error["request_id"] == "req-sub-off"
    assert "subscriptions are not enabled" in error["message"]


async def _grpc_refusal(call: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for _ in call:
            pass
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info_from_call(failed.value)
    assert info is not None and info.reason == "SYS_EVSTORE_UNAVAILABLE" and info.metadata["request_id"]
    assert "subscriptions are not enabled" in (failed.value.details() or "")


async def test_both_edges_refuse_subscriptions_alike(edges: Edges) -> None:
    # the edges work: an append and a read over each of them
    async with edges.http.post("/api/v1/streams/order-off1/events",
                               json={"events": [{"event_type": "Placed", "payload": {"n": 1}}]}) as r:
        assert r.status == 201, await r.text()
    page = await edges.stub.ReadEvents(pb.ReadEventsRequest(stream_id="order-off1"))
    assert [e.version for e in page.events] == [1]
    # subscriptions: refused with the same code on both
    await _rest_refusal(edges.http, "/api/v1/subscribe")
    await _rest_refusal(edges.http, "/api/v1/streams/order-off1/subscribe")
    await _grpc_refusal(edges.stub.SubscribeToAll(pb.SubscribeToAllRequest()))
    await _grpc_refusal(edges.stub.SubscribeToStream(pb.SubscribeToStreamRequest(stream_id="order-off1")))
