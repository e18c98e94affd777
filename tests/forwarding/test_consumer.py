"""The consumer helper: a redelivered event is handled once; a poison message is dead-lettered."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from k1s0_event_store import EventConsumer, EventEnvelope, EventStoreConfig, PostgresEventStore, PublishedEvent
from k1s0_event_store.consumer import ensure_consumer_tables
from k1s0_event_store.sidecar_config import KafkaSection
from k1s0_sidecar.forwarding import Forwarder
from tests.conftest import drop_schema, new_schema_name
from tests.support.kafka import CONSUMER_GROUP_TIMEOUTS, LocalKafka

from .support import TopicReader, create_topics, poll_until


@pytest.fixture
async def view(pg_dsn: str) -> AsyncIterator[str]:
    """The consuming service's own schema: the ledger and a projection table."""
    name = new_schema_name("view")
    conn = await asyncpg.connect(pg_dsn)
    try:
        await ensure_consumer_tables(conn, name)
        await ensure_consumer_tables(conn, name)  # idempotent
        await conn.execute(f'CREATE TABLE "{name}".projection (event_id TEXT PRIMARY KEY, stream_id TEXT, n INT)')
    finally:
        await conn.close()
    yield name
    await drop_schema(pg_dsn, name)


def consumer(kafka: LocalKafka, topic: str, pool: asyncpg.Pool, view: str, handler, **kw) -> EventConsumer:  # type: ignore[no-untyped-def]
    return EventConsumer(
        brokers=[kafka.bootstrap], topics=[topic], group_id=f"g-{uuid.uuid4().hex[:8]}", pool=pool, schema=view,
        handler=handler, consumer_options=CONSUMER_GROUP_TIMEOUTS, producer_options={"enable_idempotence": False},
        retry_backoff_seconds=0.05, **kw,
    )


async def _true(v: bool) -> bool:
    return v


async def test_redelivered_event_is_handled_once(
    config: EventStoreConfig, pg_dsn: str, kafka: LocalKafka, topic: str, view: str
) -> None:
    # Five events reach the topic through the forwarder, then the forwarder is made to re-send all of
    # them (its checkpoint reset, as after a crash before the checkpoint write): ten messages.
    store = PostgresEventStore(config)
    section = KafkaSection(brokers=[kafka.bootstrap], topic_published=topic, enable_idempotence=False)
    forwarder = Forwarder(config.dsn, config.schema, section)
    await forwarder.start()
    try:
        for i in range(5):
            await store.append(f"order-{i}", [EventEnvelope("OrderPlaced", {"n": i})])
        await poll_until(lambda: _true(forwarder.status()["checkpoint"] == 5), 20, "forwarded")
        await forwarder.stop()
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(f'UPDATE "{config.schema}".forwarder_checkpoint SET position = 0')
        finally:
            await conn.close()
        forwarder = Forwarder(config.dsn, config.schema, section)
        await forwarder.start()
        async with TopicReader(kafka.bootstrap, topic) as reader:
            await reader.until(lambda ms: len(ms) == 10, 20, "ten messages (each event twice)")
    finally:
        await forwarder.stop()
        await store.close()

    calls: list[str] = []

    async def project(event: PublishedEvent, conn: asyncpg.Connection) -> None:
        calls.append(event.event_id)
        await conn.execute(
            f'INSERT INTO "{view}".projection VALUES ($1, $2, $3)', event.event_id, event.stream_id,
            event.payload["n"],
        )

    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    try:
        c = consumer(kafka, topic, pool, view, project)
        task = asyncio.create_task(c.run())
        await poll_until(lambda: _true(c.stats.handled + c.stats.duplicates == 10), 60, "ten messages consumed")
        await c.stop()
        await task
        assert (c.stats.handled, c.stats.duplicates, c.stats.dead_lettered) == (5, 5, 0)
        assert len(calls) == 5 == len(set(calls))
        assert await pool.fetchval(f'SELECT count(*) FROM "{view}".projection') == 5
        assert await pool.fetchval(f'SELECT count(*) FROM "{view}".processed_events') == 5

    finally:
        await pool.close()


async def test_poison_messages_go_to_the_dead_letter_topic(
    pg_dsn: str, kafka: LocalKafka, topic: str, view: str
) -> None:
    dlq = f"{topic}.dlq"
    await create_topics(kafka.bootstrap, dlq, partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    await producer.start()
    try:
        def message(stream: str, version: int, kind: str) -> bytes:
            import json

            return json.dumps({
                "event_type": "EVENT_PUBLISHED", "stream_id": stream, "sequence": version, "domain_event_type": kind,
                "version": version, "payload": {"n": version}, "metadata": {}, "occurred_at": "", "stored_at": "",
            }).encode()

        await producer.send_and_wait(topic, message("s-1", 1, "Good"), key=b"s-1", headers=[("event-id", b"e1")])
        await producer.send_and_wait(topic, message("s-1", 2, "Poison"), key=b"s-1",
                                     headers=[("event-id", b"e2"), ("correlation-id", b"c-2")])
        await producer.send_and_wait(topic, b"{not json", key=b"s-1")
        await producer.send_and_wait(topic, message("s-1", 3, "Good"), key=b"s-1", headers=[("event-id", b"e3")])
    finally:
        await producer.stop()

    attempts: list[str] = []

    async def handler(event: PublishedEvent, conn: asyncpg.Connection) -> None:
        attempts.append(event.event_id)
        await conn.execute(f'INSERT INTO "{view}".projection VALUES ($1, $2, $3)', event.event_id, event.stream_id,
                           event.version)
        if event.event_type == "Poison":
            raise RuntimeError(f"cannot project {event.stream_id} v{event.version}")

    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    try:
        c = consumer(kafka, topic, pool, view, handler, dead_letter_topic=dlq, max_attempts=3)
        task = asyncio.create_task(c.run())
        await poll_until(lambda: _true(c.stats.handled == 2 and c.stats.dead_lettered == 2), 60, "consumed")
        await c.stop()
        await task
        assert attempts == ["e1", "e2", "e2", "e2", "e3"]  # three attempts, then on to the next
        # the poison's writes were rolled back each time; it is not marked processed
        assert sorted(await pool.fetchval(f'SELECT array_agg(event_id) FROM "{view}".projection')) == ["e1", "e3"]
        assert await pool.fetchval(
            f'SELECT count(*) FROM "{view}".processed_events WHERE event_id = $1', "e2") == 0
    finally:
        await pool.close()
    # read the dead letters raw (one of them is not JSON)
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    raw = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await raw.start()
    try:
        raw.assign([TopicPartition(dlq, 0)])
        got = []
        for _ in range(50):
            got += [r for rs in (await raw.getmany(timeout_ms=200)).values() for r in rs]
            if len(got) >= 2:
                break
    finally:
        await raw.stop()
    assert len(got) == 2
    poison, broken = (dict(r.headers) for r in got)
    assert poison["dlq-error"] == b"RuntimeError: cannot project s-1 v2"
    assert poison["dlq-error-type"] == b"RuntimeError" and poison["dlq-attempts"] == b"3"
    assert poison["dlq-original-topic"] == topic.encode() and poison["dlq-consumer-group"] == c.group_id.encode()
    assert poison["event-id"] == b"e2" and poison["correlation-id"] == b"c-2"  # original headers kept
    assert got[0].key == b"s-1" and b'"Poison"' in (got[0].value or b"")
    assert broken["dlq-error-type"] == b"UndecodableMessage" and broken["dlq-attempts"] == b"0"
    assert got[1].value == b"{not json"


async def test_consumer_killed_between_handling_and_offset_commit_handles_each_event_once(
    pg_dsn: str, kafka: LocalKafka, topic: str, view: str, tmp_path: Path
) -> None:
    """SIGKILL a consuming process mid-batch (handled, offsets not yet committed), restart it: the
    redelivered events are recognised, and every event is projected exactly once."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    await producer.start()
    try:
        for v in range(1, 201):  # one stream: one partition, one long batch
            body = {"event_type": "EVENT_PUBLISHED", "stream_id": "one", "sequence": v, "domain_event_type": "E",
                    "version": v, "payload": {}, "metadata": {}, "occurred_at": "", "stored_at": ""}
            await producer.send(topic, json.dumps(body).encode(), key=b"one", headers=[("event-id", f"e{v}".encode())])
        await producer.flush()
    finally:
        await producer.stop()
    group = f"g-{uuid.uuid4().hex[:8]}"

    def spawn(n: int) -> tuple[subprocess.Popen[bytes], Path]:
        stats = tmp_path / f"stats-{n}.json"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.forwarding.consumer_proc", kafka.bootstrap, topic, group, pg_dsn, view,
             str(stats)],
            stdout=(tmp_path / f"log-{n}.txt").open("wb"), stderr=subprocess.STDOUT,
        )
        return proc, stats

    async def projected() -> int:
        conn = await asyncpg.connect(pg_dsn)
        try:
            return int(await conn.fetchval(f'SELECT count(*) FROM "{view}".projection'))
        finally:
            await conn.close()

    first, _ = spawn(1)
    try:
        await poll_until(lambda: _gt(projected(), 50), 60, "50 events projected")
        first.kill()
        first.wait()
        done_before = await projected()
        second, stats = spawn(2)
        try:
            await poll_until(lambda: _gt(projected(), 199), 60, "all 200 projected")
            await poll_until(lambda: _true(stats.exists() and json.loads(stats.read_text())["handled"]
                                           >= 200 - done_before), 30, "second consumer's stats")
            seen = json.loads(stats.read_text())
        finally:
            second.kill()
            second.wait()
    finally:
        if first.poll() is None:
            first.kill()
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetchval(f'SELECT count(*) FROM "{view}".projection')
        distinct = await conn.fetchval(f'SELECT count(DISTINCT event_id) FROM "{view}".projection')
    finally:
        await conn.close()
    print(f"\nconsumer killed after {done_before} projected; restarted: {seen['duplicates']} redelivered and skipped, "
          f"{seen['handled']} handled; projection rows {rows}")
    assert rows == distinct == 200
    assert seen["duplicates"] > 0 and seen["handled"] + done_before == 200


async def _gt(value: Awaitable[int], n: int) -> bool:
    return await value > n
