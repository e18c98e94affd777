from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests.conftest import create_schema, drop_schema
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar

from .support import start_fleet, stop_fleet


@dataclass
class Fleet:
    """Sidecar processes sharing one schema: eight that take the writes, two that only serve readers."""

    schema: str
    writers: list[ServedSidecar]
    readers: list[ServedSidecar]


@pytest.fixture(scope="module")
async def fleet(pg: LocalPostgres) -> AsyncIterator[Fleet]:
    schema = await create_schema(pg.dsn, "fleet")
    sidecars = await asyncio.to_thread(start_fleet, pg.dsn, schema, 10)
    try:
        yield Fleet(schema, sidecars[:8], sidecars[8:])
    finally:
        await asyncio.to_thread(stop_fleet, sidecars)
        await drop_schema(pg.dsn, schema)
