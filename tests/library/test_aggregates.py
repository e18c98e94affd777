"""The aggregate repository on every store: snapshot + tail replay, optimistic saves."""

from __future__ import annotations

from typing import Any

import pytest

from k1s0_event_store import AggregateRepository, ConcurrencyError, EventEnvelope, StreamId

from .conftest import Stores


def apply(state: dict[str, Any], event: EventEnvelope) -> dict[str, Any]:
    return {"count": state["count"] + 1, "total": state["total"] + event.payload["amount"]}


def repo(stores: Stores, interval: int = 100) -> AggregateRepository[dict[str, Any]]:
    return AggregateRepository(stores.events, stores.snapshots, initial=lambda: {"count": 0, "total": 0},
                               apply=apply, snapshot_interval=interval, aggregate_type="Account")


async def test_save_load_and_conflict(stores: Stores) -> None:
    r = repo(stores)
    acct = await r.load(StreamId("account", "a1"))
    acct.record("Deposited", {"amount": 5})
    acct.record("Deposited", {"amount": 7})
    assert acct.state == {"count": 2, "total": 12}
    assert await r.save(acct) == 2
    again = await r.load("account-a1")
    assert again.state == {"count": 2, "total": 12} and again.version == 2
    stale = await r.load("account-a1")
    again.record("Deposited", {"amount": 1})
    await r.save(again)
    stale.record("Deposited", {"amount": 100})
    with pytest.raises(ConcurrencyError):
        await r.save(stale)


@pytest.mark.slow
async def test_10000_event_aggregate_loads_from_its_snapshot_reading_only_the_tail(stores: Stores) -> None:
    r = repo(stores, interval=100)
    sid = StreamId("account", "big")
    acct = await r.load(sid)
    for batch in range(100):
        for i in range(100):
            acct.record("Deposited", {"amount": batch * 100 + i})
        await r.save(acct)
    acct.record("Deposited", {"amount": 1})
    acct.record("Deposited", {"amount": 2})
    await r.save(acct)  # 10,002 events; the last snapshot is at 10,000
    loaded = await r.load(sid)
    assert loaded.version == 10_002 and loaded.replayed == 2
    full = {"count": 0, "total": 0}
    for event in await stores.events.load(sid):
        full = apply(full, event)
    assert loaded.state == full == {"count": 10_002, "total": sum(range(10_000)) + 3}
    snap = await stores.snapshots.load_latest(sid)
    assert snap is not None and snap.version == 10_000 and snap.aggregate_type == "Account"
