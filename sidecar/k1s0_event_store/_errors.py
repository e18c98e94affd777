"""The library's error hierarchy.

Every error carries a stable ``code`` (a ``SYS_EVSTORE_*`` name), so that the one error map
(``error_map``) can turn any of them into an HTTP status or a gRPC status without knowing the
concrete class. Each class says one thing that went wrong; callers catch the class, wire formats
use the code. ``from_wire`` is the way back: the exception a client raises for a code it received.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class EventStoreError(Exception):
    """Base class of everything the event store raises on purpose."""

    code = "SYS_EVSTORE_INTERNAL_ERROR"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: list[dict[str, Any]] = details or []

    @classmethod
    def from_wire(cls, message: str, fields: Mapping[str, str], stream_id: str) -> EventStoreError:
        """This error as a client rebuilds it from an answer: ``fields`` are the details (field ->
        message, as in gRPC's ``ErrorInfo.metadata``), ``stream_id`` the stream the call was about."""
        return cls(message)

    def _received(self, message: str) -> EventStoreError:
        """This error with the message as the server worded it (the server knew more)."""
        self.message = message
        self.args = (message,)
        return self


class ValidationError(EventStoreError):
    """The request is malformed; nothing was written. ``field`` names the offending input."""

    code = "SYS_EVSTORE_VALIDATION_ERROR"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        details = [{"field": field, "message": message}] if field else []
        super().__init__(message, details=details)
        self.field = field

    @classmethod
    def from_wire(cls, message: str, fields: Mapping[str, str], stream_id: str) -> EventStoreError:
        return cls(message, field=next(iter(fields), None))


class ConcurrencyError(EventStoreError):
    """Optimistic concurrency failed: the stream is not at ``expected_version``."""

    code = "SYS_EVSTORE_VERSION_CONFLICT"

    def __init__(self, stream_id: str, expected_version: int, actual_version: int) -> None:
        super().__init__(
            f"version conflict for stream {stream_id}: expected {expected_version}, actual {actual_version}",
            details=[
                {"field": "expected_version", "message": str(expected_version)},
                {"field": "actual_version", "message": str(actual_version)},
            ],
        )
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version

    @classmethod
    def from_wire(cls, message: str, fields: Mapping[str, str], stream_id: str) -> EventStoreError:
        return cls(stream_id, int(fields["expected_version"]), int(fields["actual_version"]))


class StreamAlreadyExistsError(EventStoreError):
    """``expected_version=-1`` was given but the stream already has events."""

    code = "SYS_EVSTORE_STREAM_ALREADY_EXISTS"

    def __init__(self, stream_id: str, actual_version: int) -> None:
        super().__init__(
            f"stream already exists: {stream_id} (current version {actual_version})",
            details=[{"field": "actual_version", "message": str(actual_version)}],
        )
        self.stream_id = stream_id
        self.actual_version = actual_version

    @classmethod
    def from_wire(cls, message: str, fields: Mapping[str, str], stream_id: str) -> EventStoreError:
        return cls(stream_id, int(fields.get("actual_version", "0")))


class EventIdConflictError(EventStoreError):
    """An event id is already stored with other content or at another position.

    A retry of the very same append is answered with the original result instead; this error is
    for an id reused for something else, which would otherwise silently drop an event.
    """

    code = "SYS_EVSTORE_EVENT_ID_CONFLICT"

    def __init__(self, event_id: str, reason: str) -> None:
        super().__init__(
            f"event id {event_id} is already used: {reason}",
            details=[{"field": "event_id", "message": event_id}],
        )
        self.event_id = event_id

    @classmethod
    def from_wire(cls, message: str, fields: Mapping[str, str], stream_id: str) -> EventStoreError:
        return cls(fields.get("event_id", ""), "")._received(message)


class NotFoundError(EventStoreError):
    """Base for the three not-found cases."""


class StreamNotFoundError(NotFoundError):
    code = "SYS_EVSTORE_STREAM_NOT_FOUND"

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"stream not found: {stream_id}")
        self.stream_id = stream_id

    @classmethod
    def from_wire(cls, message: str, fields: Mapping[str, str], stream_id: str) -> EventStoreError:
        return cls(stream_id)


class EventNotFoundError(NotFoundError):
    code = "SYS_EVSTORE_EVENT_NOT_FOUND"

    def __init__(self, stream_id: str, sequence: int) -> None:
        super().__init__(f"event not found: sequence {sequence} in stream {stream_id}")
        self.stream_id = stream_id
        self.sequence = sequence

    @classmethod
    def from_wire(cls, message: str, fields: Mapping[str, str], stream_id: str) -> EventStoreError:
        return cls(stream_id, 0)._received(message)  # the answer does not say which sequence: its message does


class SnapshotNotFoundError(NotFoundError):
    code = "SYS_EVSTORE_SNAPSHOT_NOT_FOUND"

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"no snapshot found for stream: {stream_id}")
        self.stream_id = stream_id

    @classmethod
    def from_wire(cls, message: str, fields: Mapping[str, str], stream_id: str) -> EventStoreError:
        return cls(stream_id)


class UnauthenticatedError(EventStoreError):
    code = "SYS_EVSTORE_UNAUTHENTICATED"


class PermissionDeniedError(EventStoreError):
    code = "SYS_EVSTORE_PERMISSION_DENIED"


class UnavailableError(EventStoreError):
    """A dependency (database, key server) cannot be reached right now; retrying may help."""

    code = "SYS_EVSTORE_UNAVAILABLE"
