"""Plain data: stream ids, event envelopes, snapshots, append requests and results, stream pages.

Only types live here; the rules they are checked by are in ``_validation``, their text forms in
``_encoding`` and the preparation of an append in ``_appending``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, NamedTuple, NewType

from typing_extensions import TypeVar

from ._errors import ValidationError
from ._validation import MAX_STREAM_ID_LENGTH, validate_name

#: A stream's version: 0 before its first event, then the version of its last event (1-based).
EventVersion = NewType("EventVersion", int)


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


#: The form of a page's events (``ReadForm``): envelopes unless a read asked for another form.
E = TypeVar("E", default=EventEnvelope)


@dataclass(frozen=True, slots=True)
class StreamPage(Generic[E]):
    """A page of one stream's events, with the totals the REST pagination block needs.

    ``events`` are in the form the read asked for: ``StreamPage`` alone means envelopes,
    ``StreamPage[EncodedEvent]`` encoded events, ``StreamPage[str]`` JSON documents."""

    stream_id: StreamId
    events: list[E]
    current_version: int
    total_count: int


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
