"""Preparing an append: every check and every encoding done once, before a store takes a lock.

``prepare_append`` takes envelopes (library callers, REST bodies); the gRPC edge prepares each event
from its JSON text with ``prepare_json_event`` and joins them with ``prepared_append``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ._errors import ValidationError
from ._json import MAX_JSON_DEPTH, encode_json, parse_json
from ._model import AppendRequest, EventEnvelope, PreparedEvent, StreamId
from ._validation import MAX_EVENT_TYPE_LENGTH, validate_expected_version, validate_name, validate_timestamp


def _utcnow() -> datetime:
    return datetime.now(UTC)


def prepare_event(
    event: EventEnvelope, index: int, stream_id: StreamId | None = None, default_time: datetime | None = None,
    max_depth: int = MAX_JSON_DEPTH,
) -> PreparedEvent:
    where = f"events[{index}]"
    if not isinstance(event, EventEnvelope):
        raise ValidationError(f"{where} must be an EventEnvelope", field=where)
    if event.stream_id is not None and stream_id is not None and str(event.stream_id) != str(stream_id):
        raise ValidationError(
            f"{where}.stream_id {event.stream_id} does not match the stream appended to ({stream_id})",
            field=f"{where}.stream_id",
        )
    validate_name(event.event_type, f"{where}.event_type", MAX_EVENT_TYPE_LENGTH)
    metadata, metadata_json = _metadata(event.metadata, where, max_depth)
    payload_json = encode_json(event.payload, f"{where}.payload", max_depth)
    return PreparedEvent(
        event_id=_event_id(event.event_id, where),
        id_given=event.event_id is not None,
        event_type=event.event_type,
        payload=event.payload,
        metadata=metadata,
        payload_json=payload_json,
        metadata_json=metadata_json,
        occurred_at=_occurred_at(event.occurred_at, default_time, where),
    )


def prepare_json_event(
    event_type: object,
    payload_json: str,
    metadata: Mapping[str, Any] | None,
    index: int,
    *,
    event_id: uuid.UUID | None = None,
    occurred_at: datetime | None = None,
    default_time: datetime | None = None,
    max_depth: int = MAX_JSON_DEPTH,
) -> PreparedEvent:
    """An event whose payload arrives as JSON text (the protocol edges).

    The text is parsed once, to validate it, and then stored as it came: serialising the parsed
    value again would cost as much as the parse and produce the same jsonb. Text with ``\\u``
    escapes takes the slow path (parse and re-encode), which refuses NUL and lone surrogates,
    neither of which jsonb accepts."""
    where = f"events[{index}]"
    validate_name(event_type, f"{where}.event_type", MAX_EVENT_TYPE_LENGTH)
    assert isinstance(event_type, str)
    field_name = f"{where}.payload_json"
    if not payload_json:
        raise ValidationError(f"{field_name} is required (JSON text)", field=field_name)
    payload = parse_json(payload_json, field_name, max_depth)
    if "\\u" in payload_json:
        payload_json = encode_json(payload, field_name, max_depth)
    metadata_value, metadata_json = _metadata(metadata, where, max_depth)
    return PreparedEvent(
        event_id=_event_id(event_id, where),
        id_given=event_id is not None,
        event_type=event_type,
        payload=payload,
        metadata=metadata_value,
        payload_json=payload_json,
        metadata_json=metadata_json,
        occurred_at=_occurred_at(occurred_at, default_time, where),
    )


def _metadata(metadata: object, where: str, max_depth: int = MAX_JSON_DEPTH) -> tuple[dict[str, Any], str]:
    if metadata is None or (type(metadata) is dict and not metadata):  # most events: nothing to encode
        return {}, "{}"
    if not isinstance(metadata, Mapping):
        raise ValidationError(f"{where}.metadata must be a JSON object", field=f"{where}.metadata")
    value = dict(metadata)
    return value, encode_json(value, f"{where}.metadata", max_depth)


class _RandomIds:
    """Version-4 UUIDs from a buffer of ``os.urandom`` bytes: one system call per 256 ids instead
    of one per id (``uuid.uuid4`` was an eighth of the CPU of a 100-event append). The buffer is
    dropped in a forked child, so parent and child never hand out the same bytes."""

    def __init__(self) -> None:
        self._buffer = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._drop)

    def _drop(self) -> None:
        self._buffer, self._at = b"", 0

    def __call__(self) -> uuid.UUID:
        at = self._at
        if at >= len(self._buffer):
            self._buffer, at = os.urandom(4096), 0
        self._at = at + 16
        return uuid.UUID(bytes=self._buffer[at:at + 16], version=4)


new_event_id = _RandomIds()


def _event_id(event_id: object, where: str) -> uuid.UUID:
    if event_id is None:
        return new_event_id()
    if not isinstance(event_id, uuid.UUID):
        raise ValidationError(f"{where}.event_id must be a UUID", field=f"{where}.event_id")
    return event_id


def _occurred_at(occurred_at: datetime | None, default_time: datetime | None, where: str) -> datetime:
    if occurred_at is None:
        return default_time or _utcnow()
    if not isinstance(occurred_at, datetime):
        raise ValidationError(f"{where}.occurred_at must be a datetime", field=f"{where}.occurred_at")
    return validate_timestamp(occurred_at, f"{where}.occurred_at")


def prepare_append(
    stream_id: StreamId | str,
    events: Sequence[EventEnvelope],
    expected_version: object = None,
    *,
    max_events: int | None = None,
    max_depth: int = MAX_JSON_DEPTH,
) -> AppendRequest:
    """Validate one append completely; raise before anything is written."""
    sid = StreamId.of(stream_id)
    _check_events(events, max_events)
    expected = validate_expected_version(expected_version)
    now = _utcnow()  # one "time of the append" for every event that names none
    return _request(sid, [prepare_event(e, i, sid, now, max_depth) for i, e in enumerate(events)], expected)


def prepared_append(
    stream_id: StreamId | str,
    events: Sequence[PreparedEvent],
    expected_version: object = None,
    *,
    max_events: int | None = None,
) -> AppendRequest:
    """An append of events already prepared one by one (``prepare_json_event``): the checks that
    span the whole append."""
    sid = StreamId.of(stream_id)
    _check_events(events, max_events)
    return _request(sid, events, validate_expected_version(expected_version))


def _request(sid: StreamId, events: Sequence[PreparedEvent], expected: int | None) -> AppendRequest:
    if len(events) > 1:
        seen: set[uuid.UUID] = set()
        for i, p in enumerate(events):
            if p.event_id in seen:
                raise ValidationError(
                    f"events[{i}].event_id is repeated in one append", field=f"events[{i}].event_id"
                )
            seen.add(p.event_id)
    return AppendRequest(stream_id=sid, events=tuple(events), expected_version=expected)


def _check_events(events: object, max_events: int | None) -> None:
    # list and tuple first: the ABC check is the slow path of a hot function.
    if type(events) not in (list, tuple) and (isinstance(events, (str, bytes)) or not isinstance(events, Sequence)):
        raise ValidationError("events must be a list of events", field="events")
    assert isinstance(events, Sequence)
    if not events:
        raise ValidationError("events must not be empty", field="events")
    if max_events is not None and len(events) > max_events:
        raise ValidationError(
            f"at most {max_events} events may be appended at once (got {len(events)})", field="events"
        )


def same_content(stored: EventEnvelope, p: PreparedEvent) -> bool:
    """Whether a stored event is the one ``p`` describes (an idempotent retry of an append)."""
    return stored.event_type == p.event_type and json.loads(p.payload_json) == stored.payload
