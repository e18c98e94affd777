"""The store contract runs against every store; a new store adds itself to STORE_KINDS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from k1s0_event_store import (
    EventStore,
    EventStoreConfig,
    InMemoryEventStore,
    InMemorySnapshotStore,
    PostgresEventStore,
    PostgresSnapshotStore,
    SnapshotStore,
)
from tests.conftest import create_schema, drop_schema

STORE_KINDS = ["memory", "postgres"]


@dataclass
class Stores:
    kind: str
    events: EventStore
    snapshots: SnapshotStore


@pytest.fixture(params=STORE_KINDS)
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    kind = request.param
    if kind == "memory":
        mem = InMemoryEventStore()
        yield Stores(kind, mem, InMemorySnapshotStore(mem))
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    schema = await create_schema(dsn)
    config = EventStoreConfig(dsn=dsn, schema=schema, max_connections=40)
    events = PostgresEventStore(config)
    snaps = PostgresSnapshotStore(config, pool=await events.pool())
    try:
        yield Stores(kind, events, snaps)
    finally:
        await snaps.close()
        await events.close()
        await drop_schema(dsn, schema)
