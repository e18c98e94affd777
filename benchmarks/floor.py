"""The edge floors: the sidecar's two edge frameworks with no event store behind them.

``python -m benchmarks.floor '{"grpc_port": P, "http_port": Q}'`` serves, from one process and one
asyncio event loop (as the sidecar does), the same gRPC service (``grpc.aio.server`` and the
generated servicer base class, no interceptor) whose ``AppendEvents`` returns one fixed
``AppendEventsResponse``, and an aiohttp app whose ``POST /api/v1/streams/{stream_id}/events``
reads the body and returns one fixed 201 JSON answer. Driven by the same load generators as the
sidecar, these show the most appends per second each framework can answer on this machine: the
ceiling of the sidecar's edges. Prints ``READY`` once both listen; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import grpc
from aiohttp import web

from k1s0_event_store.protocol import event_store_pb2 as pb
from k1s0_event_store.protocol import event_store_pb2_grpc as pb_grpc

#: What the sidecar answers to a 1-event append (one stored event echoed), fixed.
RESPONSE = pb.AppendEventsResponse(
    stream_id="floor",
    events=[pb.StoredEvent(stream_id="floor", sequence=1, event_type="BenchEvent", version=1)],
    current_version=1,
)
REST_BODY = json.dumps({"stream_id": "floor", "events": [{"event_id": "00000000-0000-0000-0000-000000000000",
                                                          "stream_id": "floor", "version": 1, "sequence": 1}],
                        "current_version": 1}, separators=(",", ":"))


class EmptyAppend(pb_grpc.EventStoreServiceServicer):
    async def AppendEvents(self, request: pb.AppendEventsRequest, context: Any) -> pb.AppendEventsResponse:
        return RESPONSE


async def rest_append(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=201, text=REST_BODY, content_type="application/json")


async def serve(grpc_port: int, http_port: int) -> None:
    server = grpc.aio.server()
    # (the other methods keep the generated base class's UNIMPLEMENTED answer; its stubs call them abstract)
    pb_grpc.add_EventStoreServiceServicer_to_server(EmptyAppend(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    app = web.Application()
    app.router.add_post("/api/v1/streams/{stream_id}/events", rest_append)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    await stop.wait()
    await runner.cleanup()
    await server.stop(0)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m benchmarks.floor '{\"grpc_port\": P, \"http_port\": Q}'")
    spec = json.loads(sys.argv[1])
    asyncio.run(serve(int(spec["grpc_port"]), int(spec["http_port"])))


if __name__ == "__main__":
    main()
