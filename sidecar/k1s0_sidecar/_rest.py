"""The REST edge (aiohttp): parse, call the service, render. Errors go through ``errors``.

Every route is declared once in ``RestApi.routes`` with the role it needs (None: open); the
middleware authenticates and authorises before the handler runs, so a handler cannot forget to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from k1s0_event_store import (
    PermissionDeniedError,
    ReadForm,
    UnauthenticatedError,
    ValidationError,
    decode_json_text,
    encode_event,
    event_document,
    parse_json,
    snapshot_json,
    stream_summary_json,
)

from . import _audit as audit
from . import _console as console
from . import _wire as wire
from ._authz import Authenticator, Principal, Role, check
from ._errors import CLIENT_CLOSED_CODE, RequestError, classify, error_body, error_code, http_status, new_request_id
from ._metrics import Metrics
from ._openapi import openapi_document
from ._service import EventStoreService, audit_subject, encode_appended
from ._subscriptions import Batch
from .forwarding import Forwarder, disabled_status

log = logging.getLogger("k1s0_sidecar.rest")  # the name people filter on; the module is private

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# ASCII digits only: int() also takes other scripts' digits (Arabic-Indic one), "1_000" and spaces.
_INTEGER = re.compile(r"-?[0-9]+")
#: A REST body wraps each payload, metadata or state in at most three levels ({"events": [{…}]}).
_BODY_NESTING = 3
PRINCIPAL_KEY = web.RequestKey("principal", Principal)
REQUEST_ID_KEY = web.RequestKey("request_id", str)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    role: Role | None
    name: str


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        status=status,
        content_type="application/json",
    )


def _json_text(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="application/json")


def _integer(raw: str, name: str) -> int:
    if not _INTEGER.fullmatch(raw) or len(raw) > 40:
        raise ValidationError(f"{name} must be an integer of ASCII digits (got {raw[:40]!r})", field=name)
    return int(raw)


def _query_int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    return _integer(raw, name)


def _path_int(request: web.Request, name: str) -> int:
    return _integer(request.match_info[name], name)


def _too_large(request: web.Request) -> RequestError:
    return RequestError(
        "SYS_EVSTORE_PAYLOAD_TOO_LARGE", f"request body is larger than {request.client_max_size} bytes"
    )


async def _body(request: web.Request, timeout: float, max_depth: int) -> Any:
    """The request body as JSON, read within ``timeout`` and parsed by the same parser as gRPC's
    ``payload_json`` (each payload, metadata and state is then held to ``max_depth`` on its own)."""
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(request) from None
    except TimeoutError:
        raise RequestError(
            "SYS_EVSTORE_REQUEST_TIMEOUT", f"the request body did not arrive within {timeout:g} seconds"
        ) from None
    except HttpProcessingError as exc:  # malformed HTTP is a 400 (aiohttp answers most such itself)
        raise ValidationError(f"malformed request body: {exc.message}", field="body") from None
    except ConnectionError as exc:
        log.info("client went away while sending %s %s: %s", request.method, request.path, exc)
        raise RequestError(CLIENT_CLOSED_CODE, "the client closed the connection") from None
    if not raw:
        raise ValidationError("request body is required (JSON)", field="body")
    return parse_json(decode_json_text(raw, "body"), "body", max_depth, wrapping=_BODY_NESTING)


class RestApi:
    def __init__(
        self,
        service: EventStoreService,
        authenticator: Authenticator,
        metrics: Metrics,
        readiness: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]],
        *,
        max_body_bytes: int,
        body_timeout: float = 60.0,
        forwarder: Forwarder | None = None,
    ) -> None:
        self.service = service
        self.authenticator = authenticator
        self.metrics = metrics
        self.readiness = readiness
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        #: The Kafka forwarder, None when kafka.brokers is empty (its status route says so).
        self.forwarder = forwarder
        self._roles: dict[str, Role | None] = {}
        #: The audited write operation of each route (method and path), if it is one.
        self._operations: dict[str, str] = {}

    @property
    def routes(self) -> list[Route]:
        base = "/api/v1/streams/{stream_id}"
        return [
            Route("POST", f"{base}/events", self.append, Role.SYS_OPERATOR, "append_events"),
            Route("GET", f"{base}/events", self.read_events, Role.SYS_AUDITOR, "read_events"),
            Route("GET", f"{base}/events/{{sequence}}", self.read_event, Role.SYS_AUDITOR, "read_event_by_sequence"),
            Route("POST", f"{base}/snapshots", self.create_snapshot, Role.SYS_OPERATOR, "create_snapshot"),
            Route("GET", f"{base}/snapshots/latest", self.latest_snapshot, Role.SYS_AUDITOR, "get_latest_snapshot"),
            Route("DELETE", base, self.delete_stream, Role.SYS_ADMIN, "delete_stream"),
            Route("GET", "/api/v1/events", self.read_all, Role.SYS_AUDITOR, "read_all"),
            Route("GET", "/api/v1/streams", self.list_streams, Role.SYS_AUDITOR, "list_streams"),
            Route("GET", f"{base}/subscribe", self.subscribe_stream, Role.SYS_AUDITOR, "subscribe_stream"),
            Route("GET", "/api/v1/subscribe", self.subscribe_all, Role.SYS_AUDITOR, "subscribe_all"),
            Route("GET", "/healthz", self.live, None, "healthz"),
            Route("GET", "/readyz", self.ready, None, "readyz"),
            Route("GET", "/health/live", self.live, None, "health_live"),
            Route("GET", "/health/ready", self.ready, None, "health_ready"),
            Route("GET", "/metrics", self.metrics_endpoint, None, "metrics"),
            Route("GET", "/openapi.json", self.openapi, None, "openapi"),
            # The web console: static files, open (the data it shows comes from the routes above).
            Route("GET", "/ui", console.redirect, None, "console_redirect"),
            Route("GET", "/ui/", console.index, None, "console"),
            Route("GET", "/ui/{asset}", console.asset, None, "console_asset"),
            # Open like /healthz, so that probes and people can see active/standby, lag and the last error.
            Route("GET", "/api/v1/forwarder/status", self.forwarder_status, None, "forwarder_status"),
        ]

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[self._middleware])
        for r in self.routes:
            resource = app.router.add_resource(r.path, name=None)
            resource.add_route(r.method, r.handler)
            self._roles[f"{r.method} {r.path}"] = r.role
            if r.name in audit.REST_OPERATIONS:
                self._operations[f"{r.method} {r.path}"] = audit.REST_OPERATIONS[r.name]
        return app

    # -- middleware: request id, auth, errors, metrics, audit and access log -------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        supplied = request.headers.get("X-Request-Id", "")
        request_id = supplied if _REQUEST_ID.match(supplied) else new_request_id()
        request[REQUEST_ID_KEY] = request_id
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        started = time.perf_counter()
        key = f"{request.method} {route}"
        transport = request.transport
        client = audit.peer_address(transport.get_extra_info("peername") if transport is not None else None)
        operation = self._operations.get(key)
        opened = (
            audit.begin(operation, "rest", request_id, client, request.match_info.get("stream_id"))
            if operation is not None else None
        )
        failure: BaseException | None = None
        try:
            if request.content_length is not None and request.content_length > self.max_body_bytes:
                raise _too_large(request)  # refused before a byte of it is read
            if resource is not None and key not in self._roles:
                # fail closed, like the gRPC interceptor: a route added without a rule is refused
                raise PermissionDeniedError(f"no authorisation rule for {key}")
            if key in self._roles:
                required = self._roles[key]
                if required is not None:
                    principal = await self.authenticator.authenticate(request.headers.get("Authorization"))
                    audit.note_principal(principal)
                    check(principal, required)
                    request[PRINCIPAL_KEY] = principal
            response = await handler(request)
        except web.HTTPException as exc:
            failure = self._http_error(exc)
            response = self._error(failure, request_id)
        except Exception as exc:
            failure = exc
            response = self._error(exc, request_id)
        except BaseException:  # cancelled: the write may or may not have happened
            if opened is not None:
                audit.finish(*opened, audit.CANCELLED)
            raise
        if opened is not None:
            audit.finish(*opened, audit.SUCCESS if failure is None else audit.FAILURE,
                         None if failure is None else error_code(failure), http_status=response.status)
        audit.access("rest", request.method, request.rel_url.raw_path, str(response.status), started, request_id,
                     client)
        if response.status == 408:
            response.force_close()  # the rest of a late body must not be read as the next request
        response.headers["X-Request-Id"] = request_id
        self.metrics.http_requests.labels(route, request.method, str(response.status)).inc()
        self.metrics.http_latency.labels(route, request.method).observe(time.perf_counter() - started)
        return response

    def _error(self, exc: BaseException, request_id: str) -> web.Response:
        code, message, details = classify(exc)
        response = _json(error_body(code, message, details, request_id), http_status(code))
        if isinstance(exc, UnauthenticatedError):
            response.headers["WWW-Authenticate"] = 'Bearer realm="k1s0-eventstore"'
        return response

    def _http_error(self, exc: web.HTTPException) -> BaseException:
        """aiohttp's own refusals as our errors (5xx stay as they are: internal)."""
        if exc.status == 404:
            err = RequestError("SYS_EVSTORE_ROUTE_NOT_FOUND", "no such route")
        elif exc.status == 405:
            err = RequestError("SYS_EVSTORE_METHOD_NOT_ALLOWED", "method not allowed on this route")
        elif exc.status == 413:
            err = RequestError(
                "SYS_EVSTORE_PAYLOAD_TOO_LARGE", f"request body is larger than {self.max_body_bytes} bytes"
            )
        elif exc.status < 500:
            err = RequestError("SYS_EVSTORE_VALIDATION_ERROR", exc.reason or "bad request")
        else:
            return exc
        return err

    async def _body(self, request: web.Request) -> Any:
        return await _body(request, self.body_timeout, self.service.settings.max_json_depth)

    # -- event-store routes ------------------------------------------------------------------

    async def append(self, request: web.Request) -> web.Response:
        events, expected = wire.parse_append(await self._body(request))
        appended = await self.service.append(
            request.match_info["stream_id"], events, expected, audit_subject(request.get(PRINCIPAL_KEY))
        )
        result = appended.result
        return _json_text(
            wire.stream_events_text(
                result.stream_id, map(event_document, encode_appended(appended.request, result)), result.current_version
            ),
            201,
        )

    async def read_events(self, request: web.Request) -> web.Response:
        page = await self.service.read_stream(
            request.match_info["stream_id"],
            ReadForm.DOCUMENTS,
            from_version=_query_int(request, "from_version"),
            to_version=_query_int(request, "to_version"),
            event_type=request.query.get("event_type"),
            page=_query_int(request, "page"),
            page_size=_query_int(request, "page_size"),
        )
        pagination = {"total_count": page.page.total_count, "page": page.number, "page_size": page.size,
                      "has_next": page.has_next}
        return _json_text(
            wire.stream_events_text(page.page.stream_id, page.page.events, page.page.current_version, pagination)
        )

    async def read_event(self, request: web.Request) -> web.Response:
        event = await self.service.get_event(request.match_info["stream_id"], _path_int(request, "sequence"))
        return _json_text(event_document(encode_event(event)))

    async def read_all(self, request: web.Request) -> web.Response:
        documents, head = await self.service.read_all(
            ReadForm.DOCUMENTS,
            _query_int(request, "after_sequence") or 0,
            _query_int(request, "limit"),
            request.query.getall("stream_prefix", []),
            request.query.getall("event_type", []),
        )
        return _json_text(wire.all_events_text(documents, head))

    async def list_streams(self, request: web.Request) -> web.Response:
        listed = await self.service.list_streams(
            request.query.get("prefix", ""), request.query.get("after") or None, _query_int(request, "limit")
        )
        streams = [stream_summary_json(s) for s in listed.streams]
        return _json({"streams": streams, "next_after": listed.next_after})

    async def create_snapshot(self, request: web.Request) -> web.Response:
        version, kind, state = wire.parse_snapshot(await self._body(request))
        snap = await self.service.create_snapshot(request.match_info["stream_id"], version, kind, state)
        return _json(snapshot_json(snap, with_state=False), 201)

    async def latest_snapshot(self, request: web.Request) -> web.Response:
        snap = await self.service.latest_snapshot(request.match_info["stream_id"])
        return _json(snapshot_json(snap, with_state=True))

    async def delete_stream(self, request: web.Request) -> web.Response:
        stream_id = request.match_info["stream_id"]
        removed = await self.service.delete_stream(stream_id)
        return _json(
            {
                "success": True,
                "message": f"stream {stream_id} and all related data deleted",
                "deleted_events": removed,
            }
        )

    # -- subscriptions: Server-Sent Events ------------------------------------------------------------

    @staticmethod
    def _last_event_id(request: web.Request) -> int | None:
        raw = request.headers.get("Last-Event-ID")
        if raw is None or raw == "":
            return None
        return _integer(raw, "Last-Event-ID")

    async def subscribe_stream(self, request: web.Request) -> web.StreamResponse:
        hub = self.service.hub()
        stream_id = request.match_info["stream_id"]
        after = _query_int(request, "after_version") or 0
        resume = self._last_event_id(request)
        if resume is not None:  # resume right after the last event the client saw
            after = (await self.service.get_event(stream_id, resume)).version or 0
        from_end = request.query.get("from_end", "").lower() in {"1", "true"}
        events = hub.stream(stream_id, after, from_end, heartbeat=True)
        return await self._sse(request, events)

    async def subscribe_all(self, request: web.Request) -> web.StreamResponse:
        hub = self.service.hub()
        after = self._last_event_id(request)
        if after is None:
            after = _query_int(request, "after_sequence") or 0
        from_end = request.query.get("from_end", "").lower() in {"1", "true"}
        events = hub.all(
            after,
            request.query.getall("stream_prefix", []),
            request.query.getall("event_type", []),
            from_end,
            heartbeat=True,
        )
        return await self._sse(request, events)

    async def _sse(self, request: web.Request, events: AsyncGenerator[Batch, None]) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        response.headers["X-Request-Id"] = request[REQUEST_ID_KEY]
        await response.prepare(request)
        await response.write(b": subscribed\n\n")
        try:
            async for batch in events:
                if batch is None:
                    await response.write(b": keep-alive\n\n")
                    continue
                # every event of the batch with one write; each frame is rendered once per hub event
                await response.write(b"".join([delivery.render(wire.sse_frame) for delivery in batch]))
        except (ConnectionResetError, ConnectionError):
            return response  # the client went away
        except Exception as exc:
            code, message, details = classify(exc)
            body = json.dumps(error_body(code, message, details, request[REQUEST_ID_KEY]))
            with contextlib.suppress(ConnectionError):
                await response.write(f"event: error\ndata: {body}\n\n".encode())
        finally:
            await events.aclose()
        return response

    # -- operations ----------------------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        ok, details = await self.readiness()
        return _json({"status": "ready" if ok else "not_ready", **details}, 200 if ok else 503)

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self.metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(openapi_document())

    async def forwarder_status(self, request: web.Request) -> web.Response:
        body = self.forwarder.status() if self.forwarder is not None else disabled_status()
        return web.json_response(body)
