"""The one error map: every ``SYS_EVSTORE_*`` code, how each wire answers it, and what it means.

For each code: its HTTP status, its gRPC status code, its category (what the caller should do
about it) and the exception class a client raises for it. The sidecar renders every error through
this table (REST and gRPC), the gRPC client stores decode every answer through it, and the
command line's exit codes follow its categories; nothing else states these pairings.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ._errors import (
    ConcurrencyError,
    EventIdConflictError,
    EventNotFoundError,
    EventStoreError,
    PermissionDeniedError,
    SnapshotNotFoundError,
    StreamAlreadyExistsError,
    StreamNotFoundError,
    UnauthenticatedError,
    UnavailableError,
    ValidationError,
)

#: ``google.rpc.ErrorInfo.domain`` of every gRPC error the sidecar answers.
ERROR_DOMAIN = "eventstore.k1s0.io"
INTERNAL_CODE = EventStoreError.code
CLIENT_CLOSED_CODE = "SYS_EVSTORE_CLIENT_CLOSED_REQUEST"


class ErrorCategory(enum.Enum):
    """What a caller can do about an error (the command line's exit code follows it)."""

    INVALID = "invalid"  # the request is wrong: fix it, do not retry it as it is
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"  # the stream moved on (or an event id is taken): re-read, decide again
    DENIED = "denied"  # missing or wrong credentials, or too low a role
    UNAVAILABLE = "unavailable"  # try again later
    INTERNAL = "internal"  # a bug (or an answer nobody receives)


@dataclass(frozen=True, slots=True)
class ErrorKind:
    code: str
    http: int
    grpc: grpc.StatusCode
    category: ErrorCategory
    #: What a client raises for it; codes of the REST edge alone have no class of their own.
    error: type[EventStoreError] = EventStoreError


_S = grpc.StatusCode
_C = ErrorCategory

#: Every SYS_EVSTORE_* code by name.
ERROR_MAP: dict[str, ErrorKind] = {
    kind.code: kind
    for kind in (
        ErrorKind(StreamNotFoundError.code, 404, _S.NOT_FOUND, _C.NOT_FOUND, StreamNotFoundError),
        ErrorKind(EventNotFoundError.code, 404, _S.NOT_FOUND, _C.NOT_FOUND, EventNotFoundError),
        ErrorKind(SnapshotNotFoundError.code, 404, _S.NOT_FOUND, _C.NOT_FOUND, SnapshotNotFoundError),
        ErrorKind(ConcurrencyError.code, 409, _S.ABORTED, _C.CONFLICT, ConcurrencyError),
        ErrorKind(StreamAlreadyExistsError.code, 409, _S.ALREADY_EXISTS, _C.CONFLICT, StreamAlreadyExistsError),
        ErrorKind(EventIdConflictError.code, 409, _S.ALREADY_EXISTS, _C.CONFLICT, EventIdConflictError),
        ErrorKind(ValidationError.code, 400, _S.INVALID_ARGUMENT, _C.INVALID, ValidationError),
        ErrorKind("SYS_EVSTORE_PAYLOAD_TOO_LARGE", 413, _S.INVALID_ARGUMENT, _C.INVALID),
        ErrorKind("SYS_EVSTORE_ROUTE_NOT_FOUND", 404, _S.UNIMPLEMENTED, _C.INVALID),
        ErrorKind("SYS_EVSTORE_METHOD_NOT_ALLOWED", 405, _S.UNIMPLEMENTED, _C.INVALID),
        ErrorKind(UnauthenticatedError.code, 401, _S.UNAUTHENTICATED, _C.DENIED, UnauthenticatedError),
        ErrorKind(PermissionDeniedError.code, 403, _S.PERMISSION_DENIED, _C.DENIED, PermissionDeniedError),
        ErrorKind(UnavailableError.code, 503, _S.UNAVAILABLE, _C.UNAVAILABLE, UnavailableError),
        ErrorKind("SYS_EVSTORE_REQUEST_TIMEOUT", 408, _S.DEADLINE_EXCEEDED, _C.UNAVAILABLE),
        # The client went away before its request was read: nobody gets this answer, but the metrics
        # count it apart from server errors (nginx's 499 "client closed request").
        ErrorKind(CLIENT_CLOSED_CODE, 499, _S.CANCELLED, _C.INTERNAL),
        ErrorKind(INTERNAL_CODE, 500, _S.INTERNAL, _C.INTERNAL),
    )
}


def kind_of(code: str) -> ErrorKind:
    """The entry of ``code``; an unknown code is answered as an internal error."""
    return ERROR_MAP.get(code) or ERROR_MAP[INTERNAL_CODE]


def from_wire(code: str, message: str, fields: Mapping[str, str], stream_id: str = "") -> EventStoreError:
    """The exception a client raises for an answer with ``code`` (``fields``: the details)."""
    kind = ERROR_MAP.get(code)
    if kind is None:
        return EventStoreError(message)
    error = kind.error.from_wire(message, fields, stream_id)
    if error.code != code:  # a code without a class of its own keeps its name
        error.code = code
    return error


def error_info(error: grpc.aio.AioRpcError | grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ``google.rpc.ErrorInfo`` a server attached to a failed call, if any."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None
