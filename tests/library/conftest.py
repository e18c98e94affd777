"""The store contract runs against every store; a new store adds itself to STORE_KINDS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from k1s0_event_store import (
    EventStore,
    EventStoreConfig,
    GrpcEventStore,
    GrpcSnapshotStore,
    InMemoryEventStore,
    InMemorySnapshotStore,
    PostgresEventStore,
    PostgresSnapshotStore,
    SnapshotStore,
)
from k1s0_event_store.sidecar_config import load_config
from k1s0_sidecar._runtime import Sidecar
from tests.conftest import create_schema, drop_schema

STORE_KINDS = ["memory", "postgres", "grpc"]


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
    if kind == "grpc":
        async with served_sidecar(dsn) as sidecar:
            target = f"127.0.0.1:{sidecar.grpc_port}"
            events_client = GrpcEventStore(target)
            snaps_client = GrpcSnapshotStore(target)
            try:
                yield Stores(kind, events_client, snaps_client)
            finally:
                await events_client.close()
                await snaps_client.close()
        return
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


@asynccontextmanager
async def served_sidecar(dsn: str) -> AsyncIterator[Sidecar]:
    """A sidecar in this process on ephemeral ports, over a fresh schema (real gRPC, real PostgreSQL)."""
    schema = await create_schema(dsn, "g")
    config = load_config(
        env={},
        overrides={
            "database": {"url": dsn, "schema": schema, "min_connections": 1},
            "server": {"host": "127.0.0.1", "port": 0, "grpc_port": 0, "shutdown_grace_seconds": 1},
            "auth": {"mode": "none"},
        },
    )
    sidecar = Sidecar(config)
    await sidecar.start()
    try:
        yield sidecar
    finally:
        await sidecar.stop()
        await drop_schema(dsn, schema)
