"""The Forwarder component against real PostgreSQL and a real Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import replace

import asyncpg
import pytest

from k1s0_event_store import EventEnvelope, EventStoreConfig, PostgresEventStore
from k1s0_event_store.sidecar_config import KafkaSection
from k1s0_sidecar.forwarding import Forwarder, ForwarderSettings
from tests.support.kafka import LocalKafka
from tests.support.postgres import LocalPostgres

from .conftest import expected_events
from .support import TopicReader, create_topics, judge, poll_until


def kafka_section(bootstrap: str, topic: str, **changes: object) -> KafkaSection:
    return replace(KafkaSection(brokers=[bootstrap], topic_published=topic, enable_idempotence=False), **changes)


async def test_message_is_seed_format_with_key_headers_and_routing(
    config: EventStoreConfig, kafka: LocalKafka, topic: str
) -> None:
    routed = topic.replace("published", "routed")
    await create_topics(kafka.bootstrap, routed)
    store = PostgresEventStore(config)
    forwarder = Forwarder(config.dsn, config.schema, kafka_section(kafka.bootstrap, topic, routes={"Shipped": routed}))
    await forwarder.start()
    try:
        at = "2026-02-23T10:00:00.000+00:00"
        from datetime import datetime

        result = await store.append_events(
            "order-order-001",
            [
                EventEnvelope(
                    "OrderPlaced",
                    {"order_id": "order-001", "tenant_id": "tenant-abc", "total_amount": 3000},
                    {"actor_id": "user-001", "correlation_id": "corr_01JABCDEF1234567890", "causation_id": None},
                    occurred_at=datetime.fromisoformat(at),
                ),
                EventEnvelope("Shipped", {"carrier": "k1s0"}),
            ],
        )
        placed, shipped = result.events
        async with TopicReader(kafka.bootstrap, topic) as main, TopicReader(kafka.bootstrap, routed) as other:
            await main.until(lambda ms: len(ms) >= 1, 20, "the published event")
            await other.until(lambda ms: len(ms) >= 1, 20, "the routed event")
        (m,) = main.messages
        assert m.key == "order-order-001"
        assert list(m.value) == [
            "event_type", "stream_id", "sequence", "domain_event_type", "version", "payload", "metadata",
            "occurred_at", "stored_at",
        ]
        assert m.value == {
            "event_type": "EVENT_PUBLISHED",
            "stream_id": "order-order-001",
            "sequence": placed.sequence,
            "domain_event_type": "OrderPlaced",
            "version": 1,
            "payload": {"order_id": "order-001", "tenant_id": "tenant-abc", "total_amount": 3000},
            "metadata": {"actor_id": "user-001", "correlation_id": "corr_01JABCDEF1234567890", "causation_id": None},
            "occurred_at": at,
            "stored_at": placed.stored_at.isoformat(timespec="milliseconds") if placed.stored_at else None,
        }
        assert m.headers["content-type"] == b"application/json"
        assert m.headers["event-type"] == b"OrderPlaced"
        assert m.headers["correlation-id"] == b"corr_01JABCDEF1234567890"
        assert m.headers["event-id"] == str(placed.event_id).encode()
        (r,) = other.messages
        assert r.value["domain_event_type"] == "Shipped" and r.value["version"] == 2
        assert "correlation-id" not in r.headers  # none in its metadata
        await poll_until(lambda: _true(forwarder.status()["checkpoint"] == shipped.sequence), 10, "checkpoint")
        await poll_until(lambda: _true(forwarder.status()["lag_events"] == 0), 10, "lag measured")
        status = forwarder.status()
        assert status["state"] == "active" and status["lag_seconds"] == 0 and status["last_error"] is None
    finally:
        await forwarder.stop()
        await store.close()


async def _true(value: bool) -> bool:
    return value


async def write_load(config: EventStoreConfig, streams: list[str], per_stream: int, writers: int) -> int:
    """Concurrent writers, each owning some streams, appending 1-5 events at a time."""
    store = PostgresEventStore(replace(config, max_connections=writers + 2))
    rng = random.Random(6)
    owned = [streams[i::writers] for i in range(writers)]

    async def writer(mine: list[str]) -> int:
        left = {s: per_stream for s in mine}
        written = 0
        while left:
            s = rng.choice(list(left))
            n = min(left[s], rng.randint(1, 5))
            await store.append(s, [EventEnvelope("Counted", {"i": per_stream - left[s] + k}) for k in range(n)])
            left[s] -= n
            written += n
            if not left[s]:
                del left[s]
        return written

    try:
        return sum(await asyncio.gather(*(writer(m) for m in owned)))
    finally:
        await store.close()


@pytest.mark.slow
async def test_ten_thousand_events_on_200_streams_arrive_complete_and_in_order(
    config: EventStoreConfig, kafka: LocalKafka, topic: str
) -> None:
    forwarder = Forwarder(config.dsn, config.schema, kafka_section(kafka.bootstrap, topic))
    await forwarder.start()
    streams = [f"acct-{i:03d}" for i in range(200)]
    try:
        started = time.monotonic()
        written = await write_load(config, streams, 50, 40)
        wrote = time.monotonic() - started
        assert written == 10_000
        expected = await expected_events(config.dsn, config.schema)
        assert len(expected) == 10_000
        async with TopicReader(kafka.bootstrap, topic) as reader:
            await reader.until_has(expected, 60)
        drained = time.monotonic() - started
        verdict = judge(reader.messages, expected)
        print(f"\n10k events: written in {wrote:.1f}s, all on the topic after {drained:.1f}s; "
              f"duplicates {verdict.duplicates}")
        assert verdict.ok, verdict
        assert verdict.duplicates == 0  # no failure, no re-send
        # strictly increasing versions within each stream's partition
        by_stream: dict[str, list[int]] = {}
        for m in sorted(reader.messages, key=lambda m: (m.partition, m.offset)):
            by_stream.setdefault(m.key, []).append(m.value["version"])
        assert all(v == list(range(1, 51)) for v in by_stream.values())
    finally:
        await forwarder.stop()


async def test_one_active_forwarder_per_schema_and_takeover(
    config: EventStoreConfig, kafka: LocalKafka, topic: str
) -> None:
    section = kafka_section(kafka.bootstrap, topic)
    a = Forwarder(config.dsn, config.schema, section, ForwarderSettings(holder="a"))
    b = Forwarder(config.dsn, config.schema, section, ForwarderSettings(holder="b"))
    store = PostgresEventStore(config)
    await a.start()
    await poll_until(lambda: _true(a.status()["state"] == "active"), 10, "a active")
    await b.start()
    try:
        await poll_until(lambda: _true(b.status()["state"] == "standby"), 10, "b standby")
        for i in range(20):
            await store.append(f"s-{i % 4}", [EventEnvelope("E", {"i": i})])
        await poll_until(lambda: _true(a.status()["lag_events"] == 0 and a.status()["checkpoint"] == 20), 20, "a")
        assert b.status()["events_published"] == 0 and b.status()["active_holder"] == "a"
        # The active one's database session dies (as with kill -9): its lock goes with it.
        conn = await asyncpg.connect(config.dsn)
        try:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks l JOIN pg_stat_activity USING (pid)"
                " WHERE l.locktype = 'advisory' AND application_name = 'k1s0-forwarder' AND l.granted"
                " AND datname = current_database()"
                " AND pid IN (SELECT pid FROM pg_stat_activity WHERE application_name = 'k1s0-forwarder')"
                " AND l.objid = (SELECT oid FROM pg_namespace WHERE nspname = $1)::oid",
                config.schema,
            )
        finally:
            await conn.close()
        assert killed == 1
        took = await poll_until(lambda: _true(b.status()["state"] == "active"), 10, "takeover by b")
        print(f"\ntakeover after the holder's session died: {took:.2f}s")
        for i in range(20, 40):
            await store.append(f"s-{i % 4}", [EventEnvelope("E", {"i": i})])
        expected = await expected_events(config.dsn, config.schema)
        async with TopicReader(kafka.bootstrap, topic) as reader:
            await reader.until_has(expected, 30)
        verdict = judge(reader.messages, expected)
        assert verdict.ok, verdict
        # a is standby now (b holds the lock), and only one was ever active at a time
        await poll_until(lambda: _true(a.status()["state"] == "standby"), 10, "a standby")
    finally:
        await a.stop()
        await b.stop()
        await store.close()


async def test_missing_topic_is_reported_then_flows_once_created(config: EventStoreConfig, kafka: LocalKafka) -> None:
    topic = f"k1s0.test.{uuid.uuid4().hex[:10]}.late.v1"
    forwarder = Forwarder(config.dsn, config.schema, kafka_section(kafka.bootstrap, topic),
                          ForwarderSettings(backoff_max=0.5))
    store = PostgresEventStore(config)
    await forwarder.start()
    try:
        await store.append("late-1", [EventEnvelope("E", {})])
        await poll_until(lambda: _true(forwarder.status()["missing_topics"] == [topic]), 15, "missing topic")
        await poll_until(lambda: _true(forwarder.status()["lag_events"] == 1), 10, "lag measured")
        status = forwarder.status()
        assert topic in status["last_error"] and "never creates topics" in status["last_error"]
        assert status["state"] == "active" and status["checkpoint"] == 0
        failures = status["publish_failures"]
        await poll_until(lambda: _true(forwarder.status()["publish_failures"] >= failures + 2), 10, "retries")
        # still not created by us (no auto-creation through our metadata requests)
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            assert topic not in await admin.list_topics()
        finally:
            await admin.close()
        await create_topics(kafka.bootstrap, topic)
        async with TopicReader(kafka.bootstrap, topic) as reader:
            await reader.until(lambda ms: len(ms) == 1, 20, "the event")
        assert json.loads(json.dumps(reader.messages[0].value))["stream_id"] == "late-1"
        await poll_until(lambda: _true(forwarder.status()["last_error"] is None), 10, "recovered")
        assert forwarder.status()["missing_topics"] == []
    finally:
        await forwarder.stop()
        await store.close()


async def test_idempotence_on_against_a_broker_without_it_is_a_clear_error(
    config: EventStoreConfig, kafka: LocalKafka, topic: str
) -> None:
    """Idempotence is on by default; Tansu cannot do it. The forwarder says so and keeps trying."""
    assert KafkaSection().enable_idempotence is True
    forwarder = Forwarder(config.dsn, config.schema, kafka_section(kafka.bootstrap, topic, enable_idempotence=True),
                          ForwarderSettings(backoff_max=0.5))
    store = PostgresEventStore(config)
    await forwarder.start()
    try:
        await store.append("idem-1", [EventEnvelope("E", {})])
        await poll_until(lambda: _true("InitProducerId" in (forwarder.status()["last_error"] or "")), 15, "error")
        status = forwarder.status()
        assert "enable_idempotence: false" in status["last_error"]
        assert status["state"] == "active" and status["checkpoint"] == 0 and status["events_published"] == 0
    finally:
        await forwarder.stop()
        await store.close()


def test_idempotence_needs_acks_all() -> None:
    from k1s0_event_store.sidecar_config import ConfigError, load_config

    with pytest.raises(ConfigError, match="enable_idempotence"):
        load_config(env={"EVENTSTORE_KAFKA_PRODUCER_ACKS": "1", "EVENTSTORE_AUTH_MODE": "none"})
    cfg = load_config(env={"EVENTSTORE_KAFKA_PRODUCER_ACKS": "1", "EVENTSTORE_KAFKA_ENABLE_IDEMPOTENCE": "false",
                           "EVENTSTORE_AUTH_MODE": "none"})
    assert cfg.kafka.producer_acks == "1"


async def test_large_events_are_split_over_rounds_and_all_arrive(
    config: EventStoreConfig, kafka: LocalKafka, topic: str
) -> None:
    """Events of ~300 kB (incompressible): a partition batch holds at most three, a read at most a
    dozen; rounds are cut accordingly and every event arrives, in order."""
    import os

    store = PostgresEventStore(config)
    forwarder = Forwarder(config.dsn, config.schema, kafka_section(kafka.bootstrap, topic))
    try:
        for i in range(30):
            await store.append(f"big-{i % 3}", [EventEnvelope("Big", {"blob": os.urandom(150_000).hex()})])
        await forwarder.start()
        expected = await expected_events(config.dsn, config.schema)
        async with TopicReader(kafka.bootstrap, topic) as reader:
            await reader.until_has(expected, 60)
        verdict = judge(reader.messages, expected)
        assert verdict.ok and verdict.duplicates == 0, verdict
        await poll_until(lambda: _true(forwarder.status()["checkpoint"] == 30), 10, "checkpoint")
        assert forwarder.status()["rounds"] >= 4
    finally:
        await forwarder.stop()
        await store.close()


async def test_forwards_under_the_least_privilege_role(
    config: EventStoreConfig, pg: LocalPostgres, kafka: LocalKafka, topic: str
) -> None:
    """The sidecar's role (schema.app_role_grants) is enough: lock, checkpoint, LISTEN, read."""
    from k1s0_event_store.schema import ensure_app_role

    role = f"{config.schema}_fw"
    admin = await asyncpg.connect(config.dsn)
    await ensure_app_role(admin, config.schema, role, "pw")
    forwarder = Forwarder(pg.dsn_for(role, "pw"), config.schema, kafka_section(kafka.bootstrap, topic))
    store = PostgresEventStore(config)
    try:
        await forwarder.start()
        await store.append("priv-1", [EventEnvelope("E", {})])
        await poll_until(lambda: _true(forwarder.status()["checkpoint"] == 1), 15, "forwarded as the app role")
        assert forwarder.status()["last_error"] is None
    finally:
        await forwarder.stop()
        await store.close()
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()


@pytest.mark.slow
async def test_postgres_restart_forwarder_reconnects_and_continues(kafka: LocalKafka, topic: str) -> None:
    """Its own PostgreSQL, restarted under the forwarder: the lease is re-taken, nothing is lost."""
    from k1s0_event_store.schema import migrate

    server = LocalPostgres(fsync=True)  # an immediate stop must not lose committed events
    server.start()
    try:
        conn = await asyncpg.connect(server.dsn)
        await migrate(conn, "restarted")
        await conn.close()
        config = EventStoreConfig(dsn=server.dsn, schema="restarted", min_connections=1, max_connections=4)
        forwarder = Forwarder(server.dsn, "restarted", kafka_section(kafka.bootstrap, topic),
                              ForwarderSettings(backoff_max=1.0))
        await forwarder.start()
        try:
            store = PostgresEventStore(config)
            for i in range(50):
                await store.append(f"pg-{i % 5}", [EventEnvelope("E", {"i": i})])
            await poll_until(lambda: _true(forwarder.status()["checkpoint"] == 50), 15, "first 50")
            await store.close()
            await asyncio.to_thread(server.stop, "immediate")  # a crash-like stop
            await poll_until(lambda: _true((forwarder.status()["last_error"] or "").startswith("PostgreSQL")), 15,
                             "database error reported")
            assert forwarder.status()["state"] != "active"
            await asyncio.to_thread(server.start)
            store = PostgresEventStore(config)
            for i in range(50, 100):
                await store.append(f"pg-{i % 5}", [EventEnvelope("E", {"i": i})])
            await store.close()
            # (sequences jump after a crash-like stop: PostgreSQL skips the cached identity values)
            expected = await expected_events(server.dsn, "restarted")
            assert len(expected) == 100
            async with TopicReader(kafka.bootstrap, topic) as reader:
                await reader.until_has(expected, 30)
            verdict = judge(reader.messages, expected)
            assert verdict.ok, verdict
            print(f"\nPostgreSQL restarted under the forwarder: {verdict.duplicates} duplicates")
            await poll_until(lambda: _true(forwarder.status()["lag_events"] == 0), 10, "no lag")
            assert forwarder.status()["last_error"] is None
            assert forwarder.status()["state"] == "active"
        finally:
            await forwarder.stop()
    finally:
        server.destroy()
