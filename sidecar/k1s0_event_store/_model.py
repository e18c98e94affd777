"""Plain data: stream ids, event envelopes, snapshots, and the validation every store shares.

Validation lives here, not in the stores, so that the in-memory store, PostgreSQL and the sidecar
reject exactly the same inputs with exactly the same messages.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, NewType

from ._errors import ValidationError
from ._json import MAX_JSON_DEPTH, decode_json_text, encode_json, parse_json

#: A stream's version: 0 before its first event, then the version of its last event (1-based).
EventVersion = NewType("EventVersion", int)

#: ``expected_version=-1``: the stream must not exist yet.
NO_STREAM = -1

#: Versions and sequences are BIGINT in PostgreSQL; larger inputs are refused, not overflowed.
MAX_INT64 = 2**63 - 1
MAX_STREAM_ID_LENGTH = 255
MAX_EVENT_TYPE_LENGTH = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class StreamId:
    """A stream identifier: ``{aggregate_type}-{aggregate_id}`` (the seed's ``order-order-001``)."""

    aggregate_type: str
    aggregate_id: str = ""

    def __post_init__(self) -> None:
        validate_name(self.aggregate_type, "aggregate_type", MAX_STREAM_ID_LENGTH)
        validate_name(str(self), "stream_id", MAX_STREAM_ID_LENGTH)

    def __str__(self) -> str:
        return f"{self.aggregate_type}-{self.aggregate_id}" if self.aggregate_id else self.aggregate_type

    @property
    def value(self) -> str:
        return str(self)

    @classmethod
    def parse(cls, value: str) -> StreamId:
        """Split a wire-format stream id at its first ``-``; one without ``-`` is its own type."""
        if not isinstance(value, str):
            raise ValidationError("stream_id must be a string", field="stream_id")
        validate_name(value, "stream_id", MAX_STREAM_ID_LENGTH)
        aggregate_type, sep, aggregate_id = value.partition("-")
        if not sep or not aggregate_type or not aggregate_id:
            # "-x", "x-" and "x" keep their exact spelling: the type is the whole value.
            return cls(value, "")
        return cls(aggregate_type, aggregate_id)

    @classmethod
    def of(cls, value: StreamId | str) -> StreamId:
        return value if isinstance(value, StreamId) else cls.parse(value)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class EventEnvelope:
    """One event. On the way in only ``event_type`` and ``payload`` are needed; the store fills in
    ``version``, ``sequence`` and ``stored_at`` and returns complete envelopes."""

    event_type: str
    payload: Any
    metadata: Mapping[str, Any] = field(default_factory=dict)
    stream_id: StreamId | None = None
    event_id: uuid.UUID | None = None
    occurred_at: datetime | None = None
    version: int | None = None
    sequence: int | None = None
    stored_at: datetime | None = None

    @property
    def stream(self) -> str:
        return str(self.stream_id) if self.stream_id is not None else ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An aggregate's state as of ``version`` of its stream."""

    stream_id: StreamId
    version: int
    state: Any
    aggregate_type: str
    id: str
    taken_at: datetime


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append stored: the events as written and the stream's version after it."""

    stream_id: StreamId
    events: list[EventEnvelope]
    current_version: int


@dataclass(frozen=True, slots=True)
class StreamPage:
    """A page of one stream's events, with the totals the REST pagination block needs."""

    stream_id: StreamId
    events: list[EventEnvelope]
    current_version: int
    total_count: int


class EncodedEvent(NamedTuple):
    """A stored event as the protocol edges send it: JSON already encoded, times already RFC 3339
    with milliseconds. PostgreSQL produces these directly for reads, so events that are only passed
    through are never decoded and re-encoded; ``encode_event`` makes one from an envelope."""

    stream_id: str
    sequence: int
    event_type: str
    version: int
    payload_json: str
    metadata_json: str
    occurred_at: str
    stored_at: str
    event_id: str


@dataclass(frozen=True, slots=True)
class EncodedPage:
    stream_id: StreamId
    events: list[EncodedEvent]
    current_version: int
    total_count: int


@dataclass(frozen=True, slots=True)
class DocumentPage:
    """A page of one stream with each event as a complete StoredEvent JSON document."""

    stream_id: StreamId
    documents: list[str]
    current_version: int
    total_count: int


def rfc3339(value: datetime | None) -> str:
    """``2026-02-23T10:00:00.012+00:00``: milliseconds and an explicit offset, as seed 000 shows."""
    return value.isoformat(timespec="milliseconds") if value else ""


def encode_event(e: EventEnvelope) -> EncodedEvent:
    return EncodedEvent(
        stream_id=e.stream,
        sequence=e.sequence or 0,
        event_type=e.event_type,
        version=e.version or 0,
        payload_json=json.dumps(e.payload, ensure_ascii=False, separators=(",", ":")),
        metadata_json=json.dumps(dict(e.metadata), ensure_ascii=False, separators=(",", ":")),
        occurred_at=rfc3339(e.occurred_at),
        stored_at=rfc3339(e.stored_at),
        event_id=str(e.event_id) if e.event_id else "",
    )


class PreparedEvent(NamedTuple):
    """An input event after validation: JSON already encoded, id and time fixed.

    Encoding happens once, before any lock is taken, so that a bad payload fails early and the
    database transaction holds its lock only for the insert itself.
    """

    event_id: uuid.UUID
    id_given: bool
    event_type: str
    payload: Any
    metadata: dict[str, Any]
    payload_json: str
    metadata_json: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """One validated append, as the stores' batch path takes it."""

    stream_id: StreamId
    events: tuple[PreparedEvent, ...]
    expected_version: int | None


def validate_name(value: object, field_name: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{field_name} must be a string", field=field_name)
    if not value:
        raise ValidationError(f"{field_name} must not be empty", field=field_name)
    if len(value) > max_length:
        raise ValidationError(f"{field_name} must be at most {max_length} characters", field=field_name)
    if _CONTROL.search(value):
        raise ValidationError(f"{field_name} must not contain control characters", field=field_name)
    if not value.isascii() and not _encodable(value):
        raise ValidationError(f"{field_name} contains an unpaired surrogate", field=field_name)
    if value != value.strip():
        raise ValidationError(f"{field_name} must not start or end with white space", field=field_name)
    return value


def _encodable(value: str) -> bool:
    """Whether ``value`` can be sent as UTF-8 (a lone surrogate, e.g. from ``"\\ud800"``, cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_timestamp(value: datetime, field_name: str) -> datetime:
    """A time with an offset that is still a time in UTC (``0001-01-01T00:00:00+14:00`` is not):
    PostgreSQL stores ``timestamptz`` in UTC, and Python cannot hand over one before year 1 or
    after 9999."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(f"{field_name} must carry a time zone", field=field_name)
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValidationError(
            f"{field_name} is out of range: in UTC it must fall within years 1 to 9999", field=field_name
        ) from None
    return value


def validate_filters(values: Sequence[str], field_name: str, max_length: int = MAX_STREAM_ID_LENGTH) -> list[str]:
    """Read filters (stream prefixes, event types): the same rules as the names they match."""
    if isinstance(values, str):
        raise ValidationError(f"{field_name} must be a list of strings", field=field_name)
    return [validate_name(v, field_name, max_length) for v in values]


def validate_read_all(
    after_sequence: int, limit: int, stream_prefixes: Sequence[str], event_types: Sequence[str],
    until_sequence: int | None,
) -> tuple[list[str], list[str]]:
    """The arguments of ``read_all``, checked the same way by every store; returns the filters."""
    validate_version_bound(after_sequence, "after_sequence")
    validate_version_bound(limit, "limit", 1)
    if until_sequence is not None:
        validate_version_bound(until_sequence, "until_sequence")
    return (
        validate_filters(stream_prefixes, "stream_prefixes"),
        validate_filters(event_types, "event_types", MAX_EVENT_TYPE_LENGTH),
    )


def validate_expected_version(expected_version: object) -> int | None:
    if expected_version is None:
        return None
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        raise ValidationError("expected_version must be an integer", field="expected_version")
    if not NO_STREAM <= expected_version <= MAX_INT64:
        raise ValidationError(
            "expected_version must be -1 (no stream), 0 or a positive 64-bit version", field="expected_version"
        )
    return expected_version


def validate_version_bound(value: object, field_name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{field_name} must be an integer", field=field_name)
    if value < minimum:
        raise ValidationError(f"{field_name} must be >= {minimum}", field=field_name)
    if value > MAX_INT64:
        raise ValidationError(f"{field_name} must fit in 64 bits (<= {MAX_INT64})", field=field_name)
    return value


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


def same_content(stored: EventEnvelope, p: PreparedEvent) -> bool:
    """Whether a stored event is the one ``p`` describes (for idempotent retries)."""
    return stored.event_type == p.event_type and json.loads(p.payload_json) == stored.payload


__all__ = [
    "MAX_JSON_DEPTH",
    "NO_STREAM",
    "AppendRequest",
    "AppendResult",
    "EventEnvelope",
    "EventVersion",
    "PreparedEvent",
    "Snapshot",
    "StreamId",
    "StreamPage",
    "decode_json_text",
    "encode_json",
    "envelope_from_prepared",
    "parse_json",
    "prepare_append",
    "prepare_json_event",
    "prepared_append",
]
