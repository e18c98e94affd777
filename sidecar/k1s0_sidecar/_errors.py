"""Errors as the protocol edges answer them: HTTP status + body, and gRPC status + ErrorInfo.

Both edges call this module and nothing else to render an error, so a code never means one thing
on REST and another on gRPC; which status each code gets is the library's one map
(``k1s0_event_store.error_map``), which the gRPC client decodes with too. Anything that is not an
``EventStoreError`` is an internal error: logged with its traceback, answered as
``SYS_EVSTORE_INTERNAL_ERROR`` without details.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from k1s0_event_store import EventStoreError
from k1s0_event_store.error_map import CLIENT_CLOSED_CODE, ERROR_DOMAIN, ERROR_MAP, INTERNAL_CODE, kind_of
from k1s0_event_store.error_map import error_info as error_info_from_call

from . import _tracing as tracing

log = logging.getLogger("k1s0_sidecar.errors")  # the name people filter on; the module is private

__all__ = [
    "CLIENT_CLOSED_CODE",
    "INTERNAL_CODE",
    "RequestError",
    "classify",
    "error_body",
    "error_code",
    "error_info_from_call",
    "grpc_code",
    "grpc_status",
    "http_status",
    "new_request_id",
]


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
    return kind_of(code).http


def grpc_code(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code ``exc`` is answered with (as ``grpc_status`` renders it)."""
    return kind_of(error_code(exc)).grpc


def error_body(code: str, message: str, details: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    """Seed 000's error body: ``{"error": {"code", "message", "request_id", "details"}}``."""
    return {"error": {"code": code, "message": message, "request_id": request_id, "details": details}}


def grpc_status(exc: BaseException, request_id: str) -> grpc.Status:
    """A rich gRPC status whose ``google.rpc.ErrorInfo.reason`` is the SYS_EVSTORE_* code."""
    code, message, details = classify(exc)
    info = error_details_pb2.ErrorInfo(
        reason=code,
        domain=ERROR_DOMAIN,
        metadata={"request_id": request_id, **{str(d.get("field")): str(d.get("message")) for d in details}},
    )
    packed = any_pb2.Any()
    packed.Pack(info)
    status = status_pb2.Status(code=kind_of(code).grpc.value[0], message=message, details=[packed])
    result: grpc.Status = rpc_status.to_status(status)
    return result
