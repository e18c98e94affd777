"""The gRPC protocol, public: the generated messages and stubs, and event metadata <-> protobuf.

``event_store_pb2`` (messages) and ``event_store_pb2_grpc`` (the servicer base and the client stub)
are generated from ``proto/`` into the private ``_proto`` package; this module is how code outside
the library reaches them (the sidecar's gRPC edge, tools and tests)::

    from k1s0_event_store.protocol import event_store_pb2 as pb, event_store_pb2_grpc as pb_grpc

Event metadata: the three standard keys travel as typed fields when they are strings; every other
key (and a standard key whose value is not a string, such as ``null``) travels in ``extra_json``,
so metadata round-trips exactly. The sidecar's gRPC edge and the gRPC client store both convert
with ``metadata_to_pb`` and ``metadata_from_pb``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from ._errors import ValidationError
from ._json import MAX_JSON_DEPTH, decode_json_text, parse_json
from ._proto import event_store_pb2, event_store_pb2_grpc
from ._proto import event_store_pb2 as pb

__all__ = ["TYPED_KEYS", "event_store_pb2", "event_store_pb2_grpc", "metadata_from_pb", "metadata_to_pb"]

TYPED_KEYS: tuple[Literal["actor_id", "correlation_id", "causation_id"], ...] = (
    "actor_id", "correlation_id", "causation_id",
)


def metadata_to_pb(metadata: dict[str, Any]) -> pb.EventMetadata:
    typed = {k: v for k, v in metadata.items() if k in TYPED_KEYS and isinstance(v, str)}
    extra = {k: v for k, v in metadata.items() if k not in typed}
    return pb.EventMetadata(**typed, extra_json=json.dumps(extra, ensure_ascii=False).encode() if extra else b"")


def metadata_from_pb(m: pb.EventMetadata, field: str = "metadata", max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if m.extra_json:
        where = f"{field}.extra_json"
        extra = parse_json(decode_json_text(m.extra_json, where), where, max_depth)
        if not isinstance(extra, dict):
            raise ValidationError(f"{field}.extra_json must be a JSON object", field=f"{field}.extra_json")
        out.update(extra)
    for key in TYPED_KEYS:
        if m.HasField(key):
            out[key] = getattr(m, key)
    return out
