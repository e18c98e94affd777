"""The application service: the one place REST and gRPC call.

It owns request semantics shared by both protocols (defaults, paging limits, the per-append event
limit, audit metadata, whether subscriptions are on) and nothing of either wire format. Handlers
parse, call one method here, and render; errors are library exceptions, rendered by ``errors``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, overload

from k1s0_event_store import (
    MAX_INT64,
    AppendRequest,
    AppendResult,
    EncodedEvent,
    EventEnvelope,
    EventStore,
    PreparedEvent,
    ReadForm,
    Snapshot,
    SnapshotNotFoundError,
    SnapshotStore,
    StreamId,
    StreamList,
    StreamPage,
    UnavailableError,
    ValidationError,
    encode_event,
    prepare_append,
    prepared_append,
    rfc3339,
    validate_timestamp,
    validate_version_bound,
)
from k1s0_event_store.sidecar_config import EventStoreSection

from . import _audit as audit
from . import _tracing as tracing
from ._authz import Principal
from ._group_commit import GroupCommitter
from ._metrics import Metrics
from ._subscriptions import SubscriptionHub

T = TypeVar("T")
E = TypeVar("E")
#: How an edge prepares one of its events from its own wire form: (event, index, audit subject,
#: the append's time, JSON depth limit). It stamps the subject with ``audited_metadata``.
Prepare = Callable[[E, int, str | None, datetime, int], PreparedEvent]

#: Metadata key that always records who appended, whatever the client wrote elsewhere.
AUTHENTICATED_SUBJECT_KEY = "authenticated_subject"
READ_ALL_MAX = 1000
READ_ALL_DEFAULT = 500


@dataclass(frozen=True, slots=True)
class Appended:
    """An append as it was prepared and what the store answered (the edge renders it)."""

    request: AppendRequest
    result: AppendResult


def time_texts() -> Callable[[datetime | None], str]:
    """``rfc3339`` remembering its answers: the events of one append share their times."""
    times: dict[datetime | None, str] = {}

    def when(value: datetime | None) -> str:
        text = times.get(value)
        if text is None:
            text = times[value] = rfc3339(value)
        return text

    return when


def encode_appended(request: AppendRequest, result: AppendResult) -> list[EncodedEvent]:
    """Encode the stored events from the request's own JSON text instead of serialising them again.

    A fresh write returns envelopes that hold the request's very payload and metadata objects; an
    idempotent replay returns what was stored earlier, which is encoded from the stored values."""
    when = time_texts()
    out: list[EncodedEvent] = []
    for stored, prepared in zip(result.events, request.events, strict=False):
        if stored.payload is not prepared.payload or stored.metadata is not prepared.metadata:
            out.append(encode_event(stored))
            continue
        out.append(EncodedEvent(
            stream_id=stored.stream, sequence=stored.sequence or 0, event_type=stored.event_type,
            version=stored.version or 0, payload_json=prepared.payload_json, metadata_json=prepared.metadata_json,
            occurred_at=when(stored.occurred_at), stored_at=when(stored.stored_at), event_id=str(prepared.event_id),
        ))
    return out


@dataclass(frozen=True)
class ReadPage(Generic[T]):
    """A stream page with the page number and size it was asked for."""

    page: StreamPage[T]
    number: int
    size: int

    @property
    def count(self) -> int:
        return len(self.page.events)

    @property
    def has_next(self) -> bool:
        return (self.number - 1) * self.size + self.count < self.page.total_count


class EventStoreService:
    def __init__(
        self,
        store: EventStore,
        snapshots: SnapshotStore,
        settings: EventStoreSection,
        metrics: Metrics,
        committer: GroupCommitter | None = None,
        subscriptions: SubscriptionHub | None = None,
    ) -> None:
        self.store = store
        self.snapshots = snapshots
        self.settings = settings
        self.metrics = metrics
        self.committer = committer
        #: None: this service has no subscription reader, and both edges answer a subscription with
        #: SYS_EVSTORE_UNAVAILABLE (the sidecar always has one; an embedding may not).
        self.subscriptions = subscriptions

    @overload
    async def append(
        self, stream_id: str, events: Sequence[EventEnvelope], expected_version: int | None, subject: str | None
    ) -> Appended: ...

    @overload
    async def append(
        self, stream_id: str, events: Sequence[E], expected_version: int | None, subject: str | None,
        prepare: Prepare[E],
    ) -> Appended: ...

    async def append(
        self,
        stream_id: str,
        events: Sequence[Any],
        expected_version: int | None,
        subject: str | None,
        prepare: Prepare[Any] | None = None,
    ) -> Appended:
        """The one append of both edges. ``subject``: who is appending (``audit_subject``), recorded
        in every event's metadata. The events are envelopes (validated and encoded here), or, with
        ``prepare``, the edge's wire form, each prepared by ``prepare`` as it is read (JSON text
        kept as it came, the subject stamped before the metadata is encoded)."""
        depth = self.settings.max_json_depth
        if prepare is None:
            if subject is not None:
                events = [_audited(e, subject) for e in events]
            request = prepare_append(
                stream_id, events, expected_version, max_events=self.settings.max_events_per_append, max_depth=depth
            )
        else:
            now = datetime.now(UTC)  # one "time of the append" for every event that names none
            prepared = [prepare(e, i, subject, now, depth) for i, e in enumerate(events)]
            request = prepared_append(
                stream_id, prepared, expected_version, max_events=self.settings.max_events_per_append
            )
        if tracing.ENABLED:
            request = tracing.stamp(request)
        return Appended(request, await self.commit(request))

    async def commit(self, request: AppendRequest) -> AppendResult:
        started = time.perf_counter()
        audit.note_append(request)
        try:
            with self.metrics.appends_pending.track_inprogress():
                if self.committer is not None:
                    result = await self.committer.submit(request)
                else:
                    (outcome,) = await self.store.append_batch([request])
                    if isinstance(outcome, Exception):
                        raise outcome
                    result = outcome
        except Exception as exc:
            if getattr(exc, "code", "") == "SYS_EVSTORE_VERSION_CONFLICT":
                self.metrics.append_conflicts.inc()
                audit.note(actual_version=getattr(exc, "actual_version", None))
            raise
        if tracing.ENABLED:
            tracing.appended(result)
        audit.note(resulting_version=result.current_version)
        self.metrics.append_latency.observe(time.perf_counter() - started)
        self.metrics.events_appended.inc(len(result.events))
        if result.events and result.events[0].version == 1 and result.events[0].event_id == request.events[0].event_id:
            self.metrics.streams_created.inc()
        return result

    async def read_stream(
        self,
        stream_id: str,
        form: ReadForm[T],
        *,
        from_version: int | None = None,
        to_version: int | None = None,
        event_type: str | None = None,
        page: int | None = None,
        page_size: int | None = None,
    ) -> ReadPage[T]:
        """A page of one stream, its events in ``form`` (each edge asks for the one it sends)."""
        if tracing.ENABLED:
            tracing.stream(stream_id)
        sid = StreamId.parse(stream_id)
        first = 1 if from_version is None else validate_version_bound(from_version, "from_version", 0)
        last = None if to_version is None else validate_version_bound(to_version, "to_version", 0)
        if last is not None and last < first:
            raise ValidationError("to_version must be >= from_version", field="to_version")
        number = 1 if page is None else validate_version_bound(page, "page", 1)
        default = min(self.settings.default_page_size, self.settings.max_page_size)
        size = default if page_size is None else validate_version_bound(page_size, "page_size", 1)
        if size > self.settings.max_page_size:
            raise ValidationError(
                f"page_size must be at most {self.settings.max_page_size} (got {size})", field="page_size"
            )
        # The page starts at version first + offset; beyond 64 bits it cannot exist (nor be sent to SQL).
        if max(first, 1) + (number - 1) * size > MAX_INT64:
            raise ValidationError("page is beyond the largest possible version (2^63-1)", field="page")
        result = await self.store.read_stream(
            sid, form=form, from_version=first, to_version=last, event_type=event_type,
            offset=(number - 1) * size, limit=size,
        )
        self.metrics.reads.labels("stream").inc()
        return ReadPage(result, number, size)

    async def get_event(self, stream_id: str, sequence: int) -> EventEnvelope:
        validate_version_bound(sequence, "sequence", 1)
        if tracing.ENABLED:
            tracing.stream(stream_id)
        event = await self.store.get_event(StreamId.parse(stream_id), sequence)
        self.metrics.reads.labels("event").inc()
        return event

    async def read_all(
        self,
        form: ReadForm[T],
        after_sequence: int = 0,
        limit: int | None = None,
        stream_prefixes: Sequence[str] = (),
        event_types: Sequence[str] = (),
    ) -> tuple[list[T], int]:
        """Every stream's events after ``after_sequence`` in ``form``, and the head sequence."""
        validate_version_bound(after_sequence, "after_sequence", 0)
        count = READ_ALL_DEFAULT if not limit else validate_version_bound(limit, "limit", 1)
        if count > READ_ALL_MAX:
            raise ValidationError(f"limit must be at most {READ_ALL_MAX}", field="limit")
        head = await self.store.head_sequence()
        events = await self.store.read_all(
            after_sequence, count, form=form, stream_prefixes=list(stream_prefixes), event_types=list(event_types)
        )
        self.metrics.reads.labels("all").inc()
        return events, head

    async def list_streams(self, prefix: str = "", after: str | None = None, limit: int | None = None) -> StreamList:
        """Streams by last activity, newest first; ``limit`` like a stream read's ``page_size``."""
        default = min(self.settings.default_page_size, self.settings.max_page_size)
        size = default if limit is None else validate_version_bound(limit, "limit", 1)
        if size > self.settings.max_page_size:
            raise ValidationError(f"limit must be at most {self.settings.max_page_size} (got {size})", field="limit")
        result = await self.store.list_streams(prefix=prefix, after=after or None, limit=size)
        self.metrics.reads.labels("streams").inc()
        return result

    def hub(self) -> SubscriptionHub:
        """The subscription reader both edges subscribe through; without one, both answer
        SYS_EVSTORE_UNAVAILABLE (the one error map: 503 on REST, UNAVAILABLE on gRPC)."""
        if self.subscriptions is None:
            raise UnavailableError("subscriptions are not enabled on this server")
        return self.subscriptions

    async def create_snapshot(self, stream_id: str, version: int, aggregate_type: str | None, state: Any) -> Snapshot:
        audit.note(snapshot_version=version)
        validate_version_bound(version, "snapshot_version", 1)
        snap = await self.snapshots.save(StreamId.parse(stream_id), version, state, aggregate_type or None)
        audit.note(snapshot_id=snap.id)
        self.metrics.snapshots_created.inc()
        return snap

    async def latest_snapshot(self, stream_id: str) -> Snapshot:
        sid = StreamId.parse(stream_id)
        snap = await self.snapshots.load_latest(sid)
        self.metrics.reads.labels("snapshot").inc()
        if snap is None:
            raise SnapshotNotFoundError(str(sid))
        return snap

    async def prune_snapshots(self, older_than: datetime) -> int:
        older_than = validate_timestamp(older_than, "older_than")
        audit.note(older_than=older_than)
        removed = await self.snapshots.prune(older_than)
        audit.note(removed_snapshots=removed)
        return removed

    async def delete_stream(self, stream_id: str) -> int:
        if tracing.ENABLED:
            tracing.stream(stream_id)
        removed = await self.store.delete_stream(StreamId.parse(stream_id))
        audit.note(deleted_events=removed)
        self.metrics.streams_deleted.inc()
        return removed


def audit_subject(principal: Principal | None) -> str | None:
    """The subject an append is recorded under, or None (auth off, anonymous)."""
    return principal.subject if principal is not None and not principal.anonymous else None


def audited_metadata(metadata: dict[str, Any], subject: str) -> dict[str, Any]:
    """Seed 001's audit rule: the actor defaults to the token's subject, which is always recorded."""
    if metadata.get("actor_id") is None:
        metadata["actor_id"] = subject
    metadata[AUTHENTICATED_SUBJECT_KEY] = subject
    return metadata


def _audited(event: EventEnvelope, subject: str) -> EventEnvelope:
    metadata = dict(event.metadata) if isinstance(event.metadata, dict) else event.metadata
    if not isinstance(metadata, dict):
        return event  # not an object: prepare_append rejects it with a clear message
    return replace(event, metadata=audited_metadata(metadata, subject))
