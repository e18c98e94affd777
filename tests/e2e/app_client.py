"""Runs INSIDE the sample app pod (kubectl exec ... python - < app_client.py): append through the
injected sidecar on localhost:9090 with the client SDK, read it back, print one JSON line."""

import asyncio
import json
import sys
import uuid

from k1s0_event_store import EventEnvelope, GrpcEventStore, StreamId


async def main() -> None:
    store = GrpcEventStore("localhost:9090")
    stream = StreamId("order", uuid.uuid4().hex[:12])
    try:
        events = [EventEnvelope("OrderPlaced", {"order": str(stream), "n": i}, event_id=uuid.uuid4())
                  for i in range(3)]
        version = await store.append(stream, events, expected_version=-1)
        read = await store.load(stream)
    finally:
        await store.close()
    ok = version == 3 and [e.payload["n"] for e in read] == [0, 1, 2]
    print(json.dumps({"ok": ok, "stream": str(stream), "version": version,
                      "event_ids": [str(e.event_id) for e in read]}))
    sys.exit(0 if ok else 1)


asyncio.run(main())
