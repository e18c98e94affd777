"""Optimistic concurrency over gRPC as the design's proto means it, from two independent clients.

The design declares ``int64 expected_version = 3`` without presence: a client that means "the
stream is new or empty" (0) sends nothing on the wire. So an unset field must be checked as version
0, never appended unconditionally; "any version" is the explicit ``-2`` (``EXPECTED_VERSION_ANY``).

Client one is generated at test time from the design's proto text (``fixtures/seed_event_store.proto``,
unchanged) and runs in its own interpreter (``seed_client.py``); client two is our own stubs, whose
field has presence (``optional``), so an explicit 0 and an unset field are different bytes on the
wire. Both must get the same answers. REST keeps JSON's meaning (absent: any version), checked last.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_tools import protoc

from k1s0_event_store import ConcurrencyError, EventEnvelope, GrpcEventStore, StreamAlreadyExistsError
from k1s0_event_store.protocol import event_store_pb2 as pb
from k1s0_event_store.protocol import event_store_pb2_grpc as pb_grpc
from k1s0_sidecar._errors import error_info_from_call
from tests.support.sidecar import ServedSidecar

HERE = Path(__file__).resolve().parent
SEED_PROTO = HERE / "fixtures" / "seed_event_store.proto"

OK = "OK"
CONFLICT = ("ABORTED", "SYS_EVSTORE_VERSION_CONFLICT")
EXISTS = ("ALREADY_EXISTS", "SYS_EVSTORE_STREAM_ALREADY_EXISTS")
INVALID = ("INVALID_ARGUMENT", "SYS_EVSTORE_VALIDATION_ERROR")

#: (what, stream, expected_version or None for unset, outcome: (OK, current_version) or (code, reason)),
#: run in order: stream "a" is at version 1 after the first row, 2 after "the current version", 3 after -2.
CASES: list[tuple[str, str, int | None, tuple[str, Any]]] = [
    ("unset on a new stream (version 0)", "a", None, (OK, 1)),
    ("unset on an existing stream", "a", None, CONFLICT),
    ("0 on an existing stream", "a", 0, CONFLICT),
    ("the current version", "a", 1, (OK, 2)),
    ("a stale version", "a", 1, CONFLICT),
    ("a version ahead", "a", 7, CONFLICT),
    ("-1 on an existing stream", "a", -1, EXISTS),
    ("-1 on a new stream", "b", -1, (OK, 1)),
    ("0 on a new stream", "c", 0, (OK, 1)),
    ("-2: any version", "a", -2, (OK, 3)),
    ("-2 on a new stream", "d", -2, (OK, 1)),
    ("below -2", "a", -3, INVALID),
]


@pytest.fixture(scope="module")
def seed_stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Python stubs generated now from the design's proto text, as any other team would."""
    out = tmp_path_factory.mktemp("seed-stubs")
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{SEED_PROTO.parent}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
            str(SEED_PROTO)]
    assert protoc.main(args) == 0, "protoc failed on the design's proto"
    assert (out / "seed_event_store_pb2_grpc.py").exists()
    return out


def _seed_client(stubs: Path, target: str, calls: list[tuple[str, int | None]]) -> list[tuple[str, Any]]:
    done = subprocess.run([sys.executable, str(HERE / "seed_client.py"), str(stubs), target],
                          input=json.dumps(calls), capture_output=True, text=True, timeout=120, check=True)
    return [(OK, r["ok"]) if "ok" in r else (r["code"], r["reason"]) for r in json.loads(done.stdout)]


async def _our_client(target: str, calls: list[tuple[str, int | None]]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        for stream_id, expected in calls:
            request = pb.AppendEventsRequest(
                stream_id=stream_id, events=[pb.EventData(event_type="OurClientAppended", payload_json=b'{"n":1}')]
            )
            if expected is not None:
                request.expected_version = expected  # explicit, even 0: our field has presence
            try:
                out.append((OK, (await stub.AppendEvents(request)).current_version))
            except grpc.aio.AioRpcError as exc:
                info = error_info_from_call(exc)
                out.append((exc.code().name, info.reason if info is not None else None))
    return out


@pytest.mark.parametrize("client", ["seed", "ours"])
async def test_every_expected_version_case(
    client: str, sidecar: ServedSidecar, stub: pb_grpc.EventStoreServiceStub, seed_stubs: Path
) -> None:
    prefix = f"order-{client}{uuid.uuid4().hex[:8]}"
    calls = [(f"{prefix}{key}", expected) for _, key, expected, _ in CASES]
    if client == "seed":
        got = _seed_client(seed_stubs, sidecar.grpc_target, calls)
    else:
        got = await _our_client(sidecar.grpc_target, calls)
    assert [(what, g) for (what, *_), g in zip(CASES, got, strict=True)] == [(w, o) for w, _, _, o in CASES]
    # the refused appends wrote nothing
    page = await stub.ReadEvents(pb.ReadEventsRequest(stream_id=f"{prefix}a"))
    assert [e.version for e in page.events] == [1, 2, 3]


async def test_conflict_on_an_unset_field_names_version_zero(
    sidecar: ServedSidecar, stub: pb_grpc.EventStoreServiceStub, stream: str
) -> None:
    """The conflict says what the server understood: expected 0 (the design's meaning of unset)."""
    events = [pb.EventData(event_type="A", payload_json=b"{}")]
    await stub.AppendEvents(pb.AppendEventsRequest(stream_id=stream, events=events))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.AppendEvents(pb.AppendEventsRequest(stream_id=stream, events=events))
    info = error_info_from_call(exc.value)
    assert info is not None and info.metadata["expected_version"] == "0" and info.metadata["actual_version"] == "1"


async def test_our_library_client_sends_any_explicitly(sidecar: ServedSidecar, stream: str) -> None:
    """``GrpcEventStore``: expected_version None is "any version", sent as -2; numbers are checked."""
    store = GrpcEventStore(sidecar.grpc_target, timeout=10)
    try:
        assert await store.append(stream, [EventEnvelope("A", {})]) == 1
        assert await store.append(stream, [EventEnvelope("A", {})]) == 2  # None: any version
        with pytest.raises(ConcurrencyError):
            await store.append(stream, [EventEnvelope("A", {})], expected_version=0)
        with pytest.raises(StreamAlreadyExistsError):
            await store.append(stream, [EventEnvelope("A", {})], expected_version=-1)
        assert await store.append(stream, [EventEnvelope("A", {})], expected_version=2) == 3
    finally:
        await store.close()


async def test_rest_keeps_json_semantics(http: aiohttp.ClientSession, stream: str) -> None:
    """Side by side: in JSON an absent (or null) expected_version is "any version"; -2 is not REST's."""
    url = f"/api/v1/streams/{stream}/events"
    event = {"event_type": "A", "payload": {}}
    statuses = []
    for body in ({"events": [event]}, {"events": [event]}, {"events": [event], "expected_version": None},
                 {"events": [event], "expected_version": 0}, {"events": [event], "expected_version": -2}):
        async with http.post(url, json=body) as r:
            statuses.append((r.status, (await r.json()).get("current_version")))
    assert statuses == [(201, 1), (201, 2), (201, 3), (409, None), (400, None)]
