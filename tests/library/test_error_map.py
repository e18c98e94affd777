"""The one error map: what the sidecar renders, the client decodes, the CLI exits with and the
docs say all come from ``k1s0_event_store.error_map``, and agree for every code."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

import k1s0_event_store
from k1s0_cli._client import EXIT_CODES, exit_code
from k1s0_event_store import (
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
from k1s0_event_store.error_map import ERROR_MAP, ErrorCategory, from_wire, kind_of
from k1s0_sidecar._errors import RequestError, grpc_status, http_status

API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"
EVENT_ID = str(uuid.uuid4())

#: One error of every code, as the sidecar raises it.
RAISED: list[EventStoreError] = [
    StreamNotFoundError("order-1"),
    EventNotFoundError("order-1", 7),
    SnapshotNotFoundError("order-1"),
    ConcurrencyError("order-1", 2, 5),
    StreamAlreadyExistsError("order-1", 4),
    EventIdConflictError(EVENT_ID, "it belongs to stream order-2"),
    ValidationError("events[0].event_type is required", field="events[0].event_type"),
    UnauthenticatedError("no token"),
    PermissionDeniedError("sys_auditor may not append"),
    UnavailableError("database unreachable"),
    RequestError("SYS_EVSTORE_PAYLOAD_TOO_LARGE", "body too large"),
    RequestError("SYS_EVSTORE_ROUTE_NOT_FOUND", "no such route"),
    RequestError("SYS_EVSTORE_METHOD_NOT_ALLOWED", "method not allowed"),
    RequestError("SYS_EVSTORE_REQUEST_TIMEOUT", "too slow"),
    RequestError("SYS_EVSTORE_CLIENT_CLOSED_REQUEST", "gone"),
    EventStoreError("something broke"),
]


def _error_info(status: grpc.Status) -> error_details_pb2.ErrorInfo:
    (raw,) = [value for key, value in status.trailing_metadata if key == "grpc-status-details-bin"]
    (packed,) = status_pb2.Status.FromString(raw).details
    info = error_details_pb2.ErrorInfo()
    assert packed.Unpack(info)
    return info


def test_every_code_is_raised_above() -> None:
    assert sorted(e.code for e in RAISED) == sorted(ERROR_MAP)


@pytest.mark.parametrize("raised", RAISED, ids=lambda e: e.code)
def test_rendered_then_decoded_is_the_same_error(raised: EventStoreError) -> None:
    kind = ERROR_MAP[raised.code]
    status = grpc_status(raised, "req_map")
    assert status.code == kind.grpc and http_status(raised.code) == kind.http
    info = _error_info(status)
    assert info.reason == raised.code
    fields = {k: v for k, v in info.metadata.items() if k != "request_id"}
    decoded = from_wire(info.reason, status.details, fields, "order-1")
    assert type(decoded) is kind.error and decoded.code == raised.code
    expected_message = "something broke" if raised.code == "SYS_EVSTORE_INTERNAL_ERROR" else raised.message
    assert decoded.message == expected_message
    for attribute in ("stream_id", "expected_version", "actual_version", "event_id", "field"):
        assert getattr(decoded, attribute, None) == getattr(raised, attribute, None), attribute


def test_every_public_error_class_has_its_code_in_the_map() -> None:
    classes = [c for c in vars(k1s0_event_store).values()
               if isinstance(c, type) and issubclass(c, EventStoreError) and c.code != EventStoreError.code]
    assert len(classes) == 10
    for cls in classes:
        assert ERROR_MAP[cls.code].error is cls, cls


def test_an_unknown_code_is_internal() -> None:
    assert kind_of("SYS_EVSTORE_NO_SUCH_CODE") is ERROR_MAP["SYS_EVSTORE_INTERNAL_ERROR"]
    decoded = from_wire("SYS_EVSTORE_NO_SUCH_CODE", "from a newer server", {})
    assert type(decoded) is EventStoreError and decoded.code == "SYS_EVSTORE_INTERNAL_ERROR"


def test_cli_exit_codes_follow_the_categories() -> None:
    assert set(EXIT_CODES) == set(ErrorCategory)
    # the documented numbers (docs/api.md, CLI)
    documented = {
        ValidationError("x"): 2,
        StreamNotFoundError("order-1"): 3,
        SnapshotNotFoundError("order-1"): 3,
        ConcurrencyError("order-1", 1, 2): 4,
        StreamAlreadyExistsError("order-1", 1): 4,
        EventIdConflictError(EVENT_ID, "x"): 4,
        UnauthenticatedError("x"): 5,
        PermissionDeniedError("x"): 5,
        UnavailableError("x"): 6,
        EventStoreError("x"): 1,
    }
    assert {e.code: exit_code(e) for e in documented} == {e.code: n for e, n in documented.items()}


def test_the_docs_table_is_the_map() -> None:
    text = API_MD.read_text()
    table = text[text.index("## Error codes"):text.index("## Limits and error behaviour")]
    documented: dict[str, tuple[int, str, str]] = {}
    for row in re.findall(r"^\| `SYS_EVSTORE_.*$", table, re.M):
        codes, https, grpc_name, category = (cell.strip() for cell in row.strip("|").split("|")[:4])
        names = [c.strip(" `").replace("…_", "SYS_EVSTORE_") for c in codes.split("/")]
        for name, http in zip(names, https.split("/"), strict=True):
            documented[name] = (int(http), grpc_name, category)
    assert documented == {
        code: (kind.http, kind.grpc.name, kind.category.value.replace("_", " ")) for code, kind in ERROR_MAP.items()
    }
