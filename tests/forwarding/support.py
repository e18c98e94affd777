"""Reading a topic back and judging it: nothing missing, per-stream order, duplicates counted."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

PARTITIONS = 8


async def create_topics(bootstrap: str, *names: str, partitions: int = PARTITIONS) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


@dataclass(frozen=True)
class Message:
    partition: int
    offset: int
    key: str
    value: dict[str, Any]
    headers: dict[str, bytes]


class TopicReader:
    """Reads every partition of a topic from the start (no consumer group: assign and seek)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.messages: list[Message] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicReader:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
            request_timeout_ms=10_000, fetch_max_wait_ms=100,
        )
        await self._consumer.start()
        # (the topic exists: the tests create it first; this asks the broker, not the cache)
        parts = await self._consumer._client._wait_on_metadata(self.topic)
        self._consumer.assign([TopicPartition(self.topic, p) for p in sorted(parts)])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._consumer is not None
        await self._consumer.stop()

    async def poll(self) -> int:
        assert self._consumer is not None
        got = await self._consumer.getmany(timeout_ms=200, max_records=5000)
        n = 0
        for tp, records in got.items():
            for r in records:
                assert r.key is not None and r.value is not None
                self.messages.append(
                    Message(tp.partition, r.offset, r.key.decode(), json.loads(r.value), dict(r.headers))
                )
                n += 1
        return n

    async def until(self, done: Callable[[list[Message]], bool], timeout: float, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not done(self.messages):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}: have {len(self.messages)}")
            await self.poll()

    async def until_has(self, expected: Iterable[tuple[str, int]], timeout: float) -> None:
        want = set(expected)
        await self.until(lambda ms: want <= {(m.key, m.value["version"]) for m in ms}, timeout,
                         f"{len(want)} events")


@dataclass
class Verdict:
    missing: set[tuple[str, int]] = field(default_factory=set)
    unexpected: set[tuple[str, int]] = field(default_factory=set)
    duplicates: int = 0
    order_violations: list[str] = field(default_factory=list)
    split_streams: list[str] = field(default_factory=list)
    messages: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.order_violations or self.split_streams)


def judge(messages: list[Message], expected: Iterable[tuple[str, int]]) -> Verdict:
    """Expected = (stream_id, version) pairs from the database. Order rule: in partition order, the
    first sighting of version v of a stream comes after the first sighting of v-1 (repeats may go
    backwards, as after a retry; a version may never appear before its predecessor)."""
    want = set(expected)
    v = Verdict(messages=len(messages))
    seen = Counter((m.key, m.value["version"]) for m in messages)
    v.duplicates = sum(n - 1 for n in seen.values())
    v.missing = want - set(seen)
    v.unexpected = set(seen) - want
    by_stream: dict[str, list[Message]] = defaultdict(list)
    for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
        by_stream[m.key].append(m)
    for stream, ms in by_stream.items():
        if len({m.partition for m in ms}) > 1:
            v.split_streams.append(stream)
        highest = 0
        for m in ms:
            version = m.value["version"]
            if m.value["stream_id"] != stream:
                v.order_violations.append(f"{stream}: key and stream_id differ")
            if version > highest + 1 and (stream, highest + 1) in want:
                v.order_violations.append(f"{stream}: v{version} seen before v{highest + 1}")
            highest = max(highest, version)
    return v


async def poll_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Poll an async condition until true; return the seconds it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started
