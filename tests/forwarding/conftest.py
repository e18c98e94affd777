from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support.kafka import LocalKafka

from .support import create_topics


@pytest.fixture
async def topic(kafka: LocalKafka) -> AsyncIterator[str]:
    name = f"k1s0.test.{uuid.uuid4().hex[:10]}.published.v1"
    await create_topics(kafka.bootstrap, name)
    yield name


async def expected_events(dsn: str, schema: str) -> set[tuple[str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f'SELECT stream_id, version FROM "{schema}".events')
    finally:
        await conn.close()
    return {(r[0], r[1]) for r in rows}
