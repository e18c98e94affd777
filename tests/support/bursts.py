"""Bursts of appends that are made to share one group-commit transaction, against a served sidecar.

The test holds the schema's append lock from a connection of its own: the sidecar's first batch
then waits for it inside its transaction while every other append of the burst queues behind it,
and ``eventstore_appends_pending`` (appends validated and waiting for their commit) tells the test
when all of them are queued. Releasing the lock commits what queued as (at most) two batches, so a
request that poisoned its transaction would take its neighbours with it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import grpc
from prometheus_client.parser import text_string_to_metric_families

from k1s0_event_store.protocol import event_store_pb2 as pb
from k1s0_event_store.schema import append_lock_key
from k1s0_sidecar._errors import error_info_from_call

APPEND_METHOD = "/k1s0.system.eventstore.v1.EventStoreService/AppendEvents"


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)  # polling interval of a condition with a deadline


async def metric(http: aiohttp.ClientSession, name: str, **labels: str) -> float:
    """One sample of the sidecar's /metrics (0 when absent)."""
    async with http.get("/metrics") as r:
        text = await r.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class AppendLock:
    """The schema's append lock, held by the test (``BEGIN; pg_advisory_xact_lock``)."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self.conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> AppendLock:
        self.conn = await asyncpg.connect(self.dsn)
        oid = await self.conn.fetchval("SELECT oid::bigint FROM pg_namespace WHERE nspname = $1", self.schema)
        await self.conn.execute("BEGIN")
        await self.conn.execute("SELECT pg_advisory_xact_lock($1)", append_lock_key(int(oid)))
        return self

    async def release(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            await self.conn.execute("COMMIT")
            await self.conn.close()
        self.conn = None

    async def __aexit__(self, *exc: object) -> None:
        if self.conn is not None and not self.conn.is_closed():
            self.conn.terminate()
        self.conn = None


@dataclass
class Outcome:
    """One answer: ``status`` is the HTTP status or the gRPC code name, ``code`` the SYS_EVSTORE_*."""

    status: int | str
    code: str | None
    body: Any = None

    @property
    def ok(self) -> bool:
        return self.status in (201, "OK")


# -- REST -------------------------------------------------------------------------------------


async def rest_append(http: aiohttp.ClientSession, stream: str, body: bytes) -> Outcome:
    async with http.post(f"/api/v1/streams/{stream}/events", data=body,
                         headers={"Content-Type": "application/json"}) as r:
        parsed = await r.json(content_type=None)
        code = parsed["error"]["code"] if r.status >= 400 else None
        if r.status >= 400:
            assert parsed["error"]["request_id"] == r.headers["X-Request-Id"], parsed
        return Outcome(r.status, code, parsed)


def good_rest_body(event_id: str, n: int) -> bytes:
    return (f'{{"events":[{{"event_type":"Good","payload":{{"n":{n}}},"event_id":"{event_id}"}}]}}').encode()


# -- gRPC, as raw bytes (so that a test can send what the protobuf library would not build) ------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def raw_event(event_type: bytes, payload_json: bytes, *, event_id: str = "", occurred_at: str = "",
              extra_json: bytes | None = None) -> bytes:
    """An ``EventData`` message, field by field (``event_type`` may be invalid UTF-8)."""
    out = _field(1, event_type) + _field(2, payload_json)
    if extra_json is not None:
        out += _field(3, _field(4, extra_json))  # EventMetadata.extra_json is field 4
    if event_id:
        out += _field(4, event_id.encode())
    if occurred_at:
        out += _field(5, occurred_at.encode())
    return out


def raw_append_request(stream: str, *events: bytes) -> bytes:
    return _field(1, stream.encode()) + b"".join(_field(2, e) for e in events)


async def grpc_append_raw(channel: grpc.aio.Channel, request: bytes) -> Outcome:
    call = channel.unary_unary(APPEND_METHOD, request_serializer=None,
                               response_deserializer=pb.AppendEventsResponse.FromString)
    try:
        response = await call(request)
    except grpc.aio.AioRpcError as exc:
        info = error_info_from_call(exc)
        if exc.code() != grpc.StatusCode.INTERNAL:
            assert info is not None and info.metadata["request_id"], exc
        return Outcome(exc.code().name, info.reason if info else None, exc.details())
    return Outcome("OK", None, response)


def good_grpc_request(stream: str, event_id: str, n: int) -> bytes:
    return raw_append_request(stream, raw_event(b"Good", f'{{"n":{n}}}'.encode(), event_id=event_id))


# -- the burst --------------------------------------------------------------------------------


@dataclass
class BurstResult:
    good: list[Outcome]
    bad: Outcome
    stored: int
    batches: float

    def summary(self) -> str:
        ok = sum(o.ok for o in self.good)
        return (f"{ok}/{len(self.good)} good acknowledged, {self.stored}/{len(self.good)} stored, "
                f"bad answered {self.bad.status} {self.bad.code}, {self.batches:g} batches")


async def burst(
    http: aiohttp.ClientSession,
    dsn: str,
    schema: str,
    send_good: Callable[[str, str, int], Awaitable[Outcome]],
    send_bad: Callable[[str], Awaitable[Outcome]],
    n: int = 30,
) -> BurstResult:
    """``n`` good one-event appends (each to its own stream) and one bad one, made to share a
    transaction; returns the answers and how many good events were really stored."""
    tag = f"burst{uuid.uuid4().hex[:10]}"
    ids = [str(uuid.uuid4()) for _ in range(n)]
    batches_before = await metric(http, "eventstore_group_commit_batch_size_count")
    async with AppendLock(dsn, schema) as lock:
        first = asyncio.create_task(send_good(f"{tag}-0", ids[0], 0))
        await wait_for(lambda: _pending_at_least(http, 1), 20, "the first append to wait for the lock")
        rest = [asyncio.create_task(send_good(f"{tag}-{i}", ids[i], i)) for i in range(1, n // 2)]
        bad = asyncio.create_task(send_bad(f"{tag}-bad"))
        rest += [asyncio.create_task(send_good(f"{tag}-{i}", ids[i], i)) for i in range(n // 2, n)]
        tasks = [first, *rest, bad]

        async def all_queued() -> bool:
            done = sum(t.done() for t in tasks)
            return done + int(await metric(http, "eventstore_appends_pending")) >= len(tasks)

        await wait_for(all_queued, 30, "every append of the burst to be answered or queued")
        await lock.release()
        outcomes = await asyncio.gather(first, *rest)
        bad_outcome = await bad
    batches = await metric(http, "eventstore_group_commit_batch_size_count") - batches_before
    async with http.get("/api/v1/events", params={"stream_prefix": f"{tag}-", "limit": "1000"}) as r:
        stored_events = (await r.json())["events"]
    stored = len({e["event_id"] for e in stored_events if e["event_type"] == "Good"} & set(ids))
    return BurstResult(list(outcomes), bad_outcome, stored, batches)


async def _pending_at_least(http: aiohttp.ClientSession, n: int) -> bool:
    return await metric(http, "eventstore_appends_pending") >= n
