"""Two sidecar processes on one schema, as two replicas of an app: each sees the other's writes
when it plans (never answers from a stale plan), reports the races in /metrics, and delivers the
other's events to its own subscribers."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import create_schema, drop_schema
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar


@pytest.fixture(scope="module")
async def pair(pg: LocalPostgres) -> AsyncIterator[tuple[ServedSidecar, ServedSidecar]]:
    schema = await create_schema(pg.dsn, "two")
    a = ServedSidecar(pg.dsn, schema).start()
    b = ServedSidecar(pg.dsn, schema).start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()
        await drop_schema(pg.dsn, schema)


async def _append(
    http: aiohttp.ClientSession, url: str, stream: str, n: int, **extra: object
) -> aiohttp.ClientResponse:
    body = {"events": [{"event_type": "Counted", "payload": {"n": n}}], **extra}
    async with http.post(f"{url}/api/v1/streams/{stream}/events", json=body) as resp:
        await resp.read()
        return resp


def _counter(metrics: str, name: str) -> float:
    match = re.search(rf"^{name}_total (\S+)$", metrics, re.M)
    assert match, f"{name}_total missing from /metrics"
    return float(match.group(1))


async def test_writes_alternating_between_sidecars_land_in_order(pair: tuple[ServedSidecar, ServedSidecar]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{a.base_url}/metrics") as resp:
            before = _counter(await resp.text(), "eventstore_append_replans")
        for n in range(1, 7):
            car = a if n % 2 else b
            resp = await _append(http, car.base_url, "order-alt", n)
            assert resp.status == 201
        # b moved the stream behind a's back every time: a's guesses were stale and were re-planned.
        async with http.get(f"{a.base_url}/metrics") as resp:
            after = _counter(await resp.text(), "eventstore_append_replans")
        assert after - before >= 2
        # expected_version is answered from the real state, not from the stale guess.
        resp = await _append(http, a.base_url, "order-alt", 7, expected_version=6)
        assert resp.status == 201
        resp = await _append(http, b.base_url, "order-alt", 8, expected_version=6)
        assert resp.status == 409
        async with http.get(f"{b.base_url}/api/v1/streams/order-alt/events?page_size=50") as resp:
            body = await resp.json()
        assert [e["payload"]["n"] for e in body["events"]] == [1, 2, 3, 4, 5, 6, 7]
        assert [e["version"] for e in body["events"]] == list(range(1, 8))


async def test_a_subscriber_on_one_sidecar_gets_events_appended_through_the_other(
    pair: tuple[ServedSidecar, ServedSidecar],
) -> None:
    """No NOTIFY per append: sidecar a finds b's commits by polling (100 ms by default)."""
    a, b = pair
    got: list[int] = []
    async with aiohttp.ClientSession() as http, http.get(
        f"{a.base_url}/api/v1/streams/order-sub/subscribe", timeout=aiohttp.ClientTimeout(total=30)
    ) as sse:
        assert sse.status == 200
        for n in range(1, 4):
            assert (await _append(http, b.base_url, "order-sub", n)).status == 201
        deadline = time.monotonic() + 10
        buffer = ""
        while len(got) < 3 and time.monotonic() < deadline:
            chunk = await asyncio.wait_for(sse.content.readany(), max(0.1, deadline - time.monotonic()))
            buffer += chunk.decode()
            got = [int(m) for m in re.findall(r'"n":\s*(\d+)', buffer)]
    assert got == [1, 2, 3]
