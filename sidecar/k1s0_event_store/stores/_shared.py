"""What the stores share beyond the store API: the envelope of an event a store has just written,
and the check of ``load``'s arguments."""

from __future__ import annotations

from datetime import datetime

from .._model import EventEnvelope, PreparedEvent, StreamId
from .._validation import validate_version_bound


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


def validate_load(stream_id: StreamId | str, from_version: int, to_version: int | None) -> StreamId:
    """``load``'s arguments, checked the same way by every store; the stream id parsed."""
    sid = StreamId.of(stream_id)
    validate_version_bound(from_version, "from_version")
    if to_version is not None:
        validate_version_bound(to_version, "to_version")
    return sid
