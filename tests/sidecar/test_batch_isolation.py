"""Defence in depth: a request whose data PostgreSQL refuses inside a shared group-commit
transaction (SQLSTATE class 22 or 23) fails alone with 400, and every other request of the batch
commits as if it had been sent alone.

Validation refuses everything we know PostgreSQL would (see test_poison_bursts.py), so these tests
make PostgreSQL refuse something validation cannot know about: CHECK constraints added to this
test's own schema, one that fails with class 23 (check_violation) and one whose expression fails
with class 22 (invalid_text_representation).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import grpc
import pytest

from tests.support.bursts import (
    Outcome,
    burst,
    good_grpc_request,
    good_rest_body,
    grpc_append_raw,
    raw_append_request,
    raw_event,
    rest_append,
)
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar, served_schema

POISONS = {
    # class 23: a CHECK constraint refuses the row
    "check_violation_23514": (b"Poison", b'{"n":1}'),
    # class 22: the constraint's own cast fails on this value
    "invalid_text_representation_22P02": (b"Good", b'{"must_be_int":"x"}'),
}


async def add_poison_checks(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f'ALTER TABLE "{schema}".events ADD CONSTRAINT test_no_poison CHECK (event_type <> \'Poison\')'
        )
        await conn.execute(
            f'ALTER TABLE "{schema}".events ADD CONSTRAINT test_int CHECK ((payload->>\'must_be_int\')::int IS NOT NULL'
            " OR payload->>'must_be_int' IS NULL)"
        )
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def guarded(pg: LocalPostgres) -> AsyncIterator[ServedSidecar]:
    async with served_schema(pg.dsn, "iso", prepare=lambda schema: add_poison_checks(pg.dsn, schema)) as served:
        yield served


@pytest.fixture
async def guarded_http(guarded: ServedSidecar) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=guarded.base_url) as session:
        yield session


def _check(summary: str, result_good: list[Outcome], bad: Outcome, stored: int, bad_status: int | str) -> None:
    print(summary)
    assert [o.status for o in result_good if not o.ok] == [], summary
    assert stored == len(result_good), summary
    assert bad.status == bad_status and bad.code == "SYS_EVSTORE_VALIDATION_ERROR", summary


@pytest.mark.parametrize("poison", sorted(POISONS))
async def test_rest_batch_refused_by_postgres_fails_only_the_guilty_request(
    poison: str, guarded: ServedSidecar, guarded_http: aiohttp.ClientSession
) -> None:
    event_type, payload = POISONS[poison]

    async def good(stream: str, event_id: str, n: int) -> Outcome:
        return await rest_append(guarded_http, stream, good_rest_body(event_id, n))

    async def bad(stream: str) -> Outcome:
        body = b'{"events":[{"event_type":"' + event_type + b'","payload":' + payload + b"}]}"
        return await rest_append(guarded_http, stream, body)

    result = await burst(guarded_http, guarded.dsn, guarded.schema, good, bad)
    _check(f"REST {poison}: {result.summary()}", result.good, result.bad, result.stored, 400)
    assert result.batches <= 2, "the good appends shared a transaction"


@pytest.mark.parametrize("poison", sorted(POISONS))
async def test_grpc_batch_refused_by_postgres_fails_only_the_guilty_request(
    poison: str, guarded: ServedSidecar, guarded_http: aiohttp.ClientSession
) -> None:
    event_type, payload = POISONS[poison]
    async with grpc.aio.insecure_channel(guarded.grpc_target) as channel:
        async def good(stream: str, event_id: str, n: int) -> Outcome:
            return await grpc_append_raw(channel, good_grpc_request(stream, event_id, n))

        async def bad(stream: str) -> Outcome:
            return await grpc_append_raw(channel, raw_append_request(stream, raw_event(event_type, payload)))

        result = await burst(guarded_http, guarded.dsn, guarded.schema, good, bad)
    _check(f"gRPC {poison}: {result.summary()}", result.good, result.bad, result.stored, "INVALID_ARGUMENT")
