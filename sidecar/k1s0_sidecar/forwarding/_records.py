"""An outbox row as the Kafka message the forwarder publishes (docs/forwarding.md, "The message")."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from k1s0_event_store import StreamId
from k1s0_event_store.sidecar_config import KafkaSection
from k1s0_event_store.stores.postgres import envelope_from_row

from .. import _tracing as tracing
from .. import _wire as wire
from ._publisher import Record


def records(rows: Sequence[asyncpg.Record], kafka: KafkaSection, spans: list[Any]) -> list[Record]:
    """One record per row: value = the stored event's message, key = its stream id, topic by its
    event type's route. A producer span per traced event is added to ``spans`` (tracing on)."""
    streams: dict[str, StreamId] = {}
    return [_record(row, kafka, spans, streams) for row in rows]


def _record(row: asyncpg.Record, kafka: KafkaSection, spans: list[Any], streams: dict[str, StreamId]) -> Record:
    envelope = envelope_from_row(row, streams)
    value = json.dumps(wire.published_message(envelope), ensure_ascii=False, separators=(",", ":"))
    headers = [
        ("content-type", b"application/json"),
        ("event-type", row["event_type"].encode()),
        ("event-id", str(row["event_id"]).encode()),
    ]
    metadata = row["metadata"]
    correlation = metadata.get("correlation_id") if isinstance(metadata, dict) else None
    if isinstance(correlation, str) and correlation:
        headers.append(("correlation-id", correlation.encode()))
    topic = kafka.routes.get(row["event_type"], kafka.topic_published)
    # traceparent/tracestate: the trace stored with the event, continued by a producer span
    headers.extend(tracing.kafka_headers(metadata, topic, row["stream_id"], row["sequence"], spans))
    return Record(
        topic=topic,
        key=row["stream_id"].encode(),
        value=value.encode(),
        headers=headers,
        sequence=row["sequence"],
    )
