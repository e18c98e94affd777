from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.forwarding.support import create_topics
from tests.support.kafka import LocalKafka

from .otlp import OtlpReceiver


@pytest.fixture(scope="module")
def kafka() -> Iterator[LocalKafka]:
    broker = LocalKafka()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


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
