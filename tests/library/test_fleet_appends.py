"""Several stores on one schema, as the sidecars of one app's replicas are: each with its own pool
and its own idea of the streams' versions. The write path plans on what a store last saw and
writes in one statement that checks the plan under the lock; these tests make the plans go stale
for real and check that no answer is ever made from a stale plan."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from k1s0_event_store import (
    AppendResult,
    ConcurrencyError,
    EventEnvelope,
    EventStoreConfig,
    EventStoreError,
    PostgresEventStore,
    ReadForm,
    ValidationError,
    prepare_append,
)
from k1s0_event_store.schema import append_lock_key, enable_parallel_commits, parallel_commits


@pytest.fixture
async def fleet(config: EventStoreConfig) -> AsyncIterator[list[PostgresEventStore]]:
    stores = [PostgresEventStore(config) for _ in range(4)]
    yield stores
    for s in stores:
        await s.close()


def ev(n: int, event_id: uuid.UUID | None = None) -> EventEnvelope:
    return EventEnvelope("Counted", {"n": n}, event_id=event_id)


async def test_read_modify_write_across_stores_loses_no_update(fleet: list[PostgresEventStore]) -> None:
    """16 writers on 4 stores increment 3 hot streams with expected_version; every version has one
    winner, and the stores really did see stale plans (other stores' writes) and recover."""
    streams = ["hot-a", "hot-b", "hot-c"]
    target = 40
    wins: dict[str, list[int]] = {s: [] for s in streams}

    async def writer(i: int) -> None:
        store = fleet[i % len(fleet)]
        stream = streams[i % len(streams)]
        while True:
            seen = await store.current_version(stream)
            if seen >= target:
                return
            try:
                wins[stream].append(await store.append(stream, [ev(i)], expected_version=seen))
            except ConcurrencyError as exc:
                assert exc.actual_version > seen

    await asyncio.gather(*(writer(i) for i in range(16)))
    for stream in streams:
        assert sorted(wins[stream]) == list(range(1, target + 1))
        assert [e.version for e in await fleet[0].load(stream)] == list(range(1, target + 1))
    assert sum(s.append_stats.replanned for s in fleet) > 0, "no plan went stale: the race did not happen"


async def test_a_stale_guess_is_checked_not_trusted(fleet: list[PostgresEventStore]) -> None:
    a, b = fleet[0], fleet[1]
    await a.append("guess-1", [ev(1)])  # a now believes guess-1 is at 1
    await b.append("guess-1", [ev(2), ev(3)])  # b moves it to 3 behind a's back
    before = a.append_stats.replanned
    # "any version": a's guess (1) is stale; the events must land at 4, not collide at 2.
    assert await a.append("guess-1", [ev(4)]) == 4
    assert a.append_stats.replanned == before + 1
    # A refusal is never made from a guess: a thinks 4, b writes 5, a's expected 5 must succeed.
    await b.append("guess-1", [ev(5)])
    assert await a.append("guess-1", [ev(6)], expected_version=5) == 6
    with pytest.raises(ConcurrencyError) as exc:
        await a.append("guess-1", [ev(7)], expected_version=4)
    assert exc.value.actual_version == 6
    assert [e.payload["n"] for e in await a.load("guess-1")] == [1, 2, 3, 4, 5, 6]


async def test_a_retry_racing_its_original_on_another_store_is_answered_once(
    fleet: list[PostgresEventStore],
) -> None:
    """The same event ids sent through four stores at once: one write, three replays of it."""
    for round_ in range(10):
        ids = [uuid.uuid4(), uuid.uuid4()]
        stream = f"retry-{round_}"
        outcomes = await asyncio.gather(
            *(s.append(stream, [ev(1, ids[0]), ev(2, ids[1])], expected_version=0) for s in fleet)
        )
        assert outcomes == [2, 2, 2, 2]
        stored = await fleet[0].load(stream)
        assert [e.event_id for e in stored] == ids


async def test_a_plan_that_keeps_losing_is_decided_under_the_lock(config: EventStoreConfig) -> None:
    """A writer whose every optimistic plan is beaten (another session appends to the stream each
    time it plans) still completes, by deciding under the lock, and answers correctly."""
    store = PostgresEventStore(config)
    await store.append("contended", [ev(0)])
    original = store._read_state
    rival = PostgresEventStore(config)

    async def read_then_lose(c: asyncpg.Connection, requests: object) -> object:
        state = await original(c, requests)  # type: ignore[arg-type]
        if not c.is_in_transaction():  # the optimistic path: lands between this plan and its write
            await rival.append("contended", [ev(99)])
        return state

    try:
        store._known_versions["contended"] = 0  # the first guess is stale too
        store._read_state = read_then_lose  # type: ignore[method-assign]
        assert await store.append("contended", [ev(1)]) > 1
        assert store.append_stats.locked == 1
        events = await store.load("contended")
        assert [e.version for e in events] == list(range(1, len(events) + 1))
        assert events[-1].payload == {"n": 1}
    finally:
        store._read_state = original  # type: ignore[method-assign]
        await rival.close()
        await store.close()


def _with_payload_json(request: object, payload_json: str) -> object:
    """The request with its first event's JSON text replaced, bypassing validation: what a value
    that passed our checks but not PostgreSQL's would look like."""
    req = request
    first = req.events[0]._replace(payload_json=payload_json)  # type: ignore[attr-defined]
    return type(req)(req.stream_id, (first, *req.events[1:]), req.expected_version)  # type: ignore[attr-defined]


@pytest.mark.parametrize("poison", ["1e200000", '{"a": "\\u0000"}', "not json"])
async def test_one_bad_request_fails_alone_and_its_batch_commits(config: EventStoreConfig, poison: str) -> None:
    store = PostgresEventStore(config)
    try:
        requests = [prepare_append(f"batch-{i}", [ev(i)], expected_version=0) for i in range(9)]
        requests[5] = _with_payload_json(requests[5], poison)  # type: ignore[assignment]
        results: list[AppendResult | EventStoreError] = await store.append_batch(requests)
        assert [type(r).__name__ for r in results] == ["AppendResult"] * 5 + ["ValidationError"] + [
            "AppendResult"
        ] * 3
        bad = results[5]
        assert isinstance(bad, ValidationError) and "PostgreSQL refused" in str(bad)
        for i in (0, 1, 2, 3, 4, 6, 7, 8):
            assert [e.payload for e in await store.load(f"batch-{i}")] == [{"n": i}]
        assert await store.current_version("batch-5") == 0
    finally:
        await store.close()


async def test_requests_of_a_bisected_batch_still_see_each_other(config: EventStoreConfig) -> None:
    """A batch split to isolate a bad request keeps the order: a later request that expects an
    earlier one's version still succeeds."""
    store = PostgresEventStore(config)
    try:
        requests = [
            prepare_append("chain", [ev(1)], expected_version=0),
            prepare_append("chain", [ev(2)], expected_version=1),
            prepare_append("other", [ev(3)], expected_version=0),
            prepare_append("chain", [ev(4)], expected_version=2),
        ]
        requests[2] = _with_payload_json(requests[2], "1e200000")  # type: ignore[assignment]
        results = await store.append_batch(requests)
        assert [getattr(r, "current_version", None) for r in results] == [1, 2, None, 3]
        assert isinstance(results[2], ValidationError)
    finally:
        await store.close()


async def test_the_append_lock_is_not_held_across_client_round_trips(config: EventStoreConfig, pg_dsn: str) -> None:
    """While appends run, sample the lock: nobody may hold the schema's append lock while idle in
    a transaction or waiting for its client (the shape that made the fleet collapse)."""
    store = PostgresEventStore(config)
    await store.append("warm", [ev(0)])
    watcher = await asyncpg.connect(pg_dsn)
    oid = await watcher.fetchval("SELECT oid::bigint FROM pg_namespace WHERE nspname = $1", config.schema)
    key = append_lock_key(int(oid))
    stop = asyncio.Event()
    holders_waiting_on_client: list[str] = []
    samples = 0

    async def writer(i: int) -> None:
        while not stop.is_set():
            await store.append(f"rt-{i}-{uuid.uuid4().hex[:6]}", [ev(i)])

    async def sample() -> None:
        nonlocal samples
        objid = key & 0xFFFFFFFF
        classid = key >> 32
        while samples < 300:
            rows = await watcher.fetch(
                "SELECT a.state, a.wait_event FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::oid AND l.objid = $2::oid",
                classid, objid,
            )
            samples += 1
            # (pg_locks and pg_stat_activity are read one after the other: a holder may be seen
            # 'idle' just after it released the lock and finished; inside a transaction it may not.)
            for r in rows:
                if r["state"] == "idle in transaction":
                    holders_waiting_on_client.append(f"{r['state']}/{r['wait_event']}")
        stop.set()

    try:
        await asyncio.gather(sample(), *(writer(i) for i in range(8)))
        # With parallel commits the lock is a session lock released inside the statement: none may
        # be left behind on a pooled connection (every other appender would wait on it forever).
        leftover = await watcher.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1::oid AND objid = $2::oid"
            " AND objsubid = 1",
            key >> 32, key & 0xFFFFFFFF,
        )
    finally:
        await watcher.close()
        await store.close()
    assert samples == 300
    assert holders_waiting_on_client == []
    assert leftover == 0


async def _append_in_open_transaction(conn: asyncpg.Connection, schema: str, stream: str) -> int:
    """What a sidecar's append does, but inside a transaction left open: the rows are in, the
    append lock is released (parallel commits), the commit has not happened."""
    now = await conn.fetchval("SELECT now()")
    await conn.execute("BEGIN")
    rows = await conn.fetch(
        f'SELECT * FROM "{schema}".append_planned($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)',
        [stream], [0], [], [stream], ["held"], [1], [uuid.uuid4()], [stream], [1], ["Held"], ['{"n": 0}'],
        ["{}"], [now],
    )
    assert rows, "the plan was not stale"
    return int(rows[0]["r_sequence"])


async def test_a_later_commit_is_not_read_past_an_earlier_append_still_committing(
    config: EventStoreConfig, pg_dsn: str
) -> None:
    """Parallel commits: an append holds sequence n and has not committed; another commits n+1.
    Readers of the global order must stop below n until it commits, then see both, in order."""
    store = PostgresEventStore(config)
    held = await asyncpg.connect(pg_dsn)
    try:
        await store.append("before", [ev(0)])
        low = await _append_in_open_transaction(held, config.schema, "held-1")
        high = await asyncio.wait_for(store.append_batch([prepare_append("later-1", [ev(1)])]), 10)
        result = high[0]
        assert isinstance(result, AppendResult)
        later = result.events[0].sequence
        assert later is not None and later > low, "the later append did not wait for the held one"
        seen = [e.sequence for e in await store.read_all(0)]
        assert later not in seen and low not in seen
        assert await store.head_sequence() < low
        assert [e.stream_id for e in await store.read_all(0, form=ReadForm.ENCODED)] == ["before"]
        await held.execute("COMMIT")
        assert [(e.stream, e.sequence) for e in await store.read_all(0)][-2:] == [("held-1", low), ("later-1", later)]
        assert await store.head_sequence() == later
    finally:
        await held.close()
        await store.close()


async def test_a_rolled_back_append_frees_the_readers(config: EventStoreConfig, pg_dsn: str) -> None:
    store = PostgresEventStore(config)
    held = await asyncpg.connect(pg_dsn)
    try:
        low = await _append_in_open_transaction(held, config.schema, "held-2")
        await store.append("later-2", [ev(1)])
        assert await store.read_all(0) == []
        await held.execute("ROLLBACK")
        assert [e.stream for e in await store.read_all(0)] == ["later-2"]
        assert low not in [e.sequence for e in await store.read_all(0)]
    finally:
        await held.close()
        await store.close()


async def test_without_parallel_commits_the_lock_is_held_through_the_commit(
    config: EventStoreConfig, pg_dsn: str
) -> None:
    """A schema upgraded from the previous release (it had events) starts with parallel commits
    off: an append waits for the one in flight, as sidecars of the previous release expect."""
    admin = await asyncpg.connect(pg_dsn)
    store = PostgresEventStore(config)
    held = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(
            f'CREATE OR REPLACE FUNCTION "{config.schema}".parallel_commits() RETURNS BOOLEAN'
            " LANGUAGE sql IMMUTABLE AS 'SELECT false'"
        )
        assert not await parallel_commits(admin, config.schema)
        await _append_in_open_transaction(held, config.schema, "held-3")
        waiting = asyncio.create_task(store.append("later-3", [ev(1)]))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiting), 0.5)
        await held.execute("COMMIT")
        assert await asyncio.wait_for(waiting, 10) == 1
        await enable_parallel_commits(admin, config.schema)
        assert await parallel_commits(admin, config.schema)
    finally:
        await held.close()
        await admin.close()
        await store.close()


async def test_the_locked_path_waits_for_an_append_still_committing_and_plans_again(
    config: EventStoreConfig, pg_dsn: str
) -> None:
    """The transactional-outbox path (and the locked fallback) reads the committed versions; an
    append still committing the same stream's next version makes its insert wait and collide. It
    must plan again on the committed state, not fail the request."""
    store = PostgresEventStore(config)
    held = await asyncpg.connect(pg_dsn)
    outbox = await asyncpg.connect(pg_dsn)
    watcher = await asyncpg.connect(pg_dsn)
    try:
        await _append_in_open_transaction(held, config.schema, "shared-1")
        outbox_pid = outbox.get_server_pid()

        async def append_in_outbox() -> list[AppendResult | EventStoreError]:
            async with outbox.transaction():
                return await store.append_batch([prepare_append("shared-1", [ev(2)])], connection=outbox)

        task = asyncio.create_task(append_in_outbox())
        deadline = asyncio.get_running_loop().time() + 10
        waiting = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1"
        while await watcher.fetchval(waiting, outbox_pid) != "Lock":
            assert asyncio.get_running_loop().time() < deadline, "the outbox append never waited"
            assert not task.done(), task
        await held.execute("COMMIT")
        (result,) = await asyncio.wait_for(task, 10)
        assert isinstance(result, AppendResult), result
        assert result.current_version == 2
        assert [e.version for e in await store.load("shared-1")] == [1, 2]
    finally:
        for c in (held, outbox, watcher):
            await c.close()
        await store.close()
