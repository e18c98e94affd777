"""The append decision, shared by every store so that they cannot disagree.

Given the streams' current versions and the already-stored events whose ids a batch mentions, decide
for each request in order: write it (at which version), answer it with the events a previous
identical append stored (idempotent retry), or fail it (``plan``); then turn the decisions into each
request's outcome (``results``). The stores only do the I/O around this.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ._appending import same_content
from ._errors import ConcurrencyError, EventIdConflictError, EventStoreError, StreamAlreadyExistsError
from ._model import AppendRequest, AppendResult, EventEnvelope
from ._validation import NO_STREAM


@dataclass(frozen=True, slots=True)
class Write:
    """Write the request's events at versions ``first_version ..``."""

    request: AppendRequest
    first_version: int


@dataclass(frozen=True, slots=True)
class Replay:
    """The request was already stored: answer with these events."""

    request: AppendRequest
    stored: list[EventEnvelope]


@dataclass(frozen=True, slots=True)
class ReplayOf:
    """The request repeats an earlier request of this same batch (a retry that raced its original)."""

    request: AppendRequest
    index: int


Decision = Write | Replay | ReplayOf | EventStoreError


def plan(
    requests: Sequence[AppendRequest],
    versions: Mapping[str, int],
    stored_by_id: Mapping[uuid.UUID, EventEnvelope],
) -> list[Decision]:
    current = dict(versions)
    # Ids written earlier in this batch: id -> (request index, stream, version).
    pending: dict[uuid.UUID, tuple[int, str, int]] = {}
    decisions: list[Decision] = []
    for index, req in enumerate(requests):
        stream = str(req.stream_id)
        decision = _idempotent(req, stored_by_id, pending, requests)
        if decision is None:
            decision = _check_version(req, stream, current.get(stream, 0))
        if isinstance(decision, Write):
            for offset, p in enumerate(req.events):
                pending[p.event_id] = (index, stream, decision.first_version + offset)
            current[stream] = decision.first_version + len(req.events) - 1
        decisions.append(decision)
    return decisions


def results(
    decisions: Sequence[Decision], write: Callable[[Write], list[EventEnvelope]]
) -> list[AppendResult | EventStoreError]:
    """Each request's outcome, in order. ``write`` gives a ``Write``'s stored events (the store
    writes them now, or built them from what one statement wrote for the whole batch)."""
    out: list[AppendResult | EventStoreError] = []
    for d in decisions:
        if isinstance(d, Write):
            stored = write(d)
            out.append(AppendResult(d.request.stream_id, stored, d.first_version + len(stored) - 1))
        elif isinstance(d, Replay):
            out.append(AppendResult(d.request.stream_id, d.stored, d.stored[-1].version or 0))
        elif isinstance(d, ReplayOf):
            out.append(out[d.index])  # the very same result object as its original
        else:
            out.append(d)
    return out


def _check_version(req: AppendRequest, stream: str, actual: int) -> Decision:
    expected = req.expected_version
    if expected == NO_STREAM and actual != 0:
        return StreamAlreadyExistsError(stream, actual)
    if expected is not None and expected != NO_STREAM and expected != actual:
        return ConcurrencyError(stream, expected, actual)
    return Write(req, actual + 1)


def _idempotent(
    req: AppendRequest,
    stored_by_id: Mapping[uuid.UUID, EventEnvelope],
    pending: Mapping[uuid.UUID, tuple[int, str, int]],
    requests: Sequence[AppendRequest],
) -> Decision | None:
    given = [p for p in req.events if p.id_given]
    if not given:
        return None
    stream = str(req.stream_id)
    known_stored = [stored_by_id.get(p.event_id) for p in req.events]
    known_pending = [pending.get(p.event_id) for p in req.events]
    if all(s is None for s in known_stored) and all(k is None for k in known_pending):
        return None
    if all(s is not None for s in known_stored):
        stored = [s for s in known_stored if s is not None]
        first = stored[0].version or 0
        for offset, (p, s) in enumerate(zip(req.events, stored, strict=True)):
            if s.stream != stream:
                return EventIdConflictError(str(p.event_id), f"it belongs to stream {s.stream}")
            if s.version != first + offset:
                return EventIdConflictError(str(p.event_id), "the events are stored at other positions")
            if not same_content(s, p):
                return EventIdConflictError(str(p.event_id), "it was stored with a different type or payload")
        return Replay(req, stored)
    if all(k is not None for k in known_pending):
        indexes = {k[0] for k in known_pending if k is not None}
        if len(indexes) == 1:
            (original,) = indexes
            earlier = requests[original]
            if [p.event_id for p in earlier.events] == [p.event_id for p in req.events] and all(
                a.event_type == b.event_type and a.payload_json == b.payload_json
                for a, b in zip(earlier.events, req.events, strict=True)
            ):
                return ReplayOf(req, original)
    conflicting = next(
        p for p, s, k in zip(req.events, known_stored, known_pending, strict=True) if s is not None or k is not None
    )
    return EventIdConflictError(str(conflicting.event_id), "part of this append is already stored")
