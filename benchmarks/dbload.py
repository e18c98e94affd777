"""Load generator (a process of its own): asyncpg straight to PostgreSQL, and the library.

Kinds (``spec["kind"]``):

- ``raw_append``: the PostgreSQL limit. One connection per client; ``events`` rows per INSERT, each
  INSERT its own transaction (autocommit), into a table shaped like the event table (identity
  sequence, JSONB payload, a (stream_id, version) index) with no lock and no version check.
- ``lib_append``: ``PostgresEventStore.append`` (the library, pool of one connection per client).
  ``expected``: track each stream's version and append with ``expected_version`` (conflicts counted).
- ``raw_read_stream``: one stream, a page of ``page_size`` rows per SELECT by version range.
- ``raw_read_all``: events by global sequence, ``page_size`` rows per SELECT.
- ``lib_read_stream``: the library's ``read_stream`` (decoded ``EventEnvelope`` objects), same pages.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from k1s0_event_store import (
    ConcurrencyError,
    EventEnvelope,
    EventStoreConfig,
    PostgresEventStore,
    StreamId,
)
from k1s0_event_store.schema import quote_ident

from .common import EVENT_TYPE, StreamChooser, WorkerResult, emit, measured, payload, payload_json, read_spec

RAW_TABLE = "raw_events"


def raw_table_ddl(schema: str) -> list[str]:
    s = quote_ident(schema)
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"CREATE TABLE IF NOT EXISTS {s}.{RAW_TABLE} ("
        " sequence BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_id UUID NOT NULL,"
        " stream_id TEXT NOT NULL, version BIGINT NOT NULL, event_type TEXT NOT NULL, payload JSONB NOT NULL,"
        " metadata JSONB NOT NULL DEFAULT '{}', occurred_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),"
        " stored_at TIMESTAMPTZ NOT NULL DEFAULT NOW())",
        f"CREATE INDEX IF NOT EXISTS raw_events_stream ON {s}.{RAW_TABLE} (stream_id, version)",
    ]


_COLUMNS = "sequence, event_id, stream_id, version, event_type, payload, metadata, occurred_at, stored_at"


async def _raw_append(spec: dict[str, Any]) -> WorkerResult:
    clients, per = int(spec["clients"]), int(spec["events"])
    s = quote_ident(spec["schema"])
    pool = await asyncpg.create_pool(spec["dsn"], min_size=clients, max_size=clients)
    one = (
        f"INSERT INTO {s}.{RAW_TABLE} (event_id, stream_id, version, event_type, payload)"
        " VALUES ($1, $2, $3, $4, $5::jsonb)"
    )
    many = (
        f"INSERT INTO {s}.{RAW_TABLE} (event_id, stream_id, version, event_type, payload)"
        " SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[]::jsonb[])"
    )
    choosers = [StreamChooser(spec["distribution"], int(spec["seed"]) * 1000 + i, "raw") for i in range(clients)]
    counter = [0]

    async def op(i: int) -> tuple[int, str]:
        stream = choosers[i].next()
        counter[0] += 1
        n = counter[0]
        async with pool.acquire() as conn:
            if per == 1:
                await conn.execute(one, uuid.uuid4(), stream, n, EVENT_TYPE, payload_json(n))
            else:
                await conn.execute(
                    many, [uuid.uuid4() for _ in range(per)], [stream] * per, list(range(n, n + per)),
                    [EVENT_TYPE] * per, [payload_json(n + k) for k in range(per)],
                )
        return per, "ok"

    return await measured(clients, op, pool.close, keep_connections=True)


async def _lib_append(spec: dict[str, Any]) -> WorkerResult:
    clients, per = int(spec["clients"]), int(spec["events"])
    store = PostgresEventStore(
        EventStoreConfig(dsn=spec["dsn"], schema=spec["schema"], min_connections=clients, max_connections=clients)
    )
    await store.head_sequence()  # open the pool before the window
    # one append per connection before the window: each connection prepares its statements on first
    # use, inside the append lock, which would make the first round at 128 clients a cold start
    warm = uuid.uuid4().hex[:8]
    await asyncio.gather(*(store.append(StreamId.parse(f"warm-{warm}{i}"), [EventEnvelope(EVENT_TYPE, payload(0))])
                           for i in range(clients)))
    choosers = [StreamChooser(spec["distribution"], int(spec["seed"]) * 1000 + i, "lib") for i in range(clients)]
    expected = bool(spec.get("expected"))
    known: dict[str, int] = {}
    counter = [0]

    async def op(i: int) -> tuple[int, str]:
        stream = choosers[i].next()
        counter[0] += 1
        n = counter[0]
        events = [EventEnvelope(EVENT_TYPE, payload(n + k)) for k in range(per)]
        try:
            version = await store.append(
                StreamId.parse(stream), events, known.get(stream, 0) if expected else None
            )
        except ConcurrencyError as exc:
            known[stream] = exc.actual_version
            return 0, "conflict"
        if expected:
            known[stream] = version
        return per, "ok"

    return await measured(clients, op, store.close)


async def _raw_read(spec: dict[str, Any]) -> WorkerResult:
    clients, size = int(spec["clients"]), int(spec["page_size"])
    s = quote_ident(spec["schema"])
    pool = await asyncpg.create_pool(spec["dsn"], min_size=clients, max_size=clients)
    if spec["kind"] == "raw_read_stream":
        sql = (f"SELECT {_COLUMNS} FROM {s}.events WHERE stream_id = $1 AND version >= $2 AND version <= $3"
               " ORDER BY version")
        stream, length = spec["stream"], int(spec["length"])
        pages = max(1, length // size)
        args: list[tuple[Any, ...]] = [(stream, p * size + 1, (p + 1) * size) for p in range(pages)]
    else:
        sql = f"SELECT {_COLUMNS} FROM {s}.events WHERE sequence > $1 ORDER BY sequence LIMIT $2"
        first, length = int(spec["first_sequence"]), int(spec["length"])
        pages = max(1, length // size)
        args = [(first - 1 + p * size, size) for p in range(pages)]
    position = [0] * clients

    async def op(i: int) -> tuple[int, str]:
        a = args[position[i] % len(args)]
        position[i] += 1
        async with pool.acquire() as conn:
            rows = await conn.fetch(sql, *a)
        return len(rows), "ok" if rows else "empty page"

    return await measured(clients, op, pool.close)


async def _lib_read(spec: dict[str, Any]) -> WorkerResult:
    clients, size = int(spec["clients"]), int(spec["page_size"])
    store = PostgresEventStore(
        EventStoreConfig(dsn=spec["dsn"], schema=spec["schema"], min_connections=clients, max_connections=clients)
    )
    await store.head_sequence()
    stream = StreamId.parse(spec["stream"])
    pages = max(1, int(spec["length"]) // size)
    position = [0] * clients

    async def op(i: int) -> tuple[int, str]:
        p = position[i] % pages
        position[i] += 1
        page = await store.read_stream(stream, from_version=p * size + 1, limit=size)
        return len(page.events), "ok" if page.events else "empty page"

    return await measured(clients, op, store.close)


KINDS = {
    "raw_append": _raw_append,
    "lib_append": _lib_append,
    "raw_read_stream": _raw_read,
    "raw_read_all": _raw_read,
    "lib_read_stream": _lib_read,
}


def main() -> None:
    spec = read_spec()
    result = asyncio.run(KINDS[spec["kind"]](spec))
    emit(result)


if __name__ == "__main__":
    main()
