"""The webhook keeps admitting the pods of a provisioned EventStream through outages.

The whole operator process (reconciler and webhook, as ``k1s0-eventstore operator`` runs them)
against the API-server emulator, a PostgreSQL and a Tansu broker of this test's own, which it
stops: once a stream has been provisioned, a Kafka outage or a PostgreSQL outage turns ``Ready``
False, but its labelled pods still get their sidecar (the sidecar needs neither to start serving).
A stream that was never provisioned is refused, with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import jsonpatch
import pytest

from k1s0_operator import webhook
from tests.deploy.conftest import NAMESPACE, app_pod
from tests.deploy.test_webhook import review
from tests.operator.conftest import (
    EVS,
    condition,
    event_stream,
    eventually,
    operator_config,
    operator_running,
)
from tests.operator.test_reconcile import ready, with_condition
from tests.support.kafka import LocalKafka
from tests.support.kube import ApiServer
from tests.support.postgres import LocalPostgres, free_port


@pytest.fixture
def own_kafka() -> Iterator[LocalKafka]:
    with LocalKafka() as broker:
        yield broker


@pytest.fixture
async def own_pg() -> AsyncIterator[LocalPostgres]:
    server = LocalPostgres()
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.destroy)


async def admission(session: aiohttp.ClientSession, url: str, stream: str) -> dict[str, Any]:
    """The webhook's answer for a new pod of ``stream`` (waits for the listener to open)."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            async with session.post(url, json=review(app_pod(stream))) as resp:
                assert resp.status == 200, await resp.text()
                answer: dict[str, Any] = (await resp.json())["response"]
                return answer
        except aiohttp.ClientConnectorError:
            assert asyncio.get_running_loop().time() < deadline, "the webhook never listened"
            await asyncio.sleep(0.1)


def injected(answer: dict[str, Any], stream: str) -> dict[str, Any]:
    assert answer["allowed"] is True, answer
    pod: dict[str, Any] = jsonpatch.apply_patch(app_pod(stream), json.loads(base64.b64decode(answer["patch"])))
    [sidecar] = [c for c in pod["spec"]["initContainers"] if c["name"] == "k1s0-eventstore"]
    return sidecar


async def test_provisioned_stream_admits_pods_with_the_broker_or_postgres_down(
    api: ApiServer, own_pg: LocalPostgres, own_kafka: LocalKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    for key, value in {"EVENTSTORE_WEBHOOK_INSECURE": "true", "EVENTSTORE_WEBHOOK_ADDRESS": "127.0.0.1",
                       "EVENTSTORE_WEBHOOK_PORT": str(port),
                       "EVENTSTORE_SIDECAR_IMAGE": "registry.example.com/k1s0-eventstore:it"}.items():
        monkeypatch.setenv(key, value)
    url = f"http://127.0.0.1:{port}/{webhook.HANDLER_ID}"
    await api.create_namespace(NAMESPACE)
    async with (
        operator_running(operator_config(own_pg.dsn, own_kafka.bootstrap), [NAMESPACE]),
        aiohttp.ClientSession() as session,
    ):
        await api.put_object(EVS, NAMESPACE, event_stream("orders", NAMESPACE, {"kafka": {"topic": "shop.orders"}}))
        obj = await ready(api, NAMESPACE, "orders")
        assert condition(obj, "Provisioned")["status"] == "True"
        assert injected(await admission(session, url, "orders"), "orders")["envFrom"] == [
            {"secretRef": {"name": "orders-eventstore-db"}}]

        # Kafka down: the drift check turns Ready False (BrokerUnavailable); pods still get in.
        await asyncio.to_thread(own_kafka.stop)
        obj = await with_condition(api, NAMESPACE, "orders", "Ready", "BrokerUnavailable", timeout=60)
        assert condition(obj, "Ready")["status"] == "False"
        assert condition(obj, "Provisioned")["status"] == "True"
        injected(await admission(session, url, "orders"), "orders")
        await asyncio.to_thread(own_kafka.start)
        await ready(api, NAMESPACE, "orders", timeout=60)

        # PostgreSQL down: Ready False (DatabaseUnavailable); pods still get in.
        await asyncio.to_thread(own_pg.stop)
        obj = await with_condition(api, NAMESPACE, "orders", "Ready", "DatabaseUnavailable", timeout=60)
        assert condition(obj, "Provisioned")["status"] == "True"
        injected(await admission(session, url, "orders"), "orders")

        # A stream created during the outage was never provisioned: its pods are refused, with why.
        await api.put_object(EVS, NAMESPACE, event_stream("late", NAMESPACE, {"kafka": {"topic": "shop.late"}}))
        await with_condition(api, NAMESPACE, "late", "Ready", "DatabaseUnavailable", timeout=60)
        refused = await admission(session, url, "late")
        assert refused["allowed"] is False and refused["status"]["code"] == 403
        message = refused["status"]["message"]
        assert 'EventStream "late"' in message and "not been provisioned" in message
        assert "DatabaseUnavailable" in message

        # Back up: the late stream is provisioned and admitted too.
        await asyncio.to_thread(own_pg.start)

        async def late_admitted() -> dict[str, Any] | None:
            answer = await admission(session, url, "late")
            return answer if answer["allowed"] else None

        injected(await eventually(late_admitted, 60, "the late stream's pods to be admitted"), "late")
