"""Concurrency and global order on a real PostgreSQL, with real concurrent connections."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from k1s0_event_store import (
    ConcurrencyError,
    EventEnvelope,
    EventStoreConfig,
    PostgresEventStore,
    prepare_append,
)


def ev(n: int) -> EventEnvelope:
    return EventEnvelope("Counted", {"n": n})


async def test_32_appenders_one_stream_exactly_one_winner_per_version(config: EventStoreConfig) -> None:
    store = PostgresEventStore(config)
    target = 60
    wins: list[int] = []
    conflicts = 0
    start = asyncio.Event()

    async def appender(i: int) -> None:
        nonlocal conflicts
        await start.wait()
        while True:
            seen = await store.current_version("race-1")
            if seen >= target:
                return
            try:
                wins.append(await store.append("race-1", [ev(i)], expected_version=seen))
            except ConcurrencyError as exc:
                assert exc.expected_version == seen and exc.actual_version > seen
                conflicts += 1

    tasks = [asyncio.create_task(appender(i)) for i in range(32)]
    await asyncio.sleep(0)  # let every task reach the start line
    start.set()
    await asyncio.gather(*tasks)
    assert sorted(wins) == list(range(1, target + 1)), "exactly one winner per version"
    assert conflicts > 0, "the race really happened"
    assert [e.version for e in await store.load("race-1")] == list(range(1, target + 1))
    await store.close()


async def test_reader_polling_by_sequence_misses_nothing(config: EventStoreConfig) -> None:
    """16 writers (some holding their transactions open, some rolling back) and one polling reader.

    Without the append lock this fails: a held-open transaction owns a low sequence while others
    commit higher ones, the reader moves past it, and the late commit is never seen.
    """
    store = PostgresEventStore(config)
    pool = await store.pool()
    committed: set[uuid.UUID] = set()
    rolled_back: set[uuid.UUID] = set()
    writers_done = asyncio.Event()

    async def writer(w: int) -> None:
        for round_ in range(25):
            batch = [ev(round_) for _ in range(1 + round_ % 3)]
            res = await store.append_events(f"writer-{w}", batch)
            committed.update(e.event_id for e in res.events if e.event_id)

    async def slow_writer(w: int) -> None:
        for round_ in range(2):
            async with pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                (res,) = await store.append_batch([prepare_append(f"slow-{w}", [ev(round_)])], connection=conn)
                assert not isinstance(res, Exception)
                await asyncio.sleep(1.2)  # deliberately hold the transaction open, as Marten's repro does
                await tx.commit()
                committed.update(e.event_id for e in res.events if e.event_id)

    async def rollback_writer(w: int) -> None:
        for round_ in range(5):
            async with pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                (res,) = await store.append_batch([prepare_append(f"rollback-{w}", [ev(round_)])], connection=conn)
                assert not isinstance(res, Exception)
                await tx.rollback()
                rolled_back.update(e.event_id for e in res.events if e.event_id)

    seen: list[tuple[int, uuid.UUID]] = []

    async def reader() -> None:
        last = 0
        while True:
            done = writers_done.is_set()
            batch = await store.read_all(after_sequence=last, limit=50)
            for e in batch:
                assert e.sequence and e.sequence > last
                last = e.sequence
                assert e.event_id
                seen.append((e.sequence, e.event_id))
            if done and not batch:
                return
            if not batch:
                await asyncio.sleep(0.005)  # poll interval of a polling reader, not synchronisation

    reader_task = asyncio.create_task(reader())
    writers = (
        [writer(w) for w in range(12)] + [slow_writer(w) for w in range(2)] + [rollback_writer(w) for w in range(2)]
    )
    await asyncio.gather(*writers)
    writers_done.set()
    await reader_task

    ids = [i for _, i in seen]
    assert len(ids) == len(set(ids)), "no event seen twice"
    assert set(ids) == committed, "every committed event seen"
    assert not set(ids) & rolled_back
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    everything = await store.read_all(limit=100_000)
    assert [e.event_id for e in everything] == ids
    await store.close()


async def test_events_are_append_only(pg_dsn: str, config: EventStoreConfig, pg: object) -> None:
    from k1s0_event_store.schema import ensure_app_role

    store = PostgresEventStore(config)
    await store.append("order-1", [ev(1), ev(2)])
    role = f"{config.schema}_app"
    admin = await asyncpg.connect(pg_dsn)
    await ensure_app_role(admin, config.schema, role, "s3cret'pw")
    host_dsn = pg_dsn.replace("postgres@", f"{role}:s3cret%27pw@")
    app = await asyncpg.connect(host_dsn)
    s = f'"{config.schema}"'
    try:
        for sql in (
            f"UPDATE {s}.events SET event_type = 'x'",
            f"DELETE FROM {s}.events",
            f"TRUNCATE {s}.events",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute(sql)
            # Not even the owner can: the trigger refuses it.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await admin.execute(sql)
        # The role can do what the sidecar needs, including the one deletion path.
        app_store = PostgresEventStore(EventStoreConfig(dsn=host_dsn, schema=config.schema))
        assert await app_store.append("order-2", [ev(3)], expected_version=-1) == 1
        assert len(await app_store.load("order-1")) == 2
        assert await app_store.delete_stream("order-1") == 2
        assert await app_store.read_all() and not await app_store.exists("order-1")
        await app_store.close()
    finally:
        await app.close()
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()
        await store.close()


async def test_migrate_is_idempotent_and_concurrent(pg_dsn: str) -> None:
    from k1s0_event_store.schema import LATEST_VERSION, applied_version, migrate
    from tests.conftest import drop_schema, new_schema_name

    name = new_schema_name("mig")
    conns = [await asyncpg.connect(pg_dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c, name) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, 0, LATEST_VERSION]
        assert await applied_version(conns[0], name) == LATEST_VERSION
        assert await migrate(conns[0], name) == []
    finally:
        for c in conns:
            await c.close()
        await drop_schema(pg_dsn, name)


@pytest.mark.parametrize("bad", ["Bad", "1abc", "a-b", "pg_x", "public", 'x"; DROP TABLE y; --', "a" * 64, ""])
def test_schema_identifiers_are_validated(bad: str) -> None:
    from k1s0_event_store.schema import quote_ident

    with pytest.raises(ValueError):
        quote_ident(bad)
    with pytest.raises(ValueError):
        EventStoreConfig(dsn="postgresql://x", schema=bad)
