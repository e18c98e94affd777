from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar, served_schema


@pytest.fixture(scope="module")
async def sidecar(pg: LocalPostgres) -> AsyncIterator[ServedSidecar]:
    async with served_schema(pg.dsn, "sc", env={"EVENTSTORE_SERVER_MAX_BODY_BYTES": "65536"}) as served:
        yield served


@pytest.fixture
def stream() -> Iterator[str]:
    yield f"order-{uuid.uuid4().hex[:12]}"
