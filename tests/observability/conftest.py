from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.forwarding.support import create_topics
from tests.support.kafka import LocalKafka
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar, served_schema

from .otlp import OtlpReceiver, exporter_env


@pytest.fixture(scope="module")
async def topic(kafka: LocalKafka) -> str:
    name = f"k1s0.otel.{uuid.uuid4().hex[:10]}.published.v1"
    await create_topics(kafka.bootstrap, name, partitions=2)
    return name


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[OtlpReceiver]:
    r = await OtlpReceiver().start()
    yield r
    await r.stop()


@pytest.fixture(scope="module")
async def traced(pg: LocalPostgres, kafka: LocalKafka, topic: str, receiver: OtlpReceiver
                 ) -> AsyncIterator[ServedSidecar]:
    """One sidecar with tracing on (by OTEL_* only) and the forwarder on."""
    env = {
        "EVENTSTORE_KAFKA_BROKERS": kafka.bootstrap,
        "EVENTSTORE_KAFKA_TOPIC_PUBLISHED": topic,
        "EVENTSTORE_KAFKA_ENABLE_IDEMPOTENCE": "false",  # Tansu cannot
        **exporter_env(receiver, "sidecar-under-test"),
    }
    async with served_schema(pg.dsn, "otel", env=env) as sidecar:
        yield sidecar
