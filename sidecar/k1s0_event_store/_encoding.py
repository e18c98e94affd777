"""A stored event as text: RFC 3339 times, the encoded event, and the stored-event JSON document.

``STORED_EVENT`` is the one definition of the document every edge sends for a stored event (REST
bodies, server-sent events, the CLI): its keys in order and how each value is written. PostgreSQL
builds the document from it in SQL (``stores/postgres.py``), ``event_document`` renders it in
Python, and ``EncodedEvent`` holds its values in the same order.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

from ._listing import StreamSummary
from ._model import EventEnvelope, Snapshot


def rfc3339(value: datetime | None) -> str:
    """``2026-02-23T10:00:00.012+00:00``: milliseconds and an explicit offset, as the API shows."""
    return value.isoformat(timespec="milliseconds") if value else ""


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


class Written(enum.Enum):
    """How a value of the stored-event document is written."""

    STRING = "a JSON string (escaped)"
    NUMBER = "a JSON number"
    JSON = "JSON text spliced in as stored (payload, metadata)"
    TIME = "an RFC 3339 time with milliseconds, quoted (needs no escaping)"
    UUID = "a UUID, quoted (needs no escaping)"


class DocumentField(NamedTuple):
    key: str
    written: Written


#: The stored-event document: its keys, in order, and how each value is written. The key is also
#: the column of the ``events`` table that holds the value.
STORED_EVENT: tuple[DocumentField, ...] = (
    DocumentField("stream_id", Written.STRING),
    DocumentField("sequence", Written.NUMBER),
    DocumentField("event_type", Written.STRING),
    DocumentField("version", Written.NUMBER),
    DocumentField("payload", Written.JSON),
    DocumentField("metadata", Written.JSON),
    DocumentField("occurred_at", Written.TIME),
    DocumentField("stored_at", Written.TIME),
    DocumentField("event_id", Written.UUID),
)

# EncodedEvent carries the document's values in the document's order (JSON text as ``<key>_json``).
if [f.key for f in STORED_EVENT] != [name.removesuffix("_json") for name in EncodedEvent._fields]:
    raise AssertionError("EncodedEvent's fields must follow STORED_EVENT")


def _json_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _compile_document() -> Callable[[EncodedEvent], str]:
    """``event_document``, compiled from ``STORED_EVENT`` into one f-string over the tuple's items.

    Compiled rather than looped over the fields: a loop (or ``%``/``format`` with a template) costs
    a tenth to twice as much per event, and this is the hot path of every server-sent event and
    every append answer. The source is built from the constant definition above only."""
    value = {
        Written.STRING: "{_json_string(e[%d])}",
        Written.NUMBER: "{e[%d]}",
        Written.JSON: "{e[%d]}",
        Written.TIME: '"{e[%d]}"',
        Written.UUID: '"{e[%d]}"',
    }
    body = ",".join(f'"{f.key}":' + value[f.written] % i for i, f in enumerate(STORED_EVENT))
    render: Callable[[EncodedEvent], str] = eval(
        f"lambda e: f'{{{{{body}}}}}'", {"_json_string": _json_string}
    )
    return render


#: A stored event as its JSON document (``STORED_EVENT``), payload and metadata spliced in as encoded.
event_document: Callable[[EncodedEvent], str] = _compile_document()


def event_json(e: EventEnvelope) -> dict[str, Any]:
    """A stored event as a JSON object (the CLI's output): the document of ``event_document``."""
    result: dict[str, Any] = json.loads(event_document(encode_event(e)))
    return result


def snapshot_json(s: Snapshot, *, with_state: bool) -> dict[str, Any]:
    """A snapshot as a JSON object (REST bodies, the CLI); ``state`` only when asked for."""
    body: dict[str, Any] = {
        "id": s.id,
        "stream_id": str(s.stream_id),
        "snapshot_version": s.version,
        "aggregate_type": s.aggregate_type,
    }
    if with_state:
        body["state"] = s.state
    body["created_at"] = rfc3339(s.taken_at)
    return body


def stream_summary_json(s: StreamSummary) -> dict[str, Any]:
    """One stream of a listing (``GET /api/v1/streams``)."""
    return {"stream_id": str(s.stream_id), "aggregate_type": s.aggregate_type, "current_version": s.current_version,
            "updated_at": rfc3339(s.updated_at)}
