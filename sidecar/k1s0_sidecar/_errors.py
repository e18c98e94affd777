"""The one error map: library errors -> HTTP status + body, and -> gRPC status + ErrorInfo.

Both protocol edges call this module and nothing else to render an error, so a code never means
one thing on REST and another on gRPC. Anything that is not an ``EventStoreError`` is an internal
error: logged with its traceback, answered as ``SYS_EVSTORE_INTERNAL_ERROR`` without details.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from k1s0_event_store import EventStoreError

from . import _tracing as tracing

log = logging.getLogger(__name__)

ERROR_DOMAIN = "eventstore.k1s0.io"
INTERNAL_CODE = "SYS_EVSTORE_INTERNAL_ERROR"
CLIENT_CLOSED_CODE = "SYS_EVSTORE_CLIENT_CLOSED_REQUEST"


@dataclass(frozen=True)
class Mapping:
    http: int
    grpc: grpc.StatusCode


#: Every SYS_EVSTORE_* code, its HTTP status and its gRPC status code.
ERROR_MAP: dict[str, Mapping] = {
    "SYS_EVSTORE_STREAM_NOT_FOUND": Mapping(404, grpc.StatusCode.NOT_FOUND),
    "SYS_EVSTORE_EVENT_NOT_FOUND": Mapping(404, grpc.StatusCode.NOT_FOUND),
    "SYS_EVSTORE_SNAPSHOT_NOT_FOUND": Mapping(404, grpc.StatusCode.NOT_FOUND),
    "SYS_EVSTORE_VERSION_CONFLICT": Mapping(409, grpc.StatusCode.ABORTED),
    "SYS_EVSTORE_STREAM_ALREADY_EXISTS": Mapping(409, grpc.StatusCode.ALREADY_EXISTS),
    "SYS_EVSTORE_EVENT_ID_CONFLICT": Mapping(409, grpc.StatusCode.ALREADY_EXISTS),
    "SYS_EVSTORE_VALIDATION_ERROR": Mapping(400, grpc.StatusCode.INVALID_ARGUMENT),
    "SYS_EVSTORE_PAYLOAD_TOO_LARGE": Mapping(413, grpc.StatusCode.INVALID_ARGUMENT),
    "SYS_EVSTORE_ROUTE_NOT_FOUND": Mapping(404, grpc.StatusCode.UNIMPLEMENTED),
    "SYS_EVSTORE_METHOD_NOT_ALLOWED": Mapping(405, grpc.StatusCode.UNIMPLEMENTED),
    "SYS_EVSTORE_UNAUTHENTICATED": Mapping(401, grpc.StatusCode.UNAUTHENTICATED),
    "SYS_EVSTORE_PERMISSION_DENIED": Mapping(403, grpc.StatusCode.PERMISSION_DENIED),
    "SYS_EVSTORE_UNAVAILABLE": Mapping(503, grpc.StatusCode.UNAVAILABLE),
    "SYS_EVSTORE_REQUEST_TIMEOUT": Mapping(408, grpc.StatusCode.DEADLINE_EXCEEDED),
    # The client went away before its request was read: nobody gets this answer, but the metrics
    # count it apart from server errors (nginx's 499 "client closed request").
    CLIENT_CLOSED_CODE: Mapping(499, grpc.StatusCode.CANCELLED),
    INTERNAL_CODE: Mapping(500, grpc.StatusCode.INTERNAL),
}


class RequestError(EventStoreError):
    """A protocol-level error with an explicit code (unknown route, body too large, …)."""

    def __init__(self, code: str, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, details=details)
        self.code = code


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex[:20]}"


def classify(exc: BaseException) -> tuple[str, str, list[dict[str, Any]]]:
    """(code, message, details) for any exception; unknown ones are logged and made opaque."""
    if isinstance(exc, EventStoreError) and exc.code in ERROR_MAP:
        code, message, details = exc.code, exc.message, list(exc.details)
    else:
        log.error("internal error", exc_info=exc)
        code, message, details = INTERNAL_CODE, "internal error", []
    if tracing.ENABLED:  # both edges render every error through here, inside the request's span
        tracing.error(code)
    return code, message, details


def error_code(exc: BaseException) -> str:
    """The code ``exc`` is answered with (what ``classify`` decides, without logging anything)."""
    return exc.code if isinstance(exc, EventStoreError) and exc.code in ERROR_MAP else INTERNAL_CODE


def http_status(code: str) -> int:
    return ERROR_MAP.get(code, ERROR_MAP[INTERNAL_CODE]).http


def error_body(code: str, message: str, details: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    """Seed 000's error body: ``{"error": {"code", "message", "request_id", "details"}}``."""
    return {"error": {"code": code, "message": message, "request_id": request_id, "details": details}}


def grpc_status(exc: BaseException, request_id: str) -> grpc.Status:
    """A rich gRPC status whose ``google.rpc.ErrorInfo.reason`` is the SYS_EVSTORE_* code."""
    code, message, details = classify(exc)
    mapping = ERROR_MAP.get(code, ERROR_MAP[INTERNAL_CODE])
    info = error_details_pb2.ErrorInfo(
        reason=code,
        domain=ERROR_DOMAIN,
        metadata={"request_id": request_id, **{str(d.get("field")): str(d.get("message")) for d in details}},
    )
    packed = any_pb2.Any()
    packed.Pack(info)
    status = status_pb2.Status(code=mapping.grpc.value[0], message=message, details=[packed])
    result: grpc.Status = rpc_status.to_status(status)
    return result


def error_info_from_call(error: grpc.aio.AioRpcError | grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo a server attached to a failed call (used by the client and the tests)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None
