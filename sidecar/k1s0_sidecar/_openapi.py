"""The OpenAPI 3 document of the REST API, served at ``/openapi.json``.

Kept in code next to the routes it describes; a test fails when a registered route is missing
here, and schemathesis drives the running server from this document.
"""

from __future__ import annotations

from functools import cache
from typing import Any

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _error_responses(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Validation error (SYS_EVSTORE_VALIDATION_ERROR)",
        401: "Missing or invalid token (SYS_EVSTORE_UNAUTHENTICATED)",
        403: "Role too low (SYS_EVSTORE_PERMISSION_DENIED)",
        404: "Not found (SYS_EVSTORE_*_NOT_FOUND)",
        409: "Conflict (SYS_EVSTORE_VERSION_CONFLICT, SYS_EVSTORE_STREAM_ALREADY_EXISTS,"
        " SYS_EVSTORE_EVENT_ID_CONFLICT)",
        408: "Body not received in time (SYS_EVSTORE_REQUEST_TIMEOUT)",
        413: "Body too large (SYS_EVSTORE_PAYLOAD_TOO_LARGE)",
        503: "Unavailable (SYS_EVSTORE_UNAVAILABLE)",
    }
    return {
        str(s): {"description": text[s], "content": {"application/json": {"schema": _ref("Error")}}}
        for s in (*statuses, 401, 403, 503)
    }


def _ok(status: int, schema: str, description: str) -> dict[str, Any]:
    return {str(status): {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_STREAM = {
    "name": "stream_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "Stream id, `{aggregate_type}-{aggregate_id}` (e.g. `order-order-001`).",
}
_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]

_SCHEMAS: dict[str, Any] = {
    "Metadata": {
        "type": "object",
        "description": "Free-form; actor_id, correlation_id and causation_id are the standard keys.",
        "properties": {
            "actor_id": {"type": ["string", "null"]},
            "correlation_id": {"type": ["string", "null"]},
            "causation_id": {"type": ["string", "null"]},
        },
        "additionalProperties": True,
    },
    "EventData": {
        "type": "object",
        "required": ["event_type", "payload"],
        "additionalProperties": False,
        "properties": {
            "event_type": {"type": "string", "minLength": 1, "maxLength": 255},
            "payload": {"description": "Any JSON value."},
            "metadata": {"oneOf": [_ref("Metadata"), {"type": "null"}]},
            "event_id": {"type": "string", "format": "uuid", "description": "Makes retries idempotent."},
            "occurred_at": {"type": "string", "format": "date-time"},
        },
    },
    "AppendRequest": {
        "type": "object",
        "required": ["events"],
        "additionalProperties": False,
        "properties": {
            "events": {"type": "array", "minItems": 1, "maxItems": 100, "items": _ref("EventData")},
            "expected_version": {
                "type": ["integer", "null"],
                "minimum": -1,
                "description": "Absent/null: any version; -1: the stream must not exist; N: must be at N.",
            },
        },
    },
    "StoredEvent": {
        "type": "object",
        "required": ["stream_id", "sequence", "event_type", "version", "payload", "metadata", "occurred_at",
                     "stored_at", "event_id"],
        "properties": {
            "stream_id": {"type": "string"},
            "sequence": {"type": "integer", "minimum": 1},
            "event_type": {"type": "string"},
            "version": {"type": "integer", "minimum": 1},
            "payload": {},
            "metadata": {"type": "object"},
            "occurred_at": {"type": "string", "format": "date-time"},
            "stored_at": {"type": "string", "format": "date-time"},
            "event_id": {"type": "string", "format": "uuid"},
        },
    },
    "AppendResponse": {
        "type": "object",
        "required": ["stream_id", "events", "current_version"],
        "properties": {
            "stream_id": {"type": "string"},
            "events": {"type": "array", "items": _ref("StoredEvent")},
            "current_version": {"type": "integer"},
        },
    },
    "ReadEventsResponse": {
        "type": "object",
        "required": ["stream_id", "events", "current_version", "pagination"],
        "properties": {
            "stream_id": {"type": "string"},
            "events": {"type": "array", "items": _ref("StoredEvent")},
            "current_version": {"type": "integer"},
            "pagination": {
                "type": "object",
                "required": ["total_count", "page", "page_size", "has_next"],
                "properties": {
                    "total_count": {"type": "integer"},
                    "page": {"type": "integer"},
                    "page_size": {"type": "integer"},
                    "has_next": {"type": "boolean"},
                },
            },
        },
    },
    "ReadAllResponse": {
        "type": "object",
        "required": ["events", "head_sequence"],
        "properties": {
            "events": {"type": "array", "items": _ref("StoredEvent")},
            "head_sequence": {"type": "integer"},
        },
    },
    "CreateSnapshotRequest": {
        "type": "object",
        "required": ["snapshot_version", "state"],
        "additionalProperties": False,
        "properties": {
            "snapshot_version": {"type": "integer", "minimum": 1},
            "aggregate_type": {"type": "string", "minLength": 1, "maxLength": 255},
            "state": {"description": "Any JSON value."},
        },
    },
    "SnapshotCreated": {
        "type": "object",
        "required": ["id", "stream_id", "snapshot_version", "aggregate_type", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "stream_id": {"type": "string"},
            "snapshot_version": {"type": "integer"},
            "aggregate_type": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "Snapshot": {
        "type": "object",
        "required": ["id", "stream_id", "snapshot_version", "aggregate_type", "state", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "stream_id": {"type": "string"},
            "snapshot_version": {"type": "integer"},
            "aggregate_type": {"type": "string"},
            "state": {},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "DeleteResponse": {
        "type": "object",
        "required": ["success", "message"],
        "properties": {
            "success": {"type": "boolean"},
            "message": {"type": "string"},
            "deleted_events": {"type": "integer"},
        },
    },
    "StreamSummary": {
        "type": "object",
        "required": ["stream_id", "aggregate_type", "current_version", "updated_at"],
        "properties": {
            "stream_id": {"type": "string"},
            "aggregate_type": {"type": "string"},
            "current_version": {"type": "integer", "minimum": 1},
            "updated_at": {"type": "string", "format": "date-time", "description": "The last append."},
        },
    },
    "ListStreamsResponse": {
        "type": "object",
        "required": ["streams", "next_after"],
        "properties": {
            "streams": {"type": "array", "items": _ref("StreamSummary")},
            "next_after": {
                "type": ["string", "null"],
                "description": "Pass as `after` for the next page; null: this is the last page.",
            },
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "request_id", "details"],
                "properties": {
                    "code": {"type": "string", "pattern": "^SYS_EVSTORE_[A-Z_]+$"},
                    "message": {"type": "string"},
                    "request_id": {"type": "string"},
                    "details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                        },
                    },
                },
            }
        },
    },
}

_SSE = {
    "200": {
        "description": "An endless event stream; keep-alive comments while idle; `event: error` ends it.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}

_FORWARDER_STATUS = {
    "type": "object",
    "required": ["enabled", "state"],
    "properties": {
        "enabled": {"type": "boolean"},
        "state": {"enum": ["disabled", "starting", "active", "standby", "stopped"]},
        "checkpoint": {"type": ["integer", "null"]},
        "lag_events": {"type": ["integer", "null"]},
        "lag_seconds": {"type": ["number", "null"]},
        "last_error": {"type": ["string", "null"]},
        "missing_topics": {"type": "array", "items": {"type": "string"}},
    },
}


@cache
def _base_paths() -> dict[str, Any]:
    stream_events = "/api/v1/streams/{stream_id}/events"
    return {
        stream_events: {
            "post": {
                "operationId": "appendEvents",
                "summary": "Append events (optimistic concurrency with expected_version). Role: sys_operator.",
                "security": _SECURITY,
                "parameters": [_STREAM],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("AppendRequest")}}},
                "responses": {**_ok(201, "AppendResponse", "Appended"), **_error_responses(400, 408, 409, 413)},
            },
            "get": {
                "operationId": "readEvents",
                "summary": "Read a stream by version range, paged. Role: sys_auditor.",
                "security": _SECURITY,
                "parameters": [
                    _STREAM,
                    _query("from_version", {"type": "integer", "minimum": 0, "default": 1}, "Inclusive."),
                    _query("to_version", {"type": "integer", "minimum": 0}, "Inclusive; default: latest."),
                    _query("event_type", {"type": "string", "minLength": 1}, "Only this event type."),
                    _query("page", {"type": "integer", "minimum": 1, "default": 1}, "1-based page."),
                    _query("page_size", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                           "Events per page (max 200)."),
                ],
                "responses": {**_ok(200, "ReadEventsResponse", "A page"), **_error_responses(400, 404)},
            },
        },
        stream_events + "/{sequence}": {
            "get": {
                "operationId": "readEventBySequence",
                "summary": "One event by global sequence (404 if it belongs to another stream). Role: sys_auditor.",
                "security": _SECURITY,
                "parameters": [
                    _STREAM,
                    {"name": "sequence", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}},
                ],
                "responses": {**_ok(200, "StoredEvent", "The event"), **_error_responses(400, 404)},
            }
        },
        "/api/v1/streams/{stream_id}/snapshots": {
            "post": {
                "operationId": "createSnapshot",
                "summary": "Save aggregate state as of a version. Role: sys_operator.",
                "security": _SECURITY,
                "parameters": [_STREAM],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CreateSnapshotRequest")}},
                },
                "responses": {**_ok(201, "SnapshotCreated", "Created"), **_error_responses(400, 404, 408, 413)},
            }
        },
        "/api/v1/streams/{stream_id}/snapshots/latest": {
            "get": {
                "operationId": "getLatestSnapshot",
                "summary": "The snapshot with the highest version. Role: sys_auditor.",
                "security": _SECURITY,
                "parameters": [_STREAM],
                "responses": {**_ok(200, "Snapshot", "The snapshot"), **_error_responses(400, 404)},
            }
        },
        "/api/v1/streams/{stream_id}": {
            "delete": {
                "operationId": "deleteStream",
                "summary": "Delete a stream, its events and snapshots. Role: sys_admin.",
                "security": _SECURITY,
                "parameters": [_STREAM],
                "responses": {**_ok(200, "DeleteResponse", "Deleted"), **_error_responses(400, 404)},
            }
        },
        "/api/v1/events": {
            "get": {
                "operationId": "readAll",
                "summary": "Every stream's events in global sequence order. Role: sys_auditor.",
                "security": _SECURITY,
                "parameters": [
                    _query("after_sequence", {"type": "integer", "minimum": 0, "default": 0}, "Exclusive."),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 500}, "At most."),
                    _query("stream_prefix", {"type": "array", "items": {"type": "string"}}, "Stream id prefixes."),
                    _query("event_type", {"type": "array", "items": {"type": "string"}}, "Event types."),
                ],
                "responses": {**_ok(200, "ReadAllResponse", "Events"), **_error_responses(400)},
            }
        },
        "/api/v1/streams": {
            "get": {
                "operationId": "listStreams",
                "summary": "Streams, most recently appended to first, filtered by id prefix, paged with a cursor. "
                "Appends reorder the list, so a stream appended to while paging can move between pages. "
                "Role: sys_auditor.",
                "security": _SECURITY,
                "parameters": [
                    _query("prefix", {"type": "string", "maxLength": 255}, "Only stream ids starting with this."),
                    _query("after", {"type": "string"}, "The `next_after` of the previous page."),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                           "Streams per page (max 200)."),
                ],
                "responses": {**_ok(200, "ListStreamsResponse", "A page of streams"), **_error_responses(400)},
            }
        },
        "/api/v1/streams/{stream_id}/subscribe": {
            "get": {
                "operationId": "subscribeToStream",
                "summary": "Server-Sent Events: one stream, catch-up then live (id: sequence, data: StoredEvent). "
                "Waits for a stream that does not exist yet; `Last-Event-ID` resumes after that event. "
                "Role: sys_auditor.",
                "security": _SECURITY,
                "parameters": [
                    _STREAM,
                    _query("after_version", {"type": "integer", "minimum": 0, "default": 0}, "Exclusive."),
                    _query("from_end", {"type": "boolean"}, "Only events committed after the call."),
                ],
                "responses": {**_SSE, **_error_responses(400, 404)},
            }
        },
        "/api/v1/subscribe": {
            "get": {
                "operationId": "subscribeToAll",
                "summary": "Server-Sent Events: all streams in global order, catch-up then live. "
                "`Last-Event-ID` resumes after that sequence. Role: sys_auditor.",
                "security": _SECURITY,
                "parameters": [
                    _query("after_sequence", {"type": "integer", "minimum": 0, "default": 0}, "Exclusive."),
                    _query("stream_prefix", {"type": "array", "items": {"type": "string"}}, "Stream id prefixes."),
                    _query("event_type", {"type": "array", "items": {"type": "string"}}, "Event types."),
                    _query("from_end", {"type": "boolean"}, "Only events committed after the call."),
                ],
                "responses": {**_SSE, **_error_responses(400)},
            }
        },
        "/healthz": {"get": _health("healthz", "Liveness")},
        "/health/live": {"get": _health("healthLive", "Liveness (alias of /healthz)")},
        "/readyz": {"get": _health("readyz", "Readiness: database reachable, not shutting down", ready=True)},
        "/health/ready": {"get": _health("healthReady", "Readiness (alias of /readyz)", ready=True)},
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/ui": {
            "get": {
                "operationId": "consoleRedirect",
                "summary": "Redirects to /ui/.",
                "responses": {"302": {"description": "To /ui/"},
                              "200": {"description": "HTML (redirect followed)",
                                      "content": {"text/html": {"schema": {"type": "string"}}}}},
            }
        },
        "/ui/{asset}": {
            "get": {
                "operationId": "consoleAsset",
                "summary": "A file of the web console (its scripts and style sheet).",
                "parameters": [{"name": "asset", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "The file", "content": {"text/javascript": {"schema": {"type": "string"}},
                                                                  "text/css": {"schema": {"type": "string"}},
                                                                  "text/html": {"schema": {"type": "string"}}}},
                    "404": {"description": "No such file (SYS_EVSTORE_ROUTE_NOT_FOUND)",
                            "content": {"application/json": {"schema": _ref("Error")}}},
                },
            }
        },
        "/ui/": {
            "get": {
                "operationId": "console",
                "summary": "The web console (HTML; its scripts are under /ui/). Open: it reads the API with "
                "the token the person pastes.",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI", "content": {"application/json": {"schema": {}}}}},
            }
        },
        "/api/v1/forwarder/status": {
            "get": {
                "operationId": "forwarderStatus",
                "summary": "The Kafka forwarder of this sidecar: active/standby, checkpoint, lag, last error. Open.",
                "responses": {
                    "200": {
                        "description": "Status (``enabled: false`` when kafka.brokers is empty)",
                        "content": {"application/json": {"schema": _FORWARDER_STATUS}},
                    }
                },
            }
        },
    }


def _health(op: str, summary: str, *, ready: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": {"application/json": {"schema": _ref("Health")}}}
    }
    if ready:
        responses["503"] = {"description": "Not ready", "content": {"application/json": {"schema": _ref("Health")}}}
    return {"operationId": op, "summary": summary, "responses": responses}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "k1s0 event store",
            "version": "1.0.0",
            "description": "Append-only event streams. "
            "Errors: {error: {code, message, request_id, details}}.",
        },
        "paths": _base_paths(),
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }
