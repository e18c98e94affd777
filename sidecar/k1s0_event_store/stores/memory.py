"""In-memory stores: the same contract as PostgreSQL, for unit tests of application code."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from .._api import EventStore, SnapshotStore
from .._batch import Write, plan, results
from .._encoding import EncodedEvent, encode_event, event_document
from .._errors import EventNotFoundError, EventStoreError, StreamNotFoundError, ValidationError
from .._forms import ReadForm
from .._json import encode_json
from .._listing import StreamList, StreamSummary, encode_cursor, validate_list_streams
from .._model import AppendRequest, AppendResult, EventEnvelope, Snapshot, StreamId, StreamPage
from .._validation import MAX_EVENT_TYPE_LENGTH, validate_name, validate_read_all, validate_version_bound
from ._shared import envelope_from_prepared, validate_load

T = TypeVar("T")


def _same(events: list[EventEnvelope]) -> list[EventEnvelope]:
    return events


def _encoded(events: list[EventEnvelope]) -> list[EncodedEvent]:
    return [encode_event(e) for e in events]


def _documents(events: list[EventEnvelope]) -> list[str]:
    return [event_document(encode_event(e)) for e in events]


def _in_form(form: ReadForm[T], events: list[EventEnvelope]) -> list[T]:
    """The envelopes this store holds in ``form``: the other two forms are encoded from them."""
    return form.choose(_same, _encoded, _documents)(events)


class InMemoryEventStore(EventStore):
    """Everything in dictionaries; one lock makes each batch atomic."""

    def __init__(self, *, max_events_per_append: int | None = None) -> None:
        self.max_events_per_append = max_events_per_append
        self._streams: dict[str, list[EventEnvelope]] = {}
        self._aggregate_types: dict[str, str] = {}
        #: The time of each stream's last append (``updated_at`` in PostgreSQL).
        self._updated: dict[str, datetime] = {}
        self._all: list[EventEnvelope] = []
        self._by_id: dict[uuid.UUID, EventEnvelope] = {}
        self._sequence = itertools.count(1)
        self._lock = asyncio.Lock()
        self.snapshots: dict[str, list[Snapshot]] = {}

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[AppendResult | EventStoreError]:
        async with self._lock:
            versions = {s: len(self._streams.get(s, [])) for s in {str(r.stream_id) for r in requests}}
            ids = {p.event_id for r in requests for p in r.events if p.id_given}
            stored_by_id = {i: self._by_id[i] for i in ids if i in self._by_id}
            now = datetime.now(UTC)

            def write(decision: Write) -> list[EventEnvelope]:
                req = decision.request
                stream = str(req.stream_id)
                written = [
                    envelope_from_prepared(p, req.stream_id, decision.first_version + i, next(self._sequence), now)
                    for i, p in enumerate(req.events)
                ]
                self._streams.setdefault(stream, []).extend(written)
                self._aggregate_types.setdefault(stream, req.stream_id.aggregate_type)
                self._updated[stream] = now
                self._all.extend(written)
                self._by_id.update({e.event_id: e for e in written if e.event_id is not None})
                return written

            return results(plan(requests, versions, stored_by_id), write)

    async def load(
        self, stream_id: StreamId | str, from_version: int = 0, to_version: int | None = None
    ) -> list[EventEnvelope]:
        sid = validate_load(stream_id, from_version, to_version)
        return [
            e
            for e in self._streams.get(str(sid), [])
            if (e.version or 0) >= from_version and (to_version is None or (e.version or 0) <= to_version)
        ]

    async def _read_stream(
        self, form: ReadForm[T], stream_id: StreamId | str, from_version: int, to_version: int | None,
        event_type: str | None, offset: int, limit: int | None,
    ) -> StreamPage[T]:
        sid = StreamId.of(stream_id)
        if event_type is not None:
            validate_name(event_type, "event_type", MAX_EVENT_TYPE_LENGTH)
        events = self._streams.get(str(sid))
        if not events:
            raise StreamNotFoundError(str(sid))
        selected = [
            e
            for e in await self.load(sid, from_version, to_version)
            if event_type is None or e.event_type == event_type
        ]
        validate_version_bound(offset, "offset")
        page = selected[offset:] if limit is None else selected[offset : offset + limit]
        return StreamPage(sid, _in_form(form, page), len(events), len(selected))

    async def get_event(self, stream_id: StreamId | str, sequence: int) -> EventEnvelope:
        sid = StreamId.of(stream_id)
        validate_version_bound(sequence, "sequence", 1)
        for e in self._streams.get(str(sid), []):
            if e.sequence == sequence:
                return e
        raise EventNotFoundError(str(sid), sequence)

    async def _read_all(
        self, form: ReadForm[T], after_sequence: int, limit: int, stream_prefixes: Sequence[str],
        event_types: Sequence[str], until_sequence: int | None,
    ) -> list[T]:
        stream_prefixes, event_types = validate_read_all(
            after_sequence, limit, stream_prefixes, event_types, until_sequence
        )
        out: list[EventEnvelope] = []
        for e in self._all:
            if (e.sequence or 0) <= after_sequence:
                continue
            if until_sequence is not None and (e.sequence or 0) > until_sequence:
                break
            if stream_prefixes and not any(e.stream.startswith(p) for p in stream_prefixes):
                continue
            if event_types and e.event_type not in event_types:
                continue
            out.append(e)
            if len(out) >= limit:
                break
        return _in_form(form, out)

    async def head_sequence(self) -> int:
        return self._all[-1].sequence or 0 if self._all else 0

    async def exists(self, stream_id: StreamId | str) -> bool:
        return bool(self._streams.get(str(StreamId.of(stream_id))))

    async def current_version(self, stream_id: StreamId | str) -> int:
        return len(self._streams.get(str(StreamId.of(stream_id)), []))

    async def list_streams(self, *, prefix: str = "", after: str | None = None, limit: int = 50) -> StreamList:
        position = validate_list_streams(prefix, after, limit)
        # Newest first, ties by id descending: the reverse of ascending (updated_at, id).
        keys = sorted(((t, sid) for sid, t in self._updated.items() if sid.startswith(prefix)), reverse=True)
        if position is not None:
            keys = [k for k in keys if k < position]
        page = keys[:limit]
        streams = [
            StreamSummary(StreamId.parse(sid), self._aggregate_types[sid], len(self._streams[sid]), t)
            for t, sid in page
        ]
        more = len(keys) > limit
        return StreamList(streams, encode_cursor(*page[-1]) if more else None)

    async def delete_stream(self, stream_id: StreamId | str) -> int:
        sid = str(StreamId.of(stream_id))
        async with self._lock:
            events = self._streams.pop(sid, None)
            if not events:
                raise StreamNotFoundError(sid)
            gone = {id(e) for e in events}
            self._all = [e for e in self._all if id(e) not in gone]
            for e in events:
                self._by_id.pop(e.event_id, None) if e.event_id else None
            self._aggregate_types.pop(sid, None)
            self._updated.pop(sid, None)
            self.snapshots.pop(sid, None)
            return len(events)


class InMemorySnapshotStore(SnapshotStore):
    """Snapshots kept beside an ``InMemoryEventStore`` (which it asks for stream versions)."""

    def __init__(self, events: InMemoryEventStore) -> None:
        self._events = events

    async def save(
        self, stream_id: StreamId | str, version: int, state: Any, aggregate_type: str | None = None
    ) -> Snapshot:
        sid = StreamId.of(stream_id)
        validate_version_bound(version, "snapshot_version", 1)
        encode_json(state, "state")
        kind = validate_name(aggregate_type or sid.aggregate_type, "aggregate_type", 255)
        current = await self._events.current_version(sid)
        if current == 0:
            raise StreamNotFoundError(str(sid))
        if version > current:
            raise ValidationError(
                f"snapshot_version {version} is above the stream's current version {current}",
                field="snapshot_version",
            )
        snap = Snapshot(sid, version, state, kind, new_snapshot_id(), datetime.now(UTC))
        self._events.snapshots.setdefault(str(sid), []).append(snap)
        return snap

    async def load_latest(self, stream_id: StreamId | str) -> Snapshot | None:
        snaps = self._events.snapshots.get(str(StreamId.of(stream_id)))
        if not snaps:
            return None
        return max(snaps, key=lambda s: (s.version, s.taken_at))

    async def prune(self, older_than: datetime) -> int:
        removed = 0
        for stream, snaps in self._events.snapshots.items():
            newest = max(snaps, key=lambda s: (s.version, s.taken_at))
            keep = [s for s in snaps if s is newest or s.taken_at >= older_than]
            removed += len(snaps) - len(keep)
            self._events.snapshots[stream] = keep
        return removed


def new_snapshot_id() -> str:
    """``snap_`` + 32 hex digits, like the seed's ``snap_01JABC…`` ids (opaque to clients)."""
    return f"snap_{uuid.uuid4().hex}"
