"""A small aggregate repository: load = latest snapshot + the events after it; save = append with
the loaded version as ``expected_version``, and a snapshot every ``snapshot_interval`` events."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ._api import EventStore, SnapshotStore
from ._model import EventEnvelope, StreamId

S = TypeVar("S")


@dataclass
class Aggregate(Generic[S]):
    """One aggregate's state at ``version``, plus the events recorded since it was loaded."""

    stream_id: StreamId
    state: S
    version: int
    #: How many events ``load`` folded after the snapshot (the replay cost).
    replayed: int = 0
    pending: list[EventEnvelope] = field(default_factory=list)
    _apply: Callable[[S, EventEnvelope], S] | None = field(default=None, repr=False)

    def record(self, event_type: str, payload: Any, metadata: Mapping[str, Any] | None = None) -> None:
        """Record a new event: applied to the state now, appended by ``AggregateRepository.save``."""
        event = EventEnvelope(event_type, payload, dict(metadata or {}), stream_id=self.stream_id)
        if self._apply is not None:
            self.state = self._apply(self.state, event)
        self.pending.append(event)


class AggregateRepository(Generic[S]):
    """Event-sourced aggregates over any ``EventStore`` and ``SnapshotStore``.

    ``apply(state, event) -> state`` folds one event; ``initial()`` is the state before the first
    event. Snapshots hold ``to_snapshot(state)`` (JSON) and are read back with ``from_snapshot``.
    """

    def __init__(
        self,
        events: EventStore,
        snapshots: SnapshotStore | None,
        *,
        initial: Callable[[], S],
        apply: Callable[[S, EventEnvelope], S],
        snapshot_interval: int = 100,
        aggregate_type: str | None = None,
        to_snapshot: Callable[[S], Any] = lambda s: s,
        from_snapshot: Callable[[Any], S] = lambda s: s,
    ) -> None:
        self.events = events
        self.snapshots = snapshots
        self.initial = initial
        self.apply = apply
        self.snapshot_interval = snapshot_interval
        self.aggregate_type = aggregate_type
        self.to_snapshot = to_snapshot
        self.from_snapshot = from_snapshot

    async def load(self, stream_id: StreamId | str) -> Aggregate[S]:
        sid = StreamId.of(stream_id)
        state, version = self.initial(), 0
        if self.snapshots is not None:
            snap = await self.snapshots.load_latest(sid)
            if snap is not None:
                state, version = self.from_snapshot(snap.state), snap.version
        tail = await self.events.load(sid, from_version=version + 1)
        for event in tail:
            state = self.apply(state, event)
            version = event.version or version
        return Aggregate(sid, state, version, replayed=len(tail), _apply=self.apply)

    async def save(self, aggregate: Aggregate[S]) -> int:
        """Append the pending events (ConcurrencyError if someone else appended meanwhile)."""
        if not aggregate.pending:
            return aggregate.version
        before = aggregate.version
        result = await self.events.append_events(aggregate.stream_id, aggregate.pending, expected_version=before)
        aggregate.version = result.current_version
        aggregate.pending = []
        interval = self.snapshot_interval
        if self.snapshots is not None and interval and aggregate.version // interval > before // interval:
            await self.snapshots.save(
                aggregate.stream_id, aggregate.version, self.to_snapshot(aggregate.state), self.aggregate_type
            )
        return aggregate.version
