"""JSON shapes of seed 000 (REST bodies, SSE data, Kafka messages) and their strict parsing.

Parsing is strict on purpose: an unknown key is refused rather than ignored, because a silently
ignored ``expected_versoin`` would turn an optimistic-concurrency append into an unconditional one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from k1s0_event_store import (
    EncodedEvent,
    EventEnvelope,
    StreamId,
    ValidationError,
    event_document,
    rfc3339,
    validate_timestamp,
)

_EVENT_KEYS = {"event_type", "payload", "metadata", "event_id", "occurred_at"}
_APPEND_KEYS = {"events", "expected_version"}
_SNAPSHOT_KEYS = {"snapshot_version", "aggregate_type", "state"}




def parse_time(value: object, field: str) -> datetime:
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be an RFC 3339 timestamp string", field=field)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(f"{field} is not an RFC 3339 timestamp: {value!r}", field=field) from None
    if parsed.tzinfo is None:
        raise ValidationError(f"{field} must carry a time-zone offset", field=field)
    return validate_timestamp(parsed, field)


def parse_uuid(value: object, field: str) -> uuid.UUID:
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a UUID string", field=field)
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ValidationError(f"{field} is not a UUID: {value!r}", field=field) from None


def _int_or_none(value: object, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{field} must be an integer", field=field)
    return value


def _object(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError(f"{field} must be a JSON object", field=field)
    return value


def _unknown(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise ValidationError(f"unknown field(s) in {where}: {', '.join(extra)}", field=f"{where}.{extra[0]}")


def parse_event(obj: object, index: int) -> EventEnvelope:
    where = f"events[{index}]"
    data = _object(obj, where)
    _unknown(data, _EVENT_KEYS, where)
    if "event_type" not in data:
        raise ValidationError(f"{where}.event_type is required", field=f"{where}.event_type")
    if "payload" not in data:
        raise ValidationError(f"{where}.payload is required", field=f"{where}.payload")
    metadata = data.get("metadata")
    if metadata is None:
        metadata = {}
    event_type = data["event_type"]
    if not isinstance(event_type, str):
        raise ValidationError(f"{where}.event_type must be a string", field=f"{where}.event_type")
    return EventEnvelope(
        event_type=event_type,
        payload=data["payload"],
        metadata=_object(metadata, f"{where}.metadata"),
        event_id=parse_uuid(data["event_id"], f"{where}.event_id") if data.get("event_id") is not None else None,
        occurred_at=(
            parse_time(data["occurred_at"], f"{where}.occurred_at") if data.get("occurred_at") is not None else None
        ),
    )


def parse_append(body: object) -> tuple[list[EventEnvelope], int | None]:
    data = _object(body, "body")
    _unknown(data, _APPEND_KEYS, "body")
    events = data.get("events")
    if not isinstance(events, list):
        raise ValidationError("events must be a list", field="events")
    if not events:
        raise ValidationError("events must not be empty", field="events")
    return [parse_event(e, i) for i, e in enumerate(events)], _int_or_none(
        data.get("expected_version"), "expected_version"
    )


def parse_snapshot(body: object) -> tuple[int, str | None, Any]:
    data = _object(body, "body")
    _unknown(data, _SNAPSHOT_KEYS, "body")
    version = data.get("snapshot_version")
    if version is None:
        raise ValidationError("snapshot_version is required", field="snapshot_version")
    version = _int_or_none(version, "snapshot_version")
    assert version is not None
    if "state" not in data:
        raise ValidationError("state is required", field="state")
    kind = data.get("aggregate_type")
    if kind is not None and not isinstance(kind, str):
        raise ValidationError("aggregate_type must be a string", field="aggregate_type")
    return version, kind, data["state"]


# Stored events are JSON documents rendered once (``event_document``, or by PostgreSQL) and spliced
# into these bodies as text: nothing is parsed or serialised again on the way out.


def stream_events_text(
    stream_id: StreamId, documents: Iterable[str], current_version: int, pagination: Mapping[str, Any] | None = None
) -> str:
    """A stream's events (an append's answer; a page of a stream read, with its ``pagination``)."""
    paged = "" if pagination is None else f',"pagination":{json.dumps(pagination, separators=(",", ":"))}'
    return (
        f'{{"stream_id":{json.dumps(str(stream_id), ensure_ascii=False)},"events":[{",".join(documents)}],'
        f'"current_version":{current_version}{paged}}}'
    )


def all_events_text(documents: Iterable[str], head_sequence: int) -> str:
    """A page of the global log (``GET /api/v1/events``)."""
    return f'{{"events":[{",".join(documents)}],"head_sequence":{head_sequence}}}'


def sse_frame(event: EncodedEvent) -> bytes:
    """An event as one server-sent event: its sequence as the id, the stored-event document as data."""
    return f"id: {event.sequence}\ndata: {event_document(event)}\n\n".encode()


def published_message(e: EventEnvelope) -> dict[str, Any]:
    """Seed 000's Kafka message for one stored event."""
    return {
        "event_type": "EVENT_PUBLISHED",
        "stream_id": e.stream,
        "sequence": e.sequence,
        "domain_event_type": e.event_type,
        "version": e.version,
        "payload": e.payload,
        "metadata": dict(e.metadata),
        "occurred_at": rfc3339(e.occurred_at),
        "stored_at": rfc3339(e.stored_at),
    }
