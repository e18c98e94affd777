"""What the stores share beyond the store API: the envelope of an event a store has just written."""

from __future__ import annotations

from datetime import datetime

from .._model import EventEnvelope, PreparedEvent, StreamId


def envelope_from_prepared(
    p: PreparedEvent, stream_id: StreamId, version: int, sequence: int, stored_at: datetime
) -> EventEnvelope:
    return EventEnvelope(
        event_type=p.event_type,
        payload=p.payload,
        metadata=p.metadata,
        stream_id=stream_id,
        event_id=p.event_id,
        occurred_at=p.occurred_at,
        version=version,
        sequence=sequence,
        stored_at=stored_at,
    )
