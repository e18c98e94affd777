"""Load generator for the sidecar's gRPC edge: one grpc.aio process of a multi-process client.

The harness starts ``spec["processes"]`` of these, each with its share of the clients, on one
common ``Window``; every process reports its own CPU time so the load generator's cost is shown
next to the result. Kinds: ``append`` (``events`` per request, ``distribution``, ``expected``:
track versions and send ``expected_version``, conflicts counted), ``read_stream`` (pages of one
stream), ``read_all`` (pages by global sequence).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from k1s0_event_store.protocol import event_store_pb2 as pb
from k1s0_event_store.protocol import event_store_pb2_grpc as pb_grpc

from .common import EVENT_TYPE, StreamChooser, WorkerResult, emit, measured, payload_json, read_spec


def actual_version(error: grpc.aio.AioRpcError) -> int | None:
    """The stream's version from a conflict's ErrorInfo (``actual_version``), if the server sent it."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info) and "actual_version" in info.metadata:
                    return int(info.metadata["actual_version"])
    return None


async def run(spec: dict[str, Any]) -> WorkerResult:
    clients = int(spec["clients"])
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    channel = grpc.aio.insecure_channel(spec["target"], options=options)
    await asyncio.wait_for(channel.channel_ready(), 30)
    stub = pb_grpc.EventStoreServiceStub(channel)
    kind = spec["kind"]
    position = [0] * clients

    if kind == "append":
        per = int(spec["events"])
        expected = bool(spec.get("expected"))
        choosers = [
            StreamChooser(spec["distribution"], int(spec["seed"]) * 1000 + i, spec.get("prefix", "grpc"))
            for i in range(clients)
        ]
        known: dict[str, int] = {}
        counter = [0]

        async def op(i: int) -> tuple[int, str]:
            stream = choosers[i].next()
            counter[0] += per
            n = counter[0]
            request = pb.AppendEventsRequest(
                stream_id=stream,
                events=[pb.EventData(event_type=EVENT_TYPE, payload_json=payload_json(n + k).encode())
                        for k in range(per)],
                # unset would mean "version 0": without tracking, say "any version" explicitly
                expected_version=known.get(stream, 0) if expected else pb.EXPECTED_VERSION_ANY,
            )
            try:
                response = await stub.AppendEvents(request)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.ABORTED:
                    version = actual_version(exc)
                    if version is not None:
                        known[stream] = version
                    return 0, "conflict"
                return 0, f"{exc.code().name}: {exc.details()}"
            known[stream] = response.current_version
            return per, "ok"

    elif kind == "read_stream":
        size, stream = int(spec["page_size"]), spec["stream"]
        pages = max(1, int(spec["length"]) // size)

        async def op(i: int) -> tuple[int, str]:
            page = position[i] % pages + 1
            position[i] += 1
            response = await stub.ReadEvents(pb.ReadEventsRequest(stream_id=stream, page=page, page_size=size))
            return len(response.events), "ok" if response.events else "empty page"

    elif kind == "read_all":
        size, first = int(spec["page_size"]), int(spec["first_sequence"])
        pages = max(1, int(spec["length"]) // size)

        async def op(i: int) -> tuple[int, str]:
            after = first - 1 + (position[i] % pages) * size
            position[i] += 1
            response = await stub.ReadAll(pb.ReadAllRequest(after_sequence=after, limit=size))
            return len(response.events), "ok" if response.events else "empty page"

    else:
        raise SystemExit(f"unknown kind {kind!r}")

    return await measured(clients, op, channel.close)


def main() -> None:
    emit(asyncio.run(run(read_spec())))


if __name__ == "__main__":
    main()
