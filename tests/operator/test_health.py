"""The operator's liveness: Kopf's endpoint, failed by a reconcile that does not finish.

A broker that stops answering (SIGSTOP: sockets open, no replies) holds a reconcile in its Kafka
step; past ``EVENTSTORE_OPERATOR_STALLED_AFTER_SECONDS`` Kopf's liveness endpoint answers 500, so
the kubelet would restart the pod.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import aiohttp.web
import pytest

from k1s0_operator import _health
from tests.operator.conftest import EVS, event_stream, eventually, operator_config, start_operator, stop_operator
from tests.support.kafka import LocalKafka
from tests.support.kube import ApiServer
from tests.support.postgres import LocalPostgres, free_port


@pytest.fixture
def frozen_kafka() -> Iterator[LocalKafka]:
    with LocalKafka() as broker:  # stopping it thaws it first
        yield broker


def test_stalled_counts_only_reconciles_past_the_limit() -> None:
    now = time.monotonic()
    token = object()
    _health._running[token] = now - 5
    try:
        assert _health.stalled(10, now) == 0.0
        assert _health.stalled(2, now) == pytest.approx(5)
    finally:
        _health._running.pop(token)


async def test_a_stuck_reconcile_fails_the_liveness_probe(
    api: ApiServer, pg: LocalPostgres, frozen_kafka: LocalKafka, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv(_health.LIVENESS_PORT_ENV, str(port))
    monkeypatch.setenv(_health.STALLED_ENV, "1")
    await api.create_namespace(namespace)
    op = await start_operator(operator_config(pg.dsn, frozen_kafka.bootstrap), [namespace])
    try:
        frozen_kafka.freeze()
        await api.put_object(EVS, namespace, event_stream("stuck", namespace, {"kafka": {"topic": f"{namespace}.s"}}))

        async def stuck_for_a_while() -> bool:
            return _health.stalled(1.5) > 0

        await eventually(stuck_for_a_while, 30, "a reconcile to hang on the frozen broker")
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 500, await resp.text()
    finally:
        frozen_kafka.thaw()
        await stop_operator(op)


async def test_readyz_follows_the_webhook_listener(tmp_path: Path) -> None:
    """/readyz is 503 while nothing answers on the webhook port, 200 once a TLS listener does (the
    operator's own certificates), and /metrics serves the operator's registry."""
    import ssl

    from k1s0_operator import certs

    webhook_port, health_port = free_port(), free_port()
    runner = aiohttp.web.AppRunner(_health.application("127.0.0.1", webhook_port, True))
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", health_port).start()
    bundle, _ = certs.ensure_bundle(None, ["localhost", "127.0.0.1"])
    files = certs.CertFiles(tmp_path)
    files.write(bundle)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(files.certfile), str(files.keyfile))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{health_port}/readyz") as resp:
                assert resp.status == 503 and f"127.0.0.1:{webhook_port}" in await resp.text()
            server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", webhook_port, ssl=context)
            try:
                async with session.get(f"http://127.0.0.1:{health_port}/readyz") as resp:
                    assert resp.status == 200, await resp.text()
            finally:
                server.close()
                await server.wait_closed()
            async with session.get(f"http://127.0.0.1:{health_port}/metrics") as resp:
                assert "k1s0_operator_admission_duration_seconds" in await resp.text()
    finally:
        await runner.cleanup()
