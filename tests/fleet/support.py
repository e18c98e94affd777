"""The fleet under test: sidecar processes on one schema, their clients, and the readers that judge them.

Everything here is black-box: clients speak REST (aiohttp) or gRPC (the generated stubs) to real
``k1s0-eventstore serve`` processes, and the truth is read back from PostgreSQL at the end. Nothing
waits a fixed time for something to happen: waits poll a condition against a deadline, so the
checks hold whether other sidecars' commits reach a reader by notification or by polling.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import grpc

from k1s0_event_store.protocol import event_store_pb2 as pb
from k1s0_event_store.protocol import event_store_pb2_grpc as pb_grpc
from k1s0_event_store.schema import quote_ident
from k1s0_sidecar._errors import error_info_from_call
from tests.support.postgres import free_ports
from tests.support.sidecar import ServedSidecar

#: How long any condition may take to become true: generous, because the machine is shared and a
#: reader on another sidecar may learn of a commit only at its next poll.
DEADLINE = 90.0

#: Small pools (10 sidecars share one PostgreSQL). Sidecars find other sidecars' commits by polling
#: (subscriptions and the forwarder both use this interval); pinned so that the tests' duration does
#: not follow the default, while no check depends on it (every wait has a generous deadline).
FLEET_ENV = {
    "EVENTSTORE_DATABASE_MAX_CONNECTIONS": "6",
    "EVENTSTORE_EVENT_STORE_SUBSCRIPTION_POLL_INTERVAL_MS": "100",
}


# -- processes ---------------------------------------------------------------------------------


def start(sidecar: ServedSidecar, timeout: float = 60) -> ServedSidecar:
    """Start and wait until both protocols listen: ``/readyz`` answers once REST is up, and the
    sidecar opens its gRPC port only after that."""
    sidecar.start(timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", sidecar.grpc_port), timeout=1):
                return sidecar
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"gRPC port not listening in {timeout}s:\n{sidecar.log()}") from None
            time.sleep(0.02)


def start_fleet(dsn: str, schema: str, n: int, env: dict[str, str] | None = None) -> list[ServedSidecar]:
    """Start ``n`` sidecars on one schema at once (their start-ups overlap) and wait until all are ready."""
    ports = free_ports(2 * n)
    sidecars = [ServedSidecar(dsn, schema, env={**FLEET_ENV, **(env or {})}, migrate=False,
                              ports=(ports[2 * i], ports[2 * i + 1])) for i in range(n)]
    with ThreadPoolExecutor(n) as pool:
        started = [pool.submit(start, s) for s in sidecars]
        errors = [f.exception() for f in started]
    if any(errors):
        stop_fleet(sidecars)
        raise next(e for e in errors if e is not None)
    return sidecars


def stop_fleet(sidecars: Sequence[ServedSidecar]) -> None:
    with ThreadPoolExecutor(max(1, len(sidecars))) as pool:
        list(pool.map(lambda s: s.stop(), sidecars))


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """An event as an append answer, a reader or the database names it."""

    sequence: int
    event_id: str
    stream_id: str
    version: int


def new_events(n: int, writer: str, k: int) -> list[dict[str, Any]]:
    """``n`` events with ids chosen by the client, so an unanswered append can be retried exactly."""
    return [
        {"event_type": "FleetWrote", "payload": {"writer": writer, "k": k, "i": i}, "event_id": str(uuid.uuid4())}
        for i in range(n)
    ]


@dataclass
class Ledger:
    """What the clients were told: every acknowledged event, and the ids that must never appear."""

    acked: dict[str, Event] = field(default_factory=dict)
    rolled_back: set[str] = field(default_factory=set)
    appends: Counter[str] = field(default_factory=Counter)  # acknowledged appends per sidecar

    def ack(self, events: Iterable[Event], via: str) -> None:
        for e in events:
            before = self.acked.setdefault(e.event_id, e)
            assert before == e, f"event {e.event_id} acknowledged twice at different positions: {before} and {e}"
        self.appends[via] += 1


async def committed(dsn: str, schema: str, after: int = 0) -> list[Event]:
    """The truth: every committed event after ``after``, in sequence order."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            f"SELECT sequence, event_id::text, stream_id, version FROM {quote_ident(schema)}.events"
            " WHERE sequence > $1 ORDER BY sequence",
            after,
        )
    finally:
        await conn.close()
    return [Event(r[0], r[1], r[2], r[3]) for r in rows]


async def head(dsn: str, schema: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT coalesce(max(sequence), 0) FROM {quote_ident(schema)}.events"))
    finally:
        await conn.close()


# -- clients -----------------------------------------------------------------------------------


class Conflict(Exception):
    """The append was refused for ``expected_version`` (REST 409 / gRPC ABORTED, VERSION_CONFLICT)."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"expected {expected}, actual {actual}")
        self.expected = expected
        self.actual = actual


class Client:
    """One client of one sidecar."""

    name: str
    sidecar: ServedSidecar

    async def append(self, stream: str, events: list[dict[str, Any]], expected: int | None) -> list[Event]:
        raise NotImplementedError

    async def version(self, stream: str) -> int:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class RestClient(Client):
    def __init__(self, sidecar: ServedSidecar, name: str) -> None:
        self.sidecar = sidecar
        self.name = name
        self.http = aiohttp.ClientSession(base_url=sidecar.base_url, timeout=aiohttp.ClientTimeout(total=60))

    async def append(self, stream: str, events: list[dict[str, Any]], expected: int | None) -> list[Event]:
        body: dict[str, Any] = {"events": events}
        if expected is not None:
            body["expected_version"] = expected
        async with self.http.post(f"/api/v1/streams/{stream}/events", json=body) as r:
            doc = await r.json()
        if r.status == 409 and doc["error"]["code"] == "SYS_EVSTORE_VERSION_CONFLICT":
            details = {d["field"]: int(d["message"]) for d in doc["error"]["details"]}
            raise Conflict(details["expected_version"], details["actual_version"])
        assert r.status == 201, (r.status, doc)
        return [Event(e["sequence"], e["event_id"], e["stream_id"], e["version"]) for e in doc["events"]]

    async def version(self, stream: str) -> int:
        async with self.http.get(f"/api/v1/streams/{stream}/events", params={"page_size": 1}) as r:
            doc = await r.json()
        if r.status == 404:
            assert doc["error"]["code"] == "SYS_EVSTORE_STREAM_NOT_FOUND", doc
            return 0
        assert r.status == 200, (r.status, doc)
        return int(doc["current_version"])

    async def close(self) -> None:
        await self.http.close()


class GrpcClient(Client):
    def __init__(self, sidecar: ServedSidecar, name: str) -> None:
        self.sidecar = sidecar
        self.name = name
        self.channel = grpc.aio.insecure_channel(sidecar.grpc_target)
        self.stub = pb_grpc.EventStoreServiceStub(self.channel)

    async def append(self, stream: str, events: list[dict[str, Any]], expected: int | None) -> list[Event]:
        req = pb.AppendEventsRequest(
            stream_id=stream,
            events=[
                pb.EventData(event_type=e["event_type"], payload_json=json.dumps(e["payload"]).encode(),
                             event_id=e["event_id"])
                for e in events
            ],
        )
        # Over gRPC an unset expected_version means version 0, as in the design's proto: "any
        # version" is the explicit EXPECTED_VERSION_ANY.
        req.expected_version = pb.EXPECTED_VERSION_ANY if expected is None else expected
        try:
            resp = await self.stub.AppendEvents(req, timeout=60)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ABORTED:
                info = error_info_from_call(exc)
                assert info is not None and info.reason == "SYS_EVSTORE_VERSION_CONFLICT", exc
                raise Conflict(int(info.metadata["expected_version"]), int(info.metadata["actual_version"])) from exc
            raise
        return [Event(e.sequence, e.event_id, e.stream_id, e.version) for e in resp.events]

    async def version(self, stream: str) -> int:
        try:
            resp = await self.stub.ReadEvents(pb.ReadEventsRequest(stream_id=stream, page_size=1), timeout=60)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return 0
            raise
        return int(resp.current_version)

    async def close(self) -> None:
        await self.channel.close()


def client(sidecar: ServedSidecar, name: str, protocol: str) -> Client:
    return RestClient(sidecar, name) if protocol == "rest" else GrpcClient(sidecar, name)


#: Append sizes a writer cycles through: mostly single events, some multi-event appends.
SIZES = (1, 1, 3, 1, 5, 2)


@dataclass
class OwnStreams:
    """A writer on three streams of its own: it knows their versions, so every answer is checked
    on the spot (versions contiguous, ids echoed, sequences increasing within the append), and half
    of its appends carry ``expected_version``, which must never conflict."""

    client: Client
    ledger: Ledger
    tag: str
    appends: int | None = None  # None: until stopped
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    fallback: Client | None = None  # where the in-flight append is retried when the sidecar dies
    done: int = 0
    retried: list[bool] = field(default_factory=list)  # per retry: had the first attempt committed?
    replayed: int = 0  # acknowledged appends sent again elsewhere and answered with the original

    def streams(self) -> list[str]:
        return [f"{self.tag}-{self.client.name}-{j}" for j in range(3)]

    async def run(self, dsn: str = "", schema: str = "") -> None:
        streams = self.streams()
        versions = dict.fromkeys(streams, 0)
        k = 0
        last: tuple[str, list[dict[str, Any]], int | None, list[Event]] | None = None
        while (self.appends is None or k < self.appends) and not self.stop.is_set():
            stream = streams[k % len(streams)]
            n = SIZES[k % len(SIZES)]
            events = new_events(n, self.client.name, k)
            expected = versions[stream] if k % 2 else None
            via = self.client.sidecar.base_url
            try:
                got = await self.client.append(stream, events, expected)
            except (TimeoutError, aiohttp.ClientError, grpc.aio.AioRpcError):
                if self.fallback is None:
                    raise
                # The sidecar went away. First, as if the answer to the previous append had been
                # lost: sending it again elsewhere returns the original result and stores nothing.
                if last is not None:
                    assert await self.fallback.append(*last[:3]) == last[3], "a replay answered differently"
                    self.replayed += 1
                # Then the append that was in flight, committed or not: the very same append (same
                # event ids) on another sidecar.
                ids = [e["event_id"] for e in events]
                self.retried.append(await _stored(dsn, schema, ids))
                via = self.fallback.sidecar.base_url
                got = await self.fallback.append(stream, events, expected)
                self.stop.set()  # this client's sidecar is gone; the client stops with it
            assert [e.stream_id for e in got] == [stream] * n, got
            assert [e.version for e in got] == list(range(versions[stream] + 1, versions[stream] + n + 1)), got
            assert [e.event_id for e in got] == [e["event_id"] for e in events], got
            assert all(a.sequence < b.sequence for a, b in itertools.pairwise(got)), got
            versions[stream] += n
            last = (stream, events, expected, got)
            self.ledger.ack(got, via)
            self.done += 1
            k += 1


async def _stored(dsn: str, schema: str, ids: list[str]) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        n = await conn.fetchval(
            f"SELECT count(*) FROM {quote_ident(schema)}.events WHERE event_id = ANY($1::uuid[])", ids
        )
    finally:
        await conn.close()
    assert n in (0, len(ids)), f"an append was stored in part: {n} of {len(ids)} events"
    return bool(n)


@dataclass
class HotStream:
    """Clients on different sidecars racing read-modify-write loops on one stream."""

    stream: str
    versions: list[int] = field(default_factory=list)  # the version each successful append made
    conflicts: int = 0

    async def writer(self, client: Client, ledger: Ledger, wins: int, start: asyncio.Event) -> None:
        await start.wait()
        won = 0
        while won < wins:
            seen = await client.version(self.stream)
            events = new_events(1, client.name, won)
            try:
                got = await client.append(self.stream, events, seen)
            except Conflict as c:
                assert c.expected == seen and c.actual > seen, (seen, c.expected, c.actual)
                self.conflicts += 1
                continue
            assert [(e.stream_id, e.version, e.event_id) for e in got] == [
                (self.stream, seen + 1, events[0]["event_id"])
            ], got
            self.versions.append(seen + 1)
            ledger.ack(got, client.sidecar.base_url)
            won += 1


# -- readers -----------------------------------------------------------------------------------


class Reader:
    """Follows the global order from ``after`` on one sidecar and records what it was given."""

    def __init__(self, name: str, sidecar: ServedSidecar, after: int) -> None:
        self.name = name
        self.sidecar = sidecar
        self.after = after
        self.seen: list[Event] = []
        self.task: asyncio.Task[None] | None = None

    @property
    def last(self) -> int:
        return self.seen[-1].sequence if self.seen else self.after

    def start(self) -> Reader:
        self.task = asyncio.create_task(self._run(), name=self.name)
        return self

    async def _run(self) -> None:
        raise NotImplementedError

    def check_alive(self) -> None:
        if self.task is not None and self.task.done():
            exc = self.task.exception()
            raise AssertionError(f"{self.name} ended early: {exc!r}") from exc

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass


class RestPoller(Reader):
    """``GET /api/v1/events?after_sequence=…``, as a polling consumer does."""

    async def _run(self) -> None:
        async with aiohttp.ClientSession(base_url=self.sidecar.base_url) as http:
            while True:
                async with http.get("/api/v1/events", params={"after_sequence": self.last, "limit": 500}) as r:
                    assert r.status == 200, (r.status, await r.text())
                    doc = await r.json()
                self.seen.extend(Event(e["sequence"], e["event_id"], e["stream_id"], e["version"])
                                 for e in doc["events"])
                if not doc["events"]:
                    await asyncio.sleep(0.02)  # the poller's own poll interval


class GrpcPoller(Reader):
    """gRPC ``ReadAll`` by sequence."""

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self.sidecar.grpc_target) as channel:
            stub = pb_grpc.EventStoreServiceStub(channel)
            while True:
                # wait_for_ready: gRPC shares connections between channels to one address, and one
                # to a sidecar that was just killed and restarted may still be in its reconnect
                # back-off; without it the first call fails fast while the sidecar serves.
                resp = await stub.ReadAll(pb.ReadAllRequest(after_sequence=self.last, limit=500), timeout=60,
                                          wait_for_ready=True)
                self.seen.extend(Event(e.sequence, e.event_id, e.stream_id, e.version) for e in resp.events)
                if not resp.events:
                    await asyncio.sleep(0.02)


class GrpcSubscriber(Reader):
    """gRPC ``SubscribeToAll`` (batched notifications; one-event ones are accepted too)."""

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self.sidecar.grpc_target) as channel:
            stub = pb_grpc.EventStoreServiceStub(channel)
            call = stub.SubscribeToAll(pb.SubscribeToAllRequest(after_sequence=self.after, max_batch=64))
            try:
                async for note in call:
                    events = list(note.events) if len(note.events) else [note.event]
                    self.seen.extend(Event(e.sequence, e.event_id, e.stream_id, e.version) for e in events)
            finally:
                call.cancel()
        raise AssertionError("the subscription ended")


class HoppingSubscriber(Reader):
    """gRPC ``SubscribeToAll`` that drops its connection every ``hop`` events and resumes from its
    last sequence on the next sidecar, as a client behind a load balancer does: positions are
    global, so the resumed subscription continues exactly where the other one stopped."""

    def __init__(self, name: str, sidecars: Sequence[ServedSidecar], after: int, hop: int) -> None:
        super().__init__(name, sidecars[0], after)
        self.sidecars = sidecars
        self.hop = hop
        self.hops = 0

    async def _run(self) -> None:
        while True:
            sidecar = self.sidecars[self.hops % len(self.sidecars)]
            async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
                stub = pb_grpc.EventStoreServiceStub(channel)
                call = stub.SubscribeToAll(pb.SubscribeToAllRequest(after_sequence=self.last, max_batch=16))
                got = 0
                try:
                    async for note in call:
                        events = list(note.events) if len(note.events) else [note.event]
                        self.seen.extend(Event(e.sequence, e.event_id, e.stream_id, e.version) for e in events)
                        got += len(events)
                        if got >= self.hop:
                            break
                    else:
                        raise AssertionError("the subscription ended")
                finally:
                    call.cancel()
            self.hops += 1


class SseSubscriber(Reader):
    """``GET /api/v1/subscribe`` (server-sent events)."""

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with (
            aiohttp.ClientSession(base_url=self.sidecar.base_url, timeout=timeout) as http,
            http.get("/api/v1/subscribe", params={"after_sequence": self.after}) as resp,
        ):
            assert resp.status == 200, (resp.status, await resp.text())
            block: dict[str, str] = {}
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    continue
                if line:
                    key, _, value = line.partition(": ")
                    block[key] = value
                    continue
                if "data" in block:
                    assert block.get("event", "message") == "message", block
                    e = json.loads(block["data"])
                    assert int(block["id"]) == e["sequence"], block
                    self.seen.append(Event(e["sequence"], e["event_id"], e["stream_id"], e["version"]))
                block = {}
        raise AssertionError("the SSE stream ended")


# -- waiting and judging -----------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], what: str, *,
                     timeout: float = DEADLINE, watch: Sequence[Reader] = (),
                     tasks: Sequence[asyncio.Task[Any]] = ()) -> float:
    """Poll ``condition`` until true; fail at the deadline, or as soon as a watched reader or task
    died (its exception is the failure). Returns the seconds it took."""
    started = time.monotonic()
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        for r in watch:
            r.check_alive()
        for t in tasks:
            if t.done():
                t.result()  # raises the writer's failure
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def readers_reach(readers: Sequence[Reader], sequence: int) -> float:
    return await wait_until(lambda: all(r.last >= sequence for r in readers),
                            f"every reader to reach sequence {sequence}", watch=readers)


def _against_ledger(
    by_id: dict[str, Event], ledger: Ledger
) -> tuple[list[Event], list[tuple[Event, Event]], set[str]]:
    """Against what the clients were told: the acknowledged events ``by_id`` lacks, those it holds
    at another position, and the rolled-back ones it holds."""
    missing = [e for e in ledger.acked.values() if e.event_id not in by_id]
    moved = [(e, by_id[e.event_id]) for e in ledger.acked.values() if e.event_id in by_id and by_id[e.event_id] != e]
    return missing, moved, ledger.rolled_back & by_id.keys()


def judge_store(truth: list[Event], ledger: Ledger) -> None:
    """The database holds every acknowledged event where the answer said, each stream contiguous."""
    by_id = {e.event_id: e for e in truth}
    assert len(by_id) == len(truth), "an event id stored twice"
    lost, moved, ghosts = _against_ledger(by_id, ledger)
    assert not lost, f"{len(lost)} acknowledged events are not in the database, e.g. {lost[:3]}"
    assert not moved, f"stored elsewhere than acknowledged: {moved[:3]}"
    assert not ghosts, f"rolled-back events stored: {sorted(ghosts)[:3]}"
    _contiguous("the database", truth)


def judge_reader(reader: Reader, truth: list[Event], ledger: Ledger) -> None:
    """Exactly once, in order, at the acknowledged positions, and nothing but the committed events."""
    name, seen = reader.name, reader.seen
    for i in range(1, len(seen)):
        assert seen[i].sequence > seen[i - 1].sequence, (
            f"{name}: sequence {seen[i].sequence} delivered after {seen[i - 1].sequence}")
    twice = [i for i, n in Counter(e.event_id for e in seen).items() if n > 1]
    assert not twice, f"{name}: {len(twice)} events delivered twice, e.g. {twice[:3]}"
    by_id = {e.event_id: e for e in seen}
    missed, moved, ghosts = _against_ledger(by_id, ledger)
    assert not missed, f"{name}: {len(missed)} acknowledged events never delivered, e.g. {missed[:3]}"
    assert not moved, f"{name}: delivered at another position than acknowledged: {moved[:3]}"
    assert not ghosts, f"{name}: delivered rolled-back events {sorted(ghosts)[:3]}"
    _contiguous(name, seen)
    if seen != truth:
        diff = next((i for i, (a, b) in enumerate(zip(seen, truth, strict=False)) if a != b),
                    min(len(seen), len(truth)))
        raise AssertionError(
            f"{name}: delivered {len(seen)} events, {len(truth)} committed; first difference at index {diff}: "
            f"delivered {seen[diff:diff + 2]}, committed {truth[diff:diff + 2]}")


def _contiguous(name: str, events: list[Event]) -> None:
    versions: dict[str, list[int]] = defaultdict(list)
    for e in events:
        versions[e.stream_id].append(e.version)
    broken = {s: v for s, v in versions.items() if v != list(range(1, len(v) + 1))}
    assert not broken, f"{name}: stream versions not contiguous from 1: {dict(list(broken.items())[:2])}"
