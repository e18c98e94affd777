"""Shared fixtures: one real PostgreSQL per test session, a fresh schema per test."""

from __future__ import annotations

import os

# The operator's drift timer interval is read when its handlers are registered, i.e. when any test
# module first imports the operator; set it before any of them is collected: check drift every 2 s.
os.environ.setdefault("EVENTSTORE_OPERATOR_DRIFT_INTERVAL_SECONDS", "2")
from collections.abc import AsyncIterator, Iterator

import aiohttp
import grpc
import pytest

from k1s0_event_store import EventStoreConfig
from k1s0_event_store.protocol import event_store_pb2_grpc as pb_grpc
from tests.support.kafka import LocalKafka
from tests.support.postgres import LocalPostgres, create_schema, drop_schema, new_schema_name
from tests.support.sidecar import ServedSidecar

# The schema helpers live in tests.support.postgres (the sidecar fixtures use them too); many tests
# import them from here.
__all__ = ["create_schema", "drop_schema", "new_schema_name"]


@pytest.fixture(scope="session")
def pg() -> Iterator[LocalPostgres]:
    with LocalPostgres(fsync=False) as server:
        yield server


@pytest.fixture(scope="session")
def kafka() -> Iterator[LocalKafka]:
    """One real Kafka-protocol broker per session, started when a test first asks for it, for the
    tests that do not break it (those that stop a broker start their own)."""
    with LocalKafka() as broker:
        yield broker


@pytest.fixture(scope="session")
def pg_dsn(pg: LocalPostgres) -> str:
    return pg.dsn


@pytest.fixture
async def schema(pg_dsn: str) -> AsyncIterator[str]:
    """A freshly migrated schema, dropped afterwards."""
    name = await create_schema(pg_dsn)
    yield name
    await drop_schema(pg_dsn, name)


@pytest.fixture
def config(pg_dsn: str, schema: str) -> EventStoreConfig:
    return EventStoreConfig(dsn=pg_dsn, schema=schema, max_connections=40)


# Clients of the module's served sidecar (a module names its ``sidecar`` fixture).
@pytest.fixture
async def http(sidecar: ServedSidecar) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=sidecar.base_url) as session:
        yield session


@pytest.fixture
async def stub(sidecar: ServedSidecar) -> AsyncIterator[pb_grpc.EventStoreServiceStub]:
    async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
        yield pb_grpc.EventStoreServiceStub(channel)
