"""The store contract (seed 002): every store must pass every test here, identically."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from k1s0_event_store import (
    ConcurrencyError,
    EventEnvelope,
    EventIdConflictError,
    EventNotFoundError,
    StreamAlreadyExistsError,
    StreamId,
    StreamNotFoundError,
    ValidationError,
)

from .conftest import Stores

ORDER = StreamId("order", "order-001")


def ev(kind: str = "OrderPlaced", n: int = 0, **kw: object) -> EventEnvelope:
    return EventEnvelope(event_type=kind, payload={"n": n}, **kw)  # type: ignore[arg-type]


def test_stream_id_string_form() -> None:
    assert str(StreamId("order", "order-001")) == "order-order-001"
    assert StreamId.parse("order-order-001") == StreamId("order", "order-001")
    assert str(StreamId.parse("plain")) == "plain"
    with pytest.raises(ValidationError):
        StreamId("", "x")


async def test_seed_example_round_trip(stores: Stores) -> None:
    """The seed's Python example: append with expected versions, load, snapshot, load the delta."""
    s = stores.events
    assert await s.append(ORDER, [ev("OrderPlaced", 1), ev("ItemAdded", 2)], expected_version=0) == 2
    assert await s.append(ORDER, [ev("OrderShipped", 3, metadata={"trace_id": "abc123"})], expected_version=2) == 3
    envelopes = await s.load(ORDER, from_version=0)
    assert [e.version for e in envelopes] == [1, 2, 3]
    assert [e.event_type for e in envelopes] == ["OrderPlaced", "ItemAdded", "OrderShipped"]
    assert envelopes[2].metadata == {"trace_id": "abc123"}
    assert all(e.stream_id == ORDER for e in envelopes)
    seqs = [e.sequence or 0 for e in envelopes]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    snap = await stores.snapshots.save(ORDER, version=3, state={"status": "shipped"})
    latest = await stores.snapshots.load_latest(ORDER)
    assert latest is not None and latest.version == 3 and latest.state == {"status": "shipped"}
    assert latest.id == snap.id and latest.aggregate_type == "order"
    assert await s.load(ORDER, from_version=latest.version + 1) == []
    assert await s.exists(ORDER) and await s.current_version(ORDER) == 3


async def test_append_returns_stored_events(stores: Stores) -> None:
    occurred = datetime(2026, 2, 23, 10, 0, tzinfo=UTC)
    eid = uuid.uuid4()
    res = await stores.events.append_events(ORDER, [ev(event_id=eid, occurred_at=occurred)], expected_version=-1)
    (stored,) = res.events
    assert res.current_version == 1 and stored.version == 1 and stored.event_id == eid
    assert stored.occurred_at == occurred and stored.stored_at is not None and stored.sequence
    assert await stores.events.get_event(ORDER, stored.sequence) == (await stores.events.load(ORDER))[0]


async def test_expected_version_semantics(stores: Stores) -> None:
    s = stores.events
    # -1: must not exist.
    assert await s.append(ORDER, [ev()], expected_version=-1) == 1
    with pytest.raises(StreamAlreadyExistsError) as exc:
        await s.append(ORDER, [ev()], expected_version=-1)
    assert exc.value.actual_version == 1
    # N: must be exactly N.
    with pytest.raises(ConcurrencyError) as conflict:
        await s.append(ORDER, [ev()], expected_version=0)
    assert (conflict.value.expected_version, conflict.value.actual_version) == (0, 1)
    with pytest.raises(ConcurrencyError):
        await s.append(ORDER, [ev()], expected_version=5)
    assert await s.append(ORDER, [ev()], expected_version=1) == 2
    # None: any version.
    assert await s.append(ORDER, [ev(), ev()]) == 4
    # 0: a new stream.
    assert await s.append(StreamId("order", "new"), [ev()], expected_version=0) == 1
    assert await s.current_version(ORDER) == 4


async def test_failed_append_writes_nothing(stores: Stores) -> None:
    s = stores.events
    await s.append(ORDER, [ev()])
    head = await s.head_sequence()
    with pytest.raises(ConcurrencyError):
        await s.append(ORDER, [ev(), ev(), ev()], expected_version=0)
    assert await s.current_version(ORDER) == 1 and await s.head_sequence() == head


@pytest.mark.parametrize(
    ("events", "field"),
    [
        ([], "events"),
        ([EventEnvelope("", {})], "events[0].event_type"),
        ([EventEnvelope("x" * 256, {})], "events[0].event_type"),
        ([EventEnvelope("Bad\ntype", {})], "events[0].event_type"),
        ([EventEnvelope("T", {"x": math.nan})], "events[0].payload"),
        ([EventEnvelope("T", {"x": object()})], "events[0].payload"),
        ([EventEnvelope("T", {"x": "a\x00b"})], "events[0].payload"),
        ([EventEnvelope("T", {}, metadata=["not", "an", "object"])], "events[0].metadata"),  # type: ignore[arg-type]
        ([EventEnvelope("T", {}, occurred_at=datetime(2026, 1, 1))], "events[0].occurred_at"),
    ],
)
async def test_bad_input_is_a_validation_error(stores: Stores, events: list[EventEnvelope], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        await stores.events.append(ORDER, events)
    assert exc.value.field == field
    assert not await stores.events.exists(ORDER)


@pytest.mark.parametrize("stream", ["", "x" * 256, "bad\tid", " padded"])
async def test_bad_stream_ids(stores: Stores, stream: str) -> None:
    with pytest.raises(ValidationError) as exc:
        await stores.events.append(stream, [ev()])
    assert exc.value.field in {"stream_id", "aggregate_type"}


@pytest.mark.parametrize("expected", [-2, -100, 1.5, "1", True])
async def test_bad_expected_version(stores: Stores, expected: object) -> None:
    with pytest.raises(ValidationError) as exc:
        await stores.events.append(ORDER, [ev()], expected_version=expected)  # type: ignore[arg-type]
    assert exc.value.field == "expected_version"


async def test_load_ranges_and_missing_streams(stores: Stores) -> None:
    s = stores.events
    await s.append(ORDER, [ev(n=i) for i in range(10)])
    assert [e.version for e in await s.load(ORDER, 3, 5)] == [3, 4, 5]
    assert [e.version for e in await s.load(ORDER, 9)] == [9, 10]
    assert await s.load(ORDER, 11) == []
    assert await s.load("order-none") == []
    assert not await s.exists("order-none") and await s.current_version("order-none") == 0
    with pytest.raises(ValidationError):
        await s.load(ORDER, -1)


async def test_read_stream_pages_and_filters(stores: Stores) -> None:
    s = stores.events
    await s.append(ORDER, [ev("A" if i % 2 else "B", i) for i in range(7)])
    page = await s.read_stream(ORDER, from_version=2, limit=3, offset=0)
    assert [e.version for e in page.events] == [2, 3, 4]
    assert page.total_count == 6 and page.current_version == 7
    page2 = await s.read_stream(ORDER, from_version=2, limit=3, offset=3)
    assert [e.version for e in page2.events] == [5, 6, 7]
    typed = await s.read_stream(ORDER, event_type="A")
    assert [e.version for e in typed.events] == [2, 4, 6] and typed.total_count == 3
    ranged = await s.read_stream(ORDER, from_version=3, to_version=4)
    assert ranged.total_count == 2
    with pytest.raises(StreamNotFoundError):
        await s.read_stream("order-none")


async def test_get_event_by_sequence(stores: Stores) -> None:
    s = stores.events
    (a,) = (await s.append_events(ORDER, [ev()])).events
    (b,) = (await s.append_events("order-other", [ev()])).events
    assert (await s.get_event(ORDER, a.sequence or 0)).event_id == a.event_id
    with pytest.raises(EventNotFoundError):
        await s.get_event(ORDER, b.sequence or 0)  # belongs to another stream
    with pytest.raises(EventNotFoundError):
        await s.get_event(ORDER, 10_000)


async def test_read_all_in_sequence_order_with_filters(stores: Stores) -> None:
    s = stores.events
    await s.append("order-1", [ev("OrderPlaced")])
    await s.append("task-1", [ev("TaskCreated")])
    await s.append("order-2", [ev("OrderShipped")])
    everything = await s.read_all()
    assert [e.stream for e in everything] == ["order-1", "task-1", "order-2"]
    seqs = [e.sequence or 0 for e in everything]
    assert seqs == sorted(seqs)
    assert [e.stream for e in await s.read_all(after_sequence=seqs[0])] == ["task-1", "order-2"]
    assert [e.stream for e in await s.read_all(limit=1)] == ["order-1"]
    assert [e.stream for e in await s.read_all(until_sequence=seqs[1])] == ["order-1", "task-1"]
    assert [e.stream for e in await s.read_all(stream_prefixes=["order-"])] == ["order-1", "order-2"]
    assert [e.stream for e in await s.read_all(event_types=["TaskCreated"])] == ["task-1"]
    assert await s.head_sequence() == seqs[-1]


async def test_idempotent_retry_by_event_id(stores: Stores) -> None:
    s = stores.events
    ids = [uuid.uuid4(), uuid.uuid4()]
    first = await s.append_events(ORDER, [ev(n=1, event_id=ids[0]), ev(n=2, event_id=ids[1])], expected_version=0)
    await s.append(ORDER, [ev(n=3)])
    again = await s.append_events(ORDER, [ev(n=1, event_id=ids[0]), ev(n=2, event_id=ids[1])], expected_version=0)
    assert again.current_version == first.current_version == 2
    assert [e.sequence for e in again.events] == [e.sequence for e in first.events]
    assert await s.current_version(ORDER) == 3  # nothing duplicated


async def test_event_id_reuse_for_other_content_is_an_error(stores: Stores) -> None:
    s = stores.events
    eid = uuid.uuid4()
    await s.append(ORDER, [ev(n=1, event_id=eid)])
    with pytest.raises(EventIdConflictError):
        await s.append(ORDER, [ev(n=2, event_id=eid)])  # other payload
    with pytest.raises(EventIdConflictError):
        await s.append("order-other", [ev(n=1, event_id=eid)])  # other stream
    with pytest.raises(EventIdConflictError):
        await s.append(ORDER, [ev(n=1, event_id=eid), ev(n=5, event_id=uuid.uuid4())])  # partly stored
    with pytest.raises(ValidationError):
        await s.append(ORDER, [ev(n=1, event_id=eid), ev(n=1, event_id=eid)])  # repeated in one append
    assert await s.current_version(ORDER) == 1


async def test_batch_conflicts_fail_alone(stores: Stores) -> None:
    from k1s0_event_store import prepare_append

    s = stores.events
    await s.append(ORDER, [ev()])
    results = await s.append_batch(
        [
            prepare_append("order-a", [ev()], 0),
            prepare_append(ORDER, [ev()], 0),  # conflicts: ORDER is at 1
            prepare_append("order-a", [ev()], 1),  # sees the write earlier in the batch
            prepare_append(ORDER, [ev()], 1),
        ]
    )
    assert isinstance(results[1], ConcurrencyError)
    assert [getattr(r, "current_version", None) for r in results] == [1, None, 2, 2]
    assert await s.current_version("order-a") == 2 and await s.current_version(ORDER) == 2


async def test_delete_stream(stores: Stores) -> None:
    s = stores.events
    await s.append(ORDER, [ev(), ev()])
    await stores.snapshots.save(ORDER, 2, {"x": 1})
    await s.append("order-keep", [ev()])
    assert await s.delete_stream(ORDER) == 2
    assert not await s.exists(ORDER) and await s.load(ORDER) == []
    assert await stores.snapshots.load_latest(ORDER) is None
    assert [e.stream for e in await s.read_all()] == ["order-keep"]
    with pytest.raises(StreamNotFoundError):
        await s.delete_stream(ORDER)
    # A deleted stream can start again from version 1.
    assert await s.append(ORDER, [ev()], expected_version=-1) == 1


async def test_snapshots(stores: Stores) -> None:
    s, snaps = stores.events, stores.snapshots
    assert await snaps.load_latest(ORDER) is None
    with pytest.raises(StreamNotFoundError):
        await snaps.save(ORDER, 1, {})
    await s.append(ORDER, [ev() for _ in range(5)])
    with pytest.raises(ValidationError) as exc:
        await snaps.save(ORDER, 6, {})
    assert exc.value.field == "snapshot_version"
    with pytest.raises(ValidationError):
        await snaps.save(ORDER, 0, {})
    with pytest.raises(ValidationError):
        await snaps.save(ORDER, 1, {"bad": math.inf})
    await snaps.save(ORDER, 2, {"v": 2}, aggregate_type="Order")
    await snaps.save(ORDER, 5, {"v": 5}, aggregate_type="Order")
    await snaps.save(ORDER, 3, {"v": 3}, aggregate_type="Order")
    latest = await snaps.load_latest(ORDER)
    assert latest is not None and latest.version == 5 and latest.state == {"v": 5}
    assert latest.aggregate_type == "Order"
    # Pruning keeps the newest snapshot of each stream, whatever its age.
    removed = await snaps.prune(datetime.now(UTC) + timedelta(days=1))
    assert removed == 2
    latest = await snaps.load_latest(ORDER)
    assert latest is not None and latest.version == 5


@pytest.mark.parametrize("bad", ["", "a\x00b", "x\n", "y" * 256])
async def test_read_filters_are_validated(stores: Stores, bad: str) -> None:
    await stores.events.append(ORDER, [ev()])
    with pytest.raises(ValidationError):
        await stores.events.read_all(stream_prefixes=[bad])
    with pytest.raises(ValidationError):
        await stores.events.read_all(event_types=[bad])
    with pytest.raises(ValidationError):
        await stores.events.read_stream(ORDER, event_type=bad)


async def test_list_streams_newest_activity_first_paged(stores: Stores) -> None:
    s = stores.events
    assert (await s.list_streams()).streams == [] and (await s.list_streams()).next_after is None
    for sid in ("order-a", "order-b", "order-c", "invoice-x"):
        await s.append(sid, [ev()])
    await s.append("order-a", [ev(n=1), ev(n=2)])  # order-a moves to the front
    listed = await s.list_streams(prefix="order-")
    assert [str(x.stream_id) for x in listed.streams] == ["order-a", "order-c", "order-b"]
    assert listed.next_after is None
    first = listed.streams[0]
    assert (first.aggregate_type, first.current_version) == ("order", 3)
    assert [x.current_version for x in listed.streams] == [3, 1, 1]
    times = [x.updated_at for x in listed.streams]
    assert times == sorted(times, reverse=True) and all(t.tzinfo is not None for t in times)
    assert [str(x.stream_id) for x in (await s.list_streams()).streams] == [
        "order-a", "invoice-x", "order-c", "order-b"]
    # Paging: each page continues after the cursor of the previous one, and the last has none.
    page1 = await s.list_streams(limit=3)
    assert [str(x.stream_id) for x in page1.streams] == ["order-a", "invoice-x", "order-c"]
    assert page1.next_after
    page2 = await s.list_streams(after=page1.next_after, limit=3)
    assert [str(x.stream_id) for x in page2.streams] == ["order-b"] and page2.next_after is None
    exact = await s.list_streams(limit=4)
    assert len(exact.streams) == 4 and exact.next_after is None
    assert (await s.list_streams(prefix="nothing")).streams == []
    # A deleted stream is no longer listed.
    await s.delete_stream("order-c")
    assert "order-c" not in [str(x.stream_id) for x in (await s.list_streams()).streams]


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"after": "not a cursor!"}, {"after": "YWJj"},
                                    {"prefix": "y" * 256}, {"prefix": "a\x00"}])
async def test_list_streams_arguments_are_validated(stores: Stores, kwargs: dict[str, object]) -> None:
    await stores.events.append(ORDER, [ev()])
    with pytest.raises(ValidationError):
        await stores.events.list_streams(**kwargs)  # type: ignore[arg-type]
