"""Four sidecars writing to one schema, every one with its forwarder on: one publishes, all of it, in order."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import create_schema, drop_schema
from tests.forwarding.support import TopicReader, create_topics, judge
from tests.support.kafka import LocalKafka
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar

from .support import (
    DEADLINE,
    Client,
    HotStream,
    Ledger,
    OwnStreams,
    client,
    committed,
    judge_store,
    start_fleet,
    stop_fleet,
    wait_until,
)

pytestmark = pytest.mark.slow



@pytest.fixture
async def forwarding_fleet(pg: LocalPostgres, kafka: LocalKafka) -> AsyncIterator[tuple[list[ServedSidecar], str]]:
    schema = await create_schema(pg.dsn, "fleetfw")
    topic = f"k1s0.test.{uuid.uuid4().hex[:10]}.published.v1"
    await create_topics(kafka.bootstrap, topic)
    env = {
        "EVENTSTORE_KAFKA_BROKERS": kafka.bootstrap,
        "EVENTSTORE_KAFKA_TOPIC_PUBLISHED": topic,
        "EVENTSTORE_KAFKA_ENABLE_IDEMPOTENCE": "false",  # Tansu cannot; production keeps it on
    }
    sidecars = await asyncio.to_thread(start_fleet, pg.dsn, schema, 4, env)
    try:
        yield sidecars, topic
    finally:
        await asyncio.to_thread(stop_fleet, sidecars)
        await drop_schema(pg.dsn, schema)


async def statuses(http: aiohttp.ClientSession, sidecars: list[ServedSidecar]) -> list[dict[str, Any]]:
    async def one(s: ServedSidecar) -> dict[str, Any]:
        async with http.get(f"{s.base_url}/api/v1/forwarder/status") as r:
            assert r.status == 200, await r.text()
            body: dict[str, Any] = await r.json()
            return body

    return list(await asyncio.gather(*(one(s) for s in sidecars)))


async def test_four_writing_sidecars_forward_every_event_in_stream_order(
    forwarding_fleet: tuple[list[ServedSidecar], str], pg: LocalPostgres, kafka: LocalKafka
) -> None:
    """8 own-stream writers (REST and gRPC, 1- to 5-event appends) and 4 read-modify-write clients
    on one hot stream, over 4 sidecars. Exactly one forwarder is active at every sample; the topic
    holds every committed event, each at its sequence, each stream in order within one partition."""
    appends_each, hot_wins = 120, 10
    sidecars, topic = forwarding_fleet
    started = time.monotonic()
    ledger = Ledger()
    t = f"k{uuid.uuid4().hex[:8]}"
    samples: list[list[str]] = []
    clients: list[Client] = []
    async with aiohttp.ClientSession() as http:
        await wait_until(lambda: _one_active(http, sidecars), "one active forwarder and three standby")
        sampling = asyncio.Event()

        async def sample() -> None:
            while not sampling.is_set():
                samples.append([s["state"] for s in await statuses(http, sidecars)])
                await asyncio.sleep(0.1)  # sampling rate, not synchronisation

        sampler = asyncio.create_task(sample())
        try:
            own = []
            for i, sidecar in enumerate(sidecars):
                for protocol in ("rest", "grpc"):
                    c = client(sidecar, f"s{i}-{protocol}", protocol)
                    clients.append(c)
                    own.append(OwnStreams(c, ledger, t, appends=appends_each))
            hot = HotStream(f"{t}-hot")
            go = asyncio.Event()
            tasks = [asyncio.create_task(o.run()) for o in own]
            for i, sidecar in enumerate(sidecars):
                c = client(sidecar, f"s{i}-hot", "rest" if i % 2 else "grpc")
                clients.append(c)
                tasks.append(asyncio.create_task(hot.writer(c, ledger, hot_wins, go)))
            go.set()
            await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
            written = time.monotonic() - started

            truth = await committed(pg.dsn, sidecars[0].schema)
            judge_store(truth, ledger)
            assert len(truth) == len(ledger.acked)
            assert sorted(hot.versions) == list(range(1, 4 * hot_wins + 1))
            expected = {(e.stream_id, e.version) for e in truth}
            async with TopicReader(kafka.bootstrap, topic) as reader:
                await reader.until_has(expected, DEADLINE)
                delivered = time.monotonic() - started - written
                await reader.poll()  # and whatever else is already there
        finally:
            sampling.set()
            await sampler
            for c in clients:
                await c.close()
        final = await statuses(http, sidecars)

    verdict = judge(reader.messages, expected)
    assert verdict.ok, verdict
    # Each message carries the sequence its append was answered with.
    at = {(e.stream_id, e.version): e.sequence for e in ledger.acked.values()}
    wrong = [m for m in reader.messages if m.value["sequence"] != at[(m.key, m.value["version"])]]
    assert not wrong, f"published at another sequence than acknowledged: {wrong[:3]}"
    # Within a partition, events first appear in global sequence order (the forwarder reads by sequence).
    first: dict[int, list[int]] = defaultdict(list)
    met: set[tuple[str, int]] = set()
    for m in sorted(reader.messages, key=lambda m: (m.partition, m.offset)):
        if (m.key, m.value["version"]) not in met:
            met.add((m.key, m.value["version"]))
            first[m.partition].append(m.value["sequence"])
    assert all(s == sorted(s) for s in first.values()), "a partition's events out of sequence order"
    # One forwarder per schema: never two active at once, and the active one published everything.
    assert all(states.count("active") <= 1 for states in samples), [s for s in samples if s.count("active") > 1][:3]
    assert sorted(s["state"] for s in final) == ["active", "standby", "standby", "standby"], final
    published = sorted(int(s["events_published"]) for s in final)
    assert published[:3] == [0, 0, 0] and published[3] >= len(truth), final
    print(f"\nforwarding fleet: 4 writing sidecars, 12 clients, {sum(ledger.appends.values())} appends, "
          f"{len(truth)} events ({hot.conflicts} hot-stream conflicts); {verdict.messages} messages, "
          f"{verdict.duplicates} duplicates, {len(samples)} status samples with one active forwarder; "
          f"writes {written:.1f}s, all in Kafka {delivered:.2f}s later; {time.monotonic() - started:.1f}s in all")


async def _one_active(http: aiohttp.ClientSession, sidecars: list[ServedSidecar]) -> bool:
    states = sorted(s["state"] for s in await statuses(http, sidecars))
    return states == ["active", "standby", "standby", "standby"]
