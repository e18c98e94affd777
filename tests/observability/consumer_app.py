"""A consuming application with OpenTelemetry configured the usual way (SDK + OTLP exporter from
``OTEL_*``); it handles one event with ``EventConsumer`` and exits, flushing its spans.

Usage: python -m tests.observability.consumer_app BOOTSTRAP TOPIC GROUP DSN SCHEMA
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from k1s0_event_store import EventConsumer, PublishedEvent, ensure_consumer_tables
from tests.support.kafka import CONSUMER_GROUP_TIMEOUTS


async def main(bootstrap: str, topic: str, group: str, dsn: str, schema: str) -> None:
    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    conn = await asyncpg.connect(dsn)
    try:
        await ensure_consumer_tables(conn, schema)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    handled = asyncio.Event()

    async def project(event: PublishedEvent, conn: asyncpg.Connection) -> None:
        handled.set()

    consumer = EventConsumer(
        brokers=[bootstrap], topics=[topic], group_id=group, pool=pool, schema=schema, handler=project,
        consumer_options=CONSUMER_GROUP_TIMEOUTS, producer_options={"enable_idempotence": False},
    )
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(handled.wait(), 60)
    finally:
        await consumer.stop()
        await task
        await pool.close()
        provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
