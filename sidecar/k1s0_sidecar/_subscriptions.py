"""Subscriptions: catch-up from a position, then live, with no gap and no duplicate at the switch.

One reader per process (``SubscriptionHub``) follows the schema's global order and fans out to
every live subscriber, so database load does not grow with the number of subscribers. It reads
only while someone is subscribed. It is woken at once by this sidecar's own commits (``wake``), and
finds other sidecars' commits by polling every ``poll_interval``: a commit costs the other sidecars
of the schema nothing, and a subscribed sidecar costs PostgreSQL one indexed query per interval,
however fast the fleet appends. (Appends used to NOTIFY; every commit then woke every sidecar,
which queried PostgreSQL, and notifying commits are serialised database-wide.) ``LISTEN`` remains
for stream deletions, which are rare.

A subscriber reads history from the database itself, then registers with the hub. Registration
returns the hub's head ``H``: the hub will queue every matching event with ``sequence > H``, and
the subscriber reads ``(its position, H]`` from the database once more before draining its queue.
Every read of the global order stops at the safe sequence (see ``k1s0_event_store.schema``), so
everything at or below ``H`` is final and readable; duplicates are dropped by position.

Memory is bounded: a subscriber's queue holds at most ``buffer`` events. One that falls that far
behind is dropped from the hub (the hub never waits for it) and goes back to reading from the
database where it left off; appends and other subscribers never slow down because of it.

Events travel as PostgreSQL rendered them (``EncodedEvent``: JSON text, RFC 3339 times), never
decoded. Each is wrapped once in a ``Delivery`` that every subscriber shares, so an edge renders an
event's wire form (protobuf message, ``wire.sse_frame``) once for all its subscribers
(``Delivery.render``).
Subscribers receive batches: whatever their queue holds, up to ``BATCH_LIMIT`` events, so an edge whose
protocol allows it (SSE) writes them with one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from k1s0_event_store import (
    MAX_EVENT_TYPE_LENGTH,
    EncodedEvent,
    PostgresEventStore,
    ReadForm,
    StreamId,
    StreamNotFoundError,
    UnavailableError,
    validate_filters,
    validate_version_bound,
)
from k1s0_event_store.schema import NOTIFY_APPENDED, NOTIFY_STREAM_DELETED

from ._group_commit import CHASE_STEP, CHASES

log = logging.getLogger("k1s0_sidecar.subscriptions")  # the name people filter on; the module is private

_PAGE = 500
#: At most this many queued events are handed to a subscriber at once.
BATCH_LIMIT = 256

T = TypeVar("T")


class Delivery:
    """One committed event as every subscriber receives it: rendered once per wire form."""

    __slots__ = ("_rendered", "event")

    def __init__(self, event: EncodedEvent) -> None:
        self.event = event
        self._rendered: dict[Callable[[EncodedEvent], Any], Any] | None = None

    @property
    def sequence(self) -> int:
        return self.event.sequence

    @property
    def version(self) -> int:
        return self.event.version

    def render(self, renderer: Callable[[EncodedEvent], T]) -> T:
        """``renderer(event)``, computed on the first call and shared by every later caller.

        ``renderer`` must be a module-level function (it is the cache key) whose result nobody
        mutates: every subscriber gets the same object."""
        rendered = self._rendered
        if rendered is None:
            rendered = self._rendered = {}
        elif renderer in rendered:
            result: T = rendered[renderer]
            return result
        result = rendered[renderer] = renderer(self.event)
        return result


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


LAGGED = _Signal("LAGGED")
DELETED = _Signal("DELETED")
CLOSED = _Signal("CLOSED")
Item = Delivery | _Signal
#: What a subscription yields: a non-empty batch of events in order, or ``None`` (keep-alive).
Batch = list[Delivery] | None


@dataclass(eq=False)
class Subscriber:
    matches: Callable[[EncodedEvent], bool]
    stream: str | None = None
    queue: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)


_by_sequence = operator.attrgetter("sequence")
_by_version = operator.attrgetter("version")


def _fresh(items: list[Item], after: int, key: Callable[[Delivery], int]) -> tuple[list[Delivery], int, _Signal | None]:
    """The events of a live batch past ``after`` (by ``key``: sequence or version; the hub may
    queue what the subscriber already read from the database), up to the first signal in it.
    Returns those events, the new position and that signal (``None`` if there is none)."""
    batch: list[Delivery] = []
    for item in items:
        if not isinstance(item, Delivery):
            return batch, after, item
        position = key(item)
        if position > after:
            after = position
            batch.append(item)
    return batch, after, None


class SubscriptionHub:
    """The shared reader and the subscription API used by gRPC and SSE."""

    stop_before_servers = True

    def __init__(
        self,
        store: PostgresEventStore,
        dsn: str,
        schema: str,
        *,
        buffer: int = 1000,
        poll_interval: float = 1.0,
        keepalive: float = 15.0,
        on_lag: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.dsn = dsn
        self.schema = schema
        self.buffer = buffer
        self.poll_interval = poll_interval
        self.keepalive = keepalive
        self.on_lag = on_lag
        self.on_change: Callable[[int], None] | None = None
        self.head = 0
        self._subscribers: set[Subscriber] = set()
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 0  # the highest sequence this sidecar committed that the reader has not read
        self._chases = 0
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection | None = None
        self._closed = False

    @property
    def live_subscribers(self) -> int:
        return len(self._subscribers)

    @property
    def max_queued(self) -> int:
        """Events queued for the subscriber furthest behind (it falls back to catch-up at ``buffer``)."""
        return max((sub.queue.qsize() for sub in self._subscribers), default=0)

    # -- the shared reader -----------------------------------------------------------------------

    async def start(self) -> None:
        self.head = await self.store.head_sequence()
        await self._listen()
        self._task = asyncio.create_task(self._run(), name="subscription-reader")

    async def _listen(self) -> None:
        try:
            conn = await asyncpg.connect(self.dsn)
            await conn.add_listener(NOTIFY_APPENDED, self._on_append)
            await conn.add_listener(NOTIFY_STREAM_DELETED, self._on_delete)
            conn.add_termination_listener(self._on_listener_lost)
            self._listener = conn
        except (OSError, asyncpg.PostgresError) as exc:
            self._listener = None
            log.warning("LISTEN unavailable, subscriptions fall back to polling: %s", exc)

    def _on_append(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        # Sent only by sidecars of releases before migration 4 (their schema still notified).
        if payload == self.schema:
            self._wake_up()

    def wake(self, sequence: int = 0) -> None:
        """This sidecar committed events up to ``sequence``: read them now, not at the next poll."""
        if self._subscribers:
            self._wanted = max(self._wanted, sequence)
            self._wake_up()

    def _chase(self) -> None:
        """Our own commit is not readable yet (an appender below it is still committing: commits
        run in parallel and reads stop at the safe sequence): look again in a few milliseconds
        rather than at the next poll, for a while."""
        if self._wanted <= self.head or not self._subscribers:
            self._wanted = self._chases = 0
            return
        self._chases += 1
        if self._chases > CHASES:
            self._wanted = self._chases = 0
            return
        asyncio.get_running_loop().call_later(CHASE_STEP * self._chases, self._wake_up)

    def _on_delete(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        schema, _, stream = payload.partition("/")
        if schema != self.schema:
            return
        self._wake_up()  # deliver what the stream had first, then the deletion
        asyncio.get_running_loop().call_soon(self._deliver_deletion, stream)

    def _deliver_deletion(self, stream: str) -> None:
        for sub in list(self._subscribers):
            if sub.stream == stream:
                self._subscribers.discard(sub)
                sub.queue.put_nowait(DELETED)

    def _on_listener_lost(self, conn: Any) -> None:
        self._listener = None
        self._wake_up()

    def _wake_up(self) -> None:
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        """Until a notification (or ``poll_interval``, the fallback) wakes the reader.

        The notification callback resolves the reader's own future, so the reader runs in the next
        turn of the loop (``wait_for`` on an ``Event`` took a task and two more turns)."""
        if not self._woken:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(self.poll_interval, self._wake_up)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        self._woken = False

    async def _run(self) -> None:
        while not self._closed:
            await self._wait()
            try:
                if self._listener is None:
                    await self._listen()
                if not self._subscribers:
                    continue  # nobody live: no query at all (registration reads the head itself)
                while True:
                    events = await self.store.read_all(self.head, 1000, form=ReadForm.ENCODED)
                    for event in events:
                        self._dispatch(event)
                    if len(events) < 1000:
                        break
                if self._wanted:
                    self._chase()
            except (UnavailableError, OSError, asyncpg.PostgresError) as exc:
                log.warning("subscription reader: %s", exc)

    def _dispatch(self, event: EncodedEvent) -> None:
        self.head = event.sequence or self.head
        delivery: Delivery | None = None
        for sub in list(self._subscribers):
            if not sub.matches(event):
                continue
            if sub.queue.qsize() >= self.buffer:
                # Too far behind: stop queueing for it; it re-reads from the database.
                self._subscribers.discard(sub)
                sub.queue.put_nowait(LAGGED)
                if self.on_lag:
                    self.on_lag()
                continue
            if delivery is None:
                delivery = Delivery(event)
            sub.queue.put_nowait(delivery)

    async def _register(self, sub: Subscriber) -> int:
        """Add ``sub``; return the head ``H`` above which the hub queues every event for it.

        A hub with nobody live does not follow the head, so the first subscriber reads it. No
        await separates the last check from the add: a subscriber that registered meanwhile keeps
        the head the reader maintains for it, and an older head is never a problem (only more to
        read), while a newer one is exact: everything at or below it has committed."""
        if self._closed:
            raise UnavailableError("the event store is shutting down")
        if not self._subscribers:
            head = await self.store.head_sequence()
            if not self._subscribers:
                self.head = max(self.head, head)
        self._subscribers.add(sub)
        return self.head

    def _unregister(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    async def stop(self) -> None:
        self._closed = True
        for sub in list(self._subscribers):
            sub.queue.put_nowait(CLOSED)
        self._subscribers.clear()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()

    # -- the subscription API ----------------------------------------------------------------------

    async def _live(self, sub: Subscriber, heartbeat: bool) -> AsyncIterator[list[Item] | None]:
        """What the hub queued for ``sub``: everything queued so far (up to ``BATCH_LIMIT``) at once."""
        queue = sub.queue
        while True:
            if queue.empty():
                try:
                    first = await asyncio.wait_for(queue.get(), self.keepalive if heartbeat else None)
                except TimeoutError:
                    yield None
                    continue
            else:
                first = queue.get_nowait()
            items = [first]
            while len(items) < BATCH_LIMIT and not queue.empty():
                items.append(queue.get_nowait())
            yield items

    def all(
        self,
        after_sequence: int = 0,
        stream_prefixes: Sequence[str] = (),
        event_types: Sequence[str] = (),
        from_end: bool = False,
        *,
        heartbeat: bool = False,
    ) -> AsyncGenerator[Batch, None]:
        """Every matching event after ``after_sequence`` (or from now), in sequence order, forever.

        Yields non-empty batches of events. Arguments are validated here, before anything is
        streamed. With ``heartbeat`` the iterator yields ``None`` after ``keepalive`` seconds of
        silence (SSE keep-alive comments).
        """
        validate_version_bound(after_sequence, "after_sequence")
        prefixes = validate_filters(stream_prefixes, "stream_prefixes")
        types = validate_filters(event_types, "event_types", MAX_EVENT_TYPE_LENGTH)
        return self._all(after_sequence, prefixes, types, from_end, heartbeat)

    async def _all(
        self, after_sequence: int, prefixes: list[str], types: list[str], from_end: bool, heartbeat: bool
    ) -> AsyncGenerator[Batch, None]:
        prefix_tuple = tuple(prefixes)
        type_set = frozenset(types)

        def matches(e: EncodedEvent) -> bool:
            return (not prefix_tuple or e.stream_id.startswith(prefix_tuple)) and (
                not type_set or e.event_type in type_set
            )

        position = await self.store.head_sequence() if from_end else after_sequence
        while True:
            while True:  # catch-up from the database
                page = await self.store.read_all(
                    position, _PAGE, form=ReadForm.ENCODED, stream_prefixes=prefixes, event_types=types
                )
                if page:
                    position = page[-1].sequence
                    yield [Delivery(e) for e in page]
                if len(page) < _PAGE:
                    break
            sub = Subscriber(matches)
            head = await self._register(sub)
            try:
                while position < head:  # what committed before registration: from the database
                    page = await self.store.read_all(
                        position, _PAGE, form=ReadForm.ENCODED, stream_prefixes=prefixes, event_types=types,
                        until_sequence=head,
                    )
                    if page:
                        position = page[-1].sequence
                        yield [Delivery(e) for e in page]
                    if len(page) < _PAGE:
                        position = max(position, head)
                async for items in self._live(sub, heartbeat):  # live from the hub
                    if items is None:
                        yield None
                        continue
                    batch, position, end = _fresh(items, position, _by_sequence)
                    if batch:
                        yield batch
                    if end is LAGGED:
                        break
                    if end is CLOSED:
                        raise UnavailableError("the event store is shutting down; resume from the last position")
            finally:
                self._unregister(sub)

    def stream(
        self, stream_id: str, after_version: int = 0, from_end: bool = False, *, heartbeat: bool = False
    ) -> AsyncGenerator[Batch, None]:
        """One stream's events after ``after_version`` (or from now), in version order, forever.

        Yields non-empty batches of events. A stream that does not exist yet is waited for.
        Deleting the stream ends the subscription with ``StreamNotFoundError``.
        """
        sid = StreamId.parse(stream_id)
        validate_version_bound(after_version, "after_version")
        return self._stream(sid, after_version, from_end, heartbeat)

    async def _page(self, sid: StreamId, after_version: int) -> list[EncodedEvent]:
        """Up to ``_PAGE`` events of the stream after ``after_version``; none if it does not exist."""
        try:
            page = await self.store.read_stream(
                sid, form=ReadForm.ENCODED, from_version=after_version + 1, to_version=after_version + _PAGE
            )
        except StreamNotFoundError:
            return []
        return page.events

    async def _stream(
        self, sid: StreamId, after_version: int, from_end: bool, heartbeat: bool
    ) -> AsyncGenerator[Batch, None]:
        name = str(sid)
        version = await self.store.current_version(sid) if from_end else after_version
        while True:
            while True:
                page = await self._page(sid, version)
                if page:
                    version = page[-1].version
                    yield [Delivery(e) for e in page]
                if len(page) < _PAGE:
                    break
            sub = Subscriber(lambda e: e.stream_id == name, stream=name)
            head = await self._register(sub)
            try:
                while True:
                    full = await self._page(sid, version)
                    page = [e for e in full if e.sequence <= head]
                    if page:
                        version = page[-1].version
                        yield [Delivery(e) for e in page]
                    if len(page) < _PAGE:
                        break
                async for items in self._live(sub, heartbeat):
                    if items is None:
                        yield None
                        continue
                    batch, version, end = _fresh(items, version, _by_version)
                    if batch:
                        yield batch
                    if end is LAGGED:
                        break
                    if end is DELETED:
                        raise StreamNotFoundError(name)
                    if end is CLOSED:
                        raise UnavailableError("the event store is shutting down; resume from the last version")
            finally:
                self._unregister(sub)
