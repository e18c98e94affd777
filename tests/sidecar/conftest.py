from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import grpc
import pytest

from k1s0_event_store.protocol import event_store_pb2_grpc as pb_grpc
from tests.conftest import create_schema, drop_schema
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar


@pytest.fixture(scope="module")
async def sidecar(pg: LocalPostgres) -> AsyncIterator[ServedSidecar]:
    schema = await create_schema(pg.dsn, "sc")
    served = ServedSidecar(pg.dsn, schema, env={"EVENTSTORE_SERVER_MAX_BODY_BYTES": "65536"}).start()
    try:
        yield served
    finally:
        served.stop()
        await drop_schema(pg.dsn, schema)


@pytest.fixture
async def http(sidecar: ServedSidecar) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=sidecar.base_url) as session:
        yield session


@pytest.fixture
async def stub(sidecar: ServedSidecar) -> AsyncIterator[pb_grpc.EventStoreServiceStub]:
    async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
        yield pb_grpc.EventStoreServiceStub(channel)


@pytest.fixture
def stream() -> Iterator[str]:
    yield f"order-{uuid.uuid4().hex[:12]}"
