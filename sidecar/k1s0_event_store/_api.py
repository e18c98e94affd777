"""The store API (seed 002): what every event store and snapshot store offers.

``InMemoryEventStore``, ``PostgresEventStore`` and the gRPC client store implement this same API
and pass the same contract test suite, so application code can switch between them unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar, overload

from ._appending import prepare_append
from ._errors import EventStoreError
from ._forms import ReadForm
from ._listing import StreamList
from ._model import AppendRequest, AppendResult, EventEnvelope, Snapshot, StreamId, StreamPage

T = TypeVar("T")


class EventStore(ABC):
    """Append-only event streams with optimistic concurrency and a global order.

    ``expected_version``: ``None`` appends at any version; ``-1`` requires that the stream does not
    exist; ``N >= 0`` requires that the stream is at version ``N`` (0: new or empty).
    """

    #: Largest number of events one append may carry; ``None``: no limit.
    max_events_per_append: int | None = None

    async def append(
        self, stream_id: StreamId | str, events: Sequence[EventEnvelope], expected_version: int | None = None
    ) -> int:
        """Append atomically and return the stream's new version (seed 002's signature)."""
        return (await self.append_events(stream_id, events, expected_version)).current_version

    async def append_events(
        self, stream_id: StreamId | str, events: Sequence[EventEnvelope], expected_version: int | None = None
    ) -> AppendResult:
        """Append atomically and return the stored events (with versions, sequences, times)."""
        request = prepare_append(stream_id, events, expected_version, max_events=self.max_events_per_append)
        (outcome,) = await self.append_batch([request])
        if isinstance(outcome, EventStoreError):
            raise outcome
        return outcome

    @abstractmethod
    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[AppendResult | EventStoreError]:
        """Apply several validated appends in one commit, in order.

        Each request succeeds or fails on its own (a version conflict fails that request only); the
        successful ones become visible together. This is the sidecar's group-commit path.
        """

    @abstractmethod
    async def load(
        self, stream_id: StreamId | str, from_version: int = 0, to_version: int | None = None
    ) -> list[EventEnvelope]:
        """The stream's events with ``from_version <= version <= to_version``; ``[]`` if none."""

    @overload
    async def read_stream(
        self,
        stream_id: StreamId | str,
        *,
        from_version: int = 1,
        to_version: int | None = None,
        event_type: str | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> StreamPage[EventEnvelope]: ...

    @overload
    async def read_stream(
        self,
        stream_id: StreamId | str,
        *,
        form: ReadForm[T],
        from_version: int = 1,
        to_version: int | None = None,
        event_type: str | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> StreamPage[T]: ...

    async def read_stream(
        self,
        stream_id: StreamId | str,
        *,
        form: ReadForm[Any] = ReadForm.ENVELOPES,
        from_version: int = 1,
        to_version: int | None = None,
        event_type: str | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> StreamPage[Any]:
        """A page of one stream, its events in ``form``; raises ``StreamNotFoundError`` for a stream
        with no events."""
        return await self._read_stream(form, stream_id, from_version, to_version, event_type, offset, limit)

    @abstractmethod
    async def _read_stream(
        self, form: ReadForm[T], stream_id: StreamId | str, from_version: int, to_version: int | None,
        event_type: str | None, offset: int, limit: int | None,
    ) -> StreamPage[T]:
        """``read_stream`` as each store implements it, for every form."""

    @abstractmethod
    async def get_event(self, stream_id: StreamId | str, sequence: int) -> EventEnvelope:
        """The event with this global sequence, if it belongs to this stream (else not found)."""

    @overload
    async def read_all(
        self,
        after_sequence: int = 0,
        limit: int = 1000,
        *,
        stream_prefixes: Sequence[str] = (),
        event_types: Sequence[str] = (),
        until_sequence: int | None = None,
    ) -> list[EventEnvelope]: ...

    @overload
    async def read_all(
        self,
        after_sequence: int = 0,
        limit: int = 1000,
        *,
        form: ReadForm[T],
        stream_prefixes: Sequence[str] = (),
        event_types: Sequence[str] = (),
        until_sequence: int | None = None,
    ) -> list[T]: ...

    async def read_all(
        self,
        after_sequence: int = 0,
        limit: int = 1000,
        *,
        form: ReadForm[Any] = ReadForm.ENVELOPES,
        stream_prefixes: Sequence[str] = (),
        event_types: Sequence[str] = (),
        until_sequence: int | None = None,
    ) -> list[Any]:
        """Events of every stream with ``after_sequence < sequence <= until_sequence``, in sequence
        order and in ``form``.

        Sequence order equals commit order: a reader that repeatedly asks for ``sequence > last``
        never misses an event that commits later with a lower sequence.
        """
        return await self._read_all(form, after_sequence, limit, stream_prefixes, event_types, until_sequence)

    @abstractmethod
    async def _read_all(
        self, form: ReadForm[T], after_sequence: int, limit: int, stream_prefixes: Sequence[str],
        event_types: Sequence[str], until_sequence: int | None,
    ) -> list[T]:
        """``read_all`` as each store implements it, for every form."""

    @abstractmethod
    async def head_sequence(self) -> int:
        """The highest committed sequence (0 when empty)."""

    @abstractmethod
    async def exists(self, stream_id: StreamId | str) -> bool: ...

    @abstractmethod
    async def current_version(self, stream_id: StreamId | str) -> int:
        """The stream's version; 0 for a stream that does not exist."""

    @abstractmethod
    async def list_streams(self, *, prefix: str = "", after: str | None = None, limit: int = 50) -> StreamList:
        """Streams whose id starts with ``prefix``, most recently appended to first.

        ``after`` is the ``next_after`` of the previous page; ``limit`` (>= 1) caps the page. The
        order follows appends, so a stream appended to while paging may move between pages.
        """

    @abstractmethod
    async def delete_stream(self, stream_id: StreamId | str) -> int:
        """Delete a stream with its events and snapshots; return how many events went."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the in-memory store has none."""


class SnapshotStore(ABC):
    """Snapshots of aggregate state, so a replay can start from the newest one."""

    @abstractmethod
    async def save(
        self, stream_id: StreamId | str, version: int, state: Any, aggregate_type: str | None = None
    ) -> Snapshot:
        """Store ``state`` as of ``version`` (1 <= version <= the stream's current version)."""

    @abstractmethod
    async def load_latest(self, stream_id: StreamId | str) -> Snapshot | None:
        """The snapshot with the highest version, or ``None``."""

    @abstractmethod
    async def prune(self, older_than: datetime) -> int:
        """Delete snapshots taken before ``older_than``, always keeping each stream's newest one."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
