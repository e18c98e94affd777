"""The web console, end to end in Chromium: append → the stream is listed → its events show → a
new append shows up in the live tail within 2 s → an event whose payload holds markup renders as
text and runs nothing. Also the global log, the status page, delete, and auth on (401/403)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.auth.support import JwksServer, SigningKey, claims, jwt_env
from tests.conftest import create_schema, drop_schema
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar, served_schema
from tests.ui.conftest import SCREENSHOTS

LIVE_WITHIN_MS = 2000
HOSTILE = {
    "note": "<script>window.__pwned = 'script'</script>",
    "html": "<img src=x onerror=\"window.__pwned = 'img'\">",
}

Page = Any


@pytest.fixture(scope="module")
async def sidecar(pg: LocalPostgres) -> AsyncIterator[ServedSidecar]:
    async with served_schema(pg.dsn, "ui") as served:
        yield served


class Console:
    """A browser page on the console that fails the test on any script error or CSP violation."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.problems: list[str] = []
        page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.problems.append(str(e)))

    def unexpected(self) -> list[str]:
        """Problems other than the browser's own note on a 404 answer (no snapshot yet, no favicon)."""
        return [p for p in self.problems if "status of 404" not in p]

    async def open(self, hash_path: str = "") -> None:
        await self.page.goto(f"{self.base_url}/ui/{hash_path}")

    async def shot(self, name: str) -> None:
        if SCREENSHOTS:
            await self.page.screenshot(path=str(Path(SCREENSHOTS) / f"console-{name}.png"), full_page=True)


@pytest.fixture
async def console(browser: Any, sidecar: ServedSidecar) -> AsyncIterator[Console]:
    context = await browser.new_context(viewport={"width": 1200, "height": 760})
    page = await context.new_page()
    page.set_default_timeout(10_000)
    c = Console(page, sidecar.base_url)
    try:
        yield c
    finally:
        await context.close()


async def append(base_url: str, stream: str, payload: Any, event_type: str = "OrderPlaced",
                 token: str | None = None) -> dict[str, Any]:
    body = {"events": [{"event_type": event_type, "payload": payload,
                        "metadata": {"actor_id": "user-001", "correlation_id": "corr-ui"}}]}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.post(
        f"{base_url}/api/v1/streams/{stream}/events", json=body, headers=headers
    ) as r:
        answer: dict[str, Any] = await r.json()
        assert r.status == 201, answer
        return answer


async def test_browse_tail_and_untrusted_payload(console: Console, sidecar: ServedSidecar) -> None:
    page = console.page
    stream = f"uiorder-{uuid.uuid4().hex[:8]}"
    await append(sidecar.base_url, stream, {"order_id": "order-001", "total_amount": 3000})
    await append(sidecar.base_url, f"uiinvoice-{uuid.uuid4().hex[:8]}", {"amount": 10}, "InvoiceIssued")

    # Streams: the new stream is listed, newest activity first.
    await console.open()
    row = page.locator(f'tr[data-stream="{stream}"]')
    await row.wait_for()
    assert await row.locator("td").nth(2).inner_text() == "1"
    await console.shot("streams")

    # Stream view: its events show; live follow is on by default on the newest page.
    await row.get_by_role("link").click()
    await page.locator('details.event[data-version="1"]').wait_for()
    await page.locator("#follow-state.live").wait_for()
    assert await page.locator("#follow").is_checked()

    # A new append reaches the live tail within 2 s.
    started = time.monotonic()
    await append(sidecar.base_url, stream, HOSTILE, "NoteAdded")
    await page.locator('details.event[data-version="2"]').wait_for(timeout=LIVE_WITHIN_MS)
    assert time.monotonic() - started < LIVE_WITHIN_MS / 1000

    # The hostile payload renders as text: the markup is visible, nothing ran, no element was made.
    event = page.locator('details.event[data-version="2"]')
    await event.locator("summary").click()
    payload = await event.locator("pre.json").first.inner_text()
    assert HOSTILE["note"] in payload and "onerror=" in payload
    assert await page.evaluate("window.__pwned") is None
    assert await page.locator("main script, main img").count() == 0
    await console.shot("stream")

    # Pause, append, resume: the follow picks up where it stopped.
    await page.locator("#follow").uncheck()
    await page.locator("#follow-state", has_text="paused").wait_for()
    await append(sidecar.base_url, stream, {"n": 3}, "OrderShipped")
    await page.locator("#follow").check()
    await page.locator('details.event[data-version="3"]').wait_for()
    assert await page.locator("details.event").count() == 3

    # All events: the global log filtered by stream prefix, live as well.
    await console.open(f"#/events?prefix={stream}")
    await page.locator('details.event[data-version="3"]').wait_for()
    assert await page.locator("details.event").count() == 3
    await page.locator("#follow-state.live").wait_for()
    started = time.monotonic()
    await append(sidecar.base_url, stream, {"n": 4}, "OrderDelivered")
    await page.locator('details.event[data-version="4"]').wait_for(timeout=LIVE_WITHIN_MS)
    assert time.monotonic() - started < LIVE_WITHIN_MS / 1000
    await console.open("#/events")
    await page.locator("details.event", has_text="InvoiceIssued").first.wait_for()
    await console.shot("events")
    # Filtering by event type keeps only that type.
    await console.open("#/events?type=NoteAdded")
    await page.locator('details.event[data-version="2"]').wait_for()
    assert await page.locator("details.event").count() == 1

    # Status: readiness, rates from /metrics (two samples), the forwarder.
    await console.open("#/status")
    await page.locator("#readiness", has_text="ready").wait_for()
    await page.locator("#rate-events", has_text="/s").wait_for()
    assert "disabled" in await page.locator("#forwarder-state").inner_text()
    await console.shot("status")

    # The prefix filter of the stream list.
    await console.open(f"#/streams?prefix={stream}")
    await page.locator(f'tr[data-stream="{stream}"]').wait_for()
    assert await page.locator("tbody tr").count() == 1

    # Delete, confirmed by typing the stream id: the stream is gone from the list.
    await console.open(f"#/stream/{stream}")
    await page.locator('details.event[data-version="4"]').wait_for()
    await page.locator("details.danger-zone > summary").click()
    delete = page.get_by_role("button", name="Delete stream")
    assert await delete.is_disabled()
    await page.locator("#confirm-delete").fill(stream)
    await delete.click()
    await page.wait_for_url("**/ui/#/streams")
    await page.locator("tbody tr").first.wait_for()
    assert await page.locator(f'tr[data-stream="{stream}"]').count() == 0
    assert console.unexpected() == []


async def test_missing_stream_and_snapshot(console: Console, sidecar: ServedSidecar) -> None:
    page = console.page
    stream = f"uisnap-{uuid.uuid4().hex[:8]}"
    await append(sidecar.base_url, stream, {"a": 1})
    async with aiohttp.ClientSession() as http, http.post(
        f"{sidecar.base_url}/api/v1/streams/{stream}/snapshots",
        json={"snapshot_version": 1, "aggregate_type": "Order", "state": {"status": "<b>placed</b>"}},
    ) as r:
        assert r.status == 201
    await console.open(f"#/stream/{stream}")
    snapshot = page.locator("section.snapshot pre.json")
    await snapshot.wait_for()
    assert "<b>placed</b>" in await snapshot.inner_text()
    await console.open("#/stream/uinone-nothing")
    await page.get_by_text("This stream does not exist").wait_for()
    assert console.unexpected() == []


async def test_paging_through_a_stream_and_the_global_log(console: Console, sidecar: ServedSidecar) -> None:
    page = console.page
    stream = f"uipage-{uuid.uuid4().hex[:8]}"
    body = {"events": [{"event_type": "Counted", "payload": {"i": i}} for i in range(1, 56)]}
    async with aiohttp.ClientSession() as http, http.post(
        f"{sidecar.base_url}/api/v1/streams/{stream}/events", json=body
    ) as r:
        first_sequence = (await r.json())["events"][0]["sequence"]
    # The stream opens on its newest page (versions 41..55 of 20 per page), following live.
    await console.open(f"#/stream/{stream}")
    await page.locator('details.event[data-version="55"]').wait_for()
    assert await page.locator("details.event").count() == 15
    await page.locator("#follow-state.live").wait_for()
    await page.locator("a[rel=prev]").click()  # older
    await page.locator('details.event[data-version="21"]').wait_for()
    versions = await page.locator("details.event").evaluate_all("els => els.map(e => +e.dataset.version)")
    assert versions == list(range(21, 41))
    assert await page.locator("#follow").count() == 0  # no live follow off the newest page
    await page.get_by_role("link", name="« oldest").click()
    await page.locator('details.event[data-version="1"]').wait_for()
    # The global log from a typed sequence, 50 per page, then the next page.
    await console.open("#/events")
    await page.locator("#jump").fill(str(first_sequence))
    await page.locator("#stream-prefix").fill(stream)
    await page.get_by_role("button", name="Show").click()
    await page.locator(f'details.event[data-sequence="{first_sequence}"]').wait_for()
    assert await page.locator("details.event").count() == 50
    await page.locator("a[rel=next]").click()  # later
    await page.locator('details.event[data-version="55"]').wait_for()
    assert await page.locator("details.event").count() == 5
    # The stream list: 50 a page, then the next page through the API's cursor.
    prefix = f"uimany{uuid.uuid4().hex[:6]}-"
    async with aiohttp.ClientSession() as http:
        for i in range(52):
            async with http.post(f"{sidecar.base_url}/api/v1/streams/{prefix}{i:02d}/events",
                                 json={"events": [{"event_type": "E", "payload": {}}]}) as r:
                assert r.status == 201
    await console.open(f"#/streams?prefix={prefix}")
    await page.locator(f'tr[data-stream="{prefix}51"]').wait_for()
    assert await page.locator("tbody tr").count() == 50
    await page.locator("a[rel=next]").click()
    await page.locator(f'tr[data-stream="{prefix}00"]').wait_for()
    assert await page.locator("tbody tr").evaluate_all("rs => rs.map(r => r.dataset.stream)") == [
        f"{prefix}01", f"{prefix}00"]
    assert console.unexpected() == []


# -- auth on: the token is pasted, kept in the tab, sent as a bearer; 401 and 403 are explained ---


@pytest.fixture(scope="module")
async def jwt_sidecar(pg: LocalPostgres) -> AsyncIterator[tuple[ServedSidecar, SigningKey]]:
    key = SigningKey.rsa("ui-rsa")
    async with JwksServer.serving(key) as jwks, served_schema(pg.dsn, "uiauth", env=jwt_env(jwks.url)) as served:
        yield served, key


async def test_auth_on_token_401_and_403(browser: Any, jwt_sidecar: tuple[ServedSidecar, SigningKey]) -> None:
    served, key = jwt_sidecar
    operator = key.sign(claims("op-1", ["sys_operator"]))
    auditor = key.sign(claims("aud-1", ["sys_auditor"]))
    stream = f"uiauth-{uuid.uuid4().hex[:8]}"
    await append(served.base_url, stream, {"a": 1}, token=operator)
    context = await browser.new_context()
    try:
        page = await context.new_page()
        page.set_default_timeout(10_000)
        c = Console(page, served.base_url)
        await c.open()
        banner = page.locator("#banner.auth")
        await banner.wait_for()
        assert "401" in await banner.inner_text() and "token" in await banner.inner_text()
        # Paste the auditor's token: the list loads; the token is in this tab's session storage only.
        await page.locator("#token").fill(auditor)
        await page.get_by_role("button", name="Use").click()
        await page.locator(f'tr[data-stream="{stream}"]').wait_for()
        assert await page.evaluate("sessionStorage.getItem('k1s0.eventstore.token')") == auditor
        assert await page.evaluate("localStorage.length") == 0
        assert await page.locator("#banner").is_hidden()
        # The live tail works with the bearer header (EventSource could not send it).
        await page.locator(f'tr[data-stream="{stream}"] a').click()
        await page.locator("#follow-state.live").wait_for()
        await append(served.base_url, stream, {"a": 2}, token=operator)
        await page.locator('details.event[data-version="2"]').wait_for(timeout=LIVE_WITHIN_MS)
        # An auditor may not delete: the 403 is shown, the stream stays.
        await page.locator("details.danger-zone > summary").click()
        await page.locator("#confirm-delete").fill(stream)
        await page.get_by_role("button", name="Delete stream").click()
        await page.locator("#banner.auth", has_text="403").wait_for()
        assert "sys_admin" in await page.locator("#banner").inner_text()
        assert await page.locator('details.event[data-version="2"]').count() == 1
        # Forget the token: back to 401.
        await page.get_by_role("button", name="Forget").click()
        await page.locator("#banner.auth", has_text="401").wait_for()
    finally:
        await context.close()


# -- the status page with the Kafka forwarder on ------------------------------------------------------


async def test_status_shows_the_forwarder_and_its_lag(browser: Any, pg: LocalPostgres) -> None:
    from tests.forwarding.support import create_topics
    from tests.support.kafka import LocalKafka

    broker = LocalKafka()
    await asyncio.to_thread(broker.start)
    schema = await create_schema(pg.dsn, "uikafka")
    topic = f"k1s0.ui.{uuid.uuid4().hex[:8]}.published.v1"
    served = ServedSidecar(pg.dsn, schema, env={
        "EVENTSTORE_KAFKA_BROKERS": broker.bootstrap, "EVENTSTORE_KAFKA_TOPIC_PUBLISHED": topic,
        "EVENTSTORE_KAFKA_ENABLE_IDEMPOTENCE": "false",  # the test broker cannot; production keeps it on
    })
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    try:
        await create_topics(broker.bootstrap, topic)
        await asyncio.to_thread(served.start)
        for i in range(3):
            await append(served.base_url, f"uikafka-{i}", {"i": i})
        page = await context.new_page()
        page.set_default_timeout(15_000)
        c = Console(page, served.base_url)
        await c.open("#/status")
        await page.locator("#forwarder-state", has_text="active").wait_for()
        # every event published: the lag the page shows drops to 0 (refreshed every 2 s)
        await page.locator("#forwarder-published", has_text="3").wait_for()
        await page.locator("#forwarder-lag", has_text="0").wait_for()
        assert await page.locator("#forwarder-lag").inner_text() == "0"
        assert await page.locator("#forwarder-published").inner_text() == "3"
        assert c.unexpected() == []
    finally:
        await context.close()
        await asyncio.to_thread(served.stop)
        await drop_schema(pg.dsn, schema)
        await asyncio.to_thread(broker.stop)
