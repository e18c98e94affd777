"""Listing streams over REST (``GET /api/v1/streams``) and gRPC (``ListStreams``), and the web
console's static files with their security headers, against a served sidecar on real PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import grpc
import pytest

from k1s0_event_store.protocol import event_store_pb2 as pb
from k1s0_sidecar._console import CONTENT_SECURITY_POLICY
from tests.sidecar.test_rest import RFC3339_MS, _call, assert_error


async def _append(http: aiohttp.ClientSession, stream: str, n: int = 1) -> None:
    body = {"events": [{"event_type": "Tested", "payload": {"i": i}} for i in range(n)]}
    status, answer, _ = await _call(http, "POST", f"/api/v1/streams/{stream}/events", json=body)
    assert status == 201, answer


async def _ids(http: aiohttp.ClientSession, **params: Any) -> tuple[list[str], str | None]:
    status, body, _ = await _call(http, "GET", "/api/v1/streams", params=params)
    assert status == 200, body
    return [s["stream_id"] for s in body["streams"]], body["next_after"]


async def test_rest_lists_newest_activity_first_with_cursor_paging(http: aiohttp.ClientSession) -> None:
    prefix = f"ls{uuid.uuid4().hex[:8]}-"
    for name in ("a", "b", "c"):
        await _append(http, prefix + name)
    await _append(http, prefix + "a", 2)
    status, body, _ = await _call(http, "GET", "/api/v1/streams", params={"prefix": prefix})
    assert status == 200 and set(body) == {"streams", "next_after"} and body["next_after"] is None
    assert [s["stream_id"] for s in body["streams"]] == [prefix + "a", prefix + "c", prefix + "b"]
    first = body["streams"][0]
    assert set(first) == {"stream_id", "aggregate_type", "current_version", "updated_at"}
    assert first["aggregate_type"] == prefix[:-1] and first["current_version"] == 3
    assert RFC3339_MS.match(first["updated_at"])
    ids, cursor = await _ids(http, prefix=prefix, limit=2)
    assert ids == [prefix + "a", prefix + "c"] and cursor
    assert await _ids(http, prefix=prefix, limit=2, after=cursor) == ([prefix + "b"], None)


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "201"}, {"limit": "x"}, {"after": "!!"},
                                    {"prefix": "p" * 256}])
async def test_rest_list_refuses_bad_arguments(http: aiohttp.ClientSession, params: dict[str, str]) -> None:
    status, body, headers = await _call(http, "GET", "/api/v1/streams", params=params)
    assert_error(status, body, headers, 400, "SYS_EVSTORE_VALIDATION_ERROR")


async def test_grpc_list_streams(http: aiohttp.ClientSession, stub: Any) -> None:
    prefix = f"lg{uuid.uuid4().hex[:8]}-"
    for name in ("x", "y"):
        await _append(http, prefix + name)
    page = await stub.ListStreams(pb.ListStreamsRequest(prefix=prefix, limit=1))
    assert [s.stream_id for s in page.streams] == [prefix + "y"] and page.next_after
    assert page.streams[0].current_version == 1 and RFC3339_MS.match(page.streams[0].updated_at)
    rest = await stub.ListStreams(pb.ListStreamsRequest(prefix=prefix, after=page.next_after))
    assert [s.stream_id for s in rest.streams] == [prefix + "x"] and rest.next_after == ""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListStreams(pb.ListStreamsRequest(after="not-a-cursor"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_console_files_carry_a_strict_policy(http: aiohttp.ClientSession) -> None:
    for path, kind in (("/ui/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")):
        async with http.get(path) as r:
            assert r.status == 200 and r.content_type == kind, path
            assert r.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            text = await r.text()
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    async with http.get("/ui/index.html") as r:
        assert "<script" in await r.text() and "onclick" not in text
    async with http.get("/ui", allow_redirects=False) as r:
        assert r.status == 302 and r.headers["Location"] == "/ui/"
    for missing in ("/ui/nope.js", "/ui/..%2Fconsole.py", "/ui/%2e%2e"):
        status, body, headers = await _call(http, "GET", missing)
        assert_error(status, body, headers, 404, "SYS_EVSTORE_ROUTE_NOT_FOUND")


def test_console_sources_never_write_html() -> None:
    """Event data is untrusted: the console builds text nodes, never markup from strings."""
    from importlib import resources

    for entry in resources.files("k1s0_sidecar").joinpath("ui").iterdir():
        if entry.name.endswith(".js"):
            source = entry.read_text()
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
                assert sink not in source, f"{entry.name} uses {sink}"
