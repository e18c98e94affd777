"""A client built only from the design's own proto text: run in its own interpreter.

``python seed_client.py STUBS_DIR TARGET`` reads a JSON list of ``[stream_id, expected_version]``
appends from stdin (``expected_version`` null: the field is left unset) and prints, per append,
``{"ok": current_version}`` or ``{"code": grpc status name, "reason": ErrorInfo.reason}``.

The stubs in STUBS_DIR are generated at test time from ``fixtures/seed_event_store.proto`` (the
design's text, unchanged); they declare the same package and message names as ours, so they cannot
share a process (and its protobuf descriptor pool) with our own stubs.
"""

from __future__ import annotations

import json
import sys

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def main() -> int:
    sys.path.insert(0, sys.argv[1])
    import seed_event_store_pb2 as pb  # type: ignore[import-not-found]
    import seed_event_store_pb2_grpc as pb_grpc  # type: ignore[import-not-found]

    out = []
    with grpc.insecure_channel(sys.argv[2]) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        for stream_id, expected in json.load(sys.stdin):
            request = pb.AppendEventsRequest(
                stream_id=stream_id,
                events=[pb.EventData(event_type="SeedClientAppended", payload_json=b'{"n":1}')],
            )
            if expected is not None:
                request.expected_version = expected
            try:
                out.append({"ok": stub.AppendEvents(request, timeout=30).current_version})
            except grpc.RpcError as exc:
                reason = None
                status = rpc_status.from_call(exc)  # type: ignore[arg-type]
                for detail in status.details if status is not None else ():
                    info = error_details_pb2.ErrorInfo()
                    if detail.Unpack(info):
                        reason = info.reason
                out.append({"code": exc.code().name, "reason": reason})  # type: ignore[attr-defined]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
