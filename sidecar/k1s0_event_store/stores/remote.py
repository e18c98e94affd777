"""Stores that talk to a sidecar over gRPC: the same API as the PostgreSQL and in-memory stores.

App code switches between ``InMemoryEventStore`` in its unit tests and ``GrpcEventStore`` in its
pod without change. Errors arrive as the library's own exceptions, decoded from the sidecar's rich
gRPC status (``google.rpc.ErrorInfo.reason`` is the ``SYS_EVSTORE_*`` code).

Retries are only made where they are safe: reads, and appends — every event sent carries an
``event_id`` (the client assigns one when the caller did not), so a retried append is answered
with the original result by the store's idempotency rule instead of being written twice.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Literal, TypeVar

import grpc

from .._api import EventStore, SnapshotStore
from .._encoding import EncodedEvent, event_document
from .._errors import (
    EventNotFoundError,
    EventStoreError,
    PermissionDeniedError,
    SnapshotNotFoundError,
    StreamNotFoundError,
    UnauthenticatedError,
    UnavailableError,
)
from .._forms import ReadForm
from .._json import MAX_JSON_DEPTH_LIMIT, encode_json
from .._listing import StreamList, StreamSummary, validate_list_streams
from .._model import AppendRequest, AppendResult, EventEnvelope, Snapshot, StreamId, StreamPage
from .._tracing import context_metadata
from .._validation import validate_read_all, validate_version_bound
from ..error_map import error_info, from_wire
from ..protocol import event_store_pb2 as pb
from ..protocol import event_store_pb2_grpc as pb_grpc
from ..protocol import metadata_from_pb, metadata_to_pb
from ._shared import validate_load

T = TypeVar("T")
TokenSource = str | Callable[[], str] | None
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
#: Events per subscription message we ask the sidecar for (its own limit is 256): a subscriber that
#: takes one message per event falls behind under load (see the proto's ``max_batch``).
_SUBSCRIBE_BATCH = 256
_PAGE = 200


def _time(value: str) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _envelope(e: pb.StoredEvent, cache: dict[str, StreamId]) -> EventEnvelope:
    sid = cache.get(e.stream_id)
    if sid is None:
        sid = cache[e.stream_id] = StreamId.parse(e.stream_id)
    return EventEnvelope(
        event_type=e.event_type,
        payload=json.loads(e.payload_json),
        # what a sidecar stored is read whatever depth it was configured to accept
        metadata=metadata_from_pb(e.metadata, max_depth=MAX_JSON_DEPTH_LIMIT),
        stream_id=sid,
        event_id=uuid.UUID(e.event_id) if e.event_id else None,
        occurred_at=_time(e.occurred_at),
        version=e.version,
        sequence=e.sequence,
        stored_at=_time(e.stored_at),
    )


def _encoded(e: pb.StoredEvent) -> EncodedEvent:
    """An event as the sidecar sent it, its payload text kept (never decoded)."""
    metadata = metadata_from_pb(e.metadata, max_depth=MAX_JSON_DEPTH_LIMIT)
    return EncodedEvent(
        e.stream_id, e.sequence, e.event_type, e.version, e.payload_json.decode(),
        json.dumps(metadata, ensure_ascii=False, separators=(",", ":")), e.occurred_at, e.stored_at, e.event_id,
    )


def _all_encoded(events: Sequence[pb.StoredEvent]) -> list[EncodedEvent]:
    return [_encoded(e) for e in events]


def _documents(events: Sequence[pb.StoredEvent]) -> list[str]:
    return [event_document(_encoded(e)) for e in events]


def _in_form(form: ReadForm[T], events: Sequence[pb.StoredEvent], cache: dict[str, StreamId]) -> list[T]:
    """The sidecar's events in ``form``, each converted from the message itself."""

    def envelopes(events: Sequence[pb.StoredEvent]) -> list[EventEnvelope]:
        return [_envelope(e, cache) for e in events]

    return form.choose(envelopes, _all_encoded, _documents)(events)


def decode_error(error: grpc.aio.AioRpcError, stream_id: str = "") -> EventStoreError:
    """The library exception a failed call stands for (``error_map`` decides it from the code)."""
    info = error_info(error)
    message = error.details() or error.code().name
    if info is None:  # not answered by a sidecar: the transport, a proxy or the deadline
        if error.code() in _RETRYABLE:
            return UnavailableError(f"sidecar unavailable: {message}")
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return UnauthenticatedError(message)
        if error.code() == grpc.StatusCode.PERMISSION_DENIED:
            return PermissionDeniedError(message)
        return EventStoreError(f"{error.code().name}: {message}")
    fields = dict(info.metadata)
    fields.pop("request_id", None)
    return from_wire(info.reason, message, fields, stream_id)


class _Client:
    def __init__(
        self,
        target: str = "localhost:9090",
        *,
        token: TokenSource = None,
        timeout: float = 10.0,
        retries: int = 3,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._owns_channel = channel is None
        self._channel = channel or grpc.aio.insecure_channel(target)
        self._stub = pb_grpc.EventStoreServiceStub(self._channel)
        self._token = token
        self.timeout = timeout
        self.retries = retries

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        token = self._token() if callable(self._token) else self._token
        # The caller's trace context (if it uses OpenTelemetry), so the sidecar's spans join its trace.
        trace_context = context_metadata()
        return ((("authorization", f"Bearer {token}"),) if token else ()) + trace_context

    async def _call(self, method: Callable[..., Awaitable[T]], request: Any, *, stream_id: str = "",
                    retry: bool = True) -> T:
        attempt = 0
        while True:
            try:
                return await method(request, timeout=self.timeout, metadata=self._metadata())
            except grpc.aio.AioRpcError as exc:
                if retry and exc.code() in _RETRYABLE and attempt < self.retries:
                    attempt += 1
                    await asyncio.sleep(min(0.1 * 2**attempt, 2.0))  # back off before a safe retry
                    continue
                raise decode_error(exc, stream_id) from None

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()


class GrpcEventStore(_Client, EventStore):
    """``EventStore`` over the sidecar's gRPC API (``localhost:9090`` in an injected pod)."""

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[AppendResult | EventStoreError]:
        async def one(req: AppendRequest) -> AppendResult | EventStoreError:
            try:
                return await self._append(req)
            except EventStoreError as exc:
                return exc

        return list(await asyncio.gather(*(one(r) for r in requests)))

    async def _append(self, req: AppendRequest) -> AppendResult:
        message = pb.AppendEventsRequest(
            stream_id=str(req.stream_id),
            events=[
                pb.EventData(
                    event_type=p.event_type,
                    payload_json=p.payload_json.encode(),
                    metadata=metadata_to_pb(p.metadata),
                    event_id=str(p.event_id),  # always sent: makes the retry below idempotent
                    occurred_at=p.occurred_at.isoformat(),
                )
                for p in req.events
            ],
            # None (any version) must be said explicitly: an unset field means version 0 on the wire
            expected_version=pb.EXPECTED_VERSION_ANY if req.expected_version is None else req.expected_version,
        )
        resp = await self._call(self._stub.AppendEvents, message, stream_id=str(req.stream_id))
        cache = {str(req.stream_id): req.stream_id}
        return AppendResult(req.stream_id, [_envelope(e, cache) for e in resp.events], resp.current_version)

    async def _pages(self, sid: StreamId, **kw: Any) -> AsyncIterator[pb.ReadEventsResponse]:
        page = kw.pop("page", 1)
        while True:
            resp = await self._call(
                self._stub.ReadEvents, pb.ReadEventsRequest(stream_id=str(sid), page=page, page_size=_PAGE, **kw),
                stream_id=str(sid),
            )
            yield resp
            if not resp.has_next:
                return
            page += 1

    async def load(
        self, stream_id: StreamId | str, from_version: int = 0, to_version: int | None = None
    ) -> list[EventEnvelope]:
        sid = validate_load(stream_id, from_version, to_version)
        if to_version is not None and to_version < max(from_version, 1):
            return []
        kw: dict[str, Any] = {"from_version": max(from_version, 1)}
        if to_version is not None:
            kw["to_version"] = to_version
        cache = {str(sid): sid}
        out: list[EventEnvelope] = []
        try:
            async for resp in self._pages(sid, **kw):
                out.extend(_envelope(e, cache) for e in resp.events)
        except StreamNotFoundError:
            return []
        return out

    async def _read_stream(
        self, form: ReadForm[T], stream_id: StreamId | str, from_version: int, to_version: int | None,
        event_type: str | None, offset: int, limit: int | None,
    ) -> StreamPage[T]:
        sid = StreamId.of(stream_id)
        validate_version_bound(offset, "offset")
        kw: dict[str, Any] = {"from_version": max(from_version, 1), "page": offset // _PAGE + 1}
        if to_version is not None:
            if to_version < max(from_version, 1):  # the server refuses an empty range; the API returns one
                probe = await self.read_stream(sid, from_version=1, to_version=1)
                return StreamPage(sid, [], probe.current_version, 0)
            kw["to_version"] = to_version
        if event_type is not None:
            kw["event_type"] = event_type
        cache = {str(sid): sid}
        events: list[T] = []
        skip = offset % _PAGE
        current = total = 0
        async for resp in self._pages(sid, **kw):
            current, total = resp.current_version, resp.total_count
            chunk = _in_form(form, resp.events[skip:], cache)
            skip = 0
            events.extend(chunk)
            if limit is not None and len(events) >= limit:
                events = events[:limit]
                break
        return StreamPage(sid, events, current, total)

    async def get_event(self, stream_id: StreamId | str, sequence: int) -> EventEnvelope:
        sid = StreamId.of(stream_id)
        validate_version_bound(sequence, "sequence", 1)
        try:
            resp = await self._call(
                self._stub.ReadEventBySequence, pb.ReadEventBySequenceRequest(stream_id=str(sid), sequence=sequence),
                stream_id=str(sid),
            )
        except EventNotFoundError:
            raise EventNotFoundError(str(sid), sequence) from None
        return _envelope(resp.event, {str(sid): sid})

    async def _read_all(
        self, form: ReadForm[T], after_sequence: int, limit: int, stream_prefixes: Sequence[str],
        event_types: Sequence[str], until_sequence: int | None,
    ) -> list[T]:
        stream_prefixes, event_types = validate_read_all(
            after_sequence, limit, stream_prefixes, event_types, until_sequence
        )
        out: list[pb.StoredEvent] = []
        position = after_sequence
        while len(out) < limit:
            resp = await self._call(
                self._stub.ReadAll,
                pb.ReadAllRequest(after_sequence=position, limit=min(1000, limit - len(out)),
                                  stream_prefixes=list(stream_prefixes), event_types=list(event_types)),
            )
            for e in resp.events:
                if until_sequence is not None and e.sequence > until_sequence:
                    return _in_form(form, out, {})
                out.append(e)
            if not resp.events or len(resp.events) < min(1000, limit - len(out) + len(resp.events)):
                break
            position = resp.events[-1].sequence
        return _in_form(form, out, {})

    async def head_sequence(self) -> int:
        resp = await self._call(self._stub.ReadAll, pb.ReadAllRequest(limit=1))
        return int(resp.head_sequence)

    async def exists(self, stream_id: StreamId | str) -> bool:
        return await self.current_version(stream_id) > 0

    async def current_version(self, stream_id: StreamId | str) -> int:
        sid = StreamId.of(stream_id)
        try:
            resp = await self._call(
                self._stub.ReadEvents, pb.ReadEventsRequest(stream_id=str(sid), page_size=1), stream_id=str(sid)
            )
        except StreamNotFoundError:
            return 0
        return int(resp.current_version)

    async def list_streams(self, *, prefix: str = "", after: str | None = None, limit: int = 50) -> StreamList:
        validate_list_streams(prefix, after, limit)
        # The sidecar caps a page (max_page_size); a larger limit is read in several pages.
        streams: list[StreamSummary] = []
        cursor = after or ""
        while True:
            resp = await self._call(
                self._stub.ListStreams,
                pb.ListStreamsRequest(prefix=prefix, after=cursor, limit=min(_PAGE, limit - len(streams))),
            )
            streams.extend(
                StreamSummary(StreamId.parse(s.stream_id), s.aggregate_type, s.current_version,
                              datetime.fromisoformat(s.updated_at))
                for s in resp.streams
            )
            cursor = resp.next_after
            if not cursor or len(streams) >= limit:
                return StreamList(streams, cursor or None)

    async def delete_stream(self, stream_id: StreamId | str) -> int:
        sid = StreamId.of(stream_id)
        # Not retried: a retry after a lost answer would report a not-found for a deletion that happened.
        resp = await self._call(
            self._stub.DeleteStream, pb.DeleteStreamRequest(stream_id=str(sid)), stream_id=str(sid), retry=False
        )
        return int(resp.deleted_events)

    # -- subscriptions: async iterators that resume after a dropped connection --------------------

    async def subscribe_to_all(
        self,
        after_sequence: int = 0,
        *,
        stream_prefixes: Sequence[str] = (),
        event_types: Sequence[str] = (),
        from_end: bool = False,
        reconnect_delay: float = 0.5,
    ) -> AsyncIterator[EventEnvelope]:
        """Events in global order, catch-up then live. A dropped connection is re-established and the
        subscription resumes right after the last event delivered, so none is missed or repeated."""

        def request(position: int, fresh: bool) -> Any:
            return self._stub.SubscribeToAll(
                pb.SubscribeToAllRequest(after_sequence=position, stream_prefixes=list(stream_prefixes),
                                         event_types=list(event_types), from_end=fresh,
                                         max_batch=_SUBSCRIBE_BATCH),
                metadata=self._metadata(),
            )

        async for event in self._resuming(request, after_sequence, from_end, "sequence", "", reconnect_delay):
            yield event

    async def subscribe_to_stream(
        self, stream_id: StreamId | str, after_version: int = 0, *, from_end: bool = False,
        reconnect_delay: float = 0.5,
    ) -> AsyncIterator[EventEnvelope]:
        """One stream in version order, catch-up then live, resuming after a dropped connection."""
        sid = StreamId.of(stream_id)

        def request(position: int, fresh: bool) -> Any:
            return self._stub.SubscribeToStream(
                pb.SubscribeToStreamRequest(stream_id=str(sid), after_version=position, from_end=fresh,
                                            max_batch=_SUBSCRIBE_BATCH),
                metadata=self._metadata(),
            )

        async for event in self._resuming(request, after_version, from_end, "version", str(sid), reconnect_delay):
            yield event

    async def _resuming(
        self, request: Callable[[int, bool], Any], position: int, from_end: bool,
        key: Literal["sequence", "version"], stream_id: str, reconnect_delay: float,
    ) -> AsyncIterator[EventEnvelope]:
        fresh = from_end
        cache: dict[str, StreamId] = {}
        while True:
            call = request(position, fresh)
            try:
                async for note in call:
                    fresh = False
                    # batched (we ask for it), or one `event` from a sidecar that predates batching
                    for event in note.events if note.events else (note.event,):
                        position = getattr(event, key)
                        yield _envelope(event, cache)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRYABLE:
                    raise decode_error(exc, stream_id) from None
                await asyncio.sleep(reconnect_delay)  # back off, then resume from `position`
            finally:
                call.cancel()


class GrpcSnapshotStore(_Client, SnapshotStore):
    """``SnapshotStore`` over the sidecar's gRPC API."""

    async def save(
        self, stream_id: StreamId | str, version: int, state: Any, aggregate_type: str | None = None
    ) -> Snapshot:
        sid = StreamId.of(stream_id)
        validate_version_bound(version, "snapshot_version", 1)
        text = encode_json(state, "state")
        resp = await self._call(
            self._stub.CreateSnapshot,
            pb.CreateSnapshotRequest(stream_id=str(sid), snapshot_version=version,
                                     aggregate_type=aggregate_type or "", state_json=text.encode()),
            stream_id=str(sid),
        )
        taken = _time(resp.created_at)
        assert taken is not None
        return Snapshot(sid, resp.snapshot_version, json.loads(text), aggregate_type or sid.aggregate_type, resp.id,
                        taken)

    async def load_latest(self, stream_id: StreamId | str) -> Snapshot | None:
        sid = StreamId.of(stream_id)
        try:
            resp = await self._call(
                self._stub.GetLatestSnapshot, pb.GetLatestSnapshotRequest(stream_id=str(sid)), stream_id=str(sid)
            )
        except SnapshotNotFoundError:
            return None
        s = resp.snapshot
        taken = _time(s.created_at)
        assert taken is not None
        return Snapshot(sid, s.snapshot_version, json.loads(s.state_json), s.aggregate_type, s.id, taken)

    async def prune(self, older_than: datetime) -> int:
        resp = await self._call(
            self._stub.PruneSnapshots, pb.PruneSnapshotsRequest(older_than=older_than.isoformat())
        )
        return int(resp.removed)
