"""Shared fixtures: one real PostgreSQL per test session, a fresh schema per test."""

from __future__ import annotations

import itertools
import os

# The operator's drift timer interval is read when its handlers are registered, i.e. when any test
# module first imports the operator; set it before any of them is collected: check drift every 2 s.
os.environ.setdefault("EVENTSTORE_OPERATOR_DRIFT_INTERVAL_SECONDS", "2")
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from k1s0_event_store import EventStoreConfig
from k1s0_event_store.schema import migrate
from tests.support.kafka import LocalKafka
from tests.support.postgres import LocalPostgres

_schema_counter = itertools.count(1)


@pytest.fixture(scope="session")
def pg() -> Iterator[LocalPostgres]:
    server = LocalPostgres(fsync=False)
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def kafka() -> Iterator[LocalKafka]:
    """One real Kafka-protocol broker per session, started when a test first asks for it, for the
    tests that do not break it (those that stop a broker start their own)."""
    broker = LocalKafka()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def pg_dsn(pg: LocalPostgres) -> str:
    return pg.dsn


def new_schema_name(prefix: str = "t") -> str:
    return f"{prefix}_{os.getpid()}_{next(_schema_counter)}"


async def create_schema(dsn: str, prefix: str = "t") -> str:
    name = new_schema_name(prefix)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, name)
    finally:
        await conn.close()
    return name


async def drop_schema(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def schema(pg_dsn: str) -> AsyncIterator[str]:
    """A freshly migrated schema, dropped afterwards."""
    name = await create_schema(pg_dsn)
    yield name
    await drop_schema(pg_dsn, name)


@pytest.fixture
def config(pg_dsn: str, schema: str) -> EventStoreConfig:
    return EventStoreConfig(dsn=pg_dsn, schema=schema, max_connections=40)
