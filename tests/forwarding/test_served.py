"""Process-level: a real ``k1s0-eventstore serve`` forwarding to a real broker, then broken on purpose."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from k1s0_event_store import EventEnvelope, EventStoreConfig, PostgresEventStore, prepare_append
from tests.conftest import create_schema, drop_schema
from tests.support.kafka import LocalKafka
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar

from .conftest import expected_events
from .support import TopicReader, Verdict, create_topics, judge, poll_until

pytestmark = pytest.mark.slow


def served(dsn: str, schema: str, bootstrap: str, topic: str) -> ServedSidecar:
    return ServedSidecar(
        dsn, schema,
        env={
            "EVENTSTORE_KAFKA_BROKERS": bootstrap,
            "EVENTSTORE_KAFKA_TOPIC_PUBLISHED": topic,
            "EVENTSTORE_KAFKA_ENABLE_IDEMPOTENCE": "false",  # Tansu cannot; production keeps it on
        },
    )


async def status(sidecar: ServedSidecar) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{sidecar.base_url}/api/v1/forwarder/status") as r:
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body


async def metrics(sidecar: ServedSidecar) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{sidecar.base_url}/metrics") as r:
        return await r.text()


async def test_empty_brokers_disables_the_forwarder(pg: LocalPostgres, schema: str) -> None:
    sidecar = ServedSidecar(pg.dsn, schema).start()  # EVENTSTORE_KAFKA_BROKERS=""
    try:
        assert await status(sidecar) == {"enabled": False, "state": "disabled", "reason": "kafka.brokers is empty"}
        assert "eventstore_forwarder_active" not in await metrics(sidecar)
    finally:
        sidecar.stop()


async def head(dsn: str, schema: str) -> int:
    store = PostgresEventStore(EventStoreConfig(dsn=dsn, schema=schema, min_connections=1, max_connections=2))
    try:
        return await store.head_sequence()
    finally:
        await store.close()


@pytest.fixture
async def schema(pg: LocalPostgres) -> AsyncIterator[str]:
    name = await create_schema(pg.dsn, "fw")
    yield name
    await drop_schema(pg.dsn, name)


@pytest.fixture
def own_broker() -> Iterator[LocalKafka]:
    with LocalKafka() as broker:
        yield broker


class Load:
    """``clients`` background loops of ``_client(i)`` until ``stop``."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _client(self, i: int) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


class Writers(Load):
    """Background writers appending straight to PostgreSQL (the library), unaffected by sidecar crashes."""

    def __init__(self, dsn: str, schema: str, streams: int, writers: int) -> None:
        super().__init__(writers)
        self.store = PostgresEventStore(EventStoreConfig(dsn=dsn, schema=schema, max_connections=writers + 2))
        self.streams = [f"load-{i:03d}" for i in range(streams)]
        self.writers = writers
        self.written = 0

    async def _client(self, seed: int) -> None:
        rng = random.Random(seed)
        mine = self.streams[seed :: self.writers]
        while not self._stop.is_set():
            n = rng.randint(1, 4)
            await self.store.append(rng.choice(mine), [EventEnvelope("Loaded", {"n": k}) for k in range(n)])
            self.written += n
            await asyncio.sleep(0.002)

    async def stop(self) -> None:
        await super().stop()
        await self.store.close()


async def test_kill_9_mid_forwarding_then_restart_loses_nothing(pg: LocalPostgres, schema: str, kafka: LocalKafka,
                                                                 topic: str) -> None:
    first = served(pg.dsn, schema, kafka.bootstrap, topic).start()
    writers = Writers(pg.dsn, schema, streams=60, writers=8)
    second: ServedSidecar | None = None
    try:
        writers.start()
        await poll_until(lambda: _at_least(first, 1000), 30, "1000 events forwarded")
        before = await status(first)
        first.kill()  # SIGKILL in the middle of forwarding, writers still appending
        killed_at = await head(pg.dsn, schema)
        assert before["state"] == "active" and killed_at > before["checkpoint"], (before, killed_at)
        await asyncio.sleep(0)  # writers keep going while no sidecar runs
        await poll_until(lambda: _head_above(pg.dsn, schema, killed_at + 500), 30, "more appends without sidecar")
        second = served(pg.dsn, schema, kafka.bootstrap, topic).start()
        await poll_until(lambda: _at_least(second, 500), 30, "forwarding again")
        await writers.stop()
        expected, verdict = await forwarded(pg.dsn, schema, kafka.bootstrap, topic, 60)
        print(f"\nkill -9 mid-forwarding: {len(expected)} events, {verdict.messages} messages, "
              f"{verdict.duplicates} duplicates (re-sent after the crash); checkpoint at kill "
              f"{before['checkpoint']}, head at kill {killed_at}")
        assert verdict.ok, verdict
    finally:
        if not writers._stop.is_set():
            await writers.stop()
        first.stop()
        if second is not None:
            second.stop()


async def forwarded(dsn: str, schema: str, bootstrap: str, topic: str, timeout: float,
                    *, poll_again: bool = False) -> tuple[set[tuple[str, int]], Verdict]:
    """Every event in the schema, read back from the topic (waiting up to ``timeout`` for all of
    them; ``poll_again``: one more poll after that, for late duplicates), and the verdict on them."""
    expected = await expected_events(dsn, schema)
    async with TopicReader(bootstrap, topic) as reader:
        await reader.until_has(expected, timeout)
        if poll_again:
            await reader.poll()
    return expected, judge(reader.messages, expected)


async def _at_least(sidecar: ServedSidecar, published: int) -> bool:
    return int((await status(sidecar))["events_published"]) >= published


async def _head_above(dsn: str, schema: str, sequence: int) -> bool:
    return await head(dsn, schema) > sequence


async def test_two_sidecars_one_publishes_then_the_other_takes_over(pg: LocalPostgres, schema: str,
                                                                    kafka: LocalKafka, topic: str) -> None:
    a = served(pg.dsn, schema, kafka.bootstrap, topic).start()
    b = served(pg.dsn, schema, kafka.bootstrap, topic).start()
    store = PostgresEventStore(EventStoreConfig(dsn=pg.dsn, schema=schema, max_connections=4))
    try:
        async def states() -> set[str]:
            return {(await status(a))["state"], (await status(b))["state"]}

        await poll_until(lambda: _eq(states(), {"active", "standby"}), 20, "one active, one standby")
        await append_pairs(store, range(300))
        await poll_until(lambda: _sum_published(a, b, 300), 20, "300 published")
        sa, sb = await status(a), await status(b)
        active, standby = (a, b) if sa["state"] == "active" else (b, a)
        published = {sa["state"]: sa["events_published"], sb["state"]: sb["events_published"]}
        assert published == {"active": 300, "standby": 0}, published
        assert "eventstore_forwarder_active 1.0" in await metrics(active)
        standby_metrics = await metrics(standby)
        assert "eventstore_forwarder_active 0.0" in standby_metrics
        for name in ("eventstore_forwarder_lag_events", "eventstore_forwarder_lag_seconds",
                     "eventstore_forwarder_events_published_total", "eventstore_forwarder_publish_failures_total"):
            assert name in standby_metrics
        active.kill()
        took = await poll_until(lambda: _state(standby, "active"), 15, "takeover")
        await append_pairs(store, range(300, 600))
        _, verdict = await forwarded(pg.dsn, schema, kafka.bootstrap, topic, 30)
        print(f"\ntwo sidecars: takeover {took:.2f}s after kill -9 of the active one; "
              f"{verdict.duplicates} duplicates")
        assert verdict.ok, verdict
        assert took < 5
        # A graceful stop (SIGTERM) hands over too: the restarted one is standby, the active one
        # is terminated, the restarted one takes over and the events keep flowing.
        restarted = served(pg.dsn, schema, kafka.bootstrap, topic).start()
        try:
            await poll_until(lambda: _state(restarted, "standby"), 10, "restarted sidecar standby")
            survivor = standby  # active since the kill
            assert survivor.terminate() == 0
            handover = await poll_until(lambda: _state(restarted, "active"), 10, "takeover after SIGTERM")
            await append_pairs(store, range(600, 700))
            _, verdict = await forwarded(pg.dsn, schema, kafka.bootstrap, topic, 30)
            print(f"SIGTERM of the active sidecar: takeover {handover:.2f}s; {verdict.duplicates} duplicates")
            assert verdict.ok, verdict
        finally:
            restarted.stop()
    finally:
        await store.close()
        a.stop()
        b.stop()


async def append_pairs(store: PostgresEventStore, numbers: range) -> None:
    """One event per number, in turn over ten streams pair-0 .. pair-9."""
    for i in numbers:
        await store.append(f"pair-{i % 10}", [EventEnvelope("E", {"i": i})])


async def _eq(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _state(sidecar: ServedSidecar, state: str) -> bool:
    return bool((await status(sidecar))["state"] == state)


async def _sum_published(a: ServedSidecar, b: ServedSidecar, n: int) -> bool:
    return int((await status(a))["events_published"]) + int((await status(b))["events_published"]) >= n


class RestLoad(Load):
    """Appends through the sidecar's REST API; every failure is kept."""

    def __init__(self, sidecar: ServedSidecar, clients: int) -> None:
        super().__init__(clients)
        self.sidecar = sidecar
        self.ok = 0
        self.failed: list[str] = []
        self.slowest = 0.0

    async def _client(self, i: int) -> None:
        async with aiohttp.ClientSession(base_url=self.sidecar.base_url) as http:
            k = 0
            while not self._stop.is_set():
                body = {"events": [{"event_type": "Ticked", "payload": {"k": k}}]}
                started = time.monotonic()
                async with http.post(f"/api/v1/streams/rest-{i}-{k % 5}/events", json=body) as r:
                    if r.status != 201:
                        self.failed.append(f"{r.status} {await r.text()}")
                    else:
                        self.ok += 1
                self.slowest = max(self.slowest, time.monotonic() - started)
                k += 1
                await asyncio.sleep(0.01)


async def test_broker_frozen_20s_then_replaced_by_an_empty_one(pg: LocalPostgres, schema: str,
                                                               own_broker: LocalKafka) -> None:
    topic = f"k1s0.test.{uuid.uuid4().hex[:10]}.published.v1"
    await create_topics(own_broker.bootstrap, topic)
    sidecar = served(pg.dsn, schema, own_broker.bootstrap, topic).start()
    load = RestLoad(sidecar, clients=4)
    try:
        load.start()
        await poll_until(lambda: _at_least(sidecar, 100), 20, "forwarding")
        own_broker.freeze()
        frozen_at = time.monotonic()
        ok_before = load.ok
        saw_error = False
        while time.monotonic() - frozen_at < 20:
            async with aiohttp.ClientSession() as http, http.get(f"{sidecar.base_url}/readyz") as r:
                assert r.status == 200  # appends stay available
            saw_error = saw_error or (await status(sidecar))["last_error"] is not None
            await asyncio.sleep(0.5)
        frozen = await status(sidecar)
        assert load.ok > ok_before + 200 and not load.failed, (load.ok, load.failed[:3])
        assert frozen["lag_events"] > 0 and saw_error, frozen
        own_broker.thaw()
        thawed_at = time.monotonic()
        await load.stop()
        final = await head(pg.dsn, schema)
        await poll_until(lambda: _drained(sidecar, final), 60, "backlog drained")
        drain = time.monotonic() - thawed_at
        _, verdict = await forwarded(pg.dsn, schema, own_broker.bootstrap, topic, 30)
        print(f"\nbroker frozen 20s: {load.ok} REST appends, none failed (slowest {load.slowest:.3f}s), "
              f"lag {frozen['lag_events']} events / {frozen['lag_seconds']}s at thaw; drained {drain:.1f}s after "
              f"thaw; {verdict.duplicates} duplicates")
        assert verdict.ok, verdict

        # Now the broker dies and an empty one takes its port: the topic is gone.
        own_broker.kill()
        fresh = LocalKafka(port=own_broker.port)
        fresh.start()
        own_broker.proc = fresh.proc  # the fixture stops it
        store = PostgresEventStore(EventStoreConfig(dsn=pg.dsn, schema=schema, max_connections=2))
        try:
            for i in range(10):
                await store.append(f"after-{i}", [EventEnvelope("AfterRestart", {"i": i})])
            await poll_until(lambda: _missing(sidecar, topic), 30, "missing topic reported")
            s1 = await status(sidecar)
            assert sidecar.proc is not None and sidecar.proc.poll() is None  # no crash
            assert s1["state"] == "active" and topic in (s1["last_error"] or "")
            await asyncio.sleep(3)  # a few seconds of broker without topic: backoff, not a busy loop
            s2 = await status(sidecar)
            attempts = s2["publish_failures"] - s1["publish_failures"]
            assert attempts <= 10, attempts
            print(f"missing topic: reported as {s1['last_error']!r}; {attempts} attempts in 3s")
            await create_topics(fresh.bootstrap, topic)
            for i in range(10, 20):
                await store.append(f"after-{i}", [EventEnvelope("AfterRestart", {"i": i})])
            after = {(f"after-{i}", 1) for i in range(20)}
            async with TopicReader(fresh.bootstrap, topic) as reader:
                await reader.until_has(after, 30)
            assert (await status(sidecar))["missing_topics"] == []
        finally:
            await store.close()
    finally:
        if not load._stop.is_set():
            await load.stop()
        if own_broker.proc is not None:
            own_broker.thaw()
        sidecar.stop()


async def _drained(sidecar: ServedSidecar, sequence: int) -> bool:
    s = await status(sidecar)
    return bool(s["checkpoint"] is not None and s["checkpoint"] >= sequence)


async def _missing(sidecar: ServedSidecar, topic: str) -> bool:
    return bool((await status(sidecar))["missing_topics"] == [topic])




async def test_kill_9_while_a_round_is_in_flight_duplicates_counted(pg: LocalPostgres, schema: str,
                                                                     own_broker: LocalKafka) -> None:
    """The broker is frozen with a round in flight; the sidecar is killed; the broker thaws and may
    still append that round; the restarted sidecar sends it again: duplicates, in order, none lost."""
    topic = f"k1s0.test.{uuid.uuid4().hex[:10]}.published.v1"
    await create_topics(own_broker.bootstrap, topic)
    first = served(pg.dsn, schema, own_broker.bootstrap, topic).start()
    second: ServedSidecar | None = None
    store = PostgresEventStore(EventStoreConfig(dsn=pg.dsn, schema=schema, max_connections=4))
    try:
        for i in range(200):
            await store.append(f"flight-{i % 20}", [EventEnvelope("E", {"i": i})])
        await poll_until(lambda: _drained(first, 200), 20, "first 200 forwarded")
        own_broker.freeze()
        for i in range(200, 500):
            await store.append(f"flight-{i % 20}", [EventEnvelope("E", {"i": i})])
        await poll_until(lambda: _lag(first, 300), 20, "a round of 300 in flight")
        first.kill()
        own_broker.thaw()
        second = served(pg.dsn, schema, own_broker.bootstrap, topic).start()
        await poll_until(lambda: _drained(second, 500), 60, "drained after restart")
        expected, verdict = await forwarded(pg.dsn, schema, own_broker.bootstrap, topic, 30, poll_again=True)
        print(f"\nkill -9 with a round in flight on a frozen broker: {len(expected)} events, {verdict.messages} "
              f"messages, {verdict.duplicates} duplicates")
        assert verdict.ok, verdict
    finally:
        await store.close()
        first.stop()
        if second is not None:
            second.stop()


async def _lag(sidecar: ServedSidecar, events: int) -> bool:
    return bool((await status(sidecar))["lag_events"] == events)


async def test_kill_9_between_ack_and_checkpoint_resends_the_round(pg: LocalPostgres, schema: str, kafka: LocalKafka,
                                                                    topic: str) -> None:
    """Kafka has acknowledged a round but the checkpoint write is held up (a row lock taken by the
    test); the sidecar is killed right then. The restarted one sends the round again: exactly those
    events arrive twice, in order, and nothing is missing."""
    first = served(pg.dsn, schema, kafka.bootstrap, topic).start()
    second: ServedSidecar | None = None
    store = PostgresEventStore(EventStoreConfig(dsn=pg.dsn, schema=schema, max_connections=4))
    blocker = await asyncpg.connect(pg.dsn)
    try:
        for i in range(200):
            await store.append(f"ack-{i % 20}", [EventEnvelope("E", {"i": i})])
        await poll_until(lambda: _drained(first, 200), 20, "first 200 forwarded")
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(f'SELECT * FROM "{schema}".forwarder_checkpoint FOR UPDATE')
        await store.append_batch([prepare_append(f"ack-{i}", [EventEnvelope("E", {"late": i})]) for i in range(20)])
        async with TopicReader(kafka.bootstrap, topic) as reader:
            await reader.until(lambda ms: len(ms) >= 220, 20, "the round acknowledged by Kafka")
        assert (await status(first))["checkpoint"] == 200  # not yet moved
        first.kill()
        # Its checkpoint UPDATE still waits for the row lock in a server process that has not yet
        # noticed the client is gone; end that too, or it would commit once the lock is released.
        ended = await blocker.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'k1s0-forwarder' AND wait_event_type = 'Lock'"
        )
        assert ended == 1
        await tx.rollback()
        second = served(pg.dsn, schema, kafka.bootstrap, topic).start()
        await poll_until(lambda: _drained(second, 220), 30, "drained after restart")
        expected = await expected_events(pg.dsn, schema)
        async with TopicReader(kafka.bootstrap, topic) as reader:
            await reader.until(lambda ms: len(ms) >= 240, 30, "the re-sent round")
            await reader.poll()
        verdict = judge(reader.messages, expected)
        print(f"\nkill -9 between Kafka's ack and the checkpoint write: {len(expected)} events, "
              f"{verdict.messages} messages, {verdict.duplicates} duplicates (the re-sent round)")
        assert verdict.ok, verdict
        assert verdict.duplicates == 20
    finally:
        await blocker.close()
        await store.close()
        first.stop()
        if second is not None:
            second.stop()
