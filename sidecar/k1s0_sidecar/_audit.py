"""The audit log (one record per write) and the access log (one line per request).

Every write operation is logged: an append, a stream deletion, a snapshot creation or a snapshot
prune, on REST and gRPC alike. The edge that receives such a request opens a record (``begin``)
before it authenticates, so a refused request is recorded as well as an accepted one; the service
adds what only it learns (``note_*``: the expected and resulting version, the event ids, the
counts); the edge closes the record with the outcome (``finish``), which writes exactly one log
record to the ``k1s0_sidecar._audit`` logger. The open record travels in a context variable, so the
service needs no audit argument and code that uses the service without an edge logs nothing.

What a record never holds: a payload, metadata, snapshot state, a token, a header or an error
message (messages can quote input). Only identifiers, numbers, role names and codes; identifiers a
client chose (the stream id) are cut to ``MAX_TEXT`` characters.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from k1s0_event_store import AppendRequest, rfc3339

from ._authz import Principal
from ._errors import error_code

log = logging.getLogger("k1s0_sidecar.audit")
# Always on: a quieter EVENTSTORE_LOG_LEVEL must not drop the record of a write.
log.setLevel(logging.INFO)
access_log = logging.getLogger("k1s0_sidecar.access")

#: The write operations, by REST route name and by gRPC method.
REST_OPERATIONS = {
    "append_events": "append",
    "delete_stream": "delete_stream",
    "create_snapshot": "create_snapshot",
}
GRPC_OPERATIONS = {
    "AppendEvents": "append",
    "DeleteStream": "delete_stream",
    "CreateSnapshot": "create_snapshot",
    "PruneSnapshots": "prune_snapshots",
}
#: An append's event ids are listed in full up to this many; first and last are always given.
MAX_LISTED_IDS = 20
#: Client-chosen text (a stream id that failed validation can be anything) is cut to this length.
MAX_TEXT = 200

SUCCESS = "success"
FAILURE = "failure"
CANCELLED = "cancelled"


class WriteRecord:
    """One write's audit record while its request is handled."""

    __slots__ = ("fields", "started")

    def __init__(self, operation: str, protocol: str, request_id: str, client_address: str | None,
                 stream_id: str | None) -> None:
        self.started = time.perf_counter()
        # Every record has these keys (null when unknown), so log pipelines see one shape.
        self.fields: dict[str, Any] = {
            "audit": "write",
            "operation": operation,
            "protocol": protocol,
            "request_id": request_id,
            "client_address": client_address,
            "subject": None,
            "roles": [],
            "role": None,
            "stream_id": _text(stream_id or None),  # proto3's "" is no stream id
            "expected_version": None,
            "resulting_version": None,
            "event_count": None,
            "first_event_id": None,
            "last_event_id": None,
            "event_ids": None,
        }


_current: contextvars.ContextVar[WriteRecord | None] = contextvars.ContextVar("audit_record", default=None)


def begin(operation: str, protocol: str, request_id: str, client_address: str | None,
          stream_id: str | None) -> tuple[WriteRecord, contextvars.Token[WriteRecord | None]]:
    """Open the record of a write request; the edge passes the token back to ``finish``."""
    record = WriteRecord(operation, protocol, request_id, client_address, stream_id)
    return record, _current.set(record)


def note_principal(principal: Principal) -> None:
    """Who is asking (known once the token is checked, before the role is)."""
    record = _current.get()
    if record is not None:
        record.fields["subject"] = principal.subject
        record.fields["roles"] = sorted(principal.roles)
        record.fields["role"] = principal.role.claim if principal.role is not None else None


def note_append(request: AppendRequest) -> None:
    """What an append asks for (before it runs, so a refused one is described too).

    ``expected_version`` null means "any version"."""
    record = _current.get()
    if record is None:
        return
    ids = [str(e.event_id) for e in request.events]
    record.fields.update(
        stream_id=str(request.stream_id),
        expected_version=request.expected_version,
        event_count=len(ids),
        first_event_id=ids[0] if ids else None,
        last_event_id=ids[-1] if ids else None,
        event_ids=ids if len(ids) <= MAX_LISTED_IDS else None,
    )


def note(**fields: Any) -> None:
    """Add facts to the open record (numbers, identifiers, times: never client content)."""
    record = _current.get()
    if record is not None:
        record.fields.update({k: rfc3339(v) if isinstance(v, datetime) else v for k, v in fields.items()})


def finish(
    record: WriteRecord,
    token: contextvars.Token[WriteRecord | None],
    outcome: str,
    error_code: str | None = None,
    *,
    http_status: int | None = None,
    grpc_status: str | None = None,
) -> None:
    """Close the record and write it: one ``k1s0_sidecar._audit`` log record at INFO."""
    _current.reset(token)
    fields = record.fields
    fields["outcome"] = outcome
    fields["error_code"] = error_code
    if http_status is not None:
        fields["http_status"] = http_status
    if grpc_status is not None:
        fields["grpc_status"] = grpc_status
    fields["duration_ms"] = round((time.perf_counter() - record.started) * 1000, 3)
    if log.isEnabledFor(logging.INFO):
        log.info(_summary(fields), extra=fields)


@contextlib.contextmanager
def system_write(operation: str, job: str) -> Iterator[None]:
    """A write the sidecar makes on its own (``job``: snapshot-retention), audited like a request:
    protocol ``maintenance``, subject ``system:<job>``."""
    record, token = begin(operation, "maintenance", f"job_{uuid.uuid4().hex[:20]}", None, None)
    record.fields["subject"] = f"system:{job}"
    try:
        yield
    except Exception as exc:
        finish(record, token, FAILURE, error_code(exc))
        raise
    finish(record, token, SUCCESS)


def _summary(f: dict[str, Any]) -> str:
    """The record in words, for the text format (the JSON format has every field)."""
    what = f"{f['operation']} {_printable(f['stream_id'] or '-')} by {_printable(f['subject'] or '-')}"
    if f["outcome"] != SUCCESS:
        return f"{what}: {f['outcome']} {f['error_code'] or ''}".rstrip()
    if f["operation"] == "append":
        n = f["event_count"]
        return f"{what}: {n} event{'' if n == 1 else 's'}, now at version {f['resulting_version']}"
    return f"{what}: {f['outcome']}"


def _text(value: str | None) -> str | None:
    if value is None or len(value) <= MAX_TEXT:
        return value
    return value[:MAX_TEXT] + "…"


def _printable(value: str) -> str:
    """Control characters escaped: a client's stream id cannot start a forged log line."""
    return value if value.isprintable() else json.dumps(value, ensure_ascii=False)[1:-1]


# -- client address and the access log -------------------------------------------------------------


def peer_address(peername: Sequence[Any] | str | None) -> str | None:
    """``host:port`` from a socket's peer name (REST) or a gRPC peer (``ipv4:1.2.3.4:5``)."""
    if peername is None:
        return None
    if isinstance(peername, str):  # gRPC percent-encodes it: ipv6:%5B::1%5D:5000
        peer = urllib.parse.unquote(peername)
        for scheme in ("ipv4:", "ipv6:"):
            if peer.startswith(scheme):
                return peer[len(scheme):]
        return _text(peer)
    if len(peername) >= 2:
        host = str(peername[0])
        return f"[{host}]:{peername[1]}" if ":" in host else f"{host}:{peername[1]}"
    return str(peername[0]) if peername else None


def access_on() -> bool:
    """Whether the access log is written (``app.log_format: text``)."""
    return access_log.isEnabledFor(logging.INFO)


def access(protocol: str, method: str, target: str, status: str, started: float, request_id: str,
           client_address: str | None) -> None:
    """One line per request (REST or gRPC). ``target``: the path without its query, or the RPC."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    elapsed = round((time.perf_counter() - started) * 1000, 3)
    target = _printable(_text(target) or "")
    access_log.info(
        "%s %s %s %.1fms %s %s", method, target, status, elapsed, request_id, client_address or "-",
        extra={"protocol": protocol, "method": method, "target": target, "status": status,
               "duration_ms": elapsed, "request_id": request_id, "client_address": client_address},
    )
